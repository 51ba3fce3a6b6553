"""Softmax over the last axis, parallel over rows.

Forward subtracts each row's maximum before exp, so no input overflows.
Backward is the vector-Jacobian product dx = y ⊙ (g − ⟨g, y⟩) per row, with
⟨g, y⟩ = g_t + Σ_j y_j (g_j − g_t) for the row's largest y_t (Σ y = 1): then
g_t − ⟨g, y⟩ is a sum of the small terms, not the difference of two numbers
near g_t, so a saturated row (y_t rounds to 1, as sigmoid's y) keeps its small
gradient (y_t (1 − y_t) for g on entry t), which y_t (g_t − ⟨g, y⟩) rounds to 0.

An entry equal to its row's maximum counts as exp(0) = 1 even when the maximum
is infinite, where x − max would be inf − inf = NaN: a +inf entry takes the
limit (all the mass, shared equally by several), and a row of −inf is uniform
like any row of equal entries. A NaN anywhere in a row makes the row NaN.
(PyTorch returns NaN for the whole row in all three cases.)
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp

from corenet.kernels.threads cimport threads_for

from corenet.layer import Layer, check_grad, check_input, require_forward

cnp.import_array()

cdef enum:
    GRAIN = 1 << 14  # elements below which one thread runs


cdef void softmax_rows(const floating* x, floating* y, Py_ssize_t rows,
                       Py_ssize_t columns) noexcept nogil:
    cdef Py_ssize_t row, j
    cdef floating largest
    cdef double total  # a float32 running sum over a row of 1M was 6e-3 off
    cdef const floating* x_row
    cdef floating* y_row
    for row in prange(rows, num_threads=threads_for(rows * columns, GRAIN), schedule='static'):
        x_row = x + row * columns
        y_row = y + row * columns
        largest = x_row[0]
        for j in range(1, columns):
            if x_row[j] > largest:
                largest = x_row[j]
        total = 0
        for j in range(columns):
            y_row[j] = 1 if x_row[j] == largest else exp(x_row[j] - largest)
            total = total + y_row[j]
        for j in range(columns):
            y_row[j] = <floating>(y_row[j] / total)


cdef void softmax_rows_backward(const floating* y, const floating* grad, floating* x_grad,
                                Py_ssize_t rows, Py_ssize_t columns) noexcept nogil:
    cdef Py_ssize_t row, j, top, start
    cdef double spread  # ⟨g, y⟩ − g_top, summed in double as the forward's total
    for row in prange(rows, num_threads=threads_for(rows * columns, GRAIN), schedule='static'):
        start = row * columns
        top = start
        for j in range(start + 1, start + columns):
            if y[j] > y[top]:
                top = j
        spread = 0
        for j in range(start, start + columns):
            spread = spread + <double>y[j] * (grad[j] - grad[top])
        for j in range(start, start + columns):
            x_grad[j] = <floating>(y[j] * (grad[j] - grad[top] - spread))


class Softmax(Layer):
    """exp(x) / Σ exp(x) along the last axis.

    >>> import corenet.layers as L, numpy as np
    >>> L.Softmax().forward(np.zeros((1, 4), np.float32))
    array([[0.25, 0.25, 0.25, 0.25]], dtype=float32)
    """

    name = "softmax"

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        x = check_input(self, x, min_ndim=2)
        y = self.buffer("out", x.shape, x.dtype)
        cdef cnp.ndarray x_arr = x, y_arr = y
        cdef Py_ssize_t columns = x.shape[x.ndim - 1]
        cdef Py_ssize_t rows = x.size // columns if columns else 0  # (N, 0): nothing to do
        if x.dtype == np.float32:
            with nogil:
                softmax_rows(<const float*>cnp.PyArray_DATA(x_arr), <float*>cnp.PyArray_DATA(y_arr),
                             rows, columns)
        else:
            with nogil:
                softmax_rows(<const double*>cnp.PyArray_DATA(x_arr),
                             <double*>cnp.PyArray_DATA(y_arr), rows, columns)
        self._y = y
        return y

    def backward(self, grad):
        require_forward(self, self._y)
        y = self._y
        grad = check_grad(self, grad, y.shape, y.dtype)
        x_grad = self.buffer("x_grad", y.shape, y.dtype)
        cdef cnp.ndarray y_arr = y, g_arr = grad, xg_arr = x_grad
        cdef Py_ssize_t columns = y.shape[y.ndim - 1]
        cdef Py_ssize_t rows = y.size // columns if columns else 0
        if y.dtype == np.float32:
            with nogil:
                softmax_rows_backward(<const float*>cnp.PyArray_DATA(y_arr),
                                      <const float*>cnp.PyArray_DATA(g_arr),
                                      <float*>cnp.PyArray_DATA(xg_arr), rows, columns)
        else:
            with nogil:
                softmax_rows_backward(<const double*>cnp.PyArray_DATA(y_arr),
                                      <const double*>cnp.PyArray_DATA(g_arr),
                                      <double*>cnp.PyArray_DATA(xg_arr), rows, columns)
        return x_grad
