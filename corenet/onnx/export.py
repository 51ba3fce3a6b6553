"""corenet -> ONNX: one exporter per layer name, each adding its layer's nodes.

Tensors are named after the corenet graph: the model's input "input" (or its Input
name), initializers "<node index>.<parameter>" as in ``Model.state_dict()``, the
output "output". The batch axis is dynamic ("batch"); every other axis is fixed.

An ONNX graph is for inference: the export computes what ``model.predict`` does,
the evaluation mode (dropout the identity, batch norm by its running statistics),
whatever mode the model is in. What ONNX has no place for, a layer's training
options (batch norm's momentum, an init=) and its integer counts
(num_batches_tracked), is kept in the model's metadata under "corenet:<name of the
layer's first node>" as JSON, for ``load`` to give back the same layer; the file
computes the same without it.
"""
from __future__ import annotations

import json

import numpy as np

from corenet.errors import PluginError

DEFAULT_OPSET = 17  # the oldest opset accepted: the ops below are stable since 13-17


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError('corenet.onnx needs the onnx package: pip install "corenet[onnx]"'
                          ) from None
    return onnx


class OnnxGraph:
    """The graph an export builds: exporters call ``node``, ``parameter``, ``constant``
    and ``axes``."""

    def __init__(self, onnx, dtype: np.dtype, opset: int = DEFAULT_OPSET):
        self.onnx = onnx
        self.opset = opset
        self.dtype = np.dtype(dtype)
        self.elem_type = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers, self.shapes = [], [], {}
        self.prefix = ""
        self._index = None
        self._names = set()

    def begin(self, index: int, layer) -> None:
        """Nodes added from now on belong to node ``index`` of the corenet model."""
        self._index, self.prefix = index, f"{index}.{layer.name}"

    def _unique(self, name: str) -> str:
        candidate, suffix = name, 1
        while candidate in self._names:
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        self._names.add(candidate)
        return candidate

    def node(self, op_type: str, inputs: list, **attributes) -> str:
        """Add an ONNX node of the default domain; returns the name of its one output."""
        output = self._unique(f"{self.prefix}/{op_type}")
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output],
                                                     name=output, **attributes))
        return output

    def parameter(self, layer, name: str, shape: tuple | None = None) -> str:
        """The layer's parameter or state buffer ``name`` as an initializer (reshaped to
        ``shape``)."""
        value = {array.name: array.value
                 for array in layer.parameters() + layer.state_buffers()}[name]
        return self.constant(name, value if shape is None else value.reshape(shape))

    def constant(self, name: str, value) -> str:
        """An initializer named "<node index>.<name>" holding ``value`` (a numpy array)."""
        key = self._unique(f"{self._index}.{name}")
        # np.asarray, not ascontiguousarray: that makes a 0-d ratio 1-d.
        self.initializers.append(self.onnx.numpy_helper.from_array(
            np.asarray(value, order="C"), key))
        return key

    def axes(self, op_type: str, inputs: list, axes: list, opset_moved: int, **attributes):
        """A node that takes its axes as an attribute before opset ``opset_moved`` and as
        an int64 input from then on (ReduceMax since 18, say)."""
        if self.opset < opset_moved:
            return self.node(op_type, inputs, axes=axes, **attributes)
        return self.node(op_type, inputs + [self.constant("axes", np.array(axes, np.int64))],
                         **attributes)

    def shape(self, name: str) -> tuple:
        """The per-sample shape (no batch axis) of a tensor of the graph."""
        return self.shapes[name]

    def value_info(self, name: str, shape: tuple):
        return self.onnx.helper.make_tensor_value_info(name, self.elem_type,
                                                       ["batch", *shape])


# -- the exporters of corenet's own layers ---------------------------------------------

def _linear(graph, layer, inputs):
    operands = [inputs[0], graph.parameter(layer, "weight")]
    if layer.bias is not None:
        operands.append(graph.parameter(layer, "bias"))
    return graph.node("Gemm", operands, transB=1)


def _window_attributes(window) -> dict:
    return {"kernel_shape": list(window.kernel), "strides": list(window.stride),
            "pads": list(window.pad_before + window.pad_after)}


def _conv(graph, layer, inputs):
    operands = [inputs[0], graph.parameter(layer, "weight")]
    if layer.bias is not None:
        operands.append(graph.parameter(layer, "bias"))
    window = _window_attributes(layer.window)
    # "same" pads the odd one after, as SAME_UPPER does; kept by name, so that the import
    # gives back the same config. Not with a dilation: onnxruntime refuses to run SAME_*
    # with one ("Dilation not supported"), so those pads are written out (the import
    # takes them, and the metadata, back to "same").
    if layer.window.padding_config == "valid" or (
            layer.window.padding_config == "same" and set(layer.window.dilation) == {1}):
        del window["pads"]
        window["auto_pad"] = {"same": "SAME_UPPER", "valid": "VALID"}[layer.window.padding_config]
    return graph.node("Conv", operands, dilations=list(layer.window.dilation),
                      group=layer.groups, **window)


def _pool(graph, layer, inputs):
    if layer.is_max:
        return graph.node("MaxPool", inputs, **_window_attributes(layer.window))
    return graph.node("AveragePool", inputs, count_include_pad=1,
                      **_window_attributes(layer.window))


def _prelu(graph, layer, inputs):
    # ONNX broadcasts the slope from the right: one per channel (axis 1) is (C, 1, ..., 1).
    spatial = len(graph.shape(inputs[0])) - 1
    shape = (1,) if layer.num_parameters == 1 else (layer.num_parameters,) + (1,) * spatial
    return graph.node("PRelu", [inputs[0], graph.parameter(layer, "weight", shape)])


def _maxout(graph, layer, inputs):
    """Gemm to the out·pieces affine maps, Reshape to (batch, out, pieces) (0 keeps the
    batch: allowzero=0), ReduceMax over the pieces."""
    rows = layer.out_features * layer.pieces
    operands = [inputs[0], graph.parameter(layer, "weight", (rows, layer.in_features))]
    if layer.bias is not None:
        operands.append(graph.parameter(layer, "bias", (rows,)))
    shape = graph.constant("shape", np.array([0, layer.out_features, layer.pieces], np.int64))
    pieces = graph.node("Reshape", [graph.node("Gemm", operands, transB=1), shape])
    return graph.axes("ReduceMax", [pieces], [2], opset_moved=18, keepdims=0)


def _batch_norm(graph, layer, inputs):
    if layer.affine:
        affine = [graph.parameter(layer, "weight"), graph.parameter(layer, "bias")]
    else:  # the operators take a scale and a bias: 1 and 0
        affine = [graph.constant("weight", np.ones(layer.num_features, graph.dtype)),
                  graph.constant("bias", np.zeros(layer.num_features, graph.dtype))]
    if layer.track_running_stats:
        running = [graph.parameter(layer, "running_mean"), graph.parameter(layer, "running_var")]
        momentum = {} if layer.momentum is None else {"momentum": 1 - layer.momentum}
        return graph.node("BatchNormalization", inputs + affine + running,
                          epsilon=layer.eps, training_mode=0, **momentum)
    # Without running statistics the batch's serve in evaluation too. ONNX's
    # BatchNormalization takes them only with training_mode=1, which onnxruntime's
    # inference build ignores (it still reads the running statistics given); but the
    # batch seen as one sample (1, C, N, ...) has them as its instance statistics.
    batch_first = graph.constant("axes", np.array([0], np.int64))
    perm = [0, 2, 1] + list(range(3, len(graph.shape(inputs[0])) + 2))
    channels_first = graph.node("Transpose", [graph.node("Unsqueeze", [inputs[0], batch_first])],
                                perm=perm)
    normalized = graph.node("InstanceNormalization", [channels_first] + affine,
                            epsilon=layer.eps)
    return graph.node("Squeeze", [graph.node("Transpose", [normalized], perm=perm),
                                  batch_first])


def _layer_norm(graph, layer, inputs):
    shape = layer.normalized_shape
    if layer.weight is None:
        operands = [graph.constant("weight", np.ones(shape, graph.dtype))]
    else:
        operands = [graph.parameter(layer, "weight")]
        if layer.bias is not None:
            operands.append(graph.parameter(layer, "bias"))
    return graph.node("LayerNormalization", inputs + operands, axis=-len(shape),
                      epsilon=layer.eps)


def _dropout(graph, layer, inputs):
    # Evaluation mode (no training_mode input): the identity; the ratio keeps p.
    return graph.node("Dropout", [inputs[0], graph.constant("ratio",
                                                            np.array(layer.p, graph.dtype))])


EXPORTERS = {
    "linear": _linear,
    "maxout": _maxout,
    "batch_norm1d": _batch_norm, "batch_norm2d": _batch_norm,
    "layer_norm": _layer_norm,
    "dropout": _dropout,
    "conv2d": _conv, "conv3d": _conv,
    "max_pool2d": _pool, "max_pool3d": _pool, "avg_pool2d": _pool, "avg_pool3d": _pool,
    "global_avg_pool": lambda graph, layer, inputs: graph.node(
        "Flatten", [graph.node("GlobalAveragePool", inputs)], axis=1),
    "flatten": lambda graph, layer, inputs: graph.node("Flatten", inputs, axis=1),
    "relu": lambda graph, layer, inputs: graph.node("Relu", inputs),
    "sigmoid": lambda graph, layer, inputs: graph.node("Sigmoid", inputs),
    "tanh": lambda graph, layer, inputs: graph.node("Tanh", inputs),
    "leaky_relu": lambda graph, layer, inputs: graph.node("LeakyRelu", inputs,
                                                          alpha=layer.negative_slope),
    "elu": lambda graph, layer, inputs: graph.node("Elu", inputs, alpha=layer.alpha),
    "prelu": _prelu,
    "softmax": lambda graph, layer, inputs: graph.node("Softmax", inputs, axis=-1),
    "add": lambda graph, layer, inputs: graph.node("Add" if len(inputs) == 2 else "Sum",
                                                   inputs),
    "concat": lambda graph, layer, inputs: graph.node("Concat", inputs, axis=layer.axis),
}


def exporters() -> dict:
    """EXPORTERS and those the plugins provide through ``corenet_onnx_exporters``."""
    from corenet.registry import registry

    table, owners = dict(EXPORTERS), dict.fromkeys(EXPORTERS, "corenet")
    hook = registry.load().plugin_manager.hook.corenet_onnx_exporters
    for implementation in hook.get_hookimpls():
        info = registry.plugins.get(implementation.plugin_name)
        owner = info.distribution if info else implementation.plugin_name
        provided = implementation.function() or {}
        if not isinstance(provided, dict) or not all(
                isinstance(name, str) and callable(function) for name, function in provided.items()):
            raise PluginError(f"corenet_onnx_exporters of {owner!r} must return "
                              f"{{layer name: function}}, got {provided!r}")
        for name, function in provided.items():
            if name in table:
                raise PluginError(f"the ONNX export of layer {name!r} is provided twice: "
                                  f"by {owners[name]!r} and by {owner!r}")
            table[name], owners[name] = function, owner
    return table


def to_onnx(model, opset: int = DEFAULT_OPSET):
    """The model as an onnx.ModelProto, checked by onnx.checker."""
    onnx = require_onnx()
    if not isinstance(opset, int) or not DEFAULT_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be an integer from {DEFAULT_OPSET} to "
                         f"{onnx.defs.onnx_opset_version()} (this onnx's newest), got {opset!r}")
    graph = OnnxGraph(onnx, model.dtype, opset)
    table = exporters()
    metadata = {}
    names = {}  # id(symbolic tensor) -> ONNX name
    inputs = []
    output_names = ["output"] if len(model.outputs) == 1 else \
        [f"output{index}" for index in range(len(model.outputs))]
    for index, tensor in enumerate(model.inputs):
        name = tensor.name or ("input" if len(model.inputs) == 1 else f"input{index}")
        # An ONNX name is one tensor's: an input that shared its name with an initializer
        # ("0.weight") was read as that weight by onnxruntime, silently.
        if not isinstance(name, str):
            raise TypeError(f"corenet.onnx.export: the name of input {index} must be a "
                            f"string, got {name!r}")
        if name in graph._names or name in output_names:
            raise ValueError(f"corenet.onnx.export: input {index} is named {name!r}, as "
                             f"{'another input' if name in graph._names else 'an output'}"
                             f" is; ONNX names each tensor once (the outputs are "
                             f"{', '.join(output_names)})")
        graph._names.add(name)  # initializers and nodes take other names
        names[id(tensor)] = name
        graph.shapes[name] = tensor.shape
        inputs.append(graph.value_info(name, tensor.shape))
    for index, node in enumerate(model.nodes):
        exporter = table.get(node.layer.name)
        if exporter is None:
            raise ValueError(f"corenet.onnx.export: no ONNX conversion for layer "
                             f"{node.layer.name!r} (node {index}); converted: "
                             f"{', '.join(sorted(table))}. A plugin provides the conversion "
                             f"of its layers through the corenet_onnx_exporters hook")
        graph.begin(index, node.layer)
        first = len(graph.nodes)
        output = exporter(graph, node.layer, [names[id(tensor)] for tensor in node.inputs])
        entry = _layer_metadata(node.layer)
        if entry and len(graph.nodes) > first:
            metadata[f"corenet:{graph.nodes[first].name}"] = entry
        names[id(node.output)] = output
        graph.shapes[output] = node.output.shape
    outputs = _name_outputs(graph, [names[id(tensor)] for tensor in model.outputs],
                           {value.name for value in inputs})
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, "corenet", inputs,
                               [graph.value_info(name, graph.shapes[name]) for name in outputs],
                               graph.initializers),
        opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="corenet")
    onnx.helper.set_model_props(proto, metadata)
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _layer_metadata(layer) -> str | None:
    """The layer's name, config and integer buffers (counts no ONNX operator reads) as
    JSON; None for a layer with neither (an activation)."""
    config = layer.get_config()
    counts = {buffer.name: int(buffer.value) for buffer in layer.state_buffers()
              if buffer.value.dtype.kind in "iu" and buffer.value.ndim == 0}
    if not config and not counts:
        return None
    return json.dumps({"layer": layer.name, "config": config, "counts": counts})


def _name_outputs(graph: OnnxGraph, outputs: list, input_names: set) -> list:
    """Rename the tensors the model returns "output" (output0, output1, ... for several);
    one that is a model input, or is returned twice, goes through an Identity."""
    final, renamed = [], {}
    for index, old in enumerate(outputs):
        new = "output" if len(outputs) == 1 else f"output{index}"
        if old in renamed or old in input_names:
            graph.nodes.append(graph.onnx.helper.make_node(
                "Identity", [renamed.get(old, old)], [new], name=new))
        else:
            renamed[old] = new
        graph.shapes[new] = graph.shapes[old]
        final.append(new)
    for node in graph.nodes:
        for field in (node.input, node.output):
            field[:] = [renamed.get(name, name) for name in field]
    return final


def export(model, path: str, opset: int = DEFAULT_OPSET) -> None:
    """Write ``model`` as an ONNX file (opset ``opset``, 17 or newer) with a dynamic batch
    axis, computing what ``model.predict`` computes (evaluation mode); written to a
    temporary file and renamed, as corenet.save does."""
    from corenet.serialize import write_atomically

    proto = to_onnx(model, opset)
    # As corenet.save writes: the file 0644-like (mkstemp's 0600 kept other users out),
    # synced before the rename, and the leftover of a write killed outright removed by
    # the next one.
    write_atomically(path, lambda stream: stream.write(proto.SerializeToString()))
