"""Model.state_dict and load_state_dict: PyTorch's keys, strict checks, in place."""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L


def mlp():
    return cn.Sequential(L.Linear(4, 6), L.ReLU(), L.Linear(6, 3))


def test_state_dict_keys_are_pytorch_sequential_keys_and_values_are_copies():
    model = mlp()
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert state["2.weight"].shape == (3, 6) and state["2.weight"].dtype == np.float32
    state["0.weight"][:] = 7  # the model keeps its own arrays
    assert not np.any(model.layers[0].weight.value == 7)


def test_dag_keys_follow_the_node_order():
    x = cn.Input((4,))
    y = L.Add()(L.Linear(4, 5)(x), L.Linear(4, 5, bias=False)(x))
    model = cn.Model(x, L.Linear(5, 2)(y))
    assert list(model.state_dict()) == [f"{i}.{p.name}" for i, layer in enumerate(model.layers)
                                        for p in layer.parameters()]
    assert [layer.name for layer in model.layers] == ["linear", "linear", "add", "linear"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "3.weight", "3.bias"]


def test_load_state_dict_copies_in_place_and_casts_floats():
    source, target = mlp(), mlp()
    weight = target.layers[0].weight.value
    state = {key: value.astype(np.float64) for key, value in source.state_dict().items()}
    assert target.load_state_dict(state) == ([], [])
    assert target.layers[0].weight.value is weight  # an optimizer holding it sees the change
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(target.forward(x), source.forward(x))


def test_strict_load_lists_every_problem_and_writes_nothing():
    model = mlp()
    before = model.state_dict()
    state = model.state_dict()
    del state["0.bias"]
    state["5.weight"] = np.zeros(3, np.float32)
    state["2.weight"] = np.ones((6, 3), np.float32)  # transposed
    with pytest.raises(cn.StateDictError) as caught:
        model.load_state_dict(state)
    message = str(caught.value)
    assert "missing keys ['0.bias']" in message
    assert "unexpected keys ['5.weight']" in message
    assert "'2.weight' has shape (6, 3), the model's is (3, 6)" in message
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_non_strict_load_returns_what_it_left_out():
    model, other = mlp(), mlp()
    state = other.state_dict()
    del state["2.bias"]
    state["extra"] = np.zeros(1, np.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert (missing, unexpected) == (["2.bias"], ["extra"])
    np.testing.assert_array_equal(model.layers[2].weight.value, other.layers[2].weight.value)
    # A shape that differs is an error even when not strict, as in PyTorch.
    state["2.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(cn.StateDictError, match="'2.weight' has shape"):
        model.load_state_dict(state, strict=False)


def test_load_state_dict_refuses_integer_arrays_and_non_dicts():
    model = mlp()
    state = model.state_dict()
    state["0.bias"] = np.zeros(6, np.int64)
    with pytest.raises(cn.DTypeError, match="'0.bias' must be a float array, got dtype int64"):
        model.load_state_dict(state)
    with pytest.raises(TypeError, match="expected a dict of arrays, got list"):
        model.load_state_dict([1, 2])
