"""The networks ``corenet train --model`` builds, and fitting data to a model's input.

>>> model = build_cnn((1, 8, 8), 10)
>>> model.inputs[0].shape
(1, 8, 8)
"""
from __future__ import annotations

import numpy as np

from corenet.data import square_side
from corenet.errors import ShapeError

MODELS = ("mlp", "cnn")


def build_mlp(n_features: int, hidden: list, n_classes: int, activation: str = "relu",
              dtype: str = "float32"):
    """Linear layers of the ``hidden`` sizes, each followed by ``activation``."""
    import corenet as cn
    from corenet import layers as L

    check_activation(activation)
    stack = []
    for n_in, n_out in zip([n_features] + hidden, hidden):
        stack += [L.Linear(n_in, n_out, dtype=dtype), L.create(activation)]
    stack.append(L.Linear(([n_features] + hidden)[-1], n_classes, dtype=dtype))
    return cn.Sequential(*stack)


def build_cnn(image_shape: tuple, n_classes: int, channels: tuple = (32, 64),
              activation: str = "relu", dtype: str = "float32"):
    """(conv 3x3, activation, max pool 2) for each of ``channels``, then a Linear.

    Padding keeps each convolution's size; pooling halves it (down to 1 pixel),
    so 8x8 digits become 64 channels of 2x2 before the Linear.
    """
    import corenet as cn
    from corenet import layers as L

    check_activation(activation)
    if len(image_shape) != 3:
        raise ShapeError(f"build_cnn: expected an image shape (channels, height, width), "
                         f"got {image_shape}")
    stack, depth, (height, width) = [], image_shape[0], image_shape[1:]
    for out_channels in channels:
        stack += [L.Conv2d(depth, out_channels, 3, padding=1, dtype=dtype),
                  L.create(activation)]
        if min(height, width) >= 2:
            stack.append(L.MaxPool2d(2))
            height, width = height // 2, width // 2
        depth = out_channels
    stack += [L.Flatten(), L.Linear(depth * height * width, n_classes, dtype=dtype)]
    return cn.Sequential(*stack, input_shape=tuple(image_shape))


def check_activation(name: str) -> None:
    """A registered layer that declares itself elementwise (Layer.elementwise), or a
    ValueError; an unknown name is the registry's error, with suggestions."""
    from corenet import layers as L
    from corenet.registry import registry

    cls = registry.layer(name)
    if not getattr(cls, "elementwise", False):
        choices = sorted(n for n in L.names() if getattr(registry.layer(n), "elementwise", False))
        raise ValueError(f"--activation {name}: not an elementwise activation; choose one of "
                         f"{', '.join(choices)}")


def holds_images(X: np.ndarray) -> bool:
    """Whether image_shape takes X."""
    return X.ndim in (3, 4) or (X.ndim == 2 and bool(square_side(X.shape[1])))


def image_shape(X: np.ndarray) -> tuple:
    """(channels, height, width) of a dataset: (N, C, H, W) as it is, (N, H, W) as one
    channel, (N, F) as one square channel when F is a square number."""
    if X.ndim == 4:
        return X.shape[1:]
    if X.ndim == 3:
        return (1,) + X.shape[1:]
    if holds_images(X):
        return (1,) + (square_side(X.shape[1]),) * 2
    raise ShapeError(f"a convolutional model needs images: (N, H, W), (N, C, H, W) or "
                     f"(N, F) with F a square number; got data of shape {X.shape}")


def as_model_input(model, X: np.ndarray) -> np.ndarray:
    """X reshaped to (N, *the model's per-sample input shape), or a ShapeError."""
    shape = model.inputs[0].shape
    if int(np.prod(X.shape[1:])) != int(np.prod(shape)):
        raise ShapeError(f"the model takes samples of shape {shape}, the data has samples "
                         f"of shape {X.shape[1:]}")
    return X.reshape((len(X),) + tuple(shape))
