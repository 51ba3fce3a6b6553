# vol2col / col2vol: the lecture's im3d2col, for 2-D (depth 1) and 3-D inputs.
from cython cimport floating

# The sizes of one convolution, in three spatial axes (a 2-D one has depth 1,
# a kernel of depth 1 and no padding in depth).
cdef struct Geometry:
    Py_ssize_t channels, depth, height, width               # one input sample
    Py_ssize_t out_depth, out_height, out_width
    Py_ssize_t kernel_d, kernel_h, kernel_w
    Py_ssize_t stride_d, stride_h, stride_w
    Py_ssize_t pad_d, pad_h, pad_w                           # before; after is implied
    Py_ssize_t dilation_d, dilation_h, dilation_w

# Which positions of a tile read padding, per kernel offset, for the shifted
# copies below (stride 1, height and width kept).
cdef struct TileMasks:
    Py_ssize_t p0, n
    void* keep          # per offset, n elements of the dtype's width: all ones or zero
    Py_ssize_t* spans   # per offset: first and one past the last kept, input shift
cdef TileMasks* tile_masks(const Geometry* g, Py_ssize_t p0, Py_ssize_t n,
                           bint double_precision) noexcept nogil
cdef void free_tile_masks(TileMasks* masks) noexcept nogil

# All return 0, or -1 (writing nothing) when their scratch (a few bytes of
# ranges, or the masks) cannot be allocated.
# Columns of n_samples samples: row (c, i, j, l) of the kernel, column
# (sample, output position); a row has ld_col values, sample s starts at s * P.
# masks: for shifted_copies geometries, tile_masks(g, 0, P, ...) made once for
# many calls, or NULL (vol2col makes them).
cdef int vol2col(const Geometry* g, const floating* x,      # IN  (n_samples, C, D, H, W)
                  floating* col, Py_ssize_t ld_col,           # OUT (C·kd·kh·kw, ld_col)
                  Py_ssize_t n_samples, const TileMasks* masks,
                  int max_threads) noexcept nogil

# The adjoint: dx = Σ of each column entry into the input position it came from.
cdef int col2vol(const Geometry* g, const floating* col,    # IN
                  Py_ssize_t ld_col,
                  floating* dx,                               # OUT (n_samples, C, D, H, W)
                  Py_ssize_t n_samples, const TileMasks* masks,  # as vol2col's
                  int max_threads) noexcept nogil

# Position tiles of one sample, for geometries where shifted_copies holds (stride 1,
# output height and width those of the input): rows [row0, row1) of the columns
# of output positions [p0 + first, p0 + last) (masks: tile_masks(g, p0, n, ...)),
# row r at dst + (r - row0)·ld, written in whole 64-byte pieces; and the adjoint of a tile's columns
# col (C·kd·kh·kw, n), added into dx.
cdef bint shifted_copies(const Geometry* g) noexcept nogil
cdef void tile_rows(const Geometry* g, const floating* x,   # IN  (C, D, H, W)
                    const TileMasks* masks, Py_ssize_t row0, Py_ssize_t row1,
                    Py_ssize_t first, Py_ssize_t last,
                    floating* dst,                           # OUT (row1 - row0, ld)
                    Py_ssize_t ld) noexcept nogil
cdef int col2vol_tile(const Geometry* g,
                      const floating* col,                    # IN
                      floating* dx,                           # IN/OUT (C, D, H, W), added to
                      Py_ssize_t p0, Py_ssize_t n, int max_threads) noexcept nogil

# A tile's columns as corenet.kernels.gemm's gemm_b_panels reads its B, a block of rows
# at a time: which positions of a tile read padding, for each kernel offset
# (tile_masks, once per tile: NULL when out of memory); then rows [row0, row1) of
# the columns as one block of panels of nr positions (panel q at
# q·(row1 - row0)·nr), zeros past n.
cdef int vol2col_tile_panels(const Geometry* g, const floating* x,  # IN  (C, D, H, W)
                             const TileMasks* masks, Py_ssize_t row0, Py_ssize_t row1,
                             floating* panels,   # OUT (ceil(n / nr), row1 - row0, nr)
                             Py_ssize_t nr, int max_threads) noexcept nogil
