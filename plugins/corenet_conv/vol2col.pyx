"""vol2col and col2vol (im2col and col2im when the depth is 1), as in Caffe's
im2col.cpp and Theano's corr3d, with the padding handled by computing, once per
kernel offset, the range of outputs whose input lies inside the volume: the
inner loop is then a plain strided copy with no test per element.

Both are parallel over disjoint outputs (rows of the columns; planes of dx) and
each output is written by one fixed sequence of operations, so the result is
bitwise the same for any thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
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


cdef struct Ranges:
    # For each kernel index along each axis: the valid outputs [lo, hi) and the input
    # offset i·dilation − pad. Computed once per call: divisions are slow, and a small
    # image would otherwise pay several per row of a few elements.
    Py_ssize_t* lo
    Py_ssize_t* hi
    Py_ssize_t* offset
    Py_ssize_t d, h  # where the h and w entries start


cdef int make_ranges(const Geometry* g, Ranges* r) noexcept nogil:
    cdef Py_ssize_t n = g.kernel_d + g.kernel_h + g.kernel_w, i
    r.lo = <Py_ssize_t*>malloc(3 * n * sizeof(Py_ssize_t))
    if r.lo == NULL:
        return -1
    r.hi = r.lo + n
    r.offset = r.hi + n
    r.d = g.kernel_d
    r.h = g.kernel_d + g.kernel_h
    for i in range(g.kernel_d):
        r.offset[i] = i * g.dilation_d - g.pad_d
        valid_outputs(g.depth, g.out_depth, r.offset[i], g.stride_d, &r.lo[i], &r.hi[i])
    for i in range(g.kernel_h):
        r.offset[r.d + i] = i * g.dilation_h - g.pad_h
        valid_outputs(g.height, g.out_height, r.offset[r.d + i], g.stride_h, &r.lo[r.d + i],
                      &r.hi[r.d + i])
    for i in range(g.kernel_w):
        r.offset[r.h + i] = i * g.dilation_w - g.pad_w
        valid_outputs(g.width, g.out_width, r.offset[r.h + i], g.stride_w, &r.lo[r.h + i],
                      &r.hi[r.h + i])
    return 0


cdef void vol2col_row(const Geometry* g, const Ranges* r, const floating* plane,
                      floating* dst, Py_ssize_t i, Py_ssize_t j, Py_ssize_t l) noexcept nogil:
    """One row of the columns for one sample: kernel offset (i, j, l) over every
    output position, zero where the input position falls in the padding."""
    cdef Py_ssize_t od, oh, ow, in_d, in_h
    cdef Py_ssize_t plane_size = g.out_height * g.out_width
    cdef Py_ssize_t d_lo = r.lo[i], d_hi = r.hi[i], offset_d = r.offset[i]
    cdef Py_ssize_t h_lo = r.lo[r.d + j], h_hi = r.hi[r.d + j], offset_h = r.offset[r.d + j]
    cdef Py_ssize_t w_lo = r.lo[r.h + l], w_hi = r.hi[r.h + l], offset_w = r.offset[r.h + l]
    cdef const floating* src
    cdef floating* out
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


cdef int vol2col(const Geometry* g, const floating* x, floating* col, Py_ssize_t ld_col,
                  Py_ssize_t n_samples, int max_threads) noexcept nogil:
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t rows = g.channels * kernel_size
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t volume = g.depth * g.height * g.width
    cdef Py_ssize_t row, sample, c, offset, i, j, l
    cdef Ranges r
    if make_ranges(g, &r):
        return -1
    cdef int n_threads = min(threads_for(rows * n_samples * positions, GRAIN), max_threads)
    for row in prange(rows, num_threads=n_threads, schedule='static'):
        c = row // kernel_size
        offset = row % kernel_size
        i = offset // (g.kernel_h * g.kernel_w)
        j = (offset // g.kernel_w) % g.kernel_h
        l = offset % g.kernel_w
        for sample in range(n_samples):
            vol2col_row(g, &r, x + (sample * g.channels + c) * volume,
                        col + row * ld_col + sample * positions, i, j, l)
    free(r.lo)
    return 0


cdef void col2vol_plane(const Geometry* g, const Ranges* r, const floating* col,
                        Py_ssize_t ld_col, floating* plane, Py_ssize_t c) noexcept nogil:
    """One (sample, channel) plane of dx: zero, then every kernel offset's row of
    the columns added into the input positions it was read from, in row order."""
    cdef Py_ssize_t i, j, l, od, oh, ow, in_d, in_h, w_lo, w_hi
    cdef const floating* src
    cdef const floating* src_row
    cdef floating* dst
    memset(plane, 0, g.depth * g.height * g.width * sizeof(floating))
    for i in range(g.kernel_d):
        for j in range(g.kernel_h):
            for l in range(g.kernel_w):
                w_lo = r.lo[r.h + l]
                w_hi = r.hi[r.h + l]
                src = col + (((c * g.kernel_d + i) * g.kernel_h + j) * g.kernel_w + l) * ld_col
                for od in range(r.lo[i], r.hi[i]):
                    in_d = od * g.stride_d + r.offset[i]
                    for oh in range(r.lo[r.d + j], r.hi[r.d + j]):
                        in_h = oh * g.stride_h + r.offset[r.d + j]
                        dst = plane + (in_d * g.height + in_h) * g.width + r.offset[r.h + l]
                        src_row = src + (od * g.out_height + oh) * g.out_width
                        if g.stride_w == 1:
                            for ow in range(w_lo, w_hi):
                                dst[ow] += src_row[ow]
                        else:
                            for ow in range(w_lo, w_hi):
                                dst[ow * g.stride_w] += src_row[ow]


cdef int col2vol(const Geometry* g, const floating* col, Py_ssize_t ld_col, floating* dx,
                  Py_ssize_t n_samples, int max_threads) noexcept nogil:
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t volume = g.depth * g.height * g.width
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t task, sample, c
    cdef Ranges r
    if make_ranges(g, &r):
        return -1
    cdef int n_threads = min(threads_for(n_samples * g.channels * kernel_size * positions,
                                         GRAIN), max_threads)
    for task in prange(n_samples * g.channels, num_threads=n_threads, schedule='static'):
        sample = task // g.channels
        c = task % g.channels
        col2vol_plane(g, &r, col + sample * positions, ld_col, dx + task * volume, c)
    free(r.lo)
    return 0
