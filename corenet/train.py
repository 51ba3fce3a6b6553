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
from functools import partial

import numpy as np


class TrainingDiverged(ArithmeticError):
    """The loss became NaN or infinite: the learning rate is usually too high."""


def batches(n_samples: int, batch_size: int, rng: np.random.Generator | None):
    """Index arrays for one epoch, shuffled when rng is given."""
    order = rng.permutation(n_samples) if rng is not None else np.arange(n_samples)
    for start in range(0, n_samples, batch_size):
        yield order[start:start + batch_size]


class Callback:
    """Hooks that ``fit(..., callbacks=[...])`` calls as training goes, as Keras's
    callbacks (PyTorch Lightning's for ``on_after_backward``). Override the ones you
    need; fit sets ``self.model`` before ``on_train_begin``.

    >>> class Losses(Callback):
    ...     def on_train_begin(self):
    ...         self.losses = []
    ...     def on_epoch_end(self, epoch, logs):
    ...         self.losses.append(logs["loss"])
    """

    model = None

    def on_train_begin(self) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Before the first batch of ``epoch`` (counted from 0)."""

    def on_after_backward(self, epoch: int, batch: int) -> None:
        """After a batch's backward, before the optimizer's step: each Parameter.grad
        holds that batch's gradient."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """After the last batch of ``epoch``; ``logs["loss"]`` is its mean training loss.
        Called before fit's ``on_epoch``, in the order of the list."""

    def on_train_end(self) -> None:
        """After the last epoch, and also when training stops on an exception."""


def train_step(model, loss, optimizer, x, y, after_backward=None) -> float:
    """One step: forward, loss, backward, ``after_backward()`` if given, update.
    Returns the batch loss."""
    optimizer.zero_grad()
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    if after_backward is not None:
        after_backward()
    optimizer.step()
    return value


def cosine_schedule(lr: float, epochs: int):
    """lr at the start, falling along half a cosine to near zero at the last epoch."""
    return lambda epoch: lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def fit(model, loss, optimizer, X, y, epochs: int = 1, batch_size: int = 32,
        seed: int = 0, on_batch=None, on_epoch=None, lr_schedule=None,
        callbacks=(), step=None) -> list[float]:
    """Train for ``epochs``; returns the mean training loss of each epoch.

    ``on_batch(epoch, batch, n_batches, loss)`` and ``on_epoch(epoch, mean_loss)``
    are called as training goes; a NaN or infinite loss raises TrainingDiverged.
    ``lr_schedule(epoch)``, if given, sets ``optimizer.lr`` before each epoch.
    ``callbacks``: Callback objects (corenet.diagnostics.Diagnostics is one).
    ``step(model, loss, optimizer, X, y, index)`` replaces ``train_step`` on the global
    batch ``index``: corenet.gradients.AccumulatingStep, corenet.distributed.DistributedStep.
    With a step, ``on_after_backward`` comes after it: the gradients then are the ones
    the update used (the sum over micro-batches or ranks).
    """
    if batch_size < 1:
        raise ValueError(f"fit: batch_size must be >= 1, got {batch_size}")
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"fit: callbacks must be corenet.train.Callback objects, got "
                            f"{type(callback).__name__}")
        callback.model = model
    rng = np.random.default_rng(seed)
    n_batches = math.ceil(len(X) / batch_size)
    history = []
    model.train()
    for callback in callbacks:
        callback.on_train_begin()
    try:
        for epoch in range(epochs):
            if lr_schedule is not None:
                optimizer.lr = lr_schedule(epoch)
            for callback in callbacks:
                callback.on_epoch_begin(epoch)
            total = 0.0
            for batch, index in enumerate(batches(len(X), batch_size, rng)):
                after_backward = partial(_after_backward, callbacks, epoch, batch) \
                    if callbacks else None
                if step is None:
                    value = train_step(model, loss, optimizer, X[index], y[index],
                                       after_backward)
                else:
                    value = step(model, loss, optimizer, X, y, index)
                    if after_backward is not None:
                        after_backward()
                if not math.isfinite(value):
                    raise TrainingDiverged(f"the loss became {value} at epoch {epoch + 1}, "
                                           f"batch {batch + 1}; try a smaller learning rate")
                total += value * len(index)
                if on_batch is not None:
                    on_batch(epoch, batch, n_batches, value)
            history.append(total / len(X))
            for callback in callbacks:
                callback.on_epoch_end(epoch, {"loss": history[-1]})
            if on_epoch is not None:
                on_epoch(epoch, history[-1])
    finally:
        for callback in callbacks:
            callback.on_train_end()
    return history


def _after_backward(callbacks: list, epoch: int, batch: int) -> None:
    for callback in callbacks:
        callback.on_after_backward(epoch, batch)


def evaluate(model, loss, X, y, batch_size: int = 1024) -> tuple[float, float]:
    """(mean loss, accuracy) of a classifier over a dataset, in evaluation mode."""
    logits = model.predict(X, batch_size)
    return loss.forward(logits, y), float(np.mean(np.argmax(logits, axis=1) == y))
