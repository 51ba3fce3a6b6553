"""Elementwise loops the executor and the merge layers share."""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from corenet.kernels.threads cimport threads_for

cnp.import_array()

cdef enum:
    GRAIN = 1 << 15  # elements below which one thread runs


cdef void add_into(floating* total, const floating* x, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(size, num_threads=threads_for(size, GRAIN), schedule='static'):
        total[i] = total[i] + x[i]


def accumulate(total_array, x_array):
    """total += x for two C-contiguous arrays of one float dtype and shape."""
    if total_array.dtype != x_array.dtype or total_array.shape != x_array.shape:
        raise ValueError(f"accumulate: {total_array.dtype}{total_array.shape} += "
                         f"{x_array.dtype}{x_array.shape}")
    if not total_array.flags.c_contiguous or not x_array.flags.c_contiguous:
        raise ValueError("accumulate: arrays must be C-contiguous")
    if not total_array.flags.writeable:
        raise ValueError("accumulate: the total is read-only")
    cdef cnp.ndarray total = total_array, x = x_array
    cdef Py_ssize_t size = cnp.PyArray_SIZE(total)
    if total.dtype == np.float32:
        with nogil:
            add_into(<float*>cnp.PyArray_DATA(total), <const float*>cnp.PyArray_DATA(x), size)
    elif total.dtype == np.float64:
        with nogil:
            add_into(<double*>cnp.PyArray_DATA(total), <const double*>cnp.PyArray_DATA(x), size)
    else:
        raise TypeError(f"accumulate: expected float32 or float64, got {total.dtype}")
