"""Linear forward and backward (dL/dx, dL/dW, dL/db) at batch 16 to 1024: the corenet
layer, the same products in numpy, and torch.nn.Linear through autograd."""
import numpy as np
import pytest

import corenet.layers as L
from conftest import layer_step, torch

IN, OUT = 784, 256


def step_function(impl, batch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, IN)).astype(np.float32)
    grad = rng.standard_normal((batch, OUT)).astype(np.float32)
    if impl == "corenet":
        return layer_step(L.Linear(IN, OUT), x, grad)
    if impl == "numpy":
        weight = rng.standard_normal((OUT, IN)).astype(np.float32)
        bias = np.zeros(OUT, np.float32)
        weight_grad, bias_grad = np.zeros_like(weight), np.zeros_like(bias)

        def numpy_step():
            x @ weight.T + bias
            weight_grad[...] += grad.T @ x
            bias_grad[...] += grad.sum(axis=0)
            return grad @ weight
        return numpy_step
    layer = torch.nn.Linear(IN, OUT)
    tx = torch.from_numpy(x).requires_grad_(True)
    tg = torch.from_numpy(grad)

    def torch_step():
        tx.grad = None
        layer(tx).backward(tg)
        return tx.grad
    return torch_step


@pytest.mark.parametrize("batch", [16, 64, 256, 1024])
def test_forward_backward(run, impl, batch):
    run(f"linear {IN}->{OUT} forward+backward batch {batch}", step_function(impl, batch))
