"""Optimizers: they update each Parameter.value in place from Parameter.grad."""
from __future__ import annotations

import numpy as np

from corenet.arguments import as_float
from corenet.kernels.optim import sgd_step
from corenet.layer import Parameter


class Optimizer:
    def __init__(self, params):
        name = type(self).__name__
        try:
            self.params = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of corenet.Parameter, got "
                            f"{type(params).__name__}") from None
        for parameter in self.params:
            if not isinstance(parameter, Parameter):
                raise TypeError(f"{name}: params must hold corenet.Parameter objects, got "
                                f"{type(parameter).__name__}")
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimize")
        for parameter in self.params:
            if parameter.grad is not None:
                check_parameter(self, parameter, None)

    def zero_grad(self) -> None:
        for parameter in self.params:
            if parameter.grad is not None:
                parameter.grad.fill(0)

    def step(self) -> None:
        raise NotImplementedError


def check_parameter(optimizer, parameter, state) -> None:
    """A Parameter's arrays as the update loop needs them, or a clear error: users can
    replace value and grad between steps; the optimizer's state keeps its shape."""
    name = type(optimizer).__name__
    value, grad = parameter.value, parameter.grad
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
    if state is not None and state.shape != value.shape:
        raise ValueError(f"{name}: parameter {parameter.name!r} changed shape from "
                         f"{state.shape} to {value.shape} since the optimizer was made")


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's momentum and weight decay:
    v = momentum·v + (g + weight_decay·w);  w -= lr·v.

    >>> import corenet, numpy as np
    >>> p = corenet.Parameter("w", np.ones(2, np.float32)); p.grad[:] = 1
    >>> SGD([p], lr=0.5).step(); p.value
    array([0.5, 0.5], dtype=float32)
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params)
        self.lr = as_float("SGD", "lr", lr, minimum=0)
        self.momentum = as_float("SGD", "momentum", momentum, minimum=0)
        self.weight_decay = as_float("SGD", "weight_decay", weight_decay, minimum=0)
        self._velocity = [np.zeros_like(p.value) if momentum else None for p in self.params]

    def step(self) -> None:
        for parameter, velocity in zip(self.params, self._velocity):
            if parameter.grad is None:  # as torch.optim: no gradient, no update
                continue
            check_parameter(self, parameter, velocity)
            sgd_step(parameter.value, parameter.grad, velocity, self.lr, self.momentum,
                     self.weight_decay)
