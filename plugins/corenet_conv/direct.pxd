# The direct convolution for stride 1 (direct.pyx): every kernel offset reads a
# shifted run of the zero-padded input, in place, so no columns are made.
from cython cimport floating

from corenet_conv.vol2col cimport Geometry

# How one sample lies on the padded grid.
cdef struct Grid:
    Py_ssize_t depth, height, width   # padded extents of one channel
    Py_ssize_t plane                   # elements of one padded channel
    Py_ssize_t sample                  # elements of one padded sample, with the slack
                                       # the last tile's reads run into
    Py_ssize_t positions               # grid positions computed: whole tiles of NR
    Py_ssize_t rows                    # output channels of a group, whole slivers of MR

cdef Grid make_grid(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                    bint double_precision) noexcept nogil

# Both return 0, or -1 when their small scratch (packed weights, offsets) cannot be
# allocated. scratch: per thread, grid.rows · grid.positions elements (the output
# grid), then grid.sample (the padded sample) when padded is NULL.
# padded: NULL, or (n_samples, grid.sample) that the forward fills and keeps.
cdef int direct_forward(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                        const floating* x,        # IN  (n_samples, C, D, H, W)
                        Py_ssize_t n_samples,
                        const floating* weight,   # IN  (out_channels, C/groups · kernel)
                        const floating* bias,     # IN  (out_channels,) or NULL
                        floating* out,            # OUT (n_samples, out_channels, P)
                        floating* padded,         # OUT (n_samples, grid.sample) or NULL
                        floating* scratch, Py_ssize_t scratch_per_thread,
                        int epilogue, floating param, int max_threads) noexcept nogil

# dW += Σ_samples g · columnsᵀ, from the padded samples and dL/dy on the grid.
cdef int direct_weight_gradient(const Geometry* g, Py_ssize_t groups,
                                Py_ssize_t out_channels,
                                const floating* padded,     # IN  (n_samples, grid.sample)
                                const floating* grad_grid,  # IN  (n_samples, out_channels,
                                                            #      grid.positions)
                                Py_ssize_t n_samples,
                                floating* weight_grad,      # IN/OUT (out_channels,
                                                            #         C/groups · kernel)
                                int max_threads) noexcept nogil

# g' = dL/dy · f'(y) (kind: a fused activation's epilogue code, or none) on the grid:
# each row at its grid position, zeros past each row.
cdef void direct_grid_gradient(const Geometry* g, Py_ssize_t groups,
                               Py_ssize_t out_channels,
                               const floating* grad,     # IN  (n_samples, out_channels, P)
                               const floating* out,      # IN  y, as grad (read for f')
                               int kind, floating param,
                               Py_ssize_t n_samples,
                               floating* grad_grid,      # OUT (n_samples, out_channels,
                                                         #      grid.positions)
                               int max_threads) noexcept nogil

# padded (n_samples, grid.sample) from x, as the forward pads and keeps it.
cdef void direct_pad(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                     const floating* x,           # IN  (n_samples, C, D, H, W)
                     Py_ssize_t n_samples,
                     floating* padded,            # OUT (n_samples, grid.sample)
                     int max_threads) noexcept nogil

# dx = col2vol(Wᵀ · g), with no columns: each tile of Wᵀ · (dL/dy on the grid)
# added from registers into a padded dx (per thread, in scratch), then cropped.
cdef int direct_input_gradient(const Geometry* g, Py_ssize_t groups,
                               Py_ssize_t out_channels,
                               const floating* weight,     # IN  (out_channels, C/groups · kernel)
                               const floating* grad_grid,  # IN  (n_samples, out_channels,
                                                           #      grid.positions)
                               Py_ssize_t n_samples,
                               floating* x_grad,           # OUT (n_samples, C, D, H, W)
                               floating* scratch, Py_ssize_t scratch_per_thread,
                               int max_threads) noexcept nogil
