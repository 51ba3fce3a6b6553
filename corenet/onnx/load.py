"""ONNX -> corenet: one importer per ONNX operator, each making one corenet layer.

An ONNX file is untrusted input: ``load`` reads it without external data (a file
that points at other files is refused), runs onnx.checker, and checks every
operator, attribute, initializer and shape before it builds a layer. Anything it
cannot take is a ``ModelFileError`` naming the file, the node and the reason.

What a file computes comes from its operators alone. The metadata corenet's export
adds (see corenet.onnx.export) only fills in what ONNX does not say: a layer's
training options and counts, and whether ones and zeros were a layer's own
parameters or its lack of them.
"""
from __future__ import annotations

import json

import numpy as np

from corenet.errors import DTypeError, ModelFileError, ShapeError
from corenet.graph import Input, Model
from corenet.onnx.export import require_onnx

MIN_OPSET = 13  # Softmax over one axis, and today's Split/Squeeze forms, since 13


class Unsupported(ValueError):
    """What a node asks for that corenet cannot do; load adds the file and the node."""


class OnnxReader:
    """The state of one import: tensors made so far, initializers, who reads what."""

    def __init__(self, onnx, graph, dtype: np.dtype, metadata: dict):
        self.onnx = onnx
        self.dtype = dtype
        self.metadata = metadata
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
        array = self.array(tensor)
        if array.dtype != self.dtype:
            raise Unsupported(f"its {what} {name!r} is {array.dtype}, the model's input is "
                              f"{self.dtype}")
        return array

    def array(self, tensor) -> np.ndarray:
        """An initializer's values; an element type onnx does not know is Unsupported
        (onnx raises a KeyError for it)."""
        try:
            return self.onnx.numpy_helper.to_array(tensor)
        except (KeyError, ValueError, TypeError) as error:
            raise Unsupported(f"initializer {tensor.name!r} cannot be read (element type "
                              f"{tensor.data_type}): {error!r}") from None

    def tensor(self, name: str):
        if name not in self.tensors:
            raise Unsupported(f"input {name!r} is not computed from the model's inputs "
                              f"(a constant where corenet takes a tensor?)")
        return self.tensors[name]

    def integers(self, name: str, what: str) -> list:
        """An int64 initializer (axes, a shape) as a list."""
        tensor = self.initializers.get(name)
        array = None if tensor is None else self.array(tensor)
        if array is None or array.dtype != np.int64 or array.ndim > 1:
            raise Unsupported(f"its {what} {name!r} must be an int64 initializer of at most "
                              f"one axis")
        return [int(value) for value in array.reshape(-1)]

    def next_node(self, node, op_type: str):
        """The node that alone reads ``node``'s output, when it is an ``op_type`` and the
        output is not also a model output; None otherwise."""
        output = node.output[0]
        readers = self.consumers.get(output, [])
        if len(readers) == 1 and readers[0].op_type == op_type \
                and output not in self.graph_outputs:
            return readers[0]
        return None

    def sole_consumer(self, node, op_type: str):
        """next_node, folded into this node's layer (the import loop then skips it)."""
        following = self.next_node(node, op_type)
        if following is not None:
            self.absorbed.add(id(following))
        return following

    def hints(self, node, layer_name: str) -> tuple:
        """(config, counts) that corenet's export kept for the layer whose first node is
        ``node``, when that layer was a ``layer_name``; ({}, {}) otherwise."""
        text = self.metadata.get(f"corenet:{node.name}") if node.name else None
        if text is None:
            return {}, {}
        try:
            entry = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            raise Unsupported(f"its corenet metadata is not JSON: {text[:80]!r}") from None
        if not isinstance(entry, dict) or entry.get("layer") != layer_name:
            return {}, {}
        config, counts = entry.get("config", {}), entry.get("counts", {})
        if not isinstance(config, dict) or not isinstance(counts, dict):
            raise Unsupported(f"its corenet metadata has no config and counts dicts: "
                              f"{text[:80]!r}")
        return config, counts


REQUIRED = object()  # an attribute default that marks the attribute as required


def _layers():
    from corenet import layers

    return layers


def _set(parameter, array) -> None:
    np.copyto(parameter.value, array.reshape(parameter.value.shape))


INIT_OPTIONS = ("init", "bias_init")  # how fresh weights are drawn: no ONNX counterpart


def _options(config: dict, keys: tuple) -> dict:
    return {key: config[key] for key in keys if key in config}


def _affine_map(reader, node, last, weight, bias):
    """A Linear from W (out, in) and an optional bias (out,), whose last node is ``last``;
    a Maxout when a Reshape to (batch, out, pieces) and a ReduceMax over the pieces
    alone follow it. Returns (layer, input names, output name)."""
    if weight.ndim != 2:
        raise Unsupported(f"its weight must be a matrix, got shape {weight.shape}")
    # ONNX broadcasts a (out, 1) or (batch, out) addend differently: only a row is a bias
    if bias is not None and bias.shape not in ((weight.shape[0],), (1, weight.shape[0])):
        raise Unsupported(f"its bias has shape {bias.shape}, expected ({weight.shape[0]},) "
                          f"or (1, {weight.shape[0]})")
    rows, in_features = weight.shape
    maxout = _maxout_pattern(reader, last)
    if maxout is not None and rows == maxout[0] * maxout[1]:
        out_features, pieces, reshape, reduce = maxout
        reader.absorbed.update((id(reshape), id(reduce)))
        layer = _layers().Maxout(in_features, out_features, pieces, bias=bias is not None,
                                 dtype=reader.dtype,
                                 **_options(reader.hints(node, "maxout")[0], INIT_OPTIONS))
        output = reduce.output[0]
    else:
        layer = _layers().Linear(in_features, rows, bias=bias is not None, dtype=reader.dtype,
                                 **_options(reader.hints(node, "linear")[0], INIT_OPTIONS))
        output = last.output[0]
    _set(layer.weight, weight)
    if bias is not None:
        _set(layer.bias, bias)
    return layer, node.input[:1], output


def _maxout_pattern(reader, last):
    """(out, pieces, the Reshape, the ReduceMax) when Reshape to [0 or -1, out, pieces]
    then ReduceMax over axis 2 without keepdims alone follow ``last``; None otherwise."""
    reshape = reader.next_node(last, "Reshape")
    reduce = reader.next_node(reshape, "ReduceMax") if reshape is not None else None
    if reduce is None or reshape.input[1] not in reader.initializers:
        return None
    shape = reader.integers(reshape.input[1], "shape")
    zero_is_zero = reader.attributes(reshape, {"allowzero": 0})["allowzero"]
    reduction = reader.attributes(reduce, {"axes": None, "keepdims": 1,
                                           "noop_with_empty_axes": 0})
    axes = reduction["axes"] if len(reduce.input) < 2 or not reduce.input[1] \
        else reader.integers(reduce.input[1], "axes")  # an attribute before opset 18
    if len(shape) != 3 or shape[0] not in (0, -1) or (shape[0] == 0 and zero_is_zero) \
            or min(shape[1:]) < 1 or list(axes or []) not in ([2], [-1]) \
            or reduction["keepdims"]:
        return None
    return shape[1], shape[2], reshape, reduce


def _gemm(reader, node):
    attributes = reader.attributes(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0})
    if attributes["alpha"] != 1 or attributes["beta"] != 1 or attributes["transA"]:
        raise Unsupported(f"only alpha=1, beta=1, transA=0 are supported, got {attributes}")
    weight = reader.constant(node.input[1], "B")
    weight = weight if attributes["transB"] else weight.T
    bias = reader.constant(node.input[2], "C") if len(node.input) > 2 and node.input[2] else None
    return _affine_map(reader, node, node, weight, bias)


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
    return _affine_map(reader, node, add or node, weight, bias)


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
    if slope.ndim > len(shape) + 1:  # ONNX would broadcast the output to the slope's rank
        raise Unsupported(f"its slope of shape {slope.shape} has {slope.ndim} axes, expected at "
                          f"most {len(shape) + 1}, the input's (per-sample shape {shape})")
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
    hints = reader.hints(node, cls.name)[0]
    if hints.get("padding") == "same" and set(window["stride"]) == {1} and \
            window["padding"] == [(k - 1) // 2 for k in attributes["effective_kernel"]]:
        # The export writes a dilated "same" out as even pads (see corenet.onnx.export)
        window["padding"] = "same"
    layer = cls(weight.shape[1] * group, weight.shape[0], dilation=dilation, groups=group,
                bias=bias is not None, dtype=reader.dtype, **window,
                **_options(hints, INIT_OPTIONS))
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


def _float_option(config: dict, key: str, stored: float) -> float:
    """A float ONNX keeps as float32 (epsilon): the exported layer's own value when it
    rounds to the stored one, else the shortest decimal of the float32."""
    exact = config.get(key)
    if isinstance(exact, float) and np.float32(exact) == np.float32(stored):
        return exact
    return _decimal(stored)


def _has_affine(config: dict, key: str, scale, bias) -> bool:
    """False when the export said the layer had no affine parameters (config[key] is
    False) and the scale and bias are the ones and zeros written in their place."""
    return not (config.get(key) is False and np.all(scale == 1)
                and (bias is None or np.all(bias == 0)))


def _one_output(reader, node, what: str) -> None:
    """Refuse a node whose optional outputs after the first are used."""
    used = [name for name in node.output[1:] if name and (
        name in reader.consumers or name in reader.graph_outputs)]
    if used:
        raise Unsupported(f"its output(s) {used} are used: corenet's layer returns {what} only")


def _batch_norm_layer(reader, node, epsilon: float, momentum, scale, bias, running=None):
    """BatchNorm1d or 2d, by the input's rank, with the running statistics
    {"running_mean": ..., "running_var": ...} or, when None, the batch's."""
    shape = reader.tensor(node.input[0]).shape
    if len(shape) not in (1, 2, 3):
        raise Unsupported(f"batch normalisation of a {len(shape) + 1}-D input: corenet has "
                          f"BatchNorm1d ((N, C) or (N, C, L)) and BatchNorm2d (N, C, H, W)")
    cls = _layers().BatchNorm1d if len(shape) < 3 else _layers().BatchNorm2d
    channels = shape[0]
    for what, array in {"scale": scale, "bias": bias, **(running or {})}.items():
        if array.shape != (channels,):
            raise Unsupported(f"its {what} has shape {array.shape}, expected ({channels},): "
                              f"one per channel of the input, per-sample shape {shape}")
    config, counts = reader.hints(node, cls.name)
    affine = _has_affine(config, "affine", scale, bias)
    layer = cls(channels, _float_option(config, "eps", epsilon), config.get("momentum", momentum),
                affine, running is not None, dtype=reader.dtype)
    if affine:
        _set(layer.weight, scale)
        _set(layer.bias, bias)
    if running is not None:
        count = counts.get("num_batches_tracked", 0)
        most = np.iinfo(layer.num_batches_tracked.value.dtype).max  # the count is an int64
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= most:
            raise Unsupported(f"its corenet metadata's num_batches_tracked must be a count, "
                              f"an integer from 0 to {most}, got {count!r}")
        _set(layer.running_mean, running["running_mean"])
        _set(layer.running_var, running["running_var"])
        layer.num_batches_tracked.value[...] = count
    return layer


def _batch_normalization(reader, node):
    """BatchNormalization in inference (training_mode=0): by its running statistics."""
    attributes = reader.attributes(node, {"epsilon": 1e-5, "momentum": 0.9,
                                          "training_mode": 0})
    if attributes["training_mode"]:
        raise Unsupported("training_mode=1 normalises by the batch and outputs new running "
                          "statistics; corenet imports the inference form, training_mode=0")
    _one_output(reader, node, "the normalised tensor")
    names = ("scale", "bias", "running_mean", "running_var")
    arrays = {what: reader.constant(name, what) for what, name in zip(names, node.input[1:])}
    # ONNX's running average keeps momentum of the old value, PyTorch's of the new.
    momentum = _decimal(1 - _decimal(attributes["momentum"]))
    layer = _batch_norm_layer(reader, node, attributes["epsilon"], momentum, arrays.pop("scale"),
                              arrays.pop("bias"), arrays)
    return layer, node.input[:1], node.output[0]


def _batch_statistics_norm(reader, node):
    """Unsqueeze(axes [0]), Transpose, InstanceNormalization, Transpose, Squeeze(axes [0]),
    both transposes swapping axes 1 and 2: corenet's export of a batch norm without
    running statistics (the batch, as one sample of channels (1, C, N, ...), has its
    statistics as instance statistics)."""
    reader.attributes(node, {})
    chain = [node]
    for op_type in ("Transpose", "InstanceNormalization", "Transpose", "Squeeze"):
        following = reader.next_node(chain[-1], op_type)
        if following is None:
            raise Unsupported("Unsqueeze is imported as the start of Unsqueeze(axes [0]), "
                              "Transpose, InstanceNormalization, Transpose, Squeeze(axes [0]): "
                              "batch normalisation by the batch's statistics")
        chain.append(following)
    _, transpose, norm, transpose_back, squeeze = chain
    perm = [0, 2, 1] + list(range(3, len(reader.tensor(node.input[0]).shape) + 2))
    perms = [reader.attributes(t, {"perm": None})["perm"] for t in (transpose, transpose_back)]
    axes = [reader.integers(n.input[1], "axes") if len(n.input) > 1 else None
            for n in (node, squeeze)]
    if perms != [perm, perm] or axes != [[0], [0]]:
        raise Unsupported(f"Unsqueeze/Squeeze axes {axes} and Transpose perms {perms}: the "
                          f"pattern needs axes [0] and perm {perm}")
    epsilon = reader.attributes(norm, {"epsilon": 1e-5})["epsilon"]
    scale = reader.constant(norm.input[1], "scale")
    bias = reader.constant(norm.input[2], "bias")
    layer = _batch_norm_layer(reader, node, epsilon, 0.1, scale, bias)
    reader.absorbed.update(id(n) for n in chain[1:])
    return layer, node.input[:1], squeeze.output[0]


def _layer_normalization(reader, node):
    attributes = reader.attributes(node, {"axis": -1, "epsilon": 1e-5, "stash_type": 1})
    _one_output(reader, node, "the normalised tensor (no Mean, InvStdDev)")
    shape = reader.tensor(node.input[0]).shape
    ndim, axis = len(shape) + 1, attributes["axis"]
    if not -ndim <= axis < ndim or axis % ndim == 0:
        raise Unsupported(f"normalisation from axis {axis} of a {ndim}-D input: corenet "
                          f"normalises axes after the batch")
    normalized = shape[axis % ndim - 1:]
    scale = reader.constant(node.input[1], "scale")
    bias = reader.constant(node.input[2], "bias") if len(node.input) > 2 and node.input[2] \
        else None
    for what, array in (("scale", scale), ("bias", bias)):
        if array is not None and array.shape != normalized:
            raise Unsupported(f"its {what} has shape {array.shape}, expected {normalized}, "
                              f"the normalised axes")
    config = reader.hints(node, "layer_norm")[0]
    affine = _has_affine(config, "elementwise_affine", scale, bias)
    # Without affine parameters the bias flag does nothing: the export's, when it said.
    with_bias = bias is not None if affine else config.get("bias", True)
    layer = _layers().LayerNorm(normalized, _float_option(config, "eps", attributes["epsilon"]),
                                affine, with_bias, dtype=reader.dtype)
    if affine:
        _set(layer.weight, scale)
        if bias is not None:
            _set(layer.bias, bias)
    return layer, node.input[:1], node.output[0]


def _dropout(reader, node):
    """Dropout in inference: the identity, its ratio kept as the layer's p."""
    reader.attributes(node, {"seed": 0})  # the seed of masks inference never draws
    _one_output(reader, node, "the tensor (no mask)")
    if len(node.input) > 2 and node.input[2]:
        mode = reader.initializers.get(node.input[2])
        if mode is None or reader.array(mode).any():
            raise Unsupported("its training_mode input is not a constant false: corenet "
                              "imports the inference form, where dropout is the identity")
    p = 0.5  # ONNX's default ratio
    if len(node.input) > 1 and node.input[1]:
        tensor = reader.initializers.get(node.input[1])
        ratio = None if tensor is None else reader.array(tensor)
        if ratio is None or ratio.dtype.kind != "f" or ratio.size != 1:
            raise Unsupported(f"its ratio {node.input[1]!r} must be a float initializer "
                              f"holding one value")
        value = ratio.reshape(-1)[0]
        p = _decimal(value) if ratio.dtype == np.float32 else float(value)
    return _layers().Dropout(p), node.input[:1], node.output[0]


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
    "BatchNormalization": _batch_normalization, "Unsqueeze": _batch_statistics_norm,
    "LayerNormalization": _layer_normalization, "Dropout": _dropout,
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
    except Exception as error:  # a name of invalid UTF-8 fails in decoding, not validation
        _fail(path, f"onnx.checker cannot read it: {type(error).__name__}: {error}")
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
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) \
                if tensor_type.elem_type else None
        except KeyError:  # an element type onnx does not know
            dtype = f"code {tensor_type.elem_type}"
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
    exported by ``corenet.onnx.export`` comes back layer for layer, exactly. It comes
    in evaluation mode, computing what the file computes (``model.train()`` to train)."""
    onnx = require_onnx()
    proto = _read(onnx, path)
    graph = proto.graph
    inputs, dtype = _inputs(onnx, path, graph, {tensor.name for tensor in graph.initializer})
    reader = OnnxReader(onnx, graph, dtype,
                        {entry.key: entry.value for entry in proto.metadata_props})
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
        model = Model([reader.tensors[name] for name, _ in inputs],
                      [reader.tensors[value.name] for value in graph.output])
    except (ValueError, TypeError) as error:
        _fail(path, f"the graph is not a valid model: {error}")
    return model.eval()
