"""A model's parameters as a flat {key: array} dict, keyed as PyTorch keys a Sequential.

The key of a parameter is ``"<node index>.<parameter name>"``: the node index is the
layer's position in ``model.layers`` (the topological order, the order of a
Sequential's layers, and of a model file's nodes). For a Sequential these are the
keys torch.nn.Sequential gives the same layers ("0.weight", "2.bias": layers without
parameters, such as activations, take their index and hold none), so a PyTorch
``state_dict()`` loads as it stands. For a DAG the order is fixed by the graph (the
same graph built the same way gives the same keys).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from corenet.errors import DTypeError, StateDictError


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` left out, as PyTorch returns it."""

    missing_keys: list
    unexpected_keys: list


def parameter_keys(model) -> dict:
    """{key: Parameter} in node order."""
    return {f"{index}.{parameter.name}": parameter
            for index, layer in enumerate(model.layers) for parameter in layer.parameters()}


def state_dict(model) -> dict:
    """{key: copy of the parameter's value}; later training does not change it."""
    return {key: parameter.value.copy() for key, parameter in parameter_keys(model).items()}


def load_state_dict(model, state: dict, strict: bool = True) -> IncompatibleKeys:
    """Copy the arrays of ``state`` into the model's parameters, in place (an optimizer
    that holds them sees the new values). Values are anything numpy.asarray takes
    (PyTorch tensors too); floats of another width are cast, as PyTorch's copy does.

    Everything is checked before anything is written: a missing key or an unexpected
    one (with ``strict``, the default), a wrong shape or a non-float value raises one
    StateDictError (DTypeError for dtypes) that lists every problem.
    """
    if not hasattr(state, "keys"):
        raise TypeError(f"load_state_dict: expected a dict of arrays, got {type(state).__name__}")
    parameters = parameter_keys(model)
    missing = [key for key in parameters if key not in state]
    unexpected = [key for key in state if key not in parameters]
    problems, arrays = [], {}
    if strict and missing:
        problems.append(f"missing keys {missing}")
    if strict and unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key, parameter in parameters.items():
        if key not in state:
            continue
        array = np.asarray(state[key])
        if array.dtype.kind != "f":
            raise DTypeError(f"load_state_dict: {key!r} must be a float array, "
                             f"got dtype {array.dtype}")
        if array.shape != parameter.value.shape:
            problems.append(f"{key!r} has shape {array.shape}, the model's is "
                            f"{parameter.value.shape}")
        arrays[key] = array
    if problems:
        raise StateDictError(f"load_state_dict into {type(model).__name__}: "
                             + "; ".join(problems) + f". The model's keys: {list(parameters)}")
    for key, array in arrays.items():
        parameter = parameters[key]
        if not parameter.value.flags.writeable or not parameter.value.flags.c_contiguous:
            parameter.value = parameter.value.copy()
        np.copyto(parameter.value, array, casting="same_kind")
    return IncompatibleKeys(missing, unexpected)
