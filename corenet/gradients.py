"""A model's gradients as one flat vector in backward order, cut into buckets, and the
accumulation of micro-batch gradients behind ``corenet train --accumulate K``.

The determinism contract of corenet.distributed rests on the two functions here: K ranks
and K accumulated micro-batches do the same float operations in the same order.

1. Each micro-batch's gradient (its loss is a mean over its own samples) is multiplied by
   its share of the global batch, ``weight = n_micro / n_global``, rounded once to the
   parameters' dtype (``pack``).
2. The weighted gradients are summed in rank order, ``((g0 + g1) + g2) + ...``, one
   elementwise IEEE addition per step (``add_in_order`` here, a chain of ranks there).

>>> import corenet as cn, corenet.layers as L, numpy as np
>>> model = cn.Sequential(L.Linear(4, 3), L.ReLU(), L.Linear(3, 2))
>>> flat = FlatGradients(model.parameters())
>>> flat.size, [p.name for p in flat.parameters][:2]
(23, ['bias', 'weight'])
"""
from __future__ import annotations

import numpy as np

# DDP uses 25 MB buckets for GPU models; corenet's models are smaller and the first
# bucket should leave backward early, so that its allreduce overlaps the rest.
DEFAULT_BUCKET_BYTES = 1 << 20


class FlatGradients:
    """Where each parameter's gradient lives in a flat vector, and the buckets.

    Parameters are laid out in backward order (the reverse of ``model.parameters()``),
    so the first bucket holds the last layers, whose gradients are ready first. A bucket
    is a run of whole parameters of at most ``bucket_bytes`` (a larger parameter has a
    bucket of its own).
    """

    def __init__(self, parameters, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.parameters = list(reversed(list(parameters)))
        if not self.parameters:
            raise ValueError("FlatGradients: the model has no parameters")
        dtypes = sorted({str(p.value.dtype) for p in self.parameters})
        if len(dtypes) != 1:
            raise TypeError(f"FlatGradients: the parameters mix dtypes {dtypes}; convert the "
                            f"model with model.astype(...) first")
        self.dtype = self.parameters[0].value.dtype
        sizes = [p.value.size for p in self.parameters]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.size = self.offsets[-1]
        # buckets[b] = (first parameter, end parameter): parameters[first:end]
        self.buckets, first, nbytes = [], 0, 0
        for index, size in enumerate(sizes):
            if index > first and nbytes + size * self.dtype.itemsize > bucket_bytes:
                self.buckets.append((first, index))
                first, nbytes = index, 0
            nbytes += size * self.dtype.itemsize
        self.buckets.append((first, len(sizes)))
        self.bucket_of = [b for b, (start, end) in enumerate(self.buckets)
                          for _ in range(start, end)]

    def span(self, bucket: int) -> slice:
        """The slice of the flat vector that bucket ``bucket`` occupies."""
        first, end = self.buckets[bucket]
        return slice(self.offsets[first], self.offsets[end])

    def pack(self, out: np.ndarray, index: int, weight: float) -> None:
        """out[parameter index's span] = its grad * weight (step 1 of the contract)."""
        parameter = self.parameters[index]
        grad = parameter.grad
        if grad is None:  # unset (zero_grad(set_to_none=True)) and not reached since: zeros
            out[self.offsets[index]:self.offsets[index + 1]] = 0
            return
        if not isinstance(grad, np.ndarray) or grad.shape != parameter.value.shape \
                or grad.dtype != self.dtype:
            raise ValueError(f"the grad of {parameter.name!r} must be a {self.dtype} array of "
                             f"shape {parameter.value.shape}, got "
                             f"{getattr(grad, 'dtype', type(grad).__name__)} "
                             f"{getattr(grad, 'shape', '')}")
        np.multiply(grad.reshape(-1), self.dtype.type(weight),
                    out=out[self.offsets[index]:self.offsets[index + 1]])

    def pack_all(self, out: np.ndarray, weight: float) -> None:
        for index in range(len(self.parameters)):
            self.pack(out, index, weight)

    def unpack(self, flat: np.ndarray) -> None:
        """Every parameter's grad = its span of ``flat``."""
        for index, parameter in enumerate(self.parameters):
            span = flat[self.offsets[index]:self.offsets[index + 1]]
            if parameter.grad is None:  # unset: a new array (a rank that ran no samples)
                parameter.grad = span.reshape(parameter.value.shape).copy()
            else:
                parameter.grad[...] = span.reshape(parameter.grad.shape)


def add_in_order(total: np.ndarray, weighted: np.ndarray) -> None:
    """total += weighted, elementwise: one step of the rank-order sum (step 2)."""
    np.add(total, weighted, out=total)


def micro_batches(index: np.ndarray, parts: int) -> list:
    """A global batch's indices cut into ``parts`` contiguous runs, sizes differing by at
    most one (the first ones larger); a run may be empty when the batch is small.

    >>> [run.tolist() for run in micro_batches(np.arange(5), 3)]
    [[0, 1], [2, 3], [4]]
    """
    return np.array_split(index, parts)


class AccumulatingStep:
    """A training step over a global batch as ``parts`` micro-batches in order, their
    weighted gradients summed before one optimizer step: what K ranks compute, in one
    process. Call as ``step(model, loss, optimizer, X, y, index)``; returns the batch
    loss (the weighted sum of the micro-batch losses, in order)."""

    def __init__(self, parts: int):
        if parts < 1:
            raise ValueError(f"accumulate: the number of micro-batches must be >= 1, "
                             f"got {parts}")
        self.parts = parts
        self._flat = None

    def __call__(self, model, loss, optimizer, X, y, index) -> float:
        if self._flat is None:
            self._flat = FlatGradients(model.parameters())
            self._total = np.empty(self._flat.size, self._flat.dtype)
            self._weighted = np.empty_like(self._total)
        if len(index) == 0:  # each micro-batch's weight would divide by zero
            raise ValueError("accumulate: got an empty global batch (no sample indices)")
        value = 0.0
        for part, run in enumerate(micro_batches(index, self.parts)):
            weight = len(run) / len(index)
            value += weight * micro_batch_gradient(model, loss, optimizer, X, y, run)
            self._flat.pack_all(self._total if part == 0 else self._weighted, weight)
            if part > 0:
                add_in_order(self._total, self._weighted)
        self._flat.unpack(self._total)
        optimizer.step()
        return value


def micro_batch_gradient(model, loss, optimizer, X, y, run) -> float:
    """Zeroed gradients, then forward and backward over the samples ``run``; returns the
    loss (0.0 and zero gradients for an empty run, a rank without samples)."""
    optimizer.zero_grad()
    if len(run) == 0:
        return 0.0
    value = loss.forward(model.forward(X[run]), y[run])
    model.backward(loss.backward())
    return value
