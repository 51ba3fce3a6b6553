"""Conv2d and Conv3d: NCHW / NCDHW, weight (out, in/groups, *kernel) and bias (out,)
as PyTorch lays them out.

The batch goes through in chunks of samples (see ConvNd._plan): chunks of
about CHUNK_BYTES of columns, so that a chunk's scratch stays in L2, which the
threads take whole; or, for a sample whose columns exceed WORKSPACE_BYTES, one
sample at a time with the threads inside the products. For each chunk:

    forward   col = vol2col(x)                      (C·k, chunk·P)
              y'  = W_g · col_g + b, f in the epilogue     one GEMM per group
              y   = y' with the chunk axis moved in front  (chunk, out, P)
                    (from SAMPLE_PRODUCT_POSITIONS positions: one GEMM per
                    sample and group, written into y in place)
    backward  g'  = dL/dy · f'(y), chunk axis moved behind (out, chunk·P)
              dW_g += g'_g · col_gᵀ;  db += Σ g'
              dx  = col2vol(W_gᵀ · g'_g)

When threads take the chunks, each run of consecutive chunks sums its own
partial dW and db, and the runs are added in order. A batch that fits in one
chunk keeps its columns from forward to backward.

A sample whose columns exceed CHUNK_BYTES, in a convolution of stride 1 that
keeps height and width, goes through in tiles of output positions (ConvNd._tile).
A tile's product (tile_product) writes its columns straight into the GEMM's packed
panels, a k block at a time, and never as col; so does dW's product
(weight_gradient_tile), with the columns transposed. Forward: the threads take
(sample, tile) units. Backward in parallel
(backward_units): the units again, for dW and db in runs; then dx as the
adjoint convolution, dY·f' with the kernel flipped (ConvNd._adjoint), one tile
of dx per unit. One sample at a time (WORKSPACE_BYTES), tile by tile with the
threads inside the products: backward_tiled.
"""
import math

import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from corenet.kernels.fused cimport (activation_derivative_times, cn_relu_gradient_double,
                                    cn_relu_gradient_float, cn_row_sum_double,
                                    cn_row_sum_float)
from corenet.kernels.gemm cimport (EPILOGUE_NONE, EPILOGUE_RELU, gemm_b_panels, gemm_ex,
                                   gemm_k_block, pack_panels)
from corenet.kernels._openmp cimport omp_get_thread_num
from corenet.kernels.threads cimport threads_for
from corenet_conv.direct cimport (Grid, direct_forward, direct_grid_gradient,
                                  direct_input_gradient, direct_pad, direct_weight_gradient,
                                  make_grid)
from corenet_conv.vol2col cimport (Geometry, TileMasks, col2vol, col2vol_tile, free_tile_masks,
                                   shifted_copies, tile_masks, tile_rows, vol2col,
                                   vol2col_tile_panels)

from corenet import init as initializers
from corenet.arguments import as_bool, as_int
from corenet.errors import ShapeError
from corenet.fusion import fused_epilogue, fusion_of
from corenet.memory import check_parameters
from corenet.kernels.gemm import tile_shape
from corenet.kernels.threads import get_num_threads
from corenet.layer import (Layer, Parameter, SetOnce, as_float_dtype, check_grad,
                           check_input, parameter_arrays, require_forward)
from corenet_conv.geometry import Window, as_3d_shape, spatial_input

cnp.import_array()

# Bytes of columns (or of output rows, if more) one chunk of the batch aims at: a
# chunk's scratch then stays in L2, and the threads take whole chunks. A sample
# whose columns exceed WORKSPACE_BYTES goes alone, the threads inside its
# products. Fixed numbers, not the caches found: the chunks decide the order of
# the weight-gradient sums, which must not depend on the machine's load or threads.
CHUNK_BYTES = 256 << 10
WORKSPACE_BYTES = 16 << 20
# Bytes of columns of one position tile, when a sample's columns exceed CHUNK_BYTES
# (see ConvNd._tile): larger than L2, measured faster (fewer passes over dW and
# fewer, larger products per sample), and still far from a large sample's columns.
TILE_BYTES = 1 << 20
# Partial weight gradients in the parallel backward: runs of consecutive chunks.
MAX_PARTS = 16
# A convolution of stride 1 whose padded sample and output grid take at most
# DIRECT_SAMPLE_BYTES, with at most DIRECT_MAX_CHANNELS output channels per group,
# goes through the direct kernels (direct.pyx), with no columns: LeNet's layers and
# their kind, where writing the columns costs more than the FMAs on them (measured
# on 2 Zen 3 threads: LeNet's second convolution 1.2-1.4x faster forward and
# backward, a depthwise 3x3 1.7-2.5x). With more output channels the columns serve
# more FMAs each, and dW's dot products (about half the FMA peak) lose to the GEMM:
# a CIFAR-sized 3->32 measured 1.1-1.2x slower direct. "auto" chooses so; "always"
# (any stride-1 convolution) and "never" are for tests.
DIRECT_SAMPLE_BYTES = 256 << 10
DIRECT_MAX_CHANNELS = 16
DIRECT = "auto"

cdef enum:
    GRAIN = 1 << 15  # elements below which one thread runs
    # Output positions of a sample from which a chunk's forward multiplies sample by
    # sample, into the output in place, rather than the whole chunk at once and then
    # moving the chunk axis in front: products this wide lose nothing by it.
    SAMPLE_PRODUCT_POSITIONS = 256

cdef void move_chunk_axis_front(const floating* src, floating* dst, Py_ssize_t n_samples,
                                Py_ssize_t channels, Py_ssize_t positions,
                                int max_threads) noexcept nogil:
    """dst (n_samples, channels, P) from src (channels, n_samples · P)."""
    cdef Py_ssize_t task, sample, c
    cdef int n_threads = min(threads_for(n_samples * channels * positions, GRAIN), max_threads)
    for task in prange(n_samples * channels, num_threads=n_threads, schedule='static'):
        sample = task // channels
        c = task % channels
        memcpy(dst + task * positions, src + (c * n_samples + sample) * positions,
               positions * sizeof(floating))


cdef void move_chunk_axis_back(const floating* grad, const floating* out, floating* dst,
                               Py_ssize_t n_samples, Py_ssize_t channels,
                               Py_ssize_t positions, int kind, floating param,
                               int max_threads) noexcept nogil:
    """dst (channels, n_samples · P) = grad · f'(out), from (n_samples, channels, P)."""
    cdef Py_ssize_t task, sample, c, p, start
    cdef int n_threads = min(threads_for(n_samples * channels * positions, GRAIN), max_threads)
    for task in prange(n_samples * channels, num_threads=n_threads, schedule='static'):
        sample = task // channels
        c = task % channels
        start = (c * n_samples + sample) * positions
        if kind == EPILOGUE_NONE:
            memcpy(dst + start, grad + task * positions, positions * sizeof(floating))
        elif kind == EPILOGUE_RELU:
            if floating is float:
                cn_relu_gradient_float(dst + start, grad + task * positions,
                                       out + task * positions, positions)
            else:
                cn_relu_gradient_double(dst + start, grad + task * positions,
                                        out + task * positions, positions)
        else:
            for p in range(positions):
                dst[start + p] = activation_derivative_times(
                    kind, grad[task * positions + p], out[task * positions + p], param)


cdef void add_row_sums(floating* sums, const floating* x, Py_ssize_t rows,
                       Py_ssize_t columns, Py_ssize_t ld, int max_threads) noexcept nogil:
    """sums[r] += Σ_j x[r, j] (row r at x + r·ld), eight partial sums per row in a
    fixed order (fused.pxd's row sum, vectorized: the scalar loop took 3.6 % of a
    LeNet-5 step at batch 256 on 2 Zen 3 threads)."""
    cdef Py_ssize_t r
    cdef int n_threads = min(threads_for(rows * columns, GRAIN), max_threads)
    for r in prange(rows, num_threads=n_threads, schedule='static'):
        if floating is float:
            sums[r] = sums[r] + cn_row_sum_float(x + r * ld, columns)
        else:
            sums[r] = sums[r] + cn_row_sum_double(x + r * ld, columns)


cdef int forward_chunk(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                       const floating* x, const floating* weight, const floating* bias,
                       floating* out, floating* col, floating* scratch,
                       Py_ssize_t n_samples, const TileMasks* masks, int epilogue,
                       floating param, int n_threads) noexcept nogil:
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t span = n_samples * positions
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t m = out_channels // groups, group
    cdef int status = 0
    cdef Py_ssize_t sample
    status |= vol2col(g, x, col, span, n_samples, masks, n_threads)
    if positions >= SAMPLE_PRODUCT_POSITIONS:
        # A product per sample, written in place: no pass to move the chunk axis.
        for sample in range(n_samples):
            for group in range(groups):
                status |= gemm_ex(False, False, m, positions, k, weight + group * m * k, k,
                                  col + group * k * span + sample * positions, span,
                                  out + (sample * groups + group) * m * positions, positions,
                                  False, NULL if bias == NULL else bias + group * m, True,
                                  epilogue, param, n_threads)
        return status
    for group in range(groups):
        status |= gemm_ex(False, False, m, span, k, weight + group * m * k, k,
                          col + group * k * span, span, scratch + group * m * span, span,
                          False, NULL if bias == NULL else bias + group * m, True,
                          epilogue, param, n_threads)
    move_chunk_axis_front(scratch, out, n_samples, out_channels, positions, n_threads)
    return status


cdef int backward_chunk(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                        const floating* x, const floating* weight, const floating* grad,
                        const floating* out, floating* weight_grad, floating* bias_grad,
                        floating* x_grad, floating* col, floating* grad_t, floating* col_grad,
                        Py_ssize_t n_samples, bint have_columns, const TileMasks* masks,
                        int epilogue, floating param, int n_threads) noexcept nogil:
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t span = n_samples * positions
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t m = out_channels // groups, group
    cdef int status = 0
    move_chunk_axis_back(grad, out, grad_t, n_samples, out_channels, positions, epilogue,
                         param, n_threads)
    if bias_grad != NULL:
        add_row_sums(bias_grad, grad_t, out_channels, span, span, n_threads)
    if not have_columns:
        status |= vol2col(g, x, col, span, n_samples, masks, n_threads)
    for group in range(groups):
        # dW_g (m x k) += g'_g (m x span) · col_gᵀ (span x k)
        status |= gemm_ex(False, True, m, k, span, grad_t + group * m * span, span,
                          col + group * k * span, span, weight_grad + group * m * k, k,
                          True, NULL, False, EPILOGUE_NONE, 0, n_threads)
        if x_grad != NULL:
            # dcol_g (k x span) = W_gᵀ (k x m) · g'_g (m x span)
            status |= gemm_ex(True, False, k, span, m, weight + group * m * k, k,
                              grad_t + group * m * span, span, col_grad + group * k * span,
                              span, False, NULL, False, EPILOGUE_NONE, 0, n_threads)
    if x_grad != NULL:
        status |= col2vol(g, col_grad, span, x_grad, n_samples, masks, n_threads)
    return status


cdef int tile_product(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                      const floating* x, const floating* weight, const floating* bias,
                      floating* out, Py_ssize_t ld_out, floating* panels, Py_ssize_t p0,
                      Py_ssize_t n, Py_ssize_t nr, int epilogue, floating param,
                      int n_threads) noexcept nogil:
    """out[:, p0:p0 + n] (out_channels rows, ld_out apart) = the convolution of x for
    output positions [p0, p0 + n): W_g · the tile's columns, group by group. The
    columns go straight into the GEMM's panels (nr wide), one k block of rows at a
    time so that the product reads them from L2, and never exist whole."""
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t m = out_channels // groups, group, pc, kc
    cdef Py_ssize_t kc_max = gemm_k_block(k, floating is double)
    cdef bint last
    cdef int status = 0
    cdef TileMasks* masks = tile_masks(g, p0, n, floating is double)
    if masks == NULL:
        return -1
    for group in range(groups):
        pc = 0
        while pc < k:
            kc = min(kc_max, k - pc)
            last = pc + kc == k
            status |= vol2col_tile_panels(g, x, masks, group * k + pc, group * k + pc + kc,
                                          panels, nr, n_threads)
            status |= gemm_b_panels(m, n, kc, weight + group * m * k + pc, k, panels,
                                    out + group * m * ld_out + p0, ld_out, pc > 0,
                                    NULL if bias == NULL or not last else bias + group * m,
                                    True, epilogue if last else EPILOGUE_NONE, param,
                                    n_threads)
            pc += kc
    free_tile_masks(masks)
    return status


cdef inline Py_ssize_t strip_width(Py_ssize_t n, bint double_precision) noexcept nogil:
    """Positions per strip of weight_gradient_tile over a tile of n: the GEMM's k block
    for n, in whole 64-byte pieces (at most n rounded up to one)."""
    cdef Py_ssize_t piece = 8 if double_precision else 16
    cdef Py_ssize_t block = gemm_k_block(n, double_precision)
    return (block + piece - 1) // piece * piece


cdef int weight_gradient_tile(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                              const floating* x, const floating* grad, Py_ssize_t positions,
                              floating* weight_grad, Py_ssize_t p0, Py_ssize_t n,
                              floating* panels, floating* strips, Py_ssize_t nr,
                              int n_threads) noexcept nogil:
    """dW_g (m x k) += g'_g[:, tile] (m x n) · col_gᵀ (n x k) for output positions
    [p0, p0 + n), group by group; grad: g' of the sample (out_channels, positions).
    colᵀ goes straight into the GEMM's packed panels, a strip of positions (its k
    block) at a time: each panel's nr rows of columns into a strip of their own
    (strips: one per thread, in L1), transposed into the panel by the GEMM's packing;
    col never exists whole."""
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t m = out_channels // groups, group, s, width, panel, rows
    cdef Py_ssize_t n_panels = (k + nr - 1) // nr
    cdef Py_ssize_t strip = strip_width(n, floating is double)
    cdef floating* own
    cdef int status = 0
    cdef TileMasks* masks = tile_masks(g, p0, n, floating is double)
    if masks == NULL:
        return -1
    n_threads = min(<Py_ssize_t>n_threads, n_panels)
    for group in range(groups):
        s = 0
        while s < n:
            width = min(strip, n - s)
            for panel in prange(n_panels, num_threads=n_threads, schedule='static'):
                own = strips + omp_get_thread_num() * nr * strip
                rows = min(nr, k - panel * nr)
                tile_rows(g, x, masks, group * k + panel * nr, group * k + panel * nr + rows,
                          s, s + width, own, strip)
                pack_panels(panels + panel * width * nr, own, 1, strip, width, rows)
            status |= gemm_b_panels(m, k, width, grad + group * m * positions + p0 + s,
                                    positions, panels, weight_grad + group * m * k, k, True,
                                    NULL, False, EPILOGUE_NONE, 0, n_threads)
            s += width
    free_tile_masks(masks)
    return status


cdef int backward_tiled(const Geometry* g, Py_ssize_t groups, Py_ssize_t out_channels,
                        const floating* x, const floating* weight, const floating* grad,
                        const floating* out, floating* weight_grad, floating* bias_grad,
                        floating* x_grad, floating* panels, floating* strips,
                        floating* col_grad, floating* grad_t, Py_ssize_t tile, Py_ssize_t nr,
                        int epilogue, floating param, int n_threads) noexcept nogil:
    """backward_chunk for one sample, a tile of positions at a time, when samples go
    one at a time with the threads inside the products: dW sums the tiles'
    products in tile order (weight_gradient_tile), dx takes each tile's col2vol."""
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t m = out_channels // groups, group, p0, n
    cdef int status = 0
    if epilogue == EPILOGUE_NONE:
        grad_t = <floating*>grad  # one sample is already (out_channels, P): read only
    else:
        move_chunk_axis_back(grad, out, grad_t, 1, out_channels, positions, epilogue, param,
                             n_threads)
    if bias_grad != NULL:
        add_row_sums(bias_grad, grad_t, out_channels, positions, positions, n_threads)
    if x_grad != NULL:
        memset(x_grad, 0, g.channels * g.depth * g.height * g.width * sizeof(floating))
    p0 = 0
    while p0 < positions:
        n = min(tile, positions - p0)
        status |= weight_gradient_tile(g, groups, out_channels, x, grad_t, positions,
                                       weight_grad, p0, n, panels, strips, nr, n_threads)
        if x_grad != NULL:
            for group in range(groups):
                # dcol_g (k x n) = W_gᵀ (k x m) · g'_g[:, tile] (m x n)
                status |= gemm_ex(True, False, k, n, m, weight + group * m * k, k,
                                  grad_t + group * m * positions + p0, positions,
                                  col_grad + group * k * n, n, False, NULL, False,
                                  EPILOGUE_NONE, 0, n_threads)
            status |= col2vol_tile(g, col_grad, x_grad, p0, n, n_threads)
        p0 += tile
    return status


cdef int backward_units(const Geometry* g, const Geometry* gt, const Batch* b,
                        Py_ssize_t groups, Py_ssize_t out_channels, const floating* x,
                        const floating* weight, const floating* weight_t,
                        const floating* grad_t,
                        floating* weight_grad, floating* bias_grad, floating* x_grad,
                        floating* scratch, floating* partials) noexcept nogil:
    """Backward of a tiled convolution in parallel, in two passes over (sample, tile)
    units that the threads take from queues.

    dW, db: runs of consecutive units (position tiles of dL/dy) sum into their own
    partial gradients, added in order after.
    dx, with at least as many input channels as output channels (b.tile_dx > 0):
    the convolution's adjoint is itself a convolution, of g' = dL/dy·f' with the
    kernel flipped and in and out channels swapped (weight_t), stride 1 and the
    complementary padding (gt). Each unit computes one tile of dx's positions
    (tile_product), so no two units write the same element.
    With fewer input channels that product would be a thin one (C_in rows) over
    columns C_out·k deep, slower than Wᵀ·g' and col2vol; then the threads take
    whole samples, since the tiles of one sample add into the same dx."""
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t x_positions = g.depth * g.height * g.width
    cdef Py_ssize_t k = g.channels // groups * g.kernel_d * g.kernel_h * g.kernel_w
    cdef Py_ssize_t m = out_channels // groups
    cdef Py_ssize_t tiles = (positions + b.tile - 1) // b.tile
    cdef Py_ssize_t units = b.size * tiles
    cdef Py_ssize_t tiles_dx = (x_positions + b.tile_dx - 1) // b.tile_dx if b.tile_dx else 0
    cdef Py_ssize_t weight_size = out_channels * k
    cdef Py_ssize_t part_size = weight_size + out_channels
    cdef Py_ssize_t part, unit, sample, p0, n, group
    cdef int failures = 0
    cdef floating* col
    cdef floating* part_weight
    cdef const floating* g_sample
    memset(partials, 0, b.n_parts * part_size * sizeof(floating))
    for part in prange(b.n_parts, num_threads=min(<Py_ssize_t>b.n_threads, b.n_parts),
                       schedule='dynamic'):
        col = scratch + omp_get_thread_num() * b.scratch_per_thread
        part_weight = partials + part * part_size
        for unit in range(part * units // b.n_parts, (part + 1) * units // b.n_parts):
            sample = unit // tiles
            p0 = unit % tiles * b.tile
            n = min(b.tile, positions - p0)
            g_sample = grad_t + sample * b.out_step
            failures += -weight_gradient_tile(g, groups, out_channels, x + sample * b.in_step,
                                              g_sample, positions, part_weight, p0, n, col,
                                              col + b.weight_panels, b.panel_width, 1)
            if bias_grad != NULL:
                add_row_sums(part_weight + weight_size, g_sample + p0, out_channels, n,
                             positions, 1)
    add_parts(weight_grad, partials, b.n_parts, weight_size, part_size, b.n_threads)
    if bias_grad != NULL:
        add_parts(bias_grad, partials + weight_size, b.n_parts, out_channels, part_size, 1)
    if x_grad == NULL:
        return -1 if failures else 0
    if b.tile_dx == 0:  # dx through col2vol, the threads taking whole samples
        for sample in prange(b.size, num_threads=min(<Py_ssize_t>b.n_threads, b.size),
                             schedule='dynamic'):
            col = scratch + omp_get_thread_num() * b.scratch_per_thread
            g_sample = grad_t + sample * b.out_step
            memset(x_grad + sample * b.in_step, 0, b.in_step * sizeof(floating))
            for unit in range(tiles):
                p0 = unit * b.tile
                n = min(b.tile, positions - p0)
                for group in range(groups):
                    # dcol_g (k x n) = W_gᵀ (k x m) · g'_g[:, tile] (m x n)
                    failures += -gemm_ex(True, False, k, n, m, weight + group * m * k, k,
                                         g_sample + group * m * positions + p0, positions,
                                         col + group * k * n, n, False, NULL, False,
                                         EPILOGUE_NONE, 0, 1)
                failures += -col2vol_tile(g, col, x_grad + sample * b.in_step, p0, n, 1)
        return -1 if failures else 0
    for unit in prange(b.size * tiles_dx,
                       num_threads=min(<Py_ssize_t>b.n_threads, b.size * tiles_dx),
                       schedule='dynamic'):
        col = scratch + omp_get_thread_num() * b.scratch_per_thread
        sample = unit // tiles_dx
        p0 = unit % tiles_dx * b.tile_dx
        n = min(b.tile_dx, x_positions - p0)
        # dx[:, tile] = W' · columns of g' (gt: the adjoint's geometry)
        failures += -tile_product(gt, groups, g.channels, grad_t + sample * b.out_step,
                                  weight_t, NULL, x_grad + sample * b.in_step, x_positions,
                                  col, p0, n, b.panel_width, EPILOGUE_NONE, 0, 1)
    return -1 if failures else 0


cdef void apply_activation_derivative(const floating* grad, const floating* out,
                                      floating* grad_t, Py_ssize_t n_samples,
                                      Py_ssize_t channels, Py_ssize_t positions, int kind,
                                      floating param, int max_threads) noexcept nogil:
    """grad_t = grad · f'(out), sample by sample in the same layout."""
    cdef Py_ssize_t sample
    cdef Py_ssize_t step = channels * positions
    for sample in prange(n_samples, num_threads=min(threads_for(n_samples * step, GRAIN),
                                                    max_threads), schedule='static'):
        move_chunk_axis_back(grad + sample * step, out + sample * step,
                             grad_t + sample * step, 1, channels, positions, kind, param, 1)


cdef struct Batch:
    # How one call walks the batch: chunks of `chunk` samples; in parallel (one thread
    # per chunk, single-threaded kernels inside) or one after another (threads inside
    # each kernel). Decided from the shapes alone (ConvNd._plan), never the threads.
    Py_ssize_t size, chunk, in_step, out_step
    bint parallel
    int n_threads                   # threads to use, and scratch sets allocated
    Py_ssize_t scratch_per_thread   # elements: columns, their gradient, output or grad_t
    Py_ssize_t k_rows               # rows of the columns: C · kernel volume
    Py_ssize_t n_parts              # backward's partial-sum buffers (parallel only)
    Py_ssize_t tile                 # positions per tile of a one-sample chunk, or 0
    Py_ssize_t tile_dx              # positions of dx per tile in backward_units
    Py_ssize_t panel_width          # the GEMM's NR: tiles' columns go packed in panels
    Py_ssize_t weight_panels        # elements: dW's panels of one strip of a tile
    Py_ssize_t strip_size           # elements: one strip of weight_gradient_tile
    bint direct                     # through direct.pyx: no columns
    Py_ssize_t padded_chunk         # samples of the padded buffer (direct)
    Py_ssize_t grid_positions       # positions of the direct path's grid
    Py_ssize_t grid_sample          # elements of one padded sample (direct)


cdef int forward_batch(const Geometry* g, const Batch* b, Py_ssize_t groups,
                       Py_ssize_t out_channels, const floating* x, const floating* weight,
                       const floating* bias, floating* out, floating* scratch, floating* kept,
                       int epilogue, floating param) noexcept nogil:
    """kept: every chunk's columns, kept for backward (parallel walk only), or NULL;
    for the direct path, the padded samples, kept the same way."""
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    if b.direct:
        return direct_forward(g, groups, out_channels, x, b.size, weight, bias, out, kept,
                              scratch, b.scratch_per_thread, epilogue, param, b.n_threads)
    cdef Py_ssize_t n_chunks = (b.size + b.chunk - 1) // b.chunk, c, start, n
    cdef Py_ssize_t col_size = b.k_rows * b.chunk * positions
    cdef int failures = 0
    cdef floating* col
    # Position tiles: every (sample, tile) writes its own outputs, so in parallel the
    # threads take tiles, not whole samples, from the queue (a finer balance).
    cdef Py_ssize_t tiles = (positions + b.tile - 1) // b.tile if b.tile else 0, unit
    if b.tile and not b.parallel:
        for unit in range(n_chunks * tiles):
            failures += -tile_product(g, groups, out_channels, x + unit // tiles * b.in_step,
                                      weight, bias, out + unit // tiles * b.out_step,
                                      positions, scratch, unit % tiles * b.tile,
                                      min(b.tile, positions - unit % tiles * b.tile),
                                      b.panel_width, epilogue, param, b.n_threads)
        return -1 if failures else 0
    if b.tile:
        for unit in prange(n_chunks * tiles,
                           num_threads=min(<Py_ssize_t>b.n_threads, n_chunks * tiles),
                           schedule='dynamic'):
            failures += -tile_product(g, groups, out_channels, x + unit // tiles * b.in_step,
                                      weight, bias, out + unit // tiles * b.out_step,
                                      positions,
                                      scratch + omp_get_thread_num() * b.scratch_per_thread,
                                      unit % tiles * b.tile,
                                      min(b.tile, positions - unit % tiles * b.tile),
                                      b.panel_width, epilogue, param, 1)
        return -1 if failures else 0
    # The padding masks of shifted copies, made once for every chunk.
    cdef TileMasks* masks = (tile_masks(g, 0, positions, floating is double)
                             if shifted_copies(g) else NULL)
    if not b.parallel:
        for c in range(n_chunks):
            start = c * b.chunk
            n = min(b.chunk, b.size - start)
            failures += -forward_chunk(g, groups, out_channels, x + start * b.in_step, weight,
                                       bias, out + start * b.out_step, scratch,
                                       scratch + col_size, n, masks, epilogue, param,
                                       b.n_threads)
    else:
        for c in prange(n_chunks, num_threads=min(<Py_ssize_t>b.n_threads, n_chunks),
                        schedule='dynamic'):
            col = scratch + omp_get_thread_num() * b.scratch_per_thread
            start = c * b.chunk
            n = min(b.chunk, b.size - start)
            failures += -forward_chunk(g, groups, out_channels, x + start * b.in_step, weight,
                                       bias, out + start * b.out_step,
                                       col if kept == NULL else kept + c * col_size,
                                       col + col_size, n, masks, epilogue, param, 1)
    free_tile_masks(masks)
    return -1 if failures else 0


cdef void add_parts(floating* total, const floating* parts, Py_ssize_t n_parts,
                    Py_ssize_t size, Py_ssize_t stride, int max_threads) noexcept nogil:
    """total[i] += Σ_p parts[p · stride + i], the parts in order: one order on any
    thread count."""
    cdef Py_ssize_t i, part
    cdef floating value
    for i in prange(size, num_threads=min(threads_for(size * n_parts, GRAIN), max_threads),
                    schedule='static'):
        value = 0
        for part in range(n_parts):
            value = value + parts[part * stride + i]
        total[i] = total[i] + value


cdef int backward_batch(const Geometry* g, const Batch* b, Py_ssize_t groups,
                        Py_ssize_t out_channels, const floating* x, const floating* weight,
                        const floating* grad, const floating* out, floating* weight_grad,
                        floating* bias_grad, floating* x_grad, floating* scratch,
                        floating* partials, floating* kept, bint have_columns, int epilogue,
                        floating param, const Geometry* gt, const floating* weight_t,
                        floating* grad_t) noexcept nogil:
    """Sequential: each chunk adds into the gradients. Parallel: the chunks are split
    in n_parts runs of consecutive chunks, each run summed into its own partial
    gradients, the partials then added in order; the split depends on the shapes
    only, so the sums do too. Parallel with position tiles: backward_units, with
    gt, weight_t and grad_t (dL/dy · f', when an activation is fused) for it."""
    cdef Py_ssize_t positions = g.out_depth * g.out_height * g.out_width
    cdef Py_ssize_t n_chunks = (b.size + b.chunk - 1) // b.chunk, c, start, n, part
    cdef Py_ssize_t col_size = b.k_rows * b.chunk * positions
    cdef Py_ssize_t grad_size = out_channels * b.chunk * positions
    cdef Py_ssize_t weight_size = out_channels * (b.k_rows // groups)
    cdef Py_ssize_t part_size = weight_size + out_channels
    cdef int failures = 0
    cdef floating* col
    cdef floating* part_weight
    cdef Py_ssize_t tile_size = b.k_rows * b.tile
    # One sample at a time, tiled: dW's panels and a strip per thread, dcol, g'.
    cdef floating* col_grad = scratch + b.weight_panels + b.n_threads * b.strip_size
    if b.tile and b.parallel:
        if epilogue == EPILOGUE_NONE:
            grad_t = <floating*>grad  # read only
        else:
            apply_activation_derivative(grad, out, grad_t, b.size, out_channels, positions,
                                        epilogue, param, b.n_threads)
        return backward_units(g, gt, b, groups, out_channels, x, weight, weight_t, grad_t,
                              weight_grad, bias_grad, x_grad, scratch, partials)
    if b.tile and not b.parallel:
        for c in range(n_chunks):
            failures += -backward_tiled(
                g, groups, out_channels, x + c * b.in_step, weight, grad + c * b.out_step,
                out + c * b.out_step, weight_grad, bias_grad,
                NULL if x_grad == NULL else x_grad + c * b.in_step, scratch,
                scratch + b.weight_panels, col_grad, col_grad + tile_size, b.tile,
                b.panel_width, epilogue, param, b.n_threads)
        return -1 if failures else 0
    # The padding masks of shifted copies, made once for every chunk.
    cdef TileMasks* masks = (tile_masks(g, 0, positions, floating is double)
                             if shifted_copies(g) else NULL)
    if not b.parallel:
        for c in range(n_chunks):
            start = c * b.chunk
            n = min(b.chunk, b.size - start)
            failures += -backward_chunk(
                g, groups, out_channels, x + start * b.in_step, weight,
                grad + start * b.out_step, out + start * b.out_step, weight_grad, bias_grad,
                NULL if x_grad == NULL else x_grad + start * b.in_step, scratch,
                scratch + col_size, scratch + col_size + grad_size, n, have_columns,
                masks, epilogue, param, b.n_threads)
        free_tile_masks(masks)
        return -1 if failures else 0
    memset(partials, 0, b.n_parts * part_size * sizeof(floating))
    for part in prange(b.n_parts, num_threads=min(<Py_ssize_t>b.n_threads, b.n_parts),
                       schedule='dynamic'):
        col = scratch + omp_get_thread_num() * b.scratch_per_thread
        part_weight = partials + part * part_size
        for c in range(part * n_chunks // b.n_parts, (part + 1) * n_chunks // b.n_parts):
            start = c * b.chunk
            n = min(b.chunk, b.size - start)
            failures += -backward_chunk(
                g, groups, out_channels, x + start * b.in_step, weight,
                grad + start * b.out_step, out + start * b.out_step, part_weight,
                NULL if bias_grad == NULL else part_weight + weight_size,
                NULL if x_grad == NULL else x_grad + start * b.in_step,
                col if kept == NULL else kept + c * col_size,
                col + col_size, col + col_size + grad_size, n, kept != NULL, masks, epilogue,
                param, 1)
    free_tile_masks(masks)
    add_parts(weight_grad, partials, b.n_parts, weight_size, part_size, b.n_threads)
    if bias_grad != NULL:
        add_parts(bias_grad, partials + weight_size, b.n_parts, out_channels, part_size, 1)
    return -1 if failures else 0


cdef int direct_backward(const Geometry* g, const Batch* b, Py_ssize_t groups,
                         Py_ssize_t out_channels, const floating* x, const floating* grad,
                         const floating* out, floating* weight_grad, floating* bias_grad,
                         floating* x_grad, floating* scratch, floating* padded,
                         bint have_padded, floating* sample_sums, floating* grad_grid,
                         int epilogue, floating param, const floating* weight) noexcept nogil:
    """The direct path's backward, a chunk of b.padded_chunk samples at a time: g' =
    dL/dy · f'(y) on the grid (grad_grid, zeros past each row); db as its row sums,
    per sample (sample_sums: size · out_channels), added in sample order at the end;
    dW from the padded samples (padded again unless the forward kept them); dx."""
    cdef Py_ssize_t start, n, o, sample
    cdef floating total
    cdef int status = 0
    if bias_grad != NULL:
        memset(sample_sums, 0, b.size * out_channels * sizeof(floating))
    start = 0
    while start < b.size:
        n = min(b.padded_chunk, b.size - start)
        if not have_padded:
            direct_pad(g, groups, out_channels, x + start * b.in_step, n, padded, b.n_threads)
        direct_grid_gradient(g, groups, out_channels, grad + start * b.out_step,
                             out + start * b.out_step, epilogue, param, n, grad_grid,
                             b.n_threads)
        if bias_grad != NULL:
            add_row_sums(sample_sums + start * out_channels, grad_grid, n * out_channels,
                         b.grid_positions, b.grid_positions, b.n_threads)
        status |= direct_weight_gradient(g, groups, out_channels, padded, grad_grid, n,
                                         weight_grad, b.n_threads)
        if x_grad != NULL:
            status |= direct_input_gradient(g, groups, out_channels, weight, grad_grid, n,
                                            x_grad + start * b.in_step, scratch,
                                            b.scratch_per_thread, b.n_threads)
        start += n
    if bias_grad != NULL:
        for o in range(out_channels):
            total = 0
            for sample in range(b.size):
                total = total + sample_sums[sample * out_channels + o]
            bias_grad[o] = bias_grad[o] + total
    return status


cdef Geometry make_geometry(tuple x_shape, tuple out_shape, tuple window):
    """The C struct of sizes from 3-D shapes and the window's 3-tuples."""
    cdef Geometry g
    kernel, stride, pad, dilation = window
    g.channels, g.depth, g.height, g.width = x_shape[1:]
    g.out_depth, g.out_height, g.out_width = out_shape[2:]
    g.kernel_d, g.kernel_h, g.kernel_w = kernel
    g.stride_d, g.stride_h, g.stride_w = stride
    g.pad_d, g.pad_h, g.pad_w = pad
    g.dilation_d, g.dilation_h, g.dilation_w = dilation
    return g


cdef inline void* data(object array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray>array)


class ConvNd(SetOnce, Layer):
    """The convolution over ``n_axes`` spatial axes; Conv2d and Conv3d fix n_axes.

    Weights and bias start as in PyTorch, uniform in ±1/√fan_in
    (``init="pytorch_uniform"``); ``init`` and ``bias_init`` take corenet.init specs
    as Linear's, with fan_in = in_channels/groups · kernel volume and fan_out =
    out_channels · kernel volume (PyTorch's fans for a convolution).
    """

    n_axes = 0
    set_once = frozenset({"in_channels", "out_channels", "groups", "window", "weight_shape"})

    # No annotations: in a .pyx, Cython would convert True or 2.5 to an int silently.
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, dtype="float32", init="pytorch_uniform",
                 bias_init="pytorch_uniform"):
        super().__init__()
        shapes = check_parameters(self.name, self.parameter_shapes(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            dtype, init, bias_init))
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.groups = int(groups)
        self.window = Window(self.name, self.n_axes, kernel_size, stride, padding, dilation)
        self.dtype = as_float_dtype(dtype, self.name)
        # As PyTorch: each output sees in/groups channels of the kernel's window, each
        # input feeds out channels through it.
        receptive_field = math.prod(self.window.kernel)
        fans = (self.in_channels // self.groups * receptive_field,
                self.out_channels * receptive_field)
        self.init = initializers.get(init, self.name)
        self.bias_init = initializers.get_bias(bias_init, self.name)
        self.weight_shape = shapes["weight"]
        self.weight = Parameter("weight", self.init(self.weight_shape, *fans, self.dtype))
        self.bias = Parameter("bias", self.bias_init(
            (self.out_channels,), *fans, self.dtype)) if bias else None
        self.fused_activation = None
        self._fusion = None
        self._x = None
        self._out = None
        self._columns_kept = self._padded_kept = False

    # -- shapes --------------------------------------------------------------------

    @classmethod
    def parameter_shapes(cls, in_channels, out_channels, kernel_size, stride=1, padding=0,
                         dilation=1, groups=1, bias=True, dtype="float32",
                         init="pytorch_uniform", bias_init="pytorch_uniform"):
        """{name: shape} of the parameters, every argument checked, nothing allocated
        (loading a model file asks this before building the layer)."""
        initializers.get(init, cls.name)
        initializers.get_bias(bias_init, cls.name)
        in_channels = as_int(cls.name, "in_channels", in_channels, 1)
        out_channels = as_int(cls.name, "out_channels", out_channels, 1)
        groups = as_int(cls.name, "groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{cls.name}: groups={groups} must divide in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        as_bool(cls.name, "bias", bias)
        as_float_dtype(dtype, cls.name)
        window = Window(cls.name, cls.n_axes, kernel_size, stride, padding, dilation)
        shapes = {"weight": (out_channels, in_channels // groups) + window.kernel}
        if bias:
            shapes["bias"] = (out_channels,)
        return shapes

    def output_shape(self, *input_shapes):
        shape = spatial_input(self.name, self.n_axes, input_shapes)
        if shape[0] != self.in_channels:
            raise ShapeError(f"{self.name}: expected {self.in_channels} input channels, "
                             f"got per-sample shape {shape}")
        return (self.out_channels,) + self.window.output_size(shape[1:])

    def _plan(self, batch, positions):
        """(samples per chunk, whether threads take whole chunks): from shapes only."""
        rows = max(self.in_channels * math.prod(self.window.kernel), self.out_channels)
        per_sample = rows * positions * self.dtype.itemsize
        if per_sample > WORKSPACE_BYTES:
            return 1, False
        if per_sample * batch <= CHUNK_BYTES:
            return batch, False
        chunk = max(1, CHUNK_BYTES // per_sample)
        n_chunks = (batch + chunk - 1) // chunk
        return (batch + n_chunks - 1) // n_chunks, True

    def _batch(self, x_shape, out_shape):
        """The Batch struct for a call, and the scratch it needs (a layer buffer)."""
        cdef Batch b
        x3, out3 = as_3d_shape(x_shape), as_3d_shape(out_shape)
        positions = math.prod(out3[2:])
        b.size = x_shape[0]
        b.chunk, b.parallel = self._plan(b.size, positions)
        b.in_step, b.out_step = math.prod(x3[1:]), math.prod(out3[1:])
        b.k_rows = self.in_channels * math.prod(self.window.kernel)
        # C integers divide toward zero (cdivision): no -(-a // b) ceiling on them.
        n_chunks = (b.size + b.chunk - 1) // b.chunk
        b.n_threads = min(get_num_threads(), n_chunks) if b.parallel else get_num_threads()
        cdef Geometry g = make_geometry(x3, out3, self.window.as_3d())
        cdef Grid grid
        # The padded sample (stride 1: the grid's extent) in Python integers first:
        # make_grid's C products wrap for a window near MAX_WINDOW, which had the
        # direct path write far outside its scratch.
        padded_sample = x3[1] * math.prod(
            size + before + after for size, before, after
            in zip(x_shape[2:], self.window.pad_before, self.window.pad_after))
        b.direct = (DIRECT != "never" and self.window.stride == (1,) * self.n_axes
                    and padded_sample * self.dtype.itemsize <= WORKSPACE_BYTES)
        if b.direct:
            grid = make_grid(&g, self.groups, self.out_channels, self.dtype == np.float64)
            # Per thread: the output grid and a padded sample (or dx, padded).
            direct_scratch = grid.rows * grid.positions + grid.sample
            b.direct = DIRECT == "always" or (
                direct_scratch * self.dtype.itemsize <= DIRECT_SAMPLE_BYTES
                and self.out_channels // self.groups <= DIRECT_MAX_CHANNELS)
        if b.direct:
            b.parallel, b.chunk, b.tile, b.n_parts = False, b.size, 0, 0
            b.n_threads = get_num_threads()
            b.scratch_per_thread = direct_scratch
            b.grid_positions = grid.positions
            b.grid_sample = grid.sample
            # Padded samples, and dL/dy on the grid, within WORKSPACE_BYTES each.
            per_sample = max(grid.sample, self.out_channels * grid.positions)
            b.padded_chunk = max(1, min(b.size, WORKSPACE_BYTES // (per_sample
                                                                    * self.dtype.itemsize)))
            # Its own key: a forward here and a backward on im2col, step after step,
            # would otherwise reallocate a shared scratch each time.
            # One per thread that takes samples (direct_forward, direct_backward's dx).
            scratch = self.buffer("direct_scratch", (min(b.n_threads, b.size) * direct_scratch,),
                                  self.dtype)
            return b, scratch, None, g
        b.tile = self._tile(b.k_rows, positions) if b.chunk == 1 and shifted_copies(&g) else 0
        b.tile_dx = 0
        b.panel_width = nr = tile_shape(self.dtype)[1]
        # weight_gradient_tile's panels, and strips: whole 64-byte pieces of positions
        piece = 64 // self.dtype.itemsize
        wide = (b.tile + piece - 1) // piece * piece
        b.weight_panels = (b.k_rows // self.groups + nr - 1) // nr * nr * wide
        b.strip_size = nr * wide
        b.n_parts = min(n_chunks, MAX_PARTS) if b.parallel else 0
        if b.tile and b.parallel:
            # The threads take (sample, tile) units: backward_units.
            x_positions = math.prod(x3[2:])
            rows_dx = self.out_channels * math.prod(self.window.kernel)
            if self.in_channels >= self.out_channels:  # dx as the adjoint convolution
                b.tile_dx = min(x_positions, self._tile_of(rows_dx))
            units = n_chunks * ((positions + b.tile - 1) // b.tile)
            b.n_threads = min(get_num_threads(), units)
            b.n_parts = min(units, MAX_PARTS)
            b.scratch_per_thread = max(b.k_rows * self._padded(b.tile),
                                       rows_dx * self._padded(b.tile_dx),
                                       b.weight_panels + b.strip_size)
        elif b.tile:  # the panels (forward); dW's panels and strips, dcol, g' (backward)
            b.scratch_per_thread = max(b.k_rows * self._padded(b.tile),
                                       b.weight_panels + b.n_threads * b.strip_size
                                       + b.k_rows * b.tile + self.out_channels * positions)
        else:
            b.scratch_per_thread = (2 * b.k_rows + self.out_channels) * b.chunk * positions
        sets = b.n_threads if b.parallel else 1
        scratch = self.buffer("scratch", (sets * b.scratch_per_thread,), self.dtype)
        # Inside a model, the columns of a batch within WORKSPACE_BYTES are kept from
        # forward to backward: the same values as recomputed, without the work.
        kept = None
        columns = n_chunks * b.k_rows * b.chunk * positions
        if b.parallel and self.reuse_buffers and not b.tile \
                and columns * self.dtype.itemsize <= WORKSPACE_BYTES:
            kept = self.buffer("columns", (columns,), self.dtype)
        return b, scratch, kept, g

    def _padded_samples(self, size):
        """The direct path's buffer of padded samples (size: Batch's padded_chunk ·
        grid_sample elements)."""
        return self.buffer("padded", (size,), self.dtype)

    def _tile(self, k_rows, positions):
        """Output positions per tile of one sample's columns, or 0 when a sample's
        columns fit in CHUNK_BYTES whole or in one tile: about TILE_BYTES of
        columns, in whole vectors of the GEMM's tile, at least 64, from shapes only
        (dW sums the tiles in order)."""
        if k_rows * self.dtype.itemsize * positions <= CHUNK_BYTES:
            return 0
        tile = self._tile_of(k_rows)
        return tile if tile < positions else 0

    def _padded(self, tile):
        """A tile's width in the GEMM's panels: whole panels, the last one padded."""
        width = tile_shape(self.dtype)[1]
        return (tile + width - 1) // width * width

    def _tile_of(self, rows):
        """Positions per tile of columns with this many rows: about TILE_BYTES."""
        return max(64, TILE_BYTES // (rows * self.dtype.itemsize) // 16 * 16)

    # -- forward and backward ------------------------------------------------------

    def forward(self, x):
        x = check_input(self, x, ndim=self.n_axes + 2, dtype=self.dtype)
        out_shape = (x.shape[0],) + self.output_shape(x.shape[1:])
        weight, _ = parameter_arrays(self, self.weight, self.weight_shape, self.dtype,
                                     with_grad=False)
        bias = None
        if self.bias is not None:
            bias, _ = parameter_arrays(self, self.bias, (self.out_channels,), self.dtype,
                                       with_grad=False)
        out = self.buffer("out", out_shape, self.dtype)
        self._fusion = fused_epilogue(self)
        code, param = self._fusion or (EPILOGUE_NONE, 0.0)
        cdef Batch b
        cdef Geometry g
        b, scratch, kept, g = self._batch(x.shape, out_shape)
        if b.direct and b.padded_chunk == b.size and self.reuse_buffers:
            kept = self._padded_samples(b.padded_chunk * b.grid_sample)  # kept for backward
        cdef Py_ssize_t groups = self.groups, out_channels = self.out_channels
        cdef void* px = data(x)
        cdef void* pw = data(weight)
        cdef void* pb = data(bias)
        cdef void* pout = data(out)
        cdef void* pscratch = data(scratch)
        cdef void* pkept = data(kept)
        cdef int status, epilogue = code, item = self.dtype.itemsize
        cdef double p = param
        with nogil:
            if item == 4:
                status = forward_batch(&g, &b, groups, out_channels, <const float*>px,
                                       <const float*>pw, <const float*>pb, <float*>pout,
                                       <float*>pscratch, <float*>pkept, epilogue, <float>p)
            else:
                status = forward_batch(&g, &b, groups, out_channels, <const double*>px,
                                       <const double*>pw, <const double*>pb, <double*>pout,
                                       <double*>pscratch, <double*>pkept, epilogue, p)
        if status:
            raise MemoryError(f"{self.name}: could not allocate scratch memory")
        # One sequential chunk: its columns are still in the scratch for backward. The
        # direct path keeps its padded samples instead.
        self._columns_kept = not b.direct and (
            (b.chunk == b.size and not b.parallel and self.reuse_buffers) or kept is not None)
        self._padded_kept = b.direct and kept is not None
        self._x, self._out = x, out
        return out

    def backward(self, grad):
        require_forward(self, self._x)
        x, out = self._x, self._out
        grad = check_grad(self, grad, out.shape, self.dtype)
        weight, weight_grad = parameter_arrays(self, self.weight, self.weight_shape,
                                               self.dtype)
        bias_grad = None
        if self.bias is not None:
            _, bias_grad = parameter_arrays(self, self.bias, (self.out_channels,), self.dtype)
        x_grad = self.buffer("x_grad", x.shape, self.dtype) if self.needs_input_grad else None
        code, param = self._fusion or (EPILOGUE_NONE, 0.0)
        cdef Batch b
        cdef Geometry g
        b, scratch, kept, g = self._batch(x.shape, out.shape)
        part_size = weight.size + self.out_channels
        cdef bint have_columns = self._padded_kept if b.direct else self._columns_kept
        if b.direct:
            # The per-sample sums of db, in the partials' place; g' on the grid.
            kept = self._padded_samples(b.padded_chunk * b.grid_sample)
            partials = self.buffer("partials", (x.shape[0] * self.out_channels,), self.dtype)
            grad_grid = self.buffer("grad_grid", (b.padded_chunk * self.out_channels
                                                  * b.grid_positions,), self.dtype)
        else:
            partials = self.buffer("partials", (max(1, b.n_parts) * part_size,), self.dtype)
            if not have_columns:
                kept = None  # not filled by the forward: recompute
        cdef Geometry gt
        weight_t = grad_t = None
        if b.tile and b.parallel:
            if b.tile_dx:
                weight_t, gt = self._adjoint(weight, x.shape, out.shape)
            if code != EPILOGUE_NONE:
                grad_t = self.buffer("grad_t", out.shape, self.dtype)
        cdef void* pgrid = data(grad_grid) if b.direct else NULL
        cdef void* pwt = data(weight_t)
        cdef void* pgt = data(grad_t)
        cdef Py_ssize_t groups = self.groups, out_channels = self.out_channels
        cdef void* px = data(x)
        cdef void* pgrad = data(grad)
        cdef void* pout = data(out)
        cdef void* pxg = data(x_grad)
        cdef void* pw = data(weight)
        cdef void* pwg = data(weight_grad)
        cdef void* pbg = data(bias_grad)
        cdef void* pscratch = data(scratch)
        cdef void* pparts = data(partials)
        cdef void* pkept = data(kept)
        cdef int status, epilogue = code, item = self.dtype.itemsize
        cdef double p = param
        with nogil:
            if b.direct and item == 4:
                status = direct_backward(
                    &g, &b, groups, out_channels, <const float*>px, <const float*>pgrad,
                    <const float*>pout, <float*>pwg, <float*>pbg, <float*>pxg,
                    <float*>pscratch, <float*>pkept, have_columns, <float*>pparts,
                    <float*>pgrid, epilogue, <float>p, <const float*>pw)
            elif b.direct:
                status = direct_backward(
                    &g, &b, groups, out_channels, <const double*>px, <const double*>pgrad,
                    <const double*>pout, <double*>pwg, <double*>pbg, <double*>pxg,
                    <double*>pscratch, <double*>pkept, have_columns, <double*>pparts,
                    <double*>pgrid, epilogue, p, <const double*>pw)
            elif item == 4:
                status = backward_batch(
                    &g, &b, groups, out_channels, <const float*>px, <const float*>pw,
                    <const float*>pgrad, <const float*>pout, <float*>pwg, <float*>pbg,
                    <float*>pxg, <float*>pscratch, <float*>pparts, <float*>pkept,
                    have_columns, epilogue, <float>p, &gt, <const float*>pwt, <float*>pgt)
            else:
                status = backward_batch(
                    &g, &b, groups, out_channels, <const double*>px, <const double*>pw,
                    <const double*>pgrad, <const double*>pout, <double*>pwg, <double*>pbg,
                    <double*>pxg, <double*>pscratch, <double*>pparts, <double*>pkept,
                    have_columns, epilogue, p, &gt, <const double*>pwt, <double*>pgt)
        if status:
            raise MemoryError(f"{self.name}: could not allocate scratch memory")
        return x_grad

    def _adjoint(self, weight, x_shape, out_shape):
        """The convolution whose output is dx (backward_units): its weight, the kernel
        flipped and in and out channels swapped within each group, as a (C_in,
        C_out/groups · kernel volume) matrix; and its geometry, from dL/dy to dx
        with stride 1 and the complementary padding."""
        groups, kernel = self.groups, self.window.kernel
        grouped = weight.reshape((groups, self.out_channels // groups,
                                  self.in_channels // groups) + tuple(kernel))
        spatial = tuple(range(3, 3 + len(kernel)))
        flipped = np.flip(grouped, axis=spatial).swapaxes(1, 2)
        weight_t = self.buffer("weight_t", (self.in_channels, weight.size // self.in_channels),
                               self.dtype)
        # Into the buffer's view: reshaping the strided flip would copy it each step.
        np.copyto(weight_t.reshape(flipped.shape), flipped)
        kernel3, _, pad3, dilation3 = self.window.as_3d()
        pad_t = tuple((k - 1) * d - p for k, d, p in zip(kernel3, dilation3, pad3))
        geometry = make_geometry(as_3d_shape(out_shape), as_3d_shape(x_shape),
                                 (kernel3, (1, 1, 1), pad_t, dilation3))
        return weight_t, geometry

    def can_fuse(self, following):
        """Whether this layer can run ``following`` (its only consumer) in its own
        forward and backward: relu, sigmoid, tanh, leaky_relu and elu, in the GEMM's
        epilogue, as Linear does."""
        return fusion_of(following) is not None

    # -- the rest of the protocol ----------------------------------------------------

    def parameters(self):
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def astype(self, dtype):
        super().astype(dtype)
        self._columns_kept = self._padded_kept = False
        return self

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                **self.window.config(), "groups": self.groups,
                "bias": self.bias is not None, "dtype": self.dtype.name,
                "init": self.init.config(), "bias_init": self.bias_init.config()}


class Conv2d(ConvNd):
    """2-D convolution over (batch, channels, height, width), as torch.nn.Conv2d.

    >>> import corenet.layers as L, numpy as np
    >>> L.Conv2d(1, 6, 5, padding=2).forward(np.ones((2, 1, 28, 28), np.float32)).shape
    (2, 6, 28, 28)
    """

    name = "conv2d"
    n_axes = 2


class Conv3d(ConvNd):
    """3-D convolution over (batch, channels, depth, height, width), as torch.nn.Conv3d.

    >>> import corenet.layers as L, numpy as np
    >>> L.Conv3d(2, 4, 3, padding=1).forward(np.ones((1, 2, 5, 6, 7), np.float32)).shape
    (1, 4, 5, 6, 7)
    """

    name = "conv3d"
    n_axes = 3
