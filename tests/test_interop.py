"""PyTorch models in and out (corenet.interop): outputs equal to PyTorch's."""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from layer_table import LAYERS, layer_id

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the interop tests "
                                            "compare against it (pip install torch)")
from corenet.interop import from_torch, to_torch  # noqa: E402  (after the skip)

nn = torch.nn


def assert_same_outputs(model, module, input_shape, dtype=np.float32, batch=4):
    x = np.random.default_rng(1).standard_normal((batch,) + tuple(input_shape)).astype(dtype)
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(model.predict(x), expected, rtol=tolerance, atol=tolerance)


def test_pytorch_state_dict_loads_into_the_same_sequential():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    model = cn.Sequential(L.Linear(4, 6), L.ReLU(), L.Linear(6, 3))
    model.load_state_dict(module.state_dict())
    assert list(model.state_dict()) == list(module.state_dict())
    assert_same_outputs(model, module, (4,))


def test_from_torch_and_back_for_a_cnn_with_nested_sequentials():
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.PReLU(4), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 6, (2, 3), stride=(1, 2), padding="valid", groups=2),
                      nn.LeakyReLU(0.2), nn.AvgPool2d(2, padding=1)),
        nn.Conv2d(6, 5, 3, padding="same", dilation=2, bias=False), nn.ELU(0.5), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Identity(),
        nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3), nn.Softmax(dim=1))
    model = from_torch(module, input_shape=(2, 9, 10))
    assert [layer.name for layer in model.layers] == [
        "conv2d", "prelu", "max_pool2d", "conv2d", "leaky_relu", "avg_pool2d", "conv2d", "elu",
        "tanh", "global_avg_pool", "linear", "sigmoid", "linear", "softmax"]
    assert_same_outputs(model, module, (2, 9, 10))
    back = to_torch(model)
    assert_same_outputs(model, back, (2, 9, 10))
    assert isinstance(back[9], nn.AdaptiveAvgPool2d) and isinstance(back[10], nn.Flatten)


def test_float64_modules_become_float64_models_and_back():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv3d(1, 2, 2), nn.ReLU(), nn.MaxPool3d(2), nn.Flatten(),
                           nn.Linear(2 * 2 * 2 * 2, 3)).double()
    model = from_torch(module, input_shape=(1, 5, 5, 5))
    assert model.dtype == np.float64
    assert_same_outputs(model, module, (1, 5, 5, 5), np.float64)
    back = to_torch(model)
    assert next(back.parameters()).dtype == torch.float64
    assert_same_outputs(model, back, (1, 5, 5, 5), np.float64)


NO_TORCH_MODULE = {"maxout"}  # torch.nn has no Maxout
CHAIN_ROWS = [row for row in LAYERS if len(row[2]) == 1 and row[0] not in NO_TORCH_MODULE]
# How fresh weights were drawn: a torch module holds its weights, not how it drew them,
# so a layer comes back from torch with the default init.
INIT_OPTIONS = ("init", "bias_init")


def randomize(model, seed=2):
    """Parameters and state buffers away from their defaults; float buffers (running
    statistics) positive, counts 3."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for parameter in layer.parameters():
            parameter.value[...] = rng.uniform(-1, 1, parameter.value.shape)
        for buffer in layer.state_buffers():
            buffer.value[...] = rng.uniform(0.5, 1.5, buffer.value.shape) \
                if buffer.value.dtype.kind == "f" else 3
    return model


@pytest.mark.parametrize("row", CHAIN_ROWS, ids=layer_id)
def test_every_single_input_layer_goes_to_torch_and_back(row):
    name, config, (shape,) = row
    model = randomize(cn.Sequential(L.create(name, **config), input_shape=shape))
    module = to_torch(model)
    assert list(module.state_dict()) == list(model.state_dict())
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), model.state_dict()[key])
    assert_same_outputs(model, module, shape)
    again = from_torch(module, input_shape=shape)
    assert [{key: value for key, value in layer.get_config().items()
             if key not in INIT_OPTIONS} for layer in again.layers] == \
        [{key: value for key, value in layer.get_config().items()
          if key not in INIT_OPTIONS} for layer in model.layers]
    for key, value in again.state_dict().items():
        np.testing.assert_array_equal(value, model.state_dict()[key])
    assert_same_outputs(again, module, shape)


def test_maxout_has_no_torch_module():
    with pytest.raises(ValueError, match="no torch.nn module for corenet layer 'maxout'"):
        to_torch(cn.Sequential(L.Maxout(3, 2, pieces=2)))


BATCH_NORMS = [
    (nn.BatchNorm1d, (5,), {}),
    (nn.BatchNorm1d, (5, 7), {"momentum": None, "eps": 1e-3}),
    (nn.BatchNorm1d, (5,), {"affine": False, "momentum": 0.3}),
    (nn.BatchNorm2d, (5, 3, 4), {}),
    (nn.BatchNorm2d, (5, 3, 4), {"momentum": None, "affine": False}),
    (nn.BatchNorm2d, (5, 3, 4), {"track_running_stats": False}),
]


def leading_layers(nn_or_layers, shape) -> list:
    """A layer with parameters before the batch norm, where corenet has one for the shape."""
    if len(shape) == 1:
        return [nn_or_layers.Linear(4, 5)]
    return [nn_or_layers.Conv2d(5, 5, 1)] if len(shape) == 3 else []


@pytest.mark.parametrize("cls, shape, options", BATCH_NORMS,
                         ids=[f"{c.__name__}{s}{o}" for c, s, o in BATCH_NORMS])
@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
def test_batch_norm_trains_as_pytorch_does(cls, shape, options, direction):
    """Training steps (batch statistics, running statistics moved, gradients) then
    evaluation give PyTorch's results within float32 rounding, either way converted."""
    input_shape = (4,) if len(shape) == 1 else shape
    if direction == "from_torch":
        torch.manual_seed(0)
        module = nn.Sequential(*leading_layers(nn, shape), cls(5, **options), nn.Tanh())
        for parameter in module.parameters():
            parameter.data.uniform_(-1, 1)
        model = from_torch(module, input_shape=input_shape)
    else:
        layer = getattr(L, cls.__name__)(5, **options)
        model = randomize(cn.Sequential(*leading_layers(L, shape), layer, L.Tanh(),
                                        input_shape=input_shape))
        module = to_torch(model)
    assert model.layers[0].training and module.training
    rng = np.random.default_rng(3)
    for step in range(3):
        x = rng.standard_normal((6,) + input_shape).astype(np.float32)
        grad = rng.standard_normal((6,) + shape).astype(np.float32)
        model.zero_grad()
        module.zero_grad()
        out = module(torch.from_numpy(x).requires_grad_())
        out.backward(torch.from_numpy(grad))
        np.testing.assert_allclose(model.forward(x), out.detach().numpy(), rtol=1e-5, atol=1e-5)
        model.backward(grad)
        for key, tensor in module.state_dict().items():  # running statistics, counts
            np.testing.assert_allclose(model.state_dict()[key], tensor.numpy(), rtol=1e-5,
                                       atol=1e-6, err_msg=f"step {step}: {key}")
        grads = {f"{index}.{p.name}": p.grad for index, layer in enumerate(model.layers)
                 for p in layer.parameters()}
        assert sorted(grads) == sorted(name for name, _ in module.named_parameters())
        for key, parameter in module.named_parameters():
            np.testing.assert_allclose(grads[key], parameter.grad.numpy(), rtol=1e-4,
                                       atol=1e-5, err_msg=f"step {step}: {key}.grad")
    assert_same_outputs(model, module, input_shape)


def test_layer_norm_and_dropout_from_torch():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.25), nn.LayerNorm(6, eps=1e-4),
                           nn.ReLU(), nn.LayerNorm(6, elementwise_affine=False),
                           nn.LayerNorm(6, bias=False)).double()
    for parameter in module.parameters():
        parameter.data.uniform_(-1, 1)
    model = from_torch(module)
    assert model.dtype == np.float64
    assert [layer.get_config() for layer in model.layers[1:3]] == [
        {"p": 0.25}, {"normalized_shape": [6], "eps": 1e-4, "elementwise_affine": True,
                      "bias": True, "dtype": "float64"}]
    assert [layer.get_config()["bias"] for layer in model.layers[4:]] == [True, False]
    assert all(layer.training for layer in model.layers)  # the module's mode
    assert_same_outputs(model, module, (4,), np.float64)
    back = to_torch(model.eval())
    assert not back.training
    assert_same_outputs(model, back, (4,), np.float64)


def test_pytorch_batch_norm_state_dicts_load_strictly_both_ways():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                           nn.Linear(12, 4), nn.BatchNorm1d(4, affine=False))
    module.train()
    for _ in range(2):  # running statistics and counts away from their defaults
        module(torch.randn(8, 2, 4, 4))
    model = cn.Sequential(L.Conv2d(2, 3, 3), L.BatchNorm2d(3), L.ReLU(), L.Flatten(),
                          L.Linear(12, 4), L.BatchNorm1d(4, affine=False),
                          input_shape=(2, 4, 4))
    assert model.load_state_dict(module.state_dict()) == ([], [])
    assert list(model.state_dict()) == list(module.state_dict())
    assert int(model.layers[1].num_batches_tracked.value) == 2
    assert model.layers[1].num_batches_tracked.value.dtype == np.int64
    assert_same_outputs(model, module, (2, 4, 4))
    fresh = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 4), nn.BatchNorm1d(4, affine=False))
    result = fresh.load_state_dict({key: torch.from_numpy(value)
                                    for key, value in model.state_dict().items()}, strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert_same_outputs(model, fresh, (2, 4, 4))


def test_a_layer_corenet_lacks_is_named_with_its_path():
    module = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), nn.GELU()))
    with pytest.raises(ValueError, match=r"no layer for GELU at '1\.1'"):
        from_torch(module)


@pytest.mark.parametrize("module, message", [
    (nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=0)), "dim=0 on 2-D inputs"),
    (nn.Sequential(nn.Linear(3, 3), nn.Softmax()), "Softmax.dim=None. is ambiguous"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect")), "padding_mode='reflect'"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(2)), "AdaptiveAvgPool.1. followed"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2, ceil_mode=True)), "ceil_mode"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(0)), "start_dim=1"),
])
def test_what_cannot_be_converted_is_named(module, message):
    with pytest.raises(ValueError, match=message):
        from_torch(module, input_shape=(1, 6, 6) if isinstance(module[0], nn.Conv2d) else None)


def replaced(module, name, value):
    """``module`` with its parameter or buffer ``name`` replaced (None removes it)."""
    setattr(module, name, value)
    return module


@pytest.mark.parametrize("make, error, message", [
    # numpy's broadcasting once filled all 3 rows of the weight from the one given
    (lambda: replaced(nn.Linear(4, 3), "weight", nn.Parameter(torch.ones(1, 4))), cn.ShapeError,
     r"from_torch: Linear: weight has shape \(1, 4\), expected \(3, 4\)"),
    (lambda: replaced(nn.BatchNorm1d(4), "running_mean", torch.zeros(1)), cn.ShapeError,
     r"from_torch: BatchNorm1d: running_mean has shape \(1,\), expected \(4,\)"),
    # once a ZeroDivisionError at the first training forward (momentum=None divides by it)
    (lambda: replaced(nn.BatchNorm1d(4, momentum=None), "num_batches_tracked",
                      torch.tensor(-1)), ValueError,
     "'num_batches_tracked' is a count of batches, from 0 to 9223372036854775807, got "
     "values from -1 to -1"),
    (lambda: replaced(nn.BatchNorm1d(4), "num_batches_tracked", torch.tensor(2.0)), cn.DTypeError,
     "from_torch: BatchNorm1d: num_batches_tracked is float32, expected int64"),
    (lambda: replaced(nn.BatchNorm1d(4), "running_mean", None), ValueError,
     r"from_torch: BatchNorm1d: running_mean is None, expected a tensor of shape \(4,\)"),
])
def test_from_torch_refuses_arrays_that_do_not_fit_the_layer(make, error, message):
    with pytest.raises(error, match=message):
        from_torch(make(), input_shape=(4,))


@pytest.mark.parametrize("layer, name, value, error, message", [
    # once reshaped silently into (3, 4)
    (L.Linear(4, 3), "weight", np.ones((4, 3), np.float32), cn.ShapeError,
     r"linear: parameter 'weight' must be a float32 array of shape \(3, 4\), got float32 "
     r"\(4, 3\)"),
    (L.Linear(4, 3), "weight", np.ones((5, 3), np.float32), cn.ShapeError,
     r"got float32 \(5, 3\)"),
    (L.Linear(4, 3), "weight", [[1.0] * 4] * 3, cn.ShapeError, "got list"),
    (L.Linear(4, 3), "weight", np.ones((3, 4), np.int64), cn.ShapeError,
     r"got int64 \(3, 4\)"),
    (L.BatchNorm1d(4), "running_mean", np.zeros(3, np.float32), cn.ShapeError,
     r"batch_norm1d: buffer 'running_mean' must be a writeable C-contiguous float32 array "
     r"of shape \(4,\), got float32 \(3,\)"),
    (L.BatchNorm1d(4), "num_batches_tracked", np.array(-1), ValueError,
     "batch_norm1d: 'num_batches_tracked' is a count of batches, from 0 to"),
])
def test_to_torch_checks_each_array_before_copying_it(layer, name, value, error, message):
    model = cn.Sequential(layer, input_shape=(4,))
    getattr(layer, name).value = value
    with pytest.raises(error, match=message):
        to_torch(model)


def test_to_torch_refuses_a_dag():
    x = cn.Input((4,))
    model = cn.Model(x, L.Add()(L.Linear(4, 4)(x), L.Linear(4, 4)(x)))
    with pytest.raises(ValueError, match="torch.nn.Sequential holds chains only"):
        to_torch(model)


def test_docstring_example():
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module("corenet.interop"))
    assert result.attempted > 0 and result.failed == 0


def test_each_layer_keeps_its_modules_mode_both_ways():
    # from_torch gave every layer the Sequential's mode: a BatchNorm in eval mode inside
    # a Sequential in training mode normalized by the batch, 7.1 off PyTorch's outputs.
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    module[1].running_mean.fill_(5.0)
    module[1].eval()
    module[2].eval()
    model = from_torch(module)
    assert [layer.training for layer in model.layers] == [True, False, False]
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_allclose(model.forward(x), module(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    back = to_torch(model)
    assert back.training and [child.training for child in back] == [True, False, False]
    np.testing.assert_allclose(back(torch.from_numpy(x)).detach().numpy(), model.forward(x),
                               rtol=1e-5, atol=1e-5)
