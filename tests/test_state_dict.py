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


def batch_norm_model():
    return cn.Sequential(L.Linear(4, 3), L.BatchNorm1d(3), L.ReLU(),
                         L.BatchNorm1d(3, affine=False, track_running_stats=False))


@pytest.mark.parametrize("build, deleted, unexpected, wrong_shape, model_shape", [
    (mlp, ["0.bias"], "5.weight", ("2.weight", (6, 3)), (3, 6)),  # transposed
    # the batch norm at 3 tracks no running statistics
    (batch_norm_model, ["1.running_var", "1.num_batches_tracked"], "3.running_mean",
     ("1.running_mean", (4,)), (3,)),
])
def test_strict_load_lists_every_problem_and_writes_nothing(build, deleted, unexpected,
                                                            wrong_shape, model_shape):
    model = build()
    before = model.state_dict()
    state = model.state_dict()
    for key in deleted:
        del state[key]
    state[unexpected] = np.zeros(3, np.float32)
    state[wrong_shape[0]] = np.ones(wrong_shape[1], np.float32)
    with pytest.raises(cn.StateDictError) as caught:
        model.load_state_dict(state)
    message = str(caught.value)
    assert f"missing keys {deleted}" in message
    assert f"unexpected keys [{unexpected!r}]" in message
    assert f"{wrong_shape[0]!r} has shape {wrong_shape[1]}, the model's is {model_shape}" \
        in message
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


def test_running_statistics_follow_the_parameters_with_pytorch_names():
    model = batch_norm_model()
    state = model.state_dict()
    # PyTorch's order: a module's parameters, then its buffers; without
    # track_running_stats a batch norm keeps none.
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                           "1.running_var", "1.num_batches_tracked"]
    assert state["1.num_batches_tracked"].shape == () and \
        state["1.num_batches_tracked"].dtype == np.int64
    model.forward(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    assert int(model.layers[1].num_batches_tracked.value) == 1
    assert int(state["1.num_batches_tracked"]) == 0  # a copy
    assert not np.array_equal(model.state_dict()["1.running_mean"], state["1.running_mean"])


def test_buffers_load_in_place_and_counts_take_any_integer():
    source, target = batch_norm_model(), batch_norm_model()
    for _ in range(3):
        source.forward(np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32))
    running_var = target.layers[1].running_var.value
    state = source.state_dict()
    state["1.num_batches_tracked"] = np.array(3, np.int32)
    assert target.load_state_dict(state) == ([], [])
    assert target.layers[1].running_var.value is running_var
    assert target.layers[1].num_batches_tracked.value.dtype == np.int64
    for key, value in target.state_dict().items():
        np.testing.assert_array_equal(value, source.state_dict()[key])
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(target.predict(x), source.predict(x))


def test_non_strict_load_leaves_missing_buffers_alone():
    model = batch_norm_model()
    state = model.state_dict()
    del state["1.running_var"], state["1.num_batches_tracked"]
    state["1.running_mean"] = np.ones(3, np.float32)
    assert model.load_state_dict(state, strict=False) == \
        (["1.running_var", "1.num_batches_tracked"], [])
    np.testing.assert_array_equal(model.layers[1].running_mean.value, 1)
    np.testing.assert_array_equal(model.layers[1].running_var.value, 1)


@pytest.mark.parametrize("key, value, message", [
    ("1.num_batches_tracked", np.array(2.0), "'1.num_batches_tracked' must be an integer "
                                             "array \\(a count\\), got dtype float64"),
    ("1.num_batches_tracked", np.array(True), "must be an integer array"),
    ("1.running_mean", np.zeros(3, np.int64), "'1.running_mean' must be a float array, "
                                              "got dtype int64"),
])
def test_buffer_dtypes_are_checked(key, value, message):
    model = batch_norm_model()
    state = model.state_dict()
    state[key] = value
    with pytest.raises(cn.DTypeError, match=message):
        model.load_state_dict(state)


@pytest.mark.parametrize("count, shown", [(np.array(-1), "-1 to -1"),
                                          (np.array(2**64 - 1, np.uint64),
                                           "18446744073709551615 to 18446744073709551615")])
def test_a_count_below_zero_or_beyond_int64_is_refused(count, shown):
    # -1 loaded, then a momentum=None batch norm divided by the count plus one: a
    # ZeroDivisionError at the next training forward; 2**64 - 1 wrapped around to -1.
    model = cn.Sequential(L.Linear(4, 3), L.BatchNorm1d(3, momentum=None))
    state = model.state_dict()
    state["1.num_batches_tracked"] = count
    with pytest.raises(cn.StateDictError, match=f"'1.num_batches_tracked' is a count of "
                                                f"batches, from 0 to {2**63 - 1}, got values "
                                                f"from {shown}"):
        model.load_state_dict(state)
    assert int(model.layers[1].num_batches_tracked.value) == 0  # nothing written
    model.forward(np.ones((2, 4), np.float32))
    assert int(model.layers[1].num_batches_tracked.value) == 1


@pytest.mark.parametrize("value, message", [
    ([[1.0, 2.0, 3.0, 4.0]] * 2 + [[1.0]], r"'0.weight' is not an array numpy can take "
                                           r"\(list\): setting an array element"),
])
def test_a_value_numpy_cannot_take_is_a_type_error_naming_the_key(value, message):
    model = mlp()
    state = model.state_dict()
    state["0.weight"] = value
    with pytest.raises(TypeError, match=message):
        model.load_state_dict(state)


def test_a_torch_tensor_that_requires_grad_is_a_type_error_naming_the_key():
    torch = pytest.importorskip("torch")
    model = mlp()
    state = model.state_dict()
    state["0.weight"] = torch.ones(state["0.weight"].shape, requires_grad=True)
    # It was torch's RuntimeError "Can't call numpy() on Tensor that requires grad".
    with pytest.raises(TypeError, match=r"'0.weight' is not an array numpy can take "
                                        r"\(Tensor\): Can't call numpy\(\)"):
        model.load_state_dict(state)
