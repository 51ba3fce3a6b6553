"""Pooling over (batch, channels, *spatial) in 2-D and 3-D, and global average pooling.

Each (sample, channel) plane is one task: threads own whole planes, and every
output and every input gradient is computed by one fixed sequence of
operations, so results are bitwise the same for any thread count.

max_pool: the output is the window's maximum over the input positions inside
the volume (padding never wins); backward sends each gradient to the position
that won, the first one on ties, as PyTorch does. avg_pool: the window's sum
divided by the kernel volume, the padding counted as zeros (PyTorch's
count_include_pad=True).
"""
import math

import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t
from libc.string cimport memset

from corenet.kernels.fused cimport cn_row_sum_double, cn_row_sum_float_in_double
from corenet.kernels.threads cimport threads_for

from corenet.errors import ShapeError
from corenet.layer import Layer, SetOnce, check_grad, check_input, require_forward
from corenet_conv.geometry import Window, as_3d_shape, spatial_input

cnp.import_array()

cdef enum:
    GRAIN = 1 << 15  # window elements below which one thread runs


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* a where mask is all ones, b where it is zeros, on the bits: no branch. Both 2 x 2
     * kernels avoid branches on the data, which mispredict about half the time on
     * random values where rows are too narrow to vectorize (planes of 4 x 4 or 8 x 8
     * ran at 9 ns an output); wide rows vectorize into blends either way. */
    #define CN_BITS_SELECT(T, U, mask, a, b) ({                                          \
        U a_bits_, b_bits_; T result_;                                                   \
        memcpy(&a_bits_, &(a), sizeof(U)); memcpy(&b_bits_, &(b), sizeof(U));           \
        a_bits_ = (a_bits_ & (mask)) | (b_bits_ & ~(mask));                              \
        memcpy(&result_, &a_bits_, sizeof(U)); result_; })

    /* The common 2 x 2 window, stride 2, no padding, over 2-D planes: the same
     * choices as max_plane in the same order (top left, top right, bottom left,
     * bottom right): a value replaces the best when larger or NaN (a sum of the two
     * tests, not an "or" that the compiler turns into branches). Planes of even
     * height come as one tall image of out_height rows of windows, plane_rows of
     * them a plane (a tenth faster than a call per 4 x 4 plane); arg-maxes are
     * indices within their plane. */
    #define CN_MAX_2X2(NAME, T)                                                          \
    static void NAME(const T *restrict x, ptrdiff_t width, ptrdiff_t out_height,         \
                     ptrdiff_t out_width, T *restrict out, int32_t *restrict argmax,     \
                     ptrdiff_t plane_rows)                                               \
    {                                                                                    \
        ptrdiff_t row_in_plane = 0;                                                      \
        for (ptrdiff_t oh = 0; oh < out_height; ++oh) {                                  \
            const T *top = x + 2 * oh * width, *bottom = top + width;                    \
            T *o = out + oh * out_width;                                                 \
            int32_t *arg = argmax + oh * out_width;                                      \
            int32_t first = (int32_t)(2 * row_in_plane * width);                         \
            if (++row_in_plane == plane_rows) row_in_plane = 0;                          \
            for (ptrdiff_t ow = 0; ow < out_width; ++ow) {                               \
                T best = top[2 * ow], value;                                             \
                int32_t index = first + 2 * (int32_t)ow, chosen = index;                 \
                int take;                                                                \
                value = top[2 * ow + 1];                                                 \
                take = (value > best) + (value != value); /* never both true */          \
                best = take ? value : best;                                              \
                chosen = take ? index + 1 : chosen;                                      \
                value = bottom[2 * ow];                                                  \
                take = (value > best) + (value != value);                                \
                best = take ? value : best;                                              \
                chosen = take ? index + (int32_t)width : chosen;                         \
                value = bottom[2 * ow + 1];                                              \
                take = (value > best) + (value != value);                                \
                best = take ? value : best;                                              \
                chosen = take ? index + (int32_t)width + 1 : chosen;                     \
                o[ow] = best;                                                            \
                arg[ow] = chosen;                                                        \
            }                                                                            \
        }                                                                                \
    }
    CN_MAX_2X2(cn_max_2x2_float, float)
    CN_MAX_2X2(cn_max_2x2_double, double)

    /* Its backward: each input lies in one window at most, so each window writes its
     * four inputs, its gradient at the arg-max and zeros elsewhere, in one pass and
     * no memset; an odd last row or column, in no window, is zeroed. The gradient is
     * added to zero, as the general backward adds it into a zeroed plane: a -0
     * becomes +0 alike, as in PyTorch. */
    #define CN_MAX_2X2_BACKWARD(NAME, T, U)                                              \
    static void NAME(const T *restrict grad, const int32_t *restrict argmax,             \
                     ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_height,            \
                     ptrdiff_t out_width, T *restrict dx, ptrdiff_t plane_rows)          \
    {                                                                                    \
        const T zero = 0;                                                                \
        ptrdiff_t row_in_plane = 0;                                                      \
        for (ptrdiff_t oh = 0; oh < out_height; ++oh) {                                  \
            T *top = dx + 2 * oh * width, *bottom = top + width;                         \
            const T *g = grad + oh * out_width;                                          \
            const int32_t *arg = argmax + oh * out_width;                                \
            int32_t first = (int32_t)(2 * row_in_plane * width);                         \
            if (++row_in_plane == plane_rows) row_in_plane = 0;                          \
            for (ptrdiff_t ow = 0; ow < out_width; ++ow) {                               \
                T value = (T)0 + g[ow];                                                  \
                int32_t at = arg[ow] - first - 2 * (int32_t)ow; /* 0, 1, width, width+1 */ \
                top[2 * ow] = CN_BITS_SELECT(T, U, -(U)(at == 0), value, zero);          \
                top[2 * ow + 1] = CN_BITS_SELECT(T, U, -(U)(at == 1), value, zero);      \
                bottom[2 * ow] = CN_BITS_SELECT(T, U, -(U)(at == (int32_t)width), value, \
                                                zero);                                   \
                bottom[2 * ow + 1] = CN_BITS_SELECT(T, U, -(U)(at == (int32_t)width + 1),\
                                                    value, zero);                        \
            }                                                                            \
            if (width > 2 * out_width) top[width - 1] = bottom[width - 1] = 0;           \
        }                                                                                \
        if (height > 2 * out_height)                                                     \
            memset(dx + (height - 1) * width, 0, width * sizeof(T));                     \
    }
    CN_MAX_2X2_BACKWARD(cn_max_2x2_backward_float, float, uint32_t)
    CN_MAX_2X2_BACKWARD(cn_max_2x2_backward_double, double, uint64_t)
    """
    void cn_max_2x2_float(const float* x, ptrdiff_t width, ptrdiff_t out_height,
                          ptrdiff_t out_width, float* out, int32_t* argmax,
                          ptrdiff_t plane_rows) noexcept nogil
    void cn_max_2x2_double(const double* x, ptrdiff_t width, ptrdiff_t out_height,
                           ptrdiff_t out_width, double* out, int32_t* argmax,
                           ptrdiff_t plane_rows) noexcept nogil
    void cn_max_2x2_backward_float(const float* grad, const int32_t* argmax,
                                   ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_height,
                                   ptrdiff_t out_width, float* dx,
                                   ptrdiff_t plane_rows) noexcept nogil
    void cn_max_2x2_backward_double(const double* grad, const int32_t* argmax,
                                    ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_height,
                                    ptrdiff_t out_width, double* dx,
                                    ptrdiff_t plane_rows) noexcept nogil


cdef struct Pooling:  # sizes of one plane, in three axes (2-D: depth 1)
    Py_ssize_t depth, height, width, out_depth, out_height, out_width
    Py_ssize_t kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w
    Py_ssize_t pad_d, pad_h, pad_w


cdef inline void window_range(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad,
                              Py_ssize_t kernel, Py_ssize_t size, Py_ssize_t* lo,
                              Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the input positions of output o's window that lie inside [0, size)."""
    lo[0] = o * stride - pad
    hi[0] = min(lo[0] + kernel, size)
    lo[0] = max(lo[0], 0)


cdef inline bint replaces(floating value, floating best) noexcept nogil:
    """Whether a later window element takes the place of the current maximum:
    strictly greater (the first maximum wins ties), or NaN (NaN wins, as in PyTorch).
    A sum of the two tests, never both true, for selects without branches: on random
    data a branch here mispredicts half the time."""
    return (value > best) + (value != value)


cdef void max_plane(const Pooling* q, const floating* x, floating* out,
                    int32_t* argmax) noexcept nogil:
    cdef Py_ssize_t od, oh, ow, d0, d1, h0, h1, w0, w1, i, j, l, index, best_index, o = 0
    cdef floating value, best
    cdef bint take
    for od in range(q.out_depth):
        window_range(od, q.stride_d, q.pad_d, q.kernel_d, q.depth, &d0, &d1)
        for oh in range(q.out_height):
            window_range(oh, q.stride_h, q.pad_h, q.kernel_h, q.height, &h0, &h1)
            for ow in range(q.out_width):
                window_range(ow, q.stride_w, q.pad_w, q.kernel_w, q.width, &w0, &w1)
                best_index = (d0 * q.height + h0) * q.width + w0
                best = x[best_index]
                for i in range(d0, d1):
                    for j in range(h0, h1):
                        for l in range(w0, w1):
                            index = (i * q.height + j) * q.width + l
                            value = x[index]
                            take = replaces(value, best)
                            best = value if take else best
                            best_index = index if take else best_index
                out[o] = best
                argmax[o] = <int32_t>best_index
                o += 1


cdef inline bint is_two_by_two(const Pooling* q) noexcept nogil:
    """The common 2 x 2 window, stride 2, no padding, in 2-D: cn_max_2x2's case."""
    return (q.depth == 1 and q.kernel_d == 1 and q.kernel_h == 2 and q.kernel_w == 2
            and q.stride_h == 2 and q.stride_w == 2 and q.pad_h == 0 and q.pad_w == 0)


cdef inline Py_ssize_t kernel_calls(const Pooling* q, Py_ssize_t planes,
                                    int n_threads) noexcept nogil:
    """Calls of a 2 x 2 kernel: one a thread, on its planes as one tall image, when the
    height is even (no row between planes lies outside every window), else one a plane."""
    return n_threads if q.height == 2 * q.out_height else planes


cdef void max_pool_forward(const Pooling* q, const floating* x, floating* out,
                           int32_t* argmax, Py_ssize_t planes) noexcept nogil:
    cdef Py_ssize_t plane, part, p0, p1
    cdef Py_ssize_t volume = q.depth * q.height * q.width
    cdef Py_ssize_t outputs = q.out_depth * q.out_height * q.out_width
    cdef int n_threads = threads_for(
        planes * outputs * q.kernel_d * q.kernel_h * q.kernel_w, GRAIN)
    # Parts of whole planes, each one kernel call; each output is computed alike in
    # any part, so the split changes no result.
    cdef Py_ssize_t parts = kernel_calls(q, planes, n_threads)
    if is_two_by_two(q):
        for part in prange(parts, num_threads=n_threads, schedule='static'):
            p0 = part * planes // parts
            p1 = (part + 1) * planes // parts
            if floating is float:
                cn_max_2x2_float(x + p0 * volume, q.width, (p1 - p0) * q.out_height,
                                 q.out_width, out + p0 * outputs, argmax + p0 * outputs,
                                 q.out_height)
            else:
                cn_max_2x2_double(x + p0 * volume, q.width, (p1 - p0) * q.out_height,
                                  q.out_width, out + p0 * outputs, argmax + p0 * outputs,
                                  q.out_height)
        return
    for plane in prange(planes, num_threads=n_threads, schedule='static'):
        max_plane(q, x + plane * volume, out + plane * outputs, argmax + plane * outputs)


cdef void max_pool_backward(const Pooling* q, const floating* grad, const int32_t* argmax,
                            floating* x_grad, Py_ssize_t planes) noexcept nogil:
    cdef Py_ssize_t plane, o, part, p0, p1
    cdef Py_ssize_t volume = q.depth * q.height * q.width
    cdef Py_ssize_t outputs = q.out_depth * q.out_height * q.out_width
    cdef floating* dx
    cdef int n_threads = threads_for(planes * (outputs + volume), GRAIN)
    cdef Py_ssize_t parts = kernel_calls(q, planes, n_threads)
    if is_two_by_two(q):  # one pass, no memset (README: about a tenth less time)
        for part in prange(parts, num_threads=n_threads, schedule='static'):
            p0 = part * planes // parts
            p1 = (part + 1) * planes // parts
            if floating is float:
                cn_max_2x2_backward_float(grad + p0 * outputs, argmax + p0 * outputs,
                                          (p1 - p0) * q.height, q.width,
                                          (p1 - p0) * q.out_height, q.out_width,
                                          x_grad + p0 * volume, q.out_height)
            else:
                cn_max_2x2_backward_double(grad + p0 * outputs, argmax + p0 * outputs,
                                           (p1 - p0) * q.height, q.width,
                                           (p1 - p0) * q.out_height, q.out_width,
                                           x_grad + p0 * volume, q.out_height)
        return
    for plane in prange(planes, num_threads=n_threads, schedule='static'):
        dx = x_grad + plane * volume
        memset(dx, 0, volume * sizeof(floating))
        for o in range(outputs):
            dx[argmax[plane * outputs + o]] += grad[plane * outputs + o]


cdef void avg_plane(const Pooling* q, const floating* src, floating* dst, floating divisor,
                    bint backward) noexcept nogil:
    """Forward: dst[o] = Σ of window o of src / divisor. Backward: src is dL/dout, and
    each window's share is added into dst = dL/dx (zeroed first). One walk of the
    windows serves both, so they cannot disagree on which inputs a window holds."""
    cdef Py_ssize_t od, oh, ow, d0, d1, h0, h1, w0, w1, i, j, l, index, o = 0
    cdef floating total, share
    if backward:
        memset(dst, 0, q.depth * q.height * q.width * sizeof(floating))
    for od in range(q.out_depth):
        window_range(od, q.stride_d, q.pad_d, q.kernel_d, q.depth, &d0, &d1)
        for oh in range(q.out_height):
            window_range(oh, q.stride_h, q.pad_h, q.kernel_h, q.height, &h0, &h1)
            for ow in range(q.out_width):
                window_range(ow, q.stride_w, q.pad_w, q.kernel_w, q.width, &w0, &w1)
                total = 0
                share = src[o] / divisor if backward else 0
                for i in range(d0, d1):
                    for j in range(h0, h1):
                        for l in range(w0, w1):
                            index = (i * q.height + j) * q.width + l
                            if backward:
                                dst[index] += share
                            else:
                                total = total + src[index]
                if not backward:
                    dst[o] = total / divisor
                o += 1


cdef void avg_pool(const Pooling* q, const floating* src, floating* dst, Py_ssize_t planes,
                   bint backward) noexcept nogil:
    """Forward: src is x, dst the output. Backward: src is dL/dout, dst dL/dx."""
    cdef Py_ssize_t plane
    cdef Py_ssize_t volume = q.depth * q.height * q.width
    cdef Py_ssize_t outputs = q.out_depth * q.out_height * q.out_width
    # The kernel's volume as a float: three kernel sizes near 2³¹ overflow an integer.
    cdef floating divisor = <floating>q.kernel_d * q.kernel_h * q.kernel_w
    # A window adds at most the inputs it covers.
    cdef Py_ssize_t window = (min(q.kernel_d, q.depth) * min(q.kernel_h, q.height)
                              * min(q.kernel_w, q.width))
    cdef int n_threads = threads_for(planes * outputs * window, GRAIN)
    for plane in prange(planes, num_threads=n_threads, schedule='static'):
        if backward:
            avg_plane(q, src + plane * outputs, dst + plane * volume, divisor, True)
        else:
            avg_plane(q, src + plane * volume, dst + plane * outputs, divisor, False)


cdef Pooling make_pooling(tuple x_shape, tuple out_shape, tuple window):
    cdef Pooling q
    kernel, stride, pad, _ = window
    q.depth, q.height, q.width = x_shape[2:]
    q.out_depth, q.out_height, q.out_width = out_shape[2:]
    q.kernel_d, q.kernel_h, q.kernel_w = kernel
    q.stride_d, q.stride_h, q.stride_w = stride
    q.pad_d, q.pad_h, q.pad_w = pad
    return q


cdef inline void* data(cnp.ndarray array) noexcept nogil:
    return cnp.PyArray_DATA(array)


class PoolNd(SetOnce, Layer):
    """Max or average pooling over ``n_axes`` spatial axes (the subclasses fix both)."""

    n_axes = 0
    is_max = True
    set_once = frozenset({"window"})

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.window = Window(self.name, self.n_axes, kernel_size,
                             kernel_size if stride is None else stride, padding)
        if isinstance(padding, str):
            raise ValueError(f"{self.name}: padding must be an int or {self.n_axes} ints, "
                             f"got {padding!r}")
        if any(2 * p > k for p, k in zip(self.window.pad_before, self.window.kernel)):
            raise ValueError(f"{self.name}: padding {self.window.pad_before} must be at most "
                             f"half the kernel {self.window.kernel}, as in PyTorch")
        self._x = None
        self._out_shape = None

    def output_shape(self, *input_shapes):
        shape = spatial_input(self.name, self.n_axes, input_shapes)
        if 0 in shape[1:]:  # every window would hold only padding: nothing to pool
            raise ShapeError(f"{self.name}: every spatial size must be at least 1, got "
                             f"per-sample shape {shape}")
        return (shape[0],) + self.window.output_size(shape[1:])

    def forward(self, x):
        x = check_input(self, x, ndim=self.n_axes + 2)
        out_shape = (x.shape[0],) + self.output_shape(x.shape[1:])
        if math.prod(x.shape[2:]) >= 2 ** 31:
            raise ShapeError(f"{self.name}: a plane of {x.shape[2:]} is too large")
        out = self.buffer("out", out_shape, x.dtype)
        cdef Pooling q = make_pooling(as_3d_shape(x.shape), as_3d_shape(out_shape),
                                      self.window.as_3d())
        cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
        cdef cnp.ndarray xa = x, outa = out, argmax
        cdef bint is_float32 = x.dtype == np.float32
        if self.is_max:
            argmax = self.buffer("argmax", out_shape, np.int32)
            with nogil:
                if is_float32:
                    max_pool_forward(&q, <const float*>data(xa), <float*>data(outa),
                                     <int32_t*>data(argmax), planes)
                else:
                    max_pool_forward(&q, <const double*>data(xa), <double*>data(outa),
                                     <int32_t*>data(argmax), planes)
            self._argmax = argmax
        else:
            with nogil:
                if is_float32:
                    avg_pool(&q, <const float*>data(xa), <float*>data(outa), planes, False)
                else:
                    avg_pool(&q, <const double*>data(xa), <double*>data(outa), planes, False)
        self._x, self._out_shape = x, out_shape
        return out

    def backward(self, grad):
        require_forward(self, self._x)
        x = self._x
        grad = check_grad(self, grad, self._out_shape, x.dtype)
        if not self.needs_input_grad:
            return None
        x_grad = self.buffer("x_grad", x.shape, x.dtype)
        cdef Pooling q = make_pooling(as_3d_shape(x.shape), as_3d_shape(self._out_shape),
                                      self.window.as_3d())
        cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
        cdef cnp.ndarray ga = grad, dxa = x_grad, argmax
        cdef bint is_float32 = x.dtype == np.float32
        if self.is_max:
            argmax = self._argmax
            with nogil:
                if is_float32:
                    max_pool_backward(&q, <const float*>data(ga), <const int32_t*>data(argmax),
                                      <float*>data(dxa), planes)
                else:
                    max_pool_backward(&q, <const double*>data(ga),
                                      <const int32_t*>data(argmax), <double*>data(dxa), planes)
        else:
            with nogil:
                if is_float32:
                    avg_pool(&q, <const float*>data(ga), <float*>data(dxa), planes, True)
                else:
                    avg_pool(&q, <const double*>data(ga), <double*>data(dxa), planes, True)
        return x_grad

    def get_config(self):
        config = self.window.config()
        del config["dilation"]
        return config


class MaxPool2d(PoolNd):
    """Max pooling over (batch, channels, height, width), as torch.nn.MaxPool2d.

    >>> import corenet.layers as L, numpy as np
    >>> L.MaxPool2d(2).forward(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    """

    name = "max_pool2d"
    n_axes = 2


class MaxPool3d(PoolNd):
    """Max pooling over (batch, channels, depth, height, width), as torch.nn.MaxPool3d."""

    name = "max_pool3d"
    n_axes = 3


class AvgPool2d(PoolNd):
    """Average pooling over (batch, channels, height, width), as torch.nn.AvgPool2d
    (count_include_pad=True)."""

    name = "avg_pool2d"
    n_axes = 2
    is_max = False


class AvgPool3d(PoolNd):
    """Average pooling over (batch, channels, depth, height, width), as torch.nn.AvgPool3d
    (count_include_pad=True)."""

    name = "avg_pool3d"
    n_axes = 3
    is_max = False


cdef void global_average(const floating* x, floating* out, Py_ssize_t planes,
                         Py_ssize_t size) noexcept nogil:
    """out[i] = mean of plane i, summed in double in a fixed order (fused.pxd)."""
    cdef Py_ssize_t plane
    for plane in prange(planes, num_threads=threads_for(planes * size, GRAIN),
                        schedule='static'):
        if floating is float:
            out[plane] = <float>(cn_row_sum_float_in_double(x + plane * size, size) / size)
        else:
            out[plane] = cn_row_sum_double(x + plane * size, size) / size


cdef void global_average_backward(const floating* grad, floating* x_grad, Py_ssize_t planes,
                                  Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t plane, j
    cdef floating share
    for plane in prange(planes, num_threads=threads_for(planes * size, GRAIN),
                        schedule='static'):
        share = grad[plane] / size
        for j in range(size):
            x_grad[plane * size + j] = share


class GlobalAvgPool(Layer):
    """(batch, channels, *spatial) -> (batch, channels): the mean over every spatial
    position (torch.nn.AdaptiveAvgPool2d(1) followed by a flatten).

    >>> import corenet.layers as L, numpy as np
    >>> L.GlobalAvgPool().forward(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3)
    """

    name = "global_avg_pool"

    def __init__(self):
        super().__init__()
        self._x = None

    def output_shape(self, *input_shapes):
        if len(input_shapes) != 1 or len(input_shapes[0]) < 2:
            raise ShapeError(f"{self.name}: expected per-sample shape (channels, *spatial), "
                             f"got {', '.join(map(str, input_shapes))}")
        if 0 in input_shapes[0][1:]:  # the mean of no values
            raise ShapeError(f"{self.name}: every spatial size must be at least 1, got "
                             f"per-sample shape {input_shapes[0]}")
        return (input_shapes[0][0],)

    def forward(self, x):
        x = check_input(self, x, min_ndim=3)
        out = self.buffer("out", (x.shape[0],) + self.output_shape(x.shape[1:]), x.dtype)
        cdef Py_ssize_t planes = x.shape[0] * x.shape[1], size = math.prod(x.shape[2:])
        cdef cnp.ndarray xa = x, outa = out
        cdef bint is_float32 = x.dtype == np.float32
        with nogil:
            if is_float32:
                global_average(<const float*>data(xa), <float*>data(outa), planes, size)
            else:
                global_average(<const double*>data(xa), <double*>data(outa), planes, size)
        self._x = x
        return out

    def backward(self, grad):
        require_forward(self, self._x)
        x = self._x
        grad = check_grad(self, grad, x.shape[:2], x.dtype)
        if not self.needs_input_grad:
            return None
        x_grad = self.buffer("x_grad", x.shape, x.dtype)
        cdef Py_ssize_t planes = x.shape[0] * x.shape[1], size = math.prod(x.shape[2:])
        cdef cnp.ndarray ga = grad, dxa = x_grad
        cdef bint is_float32 = x.dtype == np.float32
        with nogil:
            if is_float32:
                global_average_backward(<const float*>data(ga), <float*>data(dxa), planes,
                                        size)
            else:
                global_average_backward(<const double*>data(ga), <double*>data(dxa), planes,
                                        size)
        return x_grad
