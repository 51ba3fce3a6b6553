"""ONNX -> corenet: one importer per ONNX operator, each making one corenet layer.

An ONNX file is untrusted input: ``load`` reads it without external data (a file
that points at other files is refused), runs onnx.checker, and checks every
operator, attribute, initializer and shape before it builds a layer. Anything it
cannot take is a ``ModelFileError`` naming the file, the node and the reason.
"""
from __future__ import annotations

import numpy as np

from corenet.errors import DTypeError, ModelFileError, ShapeError
from corenet.graph import Input, Model
from corenet.onnx.export import require_onnx

MIN_OPSET = 13  # Softmax over one axis, and today's Split/Squeeze forms, since 13


class Unsupported(ValueError):
    """What a node asks for that corenet cannot do; load adds the file and the node."""


class OnnxReader:
    """The state of one import: tensors made so far, initializers, who reads what."""

    def __init__(self, onnx, graph, dtype: np.dtype):
        self.onnx = onnx
        self.dtype = dtype
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.tensors = {}  # ONNX name -> SymbolicTensor
        self.consumers = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {value.name for value in graph.output}
        self.absorbed = set()  # ids of nodes that an importer folded into the one before

    def attributes(self, node, defaults: dict) -> dict:
        """The node's attributes over ``defaults``; one not in ``defaults`` is refused."""
        values = dict(defaults)
        for attribute in node.attribute:
            if attribute.name not in defaults:
                raise Unsupported(f"attribute {attribute.name!r} is not supported (supported: "
                                  f"{', '.join(sorted(defaults)) or 'none'})")
            values[attribute.name] = self.onnx.helper.get_attribute_value(attribute)
        missing = [name for name, value in values.items() if value is REQUIRED]
        if missing:
            raise Unsupported(f"attribute {missing[0]!r} is required")
        return values

    def constant(self, name: str, what: str) -> np.ndarray:
        """An initializer (a weight): a float array of the model's dtype."""
        tensor = self.initializers.get(name)
        if tensor is None:
            raise Unsupported(f"its {what} {name!r} must be an initializer (a constant)")
        array = self.onnx.numpy_helper.to_array(tensor)
        if array.dtype != self.dtype:
            raise Unsupported(f"its {what} {name!r} is {array.dtype}, the model's input is "
                              f"{self.dtype}")
        return array

    def tensor(self, name: str):
        if name not in self.tensors:
            raise Unsupported(f"input {name!r} is not computed from the model's inputs "
                              f"(a constant where corenet takes a tensor?)")
        return self.tensors[name]

    def sole_consumer(self, node, op_type: str):
        """The node that alone reads ``node``'s output, when it is an ``op_type`` and the
        output is not also a model output; it is then folded into this node's layer."""
        output = node.output[0]
        readers = self.consumers.get(output, [])
        if len(readers) == 1 and readers[0].op_type == op_type \
                and output not in self.graph_outputs:
            self.absorbed.add(id(readers[0]))
            return readers[0]
        return None


REQUIRED = object()  # an attribute default that marks the attribute as required


def _layers():
    from corenet import layers

    return layers


def _set(parameter, array) -> None:
    np.copyto(parameter.value, array.reshape(parameter.value.shape))


def _linear(reader, node, weight, bias):
    """A Linear from W (out, in) and an optional bias (out,)."""
    if weight.ndim != 2:
        raise Unsupported(f"its weight must be a matrix, got shape {weight.shape}")
    if bias is not None and bias.size != weight.shape[0]:
        raise Unsupported(f"its bias has shape {bias.shape}, expected ({weight.shape[0]},)")
    layer = _layers().Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                             dtype=reader.dtype)
    _set(layer.weight, weight)
    if bias is not None:
        _set(layer.bias, bias)
    return layer


def _gemm(reader, node):
    attributes = reader.attributes(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0})
    if attributes["alpha"] != 1 or attributes["beta"] != 1 or attributes["transA"]:
        raise Unsupported(f"only alpha=1, beta=1, transA=0 are supported, got {attributes}")
    weight = reader.constant(node.input[1], "B")
    weight = weight if attributes["transB"] else weight.T
    bias = reader.constant(node.input[2], "C") if len(node.input) > 2 and node.input[2] else None
    return _linear(reader, node, weight, bias), node.input[:1], node.output[0]


def _matmul(reader, node):
    """MatMul(x, W), and the Add of a bias that alone follows it, as one Linear."""
    reader.attributes(node, {})
    weight = reader.constant(node.input[1], "weight").T
    add = reader.sole_consumer(node, "Add")
    if add is not None:
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other not in reader.initializers:
            reader.absorbed.discard(id(add))  # an Add of two tensors: a layer of its own
            add = None
    bias = reader.constant(other, "bias") if add is not None else None
    return (_linear(reader, node, weight, bias), node.input[:1],
            (add or node).output[0])


def _simple(cls_name: str, **attributes):
    """An operator with no weight whose attributes are the layer's config."""
    def convert(reader, node):
        values = reader.attributes(node, {name: default for name, (_, default)
                                          in attributes.items()})
        config = {key: _decimal(values[name]) for name, (key, _) in attributes.items()}
        return getattr(_layers(), cls_name)(**config), list(node.input), node.output[0]
    return convert


def _decimal(value: float) -> float:
    """An ONNX float attribute (stored as float32) as the shortest decimal that gives
    the same float32: the 0.1 corenet exported comes back 0.1, not 0.10000000149."""
    return float(str(np.float32(value)))


def _prelu(reader, node):
    reader.attributes(node, {})
    slope = reader.constant(node.input[1], "slope")
    shape = reader.tensor(node.input[0]).shape
    per_channel = (shape[0],) + (1,) * (len(shape) - 1)
    if slope.size != 1 and slope.shape != per_channel:
        raise Unsupported(f"its slope of shape {slope.shape} is neither one value nor one per "
                          f"channel of shape {per_channel} (input per-sample shape {shape})")
    layer = _layers().PReLU(int(slope.size), dtype=reader.dtype)
    _set(layer.weight, slope)
    return layer, node.input[:1], node.output[0]


def _softmax(reader, node):
    axis = reader.attributes(node, {"axis": -1})["axis"]
    ndim = len(reader.tensor(node.input[0]).shape) + 1
    if not -ndim <= axis < ndim or axis % ndim != ndim - 1:
        raise Unsupported(f"softmax over axis {axis} of a {ndim}-D input: corenet's softmax "
                          f"takes the last axis")
    return _layers().Softmax(), list(node.input), node.output[0]


def _concat(reader, node):
    axis = reader.attributes(node, {"axis": REQUIRED})["axis"]
    ndim = len(reader.tensor(node.input[0]).shape) + 1
    if not -ndim <= axis < ndim or axis % ndim == 0:
        raise Unsupported(f"concatenation along axis {axis} of {ndim}-D inputs: corenet joins "
                          f"along an axis after the batch")
    return _layers().Concat(axis), list(node.input), node.output[0]


def _window(attributes: dict, n_axes: int, is_conv: bool) -> dict:
    """kernel_size, stride and padding from ONNX attributes, for a corenet layer."""
    auto_pad = attributes["auto_pad"]
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    kernel = list(attributes["kernel_shape"] or [])
    strides = list(attributes["strides"] or [1] * n_axes)
    pads = list(attributes["pads"] or [0] * 2 * n_axes)
    if len(kernel) != n_axes or len(strides) != n_axes or len(pads) != 2 * n_axes:
        raise Unsupported(f"kernel_shape {kernel}, strides {strides} and pads {pads} do not "
                          f"fit {n_axes} spatial axes")
    window = {"kernel_size": kernel, "stride": strides}
    before, after = pads[:n_axes], pads[n_axes:]
    if auto_pad == "VALID":
        return dict(window, padding="valid" if is_conv else 0)
    if is_conv and auto_pad == "SAME_UPPER" and set(strides) == {1}:
        return dict(window, padding="same")  # corenet's 'same' pads the odd one after
    if auto_pad != "NOTSET":
        raise Unsupported(f"auto_pad={auto_pad!r}: corenet takes NOTSET, VALID, and SAME_UPPER "
                          f"for a stride-1 convolution")
    if before == after:
        return dict(window, padding=before)
    totals = [k - 1 for k in attributes.get("effective_kernel", [])]
    if is_conv and set(strides) == {1} and before == [t // 2 for t in totals] \
            and after == [t - t // 2 for t in totals]:
        return dict(window, padding="same")
    raise Unsupported(f"pads {pads}: corenet pads each axis as much before as after "
                      f"(or 'same' for a stride-1 convolution)")


def _conv(reader, node):
    attributes = reader.attributes(node, {"auto_pad": "NOTSET", "dilations": None, "group": 1,
                                          "kernel_shape": None, "pads": None, "strides": None})
    weight = reader.constant(node.input[1], "weight")
    n_axes = weight.ndim - 2
    if n_axes not in (2, 3):
        raise Unsupported(f"a {n_axes}-D convolution (weight shape {weight.shape}): corenet "
                          f"has Conv2d and Conv3d")
    dilation = list(attributes["dilations"] or [1] * n_axes)
    if attributes["kernel_shape"] is None:
        attributes["kernel_shape"] = list(weight.shape[2:])
    if list(attributes["kernel_shape"]) != list(weight.shape[2:]) or len(dilation) != n_axes:
        raise Unsupported(f"kernel_shape {attributes['kernel_shape']} and dilations {dilation} "
                          f"do not fit the weight of shape {weight.shape}")
    attributes["effective_kernel"] = [d * (k - 1) + 1 for d, k in zip(dilation, weight.shape[2:])]
    window = _window(attributes, n_axes, is_conv=True)
    bias = reader.constant(node.input[2], "bias") if len(node.input) > 2 and node.input[2] \
        else None
    group = attributes["group"]
    cls = _layers().Conv2d if n_axes == 2 else _layers().Conv3d
    layer = cls(weight.shape[1] * group, weight.shape[0], dilation=dilation, groups=group,
                bias=bias is not None, dtype=reader.dtype, **window)
    if bias is not None and bias.shape != (weight.shape[0],):
        raise Unsupported(f"its bias has shape {bias.shape}, expected ({weight.shape[0]},)")
    _set(layer.weight, weight)
    if bias is not None:
        _set(layer.bias, bias)
    return layer, node.input[:1], node.output[0]


def _pool(reader, node):
    is_max = node.op_type == "MaxPool"
    defaults = {"auto_pad": "NOTSET", "ceil_mode": 0, "kernel_shape": REQUIRED, "pads": None,
                "strides": None, "dilations": None}
    defaults.update({"storage_order": 0} if is_max else {"count_include_pad": 0})
    attributes = reader.attributes(node, defaults)
    n_axes = len(attributes["kernel_shape"])
    if n_axes not in (2, 3) or attributes["ceil_mode"] or set(
            attributes["dilations"] or [1]) != {1} or len(node.output) != 1:
        raise Unsupported(f"pooling over {n_axes} axes with ceil_mode "
                          f"{attributes['ceil_mode']}, dilations {attributes['dilations']} and "
                          f"{len(node.output)} outputs: corenet pools 2 or 3 axes, ceil_mode 0, "
                          f"no dilation, no indices output")
    window = _window(attributes, n_axes, is_conv=False)
    if not is_max and not attributes["count_include_pad"] and any(window["padding"]):
        raise Unsupported("padded average pooling with count_include_pad=0: corenet counts "
                          "the padding (count_include_pad=1)")
    kind = ("MaxPool" if is_max else "AvgPool") + f"{n_axes}d"
    return getattr(_layers(), kind)(**window), node.input[:1], node.output[0]


def _global_average_pool(reader, node):
    """GlobalAveragePool then Flatten(axis=1): corenet's global_avg_pool, (N, C)."""
    reader.attributes(node, {})
    flatten = reader.sole_consumer(node, "Flatten")
    if flatten is None or reader.attributes(flatten, {"axis": 1})["axis"] != 1:
        raise Unsupported("GlobalAveragePool is taken when Flatten(axis=1) alone follows it "
                          "(corenet's global_avg_pool returns (batch, channels))")
    return _layers().GlobalAvgPool(), list(node.input), flatten.output[0]


def _flatten(reader, node):
    if reader.attributes(node, {"axis": 1})["axis"] != 1:
        raise Unsupported("corenet flattens every axis after the batch (axis=1)")
    return _layers().Flatten(), list(node.input), node.output[0]


def _add(reader, node):
    reader.attributes(node, {})
    if len(node.input) == 1:  # a Sum of one tensor
        return None, list(node.input), node.output[0]
    return _layers().Add(), list(node.input), node.output[0]


def _identity(reader, node):
    reader.attributes(node, {})
    return None, list(node.input), node.output[0]


# op_type -> importer(reader, node) -> (layer or None for a pass-through, input names, output)
IMPORTERS = {
    "Gemm": _gemm, "MatMul": _matmul,
    "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool,
    "GlobalAveragePool": _global_average_pool, "Flatten": _flatten,
    "Relu": _simple("ReLU"), "Sigmoid": _simple("Sigmoid"), "Tanh": _simple("Tanh"),
    "LeakyRelu": _simple("LeakyReLU", alpha=("negative_slope", 0.01)),
    "Elu": _simple("ELU", alpha=("alpha", 1.0)),
    "PRelu": _prelu, "Softmax": _softmax,
    "Add": _add, "Sum": _add, "Concat": _concat, "Identity": _identity,
}


def _fail(path: str, what: str):
    raise ModelFileError(f"{path}: {what}")


def _read(onnx, path: str):
    """The ModelProto, checked; external data refused (it would read other files)."""
    try:
        proto = onnx.load_model(path, load_external_data=False)
    except OSError:
        raise
    except Exception as error:  # protobuf's DecodeError and friends
        _fail(path, f"not an ONNX model: {type(error).__name__}: {error}")
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _fail(path, f"initializer {tensor.name!r} keeps its data in another file; "
                        f"corenet loads self-contained ONNX files only")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        _fail(path, f"onnx.checker rejects it: {str(error).splitlines()[0]}")
    opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    if opsets.get("ai.onnx", 0) < MIN_OPSET:
        _fail(path, f"opset {opsets.get('ai.onnx')} of the default domain; corenet reads "
                    f"opset {MIN_OPSET} and newer")
    return proto


def _inputs(onnx, path: str, graph, initializer_names: set) -> tuple:
    """[(name, per-sample shape)] and the dtype of the graph's inputs."""
    inputs, dtypes = [], set()
    for value in graph.input:
        if value.name in initializer_names:  # older files list the weights as inputs too
            continue
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) \
            if tensor_type.elem_type else None
        if dtype not in (np.float32, np.float64):
            _fail(path, f"input {value.name!r} has element type {dtype}; corenet takes "
                        f"float32 or float64")
        dims = tensor_type.shape.dim
        shape = tuple(dim.dim_value if dim.HasField("dim_value") else 0 for dim in dims[1:])
        if not tensor_type.HasField("shape") or len(dims) < 2 or min(shape) < 1:
            _fail(path, f"input {value.name!r} must have a batch axis and fixed positive "
                        f"sizes after it, got shape {[str(dim).strip() for dim in dims]}")
        inputs.append((value.name, shape))
        dtypes.add(np.dtype(dtype))
    if not inputs or len(dtypes) != 1:
        _fail(path, f"expected one or more inputs of one float dtype, got {len(inputs)} "
                    f"input(s) of {sorted(map(str, dtypes))}")
    return inputs, dtypes.pop()


def load(path: str) -> Model:
    """A corenet Model from an ONNX file of the operators in IMPORTERS; the model
    exported by ``corenet.onnx.export`` comes back layer for layer, exactly."""
    onnx = require_onnx()
    proto = _read(onnx, path)
    graph = proto.graph
    inputs, dtype = _inputs(onnx, path, graph, {tensor.name for tensor in graph.initializer})
    reader = OnnxReader(onnx, graph, dtype)
    for name, shape in inputs:
        reader.tensors[name] = Input(shape, name=name)
    for index, node in enumerate(graph.node):
        if id(node) in reader.absorbed:
            continue
        where = f"node {index} ({node.name or 'unnamed'!r}, {node.op_type})"
        importer = IMPORTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if importer is None:
            _fail(path, f"{where}: unsupported operator {node.domain or 'ai.onnx'}."
                        f"{node.op_type}; corenet imports {', '.join(sorted(IMPORTERS))}")
        try:
            layer, input_names, output = importer(reader, node)
            tensors = [reader.tensor(name) for name in input_names]
            reader.tensors[output] = tensors[0] if layer is None else layer(*tensors)
        except (Unsupported, ShapeError, DTypeError, ValueError, TypeError) as error:
            _fail(path, f"{where}: {error}")
    missing = [value.name for value in graph.output if value.name not in reader.tensors]
    if missing:
        _fail(path, f"outputs {missing} are not computed by the operators corenet imports")
    try:
        return Model([reader.tensors[name] for name, _ in inputs],
                     [reader.tensors[value.name] for value in graph.output])
    except (ValueError, TypeError) as error:
        _fail(path, f"the graph is not a valid model: {error}")
