"""The sliding-window grid of the single-image mode (the weak-scratch paper's sliding window).

256 x 256 px every 128 px (the paper's "redundancy" of 128), the last window of
  each row and column flush with the image's edge, so every pixel is seen and no window is
  padded (:func:`window_origins`). An image needs 256 px on each side.

Training (``model.windows``) cuts its windows on this same grid.
"""

from __future__ import annotations

WINDOW = 256
STRIDE = 128
# the classifier's settings over the grid; here so that the command's parser needs no engine
DEFAULT_THRESHOLD = 0.5  # a window's probability from which it is positive
DEFAULT_BATCH = 8  # windows per engine call
DEFAULT_MODEL = "shipped:attention_fusion.onnx"


def window_origins(size: int, window: int = WINDOW, stride: int | None = None) -> list[int]:
    """Window starts along one side: every ``stride`` (default half a window, the paper's 128 px
    redundancy for 256 px windows), the last one flush with the edge."""
    stride = window // 2 if stride is None else stride
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    if size < window:
        raise ValueError(f"a side of {size} px is smaller than the {window} px window")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts
