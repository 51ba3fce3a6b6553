"""Convolution and pooling, forward and backward, beside PyTorch (oneDNN or its own
CPU kernels) and, for conv2d, the im2col-and-matmul step a numpy user would write.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/test_conv.py
"""
import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import corenet.layers as L
from conftest import layer_step, torch

CONV_CASES = [  # (n_axes, in, out, kernel, padding, input shape)
    (2, 64, 64, 3, 1, (8, 64, 56, 56)),
    (3, 16, 32, 3, 1, (4, 16, 16, 16, 16)),
]


def conv_flops(n_axes, c_in, c_out, kernel, out_shape):
    """Forward and backward (dL/dx, dL/dW): three products of 2·N·C·K·P operations."""
    batch, positions = out_shape[0], math.prod(out_shape[2:])
    return 3 * 2 * batch * c_out * c_in * kernel ** n_axes * positions


def numpy_conv2d_step(x, weight, grad):
    """im2col by sliding windows, then matmuls; col2im by adding the windows back."""
    pad = weight.shape[-1] // 2
    n, c, h, w = x.shape
    out_c, k = weight.shape[0], weight.shape[-1]
    flat_weight = weight.reshape(out_c, -1)

    def step():
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        windows = sliding_window_view(padded, (k, k), axis=(2, 3))  # n c h w k k
        col = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * k * k)
        out = (col @ flat_weight.T).reshape(n, h, w, out_c).transpose(0, 3, 1, 2)
        grad_rows = grad.transpose(0, 2, 3, 1).reshape(n * h * w, out_c)
        weight_grad = grad_rows.T @ col
        col_grad = (grad_rows @ flat_weight).reshape(n, h, w, c, k, k)
        x_grad = np.zeros_like(padded)
        for i in range(k):
            for j in range(k):
                x_grad[:, :, i:i + h, j:j + w] += col_grad[..., i, j].transpose(0, 3, 1, 2)
        return out, weight_grad, x_grad
    return step


def conv_step(impl, n_axes, c_in, c_out, kernel, padding, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    layer = (L.Conv2d if n_axes == 2 else L.Conv3d)(c_in, c_out, kernel, padding=padding)
    grad = rng.standard_normal((shape[0], c_out) + shape[2:]).astype(np.float32)
    if impl == "corenet":
        layer.needs_input_grad = True
        return layer_step(layer, x, grad)
    if impl == "numpy":
        return numpy_conv2d_step(x, layer.weight.value, grad) if n_axes == 2 else None
    module = (torch.nn.Conv2d if n_axes == 2 else torch.nn.Conv3d)(c_in, c_out, kernel,
                                                                   padding=padding)
    tx = torch.from_numpy(x).requires_grad_(True)
    tg = torch.from_numpy(grad)

    def torch_step():
        tx.grad = None
        module(tx).backward(tg)
        return tx.grad
    return torch_step


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"conv{c[0]}d-{c[1]}-{c[2]}")
def test_convolution_forward_backward(run, impl, case):
    n_axes, c_in, c_out, kernel, padding, shape = case
    step = conv_step(impl, *case)
    if step is None:
        pytest.skip("no numpy peer for 3-D convolution")
    spatial = "x".join(map(str, shape[2:]))
    run(f"conv{n_axes}d {c_in}->{c_out} {kernel}^{n_axes} {spatial} b{shape[0]} fwd+bwd", step,
        flops=conv_flops(n_axes, c_in, c_out, kernel, (shape[0], c_out) + shape[2:]))


def test_max_pool_2x2_forward_backward(run, impl):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 64, 56, 56)).astype(np.float32)
    grad = rng.standard_normal((64, 64, 28, 28)).astype(np.float32)
    if impl == "corenet":
        step = layer_step(L.MaxPool2d(2), x, grad)
    elif impl == "numpy":
        def step():
            windows = x.reshape(64, 64, 28, 2, 28, 2)
            out = windows.max(axis=(3, 5))
            mask = windows == out[:, :, :, None, :, None]
            return out, (mask * grad[:, :, :, None, :, None]).reshape(x.shape)
    else:
        tx = torch.from_numpy(x).requires_grad_(True)
        tg = torch.from_numpy(grad)

        def step():
            tx.grad = None
            torch.nn.functional.max_pool2d(tx, 2).backward(tg)
            return tx.grad
    run("max_pool2d 2x2 64x64x56x56 fwd+bwd", step)
