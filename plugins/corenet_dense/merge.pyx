"""Merges of several inputs: add (same shapes) and concat (along a feature axis)."""
import numpy as np

cimport numpy as cnp

from corenet.kernels.elementwise cimport add_into

from corenet.arguments import as_int
from corenet.errors import DTypeError, ShapeError
from corenet.layer import Layer, SetOnce, check_grad, check_input, require_forward

cnp.import_array()


def _check_inputs(layer, xs):
    if len(xs) < 2:
        raise ShapeError(f"{layer.name}: expected at least 2 inputs, got {len(xs)}")
    xs = [check_input(layer, x) for x in xs]
    for x in xs[1:]:
        if x.dtype != xs[0].dtype:
            raise DTypeError(f"{layer.name}: inputs have different dtypes "
                             f"{xs[0].dtype} and {x.dtype}")
    return xs


class Add(Layer):
    """The elementwise sum of two or more inputs of one shape; backward hands the
    gradient to every input unchanged."""

    name = "add"

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, *xs):
        xs = _check_inputs(self, xs)
        for x in xs[1:]:
            if x.shape != xs[0].shape:
                raise ShapeError(f"{self.name}: inputs must have one shape, got "
                                 f"{xs[0].shape} and {x.shape}")
        out = self.buffer("out", xs[0].shape, xs[0].dtype)
        np.copyto(out, xs[0])
        cdef cnp.ndarray total = out, term
        cdef Py_ssize_t size = out.size
        for term in xs[1:]:
            if out.dtype == np.float32:
                with nogil:
                    add_into(<float*>cnp.PyArray_DATA(total),
                             <const float*>cnp.PyArray_DATA(term), size)
            else:
                with nogil:
                    add_into(<double*>cnp.PyArray_DATA(total),
                             <const double*>cnp.PyArray_DATA(term), size)
        self._n_inputs = len(xs)
        self._shape = out.shape
        self._dtype = out.dtype
        return out

    def backward(self, grad):
        require_forward(self, self._shape)
        grad = check_grad(self, grad, self._shape, self._dtype)
        return (grad,) * self._n_inputs

    def output_shape(self, *input_shapes):
        if len(input_shapes) < 2 or any(shape != input_shapes[0] for shape in input_shapes):
            raise ShapeError(f"{self.name}: expected 2 or more inputs of one shape, got "
                             f"{', '.join(map(str, input_shapes))}")
        return tuple(input_shapes[0])


class Concat(SetOnce, Layer):
    """Joins inputs along ``axis`` (a per-sample axis; -1, the last, by default)."""

    name = "concat"
    set_once = frozenset({"axis"})  # the graph's shapes were checked with it

    def __init__(self, axis=-1):
        super().__init__()
        self.axis = as_int(self.name, "axis", axis, -2 ** 31, 2 ** 31, integral_floats=False)
        if self.axis == 0:
            raise ValueError("concat: axis 0 is the batch axis; pick a feature axis")
        self._sizes = None

    def forward(self, *xs):
        xs = _check_inputs(self, xs)
        self.output_shape(*(x.shape[1:] for x in xs))
        for x in xs[1:]:
            if x.shape[0] != xs[0].shape[0]:
                raise ShapeError(f"{self.name}: inputs have different batch sizes "
                                 f"{xs[0].shape} and {x.shape}")
        axis = self.axis % xs[0].ndim
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        out = self.buffer("out", tuple(shape), xs[0].dtype)
        np.concatenate(xs, axis=axis, out=out)
        self._sizes = [x.shape[axis] for x in xs]
        self._shape = out.shape
        self._dtype = out.dtype
        return out

    def backward(self, grad):
        require_forward(self, self._sizes)
        grad = check_grad(self, grad, self._shape, self._dtype)
        axis = self.axis % grad.ndim
        bounds = np.cumsum(self._sizes)[:-1]
        return tuple(np.ascontiguousarray(part) for part in np.split(grad, bounds, axis=axis))

    def output_shape(self, *input_shapes):
        if len(input_shapes) < 2:
            raise ShapeError(f"{self.name}: expected 2 or more inputs, got {len(input_shapes)}")
        ndim = len(input_shapes[0])
        axis = self.axis - 1 if self.axis > 0 else self.axis  # per-sample axis
        if not -ndim <= axis < ndim:
            raise ShapeError(f"{self.name}: axis {self.axis} is out of range for per-sample "
                             f"shape {input_shapes[0]}")
        axis %= ndim
        for shape in input_shapes[1:]:
            if len(shape) != ndim or any(a != b for i, (a, b) in
                                         enumerate(zip(shape, input_shapes[0])) if i != axis):
                raise ShapeError(f"{self.name}: shapes {input_shapes[0]} and {shape} differ "
                                 f"outside the concatenation axis {self.axis}")
        joined = list(input_shapes[0])
        joined[axis] = sum(shape[axis] for shape in input_shapes)
        return tuple(joined)

    def get_config(self):
        return {"axis": self.axis}
