"""A plain numpy reference of every built-in layer: ``REFERENCES[name](layer, *xs)``.

Each reads what it needs from the layer (parameters, slope, axis, window), so it
serves any valid config: the per-layer tests and the fuzz suite both use it.
Inputs are float64; NaN and infinities go through as numpy's own arithmetic takes
them (the maximum of a window holding NaN is NaN, as in PyTorch).
"""
import numpy as np

import numpy_vision


def sigmoid(x):
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def softmax(x):
    with np.errstate(invalid="ignore"):
        shifted = np.exp(x - x.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)


def prelu(layer, x):
    slope = layer.weight.value.astype(np.float64)
    if layer.num_parameters > 1:  # one slope per channel, the channel axis being 1
        slope = slope.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x > 0, x, slope * x)


REFERENCES = {
    "linear": lambda layer, x: x @ layer.weight.value.T.astype(np.float64)
    + (0 if layer.bias is None else layer.bias.value),
    "sigmoid": lambda layer, x: sigmoid(x),
    "tanh": lambda layer, x: np.tanh(x),
    "relu": lambda layer, x: np.maximum(x, 0),
    "leaky_relu": lambda layer, x: np.where(x > 0, x, layer.negative_slope * x),
    "prelu": prelu,
    "elu": lambda layer, x: np.where(x > 0, x, layer.alpha * np.expm1(np.minimum(x, 0))),
    "softmax": lambda layer, x: softmax(x),
    "add": lambda layer, *xs: sum(xs[1:], xs[0]),
    "concat": lambda layer, *xs: np.concatenate(xs, axis=layer.axis),
    "conv2d": numpy_vision.conv,
    "conv3d": numpy_vision.conv,
    "max_pool2d": lambda layer, x: numpy_vision.pool(layer, x, "max"),
    "max_pool3d": lambda layer, x: numpy_vision.pool(layer, x, "max"),
    "avg_pool2d": lambda layer, x: numpy_vision.pool(layer, x, "avg"),
    "avg_pool3d": lambda layer, x: numpy_vision.pool(layer, x, "avg"),
    "global_avg_pool": lambda layer, x: x.mean(axis=tuple(range(2, x.ndim))),
    "flatten": lambda layer, x: x.reshape(len(x), int(np.prod(x.shape[1:]))),
}
