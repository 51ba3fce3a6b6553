"""The conformance kit a layer plugin runs in its own tests.

>>> from corenet.testing import check_layer
>>> import corenet.layers as L
>>> check_layer(L.Tanh, {}, [(5,)])

``check_layer(cls, config, input_shapes)`` runs every check below on a layer
built as ``cls(**config)`` and fed a batch of inputs of the given per-sample
shapes. Each check raises AssertionError (or the layer's own error) on failure.

The checks that run forward do so in training and in evaluation mode. Each
forward runs with corenet.random seeded afresh, so that a layer drawing from it
(dropout's mask) is one function of its inputs: its gradient can be checked
by finite differences, and two runs compared. A layer's state buffers (batch
norm's running statistics) are set away from their defaults, to positive
values, before the checks that read them.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile

import numpy as np

from corenet import random
from corenet.errors import DTypeError, ShapeError
from corenet.layer import FLOAT_DTYPES, Buffer, Layer, Parameter, zero_layer_grads

BATCH = 3
MODES = (True, False)  # training, evaluation
FORWARD_SEED = 12345


def _build(cls, config: dict, dtype=np.float32) -> Layer:
    layer = cls(**config)
    return layer.astype(dtype)


def away_from_kinks(shape: tuple, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """Values in ±[0.2, 1.2]: no input sits on a kink (0) or near a tie."""
    magnitude = rng.uniform(0.2, 1.2, shape)
    return (magnitude * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def _inputs(input_shapes, rng, dtype=np.float64, batch=BATCH) -> list:
    return [away_from_kinks((batch,) + tuple(shape), rng, dtype) for shape in input_shapes]


def _label(layer_or_model) -> str:
    return getattr(layer_or_model, "name", "") or type(layer_or_model).__name__


def _forward(layer_or_model, xs):
    """forward with corenet.random seeded the same way every time; its output checked
    to be an array (a list was an AttributeError inside the kit, naming nothing)."""
    with random.seeded(FORWARD_SEED):
        out = layer_or_model.forward(*xs)
    assert isinstance(out, np.ndarray), \
        f"{_label(layer_or_model)}.forward must return a numpy array, got {type(out).__name__}"
    return out


def _input_grads(layer, grad, xs) -> list:
    """layer.backward(grad) as a list of copies, checked to be one array per input, of
    that input's shape and dtype (None or a missing gradient was a TypeError inside the
    kit; a model would have dropped it)."""
    grads = layer.backward(grad)
    grads = list(grads) if isinstance(grads, (tuple, list)) else [grads]
    assert len(grads) == len(xs), (f"{_label(layer)}.backward must return one gradient per "
                                   f"input ({len(xs)}), got {len(grads)}")
    for index, (g, x) in enumerate(zip(grads, xs)):
        got = f"{g.dtype} {g.shape}" if isinstance(g, np.ndarray) else type(g).__name__
        assert isinstance(g, np.ndarray) and g.shape == x.shape and g.dtype == x.dtype, \
            (f"{_label(layer)}.backward: the gradient of input {index} must be a {x.dtype} "
             f"array of its shape {x.shape}, got {got}")
    return [np.array(g) for g in grads]


def _output_shape(layer, input_shapes) -> tuple:
    """layer.output_shape, checked to be a tuple of positive ints."""
    shape = layer.output_shape(*[tuple(shape) for shape in input_shapes])
    assert isinstance(shape, tuple) and all(
        isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0
        for size in shape), (f"{_label(layer)}.output_shape must return a tuple of positive "
                             f"ints (the per-sample shape), got {shape!r}")
    return shape


def _set_state(layers, rng) -> None:
    """Float state buffers to values in [0.5, 1.5]: off their defaults, and valid as
    running means and variances."""
    for layer in layers:
        for buffer in layer.state_buffers():
            if buffer.value.dtype in FLOAT_DTYPES:
                buffer.value[...] = rng.uniform(0.5, 1.5, buffer.value.shape)


def finite_difference_gradient(objective, target: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """d objective() / d target by central differences, nudging ``target`` in place."""
    numeric = np.zeros_like(target)
    flat, numeric_flat = target.reshape(-1), numeric.reshape(-1)
    for index in range(flat.size):
        original = flat[index]
        flat[index] = original + step
        upper = objective()
        flat[index] = original - step
        lower = objective()
        flat[index] = original
        numeric_flat[index] = (upper - lower) / (2 * step)
    return numeric


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """‖a − n‖ / (‖a‖ + ‖n‖): small when two gradients agree, whatever their scale."""
    return float(np.linalg.norm(analytic - numeric)
                 / max(np.linalg.norm(analytic) + np.linalg.norm(numeric), 1e-12))


def check_protocol(cls, config: dict, input_shapes) -> None:
    """A registry name, a config that is a dict of JSON values, a repr, Parameter
    objects with grads of their shape."""
    layer = cls(**config)
    assert isinstance(layer, Layer), f"{cls.__name__} does not subclass corenet.Layer"
    assert isinstance(cls.name, str) and cls.name == cls.name.lower() and cls.name, \
        f"{cls.__name__}.name must be a snake_case string, got {cls.name!r}"
    checked_config(layer)  # before repr, which prints it
    assert repr(layer).startswith(cls.__name__), repr(layer)
    # Lists of Parameter and Buffer objects, checked before they are used (a tuple, or
    # bare arrays, were a TypeError or AttributeError inside the kit).
    for method, kind in (("parameters", Parameter), ("state_buffers", Buffer)):
        arrays = getattr(layer, method)()
        assert isinstance(arrays, list) and all(isinstance(a, kind) for a in arrays), \
            (f"{cls.name}.{method}() must return a list of corenet.{kind.__name__} objects, "
             f"got {type(arrays).__name__} "
             f"{[type(a).__name__ for a in arrays] if isinstance(arrays, (list, tuple)) else ''}")
    for parameter in layer.parameters():
        assert parameter.grad.shape == parameter.value.shape, parameter
    names = [array.name for array in layer.parameters() + layer.state_buffers()]
    assert len(names) == len(set(names)), f"{cls.name}: repeated array names {names}"
    assert layer.training and not layer.eval().training and layer.train().training


def check_output_shape(cls, config: dict, input_shapes) -> None:
    """output_shape agrees with what forward returns, in float32 and float64."""
    rng = np.random.default_rng(0)
    for dtype, training in itertools.product((np.float32, np.float64), MODES):
        layer = _build(cls, config, dtype).train(training)
        expected = _output_shape(layer, input_shapes)
        out = _forward(layer, _inputs(input_shapes, rng, dtype))
        assert out.shape == (BATCH,) + tuple(expected), (out.shape, expected)
        assert out.dtype == dtype, f"{cls.name}: {dtype.__name__} input gave {out.dtype}"
        assert np.all(np.isfinite(out)), f"{cls.name}: non-finite output"


def check_gradients(cls, config: dict, input_shapes, tolerance: float = 1e-6,
                    step: float = 1e-6) -> None:
    """backward against central finite differences in float64, inputs and parameters,
    in training and in evaluation mode. The objective is a weighted sum over the whole
    batch, so layers that couple samples (batch norm in training) are checked whole."""
    for training in MODES:
        rng = np.random.default_rng(1)
        layer = _build(cls, config, np.float64).train(training)
        xs = _inputs(input_shapes, rng)
        for parameter in layer.parameters():  # move parameters off their defaults, from kinks
            parameter.value[...] = away_from_kinks(parameter.value.shape, rng) * 0.5
        _set_state([layer], rng)
        weights = rng.standard_normal((BATCH,) + _output_shape(layer, input_shapes))

        def objective() -> float:
            return float(np.sum(_forward(layer, xs) * weights))

        objective()
        layer.zero_grad()
        analytic = _input_grads(layer, weights.copy(), xs)
        analytic += [p.grad.copy() for p in layer.parameters()]
        targets = list(xs) + [p.value for p in layer.parameters()]
        names = [f"input {i}" for i in range(len(xs))] + [p.name for p in layer.parameters()]
        mode = "training" if training else "evaluation"
        for name, target, grad in zip(names, targets, analytic):
            error = relative_error(grad, finite_difference_gradient(objective, target, step))
            assert error < tolerance, (f"{cls.name}: gradient of {name} in {mode} mode differs "
                                       f"from finite differences, relative error {error:.2e}")


def checked_config(layer: Layer) -> dict:
    """layer.get_config(), or an AssertionError naming the layer unless it is a dict
    of JSON values with string keys (a model file stores it as JSON)."""
    label = f"{type(layer).__name__}.get_config()"
    config = layer.get_config()
    assert isinstance(config, dict), \
        f"{label} must return a dict of constructor arguments, got {type(config).__name__}"
    for key, value in config.items():
        assert isinstance(key, str), f"{label}: keys must be argument names, got {key!r}"
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise AssertionError(f"{label}: {key}={value!r} ({type(value).__name__}) is not a "
                                 f"JSON value, and a model file stores the config as JSON "
                                 f"({error})") from None
    return config


def _as_json(value):
    """The value a JSON round trip gives back: tuples become lists."""
    return json.loads(json.dumps(value))


SET_BY_EXECUTOR = {"training", "needs_input_grad", "reuse_buffers", "fused_activation"}


def _settings(obj, prefix: str = "", depth: int = 2) -> dict:
    """{dotted name: value} of the public attributes a constructor sets: plain values,
    and those of plain helper objects (a convolution's window); not parameters, arrays,
    or the attributes the executor sets."""
    found = {}
    for key, value in vars(obj).items():
        if key.startswith("_") or key in SET_BY_EXECUTOR:
            continue
        if value is None or isinstance(value, (bool, int, float, str, tuple, list, np.dtype)):
            try:
                found[prefix + key] = _as_json(value.name if isinstance(value, np.dtype)
                                               else value)
            except (TypeError, ValueError):  # a tuple of objects: not a plain setting
                pass
        elif depth and hasattr(value, "__dict__") and not isinstance(
                value, (Layer, Parameter, np.ndarray, type)) and not callable(value):
            found.update(_settings(value, f"{prefix}{key}.", depth - 1))
    return found


def _differences(rebuilt: dict, original: dict) -> str:
    """"rebuilt k=1, original k=2" for each key whose value differs or is missing."""
    def shown(table: dict, key: str) -> str:
        return f"{key}={table[key]!r}" if key in table else f"no {key}"

    return ", ".join(f"rebuilt {shown(rebuilt, key)}, original {shown(original, key)}"
                     for key in sorted(set(rebuilt) | set(original))
                     if key not in rebuilt or key not in original or rebuilt[key] != original[key])


def _layer_dtype(layer: Layer) -> np.dtype:
    """The dtype of input a layer takes: its own dtype, its parameters', else float32."""
    if getattr(layer, "dtype", None) is not None:
        return np.dtype(layer.dtype)
    parameters = layer.parameters()
    return parameters[0].value.dtype if parameters else np.dtype(np.float32)


def check_config_round_trip(cls, config: dict, input_shapes) -> None:
    """``cls(**layer.get_config())`` rebuilds an equal layer, the config going through
    JSON as in a model file: the same config, the same settings (public attributes),
    the same parameter names, shapes and dtypes and, with the original's parameter
    values copied in, the same output and gradients on the same input (in evaluation
    mode)."""
    layer = cls(**config)
    stored = _as_json(checked_config(layer))
    fail = f"{cls.__name__}.get_config() does not rebuild an equal layer: "
    try:
        rebuilt = cls(**stored)
    except Exception as error:
        raise AssertionError(f"{cls.__name__}.get_config() returned {stored!r}, which "
                             f"{cls.__name__}(**config) rejects: {type(error).__name__}: "
                             f"{error}") from error
    difference = _differences(_as_json(checked_config(rebuilt)), stored)
    assert not difference, fail + "get_config() of the rebuilt layer differs: " + difference
    difference = _differences(_settings(rebuilt), _settings(layer))
    assert not difference, fail + difference
    shapes = {p.name: (p.value.shape, p.value.dtype.name)  # buffers too
              for p in rebuilt.parameters() + rebuilt.state_buffers()}
    expected = {p.name: (p.value.shape, p.value.dtype.name)
                for p in layer.parameters() + layer.state_buffers()}
    assert shapes == expected, f"{fail}rebuilt parameters {shapes}, original {expected}"
    rng = np.random.default_rng(5)
    for ours, theirs in zip(layer.parameters(), rebuilt.parameters()):
        ours.value[...] = rng.uniform(-1, 1, ours.value.shape)  # off the defaults, as trained
        theirs.value[...] = ours.value
    state = np.random.default_rng(6)
    _set_state([layer], state)
    _set_state([rebuilt], np.random.default_rng(6))
    layer.eval()  # where a layer that draws random numbers does not
    rebuilt.eval()
    xs = _inputs(input_shapes, rng, _layer_dtype(layer))
    out = _forward(layer, [x.copy() for x in xs]).copy()
    rebuilt_out = _forward(rebuilt, [x.copy() for x in xs])
    assert rebuilt_out.shape == out.shape, \
        f"{fail}rebuilt output shape {rebuilt_out.shape}, original {out.shape}"
    assert np.array_equal(out, rebuilt_out, equal_nan=True), (
        f"{fail}with the same parameters its output differs by up to "
        f"{np.nanmax(np.abs(out - rebuilt_out)):.3g}")
    weights = rng.standard_normal(out.shape).astype(out.dtype)
    grads = _input_grads(layer, weights.copy(), xs)
    rebuilt_grads = _input_grads(rebuilt, weights.copy(), xs)
    grads += [p.grad for p in layer.parameters()]
    rebuilt_grads += [p.grad for p in rebuilt.parameters()]
    for ours, theirs in zip(grads, rebuilt_grads):
        assert np.array_equal(ours, theirs, equal_nan=True), \
            f"{fail}with the same parameters its gradients differ"


def check_save_load(cls, config: dict, input_shapes) -> None:
    """A model holding the layer saves and loads to the same parameters, state buffers
    and outputs in both modes (the layer must be registered)."""
    import corenet as cn
    from corenet import serialize

    from corenet.registry import registry

    if cls.name not in registry.load().layers:
        raise AssertionError(
            f"check_save_load: no installed plugin provides layer {cls.name!r}, so a saved "
            f"model could not be loaded; install the plugin (pip install -e .), register it "
            f"in a fixture, or pass skip=('check_save_load',)")
    inputs = [cn.Input(tuple(shape)) for shape in input_shapes]
    model = cn.Model(inputs, cls(**config)(*inputs))
    rng = np.random.default_rng(2)
    for parameter in model.parameters():
        parameter.value[...] = rng.standard_normal(parameter.value.shape)
    _set_state(model.layers, rng)
    xs = _inputs(input_shapes, rng, model.dtype)
    _forward(model.train(), xs)  # a training step moves running statistics and counts
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.npz")
        serialize.save(model, path)
        loaded = serialize.load(path)
    for ours, theirs in zip(model.layers, loaded.layers):
        for mine, read in zip(ours.parameters() + ours.state_buffers(),
                              theirs.parameters() + theirs.state_buffers()):
            assert mine.name == read.name and mine.value.dtype == read.value.dtype
            np.testing.assert_array_equal(mine.value, read.value, err_msg=mine.name)
    for training in (False, True):  # evaluation first: training moves the statistics
        np.testing.assert_array_equal(_forward(model.train(training), xs),
                                      _forward(loaded.train(training), xs))


def check_bad_input(cls, config: dict, input_shapes) -> None:
    """Integer or object input and an empty batch are errors naming the layer; so is a
    sample without its batch axis, for layers that fix their input shape (``input_shape``)."""
    rng = np.random.default_rng(3)
    layer = cls(**config)
    good = _inputs(input_shapes, rng, _layer_dtype(layer))
    cases = [(DTypeError, [x.astype(np.int64) for x in good]),
             (DTypeError, [x.astype(object) for x in good]),
             (ShapeError, [x[:0] for x in good])]
    if getattr(layer, "input_shape", None) is not None:
        cases.append((ShapeError, [x[0] for x in good]))
    for error_type, xs in cases:
        try:
            layer.forward(*xs)
        except error_type as error:
            assert cls.name in str(error), f"{cls.name}: error does not name the layer: {error}"
        else:
            raise AssertionError(f"{cls.name}: inputs {[(x.dtype, x.shape) for x in xs]} "
                                 f"did not raise {error_type.__name__}")


def check_thread_invariance(cls, config: dict, input_shapes) -> None:
    """Bitwise the same outputs, gradients and state on 1 thread and on every thread, in
    both modes."""
    from corenet.kernels.threads import get_num_threads, set_num_threads

    threads = get_num_threads()
    rng = np.random.default_rng(4)
    # A batch large enough that every kernel's grain is passed and threads really split it.
    per_sample = min(int(np.prod(shape)) for shape in input_shapes)
    xs = _inputs(input_shapes, rng, _layer_dtype(cls(**config)),
                 batch=max(64, -(-(1 << 18) // per_sample)))
    for training in MODES:
        results = []
        try:
            for n in (1, max(2, threads)):
                set_num_threads(n)
                layer = cls(**config).train(training)
                for parameter in layer.parameters():
                    parameter.value[...] = np.linspace(-1, 1, parameter.value.size).reshape(
                        parameter.value.shape)
                _set_state([layer], np.random.default_rng(5))
                out = _forward(layer, xs).copy()
                # Weights that differ across the batch: dL/dx of batch norm in training
                # is 0 for a gradient of ones.
                grad = np.linspace(-1, 1, out.size, dtype=out.dtype).reshape(out.shape)
                grads = _input_grads(layer, grad, xs)
                results.append([out] + grads + [p.grad.copy() for p in layer.parameters()]
                               + [b.value.copy() for b in layer.state_buffers()])
        finally:
            set_num_threads(threads)
        for one, many in zip(*results):
            np.testing.assert_array_equal(one, many)


def check_unset_grads(cls, config: dict, input_shapes) -> None:
    """After ``zero_grad(set_to_none=True)``, as ``fit``'s steps do, a backward gives
    bitwise the gradients a backward gives from zeros, and a second backward adds to
    them: a layer that writes its gradient (parameter_arrays_to_write) must write it
    only when it was unset, and a layer must take its grads through parameter_arrays
    (a grad may be None)."""
    layer = cls(**config)
    if not layer.parameters():
        return
    xs = _inputs(input_shapes, np.random.default_rng(6), _layer_dtype(layer))
    out = _forward(layer, xs)
    grad = np.linspace(-1, 1, out.size, dtype=out.dtype).reshape(out.shape)
    results = []
    for set_to_none in (False, True):
        zero_layer_grads(layer, set_to_none)  # a zero_grad may take no argument
        for _ in range(2):  # one backward, then one that adds to it
            _input_grads(layer, grad, xs)
            # A grad that backward left unset counts as zeros, as optimizers skip it.
            results.append([np.zeros_like(p.value) if p.grad is None else p.grad.copy()
                            for p in layer.parameters()])
    for parameter, once, twice in zip(layer.parameters(), results[0], results[1]):
        # x + x is exact: two backwards add up to twice one, bitwise, or one wrote
        np.testing.assert_array_equal(
            twice, once + once, err_msg=f"{cls.name}: two backwards from zeros give "
                                        f"{parameter.name} a gradient other than twice "
                                        f"one's: backward must add into a set gradient")
    for (label, zeroed), unset in zip((("one backward", results[0]),
                                       ("two backwards", results[1])), results[2:]):
        for parameter, a, b in zip(layer.parameters(), zeroed, unset):
            np.testing.assert_array_equal(
                a, b, err_msg=f"{cls.name}: {parameter.name}'s gradient after "
                              f"zero_grad(set_to_none=True) and {label} differs from the "
                              f"one from zeros")


CHECKS = [check_protocol, check_output_shape, check_gradients, check_config_round_trip,
          check_save_load, check_bad_input, check_thread_invariance, check_unset_grads]


def check_layer(cls, config: dict, input_shapes, skip: tuple = ()) -> None:
    """Run every conformance check (but those named in ``skip``) on one layer."""
    for check in CHECKS:
        if check.__name__ not in skip:
            try:
                check(cls, config, input_shapes)
            except Exception as error:  # which check, shown under the error by pytest
                if hasattr(error, "add_note"):  # Python 3.11 on
                    error.add_note(f"in corenet.testing.{check.__name__}({cls.__name__}, "
                                   f"{config!r}, {list(input_shapes)!r})")
                raise
