/* corenet GEMM micro-kernels and per-thread packing buffers.
 *
 * A micro-kernel multiplies a packed sliver of A (kc x CN_MR, column of MR
 * values per k) by a packed panel of B (kc x NR, row of NR values per k) and
 * writes or adds the MR x NR tile of C, with an optional epilogue on the last
 * k block: bias per column (or per row, for convolutions), then an activation
 * (vector_math.h) — ReLU in registers, the others over the tile while it is
 * still in L1.
 *
 * The tile is CN_MR rows by two SIMD vectors: 16 accumulators, which leaves
 * room in the 32 AVX-512 registers for the B vectors and the broadcasts. GCC
 * vector extensions keep it portable: without -march=native the 64-byte
 * vectors are split into SSE halves, slower but correct.
 */
#ifndef CORENET_MICROKERNEL_H
#define CORENET_MICROKERNEL_H

#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

/* The register tile follows the widest vectors the compiler may use. With
 * AVX-512 (32 registers of 64 bytes): 8 rows x 2 vectors, 16 accumulators.
 * With AVX2 or narrower (16 registers of 32 bytes): 6 rows x 2 vectors, 12
 * accumulators, leaving 4 registers for the B vectors and the broadcast, as
 * in the Haswell kernels of BLIS and OpenBLAS. CN_WIDE_TILE forces AVX-512's
 * layout on a narrower CPU, where GCC splits the vectors: slow, but it lets the
 * tests cover that layout on any machine (setup.py's CORENET_WIDE_TILE). */
#if defined(__AVX512F__) || defined(CN_WIDE_TILE)
#define CN_MR 8
#define CN_VEC_BYTES 64
#define CN_VECTOR_REGISTERS 32
#define CN_AXPY_VECTORS 16
#define CN_KC_FLOAT 384   /* B sliver 48 KiB, for the 48 KiB L1 of recent AVX-512 cores */
#define CN_KC_DOUBLE 256
#else
#define CN_MR 6
#define CN_VEC_BYTES 32
#define CN_VECTOR_REGISTERS 16
#define CN_AXPY_VECTORS 6
/* The B sliver (32 KiB) fills L1 and streams partly from L2, which the
 * kernel's 16 bytes a cycle do not outrun (measured: the kernel alone runs
 * as fast at 512 as at 256 on Zen 3). Half as many k blocks halve the passes
 * over C and the threads' meetings: 1024^3 on 2 Zen 3 threads gained 4-6 %. */
#define CN_KC_FLOAT 512
#define CN_KC_DOUBLE 256
#endif
#define CN_NR_FLOAT (2 * CN_VEC_BYTES / 4)   /* two vectors of floats */
#define CN_NR_DOUBLE (2 * CN_VEC_BYTES / 8)  /* two vectors of doubles */
/* Packing buffers start on a 64-byte boundary on every CPU. */
#define CN_BUFFER_ALIGNMENT 64

/* Register vectors of the micro-kernel and the thin paths (vector_math.h's
 * cn_vf, for the activations, is as wide as the registers too, or 16 bytes
 * without native tuning). */
typedef float cn_kf __attribute__((vector_size(CN_VEC_BYTES)));
typedef int cn_kfi __attribute__((vector_size(CN_VEC_BYTES)));
typedef double cn_vd __attribute__((vector_size(CN_VEC_BYTES)));
typedef long long cn_vdi __attribute__((vector_size(CN_VEC_BYTES)));
/* The same vectors at element alignment, for loads and stores into C. */
typedef float cn_vf_u __attribute__((vector_size(CN_VEC_BYTES), aligned(4)));
typedef double cn_vd_u __attribute__((vector_size(CN_VEC_BYTES), aligned(8)));

/* Growing buffers per OS thread for the packed blocks: slot 0 for a thread's
 * own blocks, slot 1 for a panel of B that the calling thread packs with the
 * others' help and they all read. OpenMP workers live across parallel regions,
 * so a steady-state GEMM allocates nothing. A thread that exits (a short-lived
 * Python thread that ran a GEMM) frees its buffers: a pthread key whose
 * destructor frees them is set once the thread has one. */
#define CN_BUFFER_SLOTS 2
static __thread void *cn_tls_buffers[CN_BUFFER_SLOTS];
static __thread size_t cn_tls_bytes[CN_BUFFER_SLOTS];
static pthread_key_t cn_tls_key;
static pthread_once_t cn_tls_key_once = PTHREAD_ONCE_INIT;
static int cn_tls_key_ok = 0;

static void cn_free_thread_buffers(void *unused)
{
    (void)unused;
    for (int slot = 0; slot < CN_BUFFER_SLOTS; ++slot) {
        free(cn_tls_buffers[slot]); /* __thread variables are still valid here */
        cn_tls_buffers[slot] = NULL;
        cn_tls_bytes[slot] = 0;
    }
}

static void cn_make_tls_key(void)
{
    cn_tls_key_ok = pthread_key_create(&cn_tls_key, cn_free_thread_buffers) == 0;
}

static void *cn_thread_buffer_in(int slot, size_t bytes)
{
    if (bytes > cn_tls_bytes[slot]) {
        pthread_once(&cn_tls_key_once, cn_make_tls_key);
        free(cn_tls_buffers[slot]);
        bytes = (bytes + 4095) & ~(size_t)4095;
        cn_tls_buffers[slot] = aligned_alloc(CN_BUFFER_ALIGNMENT, bytes);
        cn_tls_bytes[slot] = cn_tls_buffers[slot] ? bytes : 0;
        /* Any non-NULL value runs the destructor; without a key the buffers live
         * as long as the process. */
        if (cn_tls_key_ok)
            pthread_setspecific(cn_tls_key, cn_tls_buffers);
    }
    return cn_tls_buffers[slot];
}

static void *cn_thread_buffer(size_t bytes) { return cn_thread_buffer_in(0, bytes); }

/* The shared panel of B: slot 1 of the thread that calls the GEMM. */
static void *cn_shared_buffer(size_t bytes) { return cn_thread_buffer_in(1, bytes); }

/* The activations other than ReLU, over a full MR x NR tile of C. */
static inline void cn_activate_tile_float(float *c, ptrdiff_t ldc, int kind, float param)
{
    for (int i = 0; i < CN_MR; ++i)
        for (int j = 0; j < CN_NR_FLOAT; j += CN_LANES) {
            cn_vf_unaligned *part = (cn_vf_unaligned *)(c + i * ldc + j);
            *part = cn_activate_vector(*part, kind, param);
        }
}

static inline void cn_activate_tile_double(double *c, ptrdiff_t ldc, int kind, double param)
{
    for (int i = 0; i < CN_MR; ++i)
        for (int j = 0; j < CN_NR_DOUBLE; ++j)
            c[i * ldc + j] = cn_activate_double(c[i * ldc + j], kind, param);
}

/* Packing float blocks that must be transposed on the way (A with contiguous
 * rows, B given transposed) goes 16 x 16 at a time through registers, instead
 * of one scattered store per element. Pure data movement: the packed block is
 * the same as the scalar loops in gemm.pyx make. */

#if CN_VEC_BYTES == 64
/* Transposes a 16 x 16 block held as 16 row vectors: at each stage the
 * off-diagonal h x h blocks swap, element (i, c | h) with (i | h, c). */
static inline void cn_transpose16(cn_kf r[16])
{
    static const cn_kfi low[4] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
        {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
        {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
        {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
    static const cn_kfi high[4] = {
        {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
        {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
        {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
        {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
    for (int stage = 0; stage < 4; ++stage) {
        int h = 8 >> stage;
        for (int i = 0; i < 16; ++i) {
            if (i & h) continue;
            cn_kf a = r[i], b = r[i + h];
            r[i] = __builtin_shuffle(a, b, low[stage]);
            r[i + h] = __builtin_shuffle(a, b, high[stage]);
        }
    }
}
#endif

/* The same for AVX2's 8 lanes: 8 rows of 8 floats, three stages. */
typedef int cn_kfi8 __attribute__((vector_size(32)));
typedef float cn_kf8 __attribute__((vector_size(32)));
typedef float cn_kf8_u __attribute__((vector_size(32), aligned(4)));

static inline void cn_transpose8(cn_kf8 r[8])
{
    static const cn_kfi8 low[3] = {{0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 8, 9, 4, 5, 12, 13},
                                   {0, 8, 2, 10, 4, 12, 6, 14}};
    static const cn_kfi8 high[3] = {{4, 5, 6, 7, 12, 13, 14, 15}, {2, 3, 10, 11, 6, 7, 14, 15},
                                    {1, 9, 3, 11, 5, 13, 7, 15}};
    for (int stage = 0; stage < 3; ++stage) {
        int h = 4 >> stage;
        for (int i = 0; i < 8; ++i) {
            if (i & h) continue;
            cn_kf8 a = r[i], b = r[i + h];
            r[i] = __builtin_shuffle(a, b, low[stage]);
            r[i + h] = __builtin_shuffle(a, b, high[stage]);
        }
    }
}

/* B (k x n) given as Bt, element (p, j) at b[p + j * ldb], into NR-column panels:
 * square blocks of the vector's width, transposed in registers. */
#if CN_VEC_BYTES == 64
#define CN_TRANSPOSE_LANES 16
typedef cn_kf cn_tv;
typedef cn_vf_u cn_tv_u;
#define cn_transpose_block cn_transpose16
#else
#define CN_TRANSPOSE_LANES 8
typedef cn_kf8 cn_tv;
typedef cn_kf8_u cn_tv_u;
#define cn_transpose_block cn_transpose8
#endif

static void cn_pack_b_transposed_float(float *restrict dst, const float *restrict b,
                                       ptrdiff_t ldb, ptrdiff_t kc, ptrdiff_t nc)
{
    const int L = CN_TRANSPOSE_LANES;
    for (ptrdiff_t j0 = 0; j0 < nc; j0 += CN_NR_FLOAT) {
        float *panel = dst + j0 * kc;
        ptrdiff_t nr = nc - j0 < CN_NR_FLOAT ? nc - j0 : CN_NR_FLOAT;
        ptrdiff_t p0 = 0;
        if (nr == CN_NR_FLOAT) {
            for (; p0 + L <= kc; p0 += L) {
                for (int part = 0; part < CN_NR_FLOAT / L; ++part) {
                    cn_tv r[CN_TRANSPOSE_LANES];
                    for (int j = 0; j < L; ++j)
                        r[j] = *(const cn_tv_u *)(b + p0 + (j0 + part * L + j) * ldb);
                    cn_transpose_block(r);
                    for (int p = 0; p < L; ++p)
                        *(cn_tv *)(panel + (p0 + p) * CN_NR_FLOAT + part * L) = r[p];
                }
            }
        } else {
            memset(panel, 0, CN_NR_FLOAT * kc * sizeof(float));
        }
        for (ptrdiff_t j = 0; j < nr; ++j)
            for (ptrdiff_t p = p0; p < kc; ++p)
                panel[p * CN_NR_FLOAT + j] = b[p + (j0 + j) * ldb];
    }
}

/* B (k x n) with contiguous rows, element (p, j) at b[p * ldb + j], into
 * NR-column panels. Eight rows at a time across every panel: eight read streams
 * that the prefetcher follows, where one panel at a time would read kc rows of a
 * few cache lines each, a page apart. */
#define CN_DEFINE_PACK_B_ROWS(NAME, T, NR)                                     \
static void NAME(T *restrict dst, const T *restrict b, ptrdiff_t ldb,          \
                 ptrdiff_t kc, ptrdiff_t nc)                                   \
{                                                                              \
    ptrdiff_t full = nc / NR * NR;                                             \
    for (ptrdiff_t p0 = 0; p0 < kc; p0 += 8) {                                 \
        ptrdiff_t p1 = p0 + 8 < kc ? p0 + 8 : kc;                              \
        for (ptrdiff_t j0 = 0; j0 < full; j0 += NR)                            \
            for (ptrdiff_t p = p0; p < p1; ++p)                                \
                memcpy(dst + j0 * kc + p * NR, b + p * ldb + j0, NR * sizeof(T)); \
        if (full < nc) {                                                       \
            for (ptrdiff_t p = p0; p < p1; ++p) {                              \
                T *row = dst + full * kc + p * NR;                             \
                memset(row, 0, NR * sizeof(T));                                \
                memcpy(row, b + p * ldb + full, (nc - full) * sizeof(T));      \
            }                                                                  \
        }                                                                      \
    }                                                                          \
}

CN_DEFINE_PACK_B_ROWS(cn_pack_b_rows_float, float, CN_NR_FLOAT)
CN_DEFINE_PACK_B_ROWS(cn_pack_b_rows_double, double, CN_NR_DOUBLE)

/* A (m x k) with contiguous rows, element (i, p) at a[i * lda + p], into
 * MR-row slivers through register transposes: with AVX-512 two slivers (16
 * rows) at a time, with AVX2 one sliver of 6 rows in 8 x 8 blocks. */
static void cn_pack_a_rows_float(float *restrict dst, const float *restrict a,
                                 ptrdiff_t lda, ptrdiff_t mc, ptrdiff_t kc)
{
    ptrdiff_t i0 = 0;
#if CN_MR == 8  /* 16 rows are two slivers */
    for (; i0 + 2 * CN_MR <= mc; i0 += 2 * CN_MR) {
        float *first = dst + i0 * kc, *second = first + CN_MR * kc;
        ptrdiff_t p0 = 0;
        for (; p0 + 16 <= kc; p0 += 16) {
            cn_kf r[16];
            for (int i = 0; i < 16; ++i)
                r[i] = *(const cn_vf_u *)(a + (i0 + i) * lda + p0);
            cn_transpose16(r);
            for (int p = 0; p < 16; ++p) {
                memcpy(first + (p0 + p) * CN_MR, &r[p], CN_MR * sizeof(float));
                memcpy(second + (p0 + p) * CN_MR, (float *)&r[p] + CN_MR, CN_MR * sizeof(float));
            }
        }
        for (; p0 < kc; ++p0)
            for (int i = 0; i < CN_MR; ++i) {
                first[p0 * CN_MR + i] = a[(i0 + i) * lda + p0];
                second[p0 * CN_MR + i] = a[(i0 + CN_MR + i) * lda + p0];
            }
    }
#else  /* AVX2's 6-row slivers: 8 x 8 blocks, the two rows past the sliver zero */
    for (; i0 + CN_MR <= mc; i0 += CN_MR) {
        float *sliver = dst + i0 * kc;
        ptrdiff_t p0 = 0;
        for (; p0 + 8 <= kc; p0 += 8) {
            cn_kf8 r[8] = {{0}};
            for (int i = 0; i < CN_MR; ++i) r[i] = *(const cn_kf8_u *)(a + (i0 + i) * lda + p0);
            cn_transpose8(r);
            for (int p = 0; p < 8; ++p)
                memcpy(sliver + (p0 + p) * CN_MR, &r[p], CN_MR * sizeof(float));
        }
        for (; p0 < kc; ++p0)
            for (int i = 0; i < CN_MR; ++i) sliver[p0 * CN_MR + i] = a[(i0 + i) * lda + p0];
    }
#endif
    for (; i0 < mc; i0 += CN_MR) {
        float *sliver = dst + i0 * kc;
        ptrdiff_t mr = mc - i0 < CN_MR ? mc - i0 : CN_MR;
        if (mr < CN_MR) memset(sliver, 0, CN_MR * kc * sizeof(float));
        for (ptrdiff_t i = 0; i < mr; ++i)
            for (ptrdiff_t p = 0; p < kc; ++p)
                sliver[p * CN_MR + i] = a[(i0 + i) * lda + p];
    }
}

/* The rows of a tile, 0 .. CN_MR - 1, each through macro X. */
#if CN_MR == 8
#define CN_FOR_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#else
#define CN_FOR_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#endif

/* These use the kernel's local type names: cn_t, cn_vt, cn_vu, cn_vi_t. */
#define CN_DECLARE_ROW(i) cn_vt c##i##0 = zero, c##i##1 = zero;

#define CN_ROW(i)                                                             \
    {                                                                         \
        cn_t ai = a[i];                                                       \
        c##i##0 += ai * b0;                                                   \
        c##i##1 += ai * b1;                                                   \
    }

#define CN_STORE_ROW(i)                                                       \
    {                                                                         \
        cn_vt lo = c##i##0, hi = c##i##1;                                     \
        cn_vu *row = (cn_vu *)(c + (i) * ldc);                                \
        if (accumulate) { lo += row[0]; hi += row[1]; }                       \
        if (bias && bias_per_row) { lo += bias[i]; hi += bias[i]; }           \
        else if (bias) { lo += bias_lo; hi += bias_hi; }                           \
        if (epilogue == CN_EPILOGUE_RELU) {                                   \
            lo = (cn_vt)((cn_vi_t)lo & ~(cn_vi_t)(lo < zero));                \
            hi = (cn_vt)((cn_vi_t)hi & ~(cn_vi_t)(hi < zero));                \
        }                                                                     \
        row[0] = lo;                                                          \
        row[1] = hi;                                                          \
    }

/* Full tile: c is MR x NR with row stride ldc. Partial tiles (mr < MR or
 * nr < NR) go through a scratch tile so that every element of C is computed
 * by the same instructions wherever it lies, which keeps results identical
 * for any blocking and thread count. */
#define CN_DEFINE_KERNEL(NAME, T, VT, VU, VI, NR)                             \
static void NAME(ptrdiff_t kc, const T *restrict a, const T *restrict b,      \
                 T *restrict c, ptrdiff_t ldc, int accumulate,                \
                 const T *restrict bias, int bias_per_row, int epilogue,      \
                 T param)                                                     \
{                                                                             \
    typedef T cn_t; typedef VT cn_vt; typedef VU cn_vu; typedef VI cn_vi_t;   \
    const int VL = NR / 2;                                                    \
    const VT zero = {0};                                                      \
    CN_FOR_ROWS(CN_DECLARE_ROW)                                               \
    /* The tile of C is read or written once the k loop ends: ask for it now. */ \
    for (int row = 0; row < CN_MR; ++row) {                                   \
        __builtin_prefetch(c + row * ldc, 1);                                 \
        __builtin_prefetch(c + row * ldc + NR - 1, 1);                        \
    }                                                                         \
    _Pragma("GCC unroll 4")                                                   \
    for (ptrdiff_t p = 0; p < kc; ++p) {                                      \
        VT b0 = *(const VT *)b;                                               \
        VT b1 = *(const VT *)(b + VL);                                        \
        CN_FOR_ROWS(CN_ROW)                                                   \
        a += CN_MR;                                                           \
        b += NR;                                                              \
    }                                                                         \
    VT bias_lo = zero, bias_hi = zero;                                        \
    if (bias && !bias_per_row) {                                              \
        bias_lo = *(const VU *)bias;                                          \
        bias_hi = *(const VU *)(bias + VL);                                   \
    }                                                                         \
    CN_FOR_ROWS(CN_STORE_ROW)                                                 \
    if (epilogue > CN_EPILOGUE_RELU)                                          \
        cn_activate_tile_##T(c, ldc, epilogue, param);                        \
}                                                                             \
                                                                              \
static void NAME##_edge(ptrdiff_t kc, const T *restrict a, const T *restrict b, \
                        T *restrict c, ptrdiff_t ldc, int accumulate,         \
                        const T *restrict bias, int bias_per_row,             \
                        int epilogue, T param,                                \
                        ptrdiff_t mr, ptrdiff_t nr)                           \
{                                                                             \
    T tile[CN_MR * NR] __attribute__((aligned(CN_VEC_BYTES)));                \
    T bias_tile[NR] __attribute__((aligned(CN_VEC_BYTES)));                   \
    for (ptrdiff_t i = 0; i < mr; ++i)                                        \
        for (ptrdiff_t j = 0; j < nr; ++j)                                    \
            tile[i * NR + j] = accumulate ? c[i * ldc + j] : (T)0;            \
    if (bias) {                                                               \
        /* NR >= MR: the tile's bias fits either way. */                      \
        ptrdiff_t used = bias_per_row ? mr : nr;                              \
        for (ptrdiff_t j = 0; j < NR; ++j) bias_tile[j] = j < used ? bias[j] : (T)0; \
    }                                                                         \
    NAME(kc, a, b, tile, NR, accumulate, bias ? bias_tile : NULL, bias_per_row, \
         epilogue, param);                                                    \
    for (ptrdiff_t i = 0; i < mr; ++i)                                        \
        for (ptrdiff_t j = 0; j < nr; ++j)                                    \
            c[i * ldc + j] = tile[i * NR + j];                                \
}

CN_DEFINE_KERNEL(cn_kernel_float, float, cn_kf, cn_vf_u, cn_kfi, CN_NR_FLOAT)
CN_DEFINE_KERNEL(cn_kernel_double, double, cn_vd, cn_vd_u, cn_vdi, CN_NR_DOUBLE)

/* The direct convolution's tiles (plugins/corenet_conv/direct.pyx): row p of
 * B is read in place, NR consecutive values at src + offsets[p], instead of from
 * a packed panel. */
#define CN_DIRECT_K_LOOP(T, VT, VU)                                           \
    CN_FOR_ROWS(CN_DECLARE_ROW)                                               \
    _Pragma("GCC unroll 4")                                                   \
    for (ptrdiff_t p = 0; p < kc; ++p) {                                      \
        const T *row = src + offsets[p];                                      \
        VT b0 = *(const VU *)row;                                             \
        VT b1 = *(const VU *)(row + VL);                                      \
        CN_FOR_ROWS(CN_ROW)                                                   \
        a += CN_MR;                                                           \
    }

/* The forward: B's rows are the padded input at each kernel offset of one
 * channel. The sums are the packed kernel's, term by term, with a bias per row:
 * a convolution through im2col and this GEMM gives the same bits. */
#define CN_DEFINE_DIRECT_KERNEL(NAME, T, VT, VU, VI, NR)                      \
static void NAME(ptrdiff_t kc, const T *restrict a, const T *restrict src,    \
                 const ptrdiff_t *restrict offsets, T *restrict c,            \
                 ptrdiff_t ldc, int accumulate, const T *restrict bias,       \
                 int epilogue, T param)                                       \
{                                                                             \
    typedef T cn_t; typedef VT cn_vt; typedef VU cn_vu; typedef VI cn_vi_t;   \
    const int VL = NR / 2, bias_per_row = 1;                                  \
    const VT zero = {0}, bias_lo = zero, bias_hi = zero;                      \
    CN_DIRECT_K_LOOP(T, VT, VU)                                               \
    CN_FOR_ROWS(CN_STORE_ROW)                                                 \
    if (epilogue > CN_EPILOGUE_RELU)                                          \
        cn_activate_tile_##T(c, ldc, epilogue, param);                        \
}

/* dx, the adjoint of the forward: B's rows are dL/dy of each output channel on
 * the grid, A is Wᵀ (rows: kernel offsets), and tile row i, the columns of
 * im2col for kernel offset i, is added into the padded dx where the forward read
 * them, at dx + scatter[i] (col2im, straight from registers). Only positions
 * that are outputs (valid: all bits set) are added, and only the first `rows`
 * rows: a dropped position or a spare row would add 0 · inf = NaN where dL/dy
 * or W holds an inf. */
#define CN_SCATTER_ROW(i)                                                     \
    if (i < rows) {                                                           \
        cn_vu *out = (cn_vu *)(dx + scatter[i]);                              \
        out[0] += (cn_vt)((cn_vi_t)c##i##0 & keep_lo);                        \
        out[1] += (cn_vt)((cn_vi_t)c##i##1 & keep_hi);                        \
    }

#define CN_DEFINE_DIRECT_SCATTER_KERNEL(NAME, T, VT, VU, VI, NR)              \
static void NAME(ptrdiff_t kc, const T *restrict a, const T *restrict src,    \
                 const ptrdiff_t *restrict offsets, T *restrict dx,           \
                 const ptrdiff_t *restrict scatter, int rows,                 \
                 const T *restrict valid)                                     \
{                                                                             \
    typedef T cn_t; typedef VT cn_vt; typedef VU cn_vu; typedef VI cn_vi_t;   \
    const int VL = NR / 2;                                                    \
    const VT zero = {0};                                                      \
    const VI keep_lo = *(const VI *)valid, keep_hi = *(const VI *)(valid + VL); \
    CN_DIRECT_K_LOOP(T, VT, VU)                                               \
    CN_FOR_ROWS(CN_SCATTER_ROW)                                               \
}

CN_DEFINE_DIRECT_KERNEL(cn_direct_kernel_float, float, cn_kf, cn_vf_u, cn_kfi, CN_NR_FLOAT)
CN_DEFINE_DIRECT_KERNEL(cn_direct_kernel_double, double, cn_vd, cn_vd_u, cn_vdi, CN_NR_DOUBLE)
CN_DEFINE_DIRECT_SCATTER_KERNEL(cn_direct_scatter_float, float, cn_kf, cn_vf_u, cn_kfi,
                                CN_NR_FLOAT)
CN_DEFINE_DIRECT_SCATTER_KERNEL(cn_direct_scatter_double, double, cn_vd, cn_vd_u, cn_vdi,
                                CN_NR_DOUBLE)

/* The last sliver of a block with R < MR rows: the full kernel would spend MR
 * rows of FMAs on it. These compute R rows of neighbouring panels at once
 * (panel q's B at b + q * ldp, its C at c + q * NR), 2·R·P accumulators for P
 * panels, enough independent sums to keep both FMA pipes busy. Every element
 * takes the same operations in the same order as in the full kernel (the sum
 * over k, then C's old value, the bias, the activation, on the same lanes), so
 * the results are bitwise those of the full kernel.
 *
 * The pass below covers vectors V0 .. V0 + V - 1 of the panels, two per panel,
 * with every step but an activation other than ReLU. */
#define CN_DEFINE_ROWS_PASS(NAME, T, VT, VU, VI, NR, R, V0, V)                \
static inline void NAME(ptrdiff_t kc, const T *restrict a, const T *restrict b, \
                        ptrdiff_t ldp, T *restrict c, ptrdiff_t ldc,          \
                        int accumulate, const T *restrict bias,               \
                        int bias_per_row, int epilogue)                       \
{                                                                             \
    const int VL = NR / 2;                                                    \
    const VT zero = {0};                                                      \
    VT acc[R][V];                                                             \
    _Pragma("GCC unroll 8")                                                   \
    for (int i = 0; i < R; ++i)                                               \
        _Pragma("GCC unroll 8")                                               \
        for (int v = 0; v < V; ++v) acc[i][v] = zero;                         \
    _Pragma("GCC unroll 2")                                                   \
    for (ptrdiff_t p = 0; p < kc; ++p) {                                      \
        VT bv[V];                                                             \
        _Pragma("GCC unroll 8")                                               \
        for (int v = 0; v < V; ++v)                                           \
            bv[v] = *(const VT *)(b + (V0 + v) / 2 * ldp + (V0 + v) % 2 * VL); \
        _Pragma("GCC unroll 8")                                               \
        for (int i = 0; i < R; ++i) {                                         \
            T ai = a[i];                                                      \
            _Pragma("GCC unroll 8")                                           \
            for (int v = 0; v < V; ++v) acc[i][v] += ai * bv[v];              \
        }                                                                     \
        a += CN_MR;                                                           \
        b += NR;                                                              \
    }                                                                         \
    _Pragma("GCC unroll 8")                                                   \
    for (int i = 0; i < R; ++i)                                               \
        _Pragma("GCC unroll 8")                                               \
        for (int v = 0; v < V; ++v) {                                         \
            VT value = acc[i][v];                                             \
            VU *out = (VU *)(c + i * ldc + (V0 + v) * VL);                    \
            if (accumulate) value += *out;                                    \
            if (bias && bias_per_row) value += bias[i];                       \
            else if (bias) value += *(const VU *)(bias + (V0 + v) * VL);      \
            if (epilogue == CN_EPILOGUE_RELU)                                 \
                value = (VT)((VI)value & ~(VI)(value < zero));                \
            *out = value;                                                     \
        }                                                                     \
}

/* Accumulators one pass may hold: three quarters of the vector registers (12 of
 * AVX2's 16, 24 of AVX-512's 32); the rest hold B's vectors and the broadcast.
 * Four rows of one panel, 8 accumulators, ran at about half the full kernel's
 * rate on Zen 3, and conv2d 64->64 spends 4 of its 64 rows there: hence as many
 * panels as the registers allow. */
#define CN_EDGE_ACCUMULATORS (CN_VECTOR_REGISTERS * 3 / 4)
#define CN_FIRST_PASS_VECTORS(R, P) \
    (2 * (P) < CN_EDGE_ACCUMULATORS / (R) ? 2 * (P) : CN_EDGE_ACCUMULATORS / (R))
#define CN_SECOND_PASS_VECTORS(R, P) \
    (2 * (P) > CN_FIRST_PASS_VECTORS(R, P) ? 2 * (P) - CN_FIRST_PASS_VECTORS(R, P) : 1)

/* R rows of P panels: their 2·P vectors in one pass, or in two where the first
 * would not fit the registers (four rows of three panels on AVX2: 3 + 3). */
#define CN_DEFINE_ROWS_KERNEL(NAME, T, VT, VU, VI, NR, R, P, ACTIVATE_TILE)     \
CN_DEFINE_ROWS_PASS(NAME##_pass, T, VT, VU, VI, NR, R, 0,                      \
                    CN_FIRST_PASS_VECTORS(R, P))                              \
CN_DEFINE_ROWS_PASS(NAME##_second_pass, T, VT, VU, VI, NR, R,                  \
                    CN_FIRST_PASS_VECTORS(R, P), CN_SECOND_PASS_VECTORS(R, P)) \
static void NAME(ptrdiff_t kc, const T *restrict a, const T *restrict b,      \
                 ptrdiff_t ldp, T *restrict c, ptrdiff_t ldc, int accumulate, \
                 const T *restrict bias, int bias_per_row, int epilogue,      \
                 T param)                                                     \
{                                                                             \
    _Static_assert(CN_FIRST_PASS_VECTORS(R, P) + CN_SECOND_PASS_VECTORS(R, P) >= 2 * (P), \
                   "two passes cover the panels");                            \
    NAME##_pass(kc, a, b, ldp, c, ldc, accumulate, bias, bias_per_row, epilogue); \
    if (CN_FIRST_PASS_VECTORS(R, P) < 2 * (P))                                \
        NAME##_second_pass(kc, a, b, ldp, c, ldc, accumulate, bias, bias_per_row, \
                           epilogue);                                         \
    if (epilogue > CN_EPILOGUE_RELU)                                          \
        for (int q = 0; q < P; ++q)                                           \
            ACTIVATE_TILE(c + q * NR, ldc, R, epilogue, param);               \
}

/* The activations other than ReLU over R rows of one tile, as over a full tile. */
static inline void cn_activate_rows_float(float *c, ptrdiff_t ldc, int rows, int kind,
                                          float param)
{
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < CN_NR_FLOAT; j += CN_LANES) {
            cn_vf_unaligned *part = (cn_vf_unaligned *)(c + i * ldc + j);
            *part = cn_activate_vector(*part, kind, param);
        }
}

static inline void cn_activate_rows_double(double *c, ptrdiff_t ldc, int rows, int kind,
                                           double param)
{
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < CN_NR_DOUBLE; ++j)
            c[i * ldc + j] = cn_activate_double(c[i * ldc + j], kind, param);
}

/* R rows by P panels, for R = 1 .. MR - 1: P = 4, 2, 2, 3, then 1. */
#define CN_PANELS_FOR_ROWS(R) ((R) == 1 ? 4 : (R) <= 3 ? 2 : (R) == 4 ? 3 : 1)
#define CN_ROWS_ARGUMENTS kc, a, b, ldp, c, ldc, accumulate, bias, bias_per_row, epilogue, param

#define CN_DEFINE_ROWS_KERNELS(T, VT, VU, VI, NR)                                          \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_1x4, T, VT, VU, VI, NR, 1, 4, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_1x1, T, VT, VU, VI, NR, 1, 1, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_2x2, T, VT, VU, VI, NR, 2, 2, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_2x1, T, VT, VU, VI, NR, 2, 1, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_3x2, T, VT, VU, VI, NR, 3, 2, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_3x1, T, VT, VU, VI, NR, 3, 1, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_4x3, T, VT, VU, VI, NR, 4, 3, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_4x1, T, VT, VU, VI, NR, 4, 1, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_5x1, T, VT, VU, VI, NR, 5, 1, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_6x1, T, VT, VU, VI, NR, 6, 1, cn_activate_rows_##T) \
    CN_DEFINE_ROWS_KERNEL(cn_rows_##T##_7x1, T, VT, VU, VI, NR, 7, 1, cn_activate_rows_##T) \
                                                                                            \
/* rows (1 .. MR - 1) of `panels` full panels, ldp elements apart                 */ \
/* (CN_PANELS_FOR_ROWS(rows), or 1).                                                */ \
static void cn_kernel_rows_##T(int rows, int panels, ptrdiff_t kc, const T *a, const T *b,  \
                               ptrdiff_t ldp, T *c, ptrdiff_t ldc, int accumulate,          \
                               const T *bias, int bias_per_row, int epilogue, T param)      \
{                                                                                           \
    switch (rows * 8 + (panels > 1)) {                                                      \
    case 8 + 1: cn_rows_##T##_1x4(CN_ROWS_ARGUMENTS); break;                                \
    case 8: cn_rows_##T##_1x1(CN_ROWS_ARGUMENTS); break;                                    \
    case 16 + 1: cn_rows_##T##_2x2(CN_ROWS_ARGUMENTS); break;                               \
    case 16: cn_rows_##T##_2x1(CN_ROWS_ARGUMENTS); break;                                   \
    case 24 + 1: cn_rows_##T##_3x2(CN_ROWS_ARGUMENTS); break;                               \
    case 24: cn_rows_##T##_3x1(CN_ROWS_ARGUMENTS); break;                                   \
    case 32 + 1: cn_rows_##T##_4x3(CN_ROWS_ARGUMENTS); break;                               \
    case 32: cn_rows_##T##_4x1(CN_ROWS_ARGUMENTS); break;                                   \
    case 40: cn_rows_##T##_5x1(CN_ROWS_ARGUMENTS); break;                                   \
    case 48: cn_rows_##T##_6x1(CN_ROWS_ARGUMENTS); break;                                   \
    default: cn_rows_##T##_7x1(CN_ROWS_ARGUMENTS); break;                                   \
    }                                                                                       \
}

CN_DEFINE_ROWS_KERNELS(float, cn_kf, cn_vf_u, cn_kfi, CN_NR_FLOAT)
CN_DEFINE_ROWS_KERNELS(double, cn_vd, cn_vd_u, cn_vdi, CN_NR_DOUBLE)

/* The finishing steps every path applies to one element of C, in one order. */
#define CN_FINISH(T, value, old, accumulate, bias, j, epilogue, param)        \
    do {                                                                      \
        if (accumulate) value = old + value;                                  \
        if (bias) value = value + bias[j];                                    \
        if (epilogue != CN_EPILOGUE_NONE) value = cn_activate_##T(value, epilogue, param); \
    } while (0)

/* Thin products, where a packed tile would be mostly padding.
 *
 * dot: C[i, j] = <row i of A, row j of Bt> for rows m0..m1, columns n0..n1 (n
 * small: a Linear with few outputs, a matrix times a vector; or m small with B
 * given transposed). Columns go four at a time, sharing each load of A; the
 * last n % 4 one at a time with four partial sums, so that a lone column is
 * not one long chain of dependent FMAs. n0 must be a multiple of 4: then every
 * element sums its k terms in the same order whatever the split of the columns.
 *
 * axpy: rows of C (m small: a vector times a matrix) built as
 * Σ_p A[i, p] · B[p, :], sixteen vectors of columns at a time, summed in
 * registers. Blocks start at multiples of their width, the partial one last.
 */
#define CN_DEFINE_THIN(DOT, AXPY, T, VT, VU)                                  \
static inline T DOT##_sum(VT v)                                               \
{                                                                             \
    T total = 0;                                                              \
    for (size_t lane = 0; lane < sizeof(VT) / sizeof(T); ++lane) total += v[lane]; \
    return total;                                                             \
}                                                                             \
                                                                              \
static inline void DOT##_store(T *out, T value, T old, int accumulate,        \
                               const T *bias, ptrdiff_t j, int epilogue, T param) \
{                                                                             \
    CN_FINISH(T, value, old, accumulate, bias, j, epilogue, param);           \
    *out = value;                                                             \
}                                                                             \
                                                                              \
static void DOT(ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1,       \
                ptrdiff_t k, const T *restrict a, ptrdiff_t lda,              \
                const T *restrict bt, ptrdiff_t ldb,                          \
                T *restrict c, ptrdiff_t rs_c, ptrdiff_t cs_c, int accumulate, \
                const T *restrict bias, int epilogue, T param)                \
{                                                                             \
    const ptrdiff_t VL = sizeof(VT) / sizeof(T);                              \
    const ptrdiff_t n4 = n0 + (n1 - n0) / 4 * 4;                              \
    for (ptrdiff_t i = m0; i < m1; ++i) {                                     \
        const T *row = a + i * lda;                                           \
        T *c_row = c + i * rs_c;                                              \
        for (ptrdiff_t j = n0; j < n4; j += 4) {                              \
            const T *b0 = bt + j * ldb, *b1 = b0 + ldb;                       \
            const T *b2 = b1 + ldb, *b3 = b2 + ldb;                           \
            VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                        \
            ptrdiff_t p = 0;                                                  \
            for (; p + VL <= k; p += VL) {                                    \
                VT x = *(const VU *)(row + p);                                \
                s0 += x * *(const VU *)(b0 + p);                              \
                s1 += x * *(const VU *)(b1 + p);                              \
                s2 += x * *(const VU *)(b2 + p);                              \
                s3 += x * *(const VU *)(b3 + p);                              \
            }                                                                 \
            T t0 = DOT##_sum(s0), t1 = DOT##_sum(s1);                         \
            T t2 = DOT##_sum(s2), t3 = DOT##_sum(s3);                         \
            for (; p < k; ++p) {                                              \
                t0 += row[p] * b0[p]; t1 += row[p] * b1[p];                   \
                t2 += row[p] * b2[p]; t3 += row[p] * b3[p];                   \
            }                                                                 \
            T *out = c_row + j * cs_c;                                        \
            DOT##_store(out, t0, *out, accumulate, bias, j, epilogue, param); \
            DOT##_store(out + cs_c, t1, out[cs_c], accumulate, bias, j + 1, epilogue, param); \
            DOT##_store(out + 2 * cs_c, t2, out[2 * cs_c], accumulate, bias, j + 2, \
                        epilogue, param);                                     \
            DOT##_store(out + 3 * cs_c, t3, out[3 * cs_c], accumulate, bias, j + 3, \
                        epilogue, param);                                     \
        }                                                                     \
        for (ptrdiff_t j = n4; j < n1; ++j) {                                 \
            const T *b0 = bt + j * ldb;                                       \
            VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                        \
            ptrdiff_t p = 0;                                                  \
            for (; p + 4 * VL <= k; p += 4 * VL) {                            \
                s0 += *(const VU *)(row + p) * *(const VU *)(b0 + p);         \
                s1 += *(const VU *)(row + p + VL) * *(const VU *)(b0 + p + VL); \
                s2 += *(const VU *)(row + p + 2 * VL) * *(const VU *)(b0 + p + 2 * VL); \
                s3 += *(const VU *)(row + p + 3 * VL) * *(const VU *)(b0 + p + 3 * VL); \
            }                                                                 \
            for (; p + VL <= k; p += VL)                                      \
                s0 += *(const VU *)(row + p) * *(const VU *)(b0 + p);         \
            T t0 = DOT##_sum((s0 + s1) + (s2 + s3));                          \
            for (; p < k; ++p) t0 += row[p] * b0[p];                          \
            T *out = c_row + j * cs_c;                                        \
            DOT##_store(out, t0, *out, accumulate, bias, j, epilogue, param); \
        }                                                                     \
    }                                                                         \
}                                                                             \
                                                                              \
static void AXPY(ptrdiff_t m, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t k,        \
                 const T *restrict a, ptrdiff_t a_rs, ptrdiff_t a_cs,         \
                 const T *restrict b, ptrdiff_t ldb,                          \
                 T *restrict c, ptrdiff_t ldc, int accumulate,                \
                 const T *restrict bias, int epilogue, T param)               \
{                                                                             \
    const ptrdiff_t VL = sizeof(VT) / sizeof(T), WIDTH = CN_AXPY_VECTORS * VL; \
    VT partial[CN_AXPY_VECTORS];                                              \
    for (ptrdiff_t i = 0; i < m; ++i) {                                       \
        for (ptrdiff_t j0 = n0; j0 < n1; j0 += WIDTH) {                       \
            ptrdiff_t width = n1 - j0 < WIDTH ? n1 - j0 : WIDTH;              \
            T *sums = (T *)partial;                                           \
            if (width == WIDTH) {                                             \
                VT acc[CN_AXPY_VECTORS] = {{0}};                              \
                for (ptrdiff_t p = 0; p < k; ++p) {                           \
                    VT scale = (VT){0} + a[i * a_rs + p * a_cs];              \
                    const VU *from = (const VU *)(b + p * ldb + j0);          \
                    _Pragma("GCC unroll 16")                                  \
                    for (int v = 0; v < CN_AXPY_VECTORS; ++v)                 \
                        acc[v] += scale * from[v];                            \
                }                                                             \
                _Pragma("GCC unroll 16")                                      \
                for (int v = 0; v < CN_AXPY_VECTORS; ++v) partial[v] = acc[v]; \
            } else {                                                          \
                memset(partial, 0, sizeof(partial));                          \
                for (ptrdiff_t p = 0; p < k; ++p) {                           \
                    T scale = a[i * a_rs + p * a_cs];                         \
                    for (ptrdiff_t j = 0; j < width; ++j)                     \
                        sums[j] += scale * b[p * ldb + j0 + j];               \
                }                                                             \
            }                                                                 \
            for (ptrdiff_t j = 0; j < width; ++j) {                           \
                T *out = c + i * ldc + j0 + j;                                \
                DOT##_store(out, sums[j], *out, accumulate, bias, j0 + j, epilogue, \
                            param);                                           \
            }                                                                 \
        }                                                                     \
    }                                                                         \
}

CN_DEFINE_THIN(cn_dot_float, cn_axpy_float, float, cn_kf, cn_vf_u)
CN_DEFINE_THIN(cn_dot_double, cn_axpy_double, double, cn_vd, cn_vd_u)

#endif
