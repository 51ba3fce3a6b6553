"""swish(x) = x · sigmoid(x), forward and backward next to each other.

The kernel cimports corenet's thread setting, so it follows corenet.set_num_threads.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp

from corenet.kernels.threads cimport threads_for

from corenet.layer import Layer, check_grad, check_input, require_forward

cnp.import_array()


cdef void swish_kernel(const floating* x, floating* y, const floating* grad, floating* x_grad,
                       Py_ssize_t size, bint backward) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating s
    for i in prange(size, num_threads=threads_for(size, 1 << 15), schedule='static'):
        s = 1 / (1 + exp(-x[i]))
        if backward:  # d/dx x·s(x) = s + x·s·(1 − s)
            x_grad[i] = grad[i] * (s + x[i] * s * (1 - s))
        else:
            y[i] = x[i] * s


def run(cnp.ndarray x, cnp.ndarray out, cnp.ndarray grad=None, bint backward=False):
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    cdef void* grad_data = NULL if grad is None else cnp.PyArray_DATA(grad)
    cdef void* x_data = cnp.PyArray_DATA(x)
    cdef void* out_data = cnp.PyArray_DATA(out)
    cdef bint single = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32
    with nogil:  # the loop needs no Python: other Python threads run meanwhile
        if single:
            swish_kernel(<const float*>x_data, <float*>out_data, <const float*>grad_data,
                         <float*>out_data, size, backward)
        else:
            swish_kernel(<const double*>x_data, <double*>out_data, <const double*>grad_data,
                         <double*>out_data, size, backward)


class Swish(Layer):
    """x · sigmoid(x) on any shape, batch first."""

    name = "swish"
    elementwise = True

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        x = check_input(self, x)
        y = self.buffer("out", x.shape, x.dtype)
        run(x, y)
        self._x = x
        return y

    def backward(self, grad):
        require_forward(self, self._x)
        grad = check_grad(self, grad, self._x.shape, self._x.dtype)
        x_grad = self.buffer("x_grad", grad.shape, grad.dtype)
        run(self._x, x_grad, grad, True)
        return x_grad
