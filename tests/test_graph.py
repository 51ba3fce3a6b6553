"""The graph executor: DAG order, fan-out gradient sums, build-time checks, errors."""
import re

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.errors import DTypeError, ShapeError
from corenet.testing import finite_difference_gradient, relative_error


def dag_model(dtype="float64"):
    """x feeds two branches (fan-out) that meet in Add, then a head; h also fans out."""
    x = cn.Input(shape=(4,))
    h = L.Tanh()(L.Linear(4, 6, dtype=dtype)(x))
    skip = L.Linear(4, 6, dtype=dtype)(x)
    joined = L.Add()(h, skip, h)  # h used twice by one node, and by Concat below
    out = L.Linear(12, 3, dtype=dtype)(L.Concat()(joined, h))
    return cn.Model(inputs=x, outputs=out, requires_input_grad=True)


def test_forward_matches_a_hand_written_numpy_graph(rng):
    model = dag_model()
    first, second, head = [layer for layer in model.layers if layer.name == "linear"]
    x = rng.standard_normal((5, 4))
    h = np.tanh(x @ first.weight.value.T + first.bias.value)
    joined = h + (x @ second.weight.value.T + second.bias.value) + h
    expected = np.concatenate([joined, h], axis=1) @ head.weight.value.T + head.bias.value
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-12)


def assert_model_gradients(model, x, rng):
    """dL/dx and every dL/dW from backward agree with finite differences, for
    L = Σ forward(x) · R with a random R."""
    weights = rng.standard_normal(model.forward(x).shape)

    def objective():
        return float(np.sum(model.forward(x) * weights))

    objective()
    model.zero_grad()
    x_grad = model.backward(weights)
    for target, analytic in [(x, x_grad)] + [(p.value, p.grad) for p in model.parameters()]:
        numeric = finite_difference_gradient(objective, target)
        assert relative_error(analytic, numeric) < 1e-6


def test_fan_out_gradients_are_summed_finite_differences(rng):
    assert_model_gradients(dag_model(), rng.standard_normal((3, 4)), rng)


def test_topological_order_is_stable_and_iterative():
    x = cn.Input(shape=(3,))
    h = x
    for _ in range(3000):  # deeper than Python's recursion limit
        h = L.ReLU()(h)
    model = cn.Model(x, h)
    assert len(model.layers) == 3000
    np.testing.assert_array_equal(model.forward(np.array([[-1.0, 0.5, 2.0]], np.float32)),
                                  [[0.0, 0.5, 2.0]])


def test_sequential_and_repr():
    model = cn.Sequential(L.Linear(64, 128), L.ReLU(), L.Linear(128, 10))
    assert model.inputs[0].shape == (64,)
    assert model.forward(np.zeros((2, 64), np.float32)).shape == (2, 10)
    assert "Linear(in_features=64, out_features=128" in repr(model)
    with pytest.raises(ValueError, match="pass input_shape"):
        cn.Sequential(L.ReLU())
    assert cn.Sequential(L.ReLU(), input_shape=(3,)).forward(np.ones((1, 3))).shape == (1, 3)


def test_shapes_are_checked_when_the_graph_is_built():
    x = cn.Input(shape=(4,))
    with pytest.raises(ShapeError, match=r"linear: expected per-sample shape \(5,\), got \(4,\)"):
        L.Linear(5, 2)(x)
    with pytest.raises(ShapeError, match="add: expected 2 or more inputs of one shape"):
        L.Add()(x, cn.Input(shape=(3,)))


def test_layers_of_another_dtype_are_refused_when_the_graph_is_built(rng):
    # The model built and every forward was linear's DTypeError, mid-epoch.
    x = cn.Input(shape=(4,))
    y = L.Linear(3, 2, dtype="float64")(L.ReLU()(L.Linear(4, 3)(x)))
    with pytest.raises(DTypeError, match=r"Model: Linear\(in_features=3, out_features=2, .*"
                                         r"dtype='float64'.*\) computes in float64, the model "
                                         r"in float32 \(its first parameters'\)"):
        cn.Model(x, y)
    with pytest.raises(DTypeError, match="LayerNorm.* computes in float32, the model in "
                                         "float64"):
        cn.Sequential(L.Linear(4, 3, dtype="float64"),
                      L.LayerNorm(3, elementwise_affine=False))
    model = cn.Sequential(L.Linear(4, 3), L.LayerNorm(3, elementwise_affine=False)).astype(
        "float64")
    assert model.forward(rng.standard_normal((2, 4))).dtype == np.float64


def test_a_layer_instance_belongs_to_one_node():
    x = cn.Input(shape=(4,))
    layer = L.Linear(4, 4)
    layer(x)
    with pytest.raises(ValueError, match="already used at another node"):
        layer(x)


def test_model_input_errors(rng):
    model = dag_model("float32")
    with pytest.raises(ShapeError,
                       match=r"Model input 0: expected shape \(batch, 4\), got \(2, 5\)"):
        model.forward(np.ones((2, 5), np.float32))
    with pytest.raises(ShapeError, match=r"expected shape \(batch, 4\), got \(4,\)"):
        model.forward(np.ones(4, np.float32))
    with pytest.raises(DTypeError, match="Model input 0: expected a float array, got dtype int64"):
        model.forward(np.ones((2, 4), np.int64))
    with pytest.raises(DTypeError, match="got dtype object"):
        model.forward(np.ones((2, 4), object))
    with pytest.raises(ShapeError, match="empty batch"):
        model.forward(np.ones((0, 4), np.float32))
    with pytest.raises(TypeError, match="expected 1 input array"):
        model.forward(np.ones((2, 4)), np.ones((2, 4)))


def test_float_inputs_are_cast_to_the_model_dtype_and_astype(rng):
    model = dag_model("float32")
    x = rng.standard_normal((2, 4))
    assert model.forward(x).dtype == np.float32
    model.astype("float64")
    assert all(p.value.dtype == np.float64 for p in model.parameters())
    assert model.forward(x).dtype == np.float64


def test_forward_returns_arrays_the_next_step_does_not_overwrite(rng):
    model = dag_model("float32")
    first = model.forward(rng.standard_normal((2, 4)))
    kept = first.copy()
    model.forward(rng.standard_normal((2, 4)))
    np.testing.assert_array_equal(first, kept)


def test_input_gradient_only_when_asked(rng):
    x = cn.Input(shape=(4,))
    model = cn.Model(x, L.Linear(4, 2)(x))
    model.forward(rng.standard_normal((3, 4)))
    assert model.backward(np.ones((3, 2), np.float32)) is None
    model.requires_input_grad = True
    model.forward(rng.standard_normal((3, 4)))
    assert model.backward(np.ones((3, 2), np.float32)).shape == (3, 4)


def test_a_graph_reading_an_unlisted_input_is_an_error():
    x, other = cn.Input(shape=(2,)), cn.Input(shape=(2,))
    with pytest.raises(ValueError, match="not among the model's inputs"):
        cn.Model(x, L.Add()(x, other))


def test_multiple_inputs_and_outputs(rng):
    a, b = cn.Input(shape=(3,)), cn.Input(shape=(2,))
    joined = L.Concat()(a, b)
    model = cn.Model([a, b], [L.ReLU()(joined), L.Linear(5, 1)(joined)])
    relu_out, linear_out = model.forward(rng.standard_normal((4, 3)),
                                         rng.standard_normal((4, 2)))
    assert relu_out.shape == (4, 5) and linear_out.shape == (4, 1)
    model.backward(np.ones((4, 5), np.float32), np.ones((4, 1), np.float32))


def test_linear_relu_pairs_are_fused_and_match_an_unfused_reference(rng):
    layers = [L.Linear(6, 8, dtype="float64"), L.ReLU(), L.Linear(8, 3, dtype="float64"),
              L.ReLU()]
    model = cn.Sequential(*layers, requires_input_grad=True)
    assert len(model._plan) == 2  # both pairs fused: each ReLU alone consumes its Linear
    first, second = layers[0], layers[2]
    x = rng.standard_normal((5, 6))
    grad = rng.standard_normal((5, 3))
    h_pre = x @ first.weight.value.T + first.bias.value
    h = np.maximum(h_pre, 0)
    out_pre = h @ second.weight.value.T + second.bias.value
    np.testing.assert_allclose(model.forward(x), np.maximum(out_pre, 0), rtol=1e-12)
    x_grad = model.backward(grad)
    g_out = grad * (out_pre > 0)
    g_h = (g_out @ second.weight.value) * (h_pre > 0)
    np.testing.assert_allclose(second.weight.grad, g_out.T @ h, rtol=1e-12)
    np.testing.assert_allclose(second.bias.grad, g_out.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(first.weight.grad, g_h.T @ x, rtol=1e-12)
    np.testing.assert_allclose(first.bias.grad, g_h.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(x_grad, g_h @ first.weight.value, rtol=1e-12)


def test_a_second_model_over_the_same_layers_is_not_affected_by_fusion(rng):
    x = cn.Input(shape=(4,))
    linear = L.Linear(4, 3, dtype="float64")
    pre = linear(x)
    fused = cn.Model(x, L.ReLU()(pre))
    # The Linear's own output is an output here: no fusion; and dL/dx is wanted.
    raw = cn.Model(x, pre, requires_input_grad=True)
    inputs = rng.standard_normal((6, 4))
    expected = inputs @ linear.weight.value.T + linear.bias.value
    assert (fused.forward(inputs) >= 0).all()
    np.testing.assert_allclose(raw.forward(inputs), expected, rtol=1e-12)
    np.testing.assert_allclose(raw.backward(np.ones((6, 3))), np.ones((6, 3)) @ linear.weight.value,
                               rtol=1e-12)
    np.testing.assert_allclose(fused.forward(inputs), np.maximum(expected, 0), rtol=1e-12)
    assert fused.backward(np.ones((6, 3))) is None


FUSIONS = [("relu", {}), ("sigmoid", {}), ("tanh", {}), ("leaky_relu", {"negative_slope": 0.1}),
           ("elu", {"alpha": 0.7})]


@pytest.mark.parametrize("in_features, hidden", [(5, 6), (200, 3), (6, 40)])
@pytest.mark.parametrize("name, config", FUSIONS)
def test_fused_activations_match_the_layers_run_one_by_one(name, config, in_features, hidden,
                                                           rng):
    # The shapes reach the GEMM's packed path and its thin dot path.
    first, activation, head = (L.Linear(in_features, hidden), L.create(name, **config),
                               L.Linear(hidden, 3))
    model = cn.Sequential(first, activation, head)
    assert len(model._plan) == 2  # the activation runs inside the first Linear
    x = rng.standard_normal((7, in_features)).astype(np.float32)
    expected = head.forward(activation.forward(first.forward(x)))
    np.testing.assert_array_equal(model.forward(x), expected)


@pytest.mark.parametrize("name, config", FUSIONS)
def test_fused_activation_gradients_match_finite_differences(name, config, rng):
    model = cn.Sequential(L.Linear(4, 5, dtype="float64"), L.create(name, **config),
                          L.Linear(5, 2, dtype="float64"), requires_input_grad=True)
    assert_model_gradients(model, rng.standard_normal((3, 4)), rng)


def test_activations_that_cannot_recover_their_derivative_are_not_fused():
    for activation in (L.LeakyReLU(negative_slope=-0.5), L.ELU(alpha=0.0), L.Softmax()):
        model = cn.Sequential(L.Linear(3, 3), activation)
        assert len(model._plan) == 2


def test_a_linear_called_alone_after_a_fused_model_runs_unfused(rng):
    linear = L.Linear(3, 4, dtype="float64")
    model = cn.Sequential(linear, L.ReLU(), L.Linear(4, 1, dtype="float64"))
    x = rng.standard_normal((5, 3))
    model.forward(x)
    np.testing.assert_allclose(linear.forward(x), x @ linear.weight.value.T + linear.bias.value,
                               rtol=1e-12)


class _AddReturningOneArray(cn.Layer):
    """A plugin's broken two-input layer: backward returns one array, not a pair."""

    name = "add_returning_one_array"

    def output_shape(self, a, b):
        return a

    def forward(self, a, b):
        return a + b

    def backward(self, grad):
        return grad


class _ReluReturningAPair(cn.Layer):
    name = "relu_returning_a_pair"

    def forward(self, x):
        return np.maximum(x, 0)

    def backward(self, grad):
        return grad, grad


def test_a_backward_returning_the_wrong_number_of_gradients_is_an_error_naming_the_layer():
    # The two inputs took the first two rows of the one array as their gradients,
    # returned as dL/dinputs silently; a pair for one input reached the next layer as
    # an array of shape (2, ...) or was returned as a tuple (AttributeError on .copy).
    a, b = cn.Input(shape=(3,)), cn.Input(shape=(3,))
    model = cn.Model([a, b], _AddReturningOneArray()(a, b), requires_input_grad=True)
    ones = np.ones((3, 3), np.float32)
    model.forward(ones, ones)
    with pytest.raises(TypeError, match=r"Model.backward: _AddReturningOneArray\(\) has 2 "
                                        r"inputs, its backward must return a tuple of as many "
                                        r"gradients, got an array of shape \(3, 3\)"):
        model.backward(ones)
    x = cn.Input(shape=(3,))
    model = cn.Model(x, _ReluReturningAPair()(L.Linear(3, 3)(x)), requires_input_grad=True)
    model.forward(ones)
    with pytest.raises(ShapeError, match=r"Model.backward: _ReluReturningAPair\(\) returned a "
                                         r"tuple of 2 as the gradient of an input of shape "
                                         r"\(3, 3\)"):
        model.backward(ones)


@pytest.mark.parametrize("sizes, batch_size", [((3, 2), 1024), ((3, 3), 2), ((3, 3), 1024)])
def test_predict_returns_one_array_per_output_as_forward_does(sizes, batch_size, rng):
    # Before: numpy's "inhomogeneous shape" error, a concatenation error across batches,
    # or for one batch the outputs stacked into one (2, 5, 3) array.
    x = cn.Input(shape=(4,))
    model = cn.Model(x, [L.Linear(4, size)(x) for size in sizes])
    inputs = rng.standard_normal((5, 4)).astype(np.float32)
    predicted = model.predict(inputs, batch_size)
    assert isinstance(predicted, list) and len(predicted) == len(sizes)
    for ours, expected in zip(predicted, model.forward(inputs)):
        np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_backward_checks_each_output_gradient_against_the_forward_output():
    # Before: an output that is the input reached no layer's check, and its gradient came
    # back unchecked; gradients of one tensor met in accumulate's own error.
    x = cn.Input(shape=(4,))
    identity = cn.Model(x, x, requires_input_grad=True)
    with pytest.raises(RuntimeError, match="Model.backward called before forward"):
        identity.backward(np.ones((2, 4), np.float32))
    identity.forward(np.ones((2, 4), np.float32))
    with pytest.raises(ShapeError, match=r"Model.backward: gradient 0: expected shape \(2, 4\) "
                                         r"\(the forward output's\), got \(7, 9\)"):
        identity.backward(np.ones((7, 9)))
    with pytest.raises(DTypeError, match=r"Model.backward: gradient 0: expected float32 \(the "
                                         r"forward output's\), got float64"):
        identity.backward(np.ones((2, 4)))
    relu = L.ReLU()(x)
    fan_out = cn.Model(x, [relu, relu], requires_input_grad=True)
    fan_out.forward(np.ones((2, 4), np.float32))
    with pytest.raises(DTypeError, match="Model.backward: gradient 1: expected float32"):
        fan_out.backward(np.ones((2, 4), np.float32), np.ones((2, 4)))
    with pytest.raises(ShapeError, match=r"Model.backward: gradient 1: expected shape \(2, 4\)"):
        fan_out.backward(np.ones((2, 4), np.float32), np.ones((2, 1), np.float32))
    strided = np.ones((4, 4), np.float32)[::2]  # accumulate took C-contiguous arrays only
    np.testing.assert_array_equal(fan_out.backward(np.ones((2, 4), np.float32), strided),
                                  np.full((2, 4), 2.0))


_INHERITED = object()  # the output_shape of corenet.Layer: the input's shape


def plugin_layer(forward=None, backward=None, declared=_INHERITED):
    """A third-party layer that passes its input through, but for what it is given."""
    class Broken(cn.Layer):
        name = "broken"

        def forward(self, x):
            return forward(x) if forward else x

        def backward(self, grad):
            return backward(grad) if backward else grad

        if declared is not _INHERITED:
            def output_shape(self, shape):
                return declared

    return Broken()


@pytest.mark.parametrize("declared", [3, None, [3], (0,), (-1,), ("a",), (3.0,)])
def test_output_shape_must_return_a_tuple_of_positive_ints(declared):
    # Before: TypeError "'int' object is not iterable", an error from memory.py, or
    # (0,), (-1,) and [3] accepted.
    with pytest.raises(ShapeError, match=r"Broken\(\): output_shape must return the "
                                         r"per-sample output shape as a tuple of positive "
                                         rf"ints, got {re.escape(repr(declared))}"):
        cn.Sequential(L.Linear(4, 3), plugin_layer(declared=declared))


@pytest.mark.parametrize("forward, error, message", [
    (lambda x: x[:, :2], ShapeError, r"returned an array of shape \(5, 2\); expected \(5, 3\) "
                                     r"\(the batch, then the shape its output_shape declared"),
    (lambda x: x[:-1], ShapeError, r"returned an array of shape \(4, 3\); expected \(5, 3\)"),
    (lambda x: x[0, 0], TypeError, r"returned a float32; expected an array of shape \(5, 3\) "
                                   r"and dtype float32"),
    (lambda x: x.astype(np.float64), DTypeError, r"returned an array of dtype float64; "
                                                 r"expected float32 \(the model's dtype\)"),
    (lambda x: x.tolist(), TypeError, "returned a list of 5; expected an array"),
    (lambda x: None, TypeError, "returned None; expected an array"),
    (lambda x: (x, x), TypeError, "returned a tuple of 2; expected an array"),
], ids=["columns", "rows", "0-d", "float64", "list", "None", "tuple"])
def test_each_layer_output_is_checked_against_its_declared_shape_and_the_dtype(
        forward, error, message):
    # Before: the loss blamed the labels, Linear.backward the gradient, or an
    # AttributeError (or numpy's concatenate error) came from inside the executor.
    model = cn.Sequential(L.Linear(4, 3), plugin_layer(forward))
    with pytest.raises(error, match=r"Model.forward: Broken\(\) " + message):
        model.predict(np.ones((5, 4), np.float32))


def test_an_output_shape_that_forward_does_not_keep_is_an_error():
    # Before: declaring (7,) and returning (N, 3) trained silently.
    model = cn.Sequential(L.Linear(4, 3), plugin_layer(declared=(7,)))
    with pytest.raises(ShapeError, match=r"Broken\(\) returned an array of shape \(2, 3\); "
                                         r"expected \(2, 7\)"):
        model.forward(np.ones((2, 4), np.float32))


def fan_out_model(layer):
    """x → Linear → (layer, ReLU) → Add: the two branches' gradients are summed."""
    x = cn.Input(shape=(4,))
    hidden = L.Linear(4, 4)(x)
    return cn.Model(x, L.Add()(layer(hidden), L.ReLU()(hidden)), requires_input_grad=True)


def test_each_gradient_a_layer_returns_is_checked_before_it_is_summed(rng):
    # Before: accumulate's "float32(8, 4) += float64(8, 4)" or "arrays must be
    # C-contiguous", and a None left the layers before it without a gradient, silently.
    x = rng.standard_normal((8, 4)).astype(np.float32)
    grad = rng.standard_normal((8, 4)).astype(np.float32)
    model = fan_out_model(plugin_layer(backward=lambda g: g.astype(np.float64)))
    model.forward(x)
    with pytest.raises(DTypeError, match=r"Model.backward: Broken\(\), the gradient of its "
                                         r"input 0: expected float32 \(that input's\), got "
                                         r"float64"):
        model.backward(grad)
    model = fan_out_model(plugin_layer(backward=lambda g: g[:, :2]))
    model.forward(x)
    with pytest.raises(ShapeError, match=r"input 0: expected shape \(8, 4\) \(that input's\), "
                                         r"got \(8, 2\)"):
        model.backward(grad)
    model = cn.Sequential(L.Linear(4, 4), plugin_layer(backward=lambda g: None))
    model.forward(x)
    with pytest.raises(TypeError, match=r"Model.backward: Broken\(\) returned None as the "
                                        r"gradient of its input 0, which the layers before it"):
        model.backward(grad)


def test_a_non_contiguous_gradient_is_summed_as_a_contiguous_one(rng):
    x = rng.standard_normal((8, 4)).astype(np.float32)
    grad = rng.standard_normal((8, 4)).astype(np.float32)
    input_grads = []
    for backward in (lambda g: g.copy(), np.asfortranarray,
                     lambda g: np.broadcast_to(g[:1], g.shape)):
        model = fan_out_model(plugin_layer(backward=backward))
        model.load_state_dict({"0.weight": np.eye(4, dtype=np.float32),
                               "0.bias": np.zeros(4, np.float32)})
        model.forward(x)
        input_grads.append(model.backward(grad))
    np.testing.assert_array_equal(input_grads[1], input_grads[0])
    expected = np.broadcast_to(grad[:1], grad.shape) + grad * (x > 0)
    np.testing.assert_allclose(input_grads[2], expected, rtol=1e-6)


def test_a_first_layer_may_return_no_gradient_for_the_model_input(rng):
    model = cn.Sequential(plugin_layer(backward=lambda g: None), L.Linear(4, 3),
                          input_shape=(4,))
    model.forward(np.ones((2, 4), np.float32))
    assert model.backward(np.ones((2, 3), np.float32)) is None
    model.requires_input_grad = True
    with pytest.raises(TypeError, match="returned None as the gradient of its input 0"):
        model.backward(np.ones((2, 3), np.float32))
