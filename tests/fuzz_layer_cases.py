"""The fuzz worker's layer cases: mutated inputs, gradients, parameters and configs.

A layer case names a registered layer, a valid config and valid input specs (a row
of the layer table, or a plugin layer's derived baseline), and one mutation. Each
runner returns an outcome (see fuzz_checks) or raises Raised / WrongResult.
"""
from __future__ import annotations

import json
import math
import numbers

import numpy as np

from corenet.layer import FLOAT_DTYPES
from corenet.registry import registry
from fuzz_arrays import canonical, decode, make, mutate, values_of
from fuzz_checks import Raised, WrongResult, call, close, copies, is_plain, outcome, same
from numpy_references import REFERENCES

SPECIAL_VALUES = ("nan", "inf", "-inf", "all_nan", "mixed_inf")


# -- building ----------------------------------------------------------------------------

def build_layer(case: dict, config: dict | None = None):
    """The case's layer, its parameters set from the case's seed (param_spec's values)."""
    cls = registry.layer(case["layer"])
    layer = call("constructor", cls, **(decode(case["config"]) if config is None else config))
    if case.get("dtype") and hasattr(layer, "dtype"):
        call("astype", layer.astype, case["dtype"])
    for index, parameter in enumerate(layer.parameters()):
        parameter.value[...] = values_of(param_spec(layer, case, index, "value"))
    return layer


def param_spec(layer, case: dict, index: int, field: str) -> dict:
    """The spec of a parameter's value as build_layer sets it, or of a grad to put in."""
    value = layer.parameters()[index].value
    return {"shape": list(value.shape), "dtype": value.dtype.name, "layout": "C",
            "values": "normal", "seed": case["seed"] * 100 + 2 * index + (field == "grad")}


def layer_dtype(layer, case: dict) -> str:
    dtype = getattr(layer, "dtype", None)
    return np.dtype(dtype).name if dtype in FLOAT_DTYPES else case.get("dtype", "float32")


def baseline_inputs(layer, case: dict) -> list:
    """The case's valid inputs, in the layer's dtype."""
    return [make(dict(spec, dtype=layer_dtype(layer, case))) for spec in case["inputs"]]


def gradient_like(out: np.ndarray, seed: int) -> np.ndarray:
    spec = {"shape": list(out.shape), "seed": seed + 7}
    return values_of(spec).astype(out.dtype)


DRAWN = object()  # run_layer's default gradient: drawn from the seed (None is a value to try)


def run_layer(layer, xs, seed: int, grad=DRAWN, between=None) -> tuple:
    """forward then backward (with ``grad``, or one drawn from the seed); copies of the
    output, the input gradients and the parameters' gradients. ``between`` runs after
    forward (a parameter replaced between the two calls)."""
    out = copies(call("forward", layer.forward, *xs))[0]
    check_form(layer, xs, out)
    if between is not None:
        between()
    grad = gradient_like(out, seed) if grad is DRAWN else grad
    input_grads = copies(call("backward", layer.backward, grad))
    return out, input_grads, tuple(np.array(p.grad) if p.grad is not None else None
                                   for p in layer.parameters())


def run_plain(what: str, run, *args):
    """The same call on plain C-contiguous arrays, which must not be refused."""
    try:
        return run(*args)
    except Raised as raised:
        raise WrongResult(f"accepts the {what} but refuses the same values as a plain array: "
                          f"{type(raised.error).__name__}: {raised.error}") from None


def check_form(layer, xs, out) -> None:
    """A float array of the shape output_shape announces for these inputs."""
    if not isinstance(out, np.ndarray) or out.dtype not in FLOAT_DTYPES:
        raise WrongResult(f"forward returned {type(out).__name__} "
                          f"{getattr(out, 'dtype', '')}, not a float32/float64 array")
    shapes = [tuple(np.shape(x)[1:]) for x in xs]
    try:
        expected = layer.output_shape(*shapes)
    except Exception as error:  # noqa: BLE001 - any refusal contradicts forward
        raise WrongResult(f"forward took per-sample shapes {shapes} that output_shape "
                          f"refuses: {type(error).__name__}: {error}") from None
    if out.shape != (np.shape(xs[0])[0],) + tuple(expected):
        raise WrongResult(f"forward returned shape {out.shape}; output_shape says "
                          f"{tuple(expected)} per sample")


# Layers whose output for one sample depends on the others: batch norm in training
# (the batch's mean and variance), or without running statistics.
MIXES_SAMPLES = {name: lambda layer: layer.training or not layer.track_running_stats
                 for name in ("batch_norm1d", "batch_norm2d")}


def is_builtin(layer) -> bool:
    provider = registry.provider("layers", type(layer).name)
    return provider is not None and provider.distribution == "corenet"


def reference_of(layer):
    """The numpy reference of a built-in layer whose config is small enough to mirror."""
    if type(layer).name not in REFERENCES or not is_builtin(layer):
        return None
    if not all(abs(number) <= 64 for number in _numbers(layer.get_config())):
        return None
    return REFERENCES[type(layer).name]


def _numbers(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, numbers.Number) and not isinstance(value, bool):
        yield value if math.isfinite(value) else math.inf


def check_reference(layer, xs, out) -> bool:
    reference = reference_of(layer)
    if reference is None:
        return False
    with np.errstate(all="ignore"):
        expected = reference(layer, *[np.asarray(x, np.float64) for x in xs])
    close("forward", out, expected, out.dtype)
    return True


def has_specials(spec) -> bool:
    return isinstance(spec, dict) and spec.get("values") in SPECIAL_VALUES


# -- the cases -----------------------------------------------------------------------------

def layer_input(case: dict) -> dict:
    """One input mutated: a clean error, or the result of the plain array (and the
    reference's)."""
    layer = build_layer(case)
    specs = [dict(spec, dtype=layer_dtype(layer, case)) for spec in case["inputs"]]
    target = case["target"] % len(specs)
    specs[target] = mutate(specs[target], case["mutation"])
    xs = [make(spec) for spec in specs]
    result = run_layer(layer, xs, case["seed"])
    plain = [canonical(x) for x in xs]
    if any(x is None for x in plain):
        return outcome("unchecked", "no plain copy of a huge input to compare with")
    checked = []
    if not all(is_plain(x) for x in xs):
        layer.zero_grad()
        same("forward and backward", result, run_plain("input layout", run_layer, layer, plain,
                                                       case["seed"]))
        checked.append("same as a plain array")
    if check_reference(layer, plain, result[0]):
        checked.append("numpy reference")
    return outcome("correct" if checked else "unchecked", ", ".join(checked))


def layer_grad(case: dict) -> dict:
    """The gradient given to backward mutated."""
    layer = build_layer(case)
    xs = baseline_inputs(layer, case)
    out = copies(call("forward", layer.forward, *xs))[0]
    spec = mutate({"shape": list(out.shape), "dtype": out.dtype.name, "layout": "C",
                   "values": "normal", "seed": case["seed"] + 7}, case["mutation"])
    grad = make(spec)
    result = run_layer(layer, xs, case["seed"], grad=grad)
    plain = canonical(grad)
    if plain is None:
        return outcome("unchecked", "no plain copy of a huge gradient to compare with")
    checked = []
    if not is_plain(grad):
        layer.zero_grad()
        same("backward", result, run_plain("gradient layout", run_layer, layer, xs,
                                           case["seed"], plain))
        checked.append("same as a plain array")
    if has_specials(spec) and is_builtin(layer) and out.shape[0] > 1 \
            and not MIXES_SAMPLES.get(layer.name, lambda layer: False)(layer):
        # Samples do not mix: the input gradients of the other samples are untouched.
        layer.zero_grad()
        clean = run_layer(layer, xs, case["seed"], grad=make(dict(spec, values="normal")))
        same("input gradients of the samples without NaN or inf",
             [g[1:] for g in result[1]], [g[1:] for g in clean[1]])
        checked.append("other samples unchanged")
    return outcome("correct" if checked else "unchecked", ", ".join(checked))


def layer_param(case: dict) -> dict:
    """A parameter's value or grad replaced before forward or before backward."""
    index, field = case["param"], case["field"]

    def run(replacement_of):
        layer = build_layer(case)
        parameter = layer.parameters()[index % len(layer.parameters())]
        replacement = replacement_of(layer)

        def replace():
            setattr(parameter, field, replacement)

        if case["when"] == "before_forward":
            replace()
        result = run_layer(layer, baseline_inputs(layer, case), case["seed"],
                           between=replace if case["when"] == "before_backward" else None)
        return layer, replacement, result

    def mutated(layer):
        return make(mutate(param_spec(layer, case, index % len(layer.parameters()), field),
                           case["mutation"]))

    layer, replacement, result = run(mutated)
    checked = []
    fresh = mutated(layer)  # the replacement as it was before backward added into it
    if fresh is None and field == "grad":
        plain = np.zeros(layer.parameters()[index % len(layer.parameters())].value.shape,
                         layer_dtype(layer, case))  # a None grad starts from zero
    else:
        plain = canonical(fresh)
    if replacement is None or not is_plain(replacement):
        if plain is None:
            raise WrongResult(f"accepted {field} = {type(replacement).__name__}, "
                              f"which no array stands for")
        same("forward and backward", result,
             run_plain(f"replaced {field}", run, lambda layer: plain.copy())[2])
        checked.append("same as a plain array")
    if field == "value" and case["when"] == "before_forward" and has_specials(case["mutation"]):
        if check_reference(layer, baseline_inputs(layer, case), result[0]):
            checked.append("numpy reference")
    return outcome("correct" if checked else "unchecked", ", ".join(checked))


def layer_config(case: dict) -> dict:
    """One constructor argument set, dropped or added: a clean error, or a layer whose
    config rebuilds it and whose forward is right."""
    config = decode(case["config"])
    change = case["change"]
    if change["op"] == "drop":
        config.pop(change["key"], None)
    else:
        config[change["key"]] = decode(change["value"])
    layer = build_layer(case, config)
    if case["expect"] == "error":
        raise WrongResult(f"accepted {change['key']}={config[change['key']]!r}, which "
                          f"cannot be a valid value")
    saved = call("get_config", layer.get_config)
    try:
        json.dumps(saved, allow_nan=False)
        rebuilt = type(layer)(**saved).get_config()
    except Exception as error:  # noqa: BLE001 - the config must round-trip whatever it holds
        raise WrongResult(f"get_config() = {saved!r} does not rebuild the layer as JSON: "
                          f"{type(error).__name__}: {error}") from None
    if rebuilt != saved:
        raise WrongResult(f"get_config() = {saved!r} rebuilds a layer whose config is "
                          f"{rebuilt!r}")
    xs = baseline_inputs(layer, case)
    out = run_layer(layer, xs, case["seed"])[0]
    checked = check_reference(layer, xs, out)
    return outcome("correct" if checked else "unchecked", "numpy reference" if checked else "")


RUNNERS = {"layer_input": layer_input, "layer_grad": layer_grad, "layer_param": layer_param,
           "layer_config": layer_config}


def names_of(case: dict) -> set:
    cls = registry.layer(case["layer"])
    return {cls.name, cls.__name__}
