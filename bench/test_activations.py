"""Activation forward + backward on 4M float32 elements: corenet, the numpy expression a
user would write, and torch (forward, then backward through autograd's kernels)."""
import numpy as np
import pytest

import corenet.layers as L
from conftest import layer_step, torch

SIZE = 4 * 1024 * 1024

NUMPY = {
    "relu": (lambda x: np.maximum(x, 0), lambda x, y, g: g * (x > 0)),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x, y, g: g * y * (1 - y)),
    "tanh": (np.tanh, lambda x, y, g: g * (1 - y * y)),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(x)),
            lambda x, y, g: np.where(x > 0, g, g * (y + 1))),
}


def step_function(impl, name, x, grad):
    if impl == "corenet":
        return layer_step(L.create(name), x, grad)
    if impl == "numpy":
        forward, backward = NUMPY[name]
        return lambda: backward(x, forward(x), grad)
    tx, tg = torch.from_numpy(x), torch.from_numpy(grad)
    function = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                "elu": torch.nn.functional.elu}[name]
    tx.requires_grad_(True)

    def torch_step():
        tx.grad = None
        function(tx).backward(tg)
        return tx.grad
    return torch_step


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "elu"])
def test_forward_backward(run, impl, name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SIZE).astype(np.float32).reshape(1024, -1)
    grad = rng.standard_normal(SIZE).astype(np.float32).reshape(1024, -1)
    run(f"{name} forward+backward 4M float32", step_function(impl, name, x, grad))
