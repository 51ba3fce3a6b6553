"""A model's parameters and buffers as a flat {key: array} dict, keyed as PyTorch keys
a Sequential.

The key of a parameter is ``"<node index>.<parameter name>"``: the node index is the
layer's position in ``model.layers`` (the topological order, the order of a
Sequential's layers, and of a model file's nodes). For a Sequential these are the
keys torch.nn.Sequential gives the same layers ("0.weight", "2.bias": layers without
parameters, such as activations, take their index and hold none), so a PyTorch
``state_dict()`` loads as it stands. A layer's state buffers follow its parameters,
named as PyTorch names them ("1.running_mean", "1.running_var",
"1.num_batches_tracked" of a batch norm), as in PyTorch's state dicts. For a DAG the
order is fixed by the graph (the same graph built the same way gives the same keys).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from corenet.errors import DTypeError, StateDictError


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` left out, as PyTorch returns it."""

    missing_keys: list
    unexpected_keys: list


def state_keys(model) -> dict:
    """{key: Parameter or Buffer} in node order, each layer's parameters then its buffers."""
    return {f"{index}.{array.name}": array for index, layer in enumerate(model.layers)
            for array in layer.parameters() + layer.state_buffers()}


def state_dict(model) -> dict:
    """{key: copy of the array}; later training does not change it."""
    return {key: array.value.copy() for key, array in state_keys(model).items()}


def _check_dtype(key: str, array: np.ndarray, target: np.ndarray) -> None:
    """Floats load into float arrays, integers into an integer buffer (a batch count)."""
    if target.dtype.kind == "f" and array.dtype.kind != "f":
        raise DTypeError(f"load_state_dict: {key!r} must be a float array, "
                         f"got dtype {array.dtype}")
    if target.dtype.kind != "f" and array.dtype.kind not in "iu":
        raise DTypeError(f"load_state_dict: {key!r} must be an integer array (a count), "
                         f"got dtype {array.dtype}")


def count_problem(key: str, array: np.ndarray, target: np.ndarray) -> str | None:
    """A count (batch norm's num_batches_tracked) is never negative and fits its int64: a
    momentum=None batch norm divides by it plus one (-1 was a ZeroDivisionError)."""
    if target.dtype.kind == "f" or array.size == 0:
        return None
    low, high = array.min(), array.max()
    if low < 0 or high > np.iinfo(target.dtype).max:
        return (f"{key!r} is a count of batches, from 0 to {np.iinfo(target.dtype).max}, "
                f"got values from {low} to {high}")
    return None


def load_state_dict(model, state: dict, strict: bool = True) -> IncompatibleKeys:
    """Copy the arrays of ``state`` into the model's parameters and buffers, in place (an
    optimizer that holds them sees the new values). Values are anything numpy.asarray
    takes (PyTorch tensors too); floats of another width are cast, as PyTorch's copy
    does, and so are integers into a count.

    Everything is checked before anything is written: a missing key or an unexpected
    one (with ``strict``, the default), a wrong shape, a non-float value for a float
    array or a non-integer one for a count raises one StateDictError (DTypeError for
    dtypes) that lists every problem.
    """
    if not hasattr(state, "keys"):
        raise TypeError(f"load_state_dict: expected a dict of arrays, got {type(state).__name__}")
    targets = state_keys(model)
    missing = [key for key in targets if key not in state]
    unexpected = [key for key in state if key not in targets]
    problems, arrays = [], {}
    if strict and missing:
        problems.append(f"missing keys {missing}")
    if strict and unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key, target in targets.items():
        if key not in state:
            continue
        try:
            array = np.asarray(state[key])
        except (ValueError, TypeError, RuntimeError) as error:
            # A ragged list, a bfloat16 or sparse tensor, a tensor that requires grad
            # (torch's RuntimeError): named here, not raised from inside numpy or torch.
            raise TypeError(f"load_state_dict: {key!r} is not an array numpy can take "
                            f"({type(state[key]).__name__}): {error}") from None
        _check_dtype(key, array, target.value)
        if array.shape != target.value.shape:
            problems.append(f"{key!r} has shape {array.shape}, the model's is "
                            f"{target.value.shape}")
        problem = count_problem(key, array, target.value)
        if problem:
            problems.append(problem)
        arrays[key] = array
    if problems:
        raise StateDictError(f"load_state_dict into {type(model).__name__}: "
                             + "; ".join(problems) + f". The model's keys: {list(targets)}")
    for key, array in arrays.items():
        target = targets[key]
        if not target.value.flags.writeable or not target.value.flags.c_contiguous:
            target.value = target.value.copy()
        np.copyto(target.value, array, casting="same_kind")
    return IncompatibleKeys(missing, unexpected)
