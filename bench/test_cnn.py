"""A LeNet-5 training step (1x28x28 inputs; conv 6@5x5 pad 2, relu, max pool 2, conv
16@5x5, relu, max pool 2, flatten, 120, 84, 10; SGD with momentum; softmax
cross-entropy) in corenet and in PyTorch, at batch 64 and 256."""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from conftest import torch, torch_training_step
from corenet.train import train_step

IMPLS = ["corenet", "torch"]
BATCHES = [64, 256]
LR, MOMENTUM = 0.01, 0.9


def lenet_corenet():
    return cn.Sequential(
        L.Conv2d(1, 6, 5, padding=2), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(6, 16, 5), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
        L.Linear(400, 120), L.ReLU(), L.Linear(120, 84), L.ReLU(), L.Linear(84, 10),
        input_shape=(1, 28, 28))


def lenet_torch():
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def lenet_flops(batch):
    """Forward and backward: three times the forward's multiply-adds, times two."""
    forward = 6 * 25 * 28 * 28 + 16 * 150 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10
    return 3 * 2 * batch * forward


def lenet_step(impl, batch):
    """One LeNet-5 training step of ``impl`` on a fixed random batch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    if impl == "corenet":
        model = lenet_corenet()
        loss = cn.losses.SoftmaxCrossEntropy()
        optimizer = cn.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def step():
            return train_step(model, loss, optimizer, x, y)
        return step
    return torch_training_step(lenet_torch(), x, y, LR, MOMENTUM)


@pytest.mark.parametrize("batch", BATCHES)
def test_lenet_training_step(run, impl, batch):
    run(f"lenet-5 training step batch {batch}", lenet_step(impl, batch),
        flops=lenet_flops(batch))
