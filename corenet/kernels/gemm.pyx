"""corenet's GEMM: packed, cache-blocked, register-tiled, OpenMP over output blocks.

The structure is the one BLIS made standard. For each block of KC rows of
op(B) a thread packs a KC x NC panel (NR columns at a time, so the
micro-kernel reads it sequentially), then packs MC x KC blocks of op(A) in MR
row slivers and runs the micro-kernel (microkernel.h) over every MR x NR tile.
Transposes cost nothing extra: packing reads through strides.

Threads split the output into disjoint blocks of whole tiles, and every element
sums its k terms in the same order on any thread, so the result is bitwise
the same for any thread count.
"""
import operator
import os

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from corenet.kernels.threads cimport num_threads, threads_for

from corenet.errors import DTypeError, ShapeError
from corenet.memory import check_allocation

cnp.import_array()

cdef extern from "microkernel.h" nogil:
    enum:
        CN_MR
        CN_NR_FLOAT
        CN_NR_DOUBLE
        CN_AXPY_VECTORS
        CN_VEC_BYTES
    void* cn_thread_buffer(size_t n_bytes)
    void* cn_shared_buffer(size_t n_bytes)
    # The k block: the B sliver (KC x NR) and the A sliver (KC x MR) share L1.
    enum:
        CN_KC_FLOAT
        CN_KC_DOUBLE
    void cn_pack_b_transposed_float(float* dst, const float* b, ptrdiff_t ldb, ptrdiff_t kc,
                                    ptrdiff_t nc)
    void cn_pack_b_rows_float(float* dst, const float* b, ptrdiff_t ldb, ptrdiff_t kc,
                              ptrdiff_t nc)
    void cn_pack_b_rows_double(double* dst, const double* b, ptrdiff_t ldb, ptrdiff_t kc,
                               ptrdiff_t nc)
    void cn_pack_a_rows_float(float* dst, const float* a, ptrdiff_t lda, ptrdiff_t mc,
                              ptrdiff_t kc)
    float cn_activate_float(float value, int kind, float param)
    double cn_activate_double(double value, int kind, double param)
    void cn_kernel_float(ptrdiff_t kc, const float* a, const float* b, float* c,
                         ptrdiff_t ldc, int accumulate, const float* bias, int bias_per_row,
                         int epilogue, float param)
    void cn_kernel_float_edge(ptrdiff_t kc, const float* a, const float* b, float* c,
                              ptrdiff_t ldc, int accumulate, const float* bias,
                              int bias_per_row, int epilogue, float param, ptrdiff_t mr,
                              ptrdiff_t nr)
    void cn_kernel_double(ptrdiff_t kc, const double* a, const double* b, double* c,
                          ptrdiff_t ldc, int accumulate, const double* bias,
                          int bias_per_row, int epilogue, double param)
    void cn_kernel_double_edge(ptrdiff_t kc, const double* a, const double* b, double* c,
                               ptrdiff_t ldc, int accumulate, const double* bias,
                               int bias_per_row, int epilogue, double param, ptrdiff_t mr,
                               ptrdiff_t nr)
    int CN_PANELS_FOR_ROWS(int rows)
    void cn_kernel_rows_float(int rows, int panels, ptrdiff_t kc, const float* a,
                              const float* b, ptrdiff_t ldp, float* c, ptrdiff_t ldc,
                              int accumulate, const float* bias, int bias_per_row,
                              int epilogue, float param)
    void cn_kernel_rows_double(int rows, int panels, ptrdiff_t kc, const double* a,
                               const double* b, ptrdiff_t ldp, double* c, ptrdiff_t ldc,
                               int accumulate, const double* bias, int bias_per_row,
                               int epilogue, double param)
    void cn_dot_float(ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t k,
                      const float* a, ptrdiff_t lda, const float* bt, ptrdiff_t ldb,
                      float* c, ptrdiff_t rs_c, ptrdiff_t cs_c, int accumulate,
                      const float* bias, int epilogue, float param)
    void cn_dot_double(ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t k,
                       const double* a, ptrdiff_t lda, const double* bt, ptrdiff_t ldb,
                       double* c, ptrdiff_t rs_c, ptrdiff_t cs_c, int accumulate,
                       const double* bias, int epilogue, double param)
    void cn_axpy_float(ptrdiff_t m, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t k,
                       const float* a, ptrdiff_t a_rs, ptrdiff_t a_cs, const float* b,
                       ptrdiff_t ldb, float* c, ptrdiff_t ldc, int accumulate,
                       const float* bias, int epilogue, float param)
    void cn_axpy_double(ptrdiff_t m, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t k,
                        const double* a, ptrdiff_t a_rs, ptrdiff_t a_cs, const double* b,
                        ptrdiff_t ldb, double* c, ptrdiff_t ldc, int accumulate,
                        const double* bias, int epilogue, double param)

# Block sizes. KC comes with the register tile (microkernel.h): the KC x NR
# sliver of B stays in L1. MC and NC follow the caches found at import
# (cache_blocks below): an MC x KC block of A in half of L2, the KC x NC panel
# of B in a share of L3. They change the order of no sum (only KC does), so
# results stay bitwise the same for any MC, NC and thread count.
cdef Py_ssize_t MC = 288
cdef Py_ssize_t NC = 3072
cdef enum:
    # m * n * k below which the GEMM runs on one thread: about 2 µs of work,
    # what waking a second thread costs.
    GRAIN = 64 * 64 * 128
    THIN_DOT_MIN_K = 128
    SHARED_PANEL_MIN_WORK = 256 * 256 * 256
    PACK_PANELS = 8  # panels of B one thread packs at a time in the shared-panel split
    # The shared-panel split's row blocks: each 1/(ROW_BLOCK_SHARE · threads) of the
    # slivers left, at least MIN_ROW_BLOCK slivers.
    ROW_BLOCK_SHARE = 2
    MIN_ROW_BLOCK = 2
    COLUMN_BLOCK_PANELS = 8  # panels of B at least in a block of the column split


cdef inline Py_ssize_t round_up(Py_ssize_t x, Py_ssize_t step) noexcept nogil:
    return (x + step - 1) // step * step


cdef void pack_a(floating* dst, const floating* a, Py_ssize_t rs, Py_ssize_t cs,
                 Py_ssize_t mc, Py_ssize_t kc) noexcept nogil:
    """MR-row slivers of an mc x kc block of A: sliver s holds, for each p, MR values."""
    cdef Py_ssize_t s, i0, i, p, mr
    cdef floating* sliver
    if floating is float:
        if cs == 1:  # rows of A are contiguous: transposed 16 x 16 in registers
            cn_pack_a_rows_float(dst, a, rs, mc, kc)
            return
    for s in range((mc + CN_MR - 1) // CN_MR):
        i0 = s * CN_MR
        mr = min(<Py_ssize_t>CN_MR, mc - i0)
        sliver = dst + i0 * kc
        if mr < CN_MR:
            memset(sliver, 0, CN_MR * kc * sizeof(floating))
        if cs == 1:  # rows of A are contiguous: read along them
            for i in range(mr):
                for p in range(kc):
                    sliver[p * CN_MR + i] = a[(i0 + i) * rs + p]
        elif rs == 1 and mr == CN_MR:  # A given transposed: MR contiguous values per p
            for p in range(kc):
                memcpy(sliver + p * CN_MR, a + i0 + p * cs, CN_MR * sizeof(floating))
        else:
            for p in range(kc):
                for i in range(mr):
                    sliver[p * CN_MR + i] = a[(i0 + i) * rs + p * cs]


cdef void pack_b(floating* dst, const floating* b, Py_ssize_t rs, Py_ssize_t cs,
                 Py_ssize_t kc, Py_ssize_t nc, Py_ssize_t nr_full) noexcept nogil:
    """NR-column panels of a kc x nc block of B: panel q holds, for each p, NR values."""
    cdef Py_ssize_t q, j0, j, p, nr
    cdef floating* panel
    if cs == 1:
        if floating is float:
            cn_pack_b_rows_float(dst, b, rs, kc, nc)
        else:
            cn_pack_b_rows_double(dst, b, rs, kc, nc)
        return
    if floating is float:
        if rs == 1:  # B given transposed: square blocks transposed in registers
            cn_pack_b_transposed_float(dst, b, cs, kc, nc)
            return
    for q in range((nc + nr_full - 1) // nr_full):
        j0 = q * nr_full
        nr = min(nr_full, nc - j0)
        panel = dst + j0 * kc
        if nr < nr_full:
            memset(panel, 0, nr_full * kc * sizeof(floating))
        for j in range(nr):
            for p in range(kc):
                panel[p * nr_full + j] = b[p * rs + (j0 + j) * cs]


cdef void pack_panels(floating* panels, const floating* b, Py_ssize_t rs, Py_ssize_t cs,
                      Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    """B (k x n), element (p, j) at b[p·rs + j·cs], packed as gemm_b_panels reads it:
    the GEMM's own packing, for a producer that has B's rows, or its columns, at hand."""
    pack_b(panels, b, rs, cs, k, n, CN_NR_FLOAT if floating is float else CN_NR_DOUBLE)


cdef inline void run_kernel(Py_ssize_t kc, const floating* a, const floating* b, floating* c,
                            Py_ssize_t ldc, bint accumulate, const floating* bias,
                            bint bias_per_row, int epilogue, floating param, Py_ssize_t mr,
                            Py_ssize_t nr, Py_ssize_t nr_full) noexcept nogil:
    if mr == CN_MR and nr == nr_full:
        if floating is float:
            cn_kernel_float(kc, a, b, c, ldc, accumulate, bias, bias_per_row, epilogue, param)
        else:
            cn_kernel_double(kc, a, b, c, ldc, accumulate, bias, bias_per_row, epilogue, param)
    else:
        if floating is float:
            cn_kernel_float_edge(kc, a, b, c, ldc, accumulate, bias, bias_per_row, epilogue,
                                 param, mr, nr)
        else:
            cn_kernel_double_edge(kc, a, b, c, ldc, accumulate, bias, bias_per_row, epilogue,
                                  param, mr, nr)


cdef void short_sliver(Py_ssize_t kc, const floating* a, const floating* b, Py_ssize_t ldp,
                       floating* c, Py_ssize_t ldc, Py_ssize_t full_panels,
                       Py_ssize_t nr_full, int rows, bint accumulate, const floating* bias,
                       bint bias_per_row, int epilogue, floating param) noexcept nogil:
    """The last sliver of a block, rows < MR, over its full_panels full panels of B
    (ldp elements apart): several panels at a time (microkernel.h's rows kernels),
    not a full sliver's FMAs on rows of zeros. bias: the sliver's first row's (per
    row) or the first panel's first column's."""
    cdef Py_ssize_t q = 0, step
    cdef int wide = CN_PANELS_FOR_ROWS(rows)
    while q < full_panels:
        step = wide if q + wide <= full_panels else 1
        if floating is float:
            cn_kernel_rows_float(rows, step, kc, a, b + q * ldp, ldp, c + q * nr_full, ldc,
                                 accumulate,
                                 NULL if bias == NULL else (bias if bias_per_row
                                                            else bias + q * nr_full),
                                 bias_per_row, epilogue, param)
        else:
            cn_kernel_rows_double(rows, step, kc, a, b + q * ldp, ldp, c + q * nr_full, ldc,
                                  accumulate,
                                  NULL if bias == NULL else (bias if bias_per_row
                                                             else bias + q * nr_full),
                                  bias_per_row, epilogue, param)
        q += step


cdef inline Py_ssize_t k_block(Py_ssize_t k, Py_ssize_t kc_max) noexcept nogil:
    """KC for this k (kc_max: the dtype's): equal k blocks (784 = 2 x 392, not
    384 + 384 + 16), since a thin last block would cost a pass over C for little
    work. It depends on k only, as it must: the k blocks are the one blocking
    that orders sums."""
    cdef Py_ssize_t blocks = (k + kc_max - 1) // kc_max
    return (k + blocks - 1) // blocks


cdef Py_ssize_t gemm_k_block(Py_ssize_t k, bint double_precision) noexcept nogil:
    return k_block(k, CN_KC_DOUBLE if double_precision else CN_KC_FLOAT)


cdef void multiply_panel(Py_ssize_t m0, Py_ssize_t m1, Py_ssize_t jc, Py_ssize_t nc,
                         Py_ssize_t pc, Py_ssize_t kc, bint last,
                         const floating* a, Py_ssize_t a_rs, Py_ssize_t a_cs,
                         const floating* b_packed, Py_ssize_t ldp, floating* a_packed,
                         Py_ssize_t mc_block, floating* c, Py_ssize_t ldc, bint accumulate,
                         const floating* bias, bint bias_per_row, int epilogue,
                         floating param) noexcept nogil:
    """C[m0:m1, jc:jc+nc] += A[m0:m1, pc:pc+kc] · (packed panel of B: kc x NR
    slivers ldp elements apart), A packed mc_block rows at a time into a_packed (sized
    for them); the epilogue when this is the last k block."""
    cdef Py_ssize_t nr_full = CN_NR_FLOAT if floating is float else CN_NR_DOUBLE
    cdef Py_ssize_t ic, mc, jr, ir, j, group_end, short_rows, group, full_end
    cdef const floating* tile_bias
    accumulate = accumulate or pc > 0
    if not last:
        epilogue = EPILOGUE_NONE
    # Plain while loops: Cython turns range() with a run-time step into Python iteration.
    ic = m0
    while ic < m1:
        mc = min(mc_block, m1 - ic)
        pack_a(a_packed, a + ic * a_rs + pc * a_cs, a_rs, a_cs, mc, kc)
        # A short last sliver takes several full panels at a time (short_sliver):
        # right after their full slivers, while those panels of B are in L1 or L2.
        # (After all panels, it read the whole panel of B again from L3, and
        # conv2d 64->64's four last rows ran at half the full kernel's rate.)
        short_rows = mc % CN_MR
        group = CN_PANELS_FOR_ROWS(short_rows) * nr_full if short_rows else nr_full
        full_end = nc // nr_full * nr_full
        jr = 0
        while jr < nc:
            group_end = min(nc, jr + group)
            j = jr
            while j < group_end:
                ir = 0
                while ir < mc:
                    if mc - ir < CN_MR and nc - j >= nr_full:
                        break  # the short sliver over full panels: below
                    tile_bias = NULL
                    if last and bias != NULL:
                        tile_bias = bias + (ic + ir if bias_per_row else jc + j)
                    run_kernel(kc, a_packed + ir * kc, b_packed + j // nr_full * ldp,
                               c + (ic + ir) * ldc + jc + j, ldc, accumulate, tile_bias,
                               bias_per_row, epilogue, param,
                               min(<Py_ssize_t>CN_MR, mc - ir), min(nr_full, nc - j), nr_full)
                    ir += CN_MR
                j += nr_full
            if short_rows and jr < full_end:
                short_sliver(kc, a_packed + (mc - short_rows) * kc, b_packed + jr // nr_full * ldp,
                             ldp, c + (ic + mc - short_rows) * ldc + jc + jr, ldc,
                             (min(group_end, full_end) - jr) // nr_full, nr_full, short_rows,
                             accumulate,
                             NULL if not last or bias == NULL else
                             bias + (ic + mc - short_rows if bias_per_row else jc + jr),
                             bias_per_row, epilogue, param)
            jr = group_end
        ic += mc_block


cdef int gemm_block(Py_ssize_t m0, Py_ssize_t m1, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t k,
                    const floating* a, Py_ssize_t a_rs, Py_ssize_t a_cs,
                    const floating* b, Py_ssize_t b_rs, Py_ssize_t b_cs,
                    floating* c, Py_ssize_t ldc, bint accumulate,
                    const floating* bias, bint bias_per_row, int epilogue,
                    floating param) noexcept nogil:
    """C[m0:m1, n0:n1] on the calling thread, with its own packing buffers."""
    cdef Py_ssize_t nr_full = CN_NR_FLOAT if floating is float else CN_NR_DOUBLE
    cdef Py_ssize_t kc_max = k_block(k, CN_KC_FLOAT if floating is float else CN_KC_DOUBLE)
    cdef Py_ssize_t jc, nc, pc, kc
    # MC and NC read once: the buffers are sized by them (use_cache_blocks may change them).
    cdef Py_ssize_t mc_block = MC, nc_block = NC
    cdef Py_ssize_t panel_size = kc_max * round_up(min(nc_block, n1 - n0), nr_full)
    cdef Py_ssize_t block_size = kc_max * round_up(min(mc_block, m1 - m0), CN_MR)
    cdef floating* b_packed = <floating*>cn_thread_buffer(
        (panel_size + block_size) * sizeof(floating))
    if b_packed == NULL:
        return -1
    cdef floating* a_packed = b_packed + panel_size
    jc = n0
    while jc < n1:
        nc = min(nc_block, n1 - jc)
        pc = 0
        while pc < k:
            kc = min(kc_max, k - pc)
            pack_b(b_packed, b + pc * b_rs + jc * b_cs, b_rs, b_cs, kc, nc, nr_full)
            multiply_panel(m0, m1, jc, nc, pc, kc, pc + kc == k, a, a_rs, a_cs, b_packed,
                           kc * nr_full, a_packed, mc_block, c, ldc, accumulate, bias,
                           bias_per_row, epilogue, param)
            pc += kc
        jc += nc
    return 0


cdef Py_ssize_t row_blocks(Py_ssize_t m_tiles, int n_threads, Py_ssize_t* starts) noexcept nogil:
    """The shared-panel split's row blocks, in slivers, largest first (OpenMP's
    guided schedule): each takes a share of the slivers left, so the threads
    start on large blocks, which reuse each sliver of B more, and end on small
    ones, so that neither waits long for the other's last block. With equal
    blocks of six slivers, 1024³ in k blocks of 256 ran 2-4 % slower on 2 Zen 3
    threads: the 29th block ran alone. Writes the starts and the end into
    starts, unless NULL; returns the number of blocks."""
    cdef Py_ssize_t start = 0, size, count = 0
    cdef Py_ssize_t share = ROW_BLOCK_SHARE * n_threads
    while start < m_tiles:
        if starts != NULL:
            starts[count] = start
        size = max((m_tiles - start + share - 1) // share, <Py_ssize_t>MIN_ROW_BLOCK)
        start = min(m_tiles, start + size)
        count += 1
    if starts != NULL:
        starts[count] = m_tiles
    return count


cdef int gemm_shared_panel(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                           const floating* a, Py_ssize_t a_rs, Py_ssize_t a_cs,
                           const floating* b, Py_ssize_t b_rs, Py_ssize_t b_cs,
                           floating* c, Py_ssize_t ldc, bint accumulate,
                           const floating* bias, bint bias_per_row, int epilogue,
                           floating param, int n_threads) noexcept nogil:
    """C split by rows over the threads, as BLIS does it: for each k block the
    threads pack one panel of B together, then take row blocks of C (row_blocks)
    from a queue (a thread that the OS delays takes fewer), each packing its own
    A. B is packed once instead of once per thread."""
    cdef Py_ssize_t nr_full = CN_NR_FLOAT if floating is float else CN_NR_DOUBLE
    cdef Py_ssize_t kc_max = k_block(k, CN_KC_FLOAT if floating is float else CN_KC_DOUBLE)
    cdef Py_ssize_t jc, nc, pc, kc, part, task
    cdef Py_ssize_t m_tiles = (m + CN_MR - 1) // CN_MR
    cdef Py_ssize_t n_tasks = row_blocks(m_tiles, n_threads, NULL)
    cdef Py_ssize_t* task_tiles = <Py_ssize_t*>malloc((n_tasks + 1) * sizeof(Py_ssize_t))
    if task_tiles == NULL:
        return -1
    row_blocks(m_tiles, n_threads, task_tiles)
    cdef Py_ssize_t n_panels
    # MC and NC read once: the buffers are sized by them (use_cache_blocks may change them).
    cdef Py_ssize_t mc_block = MC, nc_block = NC
    cdef Py_ssize_t panel_size = kc_max * round_up(min(nc_block, n), nr_full)
    # The first block is the largest.
    cdef Py_ssize_t block_size = kc_max * min(mc_block, task_tiles[1] * CN_MR)
    cdef floating* b_packed = <floating*>cn_shared_buffer(panel_size * sizeof(floating))
    cdef floating* a_packed
    cdef int failures = 0
    if b_packed == NULL:
        free(task_tiles)
        return -1
    jc = 0
    while jc < n:
        nc = min(nc_block, n - jc)
        n_panels = (nc + nr_full - 1) // nr_full
        pc = 0
        while pc < k:
            kc = min(kc_max, k - pc)
            # The threads take runs of PACK_PANELS whole panels from a queue.
            for part in prange((n_panels + PACK_PANELS - 1) // PACK_PANELS,
                               num_threads=n_threads, schedule='dynamic'):
                pack_b(b_packed + part * PACK_PANELS * nr_full * kc,
                       b + pc * b_rs + (jc + part * PACK_PANELS * nr_full) * b_cs,
                       b_rs, b_cs, kc,
                       min(nc - part * PACK_PANELS * nr_full, PACK_PANELS * nr_full),
                       nr_full)
            for task in prange(n_tasks, num_threads=n_threads, schedule='dynamic'):
                a_packed = <floating*>cn_thread_buffer(block_size * sizeof(floating))
                if a_packed == NULL:
                    failures += 1
                    continue
                multiply_panel(task_tiles[task] * CN_MR, min(m, task_tiles[task + 1] * CN_MR),
                               jc, nc, pc, kc, pc + kc == k,
                               a, a_rs, a_cs, b_packed, kc * nr_full, a_packed, mc_block, c,
                               ldc, accumulate, bias, bias_per_row, epilogue, param)
            if failures:
                break
            pc += kc
        if failures:
            break
        jc += nc
    free(task_tiles)
    return -1 if failures else 0


cdef void empty_product(Py_ssize_t m, Py_ssize_t n, floating* c, Py_ssize_t ldc,
                        bint accumulate, const floating* bias, bint bias_per_row, int epilogue,
                        floating param) noexcept nogil:
    """k == 0: C is its old value (or zero) plus the bias, through the epilogue. Also
    the finishing pass of a thin product whose bias is per row (accumulate set)."""
    cdef Py_ssize_t i, j
    cdef floating value
    for i in range(m):
        for j in range(n):
            value = c[i * ldc + j] if accumulate else 0
            if bias != NULL:
                value = value + (bias[i] if bias_per_row else bias[j])
            if epilogue != EPILOGUE_NONE:
                if floating is float:
                    value = cn_activate_float(value, epilogue, param)
                else:
                    value = cn_activate_double(value, epilogue, param)
            c[i * ldc + j] = value


cdef int thin_dot(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t lda,
                  const floating* b, Py_ssize_t b_rs, Py_ssize_t b_cs, floating* c,
                  Py_ssize_t ldc, bint accumulate, const floating* bias,
                  int epilogue, floating param, int n_threads) noexcept nogil:
    """C = A · B through dot products of A's rows with B's columns, for a thin C."""
    cdef const floating* bt = b
    cdef Py_ssize_t ldb_t = b_cs, j, p, task, start, stop
    cdef floating* copy
    if b_rs != 1:  # B's columns are strided: copy Bᵀ (n x k, small since n is)
        copy = <floating*>cn_thread_buffer(n * k * sizeof(floating))
        if copy == NULL:
            return -1
        for p in range(k):
            for j in range(n):
                copy[j * k + p] = b[p * b_rs + j * b_cs]
        bt = copy
        ldb_t = k
    cdef bint by_rows = m >= n
    # Columns are split in groups of four, as the kernel takes them (see microkernel.h).
    cdef Py_ssize_t unit = 1 if by_rows else 4
    cdef Py_ssize_t extent = m if by_rows else (n + 3) // 4
    cdef Py_ssize_t m0, m1, n0, n1
    for task in prange(n_threads, num_threads=n_threads, schedule='static'):
        start = task * extent // n_threads * unit
        stop = min((task + 1) * extent // n_threads * unit, m if by_rows else n)
        if by_rows:
            m0, m1, n0, n1 = start, stop, 0, n
        else:
            m0, m1, n0, n1 = 0, m, start, stop
        if floating is float:
            cn_dot_float(m0, m1, n0, n1, k, a, lda, bt, ldb_t, c, ldc, 1, accumulate, bias,
                         epilogue, param)
        else:
            cn_dot_double(m0, m1, n0, n1, k, a, lda, bt, ldb_t, c, ldc, 1, accumulate, bias,
                          epilogue, param)
    return 0


cdef void thin_axpy(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                    Py_ssize_t a_rs, Py_ssize_t a_cs, const floating* b, Py_ssize_t ldb,
                    floating* c, Py_ssize_t ldc, bint accumulate, const floating* bias,
                    int epilogue, floating param, int max_threads) noexcept nogil:
    """C = A · B row by row as Σ_p A[i, p] · B[p, :], for a C of few rows."""
    # The kernel's block of columns.
    cdef Py_ssize_t width = CN_AXPY_VECTORS * CN_VEC_BYTES // sizeof(floating)
    cdef Py_ssize_t blocks = (n + width - 1) // width, task, start, stop
    cdef int n_threads = min(<Py_ssize_t>max_threads, blocks)
    for task in prange(n_threads, num_threads=n_threads, schedule='static'):
        # Split in whole blocks, so that the partial block is always the last one.
        start = task * blocks // n_threads * width
        stop = min(n, (task + 1) * blocks // n_threads * width)
        if floating is float:
            cn_axpy_float(m, start, stop, k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, bias,
                          epilogue, param)
        else:
            cn_axpy_double(m, start, stop, k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, bias,
                           epilogue, param)


cdef int gemm(bint trans_a, bint trans_b,
              Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
              const floating* a, Py_ssize_t lda,
              const floating* b, Py_ssize_t ldb,
              floating* c, Py_ssize_t ldc,
              bint accumulate, const floating* bias, int epilogue,
              floating epilogue_param) noexcept nogil:
    return gemm_ex(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, accumulate, bias,
                   False, epilogue, epilogue_param, num_threads())


cdef int gemm_ex(bint trans_a, bint trans_b,
                 Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                 const floating* a, Py_ssize_t lda,
                 const floating* b, Py_ssize_t ldb,
                 floating* c, Py_ssize_t ldc,
                 bint accumulate, const floating* bias, bint bias_per_row, int epilogue,
                 floating epilogue_param, int max_threads) noexcept nogil:
    # Element (i, p) of op(A) lies at a[i * a_rs + p * a_cs]; likewise for B.
    cdef Py_ssize_t a_rs = 1 if trans_a else lda
    cdef Py_ssize_t a_cs = lda if trans_a else 1
    cdef Py_ssize_t b_rs = 1 if trans_b else ldb
    cdef Py_ssize_t b_cs = ldb if trans_b else 1
    cdef int status = 0
    if m == 0 or n == 0:
        return 0
    bias_per_row = bias_per_row and bias != NULL
    cdef Py_ssize_t nr_full = CN_NR_FLOAT if floating is float else CN_NR_DOUBLE
    # Thin products, where packed tiles would be mostly padding (matrix-vector shapes,
    # a Linear with few outputs): the path depends on the shape only, never on threads.
    # The dot path ends each element with a sum across a vector's lanes, which only
    # a long k amortizes. With B given transposed and at most one sliver of rows
    # (a convolution's weight gradient, dW = dY · colᵀ, with few output channels)
    # it reads both operands where they lie, where packing B would move as much
    # data as the product has FMAs. A bias per row is added after them, in a pass
    # of its own.
    cdef bint dot_path = (not trans_a and k >= THIN_DOT_MIN_K
                          and (n < nr_full or (m <= CN_MR and trans_b)))
    cdef bint axpy_path = not dot_path and m < CN_MR and not trans_b
    if bias_per_row and (k == 0 or dot_path or axpy_path):
        status = gemm_ex(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, accumulate, NULL,
                         False, EPILOGUE_NONE, epilogue_param, max_threads)
        empty_product(m, n, c, ldc, True, bias, True, epilogue, epilogue_param)
        return status
    if k == 0:
        empty_product(m, n, c, ldc, accumulate, bias, False, epilogue, epilogue_param)
        return 0
    cdef int n_threads = min(threads_for(m * n * k, GRAIN), max(max_threads, 1))
    if dot_path:
        return thin_dot(m, n, k, a, lda, b, b_rs, b_cs, c, ldc, accumulate, bias, epilogue,
                        epilogue_param, n_threads)
    if axpy_path:
        thin_axpy(m, n, k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, bias, epilogue,
                  epilogue_param, n_threads)
        return 0
    cdef Py_ssize_t m_tiles = (m + CN_MR - 1) // CN_MR
    cdef Py_ssize_t n_tiles = (n + nr_full - 1) // nr_full
    # Split the dimension with more tiles, in whole tiles.
    cdef Py_ssize_t tasks_m = 1, tasks_n = 1
    if n_tiles >= m_tiles:
        tasks_n = min(<Py_ssize_t>n_threads, n_tiles)
    else:
        tasks_m = min(<Py_ssize_t>n_threads, m_tiles)
    cdef Py_ssize_t n_tasks = tasks_m * tasks_n
    # Large row splits share B's panel (below that, the extra parallel region per k
    # block costs more than packing B twice saves).
    if tasks_m > 1 and m * n * k >= SHARED_PANEL_MIN_WORK:
        return gemm_shared_panel(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, accumulate,
                                 bias, bias_per_row, epilogue, epilogue_param, n_threads)
    if n_tasks == 1:
        return gemm_block(0, m, 0, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc,
                          accumulate, bias, bias_per_row, epilogue, epilogue_param)
    cdef Py_ssize_t task, m0, m1, n0, n1
    cdef int failures = 0
    cdef Py_ssize_t blocks
    if tasks_n > 1 and m * n * k >= SHARED_PANEL_MIN_WORK:
        # Large column splits: blocks of at least COLUMN_BLOCK_PANELS panels from a
        # queue, up to eight a thread, so that a thread the host delays takes fewer.
        # Each packs its own B (and A again, a small cost next to its panels).
        blocks = max(tasks_n, min(8 * tasks_n, n_tiles // COLUMN_BLOCK_PANELS))
        for task in prange(blocks, num_threads=tasks_n, schedule='dynamic'):
            failures += -gemm_block(0, m, task * n_tiles // blocks * nr_full,
                                    min(n, (task + 1) * n_tiles // blocks * nr_full), k,
                                    a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, accumulate, bias,
                                    bias_per_row, epilogue, epilogue_param)
        return -1 if failures else 0
    for task in prange(n_tasks, num_threads=n_tasks, schedule='static'):
        m0 = (task // tasks_n) * m_tiles // tasks_m * CN_MR
        m1 = min(m, ((task // tasks_n) + 1) * m_tiles // tasks_m * CN_MR)
        n0 = (task % tasks_n) * n_tiles // tasks_n * nr_full
        n1 = min(n, ((task % tasks_n) + 1) * n_tiles // tasks_n * nr_full)
        failures += -gemm_block(m0, m1, n0, n1, k, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc,
                                accumulate, bias, bias_per_row, epilogue, epilogue_param)
    return -1 if failures else 0


cdef int b_panels_block(Py_ssize_t m, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t k,
                        const floating* a, Py_ssize_t lda, const floating* b_panels,
                        floating* c, Py_ssize_t ldc, bint accumulate, const floating* bias,
                        bint bias_per_row, int epilogue, floating param) noexcept nogil:
    """C[:, n0:n1] of gemm_b_panels on the calling thread, n0 on a panel's edge."""
    cdef Py_ssize_t nr_full = CN_NR_FLOAT if floating is float else CN_NR_DOUBLE
    cdef Py_ssize_t kc_max = k_block(k, CN_KC_FLOAT if floating is float else CN_KC_DOUBLE)
    cdef Py_ssize_t pc = 0, kc
    cdef Py_ssize_t mc_block = MC  # read once: a_packed is sized by it
    cdef floating* a_packed = <floating*>cn_thread_buffer(
        kc_max * round_up(min(mc_block, m), CN_MR) * sizeof(floating))
    if a_packed == NULL:
        return -1
    while pc < k:
        kc = min(kc_max, k - pc)
        multiply_panel(0, m, n0, n1 - n0, pc, kc, pc + kc == k, a, lda, 1,
                       b_panels + n0 * k + pc * nr_full, k * nr_full, a_packed, mc_block, c,
                       ldc, accumulate, bias, bias_per_row, epilogue, param)
        pc += kc
    return 0


cdef int gemm_b_panels(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating* a, Py_ssize_t lda, const floating* b_panels,
                       floating* c, Py_ssize_t ldc, bint accumulate, const floating* bias,
                       bint bias_per_row, int epilogue, floating epilogue_param,
                       int max_threads) noexcept nogil:
    """gemm_ex for a B that its producer wrote packed (a convolution's columns),
    A not transposed: the threads split the panels, each packing its own A. Every
    element takes the operations it takes in gemm_ex's packed path (m >= MR, n >= NR),
    so the two agree bitwise there."""
    cdef Py_ssize_t nr_full = CN_NR_FLOAT if floating is float else CN_NR_DOUBLE
    cdef Py_ssize_t n_panels = (n + nr_full - 1) // nr_full, task
    cdef int failures = 0
    if m == 0 or n == 0:
        return 0
    bias_per_row = bias_per_row and bias != NULL
    if k == 0:
        empty_product(m, n, c, ldc, accumulate, bias, bias_per_row, epilogue, epilogue_param)
        return 0
    cdef int n_threads = min(threads_for(m * n * k, GRAIN), max(max_threads, 1))
    n_threads = min(<Py_ssize_t>n_threads, n_panels)
    for task in prange(n_threads, num_threads=n_threads, schedule='static'):
        failures += -b_panels_block(m, task * n_panels // n_threads * nr_full,
                                    min(n, (task + 1) * n_panels // n_threads * nr_full), k,
                                    a, lda, b_panels, c, ldc, accumulate, bias, bias_per_row,
                                    epilogue, epilogue_param)
    return -1 if failures else 0


cdef void reference_gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                         floating* c, Py_ssize_t ldc) noexcept nogil:
    """The obviously correct triple loop that tests hold the fast GEMM against."""
    cdef Py_ssize_t i, j, p
    cdef floating total, a_ip, b_pj
    for i in range(m):
        for j in range(n):
            total = 0
            for p in range(k):
                a_ip = a[p * lda + i] if trans_a else a[i * lda + p]
                b_pj = b[j * ldb + p] if trans_b else b[p * ldb + j]
                total = total + a_ip * b_pj
            c[i * ldc + j] = total


cdef tuple _operands(object a, object b, bint trans_a, bint trans_b, object out, str name):
    """Checked, C-contiguous operands and the output, with (m, n, k). The checks
    are C-level where the inputs are already arrays: matmul on small matrices
    should cost little more than the product."""
    if not (isinstance(a, np.ndarray) and cnp.PyArray_IS_C_CONTIGUOUS(a)):
        a = np.ascontiguousarray(a)
    if not (isinstance(b, np.ndarray) and cnp.PyArray_IS_C_CONTIGUOUS(b)):
        b = np.ascontiguousarray(b)
    cdef cnp.ndarray a_arr = a, b_arr = b
    cdef int type_num = cnp.PyArray_TYPE(a_arr)
    # The type number ignores byte order: a big-endian float32 would pass as float32.
    if (type_num != cnp.PyArray_TYPE(b_arr) or type_num not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64)
            or not cnp.PyArray_ISNOTSWAPPED(a_arr) or not cnp.PyArray_ISNOTSWAPPED(b_arr)):
        raise DTypeError(f"{name}: expected two float32 or two float64 arrays in the "
                         f"machine's byte order, got {a.dtype} and {b.dtype}")
    if cnp.PyArray_NDIM(a_arr) != 2 or cnp.PyArray_NDIM(b_arr) != 2:
        raise ShapeError(f"{name}: expected two 2-D arrays, got shapes {a.shape} and {b.shape}")
    cdef Py_ssize_t m = a_arr.shape[1] if trans_a else a_arr.shape[0]
    cdef Py_ssize_t k = a_arr.shape[0] if trans_a else a_arr.shape[1]
    cdef Py_ssize_t k_b = b_arr.shape[1] if trans_b else b_arr.shape[0]
    cdef Py_ssize_t n = b_arr.shape[0] if trans_b else b_arr.shape[1]
    if k != k_b:
        raise ShapeError(f"{name}: inner dimensions differ: op(a) is {(m, k)}, "
                         f"op(b) is {(k_b, n)}")
    return a, b, _checked_out(out, m, n, a_arr, name), m, n, k


cdef object _checked_out(object out, Py_ssize_t m, Py_ssize_t n, cnp.ndarray a, str name):
    """out, or a new (m, n) array of a's dtype when None."""
    if out is None:
        # (m, 0) @ (0, n) reads nothing: m and n alone could ask for terabytes. The
        # check costs microseconds, so small products skip it.
        if m > (1 << 24) // max(n, 1):
            check_allocation(name, "the product", (m, n), a.dtype)
        return np.empty((m, n), dtype=a.dtype)
    if not (isinstance(out, np.ndarray) and cnp.PyArray_NDIM(out) == 2
            and cnp.PyArray_DIMS(out)[0] == m and cnp.PyArray_DIMS(out)[1] == n
            and cnp.PyArray_TYPE(out) == cnp.PyArray_TYPE(a) and cnp.PyArray_ISNOTSWAPPED(out)
            and cnp.PyArray_IS_C_CONTIGUOUS(out) and cnp.PyArray_ISWRITEABLE(out)):
        raise ShapeError(f"{name}: out must be a writeable C-contiguous {a.dtype} array of "
                         f"shape {(m, n)} in the machine's byte order, got "
                         f"{getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}")
    return out


cdef bint _spans_overlap(cnp.ndarray x, object y):
    """Whether two C-contiguous arrays' bytes overlap (y may be None): for them
    np.may_share_memory's answer, without its 0.6 µs a pair (a 4x4 matmul takes 2)."""
    if y is None:
        return False
    cdef cnp.ndarray other = y
    cdef char* x_start = <char*>cnp.PyArray_DATA(x)
    cdef char* y_start = <char*>cnp.PyArray_DATA(other)
    cdef Py_ssize_t x_bytes = cnp.PyArray_NBYTES(x), y_bytes = cnp.PyArray_NBYTES(other)
    return x_bytes > 0 and y_bytes > 0 and x_start < y_start + y_bytes \
        and y_start < x_start + x_bytes


cdef object _work_array(cnp.ndarray out, tuple inputs, bint accumulate):
    """The array the GEMM writes: out, or a temporary when out shares memory with
    an input. The GEMM writes tiles of C while it still reads A and B, so
    matmul(a, b, out=b) would read values it had already overwritten; numpy's
    matmul gives the right product there, and so does this (the caller copies the
    temporary into out)."""
    for array in inputs:
        if _spans_overlap(out, array):
            return out.copy() if accumulate else np.empty_like(out)
    return out


EPILOGUES = {None: EPILOGUE_NONE, "relu": EPILOGUE_RELU, "sigmoid": EPILOGUE_SIGMOID,
             "tanh": EPILOGUE_TANH, "leaky_relu": EPILOGUE_LEAKY_RELU, "elu": EPILOGUE_ELU}


def _check_epilogue(accumulate, out, activation, name):
    if accumulate and out is None:
        raise ValueError(f"{name}: accumulate=True needs out")
    if activation not in EPILOGUES:
        raise ValueError(f"{name}: activation must be one of {list(EPILOGUES)}, "
                         f"got {activation!r}")


def _checked_bias(bias, expected, dtype, name):
    if bias is None:
        return None
    bias = np.ascontiguousarray(bias, dtype=dtype)
    if bias.shape != (expected,):
        raise ShapeError(f"{name}: bias must have shape ({expected},), got {bias.shape}")
    return bias


def matmul(a, b, trans_a=False, trans_b=False, out=None, *, bias=None, activation=None,
           activation_param=0.0, accumulate=False, bias_per_row=False):
    """op(a) @ op(b) with corenet's GEMM, where op transposes when asked.

    ``bias`` (one value per output column, or per row with ``bias_per_row``) and
    ``activation`` (a name in
    EPILOGUES; ``activation_param`` is leaky_relu's slope or elu's alpha) are
    applied in the GEMM's epilogue; ``accumulate`` adds the product to ``out``.

    >>> import numpy as np
    >>> a = np.ones((2, 3), np.float32)
    >>> matmul(a, a, trans_b=True)
    array([[3., 3.],
           [3., 3.]], dtype=float32)
    """
    _check_epilogue(accumulate, out, activation, "matmul")
    a, b, out, shape_m, shape_n, shape_k = _operands(a, b, trans_a, trans_b, out, "matmul")
    bias = _checked_bias(bias, shape_m if bias_per_row else shape_n, a.dtype, "matmul")
    work = _work_array(out, (a, b, bias), accumulate)
    cdef cnp.ndarray a_arr = a, b_arr = b, out_arr = work
    cdef void* bias_data = NULL if bias is None else cnp.PyArray_DATA(bias)
    cdef bint ta = trans_a, tb = trans_b, add = accumulate, per_row = bias_per_row
    cdef int epilogue = EPILOGUES[activation]
    cdef double param = activation_param
    cdef Py_ssize_t m = shape_m, n = shape_n, k = shape_k
    cdef int status
    if a.dtype == np.float32:
        with nogil:
            status = gemm_ex(ta, tb, m, n, k,
                             <const float*>cnp.PyArray_DATA(a_arr), a_arr.shape[1],
                             <const float*>cnp.PyArray_DATA(b_arr), b_arr.shape[1],
                             <float*>cnp.PyArray_DATA(out_arr), n, add,
                             <const float*>bias_data, per_row, epilogue, <float>param,
                             num_threads())
    else:
        with nogil:
            status = gemm_ex(ta, tb, m, n, k,
                             <const double*>cnp.PyArray_DATA(a_arr), a_arr.shape[1],
                             <const double*>cnp.PyArray_DATA(b_arr), b_arr.shape[1],
                             <double*>cnp.PyArray_DATA(out_arr), n, add,
                             <const double*>bias_data, per_row, epilogue, param,
                             num_threads())
    if status != 0:
        raise MemoryError("matmul: could not allocate the packing buffers")
    if work is not out:
        out[...] = work
    return out


def pack_b_panels(b, trans_b=False):
    """b (k, n), or with trans_b its transpose stored (n, k), packed as gemm_b_panels
    reads it by the GEMM's own packing (pack_panels): an aligned (ceil(n / NR), k, NR)
    array, zeros past n.

    >>> import numpy as np
    >>> pack_b_panels(np.ones((2, 3), np.float32)).shape[1:] == (2, tile_shape(np.float32)[1])
    True
    """
    from corenet.layer import aligned_empty

    b = np.ascontiguousarray(b)
    if b.dtype not in (np.float32, np.float64):
        raise DTypeError(f"pack_b_panels: expected a float32 or float64 array, got {b.dtype}")
    if b.ndim != 2:
        raise ShapeError(f"pack_b_panels: expected a 2-D b, got shape {b.shape}")
    nr = tile_shape(b.dtype)[1]
    shape_n, shape_k = b.shape if trans_b else b.shape[::-1]
    panels = aligned_empty(((shape_n + nr - 1) // nr, shape_k, nr), b.dtype)
    cdef cnp.ndarray b_arr = b, panels_arr = panels
    # element (p, j) of B: row p of b, or column p of its stored transpose
    cdef Py_ssize_t k = shape_k, n = shape_n
    cdef Py_ssize_t rs = 1 if trans_b else n, cs = k if trans_b else 1
    if k == 0 or n == 0:
        panels[...] = 0
    elif b.dtype == np.float32:
        with nogil:
            pack_panels(<float*>cnp.PyArray_DATA(panels_arr),
                        <const float*>cnp.PyArray_DATA(b_arr), rs, cs, k, n)
    else:
        with nogil:
            pack_panels(<double*>cnp.PyArray_DATA(panels_arr),
                        <const double*>cnp.PyArray_DATA(b_arr), rs, cs, k, n)
    return panels


def matmul_b_panels(a, panels, n, out=None, *, bias=None, activation=None,
                    activation_param=0.0, accumulate=False, bias_per_row=False):
    """a @ b, with b (k, n) given packed and aligned (pack_b_panels), through
    gemm_b_panels; the keywords as matmul's.

    >>> import numpy as np
    >>> a = np.ones((2, 3), np.float32)
    >>> matmul_b_panels(a, pack_b_panels(a.T), 2)
    array([[3., 3.],
           [3., 3.]], dtype=float32)
    """
    _check_epilogue(accumulate, out, activation, "matmul_b_panels")
    if isinstance(n, bool):  # operator.index takes True for 1
        raise TypeError(f"matmul_b_panels: n must be an integer, got {n!r}")
    n = operator.index(n)
    if n < 0:
        raise ShapeError(f"matmul_b_panels: n must be at least 0, got {n}")
    a, panels = np.ascontiguousarray(a), np.ascontiguousarray(panels)
    if a.dtype not in (np.float32, np.float64) or panels.dtype != a.dtype:
        raise DTypeError(f"matmul_b_panels: expected two float32 or two float64 arrays, "
                         f"got {a.dtype} and {panels.dtype}")
    if a.ndim != 2:
        raise ShapeError(f"matmul_b_panels: expected a 2-D a, got shape {a.shape}")
    shape_m, shape_k = a.shape
    nr = tile_shape(a.dtype)[1]
    expected = ((n + nr - 1) // nr, shape_k, nr)
    if panels.shape != expected:
        raise ShapeError(f"matmul_b_panels: panels must have shape {expected}, "
                         f"got {panels.shape}")
    if panels.size and panels.ctypes.data % CN_VEC_BYTES:
        raise ValueError(f"matmul_b_panels: panels must start on a {CN_VEC_BYTES}-byte "
                         f"boundary (the kernel's vector loads), as pack_b_panels's do")
    out = _checked_out(out, shape_m, n, a, "matmul_b_panels")
    bias = _checked_bias(bias, shape_m if bias_per_row else n, a.dtype, "matmul_b_panels")
    work = _work_array(out, (a, panels, bias), accumulate)
    cdef cnp.ndarray a_arr = a, b_arr = panels, out_arr = work
    cdef void* bias_data = NULL if bias is None else cnp.PyArray_DATA(bias)
    cdef bint add = accumulate, per_row = bias_per_row
    cdef int epilogue = EPILOGUES[activation]
    cdef double param = activation_param
    cdef Py_ssize_t m = shape_m, k = shape_k, columns = n
    cdef int status
    if a.dtype == np.float32:
        with nogil:
            status = gemm_b_panels(m, columns, k, <const float*>cnp.PyArray_DATA(a_arr), k,
                                   <const float*>cnp.PyArray_DATA(b_arr),
                                   <float*>cnp.PyArray_DATA(out_arr), columns, add,
                                   <const float*>bias_data, per_row, epilogue, <float>param,
                                   num_threads())
    else:
        with nogil:
            status = gemm_b_panels(m, columns, k, <const double*>cnp.PyArray_DATA(a_arr), k,
                                   <const double*>cnp.PyArray_DATA(b_arr),
                                   <double*>cnp.PyArray_DATA(out_arr), columns, add,
                                   <const double*>bias_data, per_row, epilogue, param,
                                   num_threads())
    if status != 0:
        raise MemoryError("matmul_b_panels: could not allocate the packing buffers")
    if work is not out:
        out[...] = work
    return out


def reference_matmul(a, b, trans_a=False, trans_b=False):
    """The slow triple-loop twin of matmul, kept for tests."""
    a, b, out, shape_m, shape_n, shape_k = _operands(a, b, trans_a, trans_b, None,
                                                     "reference_matmul")
    cdef cnp.ndarray a_arr = a, b_arr = b, out_arr = out
    cdef bint ta = trans_a, tb = trans_b
    cdef Py_ssize_t m = shape_m, n = shape_n, k = shape_k
    if cnp.PyArray_TYPE(a_arr) == cnp.NPY_FLOAT32:
        reference_gemm(ta, tb, m, n, k,
                       <const float*>cnp.PyArray_DATA(a_arr), a_arr.shape[1],
                       <const float*>cnp.PyArray_DATA(b_arr), b_arr.shape[1],
                       <float*>cnp.PyArray_DATA(out_arr), n)
    else:
        reference_gemm(ta, tb, m, n, k,
                       <const double*>cnp.PyArray_DATA(a_arr), a_arr.shape[1],
                       <const double*>cnp.PyArray_DATA(b_arr), b_arr.shape[1],
                       <double*>cnp.PyArray_DATA(out_arr), n)
    return out


cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define CN_SIMD_BYTES 64
    #elif defined(__AVX__)
    #define CN_SIMD_BYTES 32
    #else
    #define CN_SIMD_BYTES 16
    #endif
    #ifdef __FMA__
    #define CN_HAS_FMA 1
    #else
    #define CN_HAS_FMA 0
    #endif
    """
    int CN_SIMD_BYTES
    int CN_HAS_FMA


def cache_blocks(l2_bytes: int, l3_bytes: int, n_cores: int) -> tuple:
    """(MC, NC) for these cache sizes: an MC x KC block of float32 A in half of L2,
    a KC x NC panel of float32 B in half of this core's share of L3; whole tiles,
    within sane bounds when a size is unknown (0)."""
    kc = CN_KC_FLOAT
    mc = (l2_bytes // 2) // (kc * 4) // CN_MR * CN_MR if l2_bytes > 0 else 288
    share = l3_bytes // max(1, n_cores) // 2
    nc = share // (kc * 4) // CN_NR_FLOAT * CN_NR_FLOAT if l3_bytes > 0 else 3072
    return (min(max(mc, 4 * CN_MR), 1024 // CN_MR * CN_MR),
            min(max(nc, 16 * CN_NR_FLOAT), 4096))


def cache_bytes(level: int, folder: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """The size of this CPU's data or unified cache at ``level`` (Linux sysfs: one
    folder per cache with files level, type and size), 0 if unknown."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return 0
    for entry in entries:
        try:
            with open(f"{folder}/{entry}/level") as handle:
                found = int(handle.read())
            with open(f"{folder}/{entry}/type") as handle:
                kind = handle.read().strip()
            with open(f"{folder}/{entry}/size") as handle:
                size = handle.read().strip()
        except (OSError, ValueError):
            continue
        if found == level and kind in ("Data", "Unified"):
            # "48K", "1M" or a plain number; explicit lengths, as wraparound is off here
            multiplier = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(
                size[len(size) - 1:], 1)
            digits = size[:len(size) - 1] if multiplier > 1 else size
            try:
                return int(digits) * multiplier
            except ValueError:  # also an empty size
                return 0
    return 0


def use_cache_blocks(mc: int, nc: int) -> None:
    """Set the GEMM's MC and NC (whole tiles); results do not depend on them."""
    global MC, NC
    if mc < CN_MR or nc < CN_NR_FLOAT:
        raise ValueError(f"use_cache_blocks: MC must be >= {CN_MR} and NC >= {CN_NR_FLOAT}, "
                         f"got {mc} and {nc}")
    MC, NC = mc // CN_MR * CN_MR, nc // CN_NR_FLOAT * CN_NR_FLOAT


def blocks() -> dict:
    """The GEMM's block sizes in use: KC per dtype, MC and NC."""
    return {"kc_float32": CN_KC_FLOAT, "kc_float64": CN_KC_DOUBLE, "mc": MC, "nc": NC}


use_cache_blocks(*cache_blocks(cache_bytes(2), cache_bytes(3), os.cpu_count() or 1))


def simd_bytes() -> int:
    """The widest SIMD registers the compiled kernels use, in bytes."""
    return CN_SIMD_BYTES


def fused_multiply_add() -> bool:
    """True when the kernels are built for a CPU with FMA instructions: a * b + c then
    rounds once (as in PyTorch's kernels), not twice."""
    return bool(CN_HAS_FMA)


def tile_shape(dtype) -> tuple:
    """(MR, NR): the register tile of the micro-kernel for this dtype."""
    return (CN_MR, CN_NR_FLOAT if np.dtype(dtype) == np.float32 else CN_NR_DOUBLE)
