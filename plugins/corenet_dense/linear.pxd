# Linear's products, for the layers built on the same affine map (maxout):
# out = x Wᵀ (+ bias, activation epilogue); and its backward, dW += gradᵀ x (or =
# without add_to_weight_grad), dbias += Σ_batch grad, x_grad = grad W (bias_grad and
# x_grad may be None).
cimport numpy as cnp

cdef int linear_forward(cnp.ndarray x, cnp.ndarray weight, object bias, cnp.ndarray out,
                        int epilogue, double param) except -1

cdef int linear_backward(cnp.ndarray grad, cnp.ndarray x, cnp.ndarray weight,
                         cnp.ndarray weight_grad, bint add_to_weight_grad, object bias_grad,
                         object x_grad) except -1
