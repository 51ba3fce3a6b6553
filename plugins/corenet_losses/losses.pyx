"""Losses, each computing its value and dL/dpred in one pass in forward.

Per-sample losses go into a buffer in parallel (one thread per row) and are
then summed in order, so the value does not depend on the thread count.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, log

from corenet.kernels.threads cimport threads_for

from corenet.errors import DTypeError, ShapeError
from corenet.layer import as_array
from corenet.loss import Loss

cnp.import_array()

cdef enum:
    GRAIN = 1 << 14  # elements below which one thread runs


cdef void squared_error(const floating* pred, const floating* target, floating* grad,
                        double* row_loss, Py_ssize_t rows, Py_ssize_t columns) noexcept nogil:
    """row_loss[n] = ½ Σ (o − y)²;  grad = (o − y) / rows."""
    cdef Py_ssize_t row, j
    cdef double total, diff
    cdef floating scale = 1.0 / rows
    for row in prange(rows, num_threads=threads_for(rows * columns, GRAIN), schedule='static'):
        total = 0
        for j in range(row * columns, (row + 1) * columns):
            diff = pred[j] - target[j]
            total = total + diff * diff
            grad[j] = (pred[j] - target[j]) * scale
        row_loss[row] = 0.5 * total


cdef void softmax_cross_entropy(const floating* logits, const long long* labels, floating* grad,
                                double* row_loss, Py_ssize_t rows,
                                Py_ssize_t classes) noexcept nogil:
    """row_loss[n] = logsumexp(o_n) − o_n[y_n];  grad = (softmax(o) − onehot(y)) / rows."""
    cdef Py_ssize_t row, j
    cdef double largest, total, log_total
    cdef double scale = 1.0 / rows
    cdef const floating* o
    cdef floating* g
    for row in prange(rows, num_threads=threads_for(rows * classes, GRAIN), schedule='static'):
        o = logits + row * classes
        g = grad + row * classes
        largest = o[0]
        for j in range(1, classes):
            if o[j] > largest:
                largest = o[j]
        total = 0
        for j in range(classes):
            total = total + exp(o[j] - largest)
        log_total = log(total)
        for j in range(classes):
            g[j] = <floating>(exp(o[j] - largest - log_total) * scale)
        g[labels[row]] -= <floating>scale
        row_loss[row] = largest + log_total - o[labels[row]]


class MSE(Loss):
    """½‖o − y‖² per sample, averaged over the batch: dL/do = (o − y) / N.

    PyTorch's MSELoss averages (o − y)² over every element instead; this is the
    lecture's loss, whose gradient has no factor 2 and no 1/features.
    """

    name = "mse"

    def forward(self, pred, target):
        pred = self.check_pred(pred)
        target = as_array(self.name, "the targets", target)
        if target.dtype.kind not in "fiu":
            raise DTypeError(f"{self.name}: expected numeric targets, got dtype {target.dtype}")
        if target.shape != pred.shape:
            raise ShapeError(f"{self.name}: expected targets of the predictions' shape "
                             f"{pred.shape}, got {target.shape}")
        target = np.ascontiguousarray(target, dtype=pred.dtype)
        cdef Py_ssize_t rows = pred.shape[0]
        cdef Py_ssize_t columns = pred.size // rows
        grad = np.empty_like(pred)
        row_loss = np.empty(rows, np.float64)
        cdef cnp.ndarray p = pred, t = target, g = grad, r = row_loss
        if pred.dtype == np.float32:
            squared_error(<const float*>cnp.PyArray_DATA(p), <const float*>cnp.PyArray_DATA(t),
                          <float*>cnp.PyArray_DATA(g), <double*>cnp.PyArray_DATA(r), rows, columns)
        else:
            squared_error(<const double*>cnp.PyArray_DATA(p), <const double*>cnp.PyArray_DATA(t),
                          <double*>cnp.PyArray_DATA(g), <double*>cnp.PyArray_DATA(r), rows,
                          columns)
        self._grad = grad
        return float(row_loss.sum() / rows)



class SoftmaxCrossEntropy(Loss):
    """Softmax then cross-entropy with integer class labels, fused and stable.

    >>> import numpy as np
    >>> round(SoftmaxCrossEntropy().forward(np.zeros((2, 4), np.float32), [0, 3]), 4)
    1.3863
    """

    name = "softmax_cross_entropy"

    def forward(self, pred, target):
        pred = self.check_pred(pred, ndim=2)
        labels = as_array(self.name, "the labels", target)
        if labels.dtype.kind not in "iu":
            raise DTypeError(f"{self.name}: expected integer class labels, "
                             f"got dtype {labels.dtype}")
        if labels.shape != pred.shape[:1]:
            raise ShapeError(f"{self.name}: expected {pred.shape[0]} labels (one per row of "
                             f"the predictions {pred.shape}), got shape {labels.shape}")
        cdef Py_ssize_t rows = pred.shape[0], classes = pred.shape[1]
        if labels.min() < 0 or labels.max() >= classes:
            raise ValueError(f"{self.name}: labels must lie in [0, {classes}), got values "
                             f"from {labels.min()} to {labels.max()}")
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        grad = np.empty_like(pred)
        row_loss = np.empty(rows, np.float64)
        cdef cnp.ndarray p = pred, y = labels, g = grad, r = row_loss
        if pred.dtype == np.float32:
            softmax_cross_entropy(<const float*>cnp.PyArray_DATA(p),
                                  <const long long*>cnp.PyArray_DATA(y),
                                  <float*>cnp.PyArray_DATA(g), <double*>cnp.PyArray_DATA(r),
                                  rows, classes)
        else:
            softmax_cross_entropy(<const double*>cnp.PyArray_DATA(p),
                                  <const long long*>cnp.PyArray_DATA(y),
                                  <double*>cnp.PyArray_DATA(g), <double*>cnp.PyArray_DATA(r),
                                  rows, classes)
        self._grad = grad
        return float(row_loss.sum() / rows)

