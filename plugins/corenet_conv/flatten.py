"""Flatten: (batch, *shape) -> (batch, prod(shape)), the bridge from convolutions to
Linear. Both directions are views of C-contiguous arrays: nothing is copied."""
import math

from corenet.errors import ShapeError
from corenet.layer import Layer, check_grad, check_input, require_forward


class Flatten(Layer):
    """As torch.nn.Flatten(): every axis after the batch becomes one.

    >>> import corenet.layers as L, numpy as np
    >>> L.Flatten().forward(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 48)
    """

    name = "flatten"

    def __init__(self):
        super().__init__()
        self._x_shape = None

    def output_shape(self, *input_shapes):
        if len(input_shapes) != 1 or not input_shapes[0]:
            raise ShapeError(f"{self.name}: expected one input with a per-sample shape, "
                             f"got {', '.join(map(str, input_shapes))}")
        return (math.prod(input_shapes[0]),)

    def forward(self, x):
        x = check_input(self, x, min_ndim=2)
        self._x_shape, self._dtype = x.shape, x.dtype
        # Not reshape(N, -1): numpy cannot infer -1 for a (N, 0, ...) input.
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, grad):
        require_forward(self, self._x_shape)
        shape = self._x_shape
        grad = check_grad(self, grad, (shape[0], math.prod(shape[1:])), self._dtype)
        return grad.reshape(shape) if self.needs_input_grad else None
