"""Optimizers: they update each Parameter.value in place from Parameter.grad.

SGD (momentum, dampening, Nesterov), Adam, AdamW and RMSprop follow torch.optim:
the same update rules in the same order, the same defaults, parameter groups given
the same way, and ``state_dict()`` / ``load_state_dict()`` shaped like PyTorch's
(integer parameter indices, numpy arrays and plain Python values). The parameters of
a group (of one dtype) are updated by one fused Cython pass over their elements
(corenet.kernels.optim).
``clip_grad_norm`` scales the gradients to a maximum global norm.

>>> import corenet as cn, corenet.layers as L
>>> model = cn.Sequential(L.Linear(4, 8), L.ReLU(), L.Linear(8, 2))
>>> optimizer = AdamW(weight_decay_groups(model.parameters(), 0.01), lr=1e-3)
>>> [len(group["params"]) for group in optimizer.param_groups]
[2, 2]
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from corenet.errors import DTypeError
from corenet.kernels.optim import (adam_step_many, parameter_ready, rmsprop_step_many,
                                   scale, sgd_step_many, sum_of_squares)
from corenet.layer import Parameter
from corenet.optim_state import STEP_LIMIT


# The keys of a parameter group besides the optimizer's settings.
GROUP_KEYS = frozenset({"params", "initial_lr"})


def by_dtype(parameters: list, states: list) -> list:
    """[(parameters, states)] of each dtype among ``parameters``, in order."""
    groups: dict = {}
    for parameter, state in zip(parameters, states):
        same = groups.setdefault(parameter.value.dtype, ([], []))
        same[0].append(parameter)
        same[1].append(state)
    return list(groups.values())


class Optimizer:
    """Base of the optimizers: parameter groups, per-parameter state, state dicts.

    ``params`` is a list of Parameters, or of dicts ``{"params": [...], "lr": ...}``
    (parameter groups, as torch.optim takes them): a group's own settings override the
    optimizer's ``defaults``. Subclasses set ``STATE_ARRAYS`` (arrays every updated
    parameter has), ``OPTIONAL_ARRAYS`` (those some settings add), check their
    settings in ``check_settings`` and update one parameter in ``update``; or, with
    ``update = Optimizer.update_one``, the parameters of one dtype in one pass in
    ``update_together``.
    """

    STATE_ARRAYS: tuple = ()
    OPTIONAL_ARRAYS: tuple = ()

    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        self.param_groups: list[dict] = []
        self.state: dict = {}  # Parameter -> {"step": int, array name: np.ndarray}
        if isinstance(params, (Parameter, dict)):
            raise TypeError(f"{self._name}: params must be a list of Parameters or of "
                            f"parameter groups (dicts), got one {type(params).__name__}")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{self._name}: params must be an iterable of corenet.Parameter, "
                            f"got {type(params).__name__}") from None
        if not params:
            raise ValueError(f"{self._name}: got no parameters to optimize")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)
        if not any(group["params"] for group in self.param_groups):
            raise ValueError(f"{self._name}: got no parameters to optimize (every group is "
                             f"empty)")

    @property
    def _name(self) -> str:
        return type(self).__name__

    def add_param_group(self, group: dict) -> None:
        """Add a group ``{"params": [...], setting: value, ...}``; settings it does not
        give are the optimizer's defaults."""
        if not isinstance(group, dict):
            raise TypeError(f"{self._name}: a parameter group must be a dict, got "
                            f"{type(group).__name__} (give all Parameters or all dicts)")
        if "params" not in group:
            raise ValueError(f"{self._name}: a parameter group needs a 'params' list")
        group = {**self.defaults, **group, "params": self._parameter_list(group["params"])}
        self.check_group(group)
        seen = {id(p) for other in self.param_groups for p in other["params"]}
        for parameter in group["params"]:
            if id(parameter) in seen:
                raise ValueError(f"{self._name}: parameter {parameter.name!r} "
                                 f"{parameter.value.shape} is in more than one parameter "
                                 f"group (or twice in one)")
            seen.add(id(parameter))
        self.param_groups.append(group)

    def _parameter_list(self, params) -> list:
        if isinstance(params, Parameter):
            params = [params]
        if isinstance(params, (set, frozenset)):  # the state dict numbers them in order
            raise TypeError(f"{self._name}: parameters must be given in an ordered list, "
                            f"not a set")
        params = list(params)
        for parameter in params:
            if not isinstance(parameter, Parameter):
                raise TypeError(f"{self._name}: params must hold corenet.Parameter objects, "
                                f"got {type(parameter).__name__}")
        return params

    def check_group(self, group: dict) -> None:
        """Refuse unknown keys and bad settings, naming them; numbers become floats."""
        keys, defaults = group.keys(), self.defaults.keys()
        if not (keys >= defaults and keys - defaults <= GROUP_KEYS):  # else: name them
            unknown = sorted(keys - defaults - GROUP_KEYS, key=str)  # a key 5 beside 'zz'
            if unknown:
                raise ValueError(f"{self._name}: unknown setting(s) {unknown} in a parameter "
                                 f"group; it takes {sorted(defaults)}")
            raise ValueError(f"{self._name}: a parameter group lacks "
                             f"{sorted(defaults - keys)}")
        group["lr"] = check_number(self._name, "lr", group["lr"])
        if "initial_lr" in group:
            group["initial_lr"] = check_number(self._name, "initial_lr", group["initial_lr"])
        self.check_settings(group)

    def check_settings(self, group: dict) -> None:
        """Check (and normalize in place) the settings of a subclass."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        """The learning rate of every group (an error if the groups differ)."""
        rates = {group["lr"] for group in self.param_groups}
        if len(rates) != 1:
            raise ValueError(f"{self._name}: the parameter groups have different learning "
                             f"rates {sorted(rates)}; read param_groups[i]['lr']")
        return rates.pop()

    @lr.setter
    def lr(self, value: float) -> None:
        value = check_number(self._name, "lr", value)
        for group in self.param_groups:
            group["lr"] = value

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Every parameter's gradient to zero, or with ``set_to_none`` to None, as
        torch.optim (Parameter.unset_grad: a shared array is zeroed instead): the next
        backward starts it from zeros (Linear's weight is written, not added to), and
        step skips a parameter whose gradient stays None."""
        for group in self.param_groups:
            for parameter in group["params"]:
                parameter.zero_grad(set_to_none)

    def step(self) -> None:
        """Update every parameter that has a gradient (None: skipped, as torch.optim)."""
        # param_groups are the user's to change between steps (as torch's schedulers and
        # Schedule.apply do): a NaN or infinite lr written there made NaN weights silently,
        # a string one a kernel's TypeError that named nothing. Checked before any update.
        # Parameters too: a bad second parameter used to stop the step after the first
        # was updated.
        for group in self.param_groups:
            self.check_group(group)
        updates = []
        for group in self.param_groups:
            ready = [parameter for parameter in group["params"] if parameter.grad is not None]
            for parameter in ready:
                check_parameter(self, parameter, self.state.get(parameter))
            updates.append((group, ready))
        for group, parameters in updates:
            states = []
            for parameter in parameters:
                state = self.state.get(parameter)
                if state is None:
                    state = self.state[parameter] = {"step": 0}
                state["step"] += 1
                states.append(state)
            self.update_group(group, parameters, states)

    def update_group(self, group: dict, parameters: list, states: list) -> None:
        """Update a group's parameters (those with a gradient), checked, with their
        states: in one pass per dtype (``update_together``) where the optimizer has one
        and a subclass did not replace ``update``, else one ``update`` each."""
        if type(self).update is Optimizer.update_one:
            for same_dtype in by_dtype(parameters, states):
                self.update_together(group, *same_dtype)
            return
        for parameter, state in zip(parameters, states):
            self.update(parameter, state, group)

    def update(self, parameter: Parameter, state: dict, group: dict) -> None:
        raise NotImplementedError

    def update_one(self, parameter: Parameter, state: dict, group: dict) -> None:
        """``update`` of an optimizer that updates its parameters together."""
        self.update_together(group, [parameter], [state])

    def update_together(self, group: dict, parameters: list, states: list) -> None:
        """Update parameters of one dtype in one pass: one parallel region for all (each
        region wakes the other threads, and a small model's step had one per parameter)."""
        raise NotImplementedError

    def state_array(self, state: dict, name: str, value: np.ndarray) -> np.ndarray:
        """A state array, made of zeros the first time (PyTorch's initial state)."""
        array = state.get(name)
        if array is None:
            array = state[name] = np.zeros_like(value)
        return array

    def state_arrays(self, states: list, name: str, values: list, used: bool = True) -> list:
        """state_array of each parameter, or Nones when the settings do not use it."""
        if not used:
            return [None] * len(states)
        return [self.state_array(state, name, value) for state, value in zip(states, values)]

    # -- state dicts ----------------------------------------------------------------

    def state_dict(self) -> dict:
        """``{"state": {index: {"step": int, name: array}}, "param_groups": [...]}``,
        parameters numbered in the order of the groups, as torch.optim does. Arrays
        are copies; everything else is a plain Python value."""
        state, groups, index = {}, [], 0
        for group in self.param_groups:
            saved = {key: value for key, value in group.items() if key != "params"}
            saved["params"] = list(range(index, index + len(group["params"])))
            groups.append(saved)
            for parameter in group["params"]:
                if parameter in self.state:
                    state[index] = {key: value.copy() if isinstance(value, np.ndarray)
                                    else value for key, value in self.state[parameter].items()}
                index += 1
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take the settings and state of ``state_dict`` (from an optimizer of this kind
        over parameters of the same shapes, in the same groups). Everything is checked
        before anything changes; arrays are copied."""
        from corenet.optim_state import parse_state_dict

        self.param_groups, self.state = parse_state_dict(self, state_dict)

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.defaults.items())
        sizes = [len(group["params"]) for group in self.param_groups]
        return f"{self._name}({settings}; parameters per group {sizes})"


def check_number(owner: str, label: str, value, low: float = 0.0,
                 below: float = math.inf) -> float:
    """``value`` as a float if it is a finite number in [low, below), else an error naming
    the optimizer and the setting."""
    if type(value) is float and math.isfinite(value) and low <= value < below:
        return value  # every step: check_group stored the settings as floats
    try:
        finite = math.isfinite(value)
    except (TypeError, OverflowError):  # not a number; an int beyond float's range
        finite = False
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not finite or not low <= value < below:
        bound = f"in [{low:g}, {below:g})" if below != math.inf else f">= {low:g}"
        raise ValueError(f"{owner}: {label} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_flag(owner: str, label: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {label} must be True or False, got {value!r}")
    return bool(value)


def check_parameter(optimizer, parameter, state) -> None:
    """A Parameter's arrays as the update loop needs them, or a clear error: users can
    replace value and grad between steps; the optimizer's state keeps its shape."""
    value, grad = parameter.value, parameter.grad
    if parameter_ready(value, grad, state):  # every step: the checks below, in C
        return
    name = type(optimizer).__name__
    if not isinstance(value, np.ndarray) or value.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: parameter {parameter.name!r} must be a float32 or float64 "
                        f"array, got {getattr(value, 'dtype', type(value).__name__)}")
    if not value.flags.writeable:
        raise ValueError(f"{name}: parameter {parameter.name!r} is read-only; the optimizer "
                         f"updates it in place")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name}: parameter {parameter.name!r} must be C-contiguous")
    if not isinstance(grad, np.ndarray) or grad.shape != value.shape \
            or grad.dtype != value.dtype or not grad.flags.c_contiguous:
        raise ValueError(f"{name}: the grad of {parameter.name!r} must be a C-contiguous "
                         f"{value.dtype} array of shape {value.shape}, got "
                         f"{getattr(grad, 'dtype', type(grad).__name__)} "
                         f"{getattr(grad, 'shape', '')}")
    if state is not None and (not isinstance(state, dict) or "step" not in state):
        raise TypeError(f"{name}: the state of parameter {parameter.name!r} must be a dict "
                        f"with a 'step' count, got {state!r:.80}")
    for key, array in (state or {}).items():
        # optimizer.state is the user's too: a step count or an array replaced there was a
        # TypeError from `+= 1` or from the kernel's arguments, naming no parameter.
        if key == "step":
            if not isinstance(array, (int, np.integer)) or isinstance(array, (bool, np.bool_)) \
                    or not 0 <= array < STEP_LIMIT:
                raise ValueError(f"{name}: the step count of parameter {parameter.name!r} "
                                 f"must be an integer >= 0 and < 2**62, got {array!r}")
            continue
        if array is None:  # made again from zeros, as before the first step
            continue
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name}: the state {key!r} of parameter {parameter.name!r} must "
                            f"be an array, got {type(array).__name__}")
        if array.shape != value.shape or array.dtype != value.dtype:
            raise ValueError(f"{name}: parameter {parameter.name!r} changed from "
                             f"{array.dtype} {array.shape} to {value.dtype} {value.shape} "
                             f"since its optimizer state was made: the state does not match "
                             f"the parameter")
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError(f"{name}: the state {key!r} of parameter {parameter.name!r} must "
                             f"be a writeable C-contiguous array")


class SGD(Optimizer):
    """Stochastic gradient descent as torch.optim.SGD:
    d = g + weight_decay·w; b = d on the first step, then momentum·b + (1 − dampening)·d;
    w −= lr·(d + momentum·b) with nesterov, else w −= lr·b (w −= lr·d at momentum 0).

    >>> import corenet, numpy as np
    >>> p = corenet.Parameter("w", np.ones(2, np.float32)); p.grad[:] = 1
    >>> SGD([p], lr=0.5).step(); p.value
    array([0.5, 0.5], dtype=float32)
    """

    OPTIONAL_ARRAYS = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})

    def check_settings(self, group: dict) -> None:
        for label in ("momentum", "weight_decay"):
            group[label] = check_number(self._name, label, group[label])
        group["dampening"] = check_number(self._name, "dampening", group["dampening"], -math.inf)
        group["nesterov"] = check_flag(self._name, "nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: Nesterov momentum needs momentum > 0 and dampening 0, "
                             f"got momentum={group['momentum']}, "
                             f"dampening={group['dampening']}")

    update = Optimizer.update_one

    def update_together(self, group: dict, parameters: list, states: list) -> None:
        with_momentum = group["momentum"] != 0
        buffers, firsts = [], []
        for parameter, state in zip(parameters, states):
            buffer = state.get("momentum_buffer") if with_momentum else None
            first = with_momentum and buffer is None  # PyTorch starts it at the first direction
            buffers.append(np.empty_like(parameter.value) if first else buffer)
            firsts.append(first)
        sgd_step_many([p.value for p in parameters], [p.grad for p in parameters], buffers,
                      firsts, group["lr"], group["weight_decay"], group["momentum"],
                      group["dampening"], group["nesterov"])
        # Kept once filled: an empty one left by a pass that failed would be read as
        # momentum at the next step.
        for state, buffer, first in zip(states, buffers, firsts):
            if first:
                state["momentum_buffer"] = buffer


class Adam(Optimizer):
    """Adam as torch.optim.Adam, weight decay as an L2 term added to the gradient:
    m = lerp(m, g, 1 − β1), v = β2·v + (1 − β2)·g², w −= lr/(1 − β1ᵗ) ·
    m / (sqrt(v)/sqrt(1 − β2ᵗ) + eps); with amsgrad, v is the running maximum.

    >>> import corenet, numpy as np
    >>> p = corenet.Parameter("w", np.zeros(2)); p.grad[:] = [1, -1]
    >>> Adam([p], lr=0.1).step(); p.value.round(6)
    array([-0.1,  0.1])
    """

    STATE_ARRAYS = ("exp_avg", "exp_avg_sq")
    OPTIONAL_ARRAYS = ("max_exp_avg_sq",)
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay, "amsgrad": amsgrad})

    def check_settings(self, group: dict) -> None:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{self._name}: betas must be a pair, got {betas!r}")
        group["betas"] = (check_number(self._name, "betas[0]", betas[0], below=1.0),
                          check_number(self._name, "betas[1]", betas[1], below=1.0))
        for label in ("eps", "weight_decay"):
            group[label] = check_number(self._name, label, group[label])
        group["amsgrad"] = check_flag(self._name, "amsgrad", group["amsgrad"])

    update = Optimizer.update_one

    def update_together(self, group: dict, parameters: list, states: list) -> None:
        values = [parameter.value for parameter in parameters]
        beta1, beta2 = group["betas"]
        adam_step_many(values, [parameter.grad for parameter in parameters],
                       self.state_arrays(states, "exp_avg", values),
                       self.state_arrays(states, "exp_avg_sq", values),
                       self.state_arrays(states, "max_exp_avg_sq", values, group["amsgrad"]),
                       [state["step"] for state in states], group["lr"], beta1, beta2,
                       group["eps"], group["weight_decay"], self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay, as torch.optim.AdamW: w ·= 1 − lr·weight_decay
    before Adam's step (default weight_decay 0.01)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """RMSprop as torch.optim.RMSprop: s = α·s + (1 − α)·g²; with centered, a running
    mean a of g and s − a² in place of s; w −= lr·g/(sqrt(s) + eps), through a momentum
    buffer b = momentum·b + g/(sqrt(s) + eps) when momentum > 0."""

    STATE_ARRAYS = ("square_avg",)
    OPTIONAL_ARRAYS = ("momentum_buffer", "grad_avg")

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps,
                                  "weight_decay": weight_decay, "momentum": momentum,
                                  "centered": centered})

    def check_settings(self, group: dict) -> None:
        for label in ("alpha", "eps", "weight_decay", "momentum"):
            group[label] = check_number(self._name, label, group[label])
        if group["alpha"] > 1:  # s = α·s + (1 − α)·g² turns negative: NaN weights, silently
            raise ValueError(f"{self._name}: alpha must be in [0, 1], got {group['alpha']!r}")
        group["centered"] = check_flag(self._name, "centered", group["centered"])

    update = Optimizer.update_one

    def update_together(self, group: dict, parameters: list, states: list) -> None:
        values = [parameter.value for parameter in parameters]
        rmsprop_step_many(values, [parameter.grad for parameter in parameters],
                          self.state_arrays(states, "square_avg", values),
                          self.state_arrays(states, "grad_avg", values, group["centered"]),
                          self.state_arrays(states, "momentum_buffer", values,
                                            group["momentum"] > 0),
                          group["lr"], group["alpha"], group["eps"], group["weight_decay"],
                          group["momentum"])


def clip_grad_norm(parameters, max_norm: float, error_if_nonfinite: bool = False) -> float:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``, as
    torch.nn.utils.clip_grad_norm_: returns the norm before clipping, and multiplies
    every gradient by max_norm / (norm + 1e-6) when that is below 1. Parameters
    without a gradient (None) are skipped. The norm is summed in double, in an order
    that does not depend on the thread count.

    >>> import corenet, numpy as np
    >>> p = corenet.Parameter("w", np.zeros(2)); p.grad[:] = [3, 4]
    >>> clip_grad_norm([p], 1.0), p.grad.round(6)
    (5.0, array([0.6, 0.8]))
    """
    check_number("clip_grad_norm", "max_norm", max_norm)
    grads = []
    for parameter in parameters:
        grad = parameter.grad
        if grad is None:
            continue
        if not isinstance(grad, np.ndarray) or grad.dtype not in (np.float32, np.float64):
            raise DTypeError(f"clip_grad_norm: the grad of {parameter.name!r} must be a "
                             f"float32 or float64 array, got "
                             f"{getattr(grad, 'dtype', type(grad).__name__)}")
        if not grad.flags.c_contiguous or not grad.flags.writeable:
            raise ValueError(f"clip_grad_norm: the grad of {parameter.name!r} must be a "
                             f"writeable C-contiguous array")
        grads.append(grad)
    total = math.sqrt(sum(sum_of_squares(grad) for grad in grads))
    if error_if_nonfinite and not math.isfinite(total):
        raise FloatingPointError(f"clip_grad_norm: the total norm of the gradients is "
                                 f"{total}; clipping cannot fix that")
    factor = max_norm / (total + 1e-6)
    if not factor >= 1.0:  # a NaN norm makes every gradient NaN, as PyTorch's does
        for grad in grads:
            scale(grad, factor)
    return total


def weight_decay_groups(parameters, weight_decay: float, exclude=None) -> list[dict]:
    """Two parameter groups: one with ``weight_decay``, one without for the parameters
    that ``exclude(parameter)`` picks (default: biases and every 1-D parameter, such as
    PReLU's slopes, which are usually not decayed).

    >>> import corenet as cn, corenet.layers as L
    >>> groups = weight_decay_groups(L.Linear(3, 2).parameters(), 0.1)
    >>> [([p.name for p in g["params"]], g["weight_decay"]) for g in groups]
    [(['weight'], 0.1), (['bias'], 0.0)]
    """
    if exclude is None:
        def exclude(parameter):
            return parameter.name == "bias" or parameter.value.ndim <= 1
    decayed, kept = [], []
    for parameter in parameters:
        (kept if exclude(parameter) else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": kept, "weight_decay": 0.0}]
