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
     * only the valid columns are touched. Unit steps go 32 bytes at a time: rows
     * are often ten elements, where a call to memcpy costs more than the copy. */
    #define CN_WINDOW_ROWS(T)                                                       \
    typedef T cn_row_vec_##T __attribute__((vector_size(32), aligned(sizeof(T)), may_alias)); \
    static inline void cn_copy_run_##T(T *restrict o, const T *restrict i, ptrdiff_t n) \
    {                                                                              \
        const ptrdiff_t lanes = 32 / sizeof(T);                                    \
        ptrdiff_t w = 0;                                                           \
        if (n < lanes) {                                                           \
            for (; w < n; ++w) o[w] = i[w];                                        \
            return;                                                                \
        }                                                                          \
        for (; w + lanes < n; w += lanes)                                          \
            *(cn_row_vec_##T *)(o + w) = *(const cn_row_vec_##T *)(i + w);          \
        /* the last vector overlaps the one before: the same values again */       \
        *(cn_row_vec_##T *)(o + n - lanes) = *(const cn_row_vec_##T *)(i + n - lanes); \
    }                                                                              \
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
                cn_copy_run_##T(o + lo, i + lo, hi - lo);                          \
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
        const ptrdiff_t lanes = 32 / sizeof(T);                                    \
        for (ptrdiff_t row = 0; row < rows; ++row) {                               \
            T *i = in + row * in_stride;                                           \
            const T *o = out + row * out_stride;                                   \
            ptrdiff_t w = lo;                                                      \
            if (step == 1)                                                         \
                for (; w + lanes <= hi; w += lanes)                                \
                    *(cn_row_vec_##T *)(i + w) += *(const cn_row_vec_##T *)(o + w); \
            for (; w < hi; ++w) i[w * step] += o[w];                               \
        }                                                                          \
    }
    CN_WINDOW_ROWS(float)
    CN_WINDOW_ROWS(double)

    #include <stdint.h>

    /* 32 bytes of any floats as bits (the panels' NR is a multiple of 32 bytes). */
    typedef int32_t cn_bits32 __attribute__((vector_size(32), aligned(4), may_alias));

    /* A row of columns straight into the GEMM's panels, for shifted_copies
     * geometries: over a tile's n positions the row is the input read at a
     * constant shift, src[t], kept where keep[t] (all bits set: the position
     * reads inside the input, not padding) and zero elsewhere; piece q
     * (positions q·NR .. q·NR + NR - 1) goes to dst + q·stride. [lo, hi) spans
     * the kept positions, [in_lo, in_hi) those where src stays in its input
     * plane: a whole piece inside either is read whole and and-ed with keep
     * (zero outside [lo, hi)), a few vector operations; only a piece that
     * leaves the plane goes element by element. Pieces at a span's ends (an
     * offset that reads a row of padding) lie inside the plane: element by
     * element they took about a tenth of the function's time (conv3d). */
    #define CN_MASKED_PIECES(T, I, NR)                                              \
    static void cn_masked_pieces_##T##_##NR(T *restrict dst, ptrdiff_t stride,     \
                                            const T *restrict src,                 \
                                            const I *restrict keep, ptrdiff_t first, \
                                            ptrdiff_t n, ptrdiff_t lo, ptrdiff_t hi, \
                                            ptrdiff_t in_lo, ptrdiff_t in_hi)      \
    {                                                                              \
        dst += first / NR * stride;                                                \
        for (ptrdiff_t t0 = first; t0 < n; t0 += NR, dst += stride) {              \
            if ((t0 >= lo && t0 + NR <= hi)                                        \
                || (t0 >= in_lo && t0 + NR <= in_hi && t0 + NR <= n)) {            \
                /* the bits, and-ed with the mask */                               \
                for (int v = 0; v < NR * (int)sizeof(T) / 32; ++v)                 \
                    ((cn_bits32 *)dst)[v] = ((const cn_bits32 *)(src + t0))[v]      \
                                            & ((const cn_bits32 *)(keep + t0))[v];  \
            } else {                                                               \
                for (int u = 0; u < NR; ++u) {                                     \
                    ptrdiff_t t = t0 + u;                                          \
                    dst[u] = t >= lo && t < hi && keep[t] ? src[t] : (T)0;         \
                }                                                                  \
            }                                                                      \
        }                                                                          \
    }
    #define CN_MASKED_PANELS(T, I)                                                  \
    CN_MASKED_PIECES(T, I, 8)                                                      \
    CN_MASKED_PIECES(T, I, 16)                                                     \
    CN_MASKED_PIECES(T, I, 32)                                                     \
    static void cn_masked_panels_##T(T *dst, ptrdiff_t stride, const T *src,       \
                                     const void *keep, ptrdiff_t first, ptrdiff_t n, \
                                     ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t in_lo,  \
                                     ptrdiff_t in_hi, ptrdiff_t nr)                \
    {                                                                              \
        switch (nr) { /* the GEMM's NR: two vectors of 32 or 64 bytes */           \
        case 8: cn_masked_pieces_##T##_8(dst, stride, src, keep, first, n, lo, hi, \
                                         in_lo, in_hi); break;                     \
        case 16: cn_masked_pieces_##T##_16(dst, stride, src, keep, first, n, lo, hi, \
                                           in_lo, in_hi); break;                   \
        default: cn_masked_pieces_##T##_32(dst, stride, src, keep, first, n, lo, hi, \
                                           in_lo, in_hi);                          \
        }                                                                          \
    }                                                                              \
    /* The same row as n contiguous values (a row of col): 64-byte pieces, then   \
     * the last few one at a time. */                                              \
    static void cn_masked_row_##T(T *dst, const T *src, const void *keep,          \
                                  ptrdiff_t n, ptrdiff_t lo, ptrdiff_t hi)         \
    {                                                                              \
        const ptrdiff_t piece = 64 / sizeof(T);                                    \
        ptrdiff_t whole = n / piece * piece;                                       \
        cn_masked_panels_##T(dst, piece, src, keep, 0, whole, lo, hi, lo, hi, piece); \
        for (ptrdiff_t t = whole; t < n; ++t)                                      \
            dst[t] = t >= lo && t < hi && ((const I *)keep)[t] ? src[t] : (T)0;    \
    }
    CN_MASKED_PANELS(float, int32_t)
    CN_MASKED_PANELS(double, int64_t)

    /* The adjoint of a masked row: dst[t] += src[t] where keep[t], + 0 elsewhere,
     * for t in [lo, hi); 32 bytes at a time, each element one addition. */
    #define CN_MASKED_ADD(T, I)                                                      \
    typedef T cn_vec32_##T __attribute__((vector_size(32), aligned(sizeof(T)), may_alias)); \
    static void cn_masked_add_##T(T *dst, const T *restrict src,                   \
                                  const void *keep_bits, ptrdiff_t lo, ptrdiff_t hi) \
    {                                                                              \
        const I *keep = keep_bits;                                                 \
        const ptrdiff_t lanes = 32 / sizeof(T);                                    \
        ptrdiff_t t = lo;                                                          \
        for (; t + lanes <= hi; t += lanes) {                                      \
            cn_bits32 bits = *(const cn_bits32 *)(src + t) & *(const cn_bits32 *)(keep + t); \
            *(cn_vec32_##T *)(dst + t) += (cn_vec32_##T)bits;                      \
        }                                                                          \
        for (; t < hi; ++t) dst[t] += keep[t] ? src[t] : (T)0;                     \
    }
    CN_MASKED_ADD(float, int32_t)
    CN_MASKED_ADD(double, int64_t)
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
    void cn_masked_panels_float(float* dst, ptrdiff_t stride, const float* src,
                                const void* keep, ptrdiff_t first, ptrdiff_t n,
                                ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t in_lo, ptrdiff_t in_hi,
                                ptrdiff_t nr) noexcept nogil
    void cn_masked_panels_double(double* dst, ptrdiff_t stride, const double* src,
                                 const void* keep, ptrdiff_t first, ptrdiff_t n,
                                 ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t in_lo, ptrdiff_t in_hi,
                                 ptrdiff_t nr) noexcept nogil
    void cn_masked_add_float(float* dst, const float* src, const void* keep, ptrdiff_t lo,
                             ptrdiff_t hi) noexcept nogil
    void cn_masked_add_double(double* dst, const double* src, const void* keep, ptrdiff_t lo,
                              ptrdiff_t hi) noexcept nogil
    void cn_masked_row_float(float* dst, const float* src, const void* keep, ptrdiff_t n,
                             ptrdiff_t lo, ptrdiff_t hi) noexcept nogil
    void cn_masked_row_double(double* dst, const double* src, const void* keep, ptrdiff_t n,
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
    zero(dst, d_lo * plane_size)
    for od in range(d_lo, d_hi):
        in_d = od * g.stride_d + offset_d
        out = dst + od * plane_size
        zero(out, h_lo * g.out_width)
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
        zero(out + h_hi * g.out_width, (g.out_height - h_hi) * g.out_width)
    zero(dst + d_hi * plane_size, (g.out_depth - d_hi) * plane_size)


cdef inline void zero(floating* dst, Py_ssize_t n) noexcept nogil:
    # Most rows have no padding: no call to memset for nothing.
    if n > 0:
        memset(dst, 0, n * sizeof(floating))


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
# whole, or every position of a sample. Masks say which positions read padding
# (tile_masks, once per call or batch); a row is then a masked copy of the input
# (masked_row), its adjoint a masked add (masked_add), both whole vectors.


cdef int vol2col(const Geometry* g, const floating* x, floating* col, Py_ssize_t ld_col,
                  Py_ssize_t n_samples, const TileMasks* masks,
                  int max_threads) noexcept nogil:
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t rows = g.channels * kernel_size
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t volume = g.depth * g.height * g.width
    cdef Py_ssize_t row, sample, c, offset, i, j, l
    cdef int n_threads = min(threads_for(rows * n_samples * positions, GRAIN), max_threads)
    cdef TileMasks* own = NULL
    cdef Ranges r
    if shifted_copies(g):  # every position of a sample is one tile
        if masks == NULL:
            own = tile_masks(g, 0, positions, floating is double)
            if own == NULL:
                return -1
            masks = own
        for row in prange(rows, num_threads=n_threads, schedule='static'):
            for sample in range(n_samples):
                masked_row(masks, row % kernel_size,
                           x + (sample * g.channels + row // kernel_size) * volume,
                           col + row * ld_col + sample * positions)
        free_tile_masks(own)
        return 0
    if make_ranges(g, &r):
        return -1
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


cdef int col2vol(const Geometry* g, const floating* col, Py_ssize_t ld_col, floating* dx,
                  Py_ssize_t n_samples, const TileMasks* masks,
                  int max_threads) noexcept nogil:
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t volume = g.depth * g.height * g.width
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t task, sample, c, o
    cdef int n_threads = min(threads_for(n_samples * g.channels * kernel_size * positions,
                                         GRAIN), max_threads)
    cdef TileMasks* own = NULL
    cdef Ranges r
    if shifted_copies(g):
        if masks == NULL:
            own = tile_masks(g, 0, positions, floating is double)
            if own == NULL:
                return -1
            masks = own
        # Each (sample, channel) plane: zero, then every offset's row added in order.
        # Adding +0 for padding leaves every sum as col2vol_plane makes it (the plane
        # starts at +0, and a sum of floats that starts at +0 never becomes -0).
        for task in prange(n_samples * g.channels, num_threads=n_threads, schedule='static'):
            sample = task // g.channels
            c = task % g.channels
            memset(dx + task * volume, 0, volume * sizeof(floating))
            for o in range(kernel_size):
                masked_add(masks, o, col + (c * kernel_size + o) * ld_col + sample * positions,
                           dx + task * volume)
        free_tile_masks(own)
        return 0
    if make_ranges(g, &r):
        return -1
    for task in prange(n_samples * g.channels, num_threads=n_threads, schedule='static'):
        col2vol_plane(g, &r, col + task // g.channels * positions, ld_col, dx + task * volume,
                      task % g.channels)
    free(r.lo)
    return 0


cdef void tile_rows(const Geometry* g, const floating* x, const TileMasks* masks,
                    Py_ssize_t row0, Py_ssize_t row1, Py_ssize_t first, Py_ssize_t last,
                    floating* dst, Py_ssize_t ld) noexcept nogil:
    """Rows [row0, row1) of the columns of the masks' tile, for its positions [first,
    last) only: row r at dst + (r - row0)·ld, in whole 64-byte pieces (ld covers
    last - first rounded up to one)."""
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t volume = g.depth * g.height * g.width, row, shift
    cdef Py_ssize_t piece = 64 // sizeof(floating)
    cdef Py_ssize_t channel = row0 // kernel_size, o = row0 % kernel_size
    cdef const floating* src
    for row in range(row0, row1):
        # masked_pieces of the run, its positions counted from first
        shift = masks.p0 + masks.spans[3 * o + 2] + first
        src = x + channel * volume + shift
        if floating is float:
            cn_masked_panels_float(dst + (row - row0) * ld, piece, src,
                                   <const float*>masks.keep + o * masks.n + first, 0,
                                   last - first, masks.spans[3 * o] - first,
                                   masks.spans[3 * o + 1] - first, -shift, volume - shift,
                                   piece)
        else:
            cn_masked_panels_double(dst + (row - row0) * ld, piece, src,
                                    <const double*>masks.keep + o * masks.n + first, 0,
                                    last - first, masks.spans[3 * o] - first,
                                    masks.spans[3 * o + 1] - first, -shift, volume - shift,
                                    piece)
        o += 1  # the next row's (channel, kernel offset), stepped, not divided out
        if o == kernel_size:
            o = 0
            channel += 1


cdef void keep_masks(const Geometry* g, const Ranges* r, Py_ssize_t p0, Py_ssize_t n,
                     floating* keep, Py_ssize_t* spans) noexcept nogil:
    """For each kernel offset o (i, j, l) over positions [p0, p0 + n): keep[o·n + t] all
    bits set where position p0 + t reads inside the input, else zero (elements of
    floating's width, read as integers); spans[3·o ..] = the first and one past the
    last kept t, and the offset's shift of the input. Built an output row at a time:
    a row reads padding whole, or where its columns do (the offset's column pattern)."""
    cdef Py_ssize_t area = g.height * g.width, width = g.width
    cdef Py_ssize_t i, j, l, o = 0, q, stop, od, oh, ow, first, last, a, b
    cdef floating* mask
    cdef floating* columns = keep + g.kernel_d * g.kernel_h * g.kernel_w * n
    for i in range(g.kernel_d):
        for j in range(g.kernel_h):
            for l in range(g.kernel_w):
                for ow in range(width):  # this offset's pattern of valid columns
                    if r.lo[r.h + l] <= ow < r.hi[r.h + l]:
                        set_all_bits(&columns[ow])
                    else:
                        columns[ow] = 0
                mask = keep + o * n
                first, last = n, 0  # the kept positions' span, from the rows that have any
                q = p0
                od, oh, ow = p0 // area, p0 % area // width, p0 % width
                while q < p0 + n:
                    stop = min(p0 + n, q - ow + width)
                    if r.lo[i] <= od < r.hi[i] and r.lo[r.d + j] <= oh < r.hi[r.d + j]:
                        memcpy(mask + q - p0, columns + ow, (stop - q) * sizeof(floating))
                        a = max(q, q - ow + r.lo[r.h + l]) - p0
                        b = min(stop, q - ow + r.hi[r.h + l]) - p0
                        if a < b:
                            first = min(first, a)
                            last = b
                    else:
                        memset(mask + q - p0, 0, (stop - q) * sizeof(floating))
                    q = stop
                    ow = 0  # the next output row from its first column
                    oh += 1
                    if oh == g.height:
                        oh = 0
                        od += 1
                spans[3 * o] = min(first, last)
                spans[3 * o + 1] = last
                spans[3 * o + 2] = (r.offset[i] * area + r.offset[r.d + j] * width
                                    + r.offset[r.h + l])
                o += 1


cdef inline void set_all_bits(floating* value) noexcept nogil:
    memset(value, 0xFF, sizeof(floating))


cdef TileMasks* tile_masks(const Geometry* g, Py_ssize_t p0, Py_ssize_t n,
                           bint double_precision) noexcept nogil:
    """The masks of the shifted-copy rows (masked_row, masked_add, masked_pieces) for
    positions [p0, p0 + n), or NULL when out of memory; free with free_tile_masks.
    Their size is kernel volume · n elements, a C-th of the tile's columns."""
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef TileMasks* masks = <TileMasks*>malloc(sizeof(TileMasks))
    cdef Ranges r
    if masks == NULL:
        return NULL
    masks.p0 = p0
    masks.n = n
    # The masks, then one row of an offset's column pattern (keep_masks).
    masks.keep = malloc((kernel_size * n + g.width) * (8 if double_precision else 4))
    masks.spans = <Py_ssize_t*>malloc(3 * kernel_size * sizeof(Py_ssize_t))
    if masks.keep == NULL or masks.spans == NULL or make_ranges(g, &r):
        free_tile_masks(masks)
        return NULL
    if double_precision:
        keep_masks[double](g, &r, p0, n, <double*>masks.keep, masks.spans)
    else:
        keep_masks[float](g, &r, p0, n, <float*>masks.keep, masks.spans)
    free(r.lo)
    return masks


cdef void free_tile_masks(TileMasks* masks) noexcept nogil:
    if masks != NULL:
        free(masks.keep)
        free(masks.spans)
    free(masks)


cdef inline void masked_row(const TileMasks* masks, Py_ssize_t o, const floating* plane,
                            floating* dst) noexcept nogil:
    """dst[t] = the row of kernel offset o for position masks.p0 + t, t < masks.n: the
    input plane read at the offset's shift, zero where that reads padding."""
    cdef const floating* src = plane + masks.p0 + masks.spans[3 * o + 2]
    if floating is float:
        cn_masked_row_float(dst, src, <const float*>masks.keep + o * masks.n, masks.n,
                            masks.spans[3 * o], masks.spans[3 * o + 1])
    else:
        cn_masked_row_double(dst, src, <const double*>masks.keep + o * masks.n, masks.n,
                             masks.spans[3 * o], masks.spans[3 * o + 1])


cdef inline void masked_add(const TileMasks* masks, Py_ssize_t o, const floating* src,
                            floating* plane) noexcept nogil:
    """The adjoint of masked_row: src[t], the row of kernel offset o for position
    masks.p0 + t, added into the input position it was read from (+0 for padding)."""
    cdef floating* dst = plane + masks.p0 + masks.spans[3 * o + 2]
    if floating is float:
        cn_masked_add_float(dst, src, <const float*>masks.keep + o * masks.n,
                            masks.spans[3 * o], masks.spans[3 * o + 1])
    else:
        cn_masked_add_double(dst, src, <const double*>masks.keep + o * masks.n,
                             masks.spans[3 * o], masks.spans[3 * o + 1])


cdef inline void masked_pieces(const TileMasks* masks, Py_ssize_t o, const floating* plane,
                               Py_ssize_t volume, floating* panel_row, Py_ssize_t stride,
                               Py_ssize_t first, Py_ssize_t last, Py_ssize_t nr) noexcept nogil:
    """masked_row for positions [first, last) (whole pieces of nr), piece q written
    to panel_row + q·stride: one row of the GEMM's panels. plane: the input channel's
    volume elements, the only ones read."""
    cdef Py_ssize_t shift = masks.p0 + masks.spans[3 * o + 2]
    cdef const floating* src = plane + shift
    if floating is float:
        cn_masked_panels_float(panel_row, stride, src, <const float*>masks.keep + o * masks.n,
                               first, last, masks.spans[3 * o], masks.spans[3 * o + 1],
                               -shift, volume - shift, nr)
    else:
        cn_masked_panels_double(panel_row, stride, src,
                                <const double*>masks.keep + o * masks.n, first, last,
                                masks.spans[3 * o], masks.spans[3 * o + 1], -shift,
                                volume - shift, nr)


cdef int vol2col_tile_panels(const Geometry* g, const floating* x, const TileMasks* masks,
                             Py_ssize_t row0, Py_ssize_t row1, floating* panels,
                             Py_ssize_t nr, int max_threads) noexcept nogil:
    """Rows [row0, row1) of a tile's columns, written as gemm_b_panels reads its B, so
    that no pass packs the columns again: each piece goes from the input straight
    into its panel, through the masks of which positions read padding."""
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t volume = g.depth * g.height * g.width, n = masks.n, rows = row1 - row0
    cdef Py_ssize_t row, first, channel, offset, part
    cdef int n_threads = min(threads_for(rows * n, GRAIN), max_threads)
    # Each thread one run of whole panels, every row into it. A row's call costs
    # about as much as copying a few pieces: runs of 4 panels took 40 % longer
    # (conv3d) than the whole tile's panels, whose stores still go down each panel.
    cdef Py_ssize_t run = ((n + n_threads - 1) // n_threads + nr - 1) // nr * nr
    for part in prange(n_threads, num_threads=n_threads, schedule='static'):
        first = part * run
        if first >= n:
            continue
        # (channel, kernel offset) of the row, stepped, not divided out per row
        channel = row0 // kernel_size
        offset = row0 % kernel_size
        for row in range(row0, row1):
            masked_pieces(masks, offset, x + channel * volume, volume,
                          panels + (row - row0) * nr, rows * nr, first,
                          min(n, first + run), nr)
            offset = offset + 1
            if offset == kernel_size:
                offset = 0
                channel = channel + 1
    return 0


cdef int col2vol_tile(const Geometry* g, const floating* col, floating* dx, Py_ssize_t p0,
                      Py_ssize_t n, int max_threads) noexcept nogil:
    """dx (C, D, H, W) += the adjoint of a tile's columns: col (C·kd·kh·kw, n) for
    positions [p0, p0 + n) added into the input positions they came from, per
    input position in the order of the kernel offsets (+0 for padding: see col2vol)."""
    cdef Py_ssize_t kernel_size = g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t volume = g.depth * g.height * g.width, c, o
    cdef TileMasks* masks = tile_masks(g, p0, n, floating is double)
    if masks == NULL:
        return -1
    cdef int n_threads = min(threads_for(g.channels * kernel_size * n, GRAIN), max_threads)
    for c in prange(g.channels, num_threads=n_threads, schedule='static'):
        for o in range(kernel_size):
            masked_add(masks, o, col + (c * kernel_size + o) * n, dx + c * volume)
    free_tile_masks(masks)
    return 0
