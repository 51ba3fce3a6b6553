"""Optimizers: they update each Parameter.value in place from Parameter.grad."""
from __future__ import annotations

import numpy as np

from corenet.kernels.optim import sgd_step


class Optimizer:
    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimize")
        for parameter in self.params:
            if parameter.grad.shape != parameter.value.shape \
                    or parameter.grad.dtype != parameter.value.dtype \
                    or not parameter.value.flags.c_contiguous \
                    or not parameter.grad.flags.c_contiguous:
                raise ValueError(f"{type(self).__name__}: {parameter!r} needs a C-contiguous "
                                 f"value and grad of one shape and dtype")

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.grad.fill(0)

    def step(self) -> None:
        raise NotImplementedError


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
        for label, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"SGD: {label} must be a finite number >= 0, got {value!r}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self._velocity = [np.zeros_like(p.value) if momentum else None for p in self.params]

    def step(self) -> None:
        for parameter, velocity in zip(self.params, self._velocity):
            sgd_step(parameter.value, parameter.grad, velocity, self.lr, self.momentum,
                     self.weight_decay)
