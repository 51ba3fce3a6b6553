"""Batch and layer normalisation, as torch.nn.BatchNorm1d/2d and torch.nn.LayerNorm.

Both normalise x by a mean and a biased variance, y = (x − mean)/√(var + eps)·w + b:
batch norm per channel over the batch (and length or height × width), layer norm
per sample over its last axes. x is viewed as (batch, channels, inner): for batch
norm channels are axis 1 and inner the axes after it; for layer norm the
"channels" are the rows to normalise and inner the normalised axes.

Every statistic is a sum in double, by one thread in one order (threads own
ranges of channels, or of rows), so results do not depend on the thread count.
With x̂ = (x − mean)·s, s = 1/√(var + eps), and M values per statistic, backward:
  dL/dw = Σ dy·x̂, dL/db = Σ dy,
  dL/dx = w·s·(dy − Σdy/M − x̂·Σ(dy·x̂)/M) where the statistics came from x
  (training), dL/dx = w·s·dy where they are fixed (batch norm in evaluation).
"""
import math

import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from corenet.kernels.threads cimport threads_for

from corenet.errors import ShapeError
from corenet.arguments import as_bool
from corenet.memory import check_parameters
from corenet.layer import (Buffer, Layer, Parameter, SetOnce, as_float_dtype, buffer_array,
                           check_grad, check_input, check_lengths, check_sizes,
                           parameter_arrays, require_forward)

cnp.import_array()

cdef enum:
    GRAIN = 1 << 14  # elements below which one thread runs


cdef inline int parts_for(Py_ssize_t work, Py_ssize_t owners) noexcept nogil:
    """Threads for a loop whose `owners` (channels, columns) each belong to one thread."""
    cdef int n_threads = threads_for(work, GRAIN)
    return <int>owners if owners < n_threads else n_threads


cdef void channel_sums(const floating* a, const double* a_center, const floating* b,
                       const double* b_center, Py_ssize_t batch, Py_ssize_t channels,
                       Py_ssize_t inner, double* sums, double* products) noexcept nogil:
    """Over batch × inner of a and b viewed as (batch, channels, inner), per channel c:
    sums[c] = Σ a, and products[c] = Σ (a − a_center[c])·(b − b_center[c]) when b is
    given (a NULL center is 0). The mean: Σ x; the variance: Σ (x − mean)², a second
    pass (no cancellation); backward: Σ dy and Σ dy·(x − mean). Threads own ranges
    of channels and walk the batch in order."""
    cdef int n_threads = parts_for(batch * channels * inner, channels)
    cdef Py_ssize_t chunk = (channels + n_threads - 1) // n_threads
    cdef Py_ssize_t part, n, c, i, start, stop, row
    cdef double total, product, a_shift, b_shift
    for part in prange(n_threads, num_threads=n_threads, schedule='static'):
        start = part * chunk
        stop = min(channels, start + chunk)
        for c in range(start, stop):
            if sums != NULL:
                sums[c] = 0
            if b != NULL:
                products[c] = 0
        for n in range(batch):
            for c in range(start, stop):
                row = (n * channels + c) * inner
                a_shift = a_center[c] if a_center != NULL else 0
                b_shift = b_center[c] if b_center != NULL else 0
                total = 0
                product = 0
                for i in range(inner):
                    total = total + a[row + i]
                    if b != NULL:
                        product = product + (a[row + i] - a_shift) * (b[row + i] - b_shift)
                if sums != NULL:
                    sums[c] = sums[c] + total
                if b != NULL:
                    products[c] = products[c] + product


cdef void channel_statistics(const floating* x, Py_ssize_t batch, Py_ssize_t channels,
                             Py_ssize_t inner, double* mean, double* variance) noexcept nogil:
    """mean[c] and biased variance[c] over batch × inner of x (batch, channels, inner)."""
    cdef Py_ssize_t c
    cdef double count = <double>(batch * inner)
    channel_sums(x, NULL, NULL, NULL, batch, channels, inner, mean, NULL)
    for c in range(channels):
        mean[c] = mean[c] / count
    channel_sums(x, mean, x, mean, batch, channels, inner, NULL, variance)
    for c in range(channels):
        variance[c] = variance[c] / count


cdef void channel_affine(const floating* p, const double* p_scale, const floating* x,
                         const double* center, const double* x_scale, const double* shift,
                         floating* out, Py_ssize_t batch, Py_ssize_t channels,
                         Py_ssize_t inner) noexcept nogil:
    """out = p·p_scale[c] + (x − center[c])·x_scale[c] + shift[c] over (batch, channels,
    inner); p (with p_scale) or x (with center and x_scale) may be NULL: that term is 0.
    Forward: x only; backward: p = dy, plus x where the statistics came from x."""
    cdef Py_ssize_t row, c, i
    cdef double value
    for row in prange(batch * channels, num_threads=threads_for(batch * channels * inner, GRAIN),
                      schedule='static'):
        c = row % channels
        for i in range(row * inner, (row + 1) * inner):
            value = shift[c]
            if p != NULL:
                value = value + p[i] * p_scale[c]
            if x != NULL:
                value = value + (x[i] - center[c]) * x_scale[c]
            out[i] = <floating>value


cdef void rows_normalize(const floating* x, const double* mean, const double* inv_std,
                         const floating* weight, const floating* bias, floating* out,
                         Py_ssize_t rows, Py_ssize_t width) noexcept nogil:
    """Layer norm's forward: out[r, k] = (x[r, k] − mean[r])·inv_std[r]·weight[k] + bias[k]
    (weight, bias may be NULL)."""
    cdef Py_ssize_t r, k
    cdef double value
    for r in prange(rows, num_threads=threads_for(rows * width, GRAIN), schedule='static'):
        for k in range(width):
            value = (x[r * width + k] - mean[r]) * inv_std[r]
            if weight != NULL:
                value = value * weight[k]
            if bias != NULL:
                value = value + bias[k]
            out[r * width + k] = <floating>value


cdef void rows_input_grad(const floating* grad, const floating* x, const double* mean,
                          const double* inv_std, const floating* weight, floating* x_grad,
                          Py_ssize_t rows, Py_ssize_t width) noexcept nogil:
    """Layer norm's dL/dx, one row per thread: with g = dy·w, s = inv_std[r],
    dx = s·(g − Σg/K − x̂·Σ(g·x̂)/K)."""
    cdef Py_ssize_t r, k
    cdef double g, total, dot, normalized
    for r in prange(rows, num_threads=threads_for(rows * width, GRAIN), schedule='static'):
        total = 0
        dot = 0
        for k in range(width):
            g = grad[r * width + k] * (weight[k] if weight != NULL else 1)
            total = total + g
            dot = dot + g * (x[r * width + k] - mean[r]) * inv_std[r]
        total = total / width
        dot = dot / width
        for k in range(width):
            g = grad[r * width + k] * (weight[k] if weight != NULL else 1)
            normalized = (x[r * width + k] - mean[r]) * inv_std[r]
            x_grad[r * width + k] = <floating>(inv_std[r] * (g - total - normalized * dot))


cdef void columns_parameter_sums(const floating* grad, const floating* x, const double* mean,
                                 const double* inv_std, double* weight_sum, double* bias_sum,
                                 Py_ssize_t rows, Py_ssize_t width) noexcept nogil:
    """Layer norm's weight_sum[k] = Σ_r dy·x̂ and bias_sum[k] = Σ_r dy: threads own
    column ranges and walk the rows in order."""
    cdef int n_threads = parts_for(rows * width, width)
    cdef Py_ssize_t chunk = (width + n_threads - 1) // n_threads
    cdef Py_ssize_t part, r, k, start, stop, at
    for part in prange(n_threads, num_threads=n_threads, schedule='static'):
        start = part * chunk
        stop = min(width, start + chunk)
        for k in range(start, stop):
            weight_sum[k] = 0
            bias_sum[k] = 0
        for r in range(rows):
            for k in range(start, stop):
                at = r * width + k
                weight_sum[k] = weight_sum[k] + grad[at] * (x[at] - mean[r]) * inv_std[r]
                bias_sum[k] = bias_sum[k] + grad[at]


# -- Python-callable twins, on flat arrays; None stands for a NULL pointer -------------
# Each checks its arrays' lengths against the sizes it is given before the kernel
# indexes by them: in C, since the layers call them at every step, and through
# corenet.layer's check_sizes and check_lengths only to name what is wrong.

cdef inline bint is_product(Py_ssize_t length, Py_ssize_t a, Py_ssize_t b,
                            Py_ssize_t c) noexcept:
    """length == a·b·c for sizes of at least 1, by division: the product could wrap."""
    return length % a == 0 and (length // a) % b == 0 and length // a // b == c


def _mismatch(function):
    """Past the named checks, which cover each C check: a net, never reached."""
    return ValueError(f"{function}: the arrays do not match the sizes given")


def _check_terms(function, size, channels, **arrays):
    """affine's term: its flat array (the first) of ``size`` and its per-channel
    arrays, all given."""
    (label, flat), *per_channel = arrays.items()
    lengths = {label: (len(flat), size)}
    for name, array in per_channel:
        if array is None:
            raise ValueError(f"{function}: {label} needs {name}, got None")
        lengths[name] = (len(array), channels)
    check_lengths(function, **lengths)


def _refuse_rows(function, width, mean, inv_std, weight, bias, **flat):
    """Layer norm's twins, once their C check failed: rows of ``width`` (one mean and
    inv_std per row), weight and bias (None or one per column), the flat arrays
    rows × width."""
    check_sizes(function, 1, width=width)
    rows = len(mean)
    lengths = {label: (len(array), rows * width) for label, array in flat.items()}
    lengths["inv_std"] = (len(inv_std), rows)
    for label, array in (("weight", weight), ("bias", bias)):
        if array is not None:
            lengths[label] = (len(array), width)
    check_lengths(function, **lengths)


cdef inline const floating* optional(const floating[::1] array):
    if array is None:
        return NULL
    return &array[0]


cdef inline const double* optional_double(const double[::1] array):
    if array is None:
        return NULL
    return &array[0]


def statistics(const floating[::1] x, Py_ssize_t batch, Py_ssize_t channels,
               Py_ssize_t inner, double[::1] mean, double[::1] variance):
    if not (batch >= 1 and channels >= 1 and inner >= 1 and mean.shape[0] == channels
            and variance.shape[0] == channels
            and is_product(x.shape[0], batch, channels, inner)):
        check_sizes("statistics", 1, batch=batch, channels=channels, inner=inner)
        check_lengths("statistics", x=(x.shape[0], (<object>batch) * channels * inner),
                      mean=(mean.shape[0], channels), variance=(variance.shape[0], channels))
        raise _mismatch("statistics")
    with nogil:
        channel_statistics(&x[0], batch, channels, inner, &mean[0], &variance[0])


def grad_sums(const floating[::1] grad, const floating[::1] x, const double[::1] mean,
              Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t inner,
              double[::1] grad_sum, double[::1] grad_dot_centered):
    if not (batch >= 1 and channels >= 1 and inner >= 1 and mean.shape[0] == channels
            and grad_sum.shape[0] == channels and grad_dot_centered.shape[0] == channels
            and is_product(grad.shape[0], batch, channels, inner)
            and x.shape[0] == grad.shape[0]):
        check_sizes("grad_sums", 1, batch=batch, channels=channels, inner=inner)
        size = (<object>batch) * channels * inner
        check_lengths("grad_sums", grad=(grad.shape[0], size), x=(x.shape[0], size),
                      mean=(mean.shape[0], channels), grad_sum=(grad_sum.shape[0], channels),
                      grad_dot_centered=(grad_dot_centered.shape[0], channels))
        raise _mismatch("grad_sums")
    with nogil:
        channel_sums(&grad[0], NULL, &x[0], &mean[0], batch, channels, inner, &grad_sum[0],
                     &grad_dot_centered[0])


def affine(floating[::1] out, const floating[::1] p, const double[::1] p_scale,
           const floating[::1] x, const double[::1] center, const double[::1] x_scale,
           const double[::1] shift, Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t inner):
    """out = channel_affine(...) (flat arrays; out first: Cython picks the float type
    from the first array argument, and p or x may be None, with their scales)."""
    cdef Py_ssize_t size = out.shape[0]
    if not (batch >= 1 and channels >= 1 and inner >= 1 and shift.shape[0] == channels
            and is_product(size, batch, channels, inner)
            and (p is None or (p.shape[0] == size and p_scale is not None
                               and p_scale.shape[0] == channels))
            and (x is None or (x.shape[0] == size and center is not None and x_scale is not None
                               and center.shape[0] == channels
                               and x_scale.shape[0] == channels))):
        check_sizes("affine", 1, batch=batch, channels=channels, inner=inner)
        expected = (<object>batch) * channels * inner
        check_lengths("affine", out=(size, expected), shift=(shift.shape[0], channels))
        if p is not None:
            _check_terms("affine", expected, channels, p=p, p_scale=p_scale)
        if x is not None:
            _check_terms("affine", expected, channels, x=x, center=center, x_scale=x_scale)
        raise _mismatch("affine")
    cdef const floating* p_data = optional(p)
    cdef const floating* x_data = optional(x)
    cdef const double* p_scale_data = optional_double(p_scale)
    cdef const double* center_data = optional_double(center)
    cdef const double* x_scale_data = optional_double(x_scale)
    with nogil:
        channel_affine(p_data, p_scale_data, x_data, center_data, x_scale_data, &shift[0],
                       &out[0], batch, channels, inner)


def layer_norm_forward(const floating[::1] x, const double[::1] mean,
                       const double[::1] inv_std, const floating[::1] weight,
                       const floating[::1] bias, floating[::1] out, Py_ssize_t width):
    cdef Py_ssize_t rows = mean.shape[0]
    if not (width >= 1 and inv_std.shape[0] == rows and x.shape[0] % width == 0
            and x.shape[0] // width == rows and out.shape[0] == x.shape[0]
            and (weight is None or weight.shape[0] == width)
            and (bias is None or bias.shape[0] == width)):
        _refuse_rows("layer_norm_forward", width, mean, inv_std, weight, bias, x=x, out=out)
        raise _mismatch("layer_norm_forward")
    if rows == 0:
        return
    cdef const floating* weight_data = optional(weight)
    cdef const floating* bias_data = optional(bias)
    with nogil:
        rows_normalize(&x[0], &mean[0], &inv_std[0], weight_data, bias_data, &out[0],
                       rows, width)


def layer_norm_input_grad(const floating[::1] grad, const floating[::1] x,
                          const double[::1] mean, const double[::1] inv_std,
                          const floating[::1] weight, floating[::1] x_grad, Py_ssize_t width):
    cdef Py_ssize_t rows = mean.shape[0]
    if not (width >= 1 and inv_std.shape[0] == rows and grad.shape[0] % width == 0
            and grad.shape[0] // width == rows and x.shape[0] == grad.shape[0]
            and x_grad.shape[0] == grad.shape[0]
            and (weight is None or weight.shape[0] == width)):
        _refuse_rows("layer_norm_input_grad", width, mean, inv_std, weight, None, grad=grad,
                     x=x, x_grad=x_grad)
        raise _mismatch("layer_norm_input_grad")
    if rows == 0:
        return
    cdef const floating* weight_data = optional(weight)
    with nogil:
        rows_input_grad(&grad[0], &x[0], &mean[0], &inv_std[0], weight_data, &x_grad[0],
                        rows, width)


def layer_norm_parameter_sums(const floating[::1] grad, const floating[::1] x,
                              const double[::1] mean, const double[::1] inv_std,
                              double[::1] weight_sum, double[::1] bias_sum, Py_ssize_t width):
    cdef Py_ssize_t rows = mean.shape[0]
    if not (width >= 1 and inv_std.shape[0] == rows and grad.shape[0] % width == 0
            and grad.shape[0] // width == rows and x.shape[0] == grad.shape[0]
            and weight_sum.shape[0] == width and bias_sum.shape[0] == width):
        _refuse_rows("layer_norm_parameter_sums", width, mean, inv_std, None, None, grad=grad,
                     x=x)
        check_lengths("layer_norm_parameter_sums", weight_sum=(weight_sum.shape[0], width),
                      bias_sum=(bias_sum.shape[0], width))
        raise _mismatch("layer_norm_parameter_sums")
    if rows == 0:
        weight_sum[:] = 0
        bias_sum[:] = 0
        return
    with nogil:
        columns_parameter_sums(&grad[0], &x[0], &mean[0], &inv_std[0], &weight_sum[0],
                               &bias_sum[0], rows, width)


# -- the layers ----------------------------------------------------------------------

def _number(layer: str, label: str, value, minimum: float, maximum: float = math.inf,
            above_minimum: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not minimum <= value <= maximum or (above_minimum and value == minimum):
        bound = f"> {minimum:g}" if above_minimum else f"in [{minimum:g}, {maximum:g}]"
        raise ValueError(f"{layer}: {label} must be a number {bound}, got {value!r}")
    return float(value)


_flag = as_bool  # True or False, naming the layer otherwise


def _positive_int(layer: str, label: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{layer}: {label} must be a positive integer, got {value!r}")
    return int(value)


class BatchNorm(SetOnce, Layer):
    """Batch normalisation over axis 1, as torch.nn.BatchNorm1d/2d (one class each
    below). Training normalises by the batch's mean and biased variance and moves
    the running statistics towards them (the unbiased variance, as PyTorch:
    running = (1 − momentum)·running + momentum·batch; momentum=None is the
    cumulative average); evaluation normalises by the running statistics, which
    are buffers saved and loaded with the model. With track_running_stats=False
    the batch's statistics serve in both modes."""

    sample_ndims = ()
    layout = ""
    # The parameters' and buffers' shapes follow from these; eps and momentum may
    # change (as in PyTorch) and are checked at each forward.
    set_once = frozenset({"num_features", "affine", "track_running_stats"})

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype="float32"):
        super().__init__()
        check_parameters(self.name, {
            **self.parameter_shapes(num_features, eps, momentum, affine, track_running_stats,
                                    dtype),
            **self.state_shapes(num_features, eps, momentum, affine, track_running_stats, dtype)})
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.dtype = as_float_dtype(dtype, self.name)
        features = self.num_features
        self.weight = Parameter("weight", np.ones(features, self.dtype)) if affine else None
        self.bias = Parameter("bias", np.zeros(features, self.dtype)) if affine else None
        self.running_mean = self.running_var = self.num_batches_tracked = None
        if track_running_stats:
            self.running_mean = Buffer("running_mean", np.zeros(features, self.dtype))
            self.running_var = Buffer("running_var", np.ones(features, self.dtype))
            self.num_batches_tracked = Buffer("num_batches_tracked", np.zeros((), np.int64))
        self._x = None

    @classmethod
    def parameter_shapes(cls, num_features, eps=1e-5, momentum=0.1, affine=True,
                         track_running_stats=True, dtype="float32"):
        features = _positive_int(cls.name, "num_features", num_features)
        _number(cls.name, "eps", eps, 0, above_minimum=True)
        if momentum is not None:
            _number(cls.name, "momentum", momentum, 0, 1)
        _flag(cls.name, "track_running_stats", track_running_stats)
        as_float_dtype(dtype, cls.name)
        return {"weight": (features,), "bias": (features,)} \
            if _flag(cls.name, "affine", affine) else {}

    @classmethod
    def state_shapes(cls, num_features, eps=1e-5, momentum=0.1, affine=True,
                     track_running_stats=True, dtype="float32"):
        features = _positive_int(cls.name, "num_features", num_features)
        if not track_running_stats:
            return {}
        return {"running_mean": (features,), "running_var": (features,),
                "num_batches_tracked": ()}

    def _view(self, x) -> tuple:
        """(batch, channels, inner) of x, or a ShapeError naming the layout."""
        if x.ndim - 1 not in self.sample_ndims or x.shape[1] != self.num_features:
            raise ShapeError(f"{self.name}: expected an input of shape {self.layout} with "
                             f"C = {self.num_features}, got shape {x.shape}")
        return x.shape[0], self.num_features, math.prod(x.shape[2:])

    def _affine_values(self) -> tuple:
        """(weight, bias) in float64 for the per-channel coefficients; 1 and 0 without affine."""
        if not self.affine:
            return np.ones(self.num_features), np.zeros(self.num_features)
        shape = (self.num_features,)
        weight, _ = parameter_arrays(self, self.weight, shape, self.dtype, with_grad=False)
        bias, _ = parameter_arrays(self, self.bias, shape, self.dtype, with_grad=False)
        return weight.astype(np.float64), bias.astype(np.float64)

    def _running(self) -> tuple:
        shape = (self.num_features,)
        return (buffer_array(self, self.running_mean, shape, self.dtype),
                buffer_array(self, self.running_var, shape, self.dtype),
                buffer_array(self, self.num_batches_tracked, (), np.int64))

    def _update_running(self, mean, variance, count) -> None:
        running_mean, running_var, batches = self._running()
        if batches < 0:  # a replaced buffer: 1 / 0 below for momentum=None
            raise ValueError(f"{self.name}: num_batches_tracked must be >= 0, got {batches}")
        batches[...] += 1
        factor = self.momentum if self.momentum is not None else 1.0 / int(batches)
        running_mean[...] = (1 - factor) * running_mean + factor * mean
        running_var[...] = (1 - factor) * running_var + factor * variance * (count / (count - 1))

    def forward(self, x):
        x = check_input(self, x, dtype=self.dtype)
        _number(self.name, "eps", self.eps, 0, above_minimum=True)
        if self.momentum is not None:
            _number(self.name, "momentum", self.momentum, 0, 1)
        batch, channels, inner = self._view(x)
        count = batch * inner
        if count == 0:
            # Samples of size zero: nothing to normalize, and no statistics to take (the
            # running ones would become NaN). As PyTorch, the output is empty and the
            # batch is counted (momentum=None averages over the batches counted).
            if self.training and self.track_running_stats:
                batches = self._running()[2]
                batches[...] += 1
            self._x, self._mean, self._inv_std, self._from_batch = x, None, None, False
            return self.buffer("out", x.shape, self.dtype)
        from_batch = self.training or not self.track_running_stats
        if from_batch:
            if self.training and count == 1:
                raise ShapeError(f"{self.name}: expected more than 1 value per channel in "
                                 f"training, got shape {x.shape}")
            mean, variance = np.empty(channels), np.empty(channels)
            statistics(x.reshape(-1), batch, channels, inner, mean, variance)
            if self.training and self.track_running_stats:
                self._update_running(mean, variance, count)
        else:
            running_mean, running_var, _ = self._running()
            mean, variance = running_mean.astype(np.float64), running_var.astype(np.float64)
        shifted = variance + self.eps
        if not from_batch and not (shifted > 0).all():
            # A model file's running_var below -eps, or NaN: every output would be NaN.
            raise ValueError(f"{self.name}: running_var must hold numbers > -eps "
                             f"({-self.eps:g}), got {variance[~(shifted > 0)][0]}")
        inv_std = 1 / np.sqrt(shifted)
        weight, bias = self._affine_values()
        out = self.buffer("out", x.shape, self.dtype)
        affine(out.reshape(-1), None, None, x.reshape(-1), mean, weight * inv_std, bias,
               batch, channels, inner)
        self._x, self._mean, self._inv_std, self._from_batch = x, mean, inv_std, from_batch
        return out

    def backward(self, grad):
        require_forward(self, self._x)
        x, mean, inv_std = self._x, self._mean, self._inv_std
        grad = check_grad(self, grad, x.shape, self.dtype)
        batch, channels, inner = self._view(x)
        count = batch * inner
        if count == 0:  # as forward: the parameters' gradients get nothing
            return self.buffer("x_grad", x.shape, self.dtype) if self.needs_input_grad else None
        x_flat, grad_flat = x.reshape(-1), grad.reshape(-1)
        grad_sum, grad_dot = np.empty(channels), np.empty(channels)  # Σdy, Σdy·(x − mean)
        if self.affine or (self.needs_input_grad and self._from_batch):
            grad_sums(grad_flat, x_flat, mean, batch, channels, inner, grad_sum, grad_dot)
        if self.affine:
            _, weight_grad = parameter_arrays(self, self.weight, (channels,), self.dtype)
            _, bias_grad = parameter_arrays(self, self.bias, (channels,), self.dtype)
            weight_grad += grad_dot * inv_std
            bias_grad += grad_sum
        if not self.needs_input_grad:
            return None
        scale = self._affine_values()[0] * inv_std
        x_grad = self.buffer("x_grad", x.shape, self.dtype)
        if self._from_batch:
            affine(x_grad.reshape(-1), grad_flat, scale, x_flat, mean,
                   -scale * inv_std ** 2 * grad_dot / count, -scale * grad_sum / count,
                   batch, channels, inner)
        else:
            affine(x_grad.reshape(-1), grad_flat, scale, None, None, None, np.zeros(channels),
                   batch, channels, inner)
        return x_grad

    def parameters(self):
        return [self.weight, self.bias] if self.affine else []

    def state_buffers(self):
        if not self.track_running_stats:
            return []
        return [self.running_mean, self.running_var, self.num_batches_tracked]

    def output_shape(self, *input_shapes):
        shape = super().output_shape(*input_shapes)
        if len(shape) not in self.sample_ndims or shape[0] != self.num_features:
            raise ShapeError(f"{self.name}: expected inputs of shape {self.layout} with "
                             f"C = {self.num_features}, got per-sample shape {shape}")
        return shape

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats,
                "dtype": self.dtype.name}


class BatchNorm1d(BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L), as torch.nn.BatchNorm1d.

    >>> import corenet.layers as L, numpy as np
    >>> layer = L.BatchNorm1d(2, dtype="float64")
    >>> layer.forward(np.array([[1.0, 10.0], [3.0, 30.0]])).round(4)
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> layer.running_mean.value, layer.running_var.value, layer.num_batches_tracked.value
    (array([0.2, 2. ]), array([ 1.1, 20.9]), array(1))
    """

    name = "batch_norm1d"
    sample_ndims = (1, 2)
    layout = "(N, C) or (N, C, L)"


class BatchNorm2d(BatchNorm):
    """Batch normalisation of (N, C, H, W) per channel, as torch.nn.BatchNorm2d."""

    name = "batch_norm2d"
    sample_ndims = (3,)
    layout = "(N, C, H, W)"


def _normalized_shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not shape or any(
            isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1
            for size in shape):
        raise ValueError(f"layer_norm: normalized_shape must be a positive int or a "
                         f"non-empty tuple of them, got {shape!r}")
    return tuple(int(size) for size in shape)


class LayerNorm(SetOnce, Layer):
    """Normalisation of each sample over its last axes ``normalized_shape``, as
    torch.nn.LayerNorm: mean and biased variance of those axes, then an elementwise
    weight (ones) and bias (zeros) of that shape when elementwise_affine.

    >>> import corenet.layers as L, numpy as np
    >>> L.LayerNorm(4, dtype="float64").forward(np.array([[1.0, 2.0, 3.0, 4.0]])).round(4)
    array([[-1.3416, -0.4472,  0.4472,  1.3416]])
    """

    name = "layer_norm"

    set_once = frozenset({"normalized_shape", "elementwise_affine", "use_bias"})

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype="float32"):
        super().__init__()
        shapes = check_parameters(self.name, self.parameter_shapes(
            normalized_shape, eps, elementwise_affine, bias, dtype))
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = float(eps)
        self.elementwise_affine, self.use_bias = bool(elementwise_affine), bool(bias)
        self.dtype = as_float_dtype(dtype, self.name)
        self.weight = Parameter("weight", np.ones(shapes["weight"], self.dtype)) \
            if "weight" in shapes else None
        self.bias = Parameter("bias", np.zeros(shapes["bias"], self.dtype)) \
            if "bias" in shapes else None
        self._x = None

    @classmethod
    def parameter_shapes(cls, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                         dtype="float32"):
        shape = _normalized_shape(normalized_shape)
        _number(cls.name, "eps", eps, 0, above_minimum=True)
        as_float_dtype(dtype, cls.name)
        with_bias = _flag(cls.name, "bias", bias)
        if not _flag(cls.name, "elementwise_affine", elementwise_affine):
            return {}
        return {"weight": shape, "bias": shape} if with_bias else {"weight": shape}

    def _ends_in_normalized_shape(self, shape: tuple) -> bool:
        start = len(shape) - len(self.normalized_shape)  # no negative index: wraparound is off
        return start >= 0 and tuple(shape[start:]) == self.normalized_shape

    def _values(self, parameter, with_grad: bool):
        if parameter is None:
            return None, None
        value, grad = parameter_arrays(self, parameter, self.normalized_shape, self.dtype,
                                       with_grad)
        return value.reshape(-1), None if grad is None else grad.reshape(-1)

    def forward(self, x):
        x = check_input(self, x, dtype=self.dtype)
        _number(self.name, "eps", self.eps, 0, above_minimum=True)
        if not self._ends_in_normalized_shape(x.shape[1:]):
            dims = ", ".join(map(str, self.normalized_shape))
            raise ShapeError(f"{self.name}: expected an input of shape (N, ..., {dims}), "
                             f"normalized_shape last, got shape {x.shape}")
        width = math.prod(self.normalized_shape)
        rows = x.size // width
        mean, variance = np.empty(rows), np.empty(rows)
        if rows:  # no samples of any size (N, 0, ...): nothing to take statistics of
            statistics(x.reshape(-1), 1, rows, width, mean, variance)
        inv_std = 1 / np.sqrt(variance + self.eps)
        out = self.buffer("out", x.shape, self.dtype)
        layer_norm_forward(x.reshape(-1), mean, inv_std, self._values(self.weight, False)[0],
                           self._values(self.bias, False)[0], out.reshape(-1), width)
        self._x, self._mean, self._inv_std = x, mean, inv_std
        return out

    def backward(self, grad):
        require_forward(self, self._x)
        x, mean, inv_std = self._x, self._mean, self._inv_std
        grad = check_grad(self, grad, x.shape, self.dtype)
        width = math.prod(self.normalized_shape)
        weight, weight_grad = self._values(self.weight, True)
        _, bias_grad = self._values(self.bias, True)
        if weight is not None:
            weight_sum, bias_sum = np.empty(width), np.empty(width)
            layer_norm_parameter_sums(grad.reshape(-1), x.reshape(-1), mean, inv_std,
                                      weight_sum, bias_sum, width)
            weight_grad += weight_sum
            if bias_grad is not None:
                bias_grad += bias_sum
        if not self.needs_input_grad:
            return None
        x_grad = self.buffer("x_grad", x.shape, self.dtype)
        layer_norm_input_grad(grad.reshape(-1), x.reshape(-1), mean, inv_std, weight,
                              x_grad.reshape(-1), width)
        return x_grad

    def parameters(self):
        return [parameter for parameter in (self.weight, self.bias) if parameter is not None]

    def output_shape(self, *input_shapes):
        shape = super().output_shape(*input_shapes)
        if not self._ends_in_normalized_shape(shape):
            raise ShapeError(f"{self.name}: expected a per-sample shape ending in "
                             f"{self.normalized_shape} (normalized_shape), got {tuple(shape)}")
        return shape

    def get_config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.use_bias,
                "dtype": self.dtype.name}
