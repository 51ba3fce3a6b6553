"""corenet's shared kernels. ``matmul`` is the GEMM for Python callers; Cython
plugins cimport the C-level functions from the .pxd files here."""
from corenet.kernels.gemm import matmul, reference_matmul

__all__ = ["matmul", "reference_matmul"]
