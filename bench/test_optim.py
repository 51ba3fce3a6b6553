"""One Adam step over the parameters of a 784-1024-1024-10 MLP (1.86 M float32 values in
six arrays): corenet's one fused Cython pass per parameter, torch.optim.Adam, and Adam
as a user would write it with numpy array operations.

On the CPU torch.optim.Adam defaults to its single-tensor loop (it picks the foreach
kernels only for GPU tensors); its foreach and fused implementations, which a user
can ask for, each have their own group beside corenet."""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from conftest import torch

SIZES = [784, 1024, 1024, 10]
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
TORCH_VARIANTS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def mlp_parameters():
    """The parameters of the MLP's Linear layers, with gradients of a realistic size."""
    cn.random.seed(0)
    layers = [L.Linear(n_in, n_out) for n_in, n_out in zip(SIZES, SIZES[1:])]
    params = [parameter for layer in layers for parameter in layer.parameters()]
    rng = np.random.default_rng(0)
    for parameter in params:
        parameter.grad[...] = rng.standard_normal(parameter.value.shape) * 1e-2
    return params


def numpy_adam(params):
    values = [p.value.copy() for p in params]
    grads = [p.grad.copy() for p in params]
    exp_avgs = [np.zeros_like(value) for value in values]
    exp_avg_sqs = [np.zeros_like(value) for value in values]
    beta1, beta2 = BETAS
    step = [0]

    def adam_step():
        step[0] += 1
        for value, grad, m, v in zip(values, grads, exp_avgs, exp_avg_sqs):
            m[...] = beta1 * m + (1 - beta1) * grad
            v[...] = beta2 * v + (1 - beta2) * grad * grad
            m_hat = m / (1 - beta1 ** step[0])
            v_hat = v / (1 - beta2 ** step[0])
            value -= LR * m_hat / (np.sqrt(v_hat) + EPS)
    return adam_step


def torch_adam(params, settings):
    tensors = [torch.nn.Parameter(torch.from_numpy(p.value.copy())) for p in params]
    for tensor, parameter in zip(tensors, params):
        tensor.grad = torch.from_numpy(parameter.grad.copy())
    return torch.optim.Adam(tensors, lr=LR, betas=BETAS, eps=EPS, **settings).step


@pytest.mark.parametrize("torch_variant", TORCH_VARIANTS)
def test_adam_step(run, impl, torch_variant):
    if impl == "numpy" and torch_variant != "default":
        pytest.skip("numpy's Adam is timed once, in the group of torch's default")
    params = mlp_parameters()
    if impl == "corenet":
        step = cn.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS).step
    elif impl == "numpy":
        step = numpy_adam(params)
    else:
        step = torch_adam(params, TORCH_VARIANTS[torch_variant])
    run(f"adam step {'-'.join(map(str, SIZES))} (torch {torch_variant})", step)
