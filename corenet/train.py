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

from corenet.arguments import as_int
from corenet.errors import ShapeError
from corenet.layer import as_array
from corenet.optim import SGD, Adam, AdamW, Optimizer, RMSprop, clip_grad_norm
from corenet.schedules import (Constant, CosineDecay, LinearWarmup, Schedule, Sequence,
                               StepDecay)


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
        holds that batch's gradient (None where backward did not reach it)."""

    def on_batch_end(self, epoch: int, batch: int, loss: float) -> None:
        """After a batch's update; ``loss`` is that batch's loss."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """After the last batch of ``epoch``; ``logs["loss"]`` is its mean training loss.
        Called before fit's ``on_epoch``, in the order of the list."""

    def on_train_end(self) -> None:
        """After the last epoch, and also when training stops on an exception."""


def train_step(model, loss, optimizer, x, y, after_backward=None,
               clip_norm: float | None = None) -> float:
    """One step: forward, loss, backward, ``after_backward()`` if given, update
    (gradients first clipped to a global norm of ``clip_norm`` if given). Returns the
    batch loss."""
    if type(optimizer).zero_grad is Optimizer.zero_grad:
        # Gradients unset, as torch.optim's default: the first backward writes them, with
        # no pass that clears them (a subclass's own zero_grad may take no argument).
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.zero_grad()
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    if after_backward is not None:
        after_backward()
    if clip_norm is not None:
        clip_grad_norm(model.parameters(), clip_norm)
    optimizer.step()
    return value


def cosine_schedule(lr: float, epochs: int):
    """lr at the start, falling along half a cosine to near zero at the last epoch
    (``corenet.schedules.CosineDecay(epochs)`` with its base lr fixed)."""
    cosine = CosineDecay(epochs)
    return lambda epoch: cosine(lr, epoch)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def make_optimizer(name: str, params, lr: float | None = None, momentum: float | None = None,
                   weight_decay: float | None = None, nesterov: bool = False):
    """The optimizer ``corenet train --optimizer NAME`` makes. Settings left at None take
    the optimizer's defaults (PyTorch's), except SGD's: lr 0.02 and momentum 0.9,
    which suit the bundled digits."""
    if name not in OPTIMIZERS:
        raise ValueError(f"no optimizer named {name!r}; choose from {sorted(OPTIMIZERS)}")
    settings = {"lr": 0.02, "momentum": 0.9} if name == "sgd" else {}
    if lr is not None:
        settings["lr"] = lr
    if momentum is not None:
        if name not in ("sgd", "rmsprop"):
            raise ValueError(f"momentum is a setting of sgd and rmsprop, not of {name}")
        settings["momentum"] = momentum
    if weight_decay is not None:
        settings["weight_decay"] = weight_decay
    if nesterov:
        if name != "sgd":
            raise ValueError(f"nesterov is a setting of sgd, not of {name}")
        settings["nesterov"] = True
    return OPTIMIZERS[name](params, **settings)


def make_schedule(kind: str, epochs: int, warmup: int = 0, step_size: int | None = None,
                  gamma: float = 0.1) -> Schedule:
    """The schedule of ``corenet train --schedule KIND --warmup N``: ``warmup`` epochs
    rising linearly from a tenth of the lr, then over the remaining epochs cosine
    decay to zero, step decay (by ``gamma`` every ``step_size`` epochs, default a third
    of them) or a constant lr."""
    if not 0 <= warmup < epochs:
        raise ValueError(f"a warm-up of {warmup} epochs needs more epochs than that and at "
                         f"least 0, got {epochs} epochs")
    remaining = epochs - warmup
    if kind == "cosine":
        main = CosineDecay(remaining)
    elif kind == "step":
        main = StepDecay(step_size if step_size is not None else max(1, remaining // 3), gamma)
    elif kind == "constant":
        main = Constant()
    else:
        raise ValueError(f"no schedule named {kind!r}; choose from constant, cosine, step")
    if warmup:
        return Sequence([LinearWarmup(warmup, start_factor=0.1), main], milestones=[warmup])
    return main


def fit(model, loss, optimizer, X, y, epochs: int = 1, batch_size: int = 32,
        seed: int = 0, on_batch=None, on_epoch=None, lr_schedule=None,
        callbacks=(), step=None, clip_norm: float | None = None,
        start_epoch: int = 0) -> list[float]:
    """Train for ``epochs``; returns the mean training loss of each epoch.

    ``on_batch(epoch, batch, n_batches, loss)`` and ``on_epoch(epoch, mean_loss)``
    are called as training goes; a NaN or infinite loss raises TrainingDiverged.
    ``lr_schedule``, if given, sets the learning rates before each epoch: a
    ``corenet.schedules.Schedule`` scales each parameter group's own base lr; any
    other callable ``epoch -> lr`` sets every group's lr. ``clip_norm`` clips the
    gradients of each step to that global norm (not with ``step``).
    ``callbacks``: Callback objects (corenet.diagnostics.Diagnostics is one).
    ``step(model, loss, optimizer, X, y, index)`` replaces ``train_step`` on the global
    batch ``index``: corenet.gradients.AccumulatingStep, corenet.distributed.DistributedStep.
    With a step, ``on_after_backward`` comes after it: the gradients then are the ones
    the update used (the sum over micro-batches or ranks).
    ``start_epoch``: go on from a checkpoint taken after that many epochs; the batches
    of each epoch are those an uninterrupted run draws. The history returned starts there.
    """
    X, y = checked_data("fit", X, y)
    epochs = as_int("fit", "epochs", epochs, 0, integral_floats=False)
    batch_size = as_int("fit", "batch_size", batch_size, 1, integral_floats=False)
    seed = as_int("fit", "seed", seed, 0, integral_floats=False)
    # A start past the end trained nothing, a negative one more epochs than asked.
    start_epoch = as_int("fit", "start_epoch", start_epoch, 0, epochs, integral_floats=False)
    if step is not None and clip_norm is not None:
        raise ValueError("fit: clip_norm applies to the plain step; with --accumulate or "
                         "--distributed the summed gradients are not clipped")
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
    for _ in range(start_epoch):  # the shuffles of the epochs done before the checkpoint
        rng.permutation(len(X))
    try:
        for epoch in range(start_epoch, epochs):
            if isinstance(lr_schedule, Schedule):
                lr_schedule.apply(optimizer, epoch)
            elif lr_schedule is not None:
                optimizer.lr = lr_schedule(epoch)
            for callback in callbacks:
                callback.on_epoch_begin(epoch)
            total = 0.0
            for batch, index in enumerate(batches(len(X), batch_size, rng)):
                after_backward = partial(_after_backward, callbacks, epoch, batch) \
                    if callbacks else None
                if step is None:
                    value = train_step(model, loss, optimizer, X[index], y[index],
                                       after_backward, clip_norm)
                else:
                    value = step(model, loss, optimizer, X, y, index)
                    if after_backward is not None:
                        after_backward()
                if not math.isfinite(value):
                    raise TrainingDiverged(f"the loss became {value} at epoch {epoch + 1}, "
                                           f"batch {batch + 1}; try a smaller learning rate")
                total += value * len(index)
                for callback in callbacks:
                    callback.on_batch_end(epoch, batch, value)
                if on_batch is not None:
                    on_batch(epoch, batch, n_batches, value)
            history.append(total / len(X))
            for callback in callbacks:
                callback.on_epoch_end(epoch, {"loss": history[-1]})
            if on_epoch is not None:
                on_epoch(epoch, history[-1])
    finally:
        _end_training(callbacks)
    return history


def _end_training(callbacks: list) -> None:
    """Every callback's on_train_end, even after one of them raised (a governor must
    give the threads back); the first error is raised after the last call."""
    errors = []
    for callback in callbacks:
        try:
            callback.on_train_end()
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]


def _after_backward(callbacks: list, epoch: int, batch: int) -> None:
    for callback in callbacks:
        callback.on_after_backward(epoch, batch)


def checked_data(owner: str, X, y) -> tuple:
    """(X, y) as arrays of as many samples, at least one, or a clear error."""
    X, y = as_array(owner, "X", X), as_array(owner, "y", y)
    if X.ndim == 0 or len(X) == 0:
        raise ShapeError(f"{owner}: expected a non-empty X, one sample per row, got shape "
                         f"{X.shape}")
    if y.ndim == 0 or len(y) != len(X):
        raise ShapeError(f"{owner}: expected one target per sample of X ({len(X)}) in y, "
                         f"got shape {y.shape}")
    return X, y


def evaluate(model, loss, X, y, batch_size: int = 1024) -> tuple[float, float]:
    """(mean loss, accuracy) of a classifier over a dataset, in evaluation mode."""
    X, y = checked_data("evaluate", X, y)
    batch_size = as_int("evaluate", "batch_size", batch_size, 1, integral_floats=False)
    if y.ndim != 1:  # accuracy compares each sample's argmax with its class label
        raise ShapeError(f"evaluate: expected y of class labels, shape ({len(X)},), got "
                         f"{y.shape}; evaluate measures a classifier's accuracy")
    logits = model.predict(X, batch_size)
    check_classifier_output("evaluate", logits)
    return loss.forward(logits, y), float(np.mean(np.argmax(logits, axis=1) == y))


def check_classifier_output(owner: str, outputs) -> None:
    """A ShapeError unless ``outputs`` (what Model.predict gave) is one array of
    shape (samples, classes): an argmax over axis 1 of anything else picks samples
    or pixels, not classes."""
    if isinstance(outputs, np.ndarray) and outputs.ndim == 2:
        return
    if isinstance(outputs, list):
        given = (f"{len(outputs)} outputs, of per-sample shapes "
                 f"{', '.join(str(out.shape[1:]) for out in outputs)}")
    else:
        given = f"outputs of per-sample shape {outputs.shape[1:]}"
    raise ShapeError(f"{owner}: a classifier's model has one output of shape (classes,) per "
                     f"sample; this one gives {given}")
