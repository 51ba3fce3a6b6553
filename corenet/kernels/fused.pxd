# The backward of an activation that a GEMM ran in its epilogue (Linear, the
# convolutions): grad · f'(x), recovered from the output y = f(x).
from cython cimport floating

from corenet.kernels.gemm cimport EPILOGUE_LEAKY_RELU, EPILOGUE_RELU


cdef inline floating activation_derivative_times(int kind, floating grad, floating out,
                                                  floating param) noexcept nogil:
    """grad · f'(x) from y = f(x), for the activations corenet.fusion lets fuse:
    those whose f' y gives exactly (leaky_relu: y > 0 exactly when x > 0, its
    slope not being negative). The same expressions as the activation layers'
    backward, so a fused pair is bitwise equal to the two layers."""
    if kind == EPILOGUE_RELU:
        return grad if out > 0 else 0
    if kind == EPILOGUE_LEAKY_RELU:
        return grad if out > 0 else param * grad
    return grad
