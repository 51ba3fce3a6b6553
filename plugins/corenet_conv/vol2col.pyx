"""vol2col and col2vol (im2col and col2im when the depth is 1), as in Caffe's
im2col.cpp and Theano's corr3d, with the padding handled by computing, once per
kernel offset, the range of outputs whose input lies inside the volume: the
inner loop is then a plain strided copy with no test per element.

Both are parallel over disjoint outputs (rows of the columns; planes of dx) and
each output is written by one fixed sequence of operations, so the result is
bitwise the same for any thread count.
"""
from cython.parallel cimport prange
from libc.string cimport memset

from corenet.kernels.threads cimport threads_for

cdef enum:
    GRAIN = 1 << 15  # elements copied below which one thread runs


cdef inline void valid_outputs(Py_ssize_t size, Py_ssize_t out_size, Py_ssize_t offset,
                               Py_ssize_t stride, Py_ssize_t* lo,
                               Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the outputs o whose input o·stride + offset lies in [0, size)."""
    lo[0] = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi[0] = 0 if size - 1 - offset < 0 else min(out_size, (size - 1 - offset) // stride + 1)
    if lo[0] > hi[0]:
        lo[0] = hi[0]


cdef void vol2col_row(const Geometry* g, const floating* plane, floating* dst,
                      Py_ssize_t i, Py_ssize_t j, Py_ssize_t l) noexcept nogil:
    """One row of the columns for one sample: kernel offset (i, j, l) over every
    output position, zero where the input position falls in the padding."""
    cdef Py_ssize_t od, oh, ow, d_lo, d_hi, h_lo, h_hi, w_lo, w_hi, in_d, in_h
    cdef Py_ssize_t plane_size = g.out_height * g.out_width
    cdef Py_ssize_t offset_d = i * g.dilation_d - g.pad_d
    cdef Py_ssize_t offset_h = j * g.dilation_h - g.pad_h
    cdef Py_ssize_t offset_w = l * g.dilation_w - g.pad_w
    cdef const floating* src
    cdef floating* out
    valid_outputs(g.depth, g.out_depth, offset_d, g.stride_d, &d_lo, &d_hi)
    valid_outputs(g.height, g.out_height, offset_h, g.stride_h, &h_lo, &h_hi)
    valid_outputs(g.width, g.out_width, offset_w, g.stride_w, &w_lo, &w_hi)
    memset(dst, 0, d_lo * plane_size * sizeof(floating))
    for od in range(d_lo, d_hi):
        in_d = od * g.stride_d + offset_d
        out = dst + od * plane_size
        memset(out, 0, h_lo * g.out_width * sizeof(floating))
        for oh in range(h_lo, h_hi):
            in_h = oh * g.stride_h + offset_h
            src = plane + (in_d * g.height + in_h) * g.width + offset_w
            for ow in range(w_lo):
                out[oh * g.out_width + ow] = 0
            if g.stride_w == 1:
                for ow in range(w_lo, w_hi):
                    out[oh * g.out_width + ow] = src[ow]
            else:
                for ow in range(w_lo, w_hi):
                    out[oh * g.out_width + ow] = src[ow * g.stride_w]
            for ow in range(w_hi, g.out_width):
                out[oh * g.out_width + ow] = 0
        memset(out + h_hi * g.out_width, 0,
               (g.out_height - h_hi) * g.out_width * sizeof(floating))
    memset(dst + d_hi * plane_size, 0, (g.out_depth - d_hi) * plane_size * sizeof(floating))


cdef void vol2col(const Geometry* g, const floating* x, floating* col, Py_ssize_t ld_col,
                  Py_ssize_t n_samples) noexcept nogil:
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t rows = g.channels * kernel_size
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t volume = g.depth * g.height * g.width
    cdef Py_ssize_t task, row, sample, c, offset
    cdef int n_threads = threads_for(rows * n_samples * positions, GRAIN)
    for task in prange(rows * n_samples, num_threads=n_threads, schedule='static'):
        row = task // n_samples
        sample = task % n_samples
        c = row // kernel_size
        offset = row % kernel_size
        vol2col_row(g, x + (sample * g.channels + c) * volume,
                    col + row * ld_col + sample * positions,
                    offset // (g.kernel_h * g.kernel_w), (offset // g.kernel_w) % g.kernel_h,
                    offset % g.kernel_w)


cdef void col2vol_plane(const Geometry* g, const floating* col, Py_ssize_t ld_col,
                        floating* plane, Py_ssize_t c) noexcept nogil:
    """One (sample, channel) plane of dx: zero, then every kernel offset's row of
    the columns added into the input positions it was read from, in row order."""
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t i, j, l, od, oh, ow, d_lo, d_hi, h_lo, h_hi, w_lo, w_hi, in_d, in_h
    cdef Py_ssize_t offset_d, offset_h, offset_w
    cdef const floating* src
    cdef floating* dst
    memset(plane, 0, g.depth * g.height * g.width * sizeof(floating))
    for i in range(g.kernel_d):
        offset_d = i * g.dilation_d - g.pad_d
        valid_outputs(g.depth, g.out_depth, offset_d, g.stride_d, &d_lo, &d_hi)
        for j in range(g.kernel_h):
            offset_h = j * g.dilation_h - g.pad_h
            valid_outputs(g.height, g.out_height, offset_h, g.stride_h, &h_lo, &h_hi)
            for l in range(g.kernel_w):
                offset_w = l * g.dilation_w - g.pad_w
                valid_outputs(g.width, g.out_width, offset_w, g.stride_w, &w_lo, &w_hi)
                src = col + ((c * g.kernel_d + i) * g.kernel_h + j) * g.kernel_w * ld_col \
                    + l * ld_col
                for od in range(d_lo, d_hi):
                    in_d = od * g.stride_d + offset_d
                    for oh in range(h_lo, h_hi):
                        in_h = oh * g.stride_h + offset_h
                        dst = plane + (in_d * g.height + in_h) * g.width + offset_w
                        if g.stride_w == 1:
                            for ow in range(w_lo, w_hi):
                                dst[ow] += src[(od * g.out_height + oh) * g.out_width + ow]
                        else:
                            for ow in range(w_lo, w_hi):
                                dst[ow * g.stride_w] += \
                                    src[(od * g.out_height + oh) * g.out_width + ow]


cdef void col2vol(const Geometry* g, const floating* col, Py_ssize_t ld_col, floating* dx,
                  Py_ssize_t n_samples) noexcept nogil:
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t volume = g.depth * g.height * g.width
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t task, sample, c
    cdef int n_threads = threads_for(n_samples * g.channels * kernel_size * positions, GRAIN)
    for task in prange(n_samples * g.channels, num_threads=n_threads, schedule='static'):
        sample = task // g.channels
        c = task % g.channels
        col2vol_plane(g, col + sample * positions, ld_col, dx + task * volume, c)
