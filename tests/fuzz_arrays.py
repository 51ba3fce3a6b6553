"""Arrays and values the fuzz cases describe in JSON, built inside the worker process.

An array spec is a JSON object::

    {"shape": [3, 5], "dtype": "float32", "layout": "F", "values": "nan", "seed": 7}

``values``: normal draws, or sample 0 holding a NaN, an infinity, only NaN, ...;
``layout``: how the same values are laid out (Fortran order, a strided or reversed
view, read-only, unaligned, a nested list, a zero-stride broadcast that claims a
huge shape without holding it). ``canonical`` gives the plain C-contiguous array
with the same values: what any layout must compute the same result as.

Config values that JSON cannot hold (complex, bytes, numpy scalars, tuples) travel
as ``{"__fuzz__": kind, "value": ...}`` and are decoded here.
"""
from __future__ import annotations

import math

import numpy as np

# Arrays the worker may build for real or copy to compare; a spec claiming more is only
# ever a zero-stride broadcast.
MODEST_BYTES = 64 << 20

SPECIAL_VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def claimed_bytes(spec: dict) -> int:
    return math.prod(spec["shape"]) * np.dtype(_numpy_dtype(spec["dtype"])).itemsize


def _numpy_dtype(name: str):
    return {"str": "U8", "object": object}.get(name, name)


def values_of(spec: dict) -> np.ndarray:
    """float64 values of the spec's shape; specials go into sample 0 only, so that
    the other samples of a batch can be compared with a clean run."""
    rng = np.random.default_rng(spec.get("seed", 0))
    shape = tuple(spec["shape"])
    values = np.asarray(rng.standard_normal(shape), np.float64)
    kind = spec.get("values", "normal")
    if kind.startswith("labels"):  # class labels in [0, classes), or one out of range
        values = rng.integers(0, spec["classes"], shape).astype(np.float64)
        out_of_range = {"labels": None, "labels_high": spec["classes"], "labels_negative": -1,
                        "labels_huge": 2.0 ** 40}[kind]
        if out_of_range is not None and values.size:
            values.reshape(-1)[0] = out_of_range
        return values
    if values.size == 0 or kind == "normal":
        return values
    sample = values[0] if values.ndim else values[...]
    flat = sample.reshape(-1)
    if kind in SPECIAL_VALUES:
        for position in rng.integers(flat.size, size=1 + flat.size // 8):
            flat[position] = SPECIAL_VALUES[kind]
    elif kind == "all_nan":
        flat[:] = np.nan
    elif kind == "mixed_inf":  # +inf and -inf in one sample: inf - inf is NaN downstream
        flat[0], flat[-1] = np.inf, -np.inf
    elif kind == "huge":
        flat *= 1e30
    elif kind == "tiny":  # subnormal in float32
        flat *= 1e-41
    elif kind == "zeros":
        values[...] = 0.0
    elif kind == "negative_zeros":
        values[...] = -0.0
    else:
        raise ValueError(f"unknown values {kind!r}")
    return values


def _cast(values: np.ndarray, dtype: str, integral: bool = False) -> np.ndarray:
    dtype = np.dtype(_numpy_dtype(dtype))
    if dtype.kind in "iub":
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(values if integral else values * 3).round().astype(dtype)
    if dtype.kind == "U":
        return values.astype(dtype)
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def make(spec):
    """The object a spec describes: an array in some layout, or a list, a scalar, None."""
    if not isinstance(spec, dict) or "shape" not in spec:
        return decode(spec)
    layout = spec.get("layout", "C")
    if layout == "broadcast":  # zero strides: any shape for the memory of one sample
        one = _cast(values_of(dict(spec, shape=[1] * len(spec["shape"]))), spec["dtype"],
                    _integral(spec))
        return np.broadcast_to(one, tuple(spec["shape"]))
    if claimed_bytes(spec) > MODEST_BYTES:
        raise ValueError(f"the fuzz builds no array of {claimed_bytes(spec)} bytes: {spec}")
    array = np.ascontiguousarray(_cast(values_of(spec), spec["dtype"], _integral(spec)))
    return relayout(array, layout)


def _integral(spec: dict) -> bool:
    return spec.get("values", "normal").startswith("labels")


def relayout(array: np.ndarray, layout: str):
    """The same values in another memory layout (or as a nested list)."""
    if layout == "C":
        return array
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:  # every other element of a wider array
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if layout == "reversed" and array.ndim:  # negative strides on the batch axis
        return array[::-1].copy()[::-1]
    if layout == "readonly":
        array = array.copy()
        array.flags.writeable = False
        return array
    if layout == "unaligned" and array.dtype.itemsize > 1 and array.size:
        raw = np.zeros(array.nbytes + 1, np.uint8)
        view = raw[1:].view(array.dtype).reshape(array.shape)
        view[...] = array
        return view
    if layout == "list":
        return array.tolist()
    if layout == "matrix" and array.ndim == 2:  # an ndarray subclass
        return np.asmatrix(array)
    return array  # a layout this array has no variant in


def canonical(obj):
    """The plain C-contiguous array numpy makes of ``obj`` (None if that would be huge)."""
    if isinstance(obj, np.ndarray) and obj.nbytes > MODEST_BYTES:
        return None
    try:
        array = np.asarray(obj)
    except (ValueError, TypeError):
        return None
    return np.array(array, order="C", copy=True)


def decode(value):
    """A config value from JSON: tagged objects become what they stand for."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("__fuzz__")
    if kind is None:
        return {key: decode(item) for key, item in value.items()}
    inner = value.get("value")
    return {
        "complex": lambda: complex(*inner),
        "bytes": lambda: bytes(inner, "latin-1"),
        "tuple": lambda: tuple(decode(inner)),
        "int64": lambda: np.int64(inner),
        "float32": lambda: np.float32(inner),
        "bool_": lambda: np.bool_(inner),
        "object": object,
        "dtype_class": lambda: getattr(np, inner),
    }[kind]()


def mutate(spec: dict, mutation: dict):
    """The spec (or raw value) a mutation turns ``spec`` into.

    ``{"kind": "layout" | "dtype" | "values", ...}`` keep the shape; ``ndim`` adds or
    drops axes; ``resize`` sets one axis (batch axis 0 included) to ``size``; ``huge``
    sets one to a size that claims terabytes (a broadcast); ``raw`` is a value given
    instead of an array (None, a float, a string, a ragged list)."""
    kind = mutation["kind"]
    if kind in ("layout", "dtype", "values"):
        return dict(spec, **{kind: mutation[kind]})
    if kind == "raw":
        return decode(mutation["value"])
    shape = list(spec["shape"])
    if kind == "ndim":
        change = mutation["change"]
        shape = shape[:max(0, len(shape) + change)] if change < 0 \
            else shape + [mutation.get("size", 2)] * change
    elif kind in ("resize", "huge"):
        if not shape:
            return dict(spec, shape=[mutation["size"]])
        shape[mutation["axis"] % len(shape)] = mutation["size"]
    else:
        raise ValueError(f"unknown mutation {mutation}")
    mutated = dict(spec, shape=shape)
    if claimed_bytes(mutated) > MODEST_BYTES:
        mutated["layout"] = "broadcast"
    return mutated
