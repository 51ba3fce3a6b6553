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


CHAIN_ROWS = [row for row in LAYERS if len(row[2]) == 1]


@pytest.mark.parametrize("row", CHAIN_ROWS, ids=layer_id)
def test_every_single_input_layer_goes_to_torch_and_back(row):
    name, config, (shape,) = row
    model = cn.Sequential(L.create(name, **config), input_shape=shape)
    for parameter in model.parameters():  # away from the default initial values
        parameter.value[...] = np.random.default_rng(2).uniform(-1, 1, parameter.value.shape)
    module = to_torch(model)
    assert_same_outputs(model, module, shape)
    again = from_torch(module, input_shape=shape)
    assert [layer.get_config() for layer in again.layers] == \
        [layer.get_config() for layer in model.layers]
    assert_same_outputs(again, module, shape)


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
