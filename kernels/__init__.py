"""imprint kernels."""
