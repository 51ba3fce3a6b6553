"""The direct convolution, for stride 1: the GEMM's products without im2col's columns.

A sample is copied once into a zero-padded buffer, each channel Dp x Hp x Wp with
Dp = out_depth + dilation·(kd - 1) (Hp, Wp alike). Output (z, y, x) has grid
position q = z·Hp·Wp + y·Wp + x, and kernel offset t = (c, i, j, l) reads the
padded input at q + offset[t], offset[t] = c·plane + i·dd·Hp·Wp + j·dh·Wp + l·dw.
Row t of im2col's matrix is that shifted run of the padded input, so the GEMM's
micro-kernel reads it where it lies (cn_direct_kernel, microkernel.h) instead of
from columns written out first: for a LeNet-sized layer, writing the columns
costs more than the FMAs on them. The grid's positions past each row's end (Wp -
out_width of every Wp) are computed too, and dropped.

    forward   y[s, o, q] = Σ_t W[o, t] · x_s[q + offset[t]] + b[o], f in the epilogue
              k blocks as the GEMM's: the same bits as im2col and the GEMM
    dW        dW[o, t] += Σ_s Σ_q g'[s, o, q] · x_s[q + offset[t]]   (direct.h)
    dx        dx_s[q + offset[t]] += Σ_o W[o, t] · g'[s, o, q]: col2im of Wᵀ · g',
              each tile added from registers (cn_direct_scatter)

g' is dL/dy (times f' of a fused activation) laid out on the grid, zeros at the
dropped positions; what dW and dx add there is masked off (`valid`).

Parallel over samples (forward, dx) and over blocks of dW, each output written by
one thread in one fixed order: bitwise the same for any thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from corenet.kernels._openmp cimport omp_get_thread_num
from corenet.kernels.fused cimport (activation_derivative_times, cn_relu_gradient_double,
                                    cn_relu_gradient_float)
from corenet.kernels.gemm cimport EPILOGUE_NONE, EPILOGUE_RELU, gemm_k_block
from corenet.kernels.threads cimport threads_for

cdef extern from "microkernel.h" nogil:
    enum:
        CN_MR
        CN_NR_FLOAT
        CN_NR_DOUBLE
    void* cn_aligned_alloc "aligned_alloc"(size_t alignment, size_t n_bytes)
    void cn_direct_kernel_float(ptrdiff_t kc, const float* a, const float* src,
                                const ptrdiff_t* offsets, float* c, ptrdiff_t ldc,
                                int accumulate, const float* bias, int epilogue, float param)
    void cn_direct_kernel_double(ptrdiff_t kc, const double* a, const double* src,
                                 const ptrdiff_t* offsets, double* c, ptrdiff_t ldc,
                                 int accumulate, const double* bias, int epilogue,
                                 double param)
    void cn_direct_scatter_float(ptrdiff_t kc, const float* a, const float* src,
                                 const ptrdiff_t* offsets, float* dx,
                                 const ptrdiff_t* scatter, int rows, const float* valid)
    void cn_direct_scatter_double(ptrdiff_t kc, const double* a, const double* src,
                                  const ptrdiff_t* offsets, double* dx,
                                  const ptrdiff_t* scatter, int rows, const double* valid)

cdef extern from "direct.h" nogil:
    enum:
        CN_DW_ROWS
        CN_DW_OFFSETS
    void cn_direct_dw_float(const float* g, ptrdiff_t g_row, ptrdiff_t g_sample,
                            const float* x, const ptrdiff_t* offset, ptrdiff_t x_sample,
                            ptrdiff_t n_samples, ptrdiff_t positions, const float* valid,
                            void* acc)
    void cn_direct_dw_double(const double* g, ptrdiff_t g_row, ptrdiff_t g_sample,
                             const double* x, const ptrdiff_t* offset, ptrdiff_t x_sample,
                             ptrdiff_t n_samples, ptrdiff_t positions, const double* valid,
                             void* acc)
    float cn_direct_dw_float_total(const void* acc)
    double cn_direct_dw_double_total(const void* acc)

cdef enum:
    GRAIN = 1 << 16   # multiply-adds below which one thread runs
    DW_VECTOR_BYTES = 32
    VALID_ALIGNMENT = 64  # the tile kernels read `valid` a register vector at a time
    # Blocks of dW per task: a task sweeps every sample for its blocks, so a sample
    # is read once per task; a few tasks per thread balance a busy core.
    DW_TASKS_PER_THREAD = 4
    DW_SAMPLES = 8  # samples per call of dW's kernel


cdef inline Py_ssize_t round_up(Py_ssize_t x, Py_ssize_t step) noexcept nogil:
    return (x + step - 1) // step * step


cdef Grid make_grid(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                    bint double_precision) noexcept nogil:
    cdef Grid grid
    cdef Py_ssize_t nr = CN_NR_DOUBLE if double_precision else CN_NR_FLOAT
    grid.depth = g.out_depth + g.dilation_d * (g.kernel_d - 1)
    grid.height = g.out_height + g.dilation_h * (g.kernel_h - 1)
    grid.width = g.out_width + g.dilation_w * (g.kernel_w - 1)
    grid.plane = grid.depth * grid.height * grid.width
    grid.positions = round_up((g.out_depth - 1) * grid.height * grid.width
                              + (g.out_height - 1) * grid.width + g.out_width, nr)
    # The last channel's reads reach the kernel's last offset past the last tile.
    cdef Py_ssize_t reach = grid.positions + last_offset(g, &grid)
    grid.sample = g.channels * grid.plane + max(0, reach - grid.plane)
    grid.rows = round_up(out_channels // groups, CN_MR)
    return grid


cdef inline Py_ssize_t last_offset(const Geometry* g, const Grid* grid) noexcept nogil:
    """The offset of the kernel's last element within one channel."""
    return ((g.kernel_d - 1) * g.dilation_d * grid.height * grid.width
            + (g.kernel_h - 1) * g.dilation_h * grid.width + (g.kernel_w - 1) * g.dilation_w)


cdef void kernel_offsets(const Geometry* g, const Grid* grid, Py_ssize_t groups,
                         ptrdiff_t* offsets) noexcept nogil:
    """offsets[t] for t = (c, i, j, l) of one group's channels, im2col's row order."""
    cdef Py_ssize_t c, i, j, l, t = 0
    for c in range(g.channels // groups):
        for i in range(g.kernel_d):
            for j in range(g.kernel_h):
                for l in range(g.kernel_w):
                    offsets[t] = (c * grid.plane + i * g.dilation_d * grid.height * grid.width
                                  + j * g.dilation_h * grid.width + l * g.dilation_w)
                    t += 1


cdef void copy_padded(const Geometry* g, const Grid* grid, floating* x, floating* padded,
                      bint into_padded) noexcept nogil:
    """Between a sample x (C, D, H, W) and its padded copy (grid.sample), where x lies
    at (pad_d, pad_h, pad_w) (stride 1: the grid holds every input). into_padded:
    padded = x on zeros, the forward's copy; else x = padded's values there, the
    adjoint, for a padded dx."""
    cdef Py_ssize_t c, z, y
    cdef floating* x_row
    cdef floating* padded_row
    memset(padded if into_padded else x, 0,
           (grid.sample if into_padded else g.channels * g.depth * g.height * g.width)
           * sizeof(floating))
    for c in range(g.channels):
        for z in range(g.depth):
            for y in range(g.height):
                x_row = x + ((c * g.depth + z) * g.height + y) * g.width
                padded_row = padded + c * grid.plane + (
                    (z + g.pad_d) * grid.height + y + g.pad_h) * grid.width + g.pad_w
                if into_padded:
                    memcpy(padded_row, x_row, g.width * sizeof(floating))
                else:
                    memcpy(x_row, padded_row, g.width * sizeof(floating))


cdef void pack_slivers(const floating* a, Py_ssize_t row_stride, Py_ssize_t depth_stride,
                       Py_ssize_t valid_rows, Py_ssize_t depth, Py_ssize_t kc_max,
                       Py_ssize_t rows, bint interleaved, floating* packed) noexcept nogil:
    """A (valid_rows x depth, element (i, p) at a[i·row_stride + p·depth_stride]) as
    the micro-kernel reads it: per k block of kc, slivers of MR rows (zeros past
    valid_rows), each kc x MR, block pc at pc·rows. interleaved: the slivers' row r
    holds A's row interleaved_offset(r, rows)."""
    cdef Py_ssize_t pc = 0, kc, r, i, p
    cdef floating* block
    while pc < depth:
        kc = min(kc_max, depth - pc)
        block = packed + pc * rows
        for r in range(rows):
            i = interleaved_offset(r, rows) if interleaved else r
            for p in range(kc):
                block[r // CN_MR * CN_MR * kc + p * CN_MR + r % CN_MR] = (
                    a[i * row_stride + (pc + p) * depth_stride] if i < valid_rows else 0)
        pc += kc


cdef void sample_forward(const Geometry* g, const Grid* grid, Py_ssize_t groups,
                         Py_ssize_t m, Py_ssize_t k, Py_ssize_t kc_max,
                         const floating* src, const floating* packed,
                         const ptrdiff_t* offsets, const floating* bias, floating* out,
                         floating* tiles, int epilogue, floating param) noexcept nogil:
    """One sample: src padded (grid.sample), out (groups · m, P); tiles: the output
    grid of one group (grid.rows, grid.positions)."""
    cdef Py_ssize_t nr = CN_NR_DOUBLE if floating is double else CN_NR_FLOAT
    cdef Py_ssize_t group, pc, kc, j, s, i, z, y, row
    cdef bint last
    cdef const floating* group_src
    for group in range(groups):
        group_src = src + group * (g.channels // groups) * grid.plane
        pc = 0
        while pc < k:
            kc = min(kc_max, k - pc)
            last = pc + kc == k
            j = 0
            while j < grid.positions:
                for s in range(grid.rows // CN_MR):
                    if floating is float:
                        cn_direct_kernel_float(
                            kc, packed + (group * k + pc) * grid.rows + s * CN_MR * kc,
                            group_src + j, offsets + pc,
                            tiles + s * CN_MR * grid.positions + j, grid.positions, pc > 0,
                            bias + (group * grid.rows + s * CN_MR) if last and bias != NULL
                            else NULL, epilogue if last else EPILOGUE_NONE, param)
                    else:
                        cn_direct_kernel_double(
                            kc, packed + (group * k + pc) * grid.rows + s * CN_MR * kc,
                            group_src + j, offsets + pc,
                            tiles + s * CN_MR * grid.positions + j, grid.positions, pc > 0,
                            bias + (group * grid.rows + s * CN_MR) if last and bias != NULL
                            else NULL, epilogue if last else EPILOGUE_NONE, param)
                j += nr
            pc += kc
        # The grid's rows into the output's, dropping the positions past each row.
        for i in range(m):
            row = 0
            for z in range(g.out_depth):
                for y in range(g.out_height):
                    memcpy(out + (group * m + i) * g.out_depth * g.out_height * g.out_width
                           + row * g.out_width,
                           tiles + i * grid.positions + (z * grid.height + y) * grid.width,
                           g.out_width * sizeof(floating))
                    row += 1


cdef int direct_forward(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                        const floating* x, Py_ssize_t n_samples, const floating* weight,
                        const floating* bias, floating* out, floating* padded,
                        floating* scratch, Py_ssize_t scratch_per_thread,
                        int epilogue, floating param, int max_threads) noexcept nogil:
    cdef Grid grid = make_grid(g, groups, out_channels, floating is double)
    cdef Py_ssize_t m = out_channels // groups
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t kc_max = gemm_k_block(k, floating is double)
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t in_step = g.channels * g.depth * g.height * g.width, sample, i
    cdef int n_threads = min(threads_for(n_samples * out_channels * k * positions, GRAIN),
                             max_threads)
    # Packed weights, a bias with zeros past each group's m rows, the offsets.
    cdef floating* packed = <floating*>malloc(
        (groups * grid.rows * (k + 1)) * sizeof(floating) + k * sizeof(ptrdiff_t))
    if packed == NULL:
        return -1
    cdef floating* padded_bias = packed + groups * grid.rows * k
    cdef ptrdiff_t* offsets = <ptrdiff_t*>(padded_bias + groups * grid.rows)
    for i in range(groups):  # per group, its k blocks at (group·k + pc)·rows
        pack_slivers(weight + i * m * k, k, 1, m, k, kc_max, grid.rows, False,
                     packed + i * k * grid.rows)
    for i in range(groups * grid.rows):
        padded_bias[i] = bias[i // grid.rows * m + i % grid.rows] \
            if bias != NULL and i % grid.rows < m else 0
    kernel_offsets(g, &grid, groups, offsets)
    cdef floating* tiles
    cdef floating* src
    for sample in prange(n_samples, num_threads=min(<Py_ssize_t>n_threads, n_samples),
                         schedule='dynamic'):
        tiles = scratch + omp_get_thread_num() * scratch_per_thread
        src = (padded + sample * grid.sample if padded != NULL
               else tiles + grid.rows * grid.positions)
        copy_padded(g, &grid, <floating*>x + sample * in_step, src, True)
        sample_forward(g, &grid, groups, m, k, kc_max, src, packed, offsets,
                       padded_bias if bias != NULL else NULL, out + sample * out_channels
                       * positions, tiles, epilogue, param)
    free(packed)
    return 0


cdef void weight_gradient_block(const Geometry* g, const Grid* grid, Py_ssize_t groups,
                                Py_ssize_t out_channels, Py_ssize_t block,
                                Py_ssize_t offset_quads, const floating* padded,
                                const floating* grad_grid, Py_ssize_t n_samples,
                                const ptrdiff_t* offsets, const floating* valid,
                                floating* acc) noexcept nogil:
    """n_samples samples (padded; grad_grid (n_samples, out_channels, grid.positions))
    into the running sums acc of one block of dW: CN_DW_ROWS output channels by
    CN_DW_OFFSETS kernel offsets."""
    cdef Py_ssize_t m = out_channels // groups
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t row_pairs = (m + CN_DW_ROWS - 1) // CN_DW_ROWS
    cdef Py_ssize_t group = block // (row_pairs * offset_quads)
    cdef Py_ssize_t rows0 = block // offset_quads % row_pairs * CN_DW_ROWS
    cdef Py_ssize_t t0 = block % offset_quads * CN_DW_OFFSETS, t
    cdef ptrdiff_t block_offsets[CN_DW_OFFSETS]
    # Past the last row or offset, the last one again: computed, not kept.
    cdef Py_ssize_t second_row = grid.positions if rows0 + 1 < m else 0
    for t in range(CN_DW_OFFSETS):
        block_offsets[t] = offsets[min(t0 + t, k - 1)]
    grad_grid = grad_grid + (group * m + rows0) * grid.positions
    padded = padded + group * (g.channels // groups) * grid.plane
    if floating is float:
        cn_direct_dw_float(grad_grid, second_row, out_channels * grid.positions, padded,
                           block_offsets, grid.sample, n_samples, grid.positions, valid, acc)
    else:
        cn_direct_dw_double(grad_grid, second_row, out_channels * grid.positions, padded,
                            block_offsets, grid.sample, n_samples, grid.positions, valid, acc)


cdef int direct_weight_gradient(const Geometry* g, Py_ssize_t groups,
                                Py_ssize_t out_channels, const floating* padded,
                                const floating* grad_grid, Py_ssize_t n_samples,
                                floating* weight_grad, int max_threads) noexcept nogil:
    cdef Grid grid = make_grid(g, groups, out_channels, floating is double)
    cdef Py_ssize_t m = out_channels // groups
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t row_pairs = (m + CN_DW_ROWS - 1) // CN_DW_ROWS
    cdef Py_ssize_t offset_quads = (k + CN_DW_OFFSETS - 1) // CN_DW_OFFSETS
    cdef Py_ssize_t blocks = groups * row_pairs * offset_quads
    cdef Py_ssize_t sums = CN_DW_ROWS * CN_DW_OFFSETS
    cdef Py_ssize_t lanes = DW_VECTOR_BYTES // sizeof(floating)
    cdef int n_threads = min(threads_for(n_samples * out_channels * k * positions, GRAIN),
                             max_threads)
    cdef Py_ssize_t n_tasks = min(blocks, DW_TASKS_PER_THREAD * <Py_ssize_t>n_threads)
    cdef Py_ssize_t task, block, chunk, group, rows0, t0, i, t, o
    cdef floating* acc = <floating*>cn_aligned_alloc(
        DW_VECTOR_BYTES, round_up(blocks * sums * DW_VECTOR_BYTES, DW_VECTOR_BYTES))
    cdef ptrdiff_t* offsets = <ptrdiff_t*>malloc(k * sizeof(ptrdiff_t))
    cdef floating* valid = <floating*>cn_aligned_alloc(
        VALID_ALIGNMENT, round_up(grid.positions * sizeof(floating), VALID_ALIGNMENT))
    if acc == NULL or offsets == NULL or valid == NULL:
        free(acc)
        free(offsets)
        free(valid)
        return -1
    memset(acc, 0, blocks * sums * DW_VECTOR_BYTES)
    valid_positions(g, &grid, valid)
    kernel_offsets(g, &grid, groups, offsets)
    for task in prange(n_tasks, num_threads=min(<Py_ssize_t>n_threads, n_tasks),
                       schedule='dynamic'):
        # A few samples at a time over the task's blocks: they stay in cache.
        for chunk in range((n_samples + DW_SAMPLES - 1) // DW_SAMPLES):
            for block in range(task * blocks // n_tasks, (task + 1) * blocks // n_tasks):
                weight_gradient_block(g, &grid, groups, out_channels, block, offset_quads,
                                      padded + chunk * DW_SAMPLES * grid.sample,
                                      grad_grid + chunk * DW_SAMPLES * out_channels
                                      * grid.positions,
                                      min(<Py_ssize_t>DW_SAMPLES,
                                          n_samples - chunk * DW_SAMPLES),
                                      offsets, valid, acc + block * sums * lanes)
    for block in range(blocks):
        group = block // (row_pairs * offset_quads)
        rows0 = block // offset_quads % row_pairs * CN_DW_ROWS
        t0 = block % offset_quads * CN_DW_OFFSETS
        for t in range(min(<Py_ssize_t>CN_DW_OFFSETS, k - t0)):
            for i in range(min(<Py_ssize_t>CN_DW_ROWS, m - rows0)):
                o = group * m + rows0 + i
                if floating is float:
                    weight_grad[o * k + t0 + t] += cn_direct_dw_float_total(
                        acc + (block * sums + t * CN_DW_ROWS + i) * lanes)
                else:
                    weight_grad[o * k + t0 + t] += cn_direct_dw_double_total(
                        acc + (block * sums + t * CN_DW_ROWS + i) * lanes)
    free(acc)
    free(offsets)
    free(valid)
    return 0


cdef void valid_positions(const Geometry* g, const Grid* grid, floating* valid) noexcept nogil:
    """valid[q]: all bits set where grid position q is an output, zero past each row."""
    cdef Py_ssize_t z, y, x
    memset(valid, 0, grid.positions * sizeof(floating))
    for z in range(g.out_depth):
        for y in range(g.out_height):
            # -1 has every bit set; memset writes those bits into each element.
            memset(valid + (z * grid.height + y) * grid.width, -1,
                   g.out_width * sizeof(floating))


cdef void direct_grid_gradient(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                               const floating* grad, const floating* out, int kind,
                               floating param, Py_ssize_t n_samples, floating* grad_grid,
                               int max_threads) noexcept nogil:
    cdef Grid grid = make_grid(g, groups, out_channels, floating is double)
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t row, z, y, x, rows = n_samples * out_channels, src
    cdef floating* dst
    cdef int n_threads = min(threads_for(rows * grid.positions, GRAIN), max_threads)
    for row in prange(rows, num_threads=n_threads, schedule='static'):
        dst = grad_grid + row * grid.positions
        memset(dst, 0, grid.positions * sizeof(floating))
        for z in range(g.out_depth):
            for y in range(g.out_height):
                src = row * positions + (z * g.out_height + y) * g.out_width
                if kind == EPILOGUE_NONE:
                    memcpy(dst + (z * grid.height + y) * grid.width, grad + src,
                           g.out_width * sizeof(floating))
                elif kind == EPILOGUE_RELU:
                    if floating is float:
                        cn_relu_gradient_float(dst + (z * grid.height + y) * grid.width,
                                               grad + src, out + src, g.out_width)
                    else:
                        cn_relu_gradient_double(dst + (z * grid.height + y) * grid.width,
                                                grad + src, out + src, g.out_width)
                else:
                    for x in range(g.out_width):
                        dst[(z * grid.height + y) * grid.width + x] = \
                            activation_derivative_times(kind, grad[src + x], out[src + x],
                                                        param)


cdef void direct_pad(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                     const floating* x, Py_ssize_t n_samples, floating* padded,
                     int max_threads) noexcept nogil:
    cdef Grid grid = make_grid(g, groups, out_channels, floating is double)
    cdef Py_ssize_t in_step = g.channels * g.depth * g.height * g.width, sample
    cdef int n_threads = min(threads_for(n_samples * grid.sample, GRAIN), max_threads)
    for sample in prange(n_samples, num_threads=n_threads, schedule='static'):
        copy_padded(g, &grid, <floating*>x + sample * in_step, padded + sample * grid.sample,
                    True)


cdef inline Py_ssize_t interleaved_offset(Py_ssize_t r, Py_ssize_t rows) noexcept nogil:
    """The kernel offset of row r of dx's packed Wᵀ (rows: whole slivers): row i of sliver s takes offset
    i·slivers + s, so that a tile's rows add into dx far apart. With the natural
    order, neighbouring rows (kernel offsets one column apart) add vectors that
    overlap one element apart, each load waiting for the store before it."""
    return r % CN_MR * (rows // CN_MR) + r // CN_MR


cdef inline int sliver_rows(Py_ssize_t s, Py_ssize_t k, Py_ssize_t rows) noexcept nogil:
    """The rows of sliver s that hold kernel offsets (interleaved_offset < k): a prefix."""
    cdef Py_ssize_t slivers = rows // CN_MR
    return min(<Py_ssize_t>CN_MR, (k - s + slivers - 1) // slivers)


cdef void sample_input_gradient(const Geometry* g, const Grid* grid, Py_ssize_t groups,
                                Py_ssize_t m, Py_ssize_t k, Py_ssize_t kc_max,
                                Py_ssize_t tap_rows, const floating* grad_grid,
                                const floating* packed, const ptrdiff_t* scatter,
                                const ptrdiff_t* channel_rows, const floating* valid,
                                floating* dx_padded) noexcept nogil:
    """One sample's padded dx (zeroed here): for each tile of grid positions, Wᵀ · its
    dL/dy, each row added where its kernel offset reads (scatter: per packed row)."""
    cdef Py_ssize_t nr = CN_NR_DOUBLE if floating is double else CN_NR_FLOAT
    cdef Py_ssize_t group, pc, kc, j, s
    cdef floating* group_dx
    memset(dx_padded, 0, grid.sample * sizeof(floating))
    for group in range(groups):
        group_dx = dx_padded + group * (g.channels // groups) * grid.plane
        pc = 0
        while pc < m:
            kc = min(kc_max, m - pc)
            j = 0
            while j < grid.positions:
                for s in range(tap_rows // CN_MR):
                    if floating is float:
                        cn_direct_scatter_float(
                            kc, packed + (group * m + pc) * tap_rows + s * CN_MR * kc,
                            grad_grid + (group * m + pc) * grid.positions + j, channel_rows,
                            group_dx + j, scatter + s * CN_MR, sliver_rows(s, k, tap_rows),
                            valid + j)
                    else:
                        cn_direct_scatter_double(
                            kc, packed + (group * m + pc) * tap_rows + s * CN_MR * kc,
                            grad_grid + (group * m + pc) * grid.positions + j, channel_rows,
                            group_dx + j, scatter + s * CN_MR, sliver_rows(s, k, tap_rows),
                            valid + j)
                j += nr
            pc += kc


cdef int direct_input_gradient(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                               const floating* weight, const floating* grad_grid,
                               Py_ssize_t n_samples, floating* x_grad, floating* scratch,
                               Py_ssize_t scratch_per_thread, int max_threads) noexcept nogil:
    cdef Grid grid = make_grid(g, groups, out_channels, floating is double)
    cdef Py_ssize_t m = out_channels // groups
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t kc_max = gemm_k_block(m, floating is double)
    cdef Py_ssize_t tap_rows = round_up(k, CN_MR), sample, p
    cdef Py_ssize_t in_step = g.channels * g.depth * g.height * g.width
    cdef int n_threads = min(threads_for(n_samples * out_channels * k * grid.positions, GRAIN),
                             max_threads)
    cdef floating* packed = <floating*>malloc(groups * tap_rows * m * sizeof(floating)
                                              + (k + tap_rows + m) * sizeof(ptrdiff_t))
    cdef floating* valid = <floating*>cn_aligned_alloc(
        VALID_ALIGNMENT, round_up(grid.positions * sizeof(floating), VALID_ALIGNMENT))
    if packed == NULL or valid == NULL:
        free(packed)
        free(valid)
        return -1
    cdef ptrdiff_t* offsets = <ptrdiff_t*>(packed + groups * tap_rows * m)
    cdef ptrdiff_t* scatter = offsets + k
    cdef ptrdiff_t* channel_rows = scatter + tap_rows
    for p in range(groups):  # Wᵀ per group, its blocks at (group·m + pc)·tap_rows
        pack_slivers(weight + p * m * k, 1, k, k, m, kc_max, tap_rows, True,
                     packed + p * m * tap_rows)
    kernel_offsets(g, &grid, groups, offsets)
    for p in range(tap_rows):
        scatter[p] = offsets[min(interleaved_offset(p, tap_rows), k - 1)]
    for p in range(m):
        channel_rows[p] = p * grid.positions
    valid_positions(g, &grid, valid)
    cdef floating* dx_padded
    for sample in prange(n_samples, num_threads=min(<Py_ssize_t>n_threads, n_samples),
                         schedule='dynamic'):
        dx_padded = scratch + omp_get_thread_num() * scratch_per_thread
        sample_input_gradient(g, &grid, groups, m, k, kc_max, tap_rows,
                              grad_grid + sample * out_channels * grid.positions, packed,
                              scatter, channel_rows, valid, dx_padded)
        copy_padded(g, &grid, x_grad + sample * in_step, dx_padded, False)
    free(packed)
    free(valid)
    return 0
