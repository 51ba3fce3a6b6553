"""Linear regions: how many pieces a ReLU network cuts its input space into.

Each hidden unit of a one-hidden-layer ReLU network switches on one side of the
hyperplane w·x + b = 0; inside each cell of those n hyperplanes the network is
one affine map. Zaslavsky's theorem counts the cells of n hyperplanes in general
position in d dimensions: Σ_{s=0}^{d} C(n, s) (n(n+1)/2 + 1 lines in the plane).
The lecture draws them in 2-D; count_linear_regions counts them on a grid.
"""
from __future__ import annotations

import math

import numpy as np

from corenet.arguments import as_int
from corenet.diagnostics.dead_units import RELU_FAMILY, linear_regime_source
from corenet.errors import ShapeError
from corenet.memory import check_allocation


# Beyond these the answer is slow to compute or huge: a sum of ``terms`` binomials of n
# takes time ~ terms * n (about 1 s for 5 * 10**4 terms of n = 10**5), and 2**n has n bits.
MAX_SUM_COST = 5 * 10 ** 9
MAX_HYPERPLANES = 10 ** 8


def max_linear_regions(n_hyperplanes: int, dim: int) -> int:
    """Σ_{s=0}^{dim} C(n, s), exactly: the regions that ``n_hyperplanes`` hyperplanes in
    general position cut R^dim into (Zaslavsky), the most n ReLU units of one hidden
    layer can make; 2**n when dim >= n.

    >>> max_linear_regions(3, 2), max_linear_regions(100, 784) == 2 ** 100
    (7, True)
    """
    n = as_int("max_linear_regions", "n_hyperplanes", n_hyperplanes, 0,
               MAX_HYPERPLANES, integral_floats=False)
    dim = as_int("max_linear_regions", "dim", dim, 0, integral_floats=False)
    if dim >= n:  # every sign pattern of the hyperplanes is a region
        return 1 << n
    # Σ_{s<=dim} C(n, s) = 2**n - Σ_{s<n-dim} C(n, s): the shorter of the two sums.
    terms = min(dim, n - dim - 1)
    if terms * n > MAX_SUM_COST:
        raise ValueError(f"max_linear_regions: n_hyperplanes * min(dim, n_hyperplanes - dim "
                         f"- 1) must be at most {MAX_SUM_COST:.0e} (the sum takes time "
                         f"~ their product), got n_hyperplanes={n}, dim={dim}")
    if dim == terms:
        return binomial_prefix_sum(n, dim)
    return (1 << n) - binomial_prefix_sum(n, terms)


def binomial_prefix_sum(n: int, last: int) -> int:
    """Σ_{s=0}^{last} C(n, s), each term from the one before (math.comb starts afresh)."""
    total = term = 1
    for s in range(last):
        term = term * (n - s) // (s + 1)
        total += term
    return total


def activation_patterns(model, X, batch_size: int = 4096) -> np.ndarray:
    """(N, units) booleans: which units of the model's ReLU-family layers are in their
    linear regime (input > 0) for each sample of X, in evaluation mode; the units of
    all those layers side by side, in the order of ``model.layers``."""
    batch_size = as_int("activation_patterns", "batch_size", batch_size, 1,
                        integral_floats=False)
    # An empty X was numpy's "need at least one array to concatenate".
    if np.ndim(X) == 0 or len(X) == 0:
        raise ShapeError(f"activation_patterns: expected at least one sample in X, got "
                         f"shape {np.shape(X)}")
    tracked = {id(layer) for layer in model.layers if layer.name in RELU_FAMILY}
    if not tracked:
        raise ValueError(f"activation_patterns: the model has no ReLU-family layer "
                         f"({', '.join(sorted(RELU_FAMILY))})")
    parts = []

    def record(layer, inputs, output):
        if id(layer) in tracked:
            source = linear_regime_source(inputs, output)
            parts.append(source.reshape(len(source), -1) > 0)

    handle = model.register_forward_hook(record)
    try:
        batches = []
        for start in range(0, len(X), batch_size):
            parts.clear()
            model.predict(X[start:start + batch_size], batch_size)
            batches.append(np.hstack(parts))
    finally:
        handle.remove()
    return np.concatenate(batches)


def count_linear_regions(model, extent: float = 4.0, resolution: int = 400) -> int:
    """How many distinct activation patterns the model's ReLU-family units take on a
    ``resolution`` × ``resolution`` grid over [-extent, extent]²: the linear regions
    that the grid meets (a region thinner than the grid's step can be missed).

    >>> import corenet as cn, corenet.layers as L
    >>> model = cn.Sequential(L.Linear(2, 2), L.ReLU())
    >>> model.layers[0].weight.value[:] = [[1, 0], [0, 1]]   # the two axes
    >>> model.layers[0].bias.value[:] = 0.5
    >>> count_linear_regions(model, extent=1, resolution=50)
    4
    """
    if model.inputs[0].shape != (2,) or len(model.inputs) != 1:
        raise ShapeError(f"count_linear_regions: expected a model of one input of shape (2,), "
                         f"got input shapes {[tensor.shape for tensor in model.inputs]}")
    # A resolution of 2.5 was truncated, an infinite extent made a grid of NaN (a count
    # of 2, silently), a string a TypeError from the comparison.
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
            or resolution < 2 or isinstance(extent, bool) \
            or not isinstance(extent, (int, float, np.integer, np.floating)) \
            or not math.isfinite(extent) or not extent > 0:
        raise ValueError(f"count_linear_regions: expected an integer resolution >= 2 and a "
                         f"finite extent > 0, got resolution={resolution!r}, "
                         f"extent={extent!r}")
    check_allocation("count_linear_regions", "the grid", (int(resolution) ** 2, 2),
                     np.float64)
    axis = np.linspace(-extent, extent, int(resolution))
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    patterns = np.packbits(activation_patterns(model, grid), axis=1)
    return len(np.unique(patterns, axis=0))
