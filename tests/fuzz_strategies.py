"""Hypothesis strategies for the fuzz cases, and the seeded draw that turns them into lists.

Cases are JSON objects (see fuzz_worker.py), so that a worker process can run them and
a report can be reproduced from one line. The draw is derandomized, but hypothesis's
choices still depend on the state of the process after a hundred examples or so: the
test session draws them in a fresh process (fuzz_harness.generated_cases), where they
are the same on every run. Valid baselines come from the layer table
(tests/layer_table.py) for corenet's layers; a layer another plugin registers gets one
derived from its constructor defaults, or is skipped (``skipped_layers``).
"""
from __future__ import annotations

import inspect
import math
import os

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from corenet.optim import Optimizer
from corenet.registry import registry
from layer_table import LAYERS

BATCH = 3
NAN, INF = float("nan"), float("inf")


def tag(kind: str, value=None) -> dict:
    """A value JSON cannot hold, as fuzz_arrays.decode rebuilds it."""
    return {"__fuzz__": kind, "value": value}


def encode(value):
    """JSON for a config: tuples tagged, so that they come back as tuples."""
    if isinstance(value, tuple):
        return tag("tuple", [encode(item) for item in value])
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    return value


# -- baselines ------------------------------------------------------------------------------

CANDIDATE_SHAPES = [(6,), (2, 5), (2, 4, 5), (2, 3, 4, 5)]


def layer_rows() -> list:
    """(name, config, per-sample input shapes) for every registered layer that has a
    valid baseline: the table's rows, and a default-constructed plugin layer on the
    first candidate shape its output_shape takes."""
    rows = [row for row in LAYERS if row[0] in registry.load().layers]
    for name in sorted(set(registry.layers) - {row[0] for row in rows}):
        derived = _derived_row(name)
        if derived:
            rows.append(derived)
    return rows


def skipped_layers() -> list:
    covered = {row[0] for row in layer_rows()}
    return sorted(set(registry.load().layers) - covered)


def _derived_row(name: str):
    cls = registry.layer(name)
    try:
        layer = cls()
    except Exception:  # noqa: BLE001 - it needs a config no one gave: skipped
        return None
    for shape in CANDIDATE_SHAPES:
        try:
            layer.output_shape(shape)
        except Exception:  # noqa: BLE001 - try the next shape
            continue
        return (name, {}, [shape])
    return None


def n_parameters(row) -> int:
    name, config, _ = row
    return len(registry.layer(name)(**config).parameters())


def base_case(row, dtype: str, seed: int) -> dict:
    name, config, shapes = row
    return {"layer": name, "config": encode(config), "dtype": dtype, "seed": seed,
            "inputs": [{"shape": [BATCH, *shape], "dtype": dtype, "layout": "C",
                        "values": "normal", "seed": seed + 10 * i}
                       for i, shape in enumerate(shapes)]}


def rows_strategy(rows: list, single_input: bool = False):
    if single_input:
        rows = [row for row in rows if len(row[2]) == 1]
    return st.builds(base_case, st.sampled_from(rows), st.sampled_from(["float32", "float64"]),
                     st.integers(0, 10_000))


# -- mutations of an array -------------------------------------------------------------------

LAYOUTS = ["F", "strided", "reversed", "readonly", "unaligned", "list", "matrix", "broadcast"]
DTYPES = ["float16", "float64", "float32", "int32", "int64", "uint8", "bool", "complex64",
          "complex128", "object", "str", ">f4", "longdouble"]
VALUES = ["nan", "inf", "-inf", "all_nan", "mixed_inf", "huge", "tiny", "zeros",
          "negative_zeros"]
RAW_VALUES = [None, 0.5, "abc", [], [[1.0, 2.0], [3.0]], tag("object"), True, tag("bytes", "x")]
HUGE_SIZES = [2 ** 40, 2 ** 42]

ARRAY_MUTATIONS = st.one_of(
    st.fixed_dictionaries({"kind": st.just("layout"), "layout": st.sampled_from(LAYOUTS)}),
    st.fixed_dictionaries({"kind": st.just("dtype"), "dtype": st.sampled_from(DTYPES)}),
    st.fixed_dictionaries({"kind": st.just("values"), "values": st.sampled_from(VALUES)}),
    st.fixed_dictionaries({"kind": st.just("ndim"), "change": st.sampled_from([-3, -2, -1, 1, 2]),
                           "size": st.sampled_from([1, 2, 3])}),
    st.fixed_dictionaries({"kind": st.just("resize"), "axis": st.integers(-4, 4),
                           "size": st.sampled_from([0, 1, 2, 4, 7, 300])}),
    st.fixed_dictionaries({"kind": st.just("huge"), "axis": st.integers(-4, 4),
                           "size": st.sampled_from(HUGE_SIZES)}),
    st.fixed_dictionaries({"kind": st.just("raw"), "value": st.sampled_from(RAW_VALUES)}),
)


# -- mutations of a config value ---------------------------------------------------------------

NASTY_VALUES = [None, True, False, "", "abc", "3", "0.5", "same", "valid", "float16", "int8",
                [], [1], [1, 2], [2, 2, 2], [1, 2, 3, 4], [1, NAN], {}, NAN, INF, -INF, 0, -1,
                -7, 1, 2, 3, 0.5, 2.0, -0.0, 1e-300, 1e300, 2 ** 31, 2 ** 40, 2 ** 63, 10 ** 20,
                tag("complex", [1, 2]), tag("bytes", "3"), tag("int64", 3), tag("float32", 0.5),
                tag("bool_", True), tag("object"), tag("tuple", [2, 3]),
                tag("dtype_class", "float32"), tag("dtype_class", "int32")]
PADDING_WORDS = ("same", "valid")


def must_refuse(key: str, default, value) -> bool:
    """Whether ``value`` can never be right where the constructor's default (or the
    table's value) is ``default``: the layer must refuse it."""
    kind = value.get("__fuzz__") if isinstance(value, dict) else None
    if key == "dtype":
        return not _is_float_dtype(value)
    if kind in ("complex", "bytes", "object") or isinstance(value, dict) and not kind:
        return True
    if isinstance(default, bool):
        return isinstance(value, (str, list)) or isinstance(value, float) \
            or kind in ("float32", "tuple", "dtype_class")
    if isinstance(default, (int, float, list, tuple)) or _is_tuple(default):
        if isinstance(value, str):
            return value not in PADDING_WORDS
        return isinstance(value, bool) or kind == "bool_" or kind == "dtype_class" \
            or isinstance(value, float) and not math.isfinite(value)
    return False


def _is_tuple(value) -> bool:
    return isinstance(value, dict) and value.get("__fuzz__") == "tuple"


def _is_float_dtype(value) -> bool:
    if isinstance(value, dict):
        return value.get("__fuzz__") == "dtype_class" and value["value"] in ("float32",
                                                                             "float64")
    if isinstance(value, (bool, int, float, list)):
        return False
    try:
        return np.dtype(value) in (np.float32, np.float64)
    except TypeError:
        return False


def constructor_defaults(name: str, config: dict) -> dict:
    """{argument: the table's value, else the signature's default} (None: required)."""
    parameters = inspect.signature(registry.layer(name)).parameters.values()
    defaults = {p.name: None if p.default is p.empty else p.default for p in parameters
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {**defaults, **{key: encode(value) for key, value in config.items()}}


@st.composite
def config_case(draw, rows: list):
    case = draw(rows_strategy(rows))
    known = constructor_defaults(case["layer"], case["config"])
    operation = draw(st.sampled_from(["set"] * 8 + ["drop", "add"]) if known else
                     st.just("add"))
    if operation == "add":
        change = {"op": "set", "key": "colour", "value": draw(st.sampled_from(NASTY_VALUES))}
        expect = "error"
    else:
        key = draw(st.sampled_from(sorted(known)))
        value = draw(st.sampled_from(NASTY_VALUES))
        change = {"op": operation, "key": key, "value": value}
        expect = "error" if operation == "set" and must_refuse(key, known[key], value) \
            else "any"
    return dict(case, group="layer_config", change=change, expect=expect)


# -- the groups ----------------------------------------------------------------------------------

def layer_input_cases(rows: list):
    return st.builds(lambda case, target, mutation: dict(case, group="layer_input",
                                                         target=target, mutation=mutation),
                     rows_strategy(rows), st.integers(0, 3), ARRAY_MUTATIONS)


def layer_grad_cases(rows: list):
    return st.builds(lambda case, mutation: dict(case, group="layer_grad", mutation=mutation),
                     rows_strategy(rows), ARRAY_MUTATIONS)


def layer_param_cases(rows: list):
    rows = [row for row in rows if n_parameters(row)]
    return st.builds(
        lambda case, param, field, when, mutation: dict(
            case, group="layer_param", param=param, field=field, when=when, mutation=mutation),
        rows_strategy(rows), st.integers(0, 3), st.sampled_from(["value", "grad"]),
        st.sampled_from(["before_forward", "before_backward"]),
        st.one_of(ARRAY_MUTATIONS, st.just({"kind": "raw", "value": None})))


LOSS_BASELINES = {  # name -> (prediction shape, target spec without dtype-independent keys)
    "mse": ((4, 5), {"shape": [4, 5], "dtype": "float64", "values": "normal"}),
    "softmax_cross_entropy": ((4, 5), {"shape": [4], "dtype": "int64", "values": "labels",
                                       "classes": 5}),
}
LABEL_MUTATIONS = st.sampled_from([{"kind": "values", "values": v} for v in
                                   ("labels_high", "labels_negative", "labels_huge")])


@st.composite
def loss_case(draw, rows: list):
    names = sorted(set(LOSS_BASELINES) & set(registry.load().losses))
    name = draw(st.sampled_from(names))
    shape, target = LOSS_BASELINES[name]
    seed = draw(st.integers(0, 10_000))
    case = {"group": "loss", "loss": name, "seed": seed,
            "pred": {"shape": list(shape), "dtype": draw(st.sampled_from(["float32", "float64"])),
                     "layout": "C", "values": "normal", "seed": seed},
            "target": dict(target, layout="C", seed=seed + 1)}
    if draw(st.integers(0, 30)) == 0:
        return dict(case, backward_first=True)
    which = draw(st.sampled_from(["pred", "target", "both"]))
    target_mutations = st.one_of(ARRAY_MUTATIONS, LABEL_MUTATIONS) if "classes" in target \
        else ARRAY_MUTATIONS
    if which in ("pred", "both"):
        case["pred_mutation"] = draw(ARRAY_MUTATIONS)
    if which in ("target", "both"):
        case["target_mutation"] = draw(target_mutations)
    return case


def skipped_losses() -> list:
    return sorted(set(registry.load().losses) - set(LOSS_BASELINES))


SHAPE_VALUES = [(3,), 3, 0, -1, (0,), (2 ** 40,), (2, 2 ** 62), (3.0,), 3.5, "abc", None, [],
                [[3]], (True,), tag("int64", 3), [4, 5], (NAN,)]
BATCH_SIZES = [1, 2, 3, 1024, 0, -1, 2.5, "3", None, True, 2 ** 63, tag("int64", 2)]
TOKENS = ["inputs", "output", "none", "layer", "array", "empty", "int", "string", "stranger",
          "inputs_twice", "output_twice", "class"]
ACTIVATIONS = ["relu", "sigmoid", "tanh", "leaky_relu", "elu"]
DTYPE_VALUES = ["float32", "float64", "float16", "int8", "abc", None, 3, tag("dtype_class",
                                                                              "float64")]


@st.composite
def model_case(draw, rows: list):
    case = draw(rows_strategy(rows))
    scenario = draw(st.sampled_from(["forward"] * 4 + ["backward"] * 2 + [
        "backward_first", "predict", "predict", "input", "build", "build", "sequential",
        "sequential", "astype", "sequence", "sequence"]))
    if scenario in ("predict", "input", "sequential"):
        case = draw(rows_strategy(rows, single_input=True))
    case = dict(case, group="model", scenario=scenario, then=draw(
        st.sampled_from([None, None] + ACTIVATIONS)))
    if scenario == "forward":
        case.update(target=draw(st.integers(0, 3)), mutation=draw(ARRAY_MUTATIONS),
                    count=draw(st.sampled_from([None] * 6 + [0, 1, 5])))
    elif scenario == "backward":
        case.update(mutation=draw(ARRAY_MUTATIONS))
    elif scenario == "predict":
        case.update(mutation=draw(ARRAY_MUTATIONS), batch_size=encode(
            draw(st.sampled_from(BATCH_SIZES))))
    elif scenario == "input":
        case.update(value=encode(draw(st.sampled_from(SHAPE_VALUES))))
    elif scenario == "build":
        case.update(inputs_token=draw(st.sampled_from(TOKENS)),
                    outputs_token=draw(st.sampled_from(TOKENS)))
    elif scenario == "sequential":
        case.update(items=draw(st.lists(st.sampled_from(["fresh", "layer", "none", "int",
                                                         "array", "class"]), max_size=3)),
                    input_shape=encode(draw(st.sampled_from([None] + SHAPE_VALUES))))
    elif scenario == "astype":
        case.update(value=draw(st.sampled_from(DTYPE_VALUES)))
    elif scenario == "sequence":  # (batch, threads) per step
        case.update(steps=draw(st.lists(st.tuples(st.sampled_from([1, 2, 3, 64, 300]),
                                                  st.integers(1, 3)), min_size=2, max_size=4)))
    return case


OPTIMIZER_BASELINES = {"SGD": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}}
PARAMETER_SHAPES = {"w": [3, 4], "b": [3]}


@st.composite
def optimizer_case(draw, rows: list):
    names = sorted(set(OPTIMIZER_BASELINES) & {c.__name__ for c in Optimizer.__subclasses__()})
    name = draw(st.sampled_from(names))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    seed = draw(st.integers(0, 10_000))
    kwargs = dict(OPTIMIZER_BASELINES[name])
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(kwargs) + ["nesterov_extra"]))
        kwargs[key] = draw(st.sampled_from(NASTY_VALUES))
    case = {"group": "optimizer", "optimizer": name, "kwargs": encode(kwargs), "seed": seed,
            "steps": draw(st.integers(1, 3)),
            "params_kind": draw(st.sampled_from(["ok"] * 6 + ["empty", "generator",
                                                              "none_entry", "array_entry",
                                                              "int"])),
            "params": [{"name": n, "shape": s, "dtype": dtype, "values": "normal",
                        "seed": seed + i} for i, (n, s) in enumerate(PARAMETER_SHAPES.items())],
            "grads": [{"shape": s, "dtype": dtype, "values": "normal", "seed": seed + 5 + i}
                      for i, s in enumerate(PARAMETER_SHAPES.values())]}
    if draw(st.booleans()):
        case["tamper"] = {"param": draw(st.integers(0, 1)),
                          "field": draw(st.sampled_from(["value", "grad"])),
                          "when": draw(st.sampled_from(["before_construct", "before_step"])),
                          "mutation": draw(st.one_of(ARRAY_MUTATIONS, st.just(
                              {"kind": "raw", "value": None})))}
    return case


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
              st.sampled_from([0, 1, 2, 3, -1, 2 ** 40, 2 ** 63, NAN, INF, 0.5]),
              st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=6), children, max_size=4)),
    max_leaves=8)
DESCRS = ["<f4", "<f8", "<f2", "|u1", "<i8", "|O", "<c8", ">f4", "|V8", "<U3", "|b1", "<M8[s]",
          "float32", "abc", "", [["a", "<f4"]], 7, None]
HEADER_SHAPES = [tag("tuple", []), tag("tuple", [3]), tag("tuple", [2 ** 40, 2 ** 40]),
                 tag("tuple", [-1]), tag("tuple", [0]), tag("tuple", [2 ** 63]),
                 tag("tuple", ["a"]), tag("tuple", [3.5]), [3, 4], None, 5]


@st.composite
def model_file_case(draw, rows: list):
    case = dict(draw(rows_strategy(rows)), group="model_file")
    kind = draw(st.sampled_from(["config"] * 5 + ["header"] * 3 + ["bytes", "truncate",
                                                                    "overwrite"]))
    if kind == "config":
        keys = [key for key in case["config"]]
        paths = [["format"], ["dtype"], ["inputs"], ["inputs", 0], ["inputs", 0, 0], ["outputs"],
                 ["outputs", 0], ["nodes"], ["nodes", 0], ["nodes", 0, "layer"],
                 ["nodes", 0, "inputs"], ["nodes", 0, "config"], ["nodes", 0, "distribution"],
                 ["training"], ["corenet"]] + [["nodes", 0, "config", key] for key in keys]
        mutation = {"kind": "config", "path": draw(st.sampled_from(paths))}
        if draw(st.integers(0, 5)) == 0:
            mutation["delete"] = True
        else:
            mutation["value"] = draw(st.one_of(JSON_VALUES, st.sampled_from(
                ["linear", "relu", "conv2d", "no_such_layer", [2 ** 40], [[2 ** 40]]])))
    elif kind == "header":
        mutation = {"kind": "header", "member": draw(st.integers(0, 3))}
        for key, pool in (("descr", DESCRS), ("shape", HEADER_SHAPES),
                          ("fortran_order", [True, False, "yes", None])):
            if draw(st.booleans()):
                mutation[key] = draw(st.sampled_from(pool))
    elif kind == "bytes":
        prefix = draw(st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY"]))
        mutation = {"kind": "bytes", "data": (prefix + draw(st.binary(max_size=300)))
                    .decode("latin-1")}
    elif kind == "truncate":
        mutation = {"kind": "truncate", "fraction": draw(st.floats(0, 0.999))}
    else:
        mutation = {"kind": "overwrite", "fraction": draw(st.floats(0, 0.999)),
                    "data": draw(st.binary(min_size=1, max_size=16)).decode("latin-1")}
    return dict(case, mutation=mutation)


# -- drawing -------------------------------------------------------------------------------------

def draw(strategy, count: int) -> list:
    """``count`` cases from ``strategy``, the same ones on every run (derandomized)."""
    cases = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate],
              deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(case):
        cases.append(case)

    collect()
    return cases


# group -> (strategy of the cases given the layer rows, examples).
GROUPS = {
    "layer_input": (layer_input_cases, 600),
    "layer_grad": (layer_grad_cases, 250),
    "layer_param": (layer_param_cases, 250),
    "layer_config": (config_case, 500),
    "loss": (loss_case, 200),
    "model": (model_case, 300),
    "optimizer": (optimizer_case, 200),
    "model_file": (model_file_case, 300),
}


# More examples for a longer search (CORENET_FUZZ_SCALE=10), fewer for a quick look.
SCALE = float(os.environ.get("CORENET_FUZZ_SCALE", "1"))


def group_cases(name: str, scale: float = SCALE) -> list:
    factory, count = GROUPS[name]
    return draw(factory(layer_rows()), max(1, int(count * scale)))


def all_groups(scale: float = SCALE) -> dict:
    return {name: group_cases(name, scale) for name in GROUPS}


if __name__ == "__main__":  # fuzz_harness.generated_cases: every group's cases as JSON
    import json
    import sys

    from fuzz_worker import register_plugins

    register_plugins()
    json.dump(all_groups(float(sys.argv[1])), sys.stdout)
