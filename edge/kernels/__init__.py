"""Numba kernels of the pipeline: fused space-to-depth with tiling, and grid DBSCAN."""
