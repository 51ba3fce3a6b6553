"""Initial weights: PyTorch's formulas, drawn from corenet.random, named in a layer's config.

A layer that learns a weight takes ``init=`` (and ``bias_init=`` for its bias):

- a name: ``"kaiming_uniform"``, ``"kaiming_normal"`` (He), ``"xavier_uniform"``,
  ``"xavier_normal"`` (Glorot), ``"zeros"``, ``"ones"``, or ``"pytorch_uniform"``:
  U(±1/√fan_in), PyTorch's default for Linear and Conv (its ``kaiming_uniform_``
  with ``a=√5``) and corenet's;
- ``("constant", value)``;
- ``(name, {options})`` with the options of PyTorch's function of that name:
  kaiming ``a=0, mode="fan_in", nonlinearity="leaky_relu"`` (its default gain is
  √2, ReLU's), xavier ``gain=1.0``.

Draws come from ``corenet.random.generator()``, so ``corenet.random.seed(n)``
makes every layer built afterwards the same. The spec goes into ``get_config``
as a name or a two-item list (what JSON makes of a tuple), so a saved model
rebuilds with it. Any other initialisation: assign to ``layer.weight.value``
after building the layer, as with ``torch.nn.init`` on ``module.weight``.

>>> import corenet.layers as L
>>> L.Linear(3, 2, init=("constant", 0.5), bias_init="zeros").weight.value
array([[0.5, 0.5, 0.5],
       [0.5, 0.5, 0.5]], dtype=float32)
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from corenet import random

# PyTorch's torch.nn.init.calculate_gain: the gain that keeps a layer's output
# variance through each nonlinearity (leaky_relu's depends on its slope a).
GAINS = {"linear": 1.0, "conv1d": 1.0, "conv2d": 1.0, "conv3d": 1.0, "sigmoid": 1.0,
         "tanh": 5.0 / 3, "relu": math.sqrt(2.0), "selu": 0.75}
# name -> {option: default}
OPTIONS = {
    "pytorch_uniform": {},
    "kaiming_uniform": {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
    "kaiming_normal": {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
    "xavier_uniform": {"gain": 1.0},
    "xavier_normal": {"gain": 1.0},
    "zeros": {},
    "ones": {},
    "constant": {"value": None},
}
NAMES = tuple(OPTIONS)
# A bias has no fan of its own: it takes one of these, fed the layer's fan_in.
BIAS_NAMES = ("pytorch_uniform", "zeros", "ones", "constant")


class Initializer:
    """A checked init spec: ``initializer(shape, fan_in, fan_out, dtype)`` draws an array."""

    __slots__ = ("name", "options")

    def __init__(self, name: str, options: dict):
        self.name = name
        self.options = options

    def __call__(self, shape: tuple, fan_in: int, fan_out: int, dtype) -> np.ndarray:
        rng = random.generator()
        name, options = self.name, self.options
        if name == "pytorch_uniform":
            bound = 1.0 / math.sqrt(fan_in)
            values = rng.uniform(-bound, bound, shape)
        elif name.startswith("kaiming"):
            fan = fan_in if options["mode"] == "fan_in" else fan_out
            std = gain(options["nonlinearity"], options["a"]) / math.sqrt(fan)
            values = _draw(rng, name, std, shape)
        elif name.startswith("xavier"):
            std = options["gain"] * math.sqrt(2.0 / (fan_in + fan_out))
            values = _draw(rng, name, std, shape)
        else:
            value = {"zeros": 0.0, "ones": 1.0}.get(name, options.get("value"))
            values = np.full(shape, value)
        return values.astype(dtype)

    def config(self):
        """The JSON-able spec that ``get`` turns back into this initializer."""
        if self.name == "constant":
            return ["constant", self.options["value"]]
        changed = {key: value for key, value in self.options.items()
                   if value != OPTIONS[self.name][key]}
        return [self.name, changed] if changed else self.name

    def __repr__(self) -> str:
        return f"Initializer({self.config()!r})"


def _draw(rng: np.random.Generator, name: str, std: float, shape: tuple) -> np.ndarray:
    if name.endswith("uniform"):
        bound = math.sqrt(3.0) * std  # U(-b, b) has variance b²/3
        return rng.uniform(-bound, bound, shape)
    return rng.normal(0.0, std, shape)


def gain(nonlinearity: str, a: float = 0.0) -> float:
    """PyTorch's calculate_gain(nonlinearity, a)."""
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + a * a))
    return GAINS[nonlinearity]


def get(spec, layer: str, argument: str = "init", names: tuple = NAMES) -> Initializer:
    """The Initializer that ``spec`` names, or a ValueError naming the layer, the
    argument and the choices."""
    label = f"{layer}: {argument}"
    if isinstance(spec, Initializer):
        spec = spec.config()
    options = {}
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        spec, options = spec
        if spec == "constant" and not isinstance(options, dict):
            options = {"value": options}
        if not isinstance(options, dict):
            raise ValueError(f"{label}: the options of {spec!r} must be a dict, "
                             f"got {options!r}")
    if not isinstance(spec, str) or spec not in names:
        raise ValueError(f"{label} must be one of {', '.join(map(repr, names))}, "
                         f"('constant', value) or (name, {{options}}); got {spec!r}")
    unknown = sorted(set(options) - set(OPTIONS[spec]))
    if unknown:
        raise ValueError(f"{label}: {spec!r} takes the options "
                         f"{sorted(OPTIONS[spec]) or 'none'}, got {unknown}")
    merged = {**OPTIONS[spec], **options}
    _check_options(label, spec, merged)
    return Initializer(spec, merged)


def _check_options(label: str, name: str, options: dict) -> None:
    def number(key, minimum=None):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or (minimum is not None and value < minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            raise ValueError(f"{label}: {name} option {key!r} must be a finite number{bound}, "
                             f"got {value!r}")
        options[key] = float(value)

    if name == "constant":
        if options["value"] is None:
            raise ValueError(f"{label}: 'constant' needs its value: ('constant', 0.1)")
        number("value")
    elif name.startswith("xavier"):
        number("gain", 0)
    elif name.startswith("kaiming"):
        number("a", 0)
        if options["mode"] not in ("fan_in", "fan_out"):
            raise ValueError(f"{label}: {name} option 'mode' must be 'fan_in' or 'fan_out', "
                             f"got {options['mode']!r}")
        choices = sorted(GAINS) + ["leaky_relu"]
        if options["nonlinearity"] not in choices:
            raise ValueError(f"{label}: {name} option 'nonlinearity' must be one of "
                             f"{choices}, got {options['nonlinearity']!r}")


def get_bias(spec, layer: str) -> Initializer:
    """An Initializer for a bias: one of BIAS_NAMES."""
    return get(spec, layer, "bias_init", BIAS_NAMES)


__all__ = ["BIAS_NAMES", "Initializer", "NAMES", "gain", "get", "get_bias"]
