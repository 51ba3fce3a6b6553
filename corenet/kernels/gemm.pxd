# corenet's GEMM, for any extension to cimport:
#
#     from corenet.kernels.gemm cimport gemm, EPILOGUE_NONE
#
# C (m x n, row stride ldc) = op(A) (m x k) . op(B) (k x n), where op(A) is A
# stored row-major (lda) or, with trans_a, its transpose stored row-major; the
# same for B. With accumulate the product is added to C. On the way out each
# element gets bias[column] added (bias may be NULL) and then the epilogue.
# Returns 0, or -1 when the packing buffers could not be allocated.
from cython cimport floating

cdef enum:  # the codes of vector_math.h
    EPILOGUE_NONE = 0
    EPILOGUE_RELU = 1
    EPILOGUE_SIGMOID = 2
    EPILOGUE_TANH = 3
    EPILOGUE_LEAKY_RELU = 4
    EPILOGUE_ELU = 5

cdef int gemm(bint trans_a, bint trans_b,
              Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
              const floating* a, Py_ssize_t lda,     # IN
              const floating* b, Py_ssize_t ldb,     # IN
              floating* c, Py_ssize_t ldc,           # IN/OUT
              bint accumulate,
              const floating* bias,                  # IN, n values or NULL
              int epilogue, floating epilogue_param) noexcept nogil

# gemm with two more choices: bias_per_row adds bias[row] instead of
# bias[column] (a convolution's output channels are rows), and max_threads caps
# the threads (1 inside a loop that is already parallel). The result is the
# same bitwise for any max_threads.
cdef int gemm_ex(bint trans_a, bint trans_b,
                 Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                 const floating* a, Py_ssize_t lda,     # IN
                 const floating* b, Py_ssize_t ldb,     # IN
                 floating* c, Py_ssize_t ldc,           # IN/OUT
                 bint accumulate,
                 const floating* bias,                  # IN, m or n values, or NULL
                 bint bias_per_row,
                 int epilogue, floating epilogue_param,
                 int max_threads) noexcept nogil

# gemm_ex for a B (k x n) that its producer wrote already packed, as the GEMM
# reads it: panel q (columns q·NR .. q·NR + NR - 1, NR = tile_shape(dtype)[1])
# at b_panels + q·k·NR, row p of it at + p·NR; the columns past n in the last
# panel hold zeros. b_panels starts on a vector's boundary (64 bytes serve every
# build). A is not transposed.
cdef int gemm_b_panels(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating* a, Py_ssize_t lda,     # IN
                       const floating* b_panels,              # IN, ceil(n / NR)·k·NR
                       floating* c, Py_ssize_t ldc,           # IN/OUT
                       bint accumulate,
                       const floating* bias,                  # IN, m or n values, or NULL
                       bint bias_per_row,
                       int epilogue, floating epilogue_param,
                       int max_threads) noexcept nogil

# B (k x n), element (p, j) at b[p·rs + j·cs], packed as gemm_b_panels reads
# it (b_panels: ceil(n / NR)·k·NR elements, on a vector's boundary): the GEMM's
# own packing, for a producer of B that packs a block of it at a time.
cdef void pack_panels(floating* b_panels,                    # OUT
                      const floating* b, Py_ssize_t rs, Py_ssize_t cs,   # IN
                      Py_ssize_t k, Py_ssize_t n) noexcept nogil

# The GEMM's k block for this k (float32, or float64 with double_precision): a
# producer of packed B that writes one k block of rows at a time, while they are
# hot in cache, calls gemm_b_panels once per block (accumulate after the first;
# bias and epilogue with the last) and gets the bits of the single call.
cdef Py_ssize_t gemm_k_block(Py_ssize_t k, bint double_precision) noexcept nogil
