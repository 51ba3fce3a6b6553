/* The direct convolution's weight gradient (direct.pyx): dot products of
 * dL/dy, laid out on the padded grid with zeros past each row, with shifted
 * runs of the padded input, read in place.
 *
 * One call adds n_samples samples into the running sums of two output
 * channels by four kernel offsets: acc[2·t + i] += g_i[q] · x_t[q] over the
 * grid's positions q, a 32-byte vector at a time, each lane its own sum (the
 * lanes are added in order at the very end, so the sums have one order for any
 * thread count). 32 bytes on every CPU: rows of a LeNet-sized grid are a few
 * vectors long. x is and-ed with `valid` (all ones at output positions, zero
 * past each row): g is zero there, but an inf in x would make 0 · inf a NaN.
 */
#ifndef CORENET_DIRECT_H
#define CORENET_DIRECT_H

#include <stddef.h>

typedef float cn_dw_vf __attribute__((vector_size(32)));
typedef int cn_dw_vfi __attribute__((vector_size(32)));
typedef float cn_dw_vf_u __attribute__((vector_size(32), aligned(4)));
typedef double cn_dw_vd __attribute__((vector_size(32)));
typedef long long cn_dw_vdi __attribute__((vector_size(32)));
typedef double cn_dw_vd_u __attribute__((vector_size(32), aligned(8)));

#define CN_DW_ROWS 2
#define CN_DW_OFFSETS 4

#define CN_DEFINE_DIRECT_DW(NAME, T, VT, VU, VI)                                 \
static void NAME(const T *g, ptrdiff_t g_row, ptrdiff_t g_sample,                \
                 const T *x, const ptrdiff_t offset[CN_DW_OFFSETS],              \
                 ptrdiff_t x_sample, ptrdiff_t n_samples, ptrdiff_t positions,   \
                 const T *valid, void *sums)                                     \
{                                                                                \
    enum { VL = sizeof(VT) / sizeof(T) };                                        \
    VT *acc = (VT *)sums;                                                        \
    const ptrdiff_t o0 = offset[0], o1 = offset[1], o2 = offset[2], o3 = offset[3]; \
    VT s00 = acc[0], s01 = acc[1], s10 = acc[2], s11 = acc[3];                   \
    VT s20 = acc[4], s21 = acc[5], s30 = acc[6], s31 = acc[7];                   \
    for (ptrdiff_t s = 0; s < n_samples; ++s) {                                  \
        const T *g0 = g + s * g_sample, *g1 = g0 + g_row, *xs = x + s * x_sample; \
        for (ptrdiff_t q = 0; q < positions; q += VL) {                          \
            VT a = *(const VT *)(g0 + q), b = *(const VT *)(g1 + q), v;          \
            VI on = *(const VI *)(valid + q);                                    \
            v = (VT)((VI) * (const VU *)(xs + o0 + q) & on); s00 += a * v; s01 += b * v; \
            v = (VT)((VI) * (const VU *)(xs + o1 + q) & on); s10 += a * v; s11 += b * v; \
            v = (VT)((VI) * (const VU *)(xs + o2 + q) & on); s20 += a * v; s21 += b * v; \
            v = (VT)((VI) * (const VU *)(xs + o3 + q) & on); s30 += a * v; s31 += b * v; \
        }                                                                        \
    }                                                                            \
    acc[0] = s00; acc[1] = s01; acc[2] = s10; acc[3] = s11;                      \
    acc[4] = s20; acc[5] = s21; acc[6] = s30; acc[7] = s31;                      \
}                                                                                \
                                                                                 \
/* The lanes of one running sum, added in order. */                              \
static T NAME##_total(const void *sum)                                           \
{                                                                                \
    enum { VL = sizeof(VT) / sizeof(T) };                                        \
    const T *lanes = (const T *)sum;                                             \
    T total = 0;                                                                 \
    for (int lane = 0; lane < VL; ++lane) total += lanes[lane];                  \
    return total;                                                                \
}

CN_DEFINE_DIRECT_DW(cn_direct_dw_float, float, cn_dw_vf, cn_dw_vf_u, cn_dw_vfi)
CN_DEFINE_DIRECT_DW(cn_direct_dw_double, double, cn_dw_vd, cn_dw_vd_u, cn_dw_vdi)

#endif
