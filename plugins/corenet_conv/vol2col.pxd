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

# Both return 0, or -1 (writing nothing) when their few bytes of scratch cannot
# be allocated.
# Columns of n_samples samples: row (c, i, j, l) of the kernel, column
# (sample, output position); a row has ld_col values, sample s starts at s * P.
cdef int vol2col(const Geometry* g, const floating* x,      # IN  (n_samples, C, D, H, W)
                  floating* col, Py_ssize_t ld_col,           # OUT (C·kd·kh·kw, ld_col)
                  Py_ssize_t n_samples, int max_threads) noexcept nogil

# The adjoint: dx = Σ of each column entry into the input position it came from.
cdef int col2vol(const Geometry* g, const floating* col,    # IN
                  Py_ssize_t ld_col,
                  floating* dx,                               # OUT (n_samples, C, D, H, W)
                  Py_ssize_t n_samples, int max_threads) noexcept nogil
