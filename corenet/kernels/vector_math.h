/* float32 activations over SIMD vectors (GCC vector extensions as wide as the
 * registers: AVX-512, AVX2, or SSE without native tuning).
 *
 * exp reduces x = n·ln2 + r with |r| <= ln2/2 as Cephes' expf does, takes a
 * polynomial for e^r − 1, then 2^n from the exponent bits (about 1 ulp).
 * expm1 is built on e^r − 1, which keeps its relative precision near zero,
 * where e^x − 1 would lose it; tanh is a rational function. A tail shorter than a vector is
 * computed in a zero-padded vector by the same instructions, so every element
 * gets the same result wherever it lies.
 *
 * The derivatives of sigmoid, tanh and elu are computed from the output y, as
 * a fused GEMM epilogue (which keeps only y) must: y(1 − y), 1 − y² and
 * y + alpha, the same expressions as fused.pxd, so fused and unfused are
 * bitwise equal. Where f saturates they lose relative precision and are 0 once
 * y rounds to ±1 or −alpha (README, Numerics).
 */
#ifndef CORENET_VECTOR_MATH_H
#define CORENET_VECTOR_MATH_H

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <string.h>
#ifdef __SSE__
#include <immintrin.h>
#endif

/* The widest registers the build targets: wider vectors than the registers
 * would be split by the compiler, and GCC splits comparisons and selects of
 * 64-byte vectors on AVX2 into scalar code (relu forward was 20x slower). */
#if defined(__AVX512F__)
#define CN_VECTOR_BYTES 64
#elif defined(__AVX__)
#define CN_VECTOR_BYTES 32
#else
#define CN_VECTOR_BYTES 16
#endif
#define CN_LANES (CN_VECTOR_BYTES / 4)

typedef float cn_vf __attribute__((vector_size(CN_VECTOR_BYTES)));
typedef int cn_vi __attribute__((vector_size(CN_VECTOR_BYTES)));
typedef float cn_vf_unaligned __attribute__((vector_size(CN_VECTOR_BYTES), aligned(4)));

static inline cn_vf cn_splat(float value) { return (cn_vf){0} + value; }

/* mask ? a : b, for a mask from a vector comparison (all bits set or clear). */
static inline cn_vf cn_select(cn_vi mask, cn_vf a, cn_vf b)
{
    return (cn_vf)((mask & (cn_vi)a) | (~mask & (cn_vi)b));
}

/* a where x is negative (its sign bit set, −0 and −NaN too), else b: one
 * blendv on x86, which reads the sign bits, where a comparison would add one. */
static inline cn_vf cn_select_negative(cn_vf x, cn_vf a, cn_vf b)
{
#if defined(__AVX__) && !defined(__AVX512F__)
    return (cn_vf)_mm256_blendv_ps((__m256)b, (__m256)a, (__m256)x);
#elif defined(__SSE4_1__) && CN_VECTOR_BYTES == 16
    return (cn_vf)_mm_blendv_ps((__m128)b, (__m128)a, (__m128)x);
#else
    return cn_select((cn_vi)x >> 31, a, b);
#endif
}

/* max(x, lo) and min(x, hi) with a NaN x staying NaN, one instruction each on
 * x86: maxps/minps return their second operand when either is NaN, hence the
 * bound first. */
static inline cn_vf cn_at_least(cn_vf x, float lo)
{
#if defined(__AVX512F__)
    return (cn_vf)_mm512_max_ps((__m512)cn_splat(lo), (__m512)x);
#elif defined(__AVX__)
    return (cn_vf)_mm256_max_ps((__m256)cn_splat(lo), (__m256)x);
#elif defined(__SSE__)
    return (cn_vf)_mm_max_ps((__m128)cn_splat(lo), (__m128)x);
#else
    return cn_select(x < cn_splat(lo), cn_splat(lo), x);
#endif
}

static inline cn_vf cn_at_most(cn_vf x, float hi)
{
#if defined(__AVX512F__)
    return (cn_vf)_mm512_min_ps((__m512)cn_splat(hi), (__m512)x);
#elif defined(__AVX__)
    return (cn_vf)_mm256_min_ps((__m256)cn_splat(hi), (__m256)x);
#elif defined(__SSE__)
    return (cn_vf)_mm_min_ps((__m128)cn_splat(hi), (__m128)x);
#else
    return cn_select(x > cn_splat(hi), cn_splat(hi), x);
#endif
}

static inline cn_vf cn_clamp(cn_vf x, float lo, float hi)
{
    return cn_at_most(cn_at_least(x, lo), hi);
}

/* a / b. With AVX-512, a times 1 / b from a 14-bit hardware estimate refined by
 * one Newton step (error about 2^-28, under one ulp) costs a fraction of a
 * vector division. */
static inline cn_vf cn_divide(cn_vf a, cn_vf b)
{
#ifdef __AVX512F__
    cn_vf r = (cn_vf)_mm512_rcp14_ps((__m512)b);
    return a * (r * (2.0f - b * r));
#else
    return a / b;
#endif
}

/* x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two parts, as Cephes does):
 * sets *n and returns e^r − 1 as r + r²·p(r), which keeps its relative
 * precision however small r is. p is a degree-4 relative-error fit made for
 * corenet (fit_approximations.py): 1.3·10⁻⁸, below float32's ulp. The caller
 * bounds x so that n fits the exponent arithmetic it does. */
static inline cn_vf cn_exp_reduced(cn_vf x, cn_vi *n)
{
    const cn_vf shifter = cn_splat(12582912.0f); /* 1.5·2^23: adding it rounds to an integer */
    cn_vf t = x * 1.44269504088896341f + shifter;
    cn_vf n_float = t - shifter;
    cn_vf r = x - n_float * 0.693359375f + n_float * 2.12194440e-4f;
    cn_vf p = cn_splat(0.0013882486652569432f);
    p = p * r + 0.008366503326091375f;
    p = p * r + 0.04166719974715015f;
    p = p * r + 0.16666543751384988f;
    p = p * r + 0.4999999815613703f;
    *n = (cn_vi)t - 0x4B400000;
    return p * r * r + r;
}

/* 2^n from its exponent bits, for -126 <= n <= 127. */
static inline cn_vf cn_power_of_two(cn_vi n) { return (cn_vf)((n + 127) << 23); }

/* e^−|x|, all that sigmoid needs:
 * in (0, 1], so it never overflows, and as IEEE expf has it below, subnormal
 * past |x| = 87.34 and 0 past 103.98 (NaN for NaN). 2^n is applied as
 * 2^(n+64) · 2^−64: the first product is exact, the second rounds once, into
 * the subnormals where the true value lies (and changes nothing where e^−|x|
 * is normal). A bound at −110 keeps 2^(n+64) a normal float. */
static inline cn_vf cn_exp_minus_abs(cn_vf x)
{
    cn_vf minus_abs = (cn_vf)((cn_vi)x | INT_MIN); /* the sign bit set */
    cn_vi n;
    cn_vf e_r = cn_exp_reduced(cn_at_least(minus_abs, -110.0f), &n) + 1.0f;
    return e_r * cn_power_of_two(n + 64) * 0x1p-64f;
}

/* e^x − 1 = 2^n (e^r − 1) + (2^n − 1): exact in the last term, so no
 * cancellation near zero (n = 0 there). Below −87 it is −1 in float32; elu,
 * its only user, takes it for x <= 0 only (above 88 it would stop growing). */
static inline cn_vf cn_expm1(cn_vf x)
{
    cn_vi n;
    cn_vf e_minus_1 = cn_exp_reduced(cn_clamp(x, -87.0f, 88.0f), &n);
    cn_vf two_n = cn_power_of_two(n);
    return two_n * e_minus_1 + (two_n - 1.0f);
}

/* Whether any lane of a comparison mask is set. */
static inline int cn_any(cn_vi mask)
{
#if defined(__AVX512F__)
    return _mm512_test_epi32_mask((__m512i)mask, (__m512i)mask) != 0;
#elif defined(__AVX__)
    return _mm256_movemask_ps((__m256)mask) != 0;
#elif defined(__SSE__)
    return _mm_movemask_ps((__m128)mask) != 0;
#else
    for (int lane = 0; lane < CN_LANES; lane++)
        if (mask[lane]) return 1;
    return 0;
#endif
}

/* |x| at and past which tanh takes the exp form below rather than P/Q. */
#define CN_TANH_EXP_FROM 3.0f

/* tanh x = ±(1 − 2e / (1 + e)) with e = e^−2|x|, for |x| >= CN_TANH_EXP_FROM:
 * the quotient is below 5·10⁻³ there, so its own error hardly reaches y, which
 * rounds once, near correctly (within 0.51 ulp), and reaches 1 where the true
 * tanh rounds to 1 (x = 9.01), as PyTorch's. P/Q's few ulps would matter
 * there: tanh' = 1 − y² is taken from y (fused.pxd), and it gave 2.4·10⁻⁷ at
 * x = 8.75 for 1.2·10⁻⁷ and flickered to 0 from x = 8.0. */
static inline cn_vf cn_tanh_saturating(cn_vf x)
{
    cn_vf e = cn_exp_minus_abs(2.0f * x);
    cn_vf magnitude = 1.0f - cn_divide(2.0f * e, 1.0f + e);
    return (cn_vf)((cn_vi)magnitude | ((cn_vi)x & INT_MIN)); /* x's sign */
}

/* tanh x = x · P(x²) / Q(x²) on |x| < CN_TANH_EXP_FROM, within 4.3 ulps. P
 * (degree 5) and Q (degree 3) are a relative-error fit made for corenet
 * (fit_approximations.py; relative error 6·10⁻⁸ in float64) on |x| <= 9,
 * cheaper than any exp-based form; the exp form runs only for vectors that
 * hold a larger |x|. Past 9.5 both give ±1, as tanh rounds to ±1 from 9.01. */
static inline cn_vf cn_tanh(cn_vf x)
{
    x = cn_clamp(x, -9.5f, 9.5f); /* where P/Q passes 1: the final clamp makes it exactly 1 */
    cn_vf z = x * x;
    cn_vf p = cn_splat(1.825510686781236e-11f);
    p = p * z - 1.2780308602933027e-08f;
    p = p * z + 9.267348637662737e-06f;
    p = p * z + 0.0029207514211214212f;
    p = p * z + 0.12919217770598043f;
    p = p * z + 0.999999941114609f;
    cn_vf q = cn_splat(0.00022809891301640256f);
    q = q * z + 0.023763123057848425f;
    q = q * z + 0.46252501590802203f;
    q = q * z + 1.0f;
    cn_vf y = cn_clamp(cn_divide(x * p, q), -1.0f, 1.0f); /* never past ±1 by rounding */
    cn_vi far = z >= CN_TANH_EXP_FROM * CN_TANH_EXP_FROM;
    if (cn_any(far))
        y = cn_select(far, cn_tanh_saturating(x), y);
    return y;
}

static const cn_vf cn_zero = {0};

/* 1 / (1 + e) for x >= 0, e / (1 + e) below, with e = e^−|x|: no overflow, and
 * below x = −87.34 the subnormal e^x (0 below −103.98), where 1 / (1 + e^−x)
 * would overflow to 1/inf = 0 (PyTorch's and numpy's float32 give 0 from −88.73). */
static inline cn_vf cn_sigmoid(cn_vf x)
{
    cn_vf e = cn_exp_minus_abs(x);
    return cn_divide(cn_select_negative(x, e, cn_splat(1.0f)), 1.0f + e);
}

/* The activations a GEMM epilogue can apply (see gemm.pxd), one code each. */
#define CN_EPILOGUE_NONE 0
#define CN_EPILOGUE_RELU 1
#define CN_EPILOGUE_SIGMOID 2
#define CN_EPILOGUE_TANH 3
#define CN_EPILOGUE_LEAKY_RELU 4
#define CN_EPILOGUE_ELU 5

/* f(x) for a vector of floats: the same instructions as the activation layers. */
static inline cn_vf cn_activate_vector(cn_vf x, int kind, float param)
{
    switch (kind) {
    case CN_EPILOGUE_RELU: return cn_select(x < cn_zero, cn_zero, x);
    case CN_EPILOGUE_SIGMOID: return cn_sigmoid(x);
    case CN_EPILOGUE_TANH: return cn_tanh(x);
    case CN_EPILOGUE_LEAKY_RELU: return cn_select(x > cn_zero, x, x * param);
    case CN_EPILOGUE_ELU: return cn_select(x > cn_zero, x, cn_expm1(x) * param);
    default: return x;
    }
}

/* One float through the vector code, so that it rounds exactly as in a vector. */
static inline float cn_activate_float(float value, int kind, float param)
{
    cn_vf x = {0};
    x[0] = value;
    return cn_activate_vector(x, kind, param)[0];
}

/* f(x) for one double, with libm, as the float64 activation layers compute it. */
static inline double cn_activate_double(double x, int kind, double param)
{
    double e;
    switch (kind) {
    case CN_EPILOGUE_RELU: return x < 0 ? 0 : x;
    case CN_EPILOGUE_SIGMOID:
        if (x >= 0) return 1 / (1 + exp(-x));
        e = exp(x);
        return e / (1 + e);
    case CN_EPILOGUE_TANH: return tanh(x);
    case CN_EPILOGUE_LEAKY_RELU: return x > 0 ? x : param * x;
    case CN_EPILOGUE_ELU: return x > 0 ? x : param * expm1(x);
    default: return x;
    }
}

/* y = f(x) over n floats; `param` is the slope or alpha where f has one. */
#define CN_DEFINE_FORWARD(NAME, EXPRESSION)                                    \
static inline cn_vf NAME##_vector(cn_vf x, float param)                        \
{                                                                              \
    (void)param;                                                               \
    return EXPRESSION;                                                         \
}                                                                              \
static void NAME(const float *restrict x, float *restrict y, ptrdiff_t n,      \
                 float param)                                                  \
{                                                                              \
    ptrdiff_t i = 0;                                                           \
    for (; i + CN_LANES <= n; i += CN_LANES)                                   \
        *(cn_vf_unaligned *)(y + i) =                                          \
            NAME##_vector(*(const cn_vf_unaligned *)(x + i), param);           \
    if (i < n) {                                                               \
        cn_vf v = {0};                                                         \
        memcpy(&v, x + i, (n - i) * sizeof(float));                            \
        v = NAME##_vector(v, param);                                           \
        memcpy(y + i, &v, (n - i) * sizeof(float));                            \
    }                                                                          \
}

/* dx = f'(x, y) · g over n floats. */
#define CN_DEFINE_BACKWARD(NAME, EXPRESSION)                                   \
static inline cn_vf NAME##_vector(cn_vf x, cn_vf y, cn_vf g, float param)      \
{                                                                              \
    (void)param; (void)x; (void)y;                                             \
    return EXPRESSION;                                                         \
}                                                                              \
static void NAME(const float *restrict x, const float *restrict y,             \
                 const float *restrict g, float *restrict dx, ptrdiff_t n,     \
                 float param)                                                  \
{                                                                              \
    ptrdiff_t i = 0;                                                           \
    for (; i + CN_LANES <= n; i += CN_LANES)                                   \
        *(cn_vf_unaligned *)(dx + i) = NAME##_vector(                          \
            *(const cn_vf_unaligned *)(x + i), *(const cn_vf_unaligned *)(y + i), \
            *(const cn_vf_unaligned *)(g + i), param);                         \
    if (i < n) {                                                               \
        cn_vf vx = {0}, vy = {0}, vg = {0};                                    \
        memcpy(&vx, x + i, (n - i) * sizeof(float));                           \
        memcpy(&vy, y + i, (n - i) * sizeof(float));                           \
        memcpy(&vg, g + i, (n - i) * sizeof(float));                           \
        vx = NAME##_vector(vx, vy, vg, param);                                 \
        memcpy(dx + i, &vx, (n - i) * sizeof(float));                          \
    }                                                                          \
}

/* tanh' = 1 − y² from y, for scalars and vectors alike. With FMA it rounds once (and
 * equals PyTorch's); without, y² would round before the subtraction and near |y| = 1
 * lose most of its bits (1024 ulps): (1 − y)(1 + y) there, whose 1 − y is exact. */
#ifdef __FMA__
#define CN_ONE_MINUS_SQUARE(y, one) ((one) - (y) * (y))
#else
#define CN_ONE_MINUS_SQUARE(y, one) (((one) - (y)) * ((one) + (y)))
#endif
static inline float cn_tanh_slope_float(float y) { return CN_ONE_MINUS_SQUARE(y, 1.0f); }
static inline double cn_tanh_slope_double(double y) { return CN_ONE_MINUS_SQUARE(y, 1.0); }

CN_DEFINE_FORWARD(cn_sigmoid_forward, cn_activate_vector(x, CN_EPILOGUE_SIGMOID, param))
CN_DEFINE_FORWARD(cn_tanh_forward, cn_activate_vector(x, CN_EPILOGUE_TANH, param))
CN_DEFINE_FORWARD(cn_relu_forward, cn_activate_vector(x, CN_EPILOGUE_RELU, param))
CN_DEFINE_FORWARD(cn_leaky_relu_forward, cn_activate_vector(x, CN_EPILOGUE_LEAKY_RELU, param))
CN_DEFINE_FORWARD(cn_elu_forward, cn_activate_vector(x, CN_EPILOGUE_ELU, param))

CN_DEFINE_BACKWARD(cn_sigmoid_backward, g * y * (1.0f - y))
CN_DEFINE_BACKWARD(cn_tanh_backward, g * CN_ONE_MINUS_SQUARE(y, 1.0f))
/* g where y > 0, else 0. With AVX-512 the empty asm keeps g a plain full load:
 * folded into a zero-masked load instead, the loop runs about 10% slower. (A
 * 64-byte vector fits no single register below AVX-512.) */
static inline cn_vf cn_relu_gradient(cn_vf y, cn_vf g)
{
#ifdef __AVX512F__
    __asm__("" : "+v"(g));
#endif
    return cn_select(y > cn_zero, g, cn_zero);
}

CN_DEFINE_BACKWARD(cn_relu_backward, cn_relu_gradient(y, g))
CN_DEFINE_BACKWARD(cn_leaky_relu_backward, cn_select(x > cn_zero, g, g * param))
CN_DEFINE_BACKWARD(cn_elu_backward, cn_select(x > cn_zero, g, g * (y + param)))

#endif
