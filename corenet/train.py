"""The training loop behind ``corenet train``, usable from Python too.

>>> import corenet as cn, corenet.layers as L
>>> from corenet.data import load_digits
>>> X, y = load_digits()
>>> model = cn.Sequential(L.Linear(64, 32), L.ReLU(), L.Linear(32, 10))
>>> loss = cn.losses.SoftmaxCrossEntropy()
>>> history = fit(model, loss, cn.optim.SGD(model.parameters(), lr=0.1), X, y, epochs=1)
>>> len(history)
1
"""
from __future__ import annotations

import math

import numpy as np


class TrainingDiverged(ArithmeticError):
    """The loss became NaN or infinite: the learning rate is usually too high."""


def batches(n_samples: int, batch_size: int, rng: np.random.Generator | None):
    """Index arrays for one epoch, shuffled when rng is given."""
    order = rng.permutation(n_samples) if rng is not None else np.arange(n_samples)
    for start in range(0, n_samples, batch_size):
        yield order[start:start + batch_size]


def train_step(model, loss, optimizer, x, y) -> float:
    """One step: forward, loss, backward, update. Returns the batch loss."""
    optimizer.zero_grad()
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    optimizer.step()
    return value


def cosine_schedule(lr: float, epochs: int):
    """lr at the start, falling along half a cosine to near zero at the last epoch."""
    return lambda epoch: lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def fit(model, loss, optimizer, X, y, epochs: int = 1, batch_size: int = 32,
        seed: int = 0, on_batch=None, on_epoch=None, lr_schedule=None,
        step=None) -> list[float]:
    """Train for ``epochs``; returns the mean training loss of each epoch.

    ``on_batch(epoch, batch, n_batches, loss)`` and ``on_epoch(epoch, mean_loss)``
    are called as training goes; a NaN or infinite loss raises TrainingDiverged.
    ``lr_schedule(epoch)``, if given, sets ``optimizer.lr`` before each epoch.
    ``step(model, loss, optimizer, X, y, index)`` replaces ``train_step`` on the global
    batch ``index``: corenet.gradients.AccumulatingStep, corenet.distributed.DistributedStep.
    """
    if batch_size < 1:
        raise ValueError(f"fit: batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    n_batches = math.ceil(len(X) / batch_size)
    history = []
    model.train()
    for epoch in range(epochs):
        if lr_schedule is not None:
            optimizer.lr = lr_schedule(epoch)
        total = 0.0
        for batch, index in enumerate(batches(len(X), batch_size, rng)):
            value = train_step(model, loss, optimizer, X[index], y[index]) if step is None \
                else step(model, loss, optimizer, X, y, index)
            if not math.isfinite(value):
                raise TrainingDiverged(f"the loss became {value} at epoch {epoch + 1}, "
                                       f"batch {batch + 1}; try a smaller learning rate")
            total += value * len(index)
            if on_batch is not None:
                on_batch(epoch, batch, n_batches, value)
        history.append(total / len(X))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return history


def evaluate(model, loss, X, y, batch_size: int = 1024) -> tuple[float, float]:
    """(mean loss, accuracy) of a classifier over a dataset, in evaluation mode."""
    logits = model.predict(X, batch_size)
    return loss.forward(logits, y), float(np.mean(np.argmax(logits, axis=1) == y))
