/* corenet GEMM micro-kernels and per-thread packing buffers.
 *
 * A micro-kernel multiplies a packed sliver of A (kc x CN_MR, column of MR
 * values per k) by a packed panel of B (kc x NR, row of NR values per k) and
 * writes or adds the MR x NR tile of C, with an optional epilogue (bias per
 * column, then ReLU) applied in registers on the last k block.
 *
 * The tile is CN_MR rows by two SIMD vectors: 16 accumulators, which leaves
 * room in the 32 AVX-512 registers for the B vectors and the broadcasts. GCC
 * vector extensions keep it portable: without -march=native the 64-byte
 * vectors are split into SSE halves, slower but correct.
 */
#ifndef CORENET_MICROKERNEL_H
#define CORENET_MICROKERNEL_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define CN_MR 8
#define CN_VEC_BYTES 64
#define CN_NR_FLOAT 32   /* two vectors of 16 floats */
#define CN_NR_DOUBLE 16  /* two vectors of 8 doubles */

#define CN_EPILOGUE_NONE 0
#define CN_EPILOGUE_RELU 1

typedef float cn_vf __attribute__((vector_size(CN_VEC_BYTES)));
typedef double cn_vd __attribute__((vector_size(CN_VEC_BYTES)));
typedef int cn_vfi __attribute__((vector_size(CN_VEC_BYTES)));
typedef long long cn_vdi __attribute__((vector_size(CN_VEC_BYTES)));
/* The same vectors at element alignment, for loads and stores into C. */
typedef float cn_vf_u __attribute__((vector_size(CN_VEC_BYTES), aligned(4)));
typedef double cn_vd_u __attribute__((vector_size(CN_VEC_BYTES), aligned(8)));

/* One growing buffer per OS thread for the packed blocks. OpenMP workers live
 * across parallel regions, so a steady-state GEMM allocates nothing. */
static __thread void *cn_tls_buffer = NULL;
static __thread size_t cn_tls_bytes = 0;

static void *cn_thread_buffer(size_t bytes)
{
    if (bytes > cn_tls_bytes) {
        free(cn_tls_buffer);
        bytes = (bytes + 4095) & ~(size_t)4095;
        cn_tls_buffer = aligned_alloc(CN_VEC_BYTES, bytes);
        cn_tls_bytes = cn_tls_buffer ? bytes : 0;
    }
    return cn_tls_buffer;
}

#define CN_ROW(T, i)                                                           \
    {                                                                         \
        T ai = a[i];                                                          \
        c##i##0 += ai * b0;                                                   \
        c##i##1 += ai * b1;                                                   \
    }

#define CN_STORE_ROW(VT, VU, VI, i)                                                     \
    {                                                                         \
        VT lo = c##i##0, hi = c##i##1;                                        \
        VU *row = (VU *)(c + (i) * ldc);                                      \
        if (accumulate) { lo += row[0]; hi += row[1]; }                       \
        if (bias) { lo += bias_lo; hi += bias_hi; }                           \
        if (epilogue == CN_EPILOGUE_RELU) {                                   \
            lo = (VT)((VI)lo & ~(VI)(lo < zero));                             \
            hi = (VT)((VI)hi & ~(VI)(hi < zero));                             \
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
                 const T *restrict bias, int epilogue)                        \
{                                                                             \
    const int VL = NR / 2;                                                    \
    const VT zero = {0};                                                      \
    VT c00 = zero, c01 = zero, c10 = zero, c11 = zero;                        \
    VT c20 = zero, c21 = zero, c30 = zero, c31 = zero;                        \
    VT c40 = zero, c41 = zero, c50 = zero, c51 = zero;                        \
    VT c60 = zero, c61 = zero, c70 = zero, c71 = zero;                        \
    for (ptrdiff_t p = 0; p < kc; ++p) {                                      \
        VT b0 = *(const VT *)b;                                               \
        VT b1 = *(const VT *)(b + VL);                                        \
        CN_ROW(T, 0) CN_ROW(T, 1) CN_ROW(T, 2) CN_ROW(T, 3)                   \
        CN_ROW(T, 4) CN_ROW(T, 5) CN_ROW(T, 6) CN_ROW(T, 7)                   \
        a += CN_MR;                                                           \
        b += NR;                                                              \
    }                                                                         \
    VT bias_lo = zero, bias_hi = zero;                                        \
    if (bias) { bias_lo = *(const VU *)bias; bias_hi = *(const VU *)(bias + VL); } \
    CN_STORE_ROW(VT, VU, VI, 0) CN_STORE_ROW(VT, VU, VI, 1)                   \
    CN_STORE_ROW(VT, VU, VI, 2) CN_STORE_ROW(VT, VU, VI, 3)                   \
    CN_STORE_ROW(VT, VU, VI, 4) CN_STORE_ROW(VT, VU, VI, 5)                   \
    CN_STORE_ROW(VT, VU, VI, 6) CN_STORE_ROW(VT, VU, VI, 7)                   \
}                                                                             \
                                                                              \
static void NAME##_edge(ptrdiff_t kc, const T *restrict a, const T *restrict b, \
                        T *restrict c, ptrdiff_t ldc, int accumulate,         \
                        const T *restrict bias, int epilogue,                 \
                        ptrdiff_t mr, ptrdiff_t nr)                           \
{                                                                             \
    T tile[CN_MR * NR] __attribute__((aligned(CN_VEC_BYTES)));                \
    T bias_tile[NR] __attribute__((aligned(CN_VEC_BYTES)));                   \
    for (ptrdiff_t i = 0; i < mr; ++i)                                        \
        for (ptrdiff_t j = 0; j < nr; ++j)                                    \
            tile[i * NR + j] = accumulate ? c[i * ldc + j] : (T)0;            \
    if (bias) {                                                               \
        for (ptrdiff_t j = 0; j < NR; ++j) bias_tile[j] = j < nr ? bias[j] : (T)0; \
    }                                                                         \
    NAME(kc, a, b, tile, NR, accumulate, bias ? bias_tile : NULL, epilogue);  \
    for (ptrdiff_t i = 0; i < mr; ++i)                                        \
        for (ptrdiff_t j = 0; j < nr; ++j)                                    \
            c[i * ldc + j] = tile[i * NR + j];                                \
}

CN_DEFINE_KERNEL(cn_kernel_float, float, cn_vf, cn_vf_u, cn_vfi, CN_NR_FLOAT)
CN_DEFINE_KERNEL(cn_kernel_double, double, cn_vd, cn_vd_u, cn_vdi, CN_NR_DOUBLE)

#endif
