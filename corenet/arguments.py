"""Checks of constructor arguments, shared by layers and optimizers: each returns the
value as the plain Python type it stands for, or raises a ValueError naming its owner
(the layer or optimizer), the argument and the value received.

>>> as_float("leaky_relu", "negative_slope", 0.1)
0.1
>>> as_int("conv2d", "stride", True, 1)
Traceback (most recent call last):
...
ValueError: conv2d: stride must be an integer, got True
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def as_int(owner: str, label: str, value, minimum: int, maximum: int | None = None,
           integral_floats: bool = True) -> int:
    """An integer in [minimum, maximum]: bools, NaN and non-integral floats are errors
    (and integral floats such as 2.0 too, without ``integral_floats``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if integral_floats and isinstance(value, float) and math.isfinite(value) \
                and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{owner}: {label} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {label} must be at least {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{owner}: {label} must be at most {maximum}, got {value!r}")
    return int(value)


def as_float(owner: str, label: str, value, minimum: float | None = None) -> float:
    """A finite real number (at least ``minimum``): bools, strings, NaN and infinities are
    errors, where float() would take True, "0.1" and nan."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or minimum is not None and value < minimum:
        requirement = "a finite number" + ("" if minimum is None else f" >= {minimum:g}")
        raise ValueError(f"{owner}: {label} must be {requirement}, got {value!r}")
    return float(value)


def as_bool(owner: str, label: str, value) -> bool:
    """True or False (numpy's bools too): "False" or 2 are errors, not truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {label} must be True or False, got {value!r}")
    return bool(value)
