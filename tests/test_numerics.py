"""Activations, softmax and cross-entropy at extreme inputs, in float32 and float64.

References are computed in extended precision (np.longdouble), the derivatives
from formulas other than corenet's (cosh, not exp(−|x|)), and errors are counted in ulps of the layer's dtype at the
reference, so that subnormal results are held to their own spacing. Backward is
checked where the activations saturate: from the output alone, y(1 − y) or
1 − y² is 0 there (sigmoid past x = 17.3 in float32) while f'(x) is not.
"""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.losses import SoftmaxCrossEntropy

LONG = np.longdouble
DTYPES = [np.float32, np.float64]
# Past these |x| every exp involved underflows to 0 in the dtype.
REACH = {np.float32: 110.0, np.float64: 760.0}


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    if request.param == np.float64 and np.finfo(LONG).nmant <= np.finfo(np.float64).nmant:
        pytest.skip("np.longdouble is no wider than float64 here: no reference for float64")
    return request.param


def ulps(actual, reference, dtype):
    """|actual − reference| in units of the dtype's spacing at the reference
    (2^-149 or 2^-1074 where the reference rounds to a subnormal or 0)."""
    spacing = np.spacing(np.abs(reference.astype(dtype))).astype(LONG)
    return np.abs(actual.astype(LONG) - reference) / spacing


def sweep(dtype):
    """Both tails to where the results underflow, the points of issue #7, tiny inputs."""
    reach = REACH[dtype]
    return np.concatenate([np.linspace(-reach, reach, 200_001), np.linspace(-1e-3, 1e-3, 2001),
                           [16.6, -16.6, 8.75, -8.75, 17.5, 36.8, 88.7, -88.7, 1e-30, -1e-30]]
                          ).astype(dtype)


def sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(LONG)))


# name -> (config, f, f') in extended precision; f' not written as f's own formula.
ACTIVATIONS = {
    "sigmoid": ({}, sigmoid, lambda x: (1 / (2 * np.cosh(x.astype(LONG) / 2))) ** 2),
    "tanh": ({}, lambda x: np.tanh(x.astype(LONG)), lambda x: (1 / np.cosh(x.astype(LONG))) ** 2),
    "elu": ({"alpha": 0.7},
            lambda x: np.where(x > 0, x.astype(LONG), LONG(0.7) * np.expm1(x.astype(LONG))),
            lambda x: np.where(x > 0, LONG(1), LONG(0.7) * np.exp(x.astype(LONG)))),
}


def run(name, x, config=None):
    """The layer's output and its input gradient for an upstream gradient of ones."""
    layer = L.create(name, **(ACTIVATIONS[name][0] if config is None else config))
    out = layer.forward(x[None]).copy()[0]
    return out, layer.backward(np.ones((1, x.size), x.dtype))[0]


def test_sigmoid_is_within_a_few_ulps_down_through_the_subnormals(dtype):
    # float32 gave 6.05e-39 for every x below -88 (its exp stopped at e^88), where
    # the true values fall through the subnormals to 0 at x = -103.98.
    x = sweep(dtype)
    out, _ = run("sigmoid", x)
    assert ulps(out, sigmoid(x), dtype).max() <= 4
    deep = x < (-104 if dtype == np.float32 else -745.2)
    assert deep.any() and (out[deep] == 0).all()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivatives_stay_within_a_few_ulps_where_the_activation_saturates(name, dtype):
    # From the output, sigmoid'(16.6) was 1.19e-7 in float32 for 6.18e-8, tanh'(8.75)
    # 2.4e-7 for 1.0e-7, and 0 past sigmoid(x) = 1; elu' = y + alpha the same.
    x = sweep(dtype)
    _, derivative = run(name, x)
    assert ulps(derivative, ACTIVATIONS[name][2](x), dtype).max() <= 6


@pytest.mark.parametrize("name, points", [("sigmoid", [16.6, 20.0, 40.0]),
                                          ("tanh", [8.75, 10.0, 20.0])])
def test_the_saturated_derivatives_of_issue_7(name, points, dtype):
    # In float32 sigmoid'(16.6) = 6.2e-8 was 1.19e-7 and tanh'(8.75) = 1.0e-7 was
    # 2.4e-7 here (7.2e-7 in the issue); the others were 0. float64 was off by 4e-10 at 16.6.
    x = np.array(points, dtype)
    _, derivative = run(name, x)
    np.testing.assert_allclose(derivative, ACTIVATIONS[name][2](x).astype(dtype),
                               rtol=8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("name, config, limits, slopes", [
    ("sigmoid", {}, (0.0, 1.0), (0.0, 0.0)),
    ("tanh", {}, (-1.0, 1.0), (0.0, 0.0)),
    ("elu", {"alpha": 0.7}, (-0.7, np.inf), (0.0, 1.0)),
    ("relu", {}, (0.0, np.inf), (0.0, 1.0)),
    ("leaky_relu", {"negative_slope": 0.1}, (-np.inf, np.inf), (0.1, 1.0)),
])
def test_infinities_map_to_the_limits_and_nan_propagates(name, config, limits, slopes, dtype):
    out, derivative = run(name, np.array([-np.inf, np.inf, np.nan], dtype), config)
    np.testing.assert_array_equal(out[:2], np.array(limits, dtype))
    np.testing.assert_array_equal(derivative[:2], np.array(slopes, dtype))
    assert np.isnan(out[2])
    if name in ACTIVATIONS:  # f'(NaN) is NaN; relu and leaky_relu take a branch, as PyTorch
        assert np.isnan(derivative[2])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_large_finite_inputs_give_the_limits_exactly(name, dtype):
    x = np.array([-1e4, 1e4, -88.7, 88.7], dtype)
    out, derivative = run(name, x)
    _, f, f_prime = ACTIVATIONS[name]
    np.testing.assert_array_equal(out[:2], f(x[:2]).astype(dtype))
    np.testing.assert_array_equal(derivative[:2], f_prime(x[:2]).astype(dtype))
    assert ulps(out, f(x), dtype).max() <= 4 and ulps(derivative, f_prime(x), dtype).max() <= 6


SATURATED = [16.6, 20.0, 8.75, -30.0, 12.0, -9.5]


def test_linear_then_sigmoid_in_a_model_keeps_the_saturated_gradients(dtype):
    # Fused, the pair once took sigmoid' from the GEMM's output; now it runs unfused.
    linear = L.Linear(1, len(SATURATED), dtype=dtype.__name__)
    linear.weight.value[:, 0] = SATURATED
    linear.bias.value[:] = 0
    model = cn.Sequential(linear, L.Sigmoid(), requires_input_grad=True)
    model.forward(np.ones((1, 1), dtype))  # pre-activations: SATURATED exactly
    x_grad = model.backward(np.ones((1, len(SATURATED)), dtype))
    expected = ACTIVATIONS["sigmoid"][2](np.array(SATURATED, dtype))
    assert ulps(linear.bias.grad, expected, dtype).max() <= 6
    assert ulps(linear.weight.grad[:, 0], expected, dtype).max() <= 6
    reference_x_grad = np.sum(expected * np.array(SATURATED, dtype).astype(LONG))
    np.testing.assert_allclose(x_grad[0, 0], float(reference_x_grad), rtol=1e-5)


def test_conv_then_tanh_in_a_model_keeps_the_saturated_gradients(dtype):
    conv = L.Conv2d(1, 1, 1, dtype=dtype.__name__)  # weight 1, bias 0: the identity
    conv.weight.value[...] = 1
    conv.bias.value[...] = 0
    model = cn.Sequential(conv, L.Tanh(), input_shape=(1, 2, 3), requires_input_grad=True)
    x = np.array(SATURATED, dtype).reshape(1, 1, 2, 3) / 2
    model.forward(x)
    x_grad = model.backward(np.ones_like(x))
    assert ulps(x_grad.ravel(), ACTIVATIONS["tanh"][2](x.ravel()), dtype).max() <= 6


def softmax_reference(rows):
    rows = rows.astype(LONG)
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


EXTREME_ROWS = [[1e4, -1e4, 0.0], [88.7, -88.7, 0.0], [-1e4, -1e4 + 1, -1e4 + 2],
                [88.7, 87.0, -20.0], [-88.7, -100.0, -104.0]]


def conditioned(rows):
    """Ulps allowed for exp(x − max) and what is made of it: e^a amplifies an error
    of a's last bit, made in x − max, by |a|."""
    return 4 + np.abs(rows - rows.max(axis=-1, keepdims=True))


def test_softmax_at_extreme_finite_inputs(dtype):
    rows = np.array(EXTREME_ROWS, dtype)
    errors = ulps(L.Softmax().forward(rows), softmax_reference(rows), dtype)
    assert (errors <= conditioned(rows)).all()


# Rows whose largest entry takes all but e^-16 ... e^-40 of the mass: its softmax
# rounds to 1 in float32 (float64 from a margin of 37).
SATURATED_ROWS = [[16.6, 0.0, -3.0], [0.0, 20.0, -1.0], [-5.0, -2.0, 38.0], [40.0, -30.0, 0.0]]


@pytest.mark.parametrize("upstream", ["largest", "smallest"])
def test_softmax_backward_keeps_the_gradient_of_saturated_rows(upstream, dtype):
    # With the upstream gradient on one entry, dx is p_t (1 − p_t) or −p_t p_j: no
    # cancellation in the true value, so each entry is held to a few ulps. From
    # y ⊙ (g − ⟨g, y⟩) the first was 0 once p_t rounded to 1.
    rows = np.array(SATURATED_ROWS, dtype)
    grad = np.zeros_like(rows)
    pick = rows.argmax if upstream == "largest" else rows.argmin
    grad[np.arange(len(rows)), pick(axis=1)] = 1
    layer = L.Softmax()
    layer.forward(rows)
    p = softmax_reference(rows)
    # g_i − ⟨g, p⟩ = Σ_j p_j (g_i − g_j): no cancellation, in extended precision too
    differences = grad.astype(LONG)[:, :, None] - grad.astype(LONG)[:, None, :]
    expected = p * np.sum(p[:, None, :] * differences, axis=2)
    assert ulps(layer.backward(grad), expected, dtype).max() <= 6


def test_softmax_takes_the_limit_for_infinite_inputs_and_propagates_nan(dtype):
    inf, nan = np.inf, np.nan
    rows = np.array([[inf, 0, 1], [inf, inf, 0], [-inf, 0, 1], [-inf, -inf, -inf],
                     [nan, 0, 1], [0, nan, inf]], dtype)
    out = L.Softmax().forward(rows)
    finite = softmax_reference(rows[2:3, 1:]).astype(dtype)[0]
    np.testing.assert_array_equal(out[:4], np.array(
        [[1, 0, 0], [0.5, 0.5, 0], [0, *finite], [1 / 3] * 3], dtype))
    assert np.isnan(out[4:]).all()


def cross_entropy_reference(logits, label):
    """Loss and gradient in extended precision: −log p = (max − o) + log1p(the others'
    mass relative to the max's), and 1 − p as the sum of the others' p."""
    p = softmax_reference(logits[None])[0]
    grad = p.copy()
    grad[label] = -np.sum(np.delete(p, label))
    logits = logits.astype(LONG)
    top = logits.argmax()
    others = np.sum(np.exp(np.delete(logits, top) - logits[top]))
    return logits[top] - logits[label] + np.log1p(others), grad


@pytest.mark.parametrize("label", [0, 1, 2])
def test_cross_entropy_at_extreme_finite_logits(label, dtype):
    loss = SoftmaxCrossEntropy()
    for row in np.array(EXTREME_ROWS, dtype):
        value = loss.forward(row[None], [label])
        grad = loss.backward()[0]
        expected_value, expected_grad = cross_entropy_reference(row, label)
        np.testing.assert_allclose(value, float(expected_value), rtol=1e-14)
        assert (ulps(grad, expected_grad, dtype) <= conditioned(row)).all()


def test_cross_entropy_of_a_confident_right_answer_keeps_its_small_loss_and_gradient(dtype):
    # 1 − p for the true class, e^-16.6 ... e^-40: it was 0 once p rounded to 1.
    loss = SoftmaxCrossEntropy()
    for row in np.array(SATURATED_ROWS, dtype):
        label = int(row.argmax())
        value = loss.forward(row[None], [label])
        expected_value, expected_grad = cross_entropy_reference(row, label)
        np.testing.assert_allclose(value, float(expected_value), rtol=1e-14)
        assert (ulps(loss.backward()[0], expected_grad, dtype) <= conditioned(row)).all()


def test_cross_entropy_takes_the_limit_for_infinite_logits_and_propagates_nan(dtype):
    loss = SoftmaxCrossEntropy()
    inf = np.inf
    # (logits, label, loss, gradient)
    for logits, label, value, grad in [
            ([inf, 0, 1], 0, 0.0, [0, 0, 0]),  # certain and right
            ([inf, 0, 1], 2, inf, [1, 0, -1]),  # certain and wrong
            ([-inf, 0, 0], 0, inf, [-1, 0.5, 0.5]),  # impossible
            ([inf, inf, 0], 1, np.log(2), [0.5, -0.5, 0])]:  # a tie of certainties
        assert loss.forward(np.array([logits], dtype), [label]) == pytest.approx(value)
        np.testing.assert_allclose(loss.backward()[0], np.array(grad, dtype), rtol=1e-7)
    assert np.isnan(loss.forward(np.array([[0, np.nan, 1]], dtype), [0]))
    assert np.isnan(loss.backward()).all()
