"""One SGD-with-momentum training step of a ReLU MLP with softmax cross-entropy:
corenet, PyTorch, and the same step written in plain numpy as a user would."""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from conftest import torch, torch_training_step
from corenet.train import train_step

CONFIGS = [((784, 256, 256, 10), 64), ((64, 32, 10), 16), ((784, 1024, 1024, 10), 1024)]
LR, MOMENTUM = 0.01, 0.9


def data(sizes, batch):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, sizes[0])).astype(np.float32),
            rng.integers(0, sizes[-1], batch))


def corenet_step(sizes, x, y):
    stack = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        stack += [L.Linear(n_in, n_out), L.ReLU()]
    model = cn.Sequential(*stack, L.Linear(sizes[-2], sizes[-1]))
    loss = cn.losses.SoftmaxCrossEntropy()
    optimizer = cn.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    return lambda: train_step(model, loss, optimizer, x, y)


def numpy_step(sizes, x, y):
    rng = np.random.default_rng(1)
    weights = [rng.uniform(-0.05, 0.05, (n_out, n_in)).astype(np.float32)
               for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    biases = [np.zeros(n_out, np.float32) for n_out in sizes[1:]]
    params = weights + biases
    velocities = [np.zeros_like(p) for p in params]
    rows = np.arange(len(x))

    def step():
        activations = [x]
        for W, b in zip(weights[:-1], biases[:-1]):
            activations.append(np.maximum(activations[-1] @ W.T + b, 0))
        logits = activations[-1] @ weights[-1].T + biases[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.log(probs[rows, y]).mean()
        grad = probs
        grad[rows, y] -= 1
        grad /= len(x)
        grads_w, grads_b = [], []
        for layer in range(len(weights) - 1, -1, -1):
            grads_w.append(grad.T @ activations[layer])
            grads_b.append(grad.sum(axis=0))
            if layer > 0:
                grad = (grad @ weights[layer]) * (activations[layer] > 0)
        for p, v, g in zip(params, velocities, grads_w[::-1] + grads_b[::-1]):
            v *= MOMENTUM
            v += g
            p -= LR * v
        return loss
    return step


def torch_step(sizes, x, y):
    stack = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        stack += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*stack, torch.nn.Linear(sizes[-2], sizes[-1]))
    return torch_training_step(model, x, y, LR, MOMENTUM)


STEPS = {"corenet": corenet_step, "numpy": numpy_step, "torch": torch_step}


@pytest.mark.parametrize("sizes, batch", CONFIGS,
                         ids=["-".join(map(str, s)) + f"@{b}" for s, b in CONFIGS])
def test_training_step(run, impl, sizes, batch):
    x, y = data(sizes, batch)
    run(f"mlp step {'-'.join(map(str, sizes))} batch {batch}", STEPS[impl](sizes, x, y))
