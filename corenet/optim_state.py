"""An optimizer's state dict, checked before the optimizer takes it.

A state dict may come from a checkpoint file: its groups must match the optimizer's,
its settings be valid, and each state array have its parameter's shape and dtype,
or the error says which group, parameter or array is wrong. Nothing is taken until
everything has been checked.
"""
from __future__ import annotations

import numpy as np

from corenet.errors import DTypeError, ShapeError

# A step count's bound, at load time here and at each step in optim.check_parameter
# (the C fast path, kernels/optim.pyx's parameter_ready, uses the same number).
STEP_LIMIT = 2 ** 62


def _is_index(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def parse_state_dict(optimizer, state_dict) -> tuple[list, dict]:
    """(param_groups, state) for ``optimizer`` from ``state_dict``, or a clear error."""
    where = f"{type(optimizer).__name__}.load_state_dict"
    if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
        keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
        raise ValueError(f"{where}: expected a dict with 'state' and 'param_groups', got {keys}")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)) \
            or len(saved_groups) != len(optimizer.param_groups):
        count = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else "no list of"
        raise ValueError(f"{where}: the state dict has {count} parameter groups, the "
                         f"optimizer {len(optimizer.param_groups)}")
    groups, by_index = [], {}
    for number, (group, saved) in enumerate(zip(optimizer.param_groups, saved_groups)):
        indices = saved.get("params") if isinstance(saved, dict) else None
        if not isinstance(indices, (list, tuple)):
            raise ValueError(f"{where}: parameter group {number} must be a dict with a "
                             f"'params' list of indices")
        if len(indices) != len(group["params"]):
            raise ValueError(f"{where}: parameter group {number} has {len(indices)} "
                             f"parameters in the state dict, {len(group['params'])} in the "
                             f"optimizer")
        for index, parameter in zip(indices, group["params"]):
            if not _is_index(index) or int(index) in by_index:
                raise ValueError(f"{where}: parameter indices must be distinct integers, "
                                 f"got {index!r} in group {number}")
            by_index[int(index)] = parameter
        settings = {key: value for key, value in saved.items() if key != "params"}
        taken = {**settings, "params": group["params"]}
        optimizer.check_group(taken)
        groups.append(taken)
    if not isinstance(saved_state, dict):
        raise ValueError(f"{where}: 'state' must be a dict of parameter index -> state, got "
                         f"{type(saved_state).__name__}")
    state = {}
    for index, saved in saved_state.items():
        if not _is_index(index) or int(index) not in by_index:
            raise ValueError(f"{where}: state for parameter index {index!r}, which no group "
                             f"lists")
        parameter = by_index[int(index)]
        state[parameter] = parameter_state(optimizer, where, parameter, saved)
    return groups, state


def parameter_state(optimizer, where: str, parameter, saved) -> dict:
    """One parameter's state: a step count and arrays of its shape and dtype, copied."""
    allowed = {"step", *optimizer.STATE_ARRAYS, *optimizer.OPTIONAL_ARRAYS}
    if not isinstance(saved, dict):
        raise ValueError(f"{where}: the state of parameter {parameter.name!r} must be a dict, "
                         f"got {type(saved).__name__}")
    unknown = sorted(map(str, set(saved) - allowed))
    if unknown:
        raise ValueError(f"{where}: unknown state {unknown} for parameter {parameter.name!r}; "
                         f"{type(optimizer).__name__} keeps {sorted(allowed)}")
    missing = sorted({"step", *optimizer.STATE_ARRAYS} - set(saved))
    if missing:
        raise ValueError(f"{where}: the state of parameter {parameter.name!r} lacks {missing}")
    step = saved["step"]
    if not _is_index(step) or not 0 <= step < STEP_LIMIT:
        raise ValueError(f"{where}: the step count of parameter {parameter.name!r} must be an "
                         f"integer >= 0 and < 2**62, got {step!r}")
    value = parameter.value
    state = {"step": int(step)}
    for name, array in saved.items():
        if name == "step":
            continue
        if not isinstance(array, np.ndarray) or array.dtype != value.dtype:
            raise DTypeError(f"{where}: {name} of parameter {parameter.name!r} must be a "
                             f"{value.dtype} array, got "
                             f"{getattr(array, 'dtype', type(array).__name__)}")
        if array.shape != value.shape:
            raise ShapeError(f"{where}: {name} of parameter {parameter.name!r} must have its "
                             f"shape {value.shape}, got {array.shape}")
        state[name] = np.array(array, order="C", copy=True)
    return state
