"""The training diagnostics of each epoch, as a callback of corenet.train.fit.

``corenet train --diagnostics`` prints these reports and ``--json`` includes them:
the same objects a Python loop gets.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from corenet.arguments import as_bool, as_float
from corenet.diagnostics.dead_units import DeadUnits
from corenet.diagnostics.gradients import (EXPLODING, VANISHING, GradientWarning,
                                           describe_problem, gradient_problems,
                                           layer_gradient_norm, median_norm)
from corenet.train import Callback


@dataclass
class LayerDiagnostics:
    """One layer in one epoch. ``index`` is the layer's place in ``model.layers``;
    ``dead_units``/``units`` are set for ReLU-family layers, ``grad_norm`` (the mean
    over the epoch's batches of the L2 norm of the layer's parameter gradients) and
    ``gradient`` ("ok", "vanishing" or "exploding") for layers with parameters."""

    index: int
    layer: str
    dead_units: int | None = None
    units: int | None = None
    grad_norm: float | None = None
    gradient: str | None = None

    @property
    def label(self) -> str:
        return f"{self.layer}#{self.index}"

    @property
    def dead_fraction(self) -> float | None:
        return None if self.units is None else self.dead_units / self.units

    def as_dict(self) -> dict:
        entry = {"index": self.index, "layer": self.layer}
        if self.units is not None:
            entry.update(dead_units=self.dead_units, units=self.units,
                         dead_fraction=self.dead_fraction)
        if self.grad_norm is not None:
            entry.update(grad_norm=self.grad_norm, gradient=self.gradient)
        return entry


@dataclass
class EpochDiagnostics:
    """The diagnostics of one epoch (``epoch`` counted from 1, as printed)."""

    epoch: int
    layers: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "layers": [layer.as_dict() for layer in self.layers],
                "warnings": list(self.warnings)}

    def format(self) -> str:
        """The lines ``corenet train --diagnostics`` prints after the epoch's line."""
        dead = [f"{entry.label} {entry.dead_units}/{entry.units} "
                f"({100 * entry.dead_fraction:.1f}%)" for entry in self.layers
                if entry.units is not None]
        norms = [f"{entry.label} {entry.grad_norm:.3e}" for entry in self.layers
                 if entry.grad_norm is not None]
        lines = []
        if dead:
            lines.append("  dead units: " + ", ".join(dead))
        if norms:
            lines.append("  gradient norms: " + ", ".join(norms))
        lines += [f"  warning: {message}" for message in self.warnings]
        return "\n".join(lines)


def data_parallel_communicator(model):
    """The MPI communicator of the DistributedOptimizer that trains ``model``, or None."""
    distributed = sys.modules.get("corenet.distributed")  # never imported: no MPI job
    return None if distributed is None else distributed.communicator_of(model)


class Diagnostics(Callback):
    """Per epoch: the dead units of each ReLU-family layer over the epoch's training
    samples (corenet.diagnostics.DeadUnits), the gradient norm of each layer with
    parameters, and a GradientWarning for each layer whose norm is below ``vanishing``
    or above ``exploding`` times the median of the layers' norms (gradient_problems).

    ``history`` holds one EpochDiagnostics an epoch; ``warn=False`` leaves the warnings
    in the reports only. Under a corenet.distributed.DistributedOptimizer the dead units
    are counted over every rank's samples: every rank must then have this callback.

    >>> import corenet as cn, corenet.layers as L
    >>> from corenet.data import load_digits
    >>> from corenet.train import fit
    >>> X, y = load_digits()
    >>> model = cn.Sequential(L.Linear(64, 32), L.ReLU(), L.Linear(32, 10))
    >>> diagnostics = Diagnostics()
    >>> _ = fit(model, cn.losses.SoftmaxCrossEntropy(), cn.optim.SGD(model.parameters(),
    ...         lr=0.05), X, y, epochs=2, callbacks=[diagnostics])
    >>> [entry.label for entry in diagnostics.history[-1].layers]
    ['linear#0', 'relu#1', 'linear#2']
    """

    def __init__(self, vanishing: float = VANISHING, exploding: float = EXPLODING,
                 warn: bool = True):
        # "0.1" was a raw TypeError from the comparison and warn="no" was taken as True.
        vanishing = as_float("Diagnostics", "vanishing", vanishing)
        if exploding != math.inf:  # infinity turns the exploding warnings off
            exploding = as_float("Diagnostics", "exploding", exploding)
        gradient_problems({}, vanishing, exploding)  # checks the thresholds now
        self.vanishing = vanishing
        self.exploding = exploding
        self.warn = as_bool("Diagnostics", "warn", warn)
        self.history = []
        self._dead = None

    def on_train_begin(self) -> None:
        self.history = []
        self._dead = DeadUnits(self.model, training_only=True)
        self._with_parameters = [index for index, layer in enumerate(self.model.layers)
                                 if layer.parameters()]
        self._norm_sums = np.zeros(len(self._with_parameters))
        self._batches = 0

    def on_epoch_begin(self, epoch: int) -> None:
        self._dead.reset()
        self._dead.attach()
        self._norm_sums.fill(0)
        self._batches = 0

    def on_after_backward(self, epoch: int, batch: int) -> None:
        layers = self.model.layers
        for position, index in enumerate(self._with_parameters):
            self._norm_sums[position] += layer_gradient_norm(layers[index]) or 0.0
        self._batches += 1

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._dead.detach()
        comm = data_parallel_communicator(self.model)
        if comm is not None:
            # Each rank saw its share of the samples: a unit is dead if off on all of them.
            for maxima in comm.allgather(self._dead.maxima()):
                self._dead.merge(maxima)
        report = self._report(epoch + 1)
        self.history.append(report)
        if self.warn:
            for message in report.warnings:
                warnings.warn(message, GradientWarning, stacklevel=2)

    def on_train_end(self) -> None:
        if self._dead is not None:
            self._dead.detach()

    def _report(self, epoch: int) -> EpochDiagnostics:
        entries = {index: LayerDiagnostics(index, layer.name)
                   for index, layer in enumerate(self.model.layers)}
        for index, (dead, units) in self._dead.counts().items():
            entries[index].dead_units, entries[index].units = dead, units
        norms = {index: float(total) / max(self._batches, 1)
                 for index, total in zip(self._with_parameters, self._norm_sums)}
        problems = gradient_problems(norms, self.vanishing, self.exploding)
        median = median_norm(norms)
        report = EpochDiagnostics(epoch)
        for index, norm in norms.items():
            entries[index].grad_norm = norm
            entries[index].gradient = problems.get(index, "ok")
            if index in problems:
                report.warnings.append(f"epoch {epoch}: " + describe_problem(
                    entries[index].label, norm, median, problems[index], self.vanishing,
                    self.exploding))
        report.layers = [entry for entry in entries.values()
                         if entry.units is not None or entry.grad_norm is not None]
        return report
