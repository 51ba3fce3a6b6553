"""Activations, softmax and cross-entropy at extreme inputs, in float32 and float64.

References are computed in extended precision (np.longdouble), and errors are
counted in ulps of the layer's dtype at the reference, so that subnormal results
are held to their own spacing.

sigmoid', tanh' and elu' are taken from the output y, as PyTorch does and as a
GEMM that runs the activation in its epilogue must (it keeps only y):
y(1 − y), 1 − y² and y + alpha. They are tested for what that gives: the
formula on the rounded y, an absolute error of about one ε (so a relative error
that grows as f' shrinks), bitwise the same fused or not and as PyTorch's, and
exactly 0 from where y rounds to ±1 or −alpha (SATURATION, the README's figures).
"""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.kernels.gemm import fused_multiply_add
from corenet.losses import SoftmaxCrossEntropy

try:
    import torch
except ImportError:  # only the comparisons with PyTorch need it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")


def skip_tanh_without_fma(name):
    # PyTorch's 1 − y² rounds once (its kernels use FMA); a corenet built without FMA
    # takes (1 − y)(1 + y), which rounds differently: within 2 ulps, tested above.
    if name == "tanh" and not fused_multiply_add():
        pytest.skip("built without FMA: tanh' is not PyTorch's bitwise")

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


ALPHA = 0.7


def as_long(x):
    return x.astype(LONG)


# name -> (config, f, f' as a function of (x, y) the way the layers take it,
# the true f' written other than as f's own formula), all in extended precision.
ACTIVATIONS = {
    # 1 − y and 1 + y are exact in extended precision, where 1 − y·y would cancel
    "sigmoid": ({}, sigmoid, lambda x, y: as_long(y) * (1 - as_long(y)),
                lambda x: (1 / (2 * np.cosh(as_long(x) / 2))) ** 2),
    "tanh": ({}, lambda x: np.tanh(as_long(x)), lambda x, y: (1 - as_long(y)) * (1 + as_long(y)),
             lambda x: (1 / np.cosh(as_long(x))) ** 2),
    "elu": ({"alpha": ALPHA},
            lambda x: np.where(x > 0, as_long(x), LONG(ALPHA) * np.expm1(as_long(x))),
            # alpha as the layer holds it, in its dtype
            lambda x, y: np.where(x > 0, LONG(1), as_long(y) + LONG(y.dtype.type(ALPHA))),
            lambda x: np.where(x > 0, LONG(1), LONG(ALPHA) * np.exp(as_long(x)))),
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


def test_float32_tanh_rounds_near_correctly_where_it_saturates():
    # From |x| = 3 tanh is 1 − 2e/(1 + e), e = e^-2|x|: within 0.51 ulp, so that
    # 1 − y² is as good as y can make it and y reaches 1 where the true tanh
    # rounds to 1. The rational fit below 3 is within 4.3 ulps; over [3, 9] it
    # was 5.5 and reached 1 from x = 8.0009 on and off (tanh' 0 there).
    x = np.concatenate([np.linspace(-12, 12, 240_001), [8.0009, 8.75, -8.75]]).astype(np.float32)
    out, _ = run("tanh", x)
    errors = ulps(out, np.tanh(as_long(x)), np.float32)
    assert errors.max() <= 4.5
    assert errors[np.abs(x) >= 3].max() <= 0.52
    order = np.argsort(x)
    rising = out[order][x[order] >= 3]
    assert (np.diff(rising) >= 0).all()  # no flicker between 1 and below


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_the_derivative_is_the_output_formula_on_the_rounded_output(name, dtype):
    x = sweep(dtype)
    out, derivative = run(name, x)
    assert ulps(derivative, ACTIVATIONS[name][2](x, out), dtype).max() <= 2


# Bound on |f'(y) − f'(x)| in units of ε (2^-23, 2^-52): y's own error, about an
# ulp of 1 where f saturates, passes to 1 − y or 1 ∓ y whole. float32 tanh's is
# its rational fit's 4 ulps near |x| = 2.8.
ABSOLUTE_ERROR = {("sigmoid", np.float32): 1, ("tanh", np.float32): 4, ("elu", np.float32): 1,
                  ("sigmoid", np.float64): 1, ("tanh", np.float64): 2, ("elu", np.float64): 1}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_the_derivative_is_within_an_epsilon_or_so_of_the_true_one(name, dtype):
    # So its relative error is about ε / f'(x): it grows as f' shrinks (README, Numerics).
    x = sweep(dtype)
    _, derivative = run(name, x)
    error = np.abs(derivative.astype(LONG) - ACTIVATIONS[name][3](x)) / np.finfo(dtype).eps
    assert error.max() <= ABSOLUTE_ERROR[name, dtype]


def test_sigmoid_derivative_keeps_its_precision_where_sigmoid_tends_to_zero(dtype):
    # y(1 − y) does not cancel there: σ'(x) within a few ulps, subnormals included.
    x = sweep(dtype)
    x = x[x <= 0]
    _, derivative = run("sigmoid", x)
    assert ulps(derivative, ACTIVATIONS["sigmoid"][3](x), dtype).max() <= 4


# (name, dtype) -> where f' first is exactly 0: y rounds to 1 (sigmoid, tanh; −1
# for tanh at −x) or to −alpha (elu), as the README states to 6 digits. Measured.
SATURATION = {("sigmoid", np.float32): 16.6355, ("tanh", np.float32): 9.01091,
              ("elu", np.float32): -16.9821, ("sigmoid", np.float64): 36.7368,
              ("tanh", np.float64): 19.0615, ("elu", np.float64): -37.4299}


@pytest.mark.parametrize("name, side, config", [
    ("sigmoid", 1, {}), ("tanh", 1, {}), ("tanh", -1, {}), ("elu", 1, {"alpha": ALPHA}),
    ("elu", 1, {"alpha": 1.0})])
def test_the_derivative_is_zero_exactly_from_the_saturation_point_and_not_before(name, side,
                                                                                 config, dtype):
    # In magnitudes |x|, on the side where the activation saturates.
    sign = side * np.sign(SATURATION[name, dtype])
    threshold = abs(SATURATION[name, dtype])
    window = 1e-5 * threshold  # the 6 digits of the figure
    before = np.linspace(0, threshold - window, 100_001)
    beyond = np.linspace(threshold + window, REACH[dtype], 100_001)
    if dtype == np.float32:  # every float32 in the window
        bits = np.array([threshold - window, threshold + window], np.float32).view(np.int32)
        inside = np.arange(bits[0], bits[1] + 1, dtype=np.int32).view(np.float32)
    else:
        inside = np.linspace(threshold - window, threshold + window, 100_001)

    def derivative(magnitudes):
        return run(name, (sign * magnitudes).astype(dtype), config)[1]

    assert (derivative(before) != 0).all()
    assert (derivative(beyond) == 0).all()
    zero = derivative(inside) == 0  # one switch in the window: once 0, 0 on
    first = int(np.argmax(zero))
    assert zero.any() and not zero[:first].any() and zero[first:].all()


# Pre-activations across the saturation points of both dtypes, and ordinary ones.
SATURATED = [16.6, 16.64, 17.5, 20.0, 36.8, 40.0, 8.0, 8.75, 9.0, 9.5, 19.1, 0.5, 3.0,
             -0.5, -3.0, -8.75, -16.6, -17.5, -30.0, -37.5, -88.7, -104.0]


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_fused_and_unfused_are_bitwise_equal_where_the_activation_saturates(kind, name, dtype,
                                                                           rng):
    activation = L.create(name, **ACTIVATIONS[name][0])
    points = np.array(SATURATED, dtype)
    if kind == "linear":  # pre-activations: the weights times 1, 2 and 0.5, exactly
        layer = L.Linear(1, points.size, dtype=dtype.__name__)
        layer.weight.value[:, 0] = points
        x = np.array([[1.0], [2.0], [0.5]], dtype)
        model = cn.Sequential(layer, activation, requires_input_grad=True)
    else:  # a 1×1 convolution with weight 1: the identity
        layer = L.Conv2d(1, 1, 1, dtype=dtype.__name__)
        layer.weight.value[...] = 1
        x = points.reshape(1, 1, 2, -1)
        model = cn.Sequential(layer, activation, input_shape=x.shape[1:],
                              requires_input_grad=True)
    layer.bias.value[...] = 0
    assert model._plan[0][3] is activation  # the executor fused the pair
    grad = rng.standard_normal(model.forward(x).shape).astype(dtype)
    fused_out = model.forward(x).copy()
    fused_x_grad = model.backward(grad).copy()
    fused_grads = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()
    out = activation.forward(layer.forward(x)).copy()  # alone, each layer runs unfused
    activation_grad = activation.backward(grad)
    x_grad = layer.backward(activation_grad)
    np.testing.assert_array_equal(fused_out, out)
    np.testing.assert_array_equal(fused_x_grad, x_grad)
    for fused, plain in zip(fused_grads, layer.parameters()):
        np.testing.assert_array_equal(fused, plain.grad)
    # The points reach both sides of the saturation.
    assert (activation_grad == 0).any() and (activation_grad != 0).any()


def torch_activation(name, x):
    """PyTorch's output and input gradient (upstream ones). elu runs in place, the
    form in which PyTorch takes elu' from the output (out of place it takes x)."""
    leaf = torch.tensor(x, requires_grad=True)
    if name == "elu":
        out = torch.nn.functional.elu(leaf * 1, alpha=ALPHA, inplace=True)
    else:
        out = getattr(torch, name)(leaf)
    out.backward(torch.ones_like(out))
    return out.detach().numpy(), leaf.grad.numpy()


@needs_torch
@pytest.mark.parametrize("name, points", [("sigmoid", [16.6, 17.5, 20.0, 40.0]),
                                          ("tanh", [8.0, 8.75, 9.5, 20.0, -8.75]),
                                          ("elu", [-16.6, -17.5, -20.0, -40.0])])
def test_the_saturated_derivatives_are_pytorchs(name, points, dtype):
    # Issue #7: sigmoid'(16.6) and tanh'(8.75). In float32 both give 1.19e-7 for
    # 6.2e-8 and 1.0e-7 (y is 1 − 2^-23 and 1 − 2^-24), 0 from 17.5 and 9.5.
    skip_tanh_without_fma(name)
    x = np.array(points, dtype)
    out, derivative = run(name, x)
    torch_out, torch_derivative = torch_activation(name, x)
    np.testing.assert_array_equal(out, torch_out)
    np.testing.assert_array_equal(derivative, torch_derivative)


@needs_torch
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_the_derivative_is_pytorchs_wherever_the_output_is(name, dtype):
    skip_tanh_without_fma(name)
    x = sweep(dtype)
    out, derivative = run(name, x)
    torch_out, torch_derivative = torch_activation(name, x)
    same = out == torch_out
    # Where f' loses precision the outputs are mostly equal: the test compares there.
    threshold = SATURATION[name, dtype]
    losing = (np.abs(x) >= abs(threshold) / 2) & (np.abs(x) < abs(threshold)) & (x * threshold > 0)
    assert same[losing].mean() > 0.9
    np.testing.assert_array_equal(derivative[same], torch_derivative[same])


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
    _, f, _, f_prime = ACTIVATIONS[name]
    np.testing.assert_array_equal(out[:2], f(x[:2]).astype(dtype))
    np.testing.assert_array_equal(derivative[:2], f_prime(x[:2]).astype(dtype))
    assert ulps(out, f(x), dtype).max() <= 4


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


# -- float32 sums over many values -----------------------------------------------------
# Each was a float32 running sum whose error grew with the count (1e-3 to 6e-3 at these
# sizes); they now sum in double, as batch norm and cross-entropy do.

def test_prelu_slope_gradient_over_a_large_batch_is_summed_in_double(rng):
    x = -np.abs(rng.standard_normal((16, 4, 128, 128))).astype(np.float32)
    grad = np.full(x.shape, 0.1, np.float32)
    for layer, axes in ((L.PReLU(), None), (L.PReLU(num_parameters=4), (0, 2, 3))):
        layer.forward(x)
        layer.backward(grad)
        exact = (grad.astype(np.float64) * x).sum(axis=axes)
        np.testing.assert_allclose(layer.weight.grad, np.reshape(exact, layer.weight.grad.shape),
                                   rtol=1e-6)


def test_global_average_of_a_large_float32_plane():
    x = np.full((1, 2, 1024, 1024), 1.1, np.float32)
    np.testing.assert_allclose(L.GlobalAvgPool().forward(x), np.float32(1.1), rtol=2e-7)


def test_softmax_over_a_row_of_a_million(rng):
    x = np.zeros((1, 1 << 20), np.float32)
    x[0, 7] = 0.5
    x[0, 1000:2000] = rng.standard_normal(1000)
    exact = np.exp(x.astype(np.float64) - 0.5)
    exact /= exact.sum()
    layer = L.Softmax()
    np.testing.assert_allclose(layer.forward(x), exact, rtol=1e-6)
    grad = rng.standard_normal(x.shape).astype(np.float32)
    exact_grad = exact * (grad - (exact * grad).sum())
    np.testing.assert_allclose(layer.backward(grad), exact_grad, rtol=1e-5, atol=1e-12)


def test_clip_grad_norm_of_a_norm_past_float32_range():
    # The norm (6e40) is right in double; a float32 factor max_norm / norm was 0.
    parameter = cn.Parameter("w", np.zeros(40000, np.float32))
    parameter.grad[...] = 3e38
    assert cn.optim.clip_grad_norm([parameter], 1e-6) == pytest.approx(6e40, rel=1e-6)
    np.testing.assert_allclose(np.linalg.norm(parameter.grad.astype(np.float64)), 1e-6,
                               rtol=1e-5)


@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_linear_bias_gradient_over_a_large_batch_is_summed_in_double(activation, rng):
    layers = [L.Linear(4, 300)] + ([L.create(activation)] if activation else [])
    model = cn.Sequential(*layers, input_shape=(4,))  # fused with Linear when given
    x = rng.standard_normal((1 << 16, 4)).astype(np.float32)
    out = model.forward(x)
    grad = np.full(out.shape, 0.1, np.float32) + rng.uniform(0, 1e-3, out.shape).astype(
        np.float32)
    model.zero_grad()
    model.backward(grad)
    pre = grad.astype(np.float64)
    if activation == "relu":
        pre = pre * (out > 0)
    elif activation == "tanh":
        pre = (grad * (1 - out * out)).astype(np.float64)  # f' from the output, in float32
    np.testing.assert_allclose(layers[0].bias.grad, pre.sum(axis=0), rtol=2e-7)
