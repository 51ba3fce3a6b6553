"""The layer protocol: every layer, built-in or from a plugin, subclasses Layer.

A layer has a ``forward`` and a ``backward`` next to each other, as in the
lecture corenet grew from: forward caches what backward needs; backward takes
dL/doutput, adds dL/dW into each Parameter.grad and returns dL/dinput (one per
input; ``None`` where the executor said no input gradient is needed).
"""
from __future__ import annotations

import functools
import inspect
import math
import sys
from typing import ClassVar

import numpy as np

from corenet.errors import DTypeError, ShapeError
from corenet.memory import check_allocation

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_dtype(dtype, owner: str = "") -> np.dtype:
    """np.dtype for 'float32' / 'float64' / np.float32 ..., or a DTypeError (naming the
    layer ``owner`` when given). None and values such as np.float32(0.5) are errors too,
    though numpy reads them as float64 and float32."""
    try:
        resolved = None if dtype is None or isinstance(dtype, np.generic) else np.dtype(dtype)
    except (TypeError, ValueError):  # an unknown name such as 'float33'
        resolved = None
    # `None in FLOAT_DTYPES` is True: numpy compares None equal to float64.
    if resolved is None or resolved not in FLOAT_DTYPES:
        prefix = f"{owner}: " if owner else ""
        raise DTypeError(f"{prefix}dtype must be float32 or float64, got {dtype!r}")
    return resolved


def aligned_empty(shape: tuple, dtype, alignment: int = 64) -> np.ndarray:
    """np.empty on a 64-byte boundary: a SIMD load of 64 bytes then never spans
    two cache lines (numpy itself aligns to 16)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize  # np.prod would wrap around past 2⁶³
    raw = np.empty(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset:offset + size].view(dtype).reshape(shape)


class Parameter:
    """A learnable array and the gradient that backward adds into (same shape and dtype).

    ``grad`` is None after ``zero_grad(set_to_none=True)``, as in PyTorch: the next
    backward starts it from zeros. The array it held is kept (``unset_grad``), and a
    layer that writes its whole gradient takes it back without zeroing it first
    (parameter_arrays_to_write), so that a training step neither allocates nor clears
    it. Unlike PyTorch's fresh tensor, that is the same array: copy a grad you keep."""

    __slots__ = ("name", "value", "grad", "_spare_grad")

    def __init__(self, name: str, value: np.ndarray):
        self.name = name
        self.value = np.ascontiguousarray(value)
        self.grad = np.zeros_like(self.value)
        self._spare_grad = None

    def unset_grad(self) -> None:
        """grad = None, keeping its array for the next backward to reuse; or zeros in
        place when the array is shared (the next backward would overwrite it where
        another holder expects zeros or its own values): tied weights whose grads are
        one array or views of one, or a reference the caller kept."""
        if self.grad is None:
            return
        if _grad_unshared(self):
            self._spare_grad, self.grad = self.grad, None
        else:
            self.grad.fill(0)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """grad to zeros, or with ``set_to_none`` unset (unset_grad); a grad already
        None stays None. What Layer, Model and Optimizer.zero_grad do to each."""
        if set_to_none:
            self.unset_grad()
        elif self.grad is not None:
            self.grad.fill(0)

    def astype(self, dtype) -> None:
        self.value = self.value.astype(dtype)
        self.grad = None if self.grad is None else self.grad.astype(dtype)
        self._spare_grad = None

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.value.shape}, dtype={self.value.dtype})"


def _grad_references(parameter: Parameter) -> int:
    """sys.getrefcount of parameter.grad, taken the one way both uses below take it."""
    grad = parameter.grad
    return sys.getrefcount(grad)


# What _grad_references counts for a grad that only its Parameter holds: its slot, the
# local `grad` and, before Python 3.14 borrowed local loads, getrefcount's argument.
# Measured here rather than written down, so that a Python that counts otherwise can
# not make a shared array look unshared.
UNSHARED_GRAD_REFERENCES = _grad_references(Parameter("probe", np.zeros(1)))


def _grad_unshared(parameter: Parameter) -> bool:
    """Whether only this Parameter holds its grad, a whole array (no view). It keeps no
    reference of its own while counting."""
    if not (isinstance(parameter.grad, np.ndarray) and parameter.grad.base is None):
        return False
    return _grad_references(parameter) <= UNSHARED_GRAD_REFERENCES


def zero_layer_grads(layer, set_to_none: bool = False) -> None:
    """layer.zero_grad(set_to_none=...), or, for a plugin whose zero_grad takes no
    argument, its zero_grad() and then each parameter's grad unset when asked: the
    plugin's own clearing runs either way (Model.zero_grad, the conformance kit)."""
    if not set_to_none:
        layer.zero_grad()
    elif _takes_set_to_none(type(layer).zero_grad):
        layer.zero_grad(set_to_none=True)
    else:
        layer.zero_grad()
        for parameter in layer.parameters():
            parameter.unset_grad()


@functools.lru_cache(maxsize=None)
def _takes_set_to_none(zero_grad) -> bool:
    try:
        return "set_to_none" in inspect.signature(zero_grad).parameters
    except (TypeError, ValueError):  # a builtin or C function without a signature
        return False


class Buffer:
    """An array a layer keeps between calls without learning it, saved and loaded with
    the model: batch norm's running statistics (what PyTorch calls a buffer). A float
    buffer follows the layer's dtype; another (a step count) keeps its own."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: np.ndarray):
        self.name = name
        self.value = np.asarray(value, order="C")  # a 0-d count stays 0-d

    def astype(self, dtype) -> None:
        if self.value.dtype in FLOAT_DTYPES:
            self.value = self.value.astype(dtype)

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, shape={self.value.shape}, dtype={self.value.dtype})"


class Layer:
    """Base of every layer. Subclasses set ``name`` and override forward/backward.

    >>> import corenet.layers as L, numpy as np
    >>> relu = L.ReLU()
    >>> relu.forward(np.array([[-1.0, 2.0]], np.float32))
    array([[0., 2.]], dtype=float32)
    """

    name: ClassVar[str] = ""
    # True for an activation applied to each element on its own (relu, tanh, a
    # plugin's swish): what `corenet train --activation` accepts.
    elementwise: ClassVar[bool] = False
    # Set to False by the executor when this layer's inputs are the model's
    # inputs: backward may then skip computing dL/dinput and return None.
    needs_input_grad: bool = True
    # Set by the executor: outputs and gradients go into buffers the layer
    # reuses from call to call. Alone, a layer returns fresh arrays.
    reuse_buffers: bool = False
    # Optional: a layer that defines ``can_fuse(following) -> bool`` may be asked
    # to run the single node that consumes its output as part of itself. Before
    # each forward the executor then sets ``fused_activation`` to that layer
    # (None when not fused in the model being run); backward receives the
    # gradient of the fused pair's output. Linear fuses a following relu,
    # sigmoid, tanh, leaky_relu or elu.

    def __init__(self):
        self.training = True
        self._node = None
        self._buffers = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _naming_argument_errors(cls.__dict__["__init__"])

    # -- the protocol ------------------------------------------------------------

    def forward(self, *xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad: np.ndarray):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def parameters(self) -> list[Parameter]:
        return []

    def output_shape(self, *input_shapes: tuple) -> tuple:
        """Per-sample output shape; raises ShapeError for inputs this layer cannot take."""
        if len(input_shapes) != 1:
            raise ShapeError(f"{self.name}: expected 1 input, got {len(input_shapes)}")
        return tuple(input_shapes[0])

    def get_config(self) -> dict:
        return {}

    def state_buffers(self) -> list[Buffer]:
        """The arrays besides the parameters that a saved model keeps (running statistics)."""
        return []

    @classmethod
    def state_shapes(cls, **config) -> dict[str, tuple]:
        """{buffer name: shape} that ``cls(**config)`` would make, as parameter_shapes
        does for parameters: a layer with state_buffers that declares one declares both."""
        return {}

    @classmethod
    def parameter_shapes(cls, **config) -> dict[str, tuple] | None:
        """{parameter name: shape} that ``cls(**config)`` would make, worked out without
        making them; None when the layer does not say. Loading a model file checks the
        file's arrays against it before building the layer, so that a crafted config
        (a Linear of 10⁹ × 10⁹) is refused instead of allocated."""
        return None

    # -- helpers every layer shares ----------------------------------------------

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Gradients to zero, or with ``set_to_none`` to None (PyTorch's default since
        2.0; Parameter.unset_grad): the next backward starts them from zeros, and
        Linear writes its weight's rather than clearing it and adding. A grad already
        None stays None."""
        for parameter in self.parameters():
            parameter.zero_grad(set_to_none)

    def train(self, mode: bool = True) -> "Layer":
        """Training mode (the default): dropout drops, batch norm uses the batch's
        statistics. ``Model.train`` / ``Model.eval`` set it on every layer."""
        self.training = bool(mode)
        return self

    def eval(self) -> "Layer":
        """Evaluation mode: dropout is the identity, batch norm uses its running statistics."""
        return self.train(False)

    def astype(self, dtype) -> "Layer":
        dtype = as_float_dtype(dtype, self.name)
        for array in self.parameters() + self.state_buffers():
            array.astype(dtype)
        if hasattr(self, "dtype"):
            self.dtype = dtype
        self._buffers = {}
        return self

    def buffer(self, key: str, shape: tuple, dtype) -> np.ndarray:
        """An uninitialised array for an output or gradient: reused inside a Model."""
        if not self.reuse_buffers:
            return self._allocate(key, shape, dtype)
        array = self._buffers.get(key)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._buffers[key] = self._allocate(key, shape, dtype)
        return array

    def _allocate(self, key: str, shape: tuple, dtype) -> np.ndarray:
        what = {"out": "the output", "x_grad": "the input gradient"}.get(key, f"its {key} buffer")
        check_allocation(self.name, what, shape, dtype)
        return aligned_empty(shape, dtype)

    def __call__(self, *args):
        from corenet.graph import SymbolicTensor, add_node

        if args and all(isinstance(arg, SymbolicTensor) for arg in args):
            return add_node(self, args)
        if any(isinstance(arg, SymbolicTensor) for arg in args):
            raise TypeError(f"{self.name}: mixing symbolic tensors and arrays in one call")
        return self.forward(*args)

    def __repr__(self) -> str:
        config = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({config})"


def _naming_argument_errors(init):
    """``init``, its argument errors (an unknown keyword, a missing argument) naming the
    layer and what it takes: a Cython __init__ says only "__init__() got an unexpected
    keyword argument 'colour'"."""
    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        try:
            return init(self, *args, **kwargs)
        except TypeError as error:
            try:
                signature = inspect.signature(init)
            except (TypeError, ValueError):  # nothing to say more: the error as it was
                raise error from None
            try:
                signature.bind(self, *args, **kwargs)
            except TypeError as binding:
                takes = signature.replace(parameters=list(signature.parameters.values())[1:])
                raise TypeError(f"{type(self).name or type(self).__name__}: {binding}; it "
                                f"takes {takes}") from None
            raise  # the arguments bind: an error of the layer's own
    return checked_init


def check_input(layer: Layer, x, ndim: int | None = None, features: int | None = None,
                dtype=None, min_ndim: int = 1) -> np.ndarray:
    """x as a C-contiguous float array, or a ShapeError/DTypeError naming the layer.

    ``ndim``: exact number of dimensions (batch included); ``features``: the
    size of the last axis; ``dtype``: the dtype the layer's parameters have.
    """
    x = as_array(layer.name, "the input", x)
    if dtype is None:
        if x.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"{layer.name}: expected a float32 or float64 input, "
                             f"got dtype {x.dtype}")
    elif x.dtype != dtype:
        raise DTypeError(f"{layer.name}: expected a {dtype} input (the layer's dtype), "
                         f"got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ShapeError(f"{layer.name}: expected a {ndim}-D input (batch first), "
                         f"got shape {x.shape}")
    if x.ndim < min_ndim:
        raise ShapeError(f"{layer.name}: expected at least {min_ndim} dimension(s) "
                         f"(batch first), got shape {x.shape}")
    if features is not None and x.shape[-1] != features:
        raise ShapeError(f"{layer.name}: expected {features} features in the last axis, "
                         f"got shape {x.shape}")
    if x.ndim and x.shape[0] == 0:
        raise ShapeError(f"{layer.name}: got an empty batch, shape {x.shape}")
    return contiguous(layer.name, "the input", x)


def check_grad(layer: Layer, grad, shape: tuple, dtype) -> np.ndarray:
    """The gradient given to backward: the shape and dtype of the forward output."""
    grad = as_array(f"{layer.name}.backward", "the gradient", grad)
    if grad.shape != shape:
        raise ShapeError(f"{layer.name}.backward: expected a gradient of shape {shape} "
                         f"(the forward output), got {grad.shape}")
    if grad.dtype != dtype:
        raise DTypeError(f"{layer.name}.backward: expected a {dtype} gradient, got {grad.dtype}")
    return contiguous(f"{layer.name}.backward", "the gradient", grad)


def as_array(owner: str, what: str, x) -> np.ndarray:
    """x as an ndarray, or a DTypeError naming ``owner`` for what numpy cannot read as
    one (a ragged list)."""
    if type(x) is np.ndarray:
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as error:
        raise DTypeError(f"{owner}: {what} cannot be read as an array of numbers: "
                         f"{error}") from None


def contiguous(owner: str, what: str, x: np.ndarray) -> np.ndarray:
    """x, or a C-contiguous copy of it once it is known to fit in memory: a zero-stride
    view (np.broadcast_to) may claim terabytes."""
    if x.flags.c_contiguous:
        return x
    check_allocation(owner, f"a C-contiguous copy of {what}", x.shape, x.dtype)
    return np.ascontiguousarray(x)


def check_lengths(function: str, /, **lengths: tuple) -> None:
    """For a Python-callable twin of a kernel, which indexes flat arrays by sizes it
    is given: ``label=(length, expected)`` for each array (its length from the
    memoryview, the expected from the sizes), a ValueError naming ``function``
    before the kernel could run past an array's end.

    >>> check_lengths("scale", out=(3, 4))
    Traceback (most recent call last):
    ...
    ValueError: scale: out has 3 elements, expected 4
    """
    for label, (length, expected) in lengths.items():
        if length != expected:
            raise ValueError(f"{function}: {label} has {length} element"
                             f"{'' if length == 1 else 's'}, expected {expected}")


def check_sizes(function: str, minimum: int = 0, /, **sizes) -> None:
    """The sizes given to a kernel's twin (C integers already): at least ``minimum``."""
    for label, size in sizes.items():
        if size < minimum:
            raise ValueError(f"{function}: {label} must be at least {minimum}, got {size}")


class _FixedAttribute:
    """A data descriptor with ``__set__`` only: reading the attribute is a plain lookup
    in the instance's dict (no Python call on the kernels' paths); setting it is
    refused once the instance has a value."""

    def __init__(self, name: str):
        self.name = name

    def __set__(self, instance, value) -> None:
        if self.name in instance.__dict__:
            # A layer's registry name, or the layer a Window belongs to.
            owner = instance.__dict__.get("layer_name") or instance.name
            raise AttributeError(f"{owner}: {self.name} is fixed when the layer is built; "
                                 f"build a new layer to change it")
        instance.__dict__[self.name] = value


class SetOnce:
    """A mixin: attributes named in ``set_once`` take a value in the constructor and
    keep it. For sizes that the parameters' shapes and the kernels' loops follow: a
    later change would put the two out of step (an out_channels set on a Conv2d had
    its kernel read past the weight). Only those attributes' assignments are checked.

    >>> class Scale(SetOnce, Layer):
    ...     name = "scale"
    ...     set_once = frozenset({"size"})
    ...     def __init__(self, size):
    ...         super().__init__()
    ...         self.size = size
    >>> Scale(3).size = 4
    Traceback (most recent call last):
    AttributeError: scale: size is fixed when the layer is built; build a new layer to change it
    """

    set_once: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls.set_once:
            if not isinstance(getattr(cls, name, None), _FixedAttribute):
                setattr(cls, name, _FixedAttribute(name))


def require_forward(layer: Layer, cached) -> None:
    """A RuntimeError when there is no forward to take backward through, and a
    DTypeError when ``cached`` (the forward's input) is not of the layer's dtype any
    more: after ``astype``, its kernels would read float32 data as float64."""
    if cached is None:
        raise RuntimeError(f"{layer.name}.backward called before forward")
    dtype = getattr(layer, "dtype", None)
    if isinstance(cached, np.ndarray) and dtype is not None and cached.dtype != dtype:
        raise DTypeError(f"{layer.name}.backward: the forward ran in {cached.dtype}, the "
                         f"layer is now {np.dtype(dtype)}: run forward again after astype")


def buffer_array(layer, buffer, shape: tuple, dtype) -> np.ndarray:
    """A Buffer's value, checked before use: users can replace it, and batch norm
    updates its running statistics in place."""
    value = buffer.value
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype \
            or not value.flags.c_contiguous or not value.flags.writeable:
        got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) \
            else type(value).__name__
        raise ShapeError(f"{layer.name}: buffer {buffer.name!r} must be a writeable "
                         f"C-contiguous {np.dtype(dtype)} array of shape {shape}, got {got}")
    return value


def parameter_arrays(layer: Layer, parameter: Parameter, shape: tuple, dtype,
                     with_grad: bool = True) -> tuple:
    """(value, grad) of a Parameter, checked before a kernel touches them (grad is
    None without ``with_grad``: forward reads the value only).

    Users can replace either array, so a kernel never trusts them: the value must
    have the layer's shape and dtype (a non-contiguous one is copied for reading);
    the grad must too, C-contiguous and writeable, since the kernel adds into it.
    A grad set to None starts again from zeros, as in PyTorch.
    """
    if not isinstance(parameter, Parameter):  # the attribute itself was replaced
        raise TypeError(f"{layer.name}: expected a corenet Parameter (name, value, grad), "
                        f"got {type(parameter).__name__}")
    value = parameter.value
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
        raise ShapeError(f"{_label(layer, parameter)} must be a {dtype} array of shape "
                         f"{shape}, got {_describe(value)}")
    if not value.flags.c_contiguous:
        value = contiguous(_label(layer, parameter), "its value", value)
    if not with_grad:
        return value, None
    grad = parameter.grad
    if grad is None:
        grad = _unset_grad_array(parameter, shape, dtype)
        grad.fill(0)
        return value, grad
    if not isinstance(grad, np.ndarray) or grad.shape != shape or grad.dtype != dtype:
        raise ShapeError(f"{_label(layer, parameter)}: its grad must be a {dtype} array of "
                         f"shape {shape}, got {_describe(grad)}")
    if not grad.flags.c_contiguous or not grad.flags.writeable:
        raise ValueError(f"{_label(layer, parameter)}: its grad must be a writeable "
                         f"C-contiguous array (backward adds into it)")
    return value, grad


def parameter_arrays_to_write(layer: Layer, parameter: Parameter, shape: tuple,
                              dtype) -> tuple:
    """(value, grad, overwrite): as parameter_arrays, except that a grad that
    ``zero_grad(set_to_none=True)`` unset comes back unzeroed with overwrite True. The
    caller must then write every element of it (a GEMM with beta = 0) where it would
    otherwise add: the pass that clears the gradient, and the GEMM's reads of it, go."""
    if getattr(parameter, "grad", True) is not None:  # set, or not a Parameter: as ever
        return (*parameter_arrays(layer, parameter, shape, dtype), False)
    value, _ = parameter_arrays(layer, parameter, shape, dtype, with_grad=False)
    return value, _unset_grad_array(parameter, shape, dtype), True


def _unset_grad_array(parameter: Parameter, shape: tuple, dtype) -> np.ndarray:
    """The array for a grad that is None, made the grad: the one zero_grad kept, if
    it still fits the layer, else a new one; its contents are undefined."""
    grad = parameter._spare_grad
    parameter._spare_grad = None
    if not (isinstance(grad, np.ndarray) and grad.shape == shape and grad.dtype == dtype
            and grad.flags.c_contiguous and grad.flags.writeable):
        grad = np.empty(shape, dtype)
    parameter.grad = grad
    return grad


def _label(layer: Layer, parameter: Parameter) -> str:
    # Built for an error only: parameter_arrays runs for every parameter at every step.
    return f"{layer.name}: parameter {parameter.name!r}"


def _describe(array) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype} {array.shape}"
    return type(array).__name__
