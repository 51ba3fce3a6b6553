"""Dead units: the ReLU-family units that stay off for every sample.

A unit is one entry of a layer's per-sample output: one feature after a Linear,
one channel at one position after a convolution. It is *dead* over a set of
samples when its input was <= 0 for each of them, so that it never entered its
linear regime: for relu its output was zero every time and no gradient reached
the weights before it; for leaky_relu, elu and prelu only the small slope of
the negative side did.
"""
from __future__ import annotations

import numpy as np

# The layers whose units can die: an identity for inputs > 0 and a flat or small
# slope below, by their registry names.
RELU_FAMILY = frozenset({"relu", "leaky_relu", "elu", "prelu"})


def linear_regime_source(inputs: tuple, output: np.ndarray) -> np.ndarray:
    """The array whose entries are > 0 exactly where a ReLU-family unit is in its linear
    regime, from what a forward hook receives: the layer's input, or its output when
    the layer is fused into the one before it (the input is then never kept, but fusion
    takes only slopes and alphas >= 0, for which the output is > 0 exactly when the
    input is)."""
    return inputs[0] if inputs[0] is not None else output


class DeadUnits:
    """Counts the dead units of a model's ReLU-family layers over the forwards it sees.

    While attached (``attach()``/``detach()``, or as a context manager) it watches every
    forward of the model through a forward hook, fused Linear → ReLU pairs included, and
    keeps for each unit the largest input seen: one array of the per-sample shape for
    each layer, updated in place, so that a batch allocates nothing. ``training_only``
    ignores forwards in evaluation mode (what the training diagnostics want).

    >>> import corenet as cn, corenet.layers as L, numpy as np
    >>> model = cn.Sequential(L.Linear(2, 3), L.ReLU(), L.Linear(3, 1))
    >>> model.layers[0].bias.value[:] = [-100, 0, 100]   # unit 0 can never turn on
    >>> with DeadUnits(model) as dead:
    ...     _ = model.forward(np.random.default_rng(0).uniform(-1, 1, (64, 2)))
    >>> dead.counts()
    {1: (1, 3)}
    """

    def __init__(self, model, training_only: bool = False):
        self.model = model
        self.training_only = training_only
        # id(layer) -> index of the layer in model.layers
        self._tracked = {id(layer): index for index, layer in enumerate(model.layers)
                         if layer.name in RELU_FAMILY}
        self._maxima = {}   # index -> the largest input of each unit since reset()
        self._scratch = {}  # index -> this batch's largest input of each unit
        self._seen = set()  # indices that have seen samples since reset()
        self._handle = None

    def attach(self) -> "DeadUnits":
        if self._handle is None:
            self._handle = self.model.register_forward_hook(self._observe)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "DeadUnits":
        return self.attach()

    def __exit__(self, *exc_info) -> None:
        self.detach()

    def reset(self) -> None:
        """Forget the samples seen so far (the arrays are kept for reuse)."""
        for maxima in self._maxima.values():
            maxima.fill(-np.inf)
        self._seen.clear()

    def _observe(self, layer, inputs: tuple, output: np.ndarray) -> None:
        index = self._tracked.get(id(layer))
        if index is None or (self.training_only and not layer.training):
            return
        source = linear_regime_source(inputs, output)
        maxima = self._maxima.get(index)
        if maxima is None or maxima.shape != source.shape[1:] or maxima.dtype != source.dtype:
            maxima = self._maxima[index] = np.full(source.shape[1:], -np.inf, source.dtype)
            self._scratch[index] = np.empty_like(maxima)
        scratch = self._scratch[index]
        np.max(source, axis=0, out=scratch)
        np.maximum(maxima, scratch, out=maxima)
        self._seen.add(index)

    def maxima(self) -> dict[int, np.ndarray]:
        """{index in model.layers: each unit's largest input} for the layers that have
        seen samples since ``reset()``: what ``merge`` takes."""
        return {index: self._maxima[index] for index in sorted(self._seen)}

    def merge(self, maxima: dict) -> None:
        """Counts the samples behind another DeadUnits' ``maxima()`` too (another rank's
        share of the batches): a unit is dead only if it was off on both."""
        for index, theirs in maxima.items():
            mine = self._maxima.get(index)
            if index in self._seen and mine.shape == theirs.shape:
                np.maximum(mine, theirs, out=mine)
            else:
                self._maxima[index] = np.array(theirs)
                self._scratch[index] = np.empty_like(self._maxima[index])
                self._seen.add(index)

    def counts(self) -> dict[int, tuple[int, int]]:
        """{index in model.layers: (dead units, units)} for each ReLU-family layer that
        has seen samples since ``reset()``."""
        return {index: (int(np.count_nonzero(maxima <= 0)), int(maxima.size))
                for index, maxima in sorted(self._maxima.items()) if index in self._seen}

    def fractions(self) -> dict[int, float]:
        """{index in model.layers: fraction of its units that are dead}."""
        return {index: dead / units for index, (dead, units) in self.counts().items()}
