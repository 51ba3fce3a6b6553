"""corenet.diagnostics: dead units, gradient norms and their warnings, Jacobians, linear
regions, the fit callbacks that carry them, and `corenet train --diagnostics`."""
import doctest
import importlib
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.diagnostics import (DeadUnits, Diagnostics, GradientWarning, activation_patterns,
                                 count_linear_regions, gradient_norms, gradient_problems,
                                 jacobian, max_linear_regions)
from corenet.errors import ShapeError
from corenet.train import Callback, TrainingDiverged, batches, fit

MODULES = ["corenet.diagnostics.dead_units", "corenet.diagnostics.gradients",
           "corenet.diagnostics.callback", "corenet.diagnostics.jacobian",
           "corenet.diagnostics.regions"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def fused_pairs(model):
    """The second layers of the pairs the executor runs as one."""
    return [fused for *_, fused in model._plan if fused is not None]


def test_readme_diagnostics_example_runs(capsys):
    import pathlib

    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("needs the source checkout")
    section = readme.read_text().split("## Diagnostics", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "  dead units: relu#1 " in printed and "  gradient norms: linear#0 " in printed
    regions, total = re.search(r"^(\d+) of (\d+)$", printed, re.M).groups()
    assert total == "16" and 1 <= int(regions) <= 16


# -- forward hooks -------------------------------------------------------------------

def test_forward_hooks_see_each_materialised_output_and_can_be_removed(rng):
    x = cn.Input(shape=(3,))
    hidden = L.ReLU()(L.Linear(3, 4)(x))
    model = cn.Model(x, L.Add()(hidden, L.Linear(3, 4)(x)))
    linear, relu, other, add = model.layers
    seen = []
    handle = model.register_forward_hook(
        lambda layer, inputs, output: seen.append((layer, inputs, output.copy())))
    out = model.forward(rng.standard_normal((5, 3)))
    assert fused_pairs(model) == [relu]
    # The fused Linear's pre-activation is never kept: no call for it, None for relu's input.
    assert [entry[0] for entry in seen] == [relu, other, add]
    assert seen[0][1] == (None,)
    np.testing.assert_array_equal(seen[2][2], out)
    np.testing.assert_array_equal(seen[2][1][0], seen[0][2])
    handle.remove()
    handle.remove()  # a second remove does nothing
    model.forward(rng.standard_normal((5, 3)))
    assert len(seen) == 3
    with pytest.raises(TypeError, match="register_forward_hook: expected a callable, got int"):
        model.register_forward_hook(3)


# -- dead units ------------------------------------------------------------------------

def crafted_relu_model(activation=None):
    """Linear(3, 6) → activation: units 0, 1 and 3 have a bias of -100 (never on), unit 5 a
    zero row and bias (input exactly 0), unit 2 a bias of +100, unit 4 reads x0."""
    linear = L.Linear(3, 6, dtype="float64")
    linear.weight.value[:] = np.random.default_rng(1).uniform(-0.5, 0.5, (6, 3))
    linear.weight.value[4] = [1, 0, 0]
    linear.weight.value[5] = 0
    linear.bias.value[:] = [-100, -100, 100, -100, 0, 0]
    return cn.Sequential(linear, activation or L.ReLU(), L.Linear(6, 2, dtype="float64"))


def reference_dead(model, X):
    linear = model.layers[0]
    pre = X @ linear.weight.value.T + linear.bias.value
    return int(np.count_nonzero(pre.max(axis=0) <= 0))


@pytest.mark.parametrize("activation", [
    L.ReLU, lambda: L.LeakyReLU(0.1), L.ELU, lambda: L.PReLU(dtype="float64"),
    # A negative slope makes the negative side's outputs positive: the input decides.
    lambda: L.PReLU(init=-0.5, dtype="float64"), lambda: L.LeakyReLU(-0.5)],
    ids=["relu", "leaky_relu", "elu", "prelu", "prelu_negative", "leaky_relu_negative"])
def test_dead_units_exact_on_a_crafted_network(activation, rng):
    model = crafted_relu_model(activation())
    X = rng.uniform(-1, 1, (50, 3))
    with DeadUnits(model) as dead:
        for start in range(0, 50, 16):  # over batches: a unit on in any batch is alive
            model.forward(X[start:start + 16])
    assert dead.counts() == {1: (4, 6)} == {1: (reference_dead(model, X), 6)}
    assert dead.fractions() == {1: 4 / 6}
    # relu, leaky_relu and elu run fused in Linear's GEMM (for slopes >= 0); prelu never.
    activation = model.layers[1]
    fusable = activation.name != "prelu" and getattr(activation, "negative_slope", 0) >= 0
    assert fused_pairs(model) == ([model.layers[1]] if fusable else [])


def test_a_unit_on_for_a_single_sample_of_one_batch_is_alive(rng):
    model = crafted_relu_model()
    X = rng.uniform(-1, 1, (40, 3))
    X[:, 0] = -np.abs(X[:, 0])
    X[33, 0] = 0.5  # unit 4 (reads x0, bias 0) is on for this sample only
    dead = DeadUnits(model).attach()
    model.forward(X[:32])
    assert dead.counts() == {1: (5, 6)}
    model.forward(X[32:])
    assert dead.counts() == {1: (4, 6)}
    dead.reset()
    assert dead.counts() == {}
    model.forward(X[:32])
    assert dead.counts() == {1: (5, 6)}
    dead.detach()
    model.forward(X[32:])  # no longer watched
    assert dead.counts() == {1: (5, 6)}


def test_an_unfused_relu_on_the_model_input_and_a_conv_relu(rng):
    model = cn.Sequential(L.ReLU(), L.Linear(4, 2), input_shape=(4,))
    X = rng.uniform(-1, 1, (20, 4))
    X[:, 1] = -np.abs(X[:, 1])
    with DeadUnits(model) as dead:
        model.forward(X)
    assert dead.counts() == {0: (1, 4)}

    conv = L.Conv2d(1, 2, 3, padding=1, dtype="float64")
    conv.bias.value[:] = [-100, 100]  # channel 0 is dead at every position
    model = cn.Sequential(conv, L.ReLU(), L.Flatten(), L.Linear(32, 2, dtype="float64"),
                          input_shape=(1, 4, 4))
    assert fused_pairs(model) == [model.layers[1]]
    with DeadUnits(model) as dead:
        model.forward(rng.uniform(-1, 1, (6, 1, 4, 4)))
    assert dead.counts() == {1: (16, 32)}


def test_dead_units_with_training_only_ignore_evaluation_forwards(rng):
    model = crafted_relu_model()
    with DeadUnits(model, training_only=True) as dead:
        model.predict(rng.uniform(-1, 1, (8, 3)))
        assert dead.counts() == {}
        model.forward(rng.uniform(-1, 1, (8, 3)))
    assert dead.counts()[1][1] == 6


# -- gradient norms and warnings -----------------------------------------------------

def mlp(sizes, activation=L.Tanh, dtype="float64"):
    stack = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        stack += [L.Linear(n_in, n_out, dtype=dtype), activation()]
    return cn.Sequential(*stack[:-1])


def test_gradient_norms_equal_numpy_norms(rng):
    model = mlp([5, 7, 4, 3], dtype="float32")
    loss = cn.losses.SoftmaxCrossEntropy()
    loss.forward(model.forward(rng.standard_normal((9, 5))), rng.integers(0, 3, 9))
    model.backward(loss.backward())
    norms = gradient_norms(model)
    assert sorted(norms) == [0, 2, 4]
    for index, norm in norms.items():
        grads = np.concatenate([p.grad.astype(np.float64).ravel()
                                for p in model.layers[index].parameters()])
        assert norm == pytest.approx(np.linalg.norm(grads), rel=1e-6)
        assert norm > 0


def test_the_callback_reports_the_mean_of_the_batch_norms_and_the_dead_units(rng):
    model = crafted_relu_model()
    X, y = rng.uniform(-1, 1, (70, 3)), rng.integers(0, 2, 70)
    loss = cn.losses.SoftmaxCrossEntropy()
    # lr = 0: the weights stay, so the reference can replay the epoch's batches.
    expected_norms = {0: [], 2: []}
    for index in batches(70, 16, np.random.default_rng(4)):
        model.zero_grad()
        loss.forward(model.forward(X[index]), y[index])
        model.backward(loss.backward())
        for layer_index in expected_norms:
            grads = [p.grad.ravel() for p in model.layers[layer_index].parameters()]
            expected_norms[layer_index].append(np.linalg.norm(np.concatenate(grads)))
    diagnostics = Diagnostics()
    fit(model, loss, cn.optim.SGD(model.parameters(), lr=0.0), X, y, epochs=2, batch_size=16,
        seed=4, callbacks=[diagnostics])
    assert [report.epoch for report in diagnostics.history] == [1, 2]
    report = diagnostics.history[0]
    by_index = {entry.index: entry for entry in report.layers}
    assert sorted(by_index) == [0, 1, 2]
    for index, norms in expected_norms.items():
        assert by_index[index].grad_norm == pytest.approx(np.mean(norms), rel=1e-12)
    assert (by_index[1].dead_units, by_index[1].units) == (reference_dead(model, X), 6)
    assert by_index[1].dead_fraction == pytest.approx(4 / 6)
    assert by_index[1].grad_norm is None and by_index[0].units is None
    assert model._forward_hooks == []  # the callback leaves no hook behind


def test_gradient_problems_thresholds():
    assert gradient_problems({"a": 1.0, "b": 2.0, "c": 1.5}) == {}
    assert gradient_problems({0: 1.0, 1: 1.0, 2: 1.2e3}) == {2: "exploding"}
    assert gradient_problems({0: 1.0, 1: 1.0, 2: 0.9e3}) == {}
    assert gradient_problems({0: 1.0, 1: 1.0, 2: 2e-3}) == {}
    assert gradient_problems({0: 1.0, 1: 1.0, 2: 2e-3}, vanishing=1e-2) == {2: "vanishing"}
    assert gradient_problems({0: 0.0, 1: 1.0, 2: math.inf, 3: math.nan}) == {
        0: "vanishing", 2: "exploding", 3: "exploding"}
    assert gradient_problems({0: 0.0, 1: 0.0, 2: 1.0}) == {0: "vanishing", 1: "vanishing"}
    for bad in ({"vanishing": 0}, {"vanishing": 2.0}, {"exploding": 0.5}):
        with pytest.raises(ValueError, match="expected 0 < vanishing < 1 < exploding"):
            gradient_problems({0: 1.0}, **bad)
    with pytest.raises(ValueError, match="expected 0 < vanishing < 1 < exploding"):
        Diagnostics(exploding=1.0)


@pytest.mark.parametrize("settings, message", [
    (dict(vanishing="0.1"), "vanishing must be a finite number, got '0.1'"),  # a TypeError
    (dict(vanishing=float("nan")), "vanishing must be a finite number, got nan"),
    (dict(exploding=True), "exploding must be a finite number, got True"),
    (dict(warn="no"), "warn must be True or False, got 'no'")])  # taken as True
def test_diagnostics_settings_of_the_wrong_type_are_errors(settings, message):
    with pytest.raises(ValueError, match="Diagnostics: " + message):
        Diagnostics(**settings)
    assert Diagnostics(exploding=math.inf).exploding == math.inf  # no exploding warnings


def train_with_diagnostics(model, rng, **options):
    X, y = rng.standard_normal((64, 6)), rng.integers(0, 3, 64)
    diagnostics = Diagnostics(**options)
    fit(model, cn.losses.SoftmaxCrossEntropy(), cn.optim.SGD(model.parameters(), lr=0.01), X,
        y, epochs=2, callbacks=[diagnostics])
    return diagnostics


def test_the_warning_fires_on_a_vanishing_gradient_and_not_on_a_healthy_one(rng):
    healthy = mlp([6, 8, 8, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientWarning)
        diagnostics = train_with_diagnostics(healthy, rng)
    assert all(report.warnings == [] for report in diagnostics.history)
    assert {entry.gradient for entry in diagnostics.history[-1].layers
            if entry.grad_norm is not None} == {"ok"}

    vanishing = mlp([6, 8, 8, 3])
    # dL/dW1 passes through W2: scaled by 1e-6 it reaches the first layer a millionth
    # as strong, while W2's and W3's own gradients keep their size.
    vanishing.layers[2].weight.value *= 1e-6
    with pytest.warns(GradientWarning, match=r"epoch 1: linear#0 gradient norm .* vanishing"):
        diagnostics = train_with_diagnostics(vanishing, rng)
    first = diagnostics.history[0].layers[0]
    assert (first.label, first.gradient) == ("linear#0", "vanishing")
    assert [message.split(":")[0] for message in diagnostics.history[0].warnings] == ["epoch 1"]

    quiet = mlp([6, 8, 8, 3])
    quiet.layers[2].weight.value *= 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientWarning)
        diagnostics = train_with_diagnostics(quiet, rng, warn=False)
    assert diagnostics.history[0].layers[0].gradient == "vanishing"


# -- the fit callbacks -----------------------------------------------------------------

class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self):
        self.calls.append(("train_begin", self.model is not None))

    def on_epoch_begin(self, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_after_backward(self, epoch, batch):
        # The batch's gradient is there and the step has not been taken yet.
        grad_norm = gradient_norms(self.model)[0]
        self.calls.append(("after_backward", epoch, batch, grad_norm > 0))

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch_end", epoch, round(logs["loss"], 12)))

    def on_train_end(self):
        self.calls.append(("train_end",))


def test_fit_calls_the_callbacks_in_order(rng):
    model = mlp([3, 4, 2])
    X, y = rng.standard_normal((10, 3)), rng.integers(0, 2, 10)
    recorder = Recorder()
    epochs_seen = []
    history = fit(model, cn.losses.SoftmaxCrossEntropy(), cn.optim.SGD(model.parameters(),
                  lr=0.1), X, y, epochs=2, batch_size=4, callbacks=[recorder],
                  on_epoch=lambda epoch, loss: epochs_seen.append(recorder.calls[-1][0]))
    assert recorder.calls == [
        ("train_begin", True),
        ("epoch_begin", 0), ("after_backward", 0, 0, True), ("after_backward", 0, 1, True),
        ("after_backward", 0, 2, True), ("epoch_end", 0, round(history[0], 12)),
        ("epoch_begin", 1), ("after_backward", 1, 0, True), ("after_backward", 1, 1, True),
        ("after_backward", 1, 2, True), ("epoch_end", 1, round(history[1], 12)),
        ("train_end",)]
    assert epochs_seen == ["epoch_end", "epoch_end"]  # callbacks first, then on_epoch
    with pytest.raises(TypeError, match="fit: callbacks must be corenet.train.Callback "
                                        "objects, got function"):
        fit(model, cn.losses.SoftmaxCrossEntropy(), cn.optim.SGD(model.parameters(), lr=0.1),
            X, y, callbacks=[lambda: None])


def test_train_end_runs_and_hooks_go_when_training_diverges(rng):
    model = mlp([3, 4, 2])
    X, y = rng.standard_normal((10, 3)), rng.integers(0, 2, 10)
    X[7] = np.inf
    recorder, diagnostics = Recorder(), Diagnostics()
    with pytest.raises(TrainingDiverged):
        fit(model, cn.losses.SoftmaxCrossEntropy(), cn.optim.SGD(model.parameters(), lr=0.1),
            X, y, callbacks=[recorder, diagnostics])
    assert recorder.calls[-1] == ("train_end",)
    assert model._forward_hooks == []


# -- Jacobians -------------------------------------------------------------------------

def finite_difference_jacobian(function, x, step=1e-6):
    """(N, out, in) by central differences, one input element of every sample at a time
    (the samples are independent)."""
    x = x.copy()
    flat = x.reshape(len(x), -1)
    columns = []
    for k in range(flat.shape[1]):
        original = flat[:, k].copy()
        flat[:, k] = original + step
        upper = function(x).reshape(len(x), -1).copy()
        flat[:, k] = original - step
        lower = function(x).reshape(len(x), -1).copy()
        flat[:, k] = original
        columns.append((upper - lower) / (2 * step))
    return np.stack(columns, axis=-1)


def distinct_values(rng, shape, gap=0.05):
    """Values at least ``gap`` apart and away from 0: no ties for max pooling, no kinks."""
    values = (np.arange(np.prod(shape)) + 1) * gap * rng.choice([-1, 1], np.prod(shape))
    return rng.permutation(values).reshape(shape)


JACOBIAN_CASES = {
    "linear": (lambda: L.Linear(4, 3, dtype="float64"), (5, 4)),
    "relu": (L.ReLU, (4, 6)),
    "tanh": (L.Tanh, (3, 2, 3)),
    "sigmoid": (L.Sigmoid, (3, 4)),
    "softmax": (L.Softmax, (4, 5)),
    "conv2d": (lambda: L.Conv2d(2, 3, 3, padding=1, dtype="float64"), (2, 2, 4, 4)),
    "maxpool2d": (lambda: L.MaxPool2d(2), (2, 2, 4, 4)),
}


@pytest.mark.parametrize("case", sorted(JACOBIAN_CASES))
def test_jacobian_matches_finite_differences(case, rng):
    make, shape = JACOBIAN_CASES[case]
    layer = make()
    x = distinct_values(rng, shape)
    result = jacobian(layer, x)
    out_size = layer.forward(x[:1]).size
    assert result.shape == (shape[0], out_size, int(np.prod(shape[1:])))
    assert result.dtype == np.float64
    numeric = finite_difference_jacobian(lambda v: layer.forward(v), x)
    np.testing.assert_allclose(result, numeric, atol=1e-8, rtol=1e-6)
    np.testing.assert_array_equal(jacobian(layer, x, max_rows=1), result)


def test_jacobian_of_linear_is_its_weight_and_of_softmax_diag_minus_outer(rng):
    linear = L.Linear(4, 3)
    x = rng.standard_normal((2, 4))
    for matrix in jacobian(linear, x):
        np.testing.assert_allclose(matrix, linear.weight.value, rtol=1e-12)
    y = L.Softmax().forward(x)
    for matrix, probabilities in zip(jacobian(L.Softmax(), x), y):
        expected = np.diag(probabilities) - np.outer(probabilities, probabilities)
        np.testing.assert_allclose(matrix, expected, atol=1e-15)


@pytest.mark.parametrize("build", ["mlp", "cnn"])
def test_a_models_jacobian_is_the_product_of_its_layers(build, rng):
    if build == "mlp":
        model = cn.Sequential(L.Linear(4, 6, dtype="float64"), L.ReLU(),
                              L.Linear(6, 5, dtype="float64"), L.Tanh(),
                              L.Linear(5, 3, dtype="float64"), L.Softmax())
        x = rng.standard_normal((3, 4))
    else:
        model = cn.Sequential(L.Conv2d(1, 2, 3, padding=1, dtype="float64"), L.ReLU(),
                              L.MaxPool2d(2), L.Flatten(), L.Linear(8, 3, dtype="float64"),
                              input_shape=(1, 4, 4))
        x = distinct_values(rng, (3, 1, 4, 4))
    assert fused_pairs(model)  # the model's backward runs fused pairs
    product, h = None, x
    for layer in model.layers:  # the chain rule, one layer at a time
        factor = jacobian(layer, h)
        product = factor if product is None else factor @ product
        h = layer.forward(h)
    result = jacobian(model, x)
    np.testing.assert_allclose(result, product, atol=1e-12)
    numeric = finite_difference_jacobian(lambda v: model.forward(v), x)
    np.testing.assert_allclose(result, numeric, atol=1e-7)


def test_jacobian_leaves_the_users_layer_and_model_alone(rng):
    model = cn.Sequential(L.Linear(3, 4), L.ReLU(), L.Linear(4, 2))
    before = [p.value.copy() for p in model.parameters()]
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    first = model.layers[0]
    x = rng.standard_normal((2, 3)).astype(np.float32)
    model.forward(x)
    cached = first._x
    jacobian(model, x)
    jacobian(first, x)
    assert len(calls) == 2  # one forward of the user's: the copies have no hooks
    assert model.dtype == np.float32 and first.dtype == np.float32
    assert first._x is cached and model.layers[1]._node is not None
    assert all(np.array_equal(a, p.value) and p.value.dtype == np.float32
               for a, p in zip(before, model.parameters()))
    assert all(not p.grad.any() for p in model.parameters())
    assert not model.requires_input_grad and model.layers[0].training


def test_jacobian_errors(rng):
    with pytest.raises(TypeError, match="jacobian: expected a corenet Layer or Model, got str"):
        jacobian("relu", np.ones((1, 2)))
    with pytest.raises(ShapeError, match=r"expected a batch of samples.*got shape \(3,\)"):
        jacobian(L.ReLU(), np.ones(3))
    with pytest.raises(TypeError, match="jacobian: expected a float array, got dtype int64"):
        jacobian(L.ReLU(), np.ones((1, 3), np.int64))
    with pytest.raises(ShapeError, match="linear"):
        jacobian(L.Linear(3, 2), np.ones((1, 4)))
    a, b = cn.Input(shape=(2,)), cn.Input(shape=(2,))
    with pytest.raises(ValueError, match="expected a model with one input and one output, "
                                         "got 2 and 1"):
        jacobian(cn.Model([a, b], L.Add()(a, b)), np.ones((1, 2)))
    # 12 TiB of Jacobians: numpy's bare MemoryError (or a process killed on first touch).
    with pytest.raises(ShapeError, match=r"jacobian: the Jacobians of shape \(100000, 4096, "
                                         r"4096\) float64 would take 12.2 TiB, more than"):
        jacobian(cn.Sequential(L.Linear(4096, 4096)), np.broadcast_to(np.float32(1),
                                                                      (100000, 4096)))
    with pytest.raises(ShapeError, match=r"jacobian: the unit gradients of one sample of "
                                         r"shape \(1000000, 1000000\) float64"):
        jacobian(L.Linear(1, 10 ** 6), np.ones((1, 1)))


# -- linear regions --------------------------------------------------------------------

def test_zaslavsky_count_exactly():
    for n in range(12):
        assert max_linear_regions(n, 2) == n * (n + 1) // 2 + 1
        assert max_linear_regions(n, n) == 2 ** n  # d >= n: every pattern occurs
        assert max_linear_regions(n, 1) == n + 1
    assert max_linear_regions(201, 100) == 2 ** 200  # half of the 2^201 subsets, exactly
    assert max_linear_regions(0, 5) == 1
    for bad, message in (((-1, 2), "n_hyperplanes must be at least 0, got -1"),
                         ((3, -1), "dim must be at least 0, got -1"),
                         ((2.5, 2), "n_hyperplanes must be an integer, got 2.5"),
                         ((True, 2), "n_hyperplanes must be an integer, got True")):
        with pytest.raises(ValueError, match="max_linear_regions: " + message):
            max_linear_regions(*bad)


def test_max_linear_regions_of_many_hyperplanes_is_quick_or_a_clear_error():
    # (10**4, 10**4) took 12.5 s, (10**5, 10**5) effectively for ever: 2**n in closed form.
    start = time.perf_counter()
    assert max_linear_regions(10 ** 5, 10 ** 5) == 1 << 10 ** 5
    assert max_linear_regions(10 ** 6, 2) == 10 ** 6 * (10 ** 6 + 1) // 2 + 1
    assert max_linear_regions(2000, 1999) == 2 ** 2000 - 1  # all but the empty complement
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ValueError, match=r"max_linear_regions: n_hyperplanes \* min\(dim, "
                                         r"n_hyperplanes - dim - 1\) must be at most 5e\+09 "
                                         r".*got n_hyperplanes=1000000, dim=10000"):
        max_linear_regions(10 ** 6, 10 ** 4)
    with pytest.raises(ValueError, match="max_linear_regions: n_hyperplanes must be at most "
                                         "100000000, got 10000000000"):
        max_linear_regions(10 ** 10, 10 ** 10)


def lines_model(weight, bias):
    """A one-hidden-layer ReLU net whose hidden units switch on the lines w·x + b = 0."""
    hidden = L.Linear(2, len(weight), dtype="float64")
    hidden.weight.value[:] = weight
    hidden.bias.value[:] = bias
    return cn.Sequential(hidden, L.ReLU(), L.Linear(len(weight), 1, dtype="float64"))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_n_lines_in_general_position_make_n_n_plus_1_over_2_plus_1_regions(n):
    # Tangents to the unit circle at distinct angles in [0, 0.8π): no two parallel, no
    # three through one point, all crossings within 1 / cos(0.4π) ≈ 3.2 of the origin.
    angles = np.linspace(0, 0.8 * np.pi, n) + 0.1
    model = lines_model(np.stack([np.cos(angles), np.sin(angles)], axis=1), -np.ones(n))
    assert count_linear_regions(model, extent=5, resolution=500) == max_linear_regions(n, 2) \
        == n * (n + 1) // 2 + 1


def test_lines_not_in_general_position_make_fewer_regions_and_patterns_match_numpy(rng):
    angles = np.array([0.2, 1.1, 2.3])  # three lines through the origin: 6 regions, not 7
    weight = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    model = lines_model(weight, np.zeros(3))
    assert count_linear_regions(model, extent=2, resolution=200) == 6 < max_linear_regions(3, 2)
    points = rng.uniform(-2, 2, (100, 2))
    np.testing.assert_array_equal(activation_patterns(model, points, batch_size=32),
                                  points @ weight.T > 0)


def test_linear_regions_errors():
    with pytest.raises(ShapeError, match=r"count_linear_regions: expected a model of one "
                                         r"input of shape \(2,\), got input shapes \[\(3,\)\]"):
        count_linear_regions(cn.Sequential(L.Linear(3, 2), L.ReLU()))
    model = cn.Sequential(L.Linear(2, 2), L.ReLU())
    for settings in (dict(resolution=1), dict(resolution=2.5), dict(resolution="400"),
                     dict(extent=float("inf")), dict(extent=float("nan")), dict(extent=-1.0)):
        # 2.5 was truncated to 2, an infinite extent counted 2 regions on a grid of NaN.
        with pytest.raises(ValueError, match="count_linear_regions: expected an integer "
                                             "resolution >= 2 and a finite extent > 0"):
            count_linear_regions(model, **settings)
    with pytest.raises(ShapeError, match=r"count_linear_regions: the grid of shape "
                                         r"\(1000000000000, 2\) float64 would take"):
        count_linear_regions(model, resolution=10 ** 6)  # numpy's bare MemoryError
    with pytest.raises(ValueError, match="the model has no ReLU-family layer"):
        count_linear_regions(cn.Sequential(L.Linear(2, 2), L.Tanh()))


@pytest.mark.parametrize("X, batch_size, error, message", [
    # numpy's "need at least one array to concatenate"
    (np.zeros((0, 2)), 4096, ShapeError, r"expected at least one sample in X, got shape "
                                         r"\(0, 2\)"),
    (np.zeros((4, 2)), 0, ValueError, "batch_size must be at least 1, got 0"),  # range()
    (np.zeros((4, 2)), -1, ValueError, "batch_size must be at least 1, got -1"),
    (np.zeros((4, 2)), 2.5, ValueError, "batch_size must be an integer, got 2.5")])  # TypeError
def test_activation_patterns_errors(X, batch_size, error, message):
    model = cn.Sequential(L.Linear(2, 2), L.ReLU())
    with pytest.raises(error, match="activation_patterns: " + message):
        activation_patterns(model, X, batch_size)


# -- the command line ------------------------------------------------------------------

def corenet(*args):
    return subprocess.run([sys.executable, "-m", "corenet.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=tempfile.gettempdir())


def test_train_diagnostics_printed_and_in_json():
    arguments = ["train", "--epochs", "2", "--hidden", "32,16", "--threads", "1", "--augment",
                 "0", "--diagnostics"]
    result = corenet(*arguments, "--json")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)["diagnostics"]
    assert [report["epoch"] for report in reports] == [1, 2]
    for report in reports:
        layers = {entry["index"]: entry for entry in report["layers"]}
        assert [(index, entry["layer"]) for index, entry in layers.items()] == [
            (0, "linear"), (1, "relu"), (2, "linear"), (3, "relu"), (4, "linear")]
        for index in (1, 3):
            entry = layers[index]
            assert entry["units"] == (32 if index == 1 else 16)
            assert entry["dead_fraction"] == entry["dead_units"] / entry["units"]
            assert "grad_norm" not in entry
        norms = {index: layers[index]["grad_norm"] for index in (0, 2, 4)}
        assert all(norm > 0 for norm in norms.values())
        problems = gradient_problems(norms)
        assert {index: layers[index]["gradient"] for index in norms} == {
            index: problems.get(index, "ok") for index in norms}
        assert len(report["warnings"]) == len(problems)

    # The text (to stderr beside the JSON, to stdout without it) says the same numbers.
    printed = corenet(*arguments)
    assert printed.returncode == 0, printed.stderr
    dead_lines = re.findall(r"^  dead units: (.*)$", printed.stdout, re.M)
    norm_lines = re.findall(r"^  gradient norms: (.*)$", printed.stdout, re.M)
    assert len(dead_lines) == len(norm_lines) == 2
    for report, dead_line, norm_line in zip(reports, dead_lines, norm_lines):
        layers = {entry["index"]: entry for entry in report["layers"]}
        assert dead_line == ", ".join(
            f"relu#{i} {layers[i]['dead_units']}/{layers[i]['units']} "
            f"({100 * layers[i]['dead_fraction']:.1f}%)" for i in (1, 3))
        assert norm_line == ", ".join(f"linear#{i} {layers[i]['grad_norm']:.3e}"
                                      for i in (0, 2, 4))
    assert "dead units" in result.stderr


def test_train_without_diagnostics_adds_nothing():
    result = corenet("train", "--epochs", "1", "--hidden", "8", "--json", "--augment", "0")
    assert result.returncode == 0, result.stderr
    assert "diagnostics" not in json.loads(result.stdout)
    assert "dead units" not in result.stderr and "gradient norms" not in result.stderr


def test_train_diagnostics_show_the_vanishing_gradient_of_a_deep_sigmoid_net():
    result = corenet("train", "--epochs", "1", "--hidden", ",".join(["32"] * 10),
                     "--activation", "sigmoid", "--augment", "0", "--diagnostics", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["diagnostics"][0]
    first = report["layers"][0]
    assert (first["layer"], first["gradient"]) == ("linear", "vanishing")
    assert report["warnings"][0].startswith("epoch 1: linear#0 gradient norm")
    assert "  warning: epoch 1: linear#0 gradient norm" in result.stderr
    assert "GradientWarning" not in result.stderr  # printed once, with the report
