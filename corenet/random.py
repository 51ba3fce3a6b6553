"""The random generator layers draw from: initial weights, and dropout's masks.

``corenet.random.seed(n)`` makes every later draw reproducible, as
``torch.manual_seed`` does: the same seed, the same model built and trained the
same way, the same weights at the end.
"""
import contextlib

import numpy as np

from corenet.arguments import as_int

_generator = np.random.default_rng()


def seed(value: int) -> None:
    """Draw from a generator seeded with ``value``, a non-negative integer, from now on."""
    global _generator
    _generator = np.random.default_rng(_checked_seed("seed", value))


def _checked_seed(owner: str, value) -> int:
    # numpy's own errors ("expected non-negative integer") name neither corenet nor the seed.
    return as_int(f"corenet.random.{owner}", "the seed", value, 0, integral_floats=False)


def generator() -> np.random.Generator:
    return _generator


def set_generator(value: np.random.Generator) -> None:
    """Draw from ``value`` from now on (a checkpoint restores its generator so)."""
    global _generator
    if not isinstance(value, np.random.Generator):
        raise TypeError(f"set_generator expects a numpy Generator, got {type(value).__name__}")
    _generator = value


@contextlib.contextmanager
def seeded(value: int):
    """Draws inside the block come from a generator seeded with ``value``; the one
    before comes back afterwards, where it was.

    >>> with seeded(0):
    ...     first = generator().random()
    >>> with seeded(0):
    ...     second = generator().random()
    >>> first == second
    True
    """
    global _generator
    before = _generator
    _generator = np.random.default_rng(_checked_seed("seeded", value))
    try:
        yield _generator
    finally:
        _generator = before
