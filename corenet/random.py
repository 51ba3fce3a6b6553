"""The random generator layers draw their initial weights from.

``corenet.random.seed(n)`` makes every later initialisation reproducible.
"""
import numpy as np

_generator = np.random.default_rng()


def seed(value: int) -> None:
    global _generator
    _generator = np.random.default_rng(value)


def generator() -> np.random.Generator:
    return _generator
