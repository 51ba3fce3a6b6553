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
from libc.string cimport memcpy, memset

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


cdef extern from *:
    """
    /* The rows of a window, each on its own: out[r][w] = in[r][w * step] for w in
     * [lo, hi), zero elsewhere in [0, width); and the adjoint, in[r][w * step] +=
     * out[r][w] for w in [lo, hi). Small functions of their own, so that the
     * short rows of a small image run in registers, not through the spilled
     * state of a parallel region. `in` is where column 0 of row 0 would be read;
     * only the valid columns are touched. */
    #define CN_WINDOW_ROWS(T)                                                       \
    static void cn_copy_window_##T(T *restrict out, ptrdiff_t out_stride,          \
                                   const T *restrict in, ptrdiff_t in_stride,      \
                                   ptrdiff_t step, ptrdiff_t rows, ptrdiff_t lo,   \
                                   ptrdiff_t hi, ptrdiff_t width)                  \
    {                                                                              \
        for (ptrdiff_t row = 0; row < rows; ++row) {                               \
            T *o = out + row * out_stride;                                         \
            const T *i = in + row * in_stride;                                     \
            for (ptrdiff_t w = 0; w < lo; ++w) o[w] = 0;                           \
            if (step == 1)                                                         \
                for (ptrdiff_t w = lo; w < hi; ++w) o[w] = i[w];                   \
            else                                                                   \
                for (ptrdiff_t w = lo; w < hi; ++w) o[w] = i[w * step];            \
            for (ptrdiff_t w = hi; w < width; ++w) o[w] = 0;                       \
        }                                                                          \
    }                                                                              \
    static void cn_add_window_##T(T *restrict in, ptrdiff_t in_stride,             \
                                  const T *restrict out, ptrdiff_t out_stride,     \
                                  ptrdiff_t step, ptrdiff_t rows, ptrdiff_t lo,    \
                                  ptrdiff_t hi)                                    \
    {                                                                              \
        for (ptrdiff_t row = 0; row < rows; ++row) {                               \
            T *i = in + row * in_stride;                                           \
            const T *o = out + row * out_stride;                                   \
            if (step == 1)                                                         \
                for (ptrdiff_t w = lo; w < hi; ++w) i[w] += o[w];                  \
            else                                                                   \
                for (ptrdiff_t w = lo; w < hi; ++w) i[w * step] += o[w];           \
        }                                                                          \
    }
    CN_WINDOW_ROWS(float)
    CN_WINDOW_ROWS(double)
    """
    void cn_copy_window_float(float* out, ptrdiff_t out_stride, const float* src,
                              ptrdiff_t in_stride, ptrdiff_t step, ptrdiff_t rows,
                              ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t width) noexcept nogil
    void cn_copy_window_double(double* out, ptrdiff_t out_stride, const double* src,
                               ptrdiff_t in_stride, ptrdiff_t step, ptrdiff_t rows,
                               ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t width) noexcept nogil
    void cn_add_window_float(float* dst, ptrdiff_t in_stride, const float* out,
                             ptrdiff_t out_stride, ptrdiff_t step, ptrdiff_t rows,
                             ptrdiff_t lo, ptrdiff_t hi) noexcept nogil
    void cn_add_window_double(double* dst, ptrdiff_t in_stride, const double* out,
                              ptrdiff_t out_stride, ptrdiff_t step, ptrdiff_t rows,
                              ptrdiff_t lo, ptrdiff_t hi) noexcept nogil


cdef void vol2col_row(const Geometry* g, const Ranges* r, const floating* plane,
                      floating* dst, Py_ssize_t i, Py_ssize_t j, Py_ssize_t l) noexcept nogil:
    """One row of the columns for one sample: kernel offset (i, j, l) over every
    output position, zero where the input position falls in the padding."""
    cdef Py_ssize_t od, in_d
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
        if h_lo < h_hi:
            src = plane + (in_d * g.height + h_lo * g.stride_h + offset_h) * g.width + offset_w
            if floating is float:
                cn_copy_window_float(out + h_lo * g.out_width, g.out_width, src,
                                     g.stride_h * g.width, g.stride_w, h_hi - h_lo, w_lo,
                                     w_hi, g.out_width)
            else:
                cn_copy_window_double(out + h_lo * g.out_width, g.out_width, src,
                                      g.stride_h * g.width, g.stride_w, h_hi - h_lo, w_lo,
                                      w_hi, g.out_width)
        memset(out + h_hi * g.out_width, 0,
               (g.out_height - h_hi) * g.out_width * sizeof(floating))
    memset(dst + d_hi * plane_size, 0, (g.out_depth - d_hi) * plane_size * sizeof(floating))


cdef bint shifted_copies(const Geometry* g) noexcept nogil:
    """True when every kernel offset reads the input shifted by one constant: stride
    1 and outputs the size of the input in height and width ("same" padding). A row
    of the columns is then one copy of a stretch of the input, with the padding
    columns zeroed after, instead of a short copy per output row."""
    return (g.stride_d == 1 and g.stride_h == 1 and g.stride_w == 1
            and g.out_height == g.height and g.out_width == g.width)


# Rows of the columns for shifted_copies geometries, where output position p of
# kernel offset (i, j, l) reads input p + shift(i, j, l) or padding: over positions
# [p0, p0 + n), a position tile, so that a large sample's columns need not exist
# whole, or every position of a sample.

cdef inline void tile_span(const Ranges* r, Py_ssize_t i, Py_ssize_t j, Py_ssize_t l,
                           Py_ssize_t area, Py_ssize_t width, Py_ssize_t od,
                           Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t* a,
                           Py_ssize_t* b) noexcept nogil:
    """[a, b): the positions of output plane od within [p0, p1) from the first valid
    position to the last (empty when the offset reads only padding)."""
    cdef Py_ssize_t h_lo = r.lo[r.d + j], h_hi = r.hi[r.d + j]
    cdef Py_ssize_t w_lo = r.lo[r.h + l], w_hi = r.hi[r.h + l]
    a[0] = max(p0, od * area + h_lo * width + w_lo)
    b[0] = min(p1, od * area + (h_hi - 1) * width + w_hi)
    if h_lo == h_hi or w_lo == w_hi or b[0] < a[0]:
        b[0] = a[0]


cdef void zero_padding_in_span(floating* rows, Py_ssize_t origin, Py_ssize_t a,
                               Py_ssize_t b, Py_ssize_t w_lo, Py_ssize_t w_hi,
                               Py_ssize_t width) noexcept nogil:
    """Zero the entries at positions [a, b) whose column lies outside [w_lo, w_hi);
    rows[q - origin] is position q."""
    cdef Py_ssize_t row_start, start, stop, q
    if w_lo == 0 and w_hi == width:
        return
    row_start = a - a % width
    while row_start < b:
        start = max(a, row_start)
        stop = min(b, row_start + w_lo)
        for q in range(start, stop):
            rows[q - origin] = 0
        start = max(a, row_start + w_hi)
        stop = min(b, row_start + width)
        for q in range(start, stop):
            rows[q - origin] = 0
        row_start += width


cdef void vol2col_tile_row(const Geometry* g, const Ranges* r, const floating* plane,
                           floating* dst, Py_ssize_t i, Py_ssize_t j, Py_ssize_t l,
                           Py_ssize_t p0, Py_ssize_t n, Py_ssize_t od_first,
                           Py_ssize_t od_last) noexcept nogil:
    """Row (i, j, l) of one channel's columns for positions [p0, p0 + n), which
    lie in output planes [od_first, od_last]."""
    cdef Py_ssize_t area = g.height * g.width, od, a, b, filled = p0
    cdef Py_ssize_t shift = r.offset[i] * area + r.offset[r.d + j] * g.width + r.offset[r.h + l]
    for od in range(max(r.lo[i], od_first), min(r.hi[i], od_last + 1)):
        tile_span(r, i, j, l, area, g.width, od, p0, p0 + n, &a, &b)
        if a < b:
            memset(dst + filled - p0, 0, (a - filled) * sizeof(floating))
            memcpy(dst + a - p0, plane + a + shift, (b - a) * sizeof(floating))
            zero_padding_in_span(dst, p0, a, b, r.lo[r.h + l], r.hi[r.h + l], g.width)
            filled = b
    memset(dst + filled - p0, 0, (p0 + n - filled) * sizeof(floating))


cdef void col2vol_tile_row(const Geometry* g, const Ranges* r, floating* src,
                           floating* plane, Py_ssize_t i, Py_ssize_t j, Py_ssize_t l,
                           Py_ssize_t p0, Py_ssize_t n, Py_ssize_t od_first,
                           Py_ssize_t od_last) noexcept nogil:
    """The adjoint of vol2col_tile_row: src[q - p0], row (i, j, l) of one channel's
    columns for positions [p0, p0 + n) in output planes [od_first, od_last], added
    into the input positions it was read from, its padding entries zeroed first."""
    cdef Py_ssize_t area = g.height * g.width, od, a, b, q
    cdef Py_ssize_t shift = r.offset[i] * area + r.offset[r.d + j] * g.width + r.offset[r.h + l]
    for od in range(max(r.lo[i], od_first), min(r.hi[i], od_last + 1)):
        tile_span(r, i, j, l, area, g.width, od, p0, p0 + n, &a, &b)
        if a < b:
            zero_padding_in_span(src, p0, a, b, r.lo[r.h + l], r.hi[r.h + l], g.width)
            for q in range(a, b):
                plane[q + shift] += src[q - p0]


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
    cdef bint shifted = shifted_copies(g)
    for row in prange(rows, num_threads=n_threads, schedule='static'):
        c = row // kernel_size
        offset = row % kernel_size
        i = offset // (g.kernel_h * g.kernel_w)
        j = (offset // g.kernel_w) % g.kernel_h
        l = offset % g.kernel_w
        for sample in range(n_samples):
            if shifted:
                vol2col_tile_row(g, &r, x + (sample * g.channels + c) * volume,
                                 col + row * ld_col + sample * positions, i, j, l, 0,
                                 positions, 0, g.out_depth - 1)
            else:
                vol2col_row(g, &r, x + (sample * g.channels + c) * volume,
                            col + row * ld_col + sample * positions, i, j, l)
    free(r.lo)
    return 0


cdef void col2vol_plane(const Geometry* g, const Ranges* r, const floating* col,
                        Py_ssize_t ld_col, floating* plane, Py_ssize_t c) noexcept nogil:
    """One (sample, channel) plane of dx: zero, then every kernel offset's row of
    the columns added into the input positions it was read from, in row order."""
    cdef Py_ssize_t i, j, l, od, in_d, w_lo, w_hi, h_lo, h_hi
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
                h_lo = r.lo[r.d + j]
                h_hi = r.hi[r.d + j]
                if h_lo == h_hi:
                    continue
                for od in range(r.lo[i], r.hi[i]):
                    in_d = od * g.stride_d + r.offset[i]
                    dst = plane + ((in_d * g.height + h_lo * g.stride_h + r.offset[r.d + j])
                                   * g.width + r.offset[r.h + l])
                    src_row = src + (od * g.out_height + h_lo) * g.out_width
                    if floating is float:
                        cn_add_window_float(dst, g.stride_h * g.width, src_row, g.out_width,
                                            g.stride_w, h_hi - h_lo, w_lo, w_hi)
                    else:
                        cn_add_window_double(dst, g.stride_h * g.width, src_row, g.out_width,
                                             g.stride_w, h_hi - h_lo, w_lo, w_hi)


cdef void col2vol_plane_shifted(const Geometry* g, const Ranges* r, floating* col,
                                Py_ssize_t ld_col, floating* plane,
                                Py_ssize_t c) noexcept nogil:
    """col2vol_plane when shifted_copies(g): for each kernel offset, its row of the
    columns through col2vol_tile_row over every position. Adding a zero leaves
    every sum as it was (the plane starts at +0 and a sum never becomes -0), so
    each element sees the same additions in the same order as in col2vol_plane."""
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width, i, j, l
    memset(plane, 0, g.depth * g.height * g.width * sizeof(floating))
    for i in range(g.kernel_d):
        for j in range(g.kernel_h):
            for l in range(g.kernel_w):
                col2vol_tile_row(g, r, col + (((c * g.kernel_d + i) * g.kernel_h + j)
                                              * g.kernel_w + l) * ld_col,
                                 plane, i, j, l, 0, positions, 0, g.out_depth - 1)


cdef int col2vol(const Geometry* g, floating* col, Py_ssize_t ld_col, floating* dx,
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
    cdef bint shifted = shifted_copies(g)
    for task in prange(n_samples * g.channels, num_threads=n_threads, schedule='static'):
        sample = task // g.channels
        c = task % g.channels
        if shifted:
            col2vol_plane_shifted(g, &r, col + sample * positions, ld_col,
                                  dx + task * volume, c)
        else:
            col2vol_plane(g, &r, col + sample * positions, ld_col, dx + task * volume, c)
    free(r.lo)
    return 0


cdef int vol2col_tile(const Geometry* g, const floating* x, floating* col, Py_ssize_t p0,
                      Py_ssize_t n, int max_threads) noexcept nogil:
    """col (C·kd·kh·kw, n): the columns of one sample x for positions [p0, p0 + n)."""
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t area = g.height * g.width, volume = g.depth * area
    cdef Py_ssize_t od_first = p0 // area, od_last = (p0 + n - 1) // area
    cdef Py_ssize_t c, i, j, l
    cdef floating* dst
    cdef Ranges r
    if make_ranges(g, &r):
        return -1
    cdef int n_threads = min(threads_for(g.channels * kernel_size * n, GRAIN), max_threads)
    for c in prange(g.channels, num_threads=n_threads, schedule='static'):
        for i in range(g.kernel_d):
            for j in range(g.kernel_h):
                for l in range(g.kernel_w):
                    dst = col + (((c * g.kernel_d + i) * g.kernel_h + j) * g.kernel_w + l) * n
                    vol2col_tile_row(g, &r, x + c * volume, dst, i, j, l, p0, n, od_first,
                                     od_last)
    free(r.lo)
    return 0


cdef int col2vol_tile(const Geometry* g, floating* col, floating* dx, Py_ssize_t p0,
                      Py_ssize_t n, int max_threads) noexcept nogil:
    """dx (C, D, H, W) += the adjoint of vol2col_tile: col (C·kd·kh·kw, n) for
    positions [p0, p0 + n) added into the input positions they came from, per
    input position in the order of the kernel offsets. The padding entries of col
    are zeroed first (adding a zero changes no sum: see col2vol_plane_shifted)."""
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t area = g.height * g.width, volume = g.depth * area
    cdef Py_ssize_t od_first = p0 // area, od_last = (p0 + n - 1) // area
    cdef Py_ssize_t c, i, j, l
    cdef floating* plane
    cdef Ranges r
    if make_ranges(g, &r):
        return -1
    cdef int n_threads = min(threads_for(g.channels * kernel_size * n, GRAIN), max_threads)
    for c in prange(g.channels, num_threads=n_threads, schedule='static'):
        plane = dx + c * volume
        for i in range(g.kernel_d):
            for j in range(g.kernel_h):
                for l in range(g.kernel_w):
                    col2vol_tile_row(g, &r, col + (((c * g.kernel_d + i) * g.kernel_h + j)
                                                   * g.kernel_w + l) * n,
                                     plane, i, j, l, p0, n, od_first, od_last)
    free(r.lo)
    return 0
