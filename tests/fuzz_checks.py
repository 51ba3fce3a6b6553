"""How the fuzz worker judges one call into corenet: a result checked against a
reference, or an error that is clean, or not.

Calls into corenet go through ``call``: an exception it raises is corenet's and is
judged by ``judge_error``; any other exception in a case is a bug of the fuzz suite
itself and is reported as such (``harness_error``), never blamed on corenet.
"""
from __future__ import annotations

import re

import numpy as np

from corenet import random
from corenet.errors import PluginError

# An error is clean when it is one of these and its message names what failed.
CLEAN_ERRORS = (ValueError, TypeError, PluginError)


class Raised(Exception):
    """corenet raised ``error`` in a call the case made."""

    def __init__(self, error: BaseException, step: str):
        super().__init__(step)
        self.error = error
        self.step = step


class WrongResult(Exception):
    """corenet returned, and what it returned is wrong."""


CALL_SEED = 11


def call(step: str, function, *args, **kwargs):
    """function(*args, **kwargs), its exception wrapped as Raised (named by ``step``).
    corenet.random is seeded the same for every call, so that two calls compared (a
    mutated input against a plain one) draw the same dropout mask."""
    try:
        with random.seeded(CALL_SEED):
            return function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - judged by judge_error
        raise Raised(error, step) from error


def outcome(kind: str, detail: str = "") -> dict:
    return {"outcome": kind, "detail": detail[:600]}


def names_any(message: str, names) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message) for name in names if name)


def judge_error(raised: Raised, names, allow_runtime: bool = False) -> dict:
    """clean_error, or unclear_error: not a ValueError/TypeError (IndexError, KeyError,
    AssertionError, MemoryError, ZeroDivisionError...) or a message that names none of
    ``names`` (the layer, loss, optimizer, model or file)."""
    error = raised.error
    text = f"{raised.step}: {type(error).__name__}: {error}"
    allowed = CLEAN_ERRORS + ((RuntimeError,) if allow_runtime else ())
    if isinstance(error, MemoryError) or not isinstance(error, allowed):
        return outcome("unclear_error", text)
    if not names_any(str(error), names):
        return outcome("unclear_error", f"the message names none of {sorted(set(names))}: {text}")
    return outcome("clean_error", text)


def is_plain(obj) -> bool:
    """An ndarray as a kernel likes it: then there is no other layout to compare with."""
    return (type(obj) is np.ndarray and obj.flags.c_contiguous and obj.flags.writeable
            and obj.flags.aligned)


def same(label: str, got, expected) -> None:
    """Bitwise the same arrays (NaN equal to NaN), or WrongResult."""
    got, expected = _flat(got), _flat(expected)
    if len(got) != len(expected):
        raise WrongResult(f"{label}: {len(got)} arrays where the plain call gave {len(expected)}")
    for one, other in zip(got, expected):
        if (one is None) != (other is None):
            raise WrongResult(f"{label}: {one!r} where the plain call gave {other!r}")
        if one is None:
            continue
        one, other = np.asarray(one), np.asarray(other)
        if one.shape != other.shape or one.dtype != other.dtype \
                or not np.array_equal(one, other, equal_nan=True):
            raise WrongResult(f"{label}: differs from the same call on a plain C-contiguous "
                              f"array ({one.dtype}{one.shape} vs {other.dtype}{other.shape}, "
                              f"max difference {_max_difference(one, other)})")


def close(label: str, got, expected, dtype) -> None:
    """got ≈ expected at the precision of ``dtype``; NaN and infinities where expected."""
    got, expected = np.asarray(got), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        raise WrongResult(f"{label}: shape {got.shape}, the reference has {expected.shape}")
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    rtol, atol = (1e-4, 1e-5) if np.dtype(dtype) == np.float32 else (1e-9, 1e-12)
    try:
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol,
                                   atol=atol * scale, equal_nan=True)
    except AssertionError as error:
        message = " ".join(str(error).split())
        raise WrongResult(f"{label}: differs from the numpy reference: {message}") from None


def copies(arrays):
    """A copy of what a call returned, before the layer's next call reuses it."""
    return tuple(None if a is None else np.array(a) for a in _as_tuple(arrays))


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _flat(value) -> list:
    """The arrays of nested tuples and lists (an output, input gradients, parameter grads)."""
    if isinstance(value, (tuple, list)):
        return [array for item in value for array in _flat(item)]
    return [value]


def _max_difference(one, other) -> str:
    if one.shape != other.shape or one.dtype.kind not in "fc":
        return "n/a"
    with np.errstate(invalid="ignore"):
        return str(np.nanmax(np.abs(one - other), initial=0))
