"""Losses, each computing its value and dL/dpred in one pass in forward.

Per-sample losses go into a buffer in parallel (one thread per row) and are
then summed in order, in C, so the value does not depend on the thread count.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport exp, log1p

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


cdef double sum_in_order(const double* values, Py_ssize_t size) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t i
    for i in range(size):
        total = total + values[i]
    return total


cdef bint labels_outside(const long long* labels, Py_ssize_t rows,
                         Py_ssize_t classes) noexcept nogil:
    """Whether a label is not a class: checked here, before the kernel indexes with
    them, rather than by two numpy reductions at every step."""
    cdef Py_ssize_t row
    for row in range(rows):
        if labels[row] < 0 or labels[row] >= classes:
            return True
    return False


cdef inline double below_largest(double logit, double largest) noexcept nogil:
    """logit − largest, 0 for the largest itself even when infinite (inf − inf
    would be NaN): a +inf logit takes the limit, all the probability."""
    return 0 if logit == largest else logit - largest


cdef void softmax_cross_entropy(const floating* logits, const long long* labels, floating* grad,
                                double* row_loss, double* scratch, Py_ssize_t rows,
                                Py_ssize_t classes, int n_threads) noexcept nogil:
    """row_loss[n] = logsumexp(o_n) − o_n[y_n];  grad = (softmax(o) − onehot(y)) / rows.

    Both come from o − max(o), so no logit overflows, and from rest, the sum of
    exp(o_j − max) over all but the largest logit: logsumexp − max = log1p(rest),
    and 1 − p = rest / (1 + rest) for the largest logit's class. A confident
    right answer so keeps its small loss and gradient, which log(1 + rest) and
    p − 1 lose to rounding (0 past a margin of 17 in float32, 37 in float64).
    A NaN logit makes the row's loss and gradient NaN; a +inf logit gives the
    limit. Each exp is taken once, into ``scratch`` (a row of doubles per thread):
    the exps were most of the loss's time."""
    cdef Py_ssize_t row, j, top
    cdef long long label
    cdef double largest, rest, total
    cdef double scale = 1.0 / rows
    cdef const floating* o
    cdef floating* g
    cdef double* e
    for row in prange(rows, num_threads=n_threads, schedule='static'):
        o = logits + row * classes
        g = grad + row * classes
        e = scratch + threadid() * classes
        top = 0
        for j in range(1, classes):
            if o[j] > o[top]:
                top = j
        largest = o[top]
        rest = 0
        for j in range(classes):
            e[j] = exp(below_largest(o[j], largest))  # 1 for the largest
            if j != top:
                rest = rest + e[j]
        total = 1 + rest
        for j in range(classes):
            g[j] = <floating>(e[j] / total * scale)
        label = labels[row]
        if label == top:
            g[label] = <floating>(-rest / total * scale)
        else:  # p <= 1/2 here: p − 1 does not cancel
            g[label] = <floating>((e[label] / total - 1) * scale)
        row_loss[row] = log1p(rest) - below_largest(o[label], largest)


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
        cdef void* pp = cnp.PyArray_DATA(p)
        cdef void* pt = cnp.PyArray_DATA(t)
        cdef void* pg = cnp.PyArray_DATA(g)
        cdef double* pr = <double*>cnp.PyArray_DATA(r)
        cdef bint single = pred.dtype == np.float32
        with nogil:  # other Python threads run meanwhile
            if single:
                squared_error(<const float*>pp, <const float*>pt, <float*>pg, pr, rows, columns)
            else:
                squared_error(<const double*>pp, <const double*>pt, <double*>pg, pr, rows,
                              columns)
        self._grad = grad
        return sum_in_order(<double*>cnp.PyArray_DATA(r), rows) / rows



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
        # uint64 labels past 2**63 wrap to negative ones here, which the check refuses.
        cdef cnp.ndarray y = np.ascontiguousarray(labels, dtype=np.int64)
        if labels_outside(<const long long*>cnp.PyArray_DATA(y), rows, classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {classes}), got values "
                             f"from {labels.min()} to {labels.max()}")
        grad = np.empty_like(pred)
        row_loss = np.empty(rows, np.float64)
        cdef int n_threads = threads_for(rows * classes, GRAIN)
        cdef cnp.ndarray scratch = np.empty(n_threads * classes, np.float64)
        cdef cnp.ndarray p = pred, g = grad, r = row_loss
        cdef void* pp = cnp.PyArray_DATA(p)
        cdef void* pg = cnp.PyArray_DATA(g)
        cdef const long long* py = <const long long*>cnp.PyArray_DATA(y)
        cdef double* pr = <double*>cnp.PyArray_DATA(r)
        cdef double* pscratch = <double*>cnp.PyArray_DATA(scratch)
        cdef bint single = pred.dtype == np.float32
        with nogil:  # other Python threads run meanwhile
            if single:
                softmax_cross_entropy(<const float*>pp, py, <float*>pg, pr, pscratch, rows,
                                      classes, n_threads)
            else:
                softmax_cross_entropy(<const double*>pp, py, <double*>pg, pr, pscratch, rows,
                                      classes, n_threads)
        self._grad = grad
        return sum_in_order(<double*>cnp.PyArray_DATA(r), rows) / rows

