"""Maxout, dropout, batch norm and layer norm beyond the shared tables (test_layers,
test_conformance): training and evaluation modes, running statistics, ties, errors."""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet import random
from corenet.errors import DTypeError, ShapeError
from corenet.testing import finite_difference_gradient, relative_error
from corenet.train import evaluate, fit

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")


# -- maxout ---------------------------------------------------------------------------

def numpy_maxout_backward(layer, x, grad):
    """(dx, dW, db) routing each output's gradient to its first largest piece."""
    pieces = np.einsum("ni,oki->nok", x, layer.weight.value) + layer.bias.value
    chosen = pieces.argmax(axis=2)  # the first of equal maxima
    routed = grad[:, :, None] * (np.arange(layer.pieces) == chosen[:, :, None])
    return (np.einsum("nok,oki->ni", routed, layer.weight.value),
            np.einsum("nok,ni->oki", routed, x), routed.sum(axis=0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxout_backward_matches_numpy(dtype, rng):
    layer = L.Maxout(7, 4, pieces=3, dtype=dtype)
    x = rng.standard_normal((10, 7)).astype(dtype)
    grad = rng.standard_normal((10, 4)).astype(dtype)
    layer.forward(x)
    x_grad = layer.backward(grad)
    expected = numpy_maxout_backward(layer, x.astype(np.float64), grad.astype(np.float64))
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    for ours, theirs in zip((x_grad, layer.weight.grad, layer.bias.grad), expected):
        np.testing.assert_allclose(ours, theirs, **tolerance)


def test_maxout_ties_go_to_the_first_piece_and_nan_propagates():
    layer = L.Maxout(2, 1, pieces=3, bias=False, dtype="float64")
    layer.weight.value[...] = [[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]
    # sample 0: all three pieces tie at 2; sample 1: piece 1 wins
    out = layer.forward(np.array([[2.0, 2.0], [1.0, 3.0]]))
    np.testing.assert_array_equal(out, [[2.0], [3.0]])
    layer.backward(np.array([[1.0], [10.0]]))
    # dW[0, k] = Σ_n grad·x over the samples where piece k won
    np.testing.assert_array_equal(layer.weight.grad[0], [[2.0, 2.0], [10.0, 30.0], [0.0, 0.0]])
    assert np.isnan(layer.forward(np.array([[np.nan, 0.0]]))[0, 0])  # pieces 0, 2 are NaN
    layer.weight.value[0, 0] = [-1.0, 0.0]  # pieces inf, NaN, -inf: the NaN still wins
    assert np.isnan(layer.forward(np.array([[-np.inf, 0.0]]))[0, 0])


def test_maxout_layout_and_errors():
    layer = L.Maxout(5, 3, pieces=2)
    assert [(p.name, p.value.shape) for p in layer.parameters()] == [("weight", (3, 2, 5)),
                                                                     ("bias", (3, 2))]
    with pytest.raises(ShapeError, match=r"maxout: expected 5 features .* got shape \(4, 6\)"):
        layer.forward(np.ones((4, 6), np.float32))
    with pytest.raises(ShapeError, match=r"maxout: expected per-sample shape \(5,\), got \(6,\)"):
        cn.Sequential(L.Linear(2, 6), L.Maxout(5, 3, 2))
    with pytest.raises(ValueError, match="maxout: pieces must be a positive integer, got 0"):
        L.Maxout(5, 3, pieces=0)


# -- dropout --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_drops_p_and_scales_the_rest_in_training(p, dtype, rng):
    layer = L.Dropout(p)
    x = rng.uniform(0.5, 1.5, (1000, 1000)).astype(dtype)  # never 0 itself
    out = layer.forward(x)
    kept = out != 0
    # 10⁶ Bernoulli draws: the dropped fraction is within 5 standard deviations of p.
    assert abs((1 - kept.mean()) - p) < 5 * np.sqrt(p * (1 - p) / x.size)
    np.testing.assert_array_equal(out[kept], x[kept] * dtype(1 / (1 - p)))
    grad = rng.standard_normal(x.shape).astype(dtype)
    x_grad = layer.backward(grad)  # the same mask, the same scale
    np.testing.assert_array_equal(x_grad[kept], grad[kept] * dtype(1 / (1 - p)))
    assert not np.any(x_grad[~kept])
    # Neighbouring elements are independent: the mask has no stripes.
    assert abs(np.mean(kept[:, 1:] & kept[:, :-1]) - (1 - p) ** 2) < 0.005


def test_dropout_is_the_identity_in_evaluation_and_with_p_zero(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    for layer in (L.Dropout(0.5).eval(), L.Dropout(0.0)):
        assert layer.forward(x) is x
        grad = np.ones_like(x)
        assert layer.backward(grad) is grad


def test_dropout_masks_repeat_with_the_seed_and_change_between_forwards(rng):
    x = rng.uniform(1, 2, (64, 64)).astype(np.float32)
    layer = L.Dropout(0.5)
    random.seed(5)
    first, second = layer.forward(x).copy(), layer.forward(x).copy()
    random.seed(5)
    np.testing.assert_array_equal(layer.forward(x), first)
    assert not np.array_equal(first != 0, second != 0)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "0.5", True, None, float("nan")])
def test_dropout_p_is_checked(p):
    with pytest.raises(ValueError, match=r"dropout: p must be a number in \[0, 1\), got"):
        L.Dropout(p)


def test_dropout_errors_name_the_layer():
    with pytest.raises(DTypeError, match="dropout: expected a float32 or float64 input"):
        L.Dropout().forward(np.ones((2, 3), np.int32))
    layer = L.Dropout()
    layer.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ShapeError,
                       match=r"dropout.backward: expected a gradient of shape \(2, 3\)"):
        layer.backward(np.ones((3, 2), np.float32))


# -- modes in a model and in the training loop ----------------------------------------

def small_classifier():
    return cn.Sequential(L.Linear(8, 16), L.BatchNorm1d(16), L.ReLU(), L.Dropout(0.5),
                         L.Linear(16, 3))


def test_fit_trains_in_training_mode_and_evaluate_in_evaluation_mode(rng):
    X = rng.standard_normal((40, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    loss = cn.losses.SoftmaxCrossEntropy()

    def trained():
        random.seed(0)
        model = small_classifier().eval()
        fit(model, loss, cn.optim.SGD(model.parameters(), lr=0.1), X, y, epochs=2,
            batch_size=8)
        return model

    model = trained()
    assert all(layer.training for layer in model.layers)  # fit switched every layer
    batch_norm = model.layers[1]
    assert int(batch_norm.num_batches_tracked.value) == 10  # 5 batches × 2 epochs
    # The run repeats exactly: weights, running statistics and masks from one seed.
    again = trained()
    for ours, theirs in zip(model.layers, again.layers):
        for a, b in zip(ours.parameters() + ours.state_buffers(),
                        theirs.parameters() + theirs.state_buffers()):
            np.testing.assert_array_equal(a.value, b.value)
    # evaluate: no dropout, running statistics, modes restored afterwards.
    result = evaluate(model, loss, X, y)
    assert evaluate(model, loss, X, y) == result
    manual = model.eval().forward(X)
    model.train()
    np.testing.assert_array_equal(model.predict(X), manual)
    assert all(layer.training for layer in model.layers)
    assert int(batch_norm.num_batches_tracked.value) == 10  # evaluation moved nothing


FIT_DATA = np.ones((10, 8), np.float32), np.zeros(10, np.int64)


@pytest.mark.parametrize("change, error, message", [
    # Before: a ZeroDivisionError, an IndexError, a longer y ignored silently, TypeErrors
    # from range() and '<', and start_epoch=-2 trained 3 epochs where 1 was asked.
    ({"X": FIT_DATA[0][:0], "y": FIT_DATA[1][:0]}, ShapeError,
     r"fit: expected a non-empty X, one sample per row, got shape \(0, 8\)"),
    ({"y": FIT_DATA[1][:5]}, ShapeError,
     r"fit: expected one target per sample of X \(10\) in y, got shape \(5,\)"),
    ({"y": np.zeros(20, np.int64)}, ShapeError, r"got shape \(20,\)"),
    ({"batch_size": "4"}, ValueError, "fit: batch_size must be an integer, got '4'"),
    ({"batch_size": None}, ValueError, "fit: batch_size must be an integer, got None"),
    ({"batch_size": 2.5}, ValueError, "fit: batch_size must be an integer, got 2.5"),
    ({"epochs": 2.0}, ValueError, "fit: epochs must be an integer, got 2.0"),
    ({"start_epoch": -2}, ValueError, "fit: start_epoch must be at least 0, got -2"),
    ({"start_epoch": 2}, ValueError, "fit: start_epoch must be at most 1, got 2"),
    ({"seed": "a"}, ValueError, "fit: seed must be an integer, got 'a'"),
])
def test_fit_refuses_bad_arguments_naming_them(change, error, message):
    model = small_classifier()
    arguments = {"X": FIT_DATA[0], "y": FIT_DATA[1], "epochs": 1, **change}
    with pytest.raises(error, match=message):
        fit(model, cn.losses.SoftmaxCrossEntropy(), cn.optim.SGD(model.parameters()),
            **arguments)


def test_fit_and_evaluate_take_lists():
    model = small_classifier()
    X, y = FIT_DATA[0].tolist(), FIT_DATA[1].tolist()  # a TypeError from X[index] before
    loss = cn.losses.SoftmaxCrossEntropy()
    assert len(fit(model, loss, cn.optim.SGD(model.parameters()), X, y, epochs=2)) == 2
    assert evaluate(model, loss, X, y) == evaluate(model, loss, *FIT_DATA)


@pytest.mark.parametrize("loss, y, message", [
    # Before: numpy's broadcast error from the accuracy, after the loss was computed.
    (cn.losses.MSE(), np.zeros((10, 3), np.float32),
     r"evaluate: expected y of class labels, shape \(10,\), got \(10, 3\)"),
    (cn.losses.SoftmaxCrossEntropy(), FIT_DATA[1][:5],
     r"evaluate: expected one target per sample of X \(10\) in y, got shape \(5,\)"),
])
def test_evaluate_refuses_targets_that_are_not_one_label_per_sample(loss, y, message):
    with pytest.raises(ShapeError, match=message):
        evaluate(small_classifier(), loss, FIT_DATA[0], y)


# -- batch norm -----------------------------------------------------------------------

TORCH_BATCH_NORMS = {"batch_norm1d": "BatchNorm1d", "batch_norm2d": "BatchNorm2d"}


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, shape, config", [
    ("batch_norm1d", (16, 5), {}),
    ("batch_norm1d", (6, 5, 7), {"momentum": None}),
    ("batch_norm1d", (6, 5), {"affine": False, "momentum": 0.3}),
    ("batch_norm2d", (4, 3, 5, 6), {}),
    ("batch_norm2d", (4, 3, 5, 6), {"eps": 0.1, "momentum": None}),
    ("batch_norm2d", (2, 3, 4, 4), {"track_running_stats": False}),
])
def test_batch_norm_steps_match_pytorch(name, shape, config, dtype, rng):
    """Training steps, then evaluation: outputs, all gradients and running statistics."""
    layer = L.create(name, num_features=shape[1], dtype=dtype, **config)
    reference = getattr(torch.nn, TORCH_BATCH_NORMS[name])(shape[1], **config).to(
        torch.float32 if dtype == np.float32 else torch.float64)
    if layer.affine:
        for ours, theirs in ((layer.weight, reference.weight), (layer.bias, reference.bias)):
            ours.value[...] = rng.uniform(0.5, 1.5, shape[1])
            theirs.data = torch.tensor(ours.value)
    tolerance = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11,
                                                                           atol=1e-12)
    for step, training in enumerate([True, True, True, False, False]):
        layer.train(training)
        reference.train(training)
        layer.zero_grad()
        reference.zero_grad()
        # Inputs off zero mean and unit variance, so that normalising does something.
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        grad = rng.standard_normal(shape).astype(dtype)
        torch_x = torch.tensor(x, requires_grad=True)
        torch_out = reference(torch_x)
        torch_out.backward(torch.tensor(grad))
        np.testing.assert_allclose(layer.forward(x), torch_out.detach().numpy(), **tolerance)
        np.testing.assert_allclose(layer.backward(grad), torch_x.grad.numpy(), **tolerance)
        for parameter in layer.parameters():
            np.testing.assert_allclose(parameter.grad,
                                       getattr(reference, parameter.name).grad.numpy(),
                                       **tolerance)
        for buffer in layer.state_buffers():
            np.testing.assert_allclose(buffer.value,
                                       getattr(reference, buffer.name).numpy(), **tolerance)
    assert (layer.state_buffers() == []) == (not layer.track_running_stats)


def test_batch_norm_gradient_in_training_couples_the_batch(rng):
    """Finite differences over the whole batch of (N, C, L), float64, both modes."""
    layer = L.BatchNorm1d(3, dtype="float64")
    layer.weight.value[...] = [0.5, -1.5, 2.0]
    layer.bias.value[...] = [0.1, 0.2, -0.3]
    x = rng.standard_normal((4, 3, 2)) * 2 + 1
    weights = rng.standard_normal(x.shape)
    for training in (True, False):
        layer.train(training)
        layer.forward(x)
        x_grad = layer.backward(weights).copy()
        numeric = finite_difference_gradient(lambda: float(np.sum(layer.forward(x) * weights)),
                                             x)
        assert relative_error(x_grad, numeric) < 1e-8


def test_batch_norm_running_statistics_are_saved_and_loaded(tmp_path, rng):
    model = cn.Sequential(L.Conv2d(2, 3, 3, padding=1), L.BatchNorm2d(3), L.ReLU(),
                          L.Flatten(), L.Linear(48, 4), L.BatchNorm1d(4, momentum=None),
                          input_shape=(2, 4, 4))
    for _ in range(3):
        model.forward(rng.standard_normal((5, 2, 4, 4)).astype(np.float32) * 3 + 1)
    path = str(tmp_path / "bn.npz")
    cn.save(model, path)
    loaded = cn.load(path)
    for ours, theirs in zip(model.layers, loaded.layers):
        for a, b in zip(ours.state_buffers(), theirs.state_buffers()):
            assert a.name == b.name and a.value.dtype == b.value.dtype
            np.testing.assert_array_equal(a.value, b.value)
    assert int(loaded.layers[1].num_batches_tracked.value) == 3
    assert not np.all(loaded.layers[1].running_var.value == 1)  # they moved, and were kept
    x = rng.standard_normal((6, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), loaded.predict(x))
    as_float64 = loaded.astype("float64").layers[1]
    assert as_float64.running_mean.value.dtype == np.float64
    assert as_float64.num_batches_tracked.value.dtype == np.int64


@pytest.mark.parametrize("make, x, error, match", [
    (lambda: L.BatchNorm1d(4), np.ones((1, 4), np.float32), ShapeError,
     r"batch_norm1d: expected more than 1 value per channel in training, got shape \(1, 4\)"),
    (lambda: L.BatchNorm1d(4), np.ones((3, 5), np.float32), ShapeError,
     r"batch_norm1d: expected an input of shape \(N, C\) or \(N, C, L\) with C = 4, "
     r"got shape \(3, 5\)"),
    (lambda: L.BatchNorm2d(3), np.ones((2, 3, 4), np.float32), ShapeError,
     r"batch_norm2d: expected an input of shape \(N, C, H, W\) with C = 3, got shape \(2, 3, 4\)"),
    (lambda: L.BatchNorm2d(3), np.ones((2, 3, 4, 4), np.float64), DTypeError,
     "batch_norm2d: expected a float32 input"),
    (lambda: L.BatchNorm1d(4), np.ones((0, 4), np.float32), ShapeError,
     r"batch_norm1d: got an empty batch"),
    (lambda: L.LayerNorm((3, 4)), np.ones((2, 4, 3), np.float32), ShapeError,
     r"layer_norm: expected an input of shape \(N, ..., 3, 4\), normalized_shape last, "
     r"got shape \(2, 4, 3\)"),
    (lambda: L.LayerNorm((3, 4)), np.ones((3, 4), np.float32), ShapeError,
     r"layer_norm: expected an input of shape \(N, ..., 3, 4\).* got shape \(3, 4\)"),
])
def test_normalisation_errors_name_the_layer_and_shapes(make, x, error, match):
    with pytest.raises(error, match=match):
        make().forward(x)


def test_batch_norm_with_one_value_per_channel_works_in_evaluation():
    layer = L.BatchNorm1d(2).eval()
    layer.running_mean.value[...] = [1.0, 2.0]
    layer.running_var.value[...] = [4.0, 0.25]
    out = layer.forward(np.array([[3.0, 3.0]], np.float32))
    np.testing.assert_allclose(out, [[2 / np.sqrt(4 + 1e-5), 1 / np.sqrt(0.25 + 1e-5)]],
                               rtol=1e-6)


def test_batch_norm_checks_replaced_running_statistics():
    layer = L.BatchNorm1d(3).eval()
    layer.running_var.value = np.ones(4, np.float32)
    with pytest.raises(ShapeError, match=r"batch_norm1d: buffer 'running_var' must be a "
                                         r"writeable C-contiguous float32 array of shape \(3,\)"):
        layer.forward(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("make, match", [
    (lambda: L.BatchNorm1d(0), "batch_norm1d: num_features must be a positive integer, got 0"),
    (lambda: L.BatchNorm2d(3, eps=0), r"batch_norm2d: eps must be a number > 0, got 0"),
    (lambda: L.BatchNorm2d(3, momentum=1.5), r"momentum must be a number in \[0, 1\], got 1.5"),
    (lambda: L.BatchNorm1d(3, affine="yes"), "affine must be True or False, got 'yes'"),
    (lambda: L.LayerNorm(0), "layer_norm: normalized_shape must be a positive int"),
    (lambda: L.LayerNorm([]), "layer_norm: normalized_shape must be a positive int"),
    (lambda: L.LayerNorm(4, eps=-1.0), "layer_norm: eps must be a number > 0"),
])
def test_normalisation_configs_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- layer norm -----------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, config", [
    ((4, 7), {"normalized_shape": 7}),
    ((2, 3, 4, 5), {"normalized_shape": (4, 5), "eps": 1e-3}),
    ((3, 6), {"normalized_shape": 6, "bias": False}),
    ((3, 2, 6), {"normalized_shape": [6], "elementwise_affine": False}),
])
def test_layer_norm_matches_pytorch(shape, config, dtype, rng):
    layer = L.LayerNorm(**config, dtype=dtype)
    torch_config = dict(config, normalized_shape=layer.normalized_shape)
    reference = torch.nn.LayerNorm(**torch_config).to(
        torch.float32 if dtype == np.float32 else torch.float64)
    for parameter in layer.parameters():
        parameter.value[...] = rng.uniform(0.5, 1.5, parameter.value.shape)
        getattr(reference, parameter.name).data = torch.tensor(parameter.value)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    torch_x = torch.tensor(x, requires_grad=True)
    torch_out = reference(torch_x)
    torch_out.backward(torch.tensor(grad))
    tolerance = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11,
                                                                           atol=1e-12)
    np.testing.assert_allclose(layer.forward(x), torch_out.detach().numpy(), **tolerance)
    np.testing.assert_allclose(layer.backward(grad), torch_x.grad.numpy(), **tolerance)
    for parameter in layer.parameters():
        np.testing.assert_allclose(parameter.grad, getattr(reference, parameter.name).grad,
                                   **tolerance)
    assert len(layer.parameters()) == len(list(reference.parameters()))
