"""Losses: values against numpy, gradients against finite differences and PyTorch."""
import numpy as np
import pytest

import corenet
from corenet.errors import DTypeError, ShapeError
from corenet.losses import MSE, SoftmaxCrossEntropy
from corenet.testing import finite_difference_gradient, relative_error
from layer_table import builtin_names


def test_mse_is_half_squared_norm_averaged_over_batch(rng):
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss = MSE()
    assert loss.forward(pred, target) == pytest.approx(0.5 * ((pred - target) ** 2).sum() / 4)
    np.testing.assert_allclose(loss.backward(), (pred - target) / 4)


def test_softmax_cross_entropy_matches_numpy(rng):
    logits, labels = rng.standard_normal((5, 4)) * 4, np.array([0, 3, 1, 1, 2])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = SoftmaxCrossEntropy()
    assert loss.forward(logits, labels) == pytest.approx(-log_probs[np.arange(5), labels].mean())
    expected = np.exp(log_probs)
    expected[np.arange(5), labels] -= 1
    np.testing.assert_allclose(loss.backward(), expected / 5)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    loss = SoftmaxCrossEntropy()
    value = loss.forward(np.array([[1e4, 0.0], [0.0, -1e4]], np.float32), np.array([1, 0]))
    assert value == pytest.approx(5e3)
    assert np.all(np.isfinite(loss.backward()))


@pytest.mark.parametrize("loss, target", [
    (MSE(), np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.2]])),
    (SoftmaxCrossEntropy(), np.array([2, 0])),
])
def test_gradients_match_finite_differences(loss, target, rng):
    pred = rng.standard_normal((2, 3))
    loss.forward(pred, target)
    analytic = loss.backward().copy()
    numeric = finite_difference_gradient(lambda: loss.forward(pred, target), pred)
    assert relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_keep_the_prediction_dtype(dtype):
    for loss, target in ((MSE(), np.zeros((2, 3))), (SoftmaxCrossEntropy(), np.array([0, 1]))):
        loss.forward(np.zeros((2, 3), dtype), target)
        assert loss.backward().dtype == dtype


def test_loss_errors():
    with pytest.raises(DTypeError, match="softmax_cross_entropy: expected integer class labels"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from 0 to 3"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ShapeError, match="expected 2 labels"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ShapeError, match=r"mse: expected targets of the predictions' shape"):
        MSE().forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(DTypeError, match="mse: expected float32 or float64 predictions"):
        MSE().forward(np.zeros((2, 3), np.int64), np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="empty batch"):
        MSE().forward(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(RuntimeError, match="before forward"):
        MSE().backward()


def test_losses_are_reached_by_name():
    assert type(corenet.losses.create("mse")) is MSE
    assert builtin_names("losses") == {"mse", "softmax_cross_entropy"}


try:
    import torch
except ImportError:  # the tests that do not compare with PyTorch run without it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")


@needs_torch
def test_losses_match_pytorch(rng):
    pred = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    target = rng.standard_normal((6, 4))
    for loss, torch_loss, y, torch_y in (
        (SoftmaxCrossEntropy(), torch.nn.functional.cross_entropy, labels,
         torch.tensor(labels)),
        # PyTorch's mse_loss averages over every element; ours is ½‖o − y‖² per sample.
        (MSE(), lambda o, t: 0.5 * ((o - t) ** 2).sum() / len(o), target, torch.tensor(target)),
    ):
        torch_pred = torch.tensor(pred, requires_grad=True)
        expected = torch_loss(torch_pred, torch_y)
        expected.backward()
        assert loss.forward(pred, y) == pytest.approx(expected.item(), rel=1e-12)
        np.testing.assert_allclose(loss.backward(), torch_pred.grad.numpy(), rtol=1e-12)
