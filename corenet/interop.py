"""PyTorch models in and out: ``from_torch(module)`` and ``to_torch(model)``.

corenet lays out parameters as PyTorch does, so a conversion copies arrays as they
are. Both directions take chains: a torch.nn.Sequential (nested ones are flattened)
of the layers corenet has, and a corenet model whose nodes form one chain.

>>> import torch, corenet.interop as interop
>>> module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
>>> interop.from_torch(module).state_dict().keys()
dict_keys(['0.weight', '0.bias'])

torch is imported only when these functions run; corenet does not depend on it.
"""
from __future__ import annotations

import numpy as np

from corenet.errors import DTypeError, ShapeError
from corenet.graph import Model, Sequential
from corenet.layer import Buffer, buffer_array, parameter_arrays
from corenet.state import count_problem


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("corenet.interop needs PyTorch: pip install torch") from None
    return torch


# -- PyTorch -> corenet: one function per torch.nn class name, module -> corenet layer ------

def _copy(array, tensor) -> None:
    """Copy a torch tensor into a corenet Parameter or Buffer of exactly its shape (numpy
    would broadcast a (1, 4) weight into every row of a (3, 4) one)."""
    target = array.value
    if tensor is None:
        raise ValueError(f"{array.name} is None, expected a tensor of shape {target.shape}")
    value = tensor.detach().cpu().numpy()
    if value.shape != target.shape:
        raise ShapeError(f"{array.name} has shape {tuple(value.shape)}, expected "
                         f"{target.shape}")
    _check_count("", array.name, value, target)
    try:
        np.copyto(target, value, casting="same_kind")
    except TypeError:  # a float count, say
        raise DTypeError(f"{array.name} is {value.dtype}, expected {target.dtype}") from None


def _check_count(owner: str, name: str, value: np.ndarray, target: np.ndarray) -> None:
    """load_state_dict's check of a count: a momentum=None batch norm divides by it."""
    problem = count_problem(name, value, target)
    if problem:
        raise ValueError(f"{owner}{problem}")


def _linear(L, m, dtype):
    layer = L.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype)
    _copy(layer.weight, m.weight)
    if m.bias is not None:
        _copy(layer.bias, m.bias)
    return layer


def _conv(L, m, dtype):
    if m.padding_mode != "zeros":
        raise ValueError(f"padding_mode={m.padding_mode!r}: corenet pads with zeros only")
    cls = L.Conv2d if type(m).__name__ == "Conv2d" else L.Conv3d
    padding = m.padding if isinstance(m.padding, str) else list(m.padding)
    layer = cls(m.in_channels, m.out_channels, list(m.kernel_size), list(m.stride), padding,
                list(m.dilation), m.groups, bias=m.bias is not None, dtype=dtype)
    _copy(layer.weight, m.weight)
    if m.bias is not None:
        _copy(layer.bias, m.bias)
    return layer


def _pool(L, m, dtype):
    name = type(m).__name__
    if name.startswith("Max") and (set(np.atleast_1d(m.dilation)) != {1} or m.return_indices):
        raise ValueError("dilation and return_indices are not supported")
    if name.startswith("Avg") and (not m.count_include_pad or m.divisor_override):
        raise ValueError("corenet averages with count_include_pad=True and no divisor_override")
    if m.ceil_mode:
        raise ValueError("ceil_mode=True is not supported")
    return getattr(L, name)(m.kernel_size, m.stride, m.padding)


def _prelu(L, m, dtype):
    layer = L.PReLU(m.num_parameters, dtype=dtype)
    _copy(layer.weight, m.weight)
    return layer


def _batch_norm(L, m, dtype):
    cls = L.BatchNorm1d if type(m).__name__ == "BatchNorm1d" else L.BatchNorm2d
    layer = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                dtype=dtype)
    for array in layer.parameters() + layer.state_buffers():
        _copy(array, getattr(m, array.name))
    return layer


def _layer_norm(L, m, dtype):
    # Without elementwise_affine torch keeps neither weight nor bias (nor the bias flag).
    with_bias = m.bias is not None if m.elementwise_affine else True
    layer = L.LayerNorm(tuple(m.normalized_shape), m.eps, m.elementwise_affine, with_bias,
                        dtype=dtype)
    for parameter in layer.parameters():
        _copy(parameter, getattr(m, parameter.name))
    return layer


def _flatten(L, m, dtype):
    if (m.start_dim, m.end_dim) != (1, -1):
        raise ValueError(f"corenet flattens every axis after the batch (start_dim=1, "
                         f"end_dim=-1), got start_dim={m.start_dim}, end_dim={m.end_dim}")
    return L.Flatten()


def _softmax(L, m, dtype):
    if m.dim is None:
        raise ValueError("Softmax(dim=None) is ambiguous: give dim=-1 (corenet's last axis)")
    layer = L.Softmax()
    layer._torch_dim = m.dim  # checked against the input's ndim once the chain is built
    return layer


FROM_TORCH = {
    "Linear": _linear,
    "Conv2d": _conv, "Conv3d": _conv,
    "MaxPool2d": _pool, "MaxPool3d": _pool, "AvgPool2d": _pool, "AvgPool3d": _pool,
    "ReLU": lambda L, m, dtype: L.ReLU(),
    "Sigmoid": lambda L, m, dtype: L.Sigmoid(),
    "Tanh": lambda L, m, dtype: L.Tanh(),
    "LeakyReLU": lambda L, m, dtype: L.LeakyReLU(m.negative_slope),
    "ELU": lambda L, m, dtype: L.ELU(m.alpha),
    "PReLU": _prelu,
    "Softmax": _softmax,
    "BatchNorm1d": _batch_norm, "BatchNorm2d": _batch_norm,
    "LayerNorm": _layer_norm,
    "Dropout": lambda L, m, dtype: L.Dropout(m.p),
    "Flatten": _flatten,
    "Identity": lambda L, m, dtype: None,
}
ADAPTIVE_AVERAGE = ("AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d")


def _leaves(module, prefix: str = "") -> list:
    """[(path, module)] of a Sequential, nested Sequentials flattened ("1.0", "1.1")."""
    torch = _torch()
    leaves = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, torch.nn.Sequential):
            leaves += _leaves(child, path + ".")
        else:
            leaves.append((path, child))
    return leaves


def _is_torch_class(module, names) -> bool:
    return type(module).__name__ in names and type(module).__module__.startswith("torch.nn")


def from_torch(module, input_shape=None) -> Sequential:
    """A corenet Sequential equal to ``module`` (a torch.nn.Sequential, or one layer),
    weights copied, in its dtype (float32 or float64).

    ``input_shape`` (per sample, no batch axis) is needed unless the first layer is a
    Linear. AdaptiveAvgPool{1,2,3}d(1) followed by Flatten() becomes GlobalAvgPool;
    Identity is dropped. A layer corenet lacks is a ValueError naming it and its path.
    Each layer takes its module's mode (a BatchNorm in eval mode inside a Sequential in
    training mode stays in eval mode).
    """
    torch = _torch()
    from corenet import layers as L

    leaves = _leaves(module) if isinstance(module, torch.nn.Sequential) else [("", module)]
    arrays = list(module.parameters()) + [buffer for buffer in module.buffers()
                                          if buffer.is_floating_point()]
    dtype = str(arrays[0].dtype).replace("torch.", "") if arrays else "float32"
    converted, index = [], 0
    while index < len(leaves):
        path, child = leaves[index]
        where = f"{type(child).__name__} at {path!r}" if path else type(child).__name__
        if _is_torch_class(child, ADAPTIVE_AVERAGE):
            following = leaves[index + 1][1] if index + 1 < len(leaves) else None
            size = child.output_size
            if set(size if isinstance(size, tuple) else (size,)) != {1} or following is None \
                    or not _is_torch_class(following, ("Flatten",)):
                raise ValueError(f"from_torch: {where}: corenet has global average pooling "
                                 f"only, as AdaptiveAvgPool(1) followed by Flatten()")
            _flatten(L, following, dtype)  # start_dim=1, end_dim=-1 only
            converted.append((path, L.GlobalAvgPool(), child))
            index += 2
            continue
        if not _is_torch_class(child, FROM_TORCH):
            raise ValueError(f"from_torch: corenet has no layer for {where}; it converts "
                             f"{', '.join(sorted(FROM_TORCH))} and nested Sequentials")
        try:
            layer = FROM_TORCH[type(child).__name__](L, child, dtype)
        except (ValueError, DTypeError) as error:
            kind = type(error) if type(error) in (ShapeError, DTypeError) else ValueError
            raise kind(f"from_torch: {where}: {error}") from None
        if layer is not None:
            converted.append((path, layer, child))
        index += 1
    if not converted:
        raise ValueError("from_torch: the module has no layer to convert")
    model = Sequential(*(layer for _, layer, _ in converted), input_shape=input_shape)
    for path, layer, _ in converted:
        dim = getattr(layer, "_torch_dim", None)
        ndim = len(layer._node.inputs[0].shape) + 1
        if dim is not None and dim % ndim != ndim - 1:
            raise ValueError(f"from_torch: Softmax at {path!r} has dim={dim} on {ndim}-D "
                             f"inputs; corenet's softmax takes the last axis")
    for _, layer, child in converted:  # a torch module's own mode: a BatchNorm in eval
        layer.train(child.training)
    return model


# -- corenet -> PyTorch: one function per layer name, (layer, input shape) -> modules ----

def _torch_linear(nn, layer, shape):
    return [nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)]


def _torch_conv(nn, layer, shape):
    config = layer.get_config()
    padding = config["padding"]
    cls = nn.Conv2d if layer.name == "conv2d" else nn.Conv3d
    return [cls(layer.in_channels, layer.out_channels, _tuple(config["kernel_size"]),
                _tuple(config["stride"]), padding if isinstance(padding, str) else _tuple(padding),
                _tuple(config["dilation"]), layer.groups, bias=layer.bias is not None)]


def _torch_pool(nn, layer, shape):
    config = layer.get_config()
    cls = {"max_pool2d": nn.MaxPool2d, "max_pool3d": nn.MaxPool3d,
           "avg_pool2d": nn.AvgPool2d, "avg_pool3d": nn.AvgPool3d}[layer.name]
    return [cls(*(_tuple(config[key]) for key in ("kernel_size", "stride", "padding")))]


def _torch_global_avg_pool(nn, layer, shape):
    spatial_axes = len(shape) - 1
    if not 1 <= spatial_axes <= 3:
        raise ValueError(f"global_avg_pool over {spatial_axes} spatial axes has no torch "
                         f"AdaptiveAvgPool")
    return [getattr(nn, f"AdaptiveAvgPool{spatial_axes}d")(1), nn.Flatten()]


def _torch_batch_norm(nn, layer, shape):
    cls = nn.BatchNorm1d if layer.name == "batch_norm1d" else nn.BatchNorm2d
    return [cls(layer.num_features, layer.eps, layer.momentum, layer.affine,
                layer.track_running_stats)]


def _torch_layer_norm(nn, layer, shape):
    return [nn.LayerNorm(layer.normalized_shape, layer.eps, layer.elementwise_affine,
                         layer.use_bias)]


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


TO_TORCH = {
    "linear": _torch_linear,
    "conv2d": _torch_conv, "conv3d": _torch_conv,
    "max_pool2d": _torch_pool, "max_pool3d": _torch_pool,
    "avg_pool2d": _torch_pool, "avg_pool3d": _torch_pool,
    "global_avg_pool": _torch_global_avg_pool,
    "relu": lambda nn, layer, shape: [nn.ReLU()],
    "sigmoid": lambda nn, layer, shape: [nn.Sigmoid()],
    "tanh": lambda nn, layer, shape: [nn.Tanh()],
    "leaky_relu": lambda nn, layer, shape: [nn.LeakyReLU(layer.negative_slope)],
    "elu": lambda nn, layer, shape: [nn.ELU(layer.alpha)],
    "prelu": lambda nn, layer, shape: [nn.PReLU(layer.num_parameters)],
    "softmax": lambda nn, layer, shape: [nn.Softmax(dim=-1)],
    "flatten": lambda nn, layer, shape: [nn.Flatten()],
    "batch_norm1d": _torch_batch_norm, "batch_norm2d": _torch_batch_norm,
    "layer_norm": _torch_layer_norm,
    "dropout": lambda nn, layer, shape: [nn.Dropout(layer.p)],
}


def _check_chain(model: Model) -> None:
    """Each node reads the one before it (the first: the one input); the last is the output."""
    previous = model.inputs[0] if len(model.inputs) == 1 else None
    for node in model.nodes:
        if len(node.inputs) != 1 or node.inputs[0] is not previous:
            raise ValueError(f"to_torch: {node.layer!r} does not follow the layer before it; "
                             f"torch.nn.Sequential holds chains only (one input, no add or "
                             f"concat of branches)")
        previous = node.output
    if len(model.outputs) != 1 or model.outputs[0] is not previous:
        raise ValueError("to_torch: the model's one output must be its last layer's")


def _checked_value(layer, array, target) -> np.ndarray:
    """The value of a Parameter or Buffer for the torch tensor ``target``, checked as the
    layer's kernels check it: torch would reshape a (4, 3) weight into (3, 4) silently."""
    shape = tuple(target.shape)
    if not isinstance(array, Buffer):
        return parameter_arrays(layer, array, shape, layer.dtype, with_grad=False)[0]
    # Running statistics follow the layer's dtype; a count keeps torch's (int64).
    dtype = layer.dtype if target.is_floating_point() else target.numpy().dtype
    value = buffer_array(layer, array, shape, dtype)
    _check_count(f"{layer.name}: ", array.name, value, value)
    return value


def to_torch(model: Model):
    """A torch.nn.Sequential equal to a chain ``model``, weights copied, in its dtype.

    Module indices follow the layers' (so the state dicts share keys, running statistics
    included), except that a global_avg_pool becomes two modules, AdaptiveAvgPool(1)
    and Flatten(). Each torch module takes its layer's mode (training or eval), and
    the Sequential is in training mode if any layer is.
    """
    torch = _torch()
    _check_chain(model)
    modules = []
    for node in model.nodes:
        layer = node.layer
        if layer.name not in TO_TORCH:
            raise ValueError(f"to_torch: no torch.nn module for corenet layer {layer.name!r}; "
                             f"converted: {', '.join(sorted(TO_TORCH))}")
        converted = TO_TORCH[layer.name](torch.nn, layer, node.inputs[0].shape)
        for array in layer.parameters() + layer.state_buffers():
            target = getattr(converted[0], array.name)
            value = _checked_value(layer, array, target)
            target.data = torch.from_numpy(value.copy())
        for module in converted:
            module.train(layer.training)
        modules += converted
    result = torch.nn.Sequential(*modules)
    result.to(torch.float64 if model.dtype == np.float64 else torch.float32)
    # Sequential.train would set every module's mode: the container's flag alone.
    result.training = any(layer.training for layer in model.layers)
    return result


__all__ = ["FROM_TORCH", "TO_TORCH", "from_torch", "to_torch"]
