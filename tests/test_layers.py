"""Each layer's forward against a numpy reference, and forward and backward against PyTorch."""
import numpy as np
import pytest

import corenet
import corenet.layers as L
from corenet.errors import DTypeError, ShapeError
from corenet.testing import away_from_kinks
from numpy_references import REFERENCES
from layer_table import builtin_names


FORWARD_SEED = 7  # corenet.random's seed for every forward below: dropout's mask


def numpy_dropout(layer, x):
    """Dropout's documented mask: element i is kept when splitmix64(key + (i + 1)·γ) >> 11
    is at least p·2⁵³, key the forward's one draw from corenet.random."""
    if not layer.training:
        return x
    key = np.random.default_rng(FORWARD_SEED).integers(0, 2**64, dtype=np.uint64)
    with np.errstate(over="ignore"):
        state = key + np.arange(1, x.size + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    bits = (state ^ (state >> np.uint64(31))) >> np.uint64(11)
    kept = bits >= np.uint64(int(layer.p * 2.0**53))
    return np.where(kept.reshape(x.shape), x / (1 - layer.p), 0.0)


def numpy_maxout(layer, x):
    pieces = np.einsum("ni,oki->nok", x, layer.weight.value.astype(np.float64))
    return (pieces + layer.bias.value).max(axis=2)


def numpy_batch_norm(layer, x):
    axes = (0,) + tuple(range(2, x.ndim))
    if layer.training:
        mean, variance = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, variance = layer.running_mean.value, layer.running_var.value
    channel = (1, -1) + (1,) * (x.ndim - 2)
    normalized = (x - mean.reshape(channel)) / np.sqrt(variance.reshape(channel) + layer.eps)
    return normalized * layer.weight.value.reshape(channel) + layer.bias.value.reshape(channel)


def numpy_layer_norm(layer, x):
    axes = tuple(range(x.ndim - len(layer.normalized_shape), x.ndim))
    mean, variance = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(variance + layer.eps) * layer.weight.value + layer.bias.value


# name -> (config, input shapes, numpy reference of (layer, *xs))
NUMPY_REFERENCES = {name: (config, shapes, REFERENCES[name]) for name, config, shapes in [
    ("linear", {"in_features": 5, "out_features": 4}, [(5,)]),
    ("sigmoid", {}, [(7,)]),
    ("tanh", {}, [(7,)]),
    ("relu", {}, [(7,)]),
    ("leaky_relu", {"negative_slope": 0.2}, [(7,)]),
    ("prelu", {"num_parameters": 3}, [(3, 2)]),
    ("elu", {"alpha": 0.5}, [(7,)]),
    ("softmax", {}, [(6,)]),
    ("add", {}, [(5,), (5,)]),
    ("concat", {}, [(3,), (4,)]),
    ("conv2d", {"in_channels": 4, "out_channels": 6, "kernel_size": (3, 2), "stride": (1, 2),
                "padding": 1, "dilation": (2, 1), "groups": 2}, [(4, 7, 6)]),
    ("conv3d", {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": "same"},
     [(2, 4, 5, 3)]),
    ("max_pool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, [(3, 7, 6)]),
    ("max_pool3d", {"kernel_size": 2}, [(2, 4, 5, 4)]),
    ("avg_pool2d", {"kernel_size": 2, "stride": 1, "padding": 1}, [(3, 5, 4)]),
    ("avg_pool3d", {"kernel_size": (2, 3, 2), "stride": 2}, [(2, 4, 6, 5)]),
    ("global_avg_pool", {}, [(3, 4, 5)]),
    ("flatten", {}, [(2, 3, 4)]),
]}
NUMPY_REFERENCES.update({
    "maxout": ({"in_features": 5, "out_features": 3, "pieces": 4}, [(5,)], numpy_maxout),
    "dropout": ({"p": 0.4}, [(3, 50)], numpy_dropout),
    "batch_norm1d": ({"num_features": 3}, [(3, 4)], numpy_batch_norm),
    "batch_norm2d": ({"num_features": 2, "eps": 1e-3}, [(2, 3, 4)], numpy_batch_norm),
    "layer_norm": ({"normalized_shape": (3, 4)}, [(2, 3, 4)], numpy_layer_norm),
})


def build(name, config, dtype, training, rng):
    """The layer in the given mode, its state buffers (running statistics) set away from
    their defaults."""
    layer = L.create(name, **config).astype(dtype).train(training)
    for buffer in layer.state_buffers():
        if buffer.value.dtype == dtype:
            buffer.value[...] = rng.uniform(0.5, 1.5, buffer.value.shape)
    return layer


def forward(layer, *xs):
    with corenet.random.seeded(FORWARD_SEED):
        return layer.forward(*xs)


def test_every_layer_has_a_numpy_reference():
    assert set(NUMPY_REFERENCES) == builtin_names()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(NUMPY_REFERENCES))
def test_forward_matches_numpy(name, dtype, training, rng):
    config, shapes, reference = NUMPY_REFERENCES[name]
    layer = build(name, config, dtype, training, rng)
    xs = [(rng.standard_normal((8,) + shape) * 3).astype(dtype) for shape in shapes]
    out = forward(layer, *xs)
    assert out.dtype == dtype
    expected = reference(layer, *[x.astype(np.float64) for x in xs])
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-13)


def test_sigmoid_and_softmax_do_not_overflow():
    x = np.array([[-1000.0, 0.0, 1000.0]])
    np.testing.assert_allclose(L.Sigmoid().forward(x), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(L.Softmax().forward(x), [[0.0, 0.0, 1.0]])


def test_prelu_slope_gradient_is_computed():
    prelu = L.PReLU(num_parameters=2, dtype="float64")
    x = np.array([[-1.0, 2.0], [-3.0, -4.0]])
    prelu.forward(x)
    prelu.backward(np.ones_like(x))
    # d/da of a·x where x < 0, summed over the batch, per channel.
    np.testing.assert_allclose(prelu.weight.grad, [-4.0, -4.0])


def test_linear_layout_matches_pytorch():
    layer = L.Linear(3, 2)
    assert [(p.name, p.value.shape) for p in layer.parameters()] == [("weight", (2, 3)),
                                                                     ("bias", (2,))]
    assert layer.weight.value.dtype == np.float32
    assert np.abs(layer.weight.value).max() <= 1 / np.sqrt(3)


def test_linear_backward_adds_into_parameter_grads(rng):
    layer = L.Linear(4, 3, dtype="float64")
    x = rng.standard_normal((5, 4))
    grad = rng.standard_normal((5, 3))
    for _ in range(2):
        layer.forward(x)
        layer.backward(grad)
    np.testing.assert_allclose(layer.weight.grad, 2 * grad.T @ x)
    np.testing.assert_allclose(layer.bias.grad, 2 * grad.sum(axis=0))


@pytest.mark.parametrize("bad, error, message", [
    (np.ones((4, 6), np.float32), ShapeError, r"linear: expected 5 features .* got shape \(4, 6\)"),
    (np.ones(5, np.float32), ShapeError, r"linear: expected a 2-D input .* got shape \(5,\)"),
    (np.ones((4, 5), np.int32), DTypeError, "linear: expected a float32 input .* got dtype int32"),
    (np.ones((4, 5), object), DTypeError, "linear: .* got dtype object"),
    (np.ones((0, 5), np.float32), ShapeError, r"linear: got an empty batch, shape \(0, 5\)"),
    (np.ones((4, 5), np.float64), DTypeError, "linear: expected a float32 input"),
])
def test_bad_input_errors_name_layer_and_shapes(bad, error, message):
    with pytest.raises(error, match=message):
        L.Linear(5, 3).forward(bad)


@pytest.mark.parametrize("dtype", ["float33", "bogus", None, "int32", "float16", np.int64, 3])
@pytest.mark.parametrize("make, owner", [
    (lambda dtype: L.Linear(3, 4, dtype=dtype), "linear"),
    (lambda dtype: L.Conv2d(3, 4, 3, dtype=dtype), "conv2d"),
    (lambda dtype: L.PReLU(dtype=dtype), "prelu"),
    (lambda dtype: L.Maxout(3, 4, 2, dtype=dtype), "maxout"),
    (lambda dtype: L.BatchNorm2d(3, dtype=dtype), "batch_norm2d"),
    (lambda dtype: L.LayerNorm(3, dtype=dtype), "layer_norm"),
    (lambda dtype: L.Linear(3, 4).astype(dtype), "linear"),
    (lambda dtype: corenet.Sequential(L.Linear(3, 4)).astype(dtype), "Sequential"),
])
def test_an_unknown_dtype_is_refused_naming_the_layer(make, owner, dtype):
    # 'float33' once slipped through as None (np.dtype(None) is float64) and failed later.
    with pytest.raises(DTypeError, match=f"{owner}: dtype must be float32 or float64, got"):
        make(dtype)


def test_backward_before_forward_and_wrong_gradient_shape():
    layer = L.Linear(5, 3)
    with pytest.raises(RuntimeError, match="linear.backward called before forward"):
        layer.backward(np.ones((2, 3), np.float32))
    layer.forward(np.ones((2, 5), np.float32))
    with pytest.raises(ShapeError, match=r"expected a gradient of shape \(2, 3\)"):
        layer.backward(np.ones((2, 4), np.float32))


def test_create_unknown_layer_lists_what_exists():
    with pytest.raises(corenet.PluginError, match="no layer named 'nope'.*'linear'"):
        L.create("nope")
    with pytest.raises(AttributeError, match="no layer class 'Nope'"):
        L.Nope


def test_constructor_errors():
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        L.Linear(0, 3)
    with pytest.raises(DTypeError, match="float32 or float64"):
        L.Linear(2, 3, dtype="int8")
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        L.Concat(axis=0)


# -- PyTorch parity ------------------------------------------------------------

try:
    import torch
except ImportError:  # the tests that do not compare with PyTorch run without it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")
F = torch.nn.functional if torch is not None else None


def torch_window(layer) -> dict:
    """The window arguments of F.conv*d / F.*_pool*d from a corenet layer's config."""
    config = layer.get_config()
    arguments = {key: tuple(value) if isinstance(value, list) else value
                 for key, value in config.items()
                 if key in ("stride", "padding", "dilation", "groups")}
    if "in_channels" not in config:
        arguments["kernel_size"] = config["kernel_size"]
    return arguments


def torch_reference(name, layer):
    """A function of torch tensors doing what ``layer`` does, with its parameters."""
    params = [torch.tensor(p.value, requires_grad=True) for p in layer.parameters()]
    functions = {
        "linear": lambda x: F.linear(x, *params),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "leaky_relu": lambda x: F.leaky_relu(x, layer.negative_slope),
        "prelu": lambda x: F.prelu(x, params[0]),
        "elu": lambda x: F.elu(x, layer.alpha),
        "softmax": lambda x: torch.softmax(x, dim=-1),
        "add": lambda a, b: a + b,
        "concat": lambda a, b: torch.cat([a, b], dim=1),
        "conv2d": lambda x: F.conv2d(x, *params, **torch_window(layer)),
        "conv3d": lambda x: F.conv3d(x, *params, **torch_window(layer)),
        "max_pool2d": lambda x: F.max_pool2d(x, **torch_window(layer)),
        "max_pool3d": lambda x: F.max_pool3d(x, **torch_window(layer)),
        "avg_pool2d": lambda x: F.avg_pool2d(x, **torch_window(layer)),
        "avg_pool3d": lambda x: F.avg_pool3d(x, **torch_window(layer)),
        "global_avg_pool": lambda x: x.mean(dim=tuple(range(2, x.ndim))),
        "flatten": lambda x: x.flatten(1),
        "maxout": lambda x: F.linear(x, params[0].reshape(-1, layer.in_features),
                                     params[1].reshape(-1)).reshape(
            len(x), layer.out_features, layer.pieces).max(dim=2).values,
        "dropout": lambda x: F.dropout(x, layer.p, training=False),
        "batch_norm1d": lambda x: torch_batch_norm(layer, x, params),
        "batch_norm2d": lambda x: torch_batch_norm(layer, x, params),
        "layer_norm": lambda x: F.layer_norm(x, layer.normalized_shape, *params, eps=layer.eps),
    }
    return functions[name], params


def torch_batch_norm(layer, x, params):
    """F.batch_norm on copies of the layer's running statistics as they are now."""
    running = [torch.tensor(buffer.value) for buffer in layer.state_buffers()[:2]] or [None,
                                                                                        None]
    return F.batch_norm(x, *running, *params, training=layer.training, momentum=layer.momentum,
                        eps=layer.eps)


@needs_torch
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(NUMPY_REFERENCES))
def test_forward_and_backward_match_pytorch(name, dtype, training, rng):
    if name == "dropout" and training:
        pytest.skip("dropout's training mask is corenet's own: checked against numpy above")
    config, shapes, _ = NUMPY_REFERENCES[name]
    layer = build(name, config, dtype, training, rng)
    for parameter in layer.parameters():
        parameter.value[...] = rng.uniform(0.1, 0.5, parameter.value.shape)
    xs = [away_from_kinks((6,) + shape, rng, dtype) for shape in shapes]
    grad = rng.standard_normal((6,) + layer.output_shape(*shapes)).astype(dtype)

    function, params = torch_reference(name, layer)  # before forward moves running statistics
    out = layer.forward(*xs)
    input_grads = layer.backward(grad)
    input_grads = input_grads if isinstance(input_grads, tuple) else (input_grads,)

    torch_xs = [torch.tensor(x, requires_grad=True) for x in xs]
    torch_out = function(*torch_xs)
    torch_out.backward(torch.tensor(grad))
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12,
                                                                          atol=1e-13)
    np.testing.assert_allclose(out, torch_out.detach().numpy(), **tolerance)
    for ours, theirs in zip(input_grads, torch_xs):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), **tolerance)
    for ours, theirs in zip(layer.parameters(), params):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), **tolerance)


@pytest.mark.parametrize("name, reference", [
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", np.tanh),
    ("elu", lambda x: np.where(x > 0, x, np.expm1(x))),
])
def test_float32_simd_activations_are_accurate_to_a_few_ulps(name, reference):
    # Wide range, the polynomial switch points and tiny inputs, where naive
    # formulas lose relative precision; the length leaves a tail shorter than a vector.
    x = np.concatenate([np.linspace(-90, 90, 180_007), np.linspace(-1e-3, 1e-3, 2001),
                        [0.625, -0.625, 0.5, -0.5, 1e-30, -1e-30]]).astype(np.float32)
    out = L.create(name).forward(x[None, :])[0].astype(np.float64)
    expected = reference(x.astype(np.float64))
    relative = np.abs(out - expected) / np.maximum(np.abs(expected), 1e-30)
    assert relative.max() < 4 * np.finfo(np.float32).eps


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "elu", "relu", "leaky_relu"])
def test_nan_propagates_through_activations(name):
    for dtype in (np.float32, np.float64):
        out = L.create(name).forward(np.array([[np.nan, 1.0]], dtype))
        assert np.isnan(out[0, 0]) and np.isfinite(out[0, 1])


def test_the_simd_coefficients_are_the_ones_the_fitting_script_makes():
    import pathlib
    import re

    from corenet.kernels import fit_approximations

    header = (pathlib.Path(fit_approximations.__file__).parent / "vector_math.h").read_text()
    p_exp, _ = fit_approximations.fit_exp()
    _, p_tanh, q_tanh = fit_approximations.fit_tanh()
    literals = [float(text) for text in re.findall(r"\d+\.\d+(?:e[-+]?\d+)?(?=f)", header)]
    for coefficients in (p_exp, p_tanh, q_tanh[1:]):
        for value in coefficients:
            # Negative ones are written as a subtraction: match the magnitude. The
            # least-squares fit differs between CPUs' LAPACK in the 11th digit,
            # far below float32's: ask for 1e-9 relative.
            close = [x for x in literals if abs(x - abs(value)) <= 1e-9 * abs(value)]
            assert close, f"{value!r} is not in vector_math.h"


@pytest.mark.parametrize("name, config, shape", [
    ("linear", {"in_features": 4, "out_features": 3}, (2, 4)),
    ("prelu", {"num_parameters": 3}, (2, 3, 5)),
    ("conv2d", {"in_channels": 2, "out_channels": 3, "kernel_size": 3}, (2, 2, 5, 5)),
])
def test_replaced_parameters_are_checked_before_the_kernel(name, config, shape):
    layer = L.create(name, **config)
    x = -np.ones(shape, np.float32)  # negative: prelu's slope gets a gradient too
    weight_shape = layer.weight.value.shape
    layer.weight.value = np.ones((1,) + weight_shape, np.float32)  # wrong shape
    with pytest.raises(ShapeError, match=rf"{name}: parameter 'weight' must be a float32 "):
        layer.forward(x)
    layer.weight.value = np.ones(weight_shape, np.float64)  # wrong dtype
    with pytest.raises(ShapeError, match=rf"{name}: parameter 'weight' must be a float32 "):
        layer.forward(x)
    held = layer.weight
    for replacement in (None, np.ones(weight_shape, np.float32)):  # not a Parameter at all
        layer.weight = replacement
        with pytest.raises(TypeError, match=rf"{name}: expected a corenet Parameter "
                                            rf"\(name, value, grad\), got "):
            layer.forward(x)
    layer.weight = held
    layer.weight.value = np.asfortranarray(np.ones(weight_shape, np.float32))  # read as a copy
    out = layer.forward(x)
    layer.weight.grad = None  # as PyTorch: backward starts the gradient from zero
    layer.zero_grad()  # leaves it None (it was an AttributeError on None.fill)
    assert layer.weight.grad is None
    layer.backward(np.ones_like(out))
    assert layer.weight.grad.shape == weight_shape and np.any(layer.weight.grad)
    layer.weight.grad = np.zeros(weight_shape, np.float32)[::1]
    layer.weight.grad.flags.writeable = False
    with pytest.raises(ValueError, match=r"its grad must be a writeable C-contiguous array"):
        layer.backward(np.ones_like(out))
