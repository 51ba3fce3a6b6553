"""The explicit Jacobian ∂out/∂in of a layer or a model, one matrix per sample.

The lecture's back-propagation multiplies a gradient row vector by each layer's
Jacobian in turn; the Jacobian itself is never formed. Here it is: row j of
sample n's matrix is the backward of a unit gradient on output j of sample n,
and all the rows of a group of samples go through one batched backward.
"""
from __future__ import annotations

import copy

import numpy as np

from corenet.errors import ShapeError
from corenet.graph import Model
from corenet.layer import Layer
from corenet.memory import check_allocation


def jacobian(layer_or_model, x, max_rows: int = 4096) -> np.ndarray:
    """∂out/∂in for each sample of ``x``: an (N, out_size, in_size) float64 array,
    per-sample shapes flattened in C order.

    It runs on a float64 copy of the layer or model in evaluation mode, so the user's
    parameters, gradients, buffers and cached inputs are untouched. Samples must not
    depend on each other (true of every built-in layer in evaluation mode). Each batched
    backward takes at most ``max_rows`` rows, or one sample's out_size rows if larger.

    >>> import corenet.layers as L, numpy as np
    >>> jacobian(L.Tanh(), np.zeros((1, 2)))
    array([[[1., 0.],
            [0., 1.]]])
    """
    function = _float64_copy(layer_or_model)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"jacobian: expected a float array, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ShapeError(f"jacobian: expected a batch of samples, shape (N, ...) with N >= 1, "
                         f"got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float64)
    out_shape = function.forward(x[:1]).shape[1:]
    out_size, in_size = int(np.prod(out_shape)), int(np.prod(x.shape[1:]))
    # Refused before numpy tries: (10³ samples of 4096 → 4096) is 125 GiB, a bare
    # MemoryError, or with overcommit a process killed on first touch.
    check_allocation("jacobian", "the Jacobians", (len(x), out_size, in_size), np.float64)
    check_allocation("jacobian", "the unit gradients of one sample", (out_size, out_size),
                     np.float64)
    result = np.empty((len(x), out_size, in_size))
    group = max(1, max_rows // out_size)
    for start in range(0, len(x), group):
        samples = x[start:start + group]
        # Each sample repeated out_size times; copy r of a sample gets a gradient that
        # is 1 on output r and 0 elsewhere, so its input gradient is row r of J.
        function.forward(np.repeat(samples, out_size, axis=0))
        seeds = np.tile(np.eye(out_size), (len(samples), 1))
        input_grad = function.backward(seeds.reshape((-1,) + out_shape))
        if isinstance(input_grad, (tuple, list)):
            raise TypeError(f"jacobian: {function!r} takes several inputs; give a layer or "
                            f"model with one input")
        result[start:start + group] = input_grad.reshape(len(samples), out_size, in_size)
    return result


def _float64_copy(layer_or_model):
    """A float64 copy, in evaluation mode, that computes dL/dinput."""
    if isinstance(layer_or_model, Model):
        model = layer_or_model
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"jacobian: expected a model with one input and one output, got "
                             f"{len(model.inputs)} and {len(model.outputs)}")
        # The forward hooks stay behind: they belong to the user's model.
        function = copy.deepcopy(model, {id(model._forward_hooks): []})
        function.requires_input_grad = True
    elif isinstance(layer_or_model, Layer):
        layer = layer_or_model
        # The layer alone, without the graph it may belong to.
        function = copy.deepcopy(layer, {id(layer._node): None})
        function.reuse_buffers = False
        function.needs_input_grad = True
        if hasattr(function, "fused_activation"):
            function.fused_activation = None
    else:
        raise TypeError(f"jacobian: expected a corenet Layer or Model, got "
                        f"{type(layer_or_model).__name__}")
    function.astype(np.float64)
    if isinstance(function, Model):
        function.eval()
    else:
        function.training = False
    return function
