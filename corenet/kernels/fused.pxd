# The backward of an activation that a GEMM ran in its epilogue (Linear, the
# convolutions): grad · f'(x), recovered from the output y = f(x). Where sigmoid,
# tanh and elu saturate, y(1 − y), 1 − y² and y + alpha keep an absolute error of
# about an ulp of 1 and reach 0 with y at ±1 or −alpha (README, Numerics).
from cython cimport floating

from corenet.kernels.gemm cimport (EPILOGUE_ELU, EPILOGUE_LEAKY_RELU, EPILOGUE_RELU,
                                   EPILOGUE_SIGMOID, EPILOGUE_TANH)


cdef extern from "vector_math.h" nogil:
    # 1 − y², as the float32 activation kernels compute it (with or without FMA)
    float cn_tanh_slope_float(float y)
    double cn_tanh_slope_double(double y)


cdef inline floating activation_derivative_times(int kind, floating grad, floating out,
                                                  floating param) noexcept nogil:
    """grad · f'(x) from y = f(x): each fusable f has its derivative as a function
    of y (leaky_relu and elu: y > 0 exactly when x > 0, since their slope and alpha
    are not negative). The same expressions as the activation layers' backward, so
    a fused pair is bitwise equal to the two layers."""
    cdef floating one = 1  # a float32 one: the literal 1 would compute in double
    if kind == EPILOGUE_RELU:
        return grad if out > 0 else 0
    if kind == EPILOGUE_SIGMOID:
        return grad * out * (one - out)
    if kind == EPILOGUE_TANH:
        if floating is float:
            return grad * cn_tanh_slope_float(out)
        return grad * cn_tanh_slope_double(out)
    if kind == EPILOGUE_LEAKY_RELU:
        return grad if out > 0 else param * grad
    if kind == EPILOGUE_ELU:
        return grad if out > 0 else grad * (out + param)
    return grad


cdef extern from * nogil:
    """
    /* dst = g where y > 0, else 0: the fused ReLU's backward over a row, the
     * common case, as a loop the compiler vectorizes (restrict: the three arrays
     * never overlap); activation_derivative_times above, element by element, is
     * not vectorized. */
    #define CN_RELU_GRADIENT(NAME, T)                                            \
    static void NAME(T *restrict dst, const T *restrict g, const T *restrict y,  \
                     ptrdiff_t n)                                                \
    {                                                                            \
        for (ptrdiff_t i = 0; i < n; ++i) {                                      \
            /* g[i] read whatever y[i]: a select, not a masked load (slow on AMD) */ \
            T gi = g[i];                                                         \
            dst[i] = y[i] > 0 ? gi : (T)0;                                       \
        }                                                                        \
    }
    CN_RELU_GRADIENT(cn_relu_gradient_float, float)
    CN_RELU_GRADIENT(cn_relu_gradient_double, double)

    /* sums[j] += row[j]: a bias gradient's column sums, one row at a time, as a
     * loop the compiler vectorizes (each sum still adds the rows in order); float32
     * rows into double sums. */
    #define CN_ADD_ROW(NAME, T, ACC)                                             \
    static void NAME(ACC *restrict sums, const T *restrict row, ptrdiff_t n)     \
    {                                                                            \
        for (ptrdiff_t j = 0; j < n; ++j) sums[j] += row[j];                     \
    }
    CN_ADD_ROW(cn_add_row_double, double, double)
    CN_ADD_ROW(cn_add_row_float_in_double, float, double)

    /* Σ x[0 .. n): eight partial sums of type ACC (lane l adds x[j + l] for j = 0,
     * 8, ...), added in lane order, then the last n % 8 values: a fixed order, in one
     * vector of eight lanes. */
    #define CN_ROW_SUM(NAME, T, ACC)                                             \
    static ACC NAME(const T *restrict x, ptrdiff_t n)                            \
    {                                                                            \
        typedef ACC lanes __attribute__((vector_size(8 * sizeof(ACC))));         \
        typedef T lanes_u __attribute__((vector_size(8 * sizeof(T)), aligned(sizeof(T)))); \
        lanes partial = {0};                                                     \
        ptrdiff_t j = 0;                                                         \
        for (; j + 8 <= n; j += 8)                                               \
            partial += __builtin_convertvector(*(const lanes_u *)(x + j), lanes); \
        ACC total = 0;                                                           \
        for (int lane = 0; lane < 8; ++lane) total += partial[lane];             \
        for (; j < n; ++j) total += x[j];                                        \
        return total;                                                            \
    }
    CN_ROW_SUM(cn_row_sum_float, float, float)
    CN_ROW_SUM(cn_row_sum_double, double, double)
    /* float32 values summed in double: for sums over many values (a float32 running
     * sum over a 1024 x 1024 plane was 4e-4 off) */
    CN_ROW_SUM(cn_row_sum_float_in_double, float, double)
    """
    void cn_relu_gradient_float(float* dst, const float* g, const float* y,
                                ptrdiff_t n)
    void cn_relu_gradient_double(double* dst, const double* g, const double* y,
                                 ptrdiff_t n)
    void cn_add_row_double(double* sums, const double* row, ptrdiff_t n)
    void cn_add_row_float_in_double(double* sums, const float* row, ptrdiff_t n)
    float cn_row_sum_float(const float* x, ptrdiff_t n)
    double cn_row_sum_double(const double* x, ptrdiff_t n)
    double cn_row_sum_float_in_double(const float* x, ptrdiff_t n)
