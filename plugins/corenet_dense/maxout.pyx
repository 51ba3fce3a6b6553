"""Maxout, as in the lecture: each output is the largest of ``pieces`` affine maps of x,
h[n, o] = max_k z[n, o, k] with z[n, o, k] = x[n] · W[o, k] + b[o, k].

The weight is (out_features, pieces, in_features) and the bias (out_features, pieces):
viewed as (out_features·pieces, in_features) the weight is a Linear's, so z is one
GEMM with the bias in its epilogue, with the pieces of an output side by side.
Backward routes dL/dh[n, o] to the piece that won (the first of equal ones, as
argmax), then takes Linear's backward: dL/dx, dL/dW and dL/db of z.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from corenet.kernels.gemm cimport EPILOGUE_NONE
from corenet.kernels.threads cimport threads_for
from corenet_dense.linear cimport linear_backward, linear_forward

from corenet import init as initializers
from corenet.errors import ShapeError
from corenet.memory import check_parameters
from corenet.layer import (Layer, Parameter, SetOnce, as_float_dtype, check_grad,
                           check_input, check_lengths, check_sizes, parameter_arrays,
                           require_forward)

cnp.import_array()

cdef enum:
    GRAIN = 1 << 14  # pieces below which one thread runs


cdef void max_over_pieces(const floating* z, floating* out, int* chosen, Py_ssize_t units,
                          Py_ssize_t pieces) noexcept nogil:
    """out[u] = max_k z[u, k] and chosen[u] its k, the first of equal maxima; a NaN
    piece wins over numbers (the first NaN), so NaN propagates as in np.max."""
    cdef Py_ssize_t unit, k
    cdef floating best, value
    cdef int best_piece
    for unit in prange(units, num_threads=threads_for(units * pieces, GRAIN), schedule='static'):
        best = z[unit * pieces]
        best_piece = 0
        for k in range(1, pieces):
            value = z[unit * pieces + k]
            if best == best and (value > best or value != value):
                best = value
                best_piece = <int>k
        out[unit] = best
        chosen[unit] = best_piece


cdef void route_to_chosen(const floating* grad, const int* chosen, floating* z_grad,
                          Py_ssize_t units, Py_ssize_t pieces) noexcept nogil:
    """z_grad[u, k] = grad[u] for the chosen piece k, 0 for the others."""
    cdef Py_ssize_t unit, k
    for unit in prange(units, num_threads=threads_for(units * pieces, GRAIN), schedule='static'):
        for k in range(pieces):
            z_grad[unit * pieces + k] = grad[unit] if k == chosen[unit] else 0


def maxout_pieces(const floating[::1] z, floating[::1] out, int[::1] chosen,
                  Py_ssize_t pieces):
    """Python-callable max_over_pieces (z flat of units × pieces)."""
    if not (pieces >= 1 and chosen.shape[0] == out.shape[0] and z.shape[0] % pieces == 0
            and z.shape[0] // pieces == out.shape[0]):  # in C: this runs at every step
        check_sizes("maxout_pieces", 1, pieces=pieces)
        check_lengths("maxout_pieces", z=(z.shape[0], (<object>out.shape[0]) * pieces),
                      chosen=(chosen.shape[0], out.shape[0]))
    if out.shape[0] == 0:
        return
    with nogil:
        max_over_pieces(&z[0], &out[0], &chosen[0], out.shape[0], pieces)


def maxout_route(const floating[::1] grad, const int[::1] chosen, floating[::1] z_grad,
                 Py_ssize_t pieces):
    """Python-callable route_to_chosen (chosen's values are only compared, never
    used as indices)."""
    if not (pieces >= 1 and chosen.shape[0] == grad.shape[0]
            and z_grad.shape[0] % pieces == 0 and z_grad.shape[0] // pieces == grad.shape[0]):
        check_sizes("maxout_route", 1, pieces=pieces)
        check_lengths("maxout_route", chosen=(chosen.shape[0], grad.shape[0]),
                      z_grad=(z_grad.shape[0], (<object>grad.shape[0]) * pieces))
    if grad.shape[0] == 0:
        return
    with nogil:
        route_to_chosen(&grad[0], &chosen[0], &z_grad[0], grad.shape[0], pieces)


def _positive_sizes(**sizes):
    for label, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"maxout: {label} must be a positive integer, got {size!r}")


class Maxout(SetOnce, Layer):
    """h = max over ``pieces`` affine maps of x, for x of shape (batch, in_features).

    Weight (out_features, pieces, in_features), bias (out_features, pieces). They
    start as Linear(in_features, out_features·pieces) would (``init`` and
    ``bias_init`` as Linear's, fan_in = in_features, fan_out = out_features·pieces).

    >>> import corenet.layers as L, numpy as np
    >>> layer = L.Maxout(3, 2, pieces=4)
    >>> layer.weight.value.shape, layer.forward(np.ones((5, 3), np.float32)).shape
    ((2, 4, 3), (5, 2))
    """

    name = "maxout"

    # The weight's shape and the routing of the pieces follow from these.
    set_once = frozenset({"in_features", "out_features", "pieces", "weight_shape",
                          "input_shape"})

    def __init__(self, in_features, out_features, pieces, bias=True, dtype="float32",
                 init="pytorch_uniform", bias_init="pytorch_uniform"):
        super().__init__()
        check_parameters(self.name, self.parameter_shapes(in_features, out_features, pieces,
                                                          bias, dtype, init, bias_init))
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.pieces = int(pieces)
        self.dtype = as_float_dtype(dtype, self.name)
        self.init = initializers.get(init, self.name)
        self.bias_init = initializers.get_bias(bias_init, self.name)
        fans = (self.in_features, self.out_features * self.pieces)
        self.weight_shape = (self.out_features, self.pieces, self.in_features)
        self.weight = Parameter("weight", self.init(self.weight_shape, *fans, self.dtype))
        self.bias = Parameter("bias", self.bias_init(
            (self.out_features, self.pieces), *fans, self.dtype)) if bias else None
        self.input_shape = (self.in_features,)
        self._x = None
        self._chosen = None

    @classmethod
    def parameter_shapes(cls, in_features, out_features, pieces, bias=True, dtype="float32",
                         init="pytorch_uniform", bias_init="pytorch_uniform"):
        _positive_sizes(in_features=in_features, out_features=out_features, pieces=pieces)
        if not isinstance(bias, (bool, np.bool_)):
            raise ValueError(f"maxout: bias must be True or False, got {bias!r}")
        as_float_dtype(dtype, cls.name)
        initializers.get(init, cls.name)
        initializers.get_bias(bias_init, cls.name)
        shapes = {"weight": (int(out_features), int(pieces), int(in_features))}
        if bias:
            shapes["bias"] = (int(out_features), int(pieces))
        return shapes

    def _affine(self, with_grad: bool) -> tuple:
        """(weight, weight grad, bias, bias grad) as the Linear of out·pieces rows."""
        rows = self.out_features * self.pieces
        weight, weight_grad = parameter_arrays(self, self.weight, self.weight_shape,
                                               self.dtype, with_grad)
        bias = bias_grad = None
        if self.bias is not None:
            bias, bias_grad = parameter_arrays(self, self.bias, (self.out_features, self.pieces),
                                               self.dtype, with_grad)
            bias = bias.reshape(rows)
            bias_grad = None if bias_grad is None else bias_grad.reshape(rows)
        weight = weight.reshape(rows, self.in_features)
        if weight_grad is not None:
            weight_grad = weight_grad.reshape(rows, self.in_features)
        return weight, weight_grad, bias, bias_grad

    def forward(self, x):
        x = check_input(self, x, ndim=2, features=self.in_features, dtype=self.dtype)
        batch = x.shape[0]
        weight, _, bias, _ = self._affine(with_grad=False)
        z = self.buffer("pieces", (batch, self.out_features * self.pieces), self.dtype)
        linear_forward(x, weight, bias, z, EPILOGUE_NONE, 0.0)
        out = self.buffer("out", (batch, self.out_features), self.dtype)
        chosen = self.buffer("chosen", (batch, self.out_features), np.int32)
        maxout_pieces(z.reshape(-1), out.reshape(-1), chosen.reshape(-1), self.pieces)
        self._x, self._chosen = x, chosen
        return out

    def backward(self, grad):
        require_forward(self, self._x)
        x = self._x
        grad = check_grad(self, grad, (x.shape[0], self.out_features), self.dtype)
        weight, weight_grad, _, bias_grad = self._affine(with_grad=True)
        z_grad = self.buffer("pieces_grad", (x.shape[0], self.out_features * self.pieces),
                             self.dtype)
        maxout_route(grad.reshape(-1), self._chosen.reshape(-1), z_grad.reshape(-1),
                     self.pieces)
        x_grad = self.buffer("x_grad", x.shape, self.dtype) if self.needs_input_grad else None
        linear_backward(z_grad, x, weight, weight_grad, True, bias_grad, x_grad)
        return x_grad

    def parameters(self):
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def output_shape(self, *input_shapes):
        if len(input_shapes) != 1 or tuple(input_shapes[0]) != (self.in_features,):
            raise ShapeError(f"{self.name}: expected per-sample shape ({self.in_features},), "
                             f"got {', '.join(map(str, input_shapes))}")
        return (self.out_features,)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "pieces": self.pieces, "bias": self.bias is not None,
                "dtype": self.dtype.name, "init": self.init.config(),
                "bias_init": self.bias_init.config()}
