"""A third-party plugin for the fuzz suite's own test: a numpy layer that has no row in
the layer table (fuzzed from its defaults) and one that needs a config (skipped).

The test registers it in the test process and, through CORENET_FUZZ_PLUGINS, in the
fuzz workers, as an installed plugin would be in both."""
import corenet
from corenet.layer import Layer, check_grad, check_input, require_forward


class Cube(Layer):
    """x³ on any shape."""

    name = "fuzz_cube"
    elementwise = True
    _x = None

    def forward(self, x):
        self._x = check_input(self, x)
        return self._x ** 3

    def backward(self, grad):
        require_forward(self, self._x)
        grad = check_grad(self, grad, self._x.shape, self._x.dtype)
        return 3 * self._x ** 2 * grad


class Needy(Layer):
    """A layer with a required argument and no table row: the fuzz skips it, and says so."""

    name = "fuzz_needy"

    def __init__(self, size):
        super().__init__()
        self.size = size


@corenet.hookimpl
def corenet_layers():
    return [Cube, Needy]
