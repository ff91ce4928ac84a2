# pycuda's build settings for the builder stage of Dockerfile.jetson, read from
# /etc/aksetup-defaults.py while pip compiles pycuda's sdist (JetPack 6: CUDA 12.6 in
# /usr/local/cuda).
CUDA_ROOT = "/usr/local/cuda"
# A build has no GPU driver: link against the toolkit's stub libcuda.so. The real libcuda.so.1
# is the host's, which the NVIDIA container runtime brings into the container at run time.
CUDADRV_LIB_DIR = ["/usr/local/cuda/lib64/stubs"]
CUDART_LIB_DIR = ["/usr/local/cuda/lib64"]
# cuRAND is not used by glass-inspect; leaving it out keeps libcurand out of the runtime image.
CUDA_ENABLE_CURAND = False
CUDA_ENABLE_GL = False
