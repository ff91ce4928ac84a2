"""On-device runtime of the cover-glass scratch inspection head.

Never imports torch; TensorRT and pycuda only when their engine is asked for.
"""

__version__ = "0.1.0"
