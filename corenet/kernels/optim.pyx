"""Optimizer update loops: one pass over a parameter, parallel over its elements."""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from corenet.kernels.threads cimport threads_for

cnp.import_array()

cdef enum:
    GRAIN = 1 << 15  # elements below which one thread runs


cdef void sgd_update(floating* value, const floating* grad, floating* velocity,
                     Py_ssize_t size, floating lr, floating momentum,
                     floating weight_decay) noexcept nogil:
    """PyTorch's SGD: d = g + wd w; v = momentum v + d; w -= lr v (v unused at momentum 0)."""
    cdef Py_ssize_t i
    cdef floating step
    cdef int n_threads = threads_for(size, GRAIN)
    if momentum == 0:
        for i in prange(size, num_threads=n_threads, schedule='static'):
            value[i] = value[i] - lr * (grad[i] + weight_decay * value[i])
    else:
        for i in prange(size, num_threads=n_threads, schedule='static'):
            step = momentum * velocity[i] + (grad[i] + weight_decay * value[i])
            velocity[i] = step
            value[i] = value[i] - lr * step


def sgd_step(cnp.ndarray value not None, cnp.ndarray grad not None, cnp.ndarray velocity,
             double lr, double momentum, double weight_decay):
    """Update ``value`` in place (and ``velocity``, which may be None at momentum 0).

    The arrays must be C-contiguous, of one float dtype and one size; value and
    velocity writeable.
    """
    cdef Py_ssize_t size = cnp.PyArray_SIZE(value)
    cdef int type_num = cnp.PyArray_TYPE(value)
    for array in (grad, velocity):
        if array is not None and (cnp.PyArray_TYPE(array) != type_num
                                  or cnp.PyArray_SIZE(array) != size
                                  or not cnp.PyArray_IS_C_CONTIGUOUS(array)):
            raise ValueError(f"sgd_step: {array.dtype}{(<object>array).shape} does not match "
                             f"the parameter {value.dtype}{(<object>value).shape}")
    if type_num not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64) or not cnp.PyArray_IS_C_CONTIGUOUS(value):
        raise ValueError(f"sgd_step: expected a C-contiguous float array, got {value.dtype}")
    if not cnp.PyArray_ISWRITEABLE(value) or (
            velocity is not None and not cnp.PyArray_ISWRITEABLE(velocity)):
        raise ValueError("sgd_step: the parameter (and its velocity) must be writeable")
    cdef void* velocity_data = NULL if velocity is None else cnp.PyArray_DATA(velocity)
    if momentum != 0 and velocity_data == NULL:
        raise ValueError("sgd_step: momentum needs a velocity array")
    if type_num == cnp.NPY_FLOAT32:
        with nogil:
            sgd_update(<float*>cnp.PyArray_DATA(value), <const float*>cnp.PyArray_DATA(grad),
                       <float*>velocity_data, size, <float>lr, <float>momentum,
                       <float>weight_decay)
    else:
        with nogil:
            sgd_update(<double*>cnp.PyArray_DATA(value), <const double*>cnp.PyArray_DATA(grad),
                       <double*>velocity_data, size, lr, momentum, weight_decay)
