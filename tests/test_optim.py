"""Optimizers against plain numpy written from PyTorch's documented update rules and,
where installed, against torch.optim itself; parameter groups, state dicts, gradient
clipping and the checks that keep bad arrays out of the kernels."""
import math

import numpy as np
import pytest

import corenet
import corenet.layers as L
from corenet import testing
from corenet.errors import DTypeError, ShapeError
from corenet.kernels import optim as kernels
from corenet.train import train_step
from corenet.optim import (SGD, Adam, AdamW, RMSprop, clip_grad_norm, weight_decay_groups)

try:
    import torch
except ImportError:  # the tests that do not compare with PyTorch run without it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")

# Odd sizes: vector tails, and a parameter above the kernels' grain that the threads
# share, in blocks with a remainder.
SHAPES = [(7, 13), (13,), (40_009,)]
STEPS = 12

CASES = {
    "sgd": (SGD, dict(lr=0.1)),
    "sgd-momentum-decay": (SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    "sgd-dampening": (SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    "sgd-nesterov": (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam": (Adam, dict()),
    "adam-l2-amsgrad": (Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    "adam-small-betas": (Adam, dict(lr=0.01, betas=(0.3, 0.6))),  # lerp's other form
    "adamw": (AdamW, dict(lr=0.01)),
    "adamw-amsgrad": (AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True, eps=1e-6)),
    "rmsprop": (RMSprop, dict()),
    "rmsprop-momentum": (RMSprop, dict(momentum=0.5, weight_decay=0.01)),
    "rmsprop-centered": (RMSprop, dict(centered=True, alpha=0.9)),
    "rmsprop-centered-momentum": (RMSprop, dict(lr=0.001, momentum=0.9, centered=True)),
    "rmsprop-centered-small-alpha": (RMSprop, dict(centered=True, alpha=0.4)),
}
# float32: a few units of rounding, grown over the steps (measured: at most ~2e-6).
TOLERANCE = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}


# -- numpy references, from the update rules in PyTorch's documentation -----------------

def reference_sgd(value, grads, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                  nesterov=False):
    buffer = None
    for grad in grads:
        direction = grad + weight_decay * value
        if momentum:
            buffer = direction.copy() if buffer is None else \
                momentum * buffer + (1 - dampening) * direction
            direction = direction + momentum * buffer if nesterov else buffer
        value = value - lr * direction
    return value


def reference_adam(value, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                   amsgrad=False, decoupled=False):
    beta1, beta2 = betas
    first, second, largest = (np.zeros_like(value) for _ in range(3))
    for t, grad in enumerate(grads, start=1):
        if decoupled:
            value = value * (1 - lr * weight_decay)
        else:
            grad = grad + weight_decay * value
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad * grad
        largest = np.maximum(largest, second)
        first_hat = first / (1 - beta1 ** t)
        second_hat = (largest if amsgrad else second) / (1 - beta2 ** t)
        value = value - lr * first_hat / (np.sqrt(second_hat) + eps)
    return value


def reference_adamw(value, grads, weight_decay=1e-2, **settings):
    return reference_adam(value, grads, weight_decay=weight_decay, decoupled=True, **settings)


def reference_rmsprop(value, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                      momentum=0.0, centered=False):
    square_avg, grad_avg, buffer = (np.zeros_like(value) for _ in range(3))
    for grad in grads:
        grad = grad + weight_decay * value
        square_avg = alpha * square_avg + (1 - alpha) * grad * grad
        if centered:
            grad_avg = alpha * grad_avg + (1 - alpha) * grad
            denominator = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            denominator = np.sqrt(square_avg) + eps
        if momentum:
            buffer = momentum * buffer + grad / denominator
            value = value - lr * buffer
        else:
            value = value - lr * grad / denominator
    return value


REFERENCES = {SGD: reference_sgd, Adam: reference_adam, AdamW: reference_adamw,
              RMSprop: reference_rmsprop}


def make_parameters(rng, dtype, shapes=SHAPES):
    return [corenet.Parameter(name, rng.standard_normal(shape).astype(dtype))
            for name, shape in zip(["weight", "bias", "big"], shapes)]


def gradient_steps(rng, params, steps=STEPS):
    """Per step, one random gradient per parameter (of its dtype)."""
    return [[rng.standard_normal(p.value.shape).astype(p.value.dtype) for p in params]
            for _ in range(steps)]


def run(optimizer, params, steps):
    for grads in steps:
        for parameter, grad in zip(params, grads):
            parameter.grad[...] = grad
        optimizer.step()


def run_both(ours, theirs, params, tensors, steps):
    """The same gradients through a corenet and a torch.optim optimizer."""
    for grads in steps:
        for parameter, tensor, grad in zip(params, tensors, grads):
            parameter.grad[...] = grad
            tensor.grad = torch.tensor(grad.copy())
        ours.step()
        theirs.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_matches_the_numpy_reference(case, dtype, rng):
    kind, settings = CASES[case]
    params = make_parameters(rng, dtype)
    starts = [p.value.copy() for p in params]
    steps = gradient_steps(rng, params)
    run(kind(params, **settings), params, steps)
    for index, (parameter, start) in enumerate(zip(params, starts)):
        expected = REFERENCES[kind](start, [grads[index] for grads in steps], **settings)
        assert parameter.value.dtype == dtype
        np.testing.assert_allclose(parameter.value, expected, **TOLERANCE[dtype])


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_matches_torch_optim(case, dtype, rng):
    kind, settings = CASES[case]
    params = make_parameters(rng, dtype)
    tensors = [torch.tensor(p.value.copy(), requires_grad=True) for p in params]
    theirs = getattr(torch.optim, kind.__name__)(tensors, **settings)
    ours = kind(params, **settings)
    run_both(ours, theirs, params, tensors, gradient_steps(rng, params))
    for parameter, tensor in zip(params, tensors):
        np.testing.assert_allclose(parameter.value, tensor.detach().numpy(), **TOLERANCE[dtype])
    # The state holds the same moments under PyTorch's names.
    saved = ours.state_dict()["state"]
    for index, tensor in enumerate(tensors):
        for name, value in theirs.state[tensor].items():
            if name == "step" or value is None:
                continue
            np.testing.assert_allclose(saved[index][name], value.numpy(), **TOLERANCE[dtype])


@pytest.mark.parametrize("case", CASES)
def test_bitwise_the_same_on_1_and_2_threads(case, rng, threads):
    kind, settings = CASES[case]
    steps = gradient_steps(rng, make_parameters(rng, np.float32))
    results = []
    for n_threads in (1, 2):
        corenet.set_num_threads(n_threads)
        params = make_parameters(np.random.default_rng(1), np.float32)
        run(kind(params, **settings), params, steps)
        results.append([p.value for p in params])
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


# -- settings -----------------------------------------------------------------------

def test_defaults_are_pytorchs(rng):
    params = make_parameters(rng, np.float64)
    assert SGD(params).defaults == dict(lr=1e-3, momentum=0.0, dampening=0.0,
                                        weight_decay=0.0, nesterov=False)
    assert Adam(params).defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=0.0, amsgrad=False)
    assert AdamW(params).defaults["weight_decay"] == 1e-2
    assert RMSprop(params).defaults == dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                                            momentum=0.0, centered=False)


@pytest.mark.parametrize("kind, settings, message", [
    (SGD, dict(lr=float("nan")), "SGD: lr must be a finite number >= 0"),
    (SGD, dict(lr=-0.1), "SGD: lr must be a finite number >= 0, got -0.1"),
    # An int beyond float's range was math.isfinite's OverflowError.
    (SGD, dict(lr=10 ** 400), "SGD: lr must be a finite number >= 0, got 1000000"),
    (SGD, dict(momentum=-1), "SGD: momentum must be a finite number >= 0"),
    (SGD, dict(nesterov=True), "SGD: Nesterov momentum needs momentum > 0 and dampening 0"),
    (SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "needs momentum > 0 and dampen"),
    (Adam, dict(betas=(0.9, 1.0)), r"Adam: betas\[1\] must be a finite number in \[0, 1\)"),
    (Adam, dict(betas=0.9), "Adam: betas must be a pair"),
    (AdamW, dict(eps=-1e-8), "AdamW: eps must be a finite number >= 0"),
    (AdamW, dict(weight_decay=float("inf")), "AdamW: weight_decay must be a finite number"),
    (RMSprop, dict(alpha=-0.5), "RMSprop: alpha must be a finite number >= 0"),
    # The average of squares went negative: NaN weights from the first step.
    (RMSprop, dict(alpha=1.5), r"RMSprop: alpha must be in \[0, 1\], got 1.5"),
])
def test_bad_settings_are_clear_errors(kind, settings, message, rng):
    with pytest.raises(ValueError, match=message):
        kind(make_parameters(rng, np.float32), **settings)


def test_flags_must_be_booleans(rng):
    with pytest.raises(TypeError, match="Adam: amsgrad must be True or False, got 'yes'"):
        Adam(make_parameters(rng, np.float32), amsgrad="yes")
    with pytest.raises(TypeError, match="RMSprop: centered must be True or False"):
        RMSprop(make_parameters(rng, np.float32), centered=1)


def test_no_parameters_is_an_error(rng):
    with pytest.raises(ValueError, match="SGD: got no parameters"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Adam: got no parameters to optimize .every group"):
        Adam([{"params": []}])
    with pytest.raises(TypeError, match="params must be a list of Parameters .* got one "
                                        "Parameter"):
        Adam(make_parameters(rng, np.float32)[0])
    with pytest.raises(TypeError, match="Adam: params must hold corenet.Parameter objects, got ndarray"):
        Adam([np.zeros(3)])


def test_lr_reads_and_sets_every_group(rng):
    weight, bias, _ = make_parameters(rng, np.float32)
    optimizer = Adam([weight, bias], lr=0.01)
    optimizer.lr = 0.5
    assert optimizer.lr == 0.5 and optimizer.param_groups[0]["lr"] == 0.5
    grouped = Adam([{"params": [weight]}, {"params": [bias], "lr": 0.1}])
    with pytest.raises(ValueError, match=r"different learning rates \[0.001, 0.1\]"):
        grouped.lr
    with pytest.raises(ValueError, match="Adam: lr must be a finite number"):
        grouped.lr = -1.0


@pytest.mark.parametrize("key, value, error, message", [
    ("lr", float("nan"), ValueError, "SGD: lr must be a finite number >= 0, got nan"),
    ("lr", float("inf"), ValueError, "SGD: lr must be a finite number >= 0, got inf"),
    ("lr", "0.1", ValueError, "SGD: lr must be a finite number >= 0, got '0.1'"),
    ("momentum", None, ValueError, "SGD: momentum must be a finite number >= 0, got None"),
    ("nesterov", "yes", TypeError, "SGD: nesterov must be True or False, got 'yes'"),
])
def test_settings_written_into_param_groups_are_checked_at_step(key, value, error, message,
                                                                 rng):
    # As a torch scheduler does: write the group's setting between steps. A NaN lr made
    # NaN weights silently; a string one was the kernel's "must be real number, not str".
    params = make_parameters(rng, np.float32)
    optimizer = SGD(params, lr=0.1, momentum=0.9)
    optimizer.step()
    before = [p.value.copy() for p in params]
    optimizer.param_groups[0][key] = value
    with pytest.raises(error, match=message):
        optimizer.step()
    for parameter, value_before in zip(params, before):
        np.testing.assert_array_equal(parameter.value, value_before)


# -- parameter groups -----------------------------------------------------------------

def test_each_group_uses_its_own_settings(rng):
    weight, bias, big = make_parameters(rng, np.float64)
    starts = [p.value.copy() for p in (weight, bias, big)]
    optimizer = AdamW([{"params": [weight, big], "weight_decay": 0.1},
                       {"params": [bias], "lr": 0.02, "weight_decay": 0.0}], lr=0.01)
    assert optimizer.param_groups[1] == {"params": [bias], "lr": 0.02, "betas": (0.9, 0.999),
                                         "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    steps = gradient_steps(rng, [weight, bias, big], 4)
    run(optimizer, [weight, bias, big], steps)
    settings = [dict(lr=0.01, weight_decay=0.1), dict(lr=0.02, weight_decay=0.0),
                dict(lr=0.01, weight_decay=0.1)]
    for index, (parameter, start) in enumerate(zip((weight, bias, big), starts)):
        expected = reference_adamw(start, [grads[index] for grads in steps], **settings[index])
        np.testing.assert_allclose(parameter.value, expected, rtol=1e-12)


@needs_torch
def test_groups_match_torch(rng):
    params = make_parameters(rng, np.float32)
    tensors = [torch.tensor(p.value.copy(), requires_grad=True) for p in params]

    def groups(items):
        return [{"params": [items[0], items[2]], "weight_decay": 0.05},
                {"params": [items[1]], "lr": 0.003, "momentum": 0.0}]
    ours = RMSprop(groups(params), lr=0.001, momentum=0.9)
    theirs = torch.optim.RMSprop(groups(tensors), lr=0.001, momentum=0.9)
    run_both(ours, theirs, params, tensors, gradient_steps(rng, params, 6))
    for parameter, tensor in zip(params, tensors):
        np.testing.assert_allclose(parameter.value, tensor.detach().numpy(), rtol=2e-5,
                                   atol=2e-5)


def test_group_errors_name_the_problem(rng):
    weight, bias, big = make_parameters(rng, np.float32)
    with pytest.raises(ValueError, match=r"parameter 'weight' \(7, 13\) is in more than one"):
        Adam([{"params": [weight, bias]}, {"params": [weight]}])
    with pytest.raises(ValueError, match="'bias' .* is in more than one parameter group "
                                         r"\(or twice in one\)"):
        SGD([weight, bias, bias], lr=0.1)
    with pytest.raises(ValueError, match=r"Adam: unknown setting\(s\) \['momentum'\] in a "
                                         r"parameter group; it takes \['amsgrad', 'betas', "):
        Adam([{"params": [weight], "momentum": 0.9}])
    with pytest.raises(ValueError, match="Adam: a parameter group needs a 'params' list"):
        Adam([{"lr": 0.1}])
    with pytest.raises(TypeError, match="a parameter group must be a dict, got Parameter"):
        Adam([{"params": [weight]}, bias])
    with pytest.raises(ValueError, match="SGD: lr must be a finite number >= 0, got -1"):
        SGD([{"params": [weight], "lr": -1}])
    optimizer = Adam([weight])
    with pytest.raises(ValueError, match="'weight' .* is in more than one"):
        optimizer.add_param_group({"params": [weight]})
    optimizer.add_param_group({"params": [bias], "lr": 0.5})
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 0.5]


def test_weight_decay_groups_leave_biases_undecayed():
    model = corenet.Sequential(L.Linear(5, 4), L.PReLU(4), L.Linear(4, 3))
    groups = weight_decay_groups(model.parameters(), 0.1)
    assert [[p.value.shape for p in g["params"]] for g in groups] == [
        [(4, 5), (3, 4)], [(4,), (4,), (3,)]]
    optimizer = AdamW(groups, lr=0.5)
    before = [p.value.copy() for p in model.parameters()]
    model.zero_grad()
    optimizer.step()  # zero gradients: only the decay moves a parameter
    for parameter, start in zip(model.parameters(), before):
        factor = 1.0 if parameter.value.ndim == 1 else np.float32(1 - 0.5 * 0.1)
        np.testing.assert_array_equal(parameter.value, start * factor)
    only_weights = weight_decay_groups(model.parameters(), 0.1,
                                       exclude=lambda p: p.name == "bias")
    assert [len(g["params"]) for g in only_weights] == [3, 2]


# -- the state dict -------------------------------------------------------------------

def plain(value) -> bool:
    """numpy arrays and plain Python values only, all the way down."""
    if isinstance(value, dict):
        return all(type(key) in (int, str) and plain(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(item) for item in value)
    return isinstance(value, np.ndarray) or type(value) in (int, float, bool, str)


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trips_exactly(case, rng):
    kind, settings = CASES[case]
    steps = gradient_steps(rng, make_parameters(rng, np.float32), 6)
    params = make_parameters(np.random.default_rng(1), np.float32)
    optimizer = kind(weight_decay_groups(params, settings.get("weight_decay", 0.0)),
                     **settings)
    run(optimizer, params, steps[:3])
    saved = optimizer.state_dict()
    assert plain(saved)
    assert all(state["step"] == 3 for state in saved["state"].values())
    assert sorted(saved["state"]) == [0, 1, 2]
    copies = [p.value.copy() for p in params]
    run(optimizer, params, steps[3:])
    assert all(state["step"] == 3 for state in saved["state"].values())  # copies, not views

    resumed = [corenet.Parameter(p.name, value) for p, value in zip(params, copies)]
    fresh = kind(weight_decay_groups(resumed, 0.5), lr=0.123)  # settings come from the dict
    fresh.load_state_dict(saved)
    again = fresh.state_dict()
    assert again["param_groups"] == saved["param_groups"]
    for index, state in saved["state"].items():
        assert again["state"][index].keys() == state.keys()
        for name, value in state.items():
            np.testing.assert_array_equal(again["state"][index][name], value)
    run(fresh, resumed, steps[3:])
    for one, two in zip(params, resumed):
        np.testing.assert_array_equal(one.value, two.value)


def test_state_dict_before_any_step_and_parameters_without_grads(rng):
    params = make_parameters(rng, np.float64)
    optimizer = Adam(params)
    assert optimizer.state_dict() == {"state": {}, "param_groups": [
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
         "amsgrad": False, "params": [0, 1, 2]}]}
    params[1].grad = None  # no gradient: no step, no state, as torch.optim
    optimizer.step()
    assert sorted(optimizer.state_dict()["state"]) == [0, 2]


@needs_torch
def test_state_dict_is_shaped_like_torchs(rng):
    params = make_parameters(rng, np.float32)
    tensors = [torch.tensor(p.value.copy(), requires_grad=True) for p in params]
    ours, theirs = AdamW(params, amsgrad=True), torch.optim.AdamW(tensors, amsgrad=True)
    for parameter, tensor in zip(params, tensors):
        parameter.grad[...] = 1
        tensor.grad = torch.ones_like(tensor)
    ours.step()
    theirs.step()
    saved, reference = ours.state_dict(), theirs.state_dict()
    assert saved["state"].keys() == reference["state"].keys()
    for index in saved["state"]:
        assert saved["state"][index].keys() == reference["state"][index].keys()
        assert saved["state"][index]["step"] == reference["state"][index]["step"].item()
    for group, torch_group in zip(saved["param_groups"], reference["param_groups"]):
        assert group["params"] == torch_group["params"]
        assert all(group[key] == torch_group[key] for key in ours.defaults)


def broken(saved, change):
    """A deep copy of a state dict with one change."""
    copy = {"state": {index: dict(state) for index, state in saved["state"].items()},
            "param_groups": [dict(group) for group in saved["param_groups"]]}
    change(copy)
    return copy


@pytest.mark.parametrize("change, error, message", [
    (lambda d: d.pop("state"), ValueError, "expected a dict with 'state' and 'param_groups'"),
    (lambda d: d["param_groups"].append({"params": []}), ValueError,
     "the state dict has 2 parameter groups, the optimizer 1"),
    (lambda d: d["param_groups"][0].update(params=[0, 1]), ValueError,
     "parameter group 0 has 2 parameters in the state dict, 3 in the optimizer"),
    (lambda d: d["param_groups"][0].update(params=[0, 1, 1]), ValueError,
     "parameter indices must be distinct integers, got 1"),
    (lambda d: d["param_groups"][0].update(lr=-1.0), ValueError,
     "Adam: lr must be a finite number >= 0"),
    (lambda d: d["param_groups"][0].update(nesterov=True), ValueError,
     r"Adam: unknown setting\(s\) \['nesterov'\]"),
    (lambda d: d["state"].update({7: d["state"][0]}), ValueError,
     "state for parameter index 7, which no group lists"),
    (lambda d: d["state"][0].update(exp_avg=np.zeros((13, 7), np.float32)), ShapeError,
     r"exp_avg of parameter 'weight' must have its shape \(7, 13\), got \(13, 7\)"),
    (lambda d: d["state"][1].update(exp_avg_sq=np.zeros(13)), DTypeError,
     "exp_avg_sq of parameter 'bias' must be a float32 array, got float64"),
    (lambda d: d["state"][1].update(exp_avg_sq=[0.0] * 13), DTypeError,
     "must be a float32 array, got list"),
    (lambda d: d["state"][2].pop("exp_avg"), ValueError,
     r"the state of parameter 'big' lacks \['exp_avg'\]"),
    (lambda d: d["state"][2].update(momentum_buffer=d["state"][2]["exp_avg"]), ValueError,
     r"unknown state \['momentum_buffer'\] for parameter 'big'; Adam keeps"),
    (lambda d: d["state"][0].update(step=-1), ValueError,
     r"the step count of parameter 'weight' must be an integer >= 0 and < 2\*\*62, got -1"),
    (lambda d: d["state"][0].update(step=2.5), ValueError, r"< 2\*\*62, got 2.5"),
    # Taken before, then refused by the first step() with a message naming no source.
    (lambda d: d["state"][0].update(step=2 ** 62), ValueError,
     r"Adam.load_state_dict: the step count of parameter 'weight' must be an integer >= 0 "
     r"and < 2\*\*62, got 4611686018427387904"),
    (lambda d: d["state"][0].update(step=np.uint64(2 ** 64 - 1)), ValueError,
     r"< 2\*\*62, got (np.uint64\()?18446744073709551615"),
    # Sorting the unknown names 5 and "zz" was a TypeError from '<'.
    (lambda d: d["param_groups"][0].update({5: 1, "zz": 1}), ValueError,
     r"unknown setting\(s\) \[5, 'zz'\] in a parameter group"),
])
def test_load_state_dict_refuses_a_mismatch_and_changes_nothing(change, error, message, rng):
    params = make_parameters(rng, np.float32)
    optimizer = Adam(params, lr=0.01)
    run(optimizer, params, gradient_steps(rng, params, 2))
    saved = optimizer.state_dict()
    target = Adam(make_parameters(rng, np.float32))
    before = target.state_dict()
    with pytest.raises(error, match=message):
        target.load_state_dict(broken(saved, change))
    assert target.state_dict() == before


def test_loaded_arrays_are_copies(rng):
    params = make_parameters(rng, np.float64)
    optimizer = SGD(params, lr=0.1, momentum=0.9)
    run(optimizer, params, gradient_steps(rng, params, 1))
    saved = optimizer.state_dict()
    other = SGD(make_parameters(rng, np.float64), lr=0.1, momentum=0.9)
    other.load_state_dict(saved)
    saved["state"][0]["momentum_buffer"][...] = 0
    assert other.state_dict()["state"][0]["momentum_buffer"].any()


# -- parameters replaced between steps, and the kernels' own checks ---------------------

def test_zero_grad(rng):
    params = make_parameters(rng, np.float64)
    for p in params:
        p.grad[...] = 1
    SGD(params, lr=0.1).zero_grad()
    assert all(not p.grad.any() for p in params)


def small_network(dtype=np.float32, like=None):
    """Linear layers, fused and not, and a maxout; the weights of ``like`` if given."""
    model = corenet.Sequential(L.Linear(6, 5), L.ReLU(), L.Linear(5, 4), L.Tanh(),
                               L.Linear(4, 3, bias=False), L.Sigmoid(), L.Maxout(3, 2, 2),
                               input_shape=(6,)).astype(dtype)
    if like is not None:
        model.load_state_dict(like.state_dict())
    return model


@pytest.mark.parametrize("owner", ["optimizer", "model", "layer"])
def test_zero_grad_set_to_none_unsets_the_grads_and_keeps_their_arrays(owner):
    model = small_network()
    layer = model.layers[0]
    optimizer = SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad[...] = 1
    arrays = [id(p.grad) for p in model.parameters()]  # ids: a reference would be kept
    {"optimizer": optimizer, "model": model, "layer": layer}[owner].zero_grad(set_to_none=True)
    unset = layer.parameters() if owner == "layer" else model.parameters()
    assert all(p.grad is None for p in unset)
    model.backward(np.ones_like(model.forward(np.ones((2, 6), np.float32))))
    # The next backward writes the same arrays (a step allocates no gradient), from zero.
    assert [id(p.grad) for p in model.parameters()] == arrays
    reference = small_network(like=model)
    reference.backward(np.ones_like(reference.forward(np.ones((2, 6), np.float32))))
    expected = reference.layers[0].parameters() if owner == "layer" else reference.parameters()
    assert len(expected) == len(unset)
    for p, wanted in zip(unset, expected):
        np.testing.assert_array_equal(p.grad, wanted.grad)


def bits(array):
    return array.view(np.uint32 if array.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [7, 1100])  # 1100: the GEMM's packed kernel, k blocks
def test_a_step_with_unset_grads_is_bitwise_a_step_from_zeroed_grads(dtype, batch, rng):
    # train_step unsets the grads: Linear's GEMM then writes dW (beta = 0) where it
    # added into zeros. Its accumulators start at +0, so x + 0 is x, bit for bit.
    x = rng.standard_normal((batch, 6)).astype(dtype)
    y = rng.integers(0, 2, batch)
    loss = corenet.losses.SoftmaxCrossEntropy()
    unset = small_network(dtype)
    zeroed = small_network(dtype, like=unset)
    if batch > 7:  # wide enough for the packed kernel's full tiles
        unset.layers[0].weight.value = rng.standard_normal((5, 6)).astype(dtype)
        zeroed.layers[0].weight.value = unset.layers[0].weight.value.copy()
    first = SGD(unset.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    second = SGD(zeroed.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(4):
        train_step(unset, loss, first, x, y)
        second.zero_grad()
        loss.forward(zeroed.forward(x), y)
        zeroed.backward(loss.backward())
        second.step()
        for a, b in zip(unset.parameters(), zeroed.parameters()):
            np.testing.assert_array_equal(bits(a.value), bits(b.value))
            np.testing.assert_array_equal(bits(a.grad), bits(b.grad))


def test_a_parameter_that_backward_does_not_reach_keeps_no_grad_and_no_update():
    p = corenet.Parameter("w", np.ones(3, np.float32))
    optimizer = SGD([p], lr=0.5, momentum=0.9, weight_decay=0.1)
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()  # as torch.optim: no gradient, no update (not even weight decay)
    assert p.grad is None
    np.testing.assert_array_equal(p.value, 1)


def test_a_grad_array_shared_or_held_elsewhere_is_zeroed_not_unset():
    # Two Parameters sharing one grad (tied weights), and only one of them unset: the
    # next backward overwrote the shared array where the other layer had added.
    first, second = L.Linear(4, 3), L.Linear(4, 3)
    second.weight.grad = first.weight.grad
    view_owner = L.Linear(4, 3)
    view_owner.weight.grad = np.zeros(12, np.float32)[:].reshape(3, 4)  # a view
    kept = L.Linear(4, 3)
    held = kept.weight.grad  # a reference the caller keeps
    for layer in (first, second, view_owner, kept):
        layer.weight.grad[...] = 1
    SGD([first.weight, view_owner.weight, kept.weight], lr=0.1).zero_grad(set_to_none=True)
    for grad in (first.weight.grad, second.weight.grad, view_owner.weight.grad, held):
        assert grad is not None and not grad.any()
    x = np.ones((2, 4), np.float32)
    for layer in (second, first):  # the second adds, then the first must add too
        layer.backward(np.ones_like(layer.forward(x)))
    np.testing.assert_array_equal(first.weight.grad, 4)


def test_model_zero_grad_set_to_none_takes_a_plugin_whose_zero_grad_has_no_argument():
    class Plain(L.Linear):
        calls = 0

        def zero_grad(self):  # clears something of its own too
            type(self).calls += 1
            super().zero_grad()

    model = corenet.Sequential(Plain(3, 2), input_shape=(3,))
    model.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    assert Plain.calls == 1  # its own clearing ran, then the grads were unset
    testing.check_unset_grads(Plain, {"in_features": 3, "out_features": 2}, [(3,)])


def test_a_shared_grad_is_told_apart_whatever_python_counts():
    from corenet.layer import UNSHARED_GRAD_REFERENCES, _grad_unshared

    parameter = corenet.Parameter("w", np.ones(3, np.float32))
    assert _grad_unshared(parameter)
    held = parameter.grad
    assert not _grad_unshared(parameter)
    del held
    assert _grad_unshared(parameter) and UNSHARED_GRAD_REFERENCES >= 2


def test_an_unset_grad_whose_array_no_longer_fits_gets_a_new_one():
    layer = L.Linear(3, 2)
    layer.weight.unset_grad()
    layer.weight._spare_grad = np.zeros((3, 2), np.float32)  # the layer's shape changed
    layer.backward(np.ones_like(layer.forward(np.ones((4, 3), np.float32))))
    np.testing.assert_array_equal(layer.weight.grad, np.full((2, 3), 4))
    layer.weight.unset_grad()
    layer.weight._spare_grad.flags.writeable = False
    layer.backward(np.ones((4, 2), np.float32))
    assert layer.weight.grad.flags.writeable
    np.testing.assert_array_equal(layer.weight.grad, np.full((2, 3), 4))


def test_a_linear_backward_that_fails_leaves_zeros_in_an_unset_grad():
    # The spare array holds the last step's gradient: a backward that raised before
    # writing it must not leave that for the next backward to add to.
    layer = L.Linear(3, 2)
    layer.forward(np.ones((4, 3), np.float32))
    layer.backward(np.ones((4, 2), np.float32))
    layer.weight.unset_grad()
    layer._fusion = (1, 0.0)  # as if a relu were fused: backward asks for a buffer
    layer.needs_input_grad = False  # (and not for x_grad's before that)

    def no_memory(key, shape, dtype):
        raise MemoryError(f"no memory for {key}")
    layer.buffer = no_memory
    with pytest.raises(MemoryError, match="no memory for pre_activation_grad"):
        layer.backward(np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(layer.weight.grad, 0)


def test_train_step_takes_an_optimizer_whose_zero_grad_takes_no_argument(rng):
    class Plain(SGD):
        def zero_grad(self):
            super().zero_grad()

    model = small_network()
    optimizer = Plain(model.parameters(), lr=0.1)
    train_step(model, corenet.losses.SoftmaxCrossEntropy(), optimizer,
               rng.standard_normal((5, 6)).astype(np.float32), rng.integers(0, 2, 5))
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kind", [SGD, Adam, RMSprop])
def test_a_parameter_whose_dtype_changed_is_refused(kind, rng):
    params = make_parameters(rng, np.float32)
    optimizer = kind(params, momentum=0.9) if kind is not Adam else kind(params)
    optimizer.step()
    params[0].astype(np.float64)
    with pytest.raises(ValueError, match=f"{kind.__name__}: parameter 'weight' changed from "
                                         r"float32 \(7, 13\) to float64 \(7, 13\)"):
        optimizer.step()


def test_sgd_skips_a_none_grad_and_refuses_bad_parameter_arrays():
    first = corenet.Parameter("w", np.ones(3, np.float32))
    second = corenet.Parameter("b", np.ones(2, np.float32))
    optimizer = SGD([first, second], lr=0.5, momentum=0.9)
    second.grad = None  # PyTorch's habit: no gradient, no update
    optimizer.zero_grad()
    first.grad[:] = 1
    optimizer.step()
    np.testing.assert_array_equal(first.value, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(second.value, [1, 1])
    first.value.flags.writeable = False
    with pytest.raises(ValueError, match="SGD: parameter 'w' is read-only"):
        optimizer.step()
    first.value = np.ones(4, np.float32)
    first.grad = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"'w' changed from float32 \(3,\) to float32 \(4,\)"):
        optimizer.step()
    first.value = np.ones(3, np.float32)
    first.grad = np.ones(3, np.float64)
    with pytest.raises(ValueError, match="the grad of 'w' must be a C-contiguous float32"):
        optimizer.step()
    first.grad = np.ones((3, 2), np.float32)[:, 0]
    with pytest.raises(ValueError, match="the grad of 'w' must be a C-contiguous"):
        optimizer.step()
    first.value = np.ones(3, np.int64)
    with pytest.raises(TypeError, match="'w' must be a float32 or float64 array, got int64"):
        optimizer.step()


@pytest.mark.parametrize("change, error, message", [
    (lambda s: s.update(step="3"), ValueError,
     "SGD: the step count of parameter 'w' must be an integer >= 0 and < 2\\*\\*62, got '3'"),
    (lambda s: s.update(step=-1), ValueError, "step count of parameter 'w' must be an integer"),
    (lambda s: s.update(momentum_buffer=[0.0, 0.0, 0.0]), TypeError,
     "SGD: the state 'momentum_buffer' of parameter 'w' must be an array, got list"),
    (lambda s: s.update(momentum_buffer=np.zeros((3, 2), np.float32)[:, 0]), ValueError,
     "SGD: the state 'momentum_buffer' of parameter 'w' must be a writeable C-contiguous"),
    (lambda s: s.clear(), TypeError, "SGD: the state of parameter 'w' must be a dict with a "
                                     "'step' count, got {}"),
])
def test_optimizer_state_replaced_by_the_user_is_checked_at_step(change, error, message):
    # These were TypeErrors from `step += 1` or the kernel's arguments, a KeyError, a
    # kernel's "float32(3,) does not match the parameter float32(3,)", or (-1) taken.
    parameter = corenet.Parameter("w", np.ones(3, np.float32))
    parameter.grad[:] = 1
    optimizer = SGD([parameter], lr=0.5, momentum=0.9)
    optimizer.step()
    change(optimizer.state[parameter])
    before = parameter.value.copy()
    with pytest.raises(error, match=message):
        optimizer.step()
    np.testing.assert_array_equal(parameter.value, before)


def test_a_bad_second_parameter_stops_the_step_before_the_first_changes():
    first = corenet.Parameter("w", np.ones(3, np.float32))
    second = corenet.Parameter("b", np.ones(2, np.float32))
    optimizer = SGD([first, second], lr=0.5, momentum=0.9)
    first.grad[:] = 1
    second.grad[:] = 1
    optimizer.step()
    optimizer.state[second]["momentum_buffer"] = np.zeros(3, np.float32)
    before = first.value.copy(), dict(optimizer.state[first])
    with pytest.raises(ValueError, match="parameter 'b' changed from float32 \\(3,\\)"):
        optimizer.step()
    np.testing.assert_array_equal(first.value, before[0])
    assert optimizer.state[first]["step"] == before[1]["step"] == 1


def read_only(array):
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("value, grad, state", [
    (np.ones(3, ">f4"), np.ones(3, ">f4"), None),  # not the machine's byte order
    (np.ones(3, np.float16), np.ones(3, np.float16), None),
    ([1.0, 2.0], np.ones(2), None),
    (read_only(np.ones(3)), np.ones(3), None),
    (np.ones((3, 2))[:, 0], np.ones(3), None),
    (np.ones(3), np.ones((1, 3)), None),  # the same size, another shape
    (np.ones(3), np.ones(3, np.float32), None),
    (np.ones(3), np.ones(6)[::2], None),
    (np.ones(3), None, None),
    (np.ones(3), np.ones(3), {}),
    (np.ones(3), np.ones(3), {"step": True}),
    (np.ones(3), np.ones(3), {"step": -1}),
    (np.ones(3), np.ones(3), {"step": 2 ** 62}),
    (np.ones(3), np.ones(3), {"step": np.int64(3)}),  # fine, but for the full checks
    (np.ones(3), np.ones(3), {"step": 1, "momentum_buffer": np.ones(4)}),
    (np.ones(3), np.ones(3), {"step": 1, "momentum_buffer": read_only(np.ones(3))}),
    (np.ones(3), np.ones(3), {"step": 1, "momentum_buffer": [1.0, 1.0, 1.0]}),
])
def test_the_fast_parameter_check_leaves_anything_unusual_to_the_full_one(value, grad, state):
    # optim.check_parameter runs parameter_ready first, every step: it may only say
    # yes where the full checks pass.
    assert not kernels.parameter_ready(value, grad, state)
    assert kernels.parameter_ready(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32),
                                   {"step": 3, "momentum_buffer": np.ones((2, 3), np.float32),
                                    "other": None})


def test_a_numpy_integer_step_count_still_steps():
    parameter = corenet.Parameter("w", np.ones(3, np.float32))
    parameter.grad[:] = 1
    optimizer = SGD([parameter], lr=0.5, momentum=0.9)
    optimizer.step()
    optimizer.state[parameter]["step"] = np.int64(1)
    optimizer.step()
    assert optimizer.state[parameter]["step"] == 2


def test_the_kernels_refuse_arrays_that_do_not_match():
    value, grad = np.zeros(5, np.float32), np.ones(5, np.float32)
    state = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"adam_step: float32\(4,\) does not match the "
                                         r"parameter float32\(5,\)"):
        kernels.adam_step(value, grad, state, np.zeros(4, np.float32), None, 1, 0.1, 0.9,
                          0.999, 1e-8)
    with pytest.raises(ValueError, match=r"rmsprop_step: float64\(5,\) does not match"):
        kernels.rmsprop_step(value, np.ones(5), state, None, None, 0.1, 0.99, 1e-8)
    with pytest.raises(ValueError, match="sgd_step: momentum needs a buffer array"):
        kernels.sgd_step(value, grad, None, 0.1, 0.0, 0.9)
    with pytest.raises(ValueError, match="adam_step: step counts from 1, got 0"):
        kernels.adam_step(value, grad, state, state.copy(), None, 0, 0.1, 0.9, 0.999, 1e-8)
    read_only = np.zeros(5, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="must be writeable"):
        kernels.sgd_step(value, grad, read_only, 0.1, 0.0, 0.9)
    with pytest.raises(ValueError, match="expected a C-contiguous float array of native byte "
                                         "order, got int32"):
        kernels.scale(np.zeros(3, np.int32), 2.0)
    # Byte order is not in the type number: these were read as native (v became 1.6e-19).
    with pytest.raises(ValueError, match="native byte order, got >f4"):
        kernels.sum_of_squares(np.full(4, 2, ">f4"))
    with pytest.raises(ValueError, match=r">f4\(5,\) does not match"):
        kernels.sgd_step(value, grad.astype(">f4"), None, 0.1)
    with pytest.raises(ValueError, match="does not match"):
        kernels.sgd_step(value, np.ones(10, np.float32)[::2], None, 0.1)


# -- SGD over many parameters at once ----------------------------------------------------

BLOCK = 1 << 14  # the kernels' block of elements


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("settings", [
    dict(momentum=0.0), dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
    dict(momentum=0.9, nesterov=True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_pass_over_many_parameters_is_bitwise_one_call_each(dtype, settings, threads,
                                                                 rng):
    # Sizes around the block, empty and one element: the pass maps its blocks back to
    # the tensors.
    sizes = [3, 0, BLOCK, BLOCK + 1, 1, 3 * BLOCK - 7, 0]
    values = [rng.standard_normal(size).astype(dtype) for size in sizes]
    grads = [rng.standard_normal(size).astype(dtype) for size in sizes]
    buffers = [rng.standard_normal(size).astype(dtype) for size in sizes]
    firsts = [index % 2 == 0 for index in range(len(sizes))]
    expected = [value.copy() for value in values]
    expected_buffers = [buffer.copy() for buffer in buffers]
    for value, grad, buffer, first in zip(expected, grads, expected_buffers, firsts):
        kernels.sgd_step(value, grad, buffer, 0.1, first=first, **settings)
    before = corenet.get_num_threads()
    corenet.set_num_threads(threads)
    try:
        kernels.sgd_step_many(values, grads, buffers, firsts, 0.1, **settings)
    finally:
        corenet.set_num_threads(before)
    for got, want in zip(values + buffers, expected + expected_buffers):
        np.testing.assert_array_equal(got, want)


def run_both_ways(rng, dtype, threads, state_count, one_call, many_call):
    """Arrays of parameters around the block size, updated by one call each and by one
    pass over all; each state array is None for some parameters (an absent state)."""
    sizes = [3, 0, BLOCK, BLOCK + 1, 1, 3 * BLOCK - 7]
    values = [rng.standard_normal(size).astype(dtype) for size in sizes]
    grads = [rng.standard_normal(size).astype(dtype) for size in sizes]
    states = [[np.abs(rng.standard_normal(size)).astype(dtype) for size in sizes]
              for _ in range(state_count)]
    expected = [array.copy() for array in values + sum(states, [])]
    expected_values = expected[:len(sizes)]
    expected_states = [expected[len(sizes) * (k + 1):len(sizes) * (k + 2)]
                       for k in range(state_count)]
    for index in range(len(sizes)):
        one_call(index, expected_values[index], grads[index],
                 [state[index] for state in expected_states])
    before = corenet.get_num_threads()
    corenet.set_num_threads(threads)
    try:
        many_call(values, grads, states)
    finally:
        corenet.set_num_threads(before)
    for got, want in zip(values + sum(states, []), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("decoupled", [False, True])
def test_one_adam_pass_over_many_parameters_is_bitwise_one_call_each(dtype, threads,
                                                                      decoupled, rng):
    steps = [1, 2, 7, 1, 30, 3]  # each parameter its own count: its own bias corrections
    amsgrad = [True, False, True, True, False, True]
    settings = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                    decoupled=decoupled)

    def one_call(index, value, grad, states):
        kernels.adam_step(value, grad, states[0], states[1],
                          states[2] if amsgrad[index] else None, steps[index], **settings)

    def many_call(values, grads, states):
        kernels.adam_step_many(values, grads, states[0], states[1],
                               [s if a else None for s, a in zip(states[2], amsgrad)], steps,
                               **settings)
    run_both_ways(rng, dtype, threads, 3, one_call, many_call)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_one_rmsprop_pass_over_many_parameters_is_bitwise_one_call_each(dtype, threads,
                                                                         momentum, rng):
    centered = [True, False, False, True, True, False]
    settings = dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.1, momentum=momentum)

    def one_call(index, value, grad, states):
        kernels.rmsprop_step(value, grad, states[0], states[1] if centered[index] else None,
                             states[2] if momentum else None, **settings)

    def many_call(values, grads, states):
        kernels.rmsprop_step_many(values, grads, states[0],
                                  [s if c else None for s, c in zip(states[1], centered)],
                                  states[2] if momentum else [None] * len(values), **settings)
    run_both_ways(rng, dtype, threads, 3, one_call, many_call)


def test_adam_and_rmsprop_passes_refuse_what_does_not_fit():
    value, grad = np.zeros(5, np.float32), np.ones(5, np.float32)
    state = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"adam_step_many: step counts from 1, got True"):
        kernels.adam_step_many([value], [grad], [state], [state.copy()], [None], [True],
                               0.1, 0.9, 0.999, 1e-8)
    with pytest.raises(ValueError, match="adam_step_many: exp_avg and exp_avg_sq must be "
                                         "arrays"):
        kernels.adam_step_many([value], [grad], [None], [state], [None], [1], 0.1, 0.9,
                               0.999, 1e-8)
    with pytest.raises(ValueError, match="adam_step_many: expected sequences of one length, "
                                         "got 1 values, 1 grads, 1 exp_avgs, 1 exp_avg_sqs, "
                                         "1 max_exp_avg_sqs, 2 steps"):
        kernels.adam_step_many([value], [grad], [state], [state], [None], [1, 2], 0.1, 0.9,
                               0.999, 1e-8)
    with pytest.raises(ValueError, match="rmsprop_step_many: square_avg must be an array"):
        kernels.rmsprop_step_many([value], [grad], [None], [None], [None], 0.1, 0.99, 1e-8)
    with pytest.raises(ValueError, match="rmsprop_step_many: momentum needs a buffer array"):
        kernels.rmsprop_step_many([value], [grad], [state], [None], [None], 0.1, 0.99, 1e-8,
                                  momentum=0.9)
    with pytest.raises(TypeError, match="rmsprop_step_many: expected arrays"):
        kernels.rmsprop_step_many([value], [grad], [[0.0] * 5], [None], [None], 0.1, 0.99,
                                  1e-8)


def test_the_passes_refuse_objects_that_only_claim_to_be_arrays():
    # isinstance asks the object's __class__: a kernel that trusted it read memory the
    # object does not have.
    from unittest import mock
    fake = mock.Mock(spec=np.ndarray)
    value, state = np.zeros(5, np.float32), np.zeros(5, np.float32)
    with pytest.raises(TypeError, match="adam_step_many: expected arrays"):
        kernels.adam_step_many([value], [fake], [state], [state.copy()], [None], [1], 0.1,
                               0.9, 0.999, 1e-8)
    with pytest.raises(TypeError, match="rmsprop_step_many: expected arrays"):
        kernels.rmsprop_step_many([value], [value.copy()], [fake], [None], [None], 0.1, 0.99,
                                  1e-8)
    with pytest.raises(TypeError, match="sgd_step_many: expected arrays"):
        kernels.sgd_step_many([value], [value.copy()], [fake], [False], 0.1, momentum=0.9)
    with pytest.raises(TypeError, match="arrays_conflict: expected C-contiguous arrays"):
        kernels.arrays_conflict([(fake,)])


def test_a_state_array_the_settings_do_not_use_is_still_checked():
    value, grad = np.zeros(5, np.float32), np.ones(5, np.float32)
    with pytest.raises(ValueError, match=r"sgd_step: float32\(4,\) does not match"):
        kernels.sgd_step(value, grad, np.zeros(4, np.float32), 0.1)  # momentum 0
    with pytest.raises(ValueError, match=r"rmsprop_step: float64\(5,\) does not match"):
        kernels.rmsprop_step(value, grad, np.zeros(5, np.float32), None, np.zeros(5), 0.1,
                             0.99, 1e-8)


def test_the_memory_check_finds_every_overlap_that_could_race(rng):
    # Held against a check of every pair, on random views of one array: arrays of two
    # tensors that share memory, or arrays of one tensor that overlap shifted (one array
    # twice is read and written element by element, which any thread count does alike).
    whole = np.zeros(64, np.float32)

    def race(a, b, same_tensor):
        identical = a.ctypes.data == b.ctypes.data and a.nbytes == b.nbytes
        return np.shares_memory(a, b) and not (same_tensor and identical)

    for _ in range(400):
        tensors = []
        for _ in range(int(rng.integers(1, 5))):
            arrays = []
            for _ in range(int(rng.integers(1, 4))):
                start = int(rng.integers(0, 64))
                stop = int(rng.integers(start, 65))
                arrays.append(None if rng.random() < 0.1 else whole[start:stop])
            tensors.append(tuple(arrays))
        present = [[a for a in arrays if a is not None] for arrays in tensors]
        expected = any(race(a, b, i == j)
                       for i, first in enumerate(present) for j, second in enumerate(present)
                       for k, a in enumerate(first) for m, b in enumerate(second)
                       if (i, k) < (j, m))
        assert kernels.arrays_conflict(tensors) == expected, tensors
    shared = np.ones(8, np.float32)
    assert kernels.arrays_conflict([(shared,), (np.ones(2, np.float32), shared)])
    assert kernels.arrays_conflict([(shared[:6], shared[2:])])
    assert not kernels.arrays_conflict([(shared, shared), (np.ones(2),)])
    with pytest.raises(TypeError, match="arrays_conflict: expected C-contiguous arrays or "
                                        "None, got float"):
        kernels.arrays_conflict([(1.0,)])


def test_tied_parameters_are_updated_one_after_the_other():
    # Two Parameters sharing one array (tied weights): in one parallel pass the two
    # threads would read and write the same elements at once, losing updates.
    size = 1 << 17  # past the grain, so the pass would take two threads
    tied = np.linspace(-1, 1, size, dtype=np.float32)
    grads = [np.full(size, 1.0, np.float32), np.full(size, 2.0, np.float32)]
    buffers = [np.zeros(size, np.float32), np.zeros(size, np.float32)]
    expected = tied.copy()
    for grad, buffer in zip(grads, [b.copy() for b in buffers]):
        kernels.sgd_step(expected, grad, buffer, 0.1, momentum=0.9, first=True)
    before = corenet.get_num_threads()
    corenet.set_num_threads(2)
    try:
        kernels.sgd_step_many([tied, tied], grads, buffers, [True, True], 0.1, momentum=0.9)
    finally:
        corenet.set_num_threads(before)
    np.testing.assert_array_equal(tied, expected)


def test_a_subclass_of_sgd_keeps_its_own_update():
    class Clipped(SGD):
        def update(self, parameter, state, group):
            np.clip(parameter.grad, -0.1, 0.1, out=parameter.grad)
            super().update(parameter, state, group)

    parameter = corenet.Parameter("w", np.zeros(3, np.float32))
    parameter.grad[:] = 5
    Clipped([parameter], lr=1.0).step()
    np.testing.assert_allclose(parameter.value, -0.1)


def test_one_pass_over_many_parameters_refuses_what_does_not_fit():
    value, grad = np.zeros(5, np.float32), np.ones(5, np.float32)
    with pytest.raises(ValueError, match="sgd_step_many: the parameters mix float32 and "
                                         "float64"):
        kernels.sgd_step_many([value, np.zeros(2)], [grad, np.ones(2)], [None, None],
                              [False, False], 0.1)
    with pytest.raises(ValueError, match="sgd_step_many: expected sequences of one length, got "
                                         "2 values, 1 grads"):
        kernels.sgd_step_many([value, value], [grad], [None], [False], 0.1)
    with pytest.raises(TypeError, match="sgd_step_many: expected arrays"):
        kernels.sgd_step_many([value], [[1.0] * 5], [None], [False], 0.1)
    with pytest.raises(ValueError, match="sgd_step_many: momentum needs a buffer array"):
        kernels.sgd_step_many([value], [grad], [None], [False], 0.1, momentum=0.9)
    with pytest.raises(TypeError, match="sgd_step_many: the first-step flags must be True or "
                                        "False, got ndarray"):
        kernels.sgd_step_many([value], [grad], [None], [np.array([1, 0])], 0.1)


def test_sgd_updates_float32_and_float64_groups_alike():
    # update_group splits a group by dtype: one pass each.
    parameters = [corenet.Parameter("a", np.ones(3, np.float32)),
                  corenet.Parameter("b", np.ones(2, np.float64))]
    for parameter in parameters:
        parameter.grad[:] = 1
    SGD(parameters, lr=0.5, momentum=0.9).step()
    for parameter in parameters:
        np.testing.assert_array_equal(parameter.value, np.full_like(parameter.value, 0.5))


# -- gradient clipping ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_scales_to_the_max_norm(dtype, rng):
    params = make_parameters(rng, dtype)
    grads = [rng.standard_normal(p.value.shape).astype(dtype) for p in params]
    for parameter, grad in zip(params, grads):
        parameter.grad[...] = grad
    expected = math.sqrt(math.fsum(float(x) ** 2 for g in grads for x in g.ravel()))
    total = clip_grad_norm(params, 10.0)
    assert total == pytest.approx(expected, rel=1e-12)  # summed in double either way
    factor = 10.0 / (total + 1e-6)  # in double: each product rounded once to the dtype
    for parameter, grad in zip(params, grads):
        np.testing.assert_array_equal(parameter.grad, (grad.astype(np.float64) * factor)
                                      .astype(dtype))
    assert clip_grad_norm(params, 10.0) == pytest.approx(10.0, rel=1e-6)


def test_clip_grad_norm_leaves_small_gradients_and_skips_none(rng):
    params = make_parameters(rng, np.float64)
    params[1].grad = None
    before = [p.grad.copy() for p in (params[0], params[2])]
    total = clip_grad_norm(params, 1e9)
    assert total == pytest.approx(np.sqrt(sum(np.sum(g * g) for g in before)), rel=1e-12)
    for parameter, grad in zip((params[0], params[2]), before):
        np.testing.assert_array_equal(parameter.grad, grad)


def test_clip_grad_norm_errors_and_non_finite_norms():
    parameter = corenet.Parameter("w", np.zeros(3))
    parameter.grad[:] = [1.0, np.nan, 2.0]
    with pytest.raises(FloatingPointError, match="total norm of the gradients is nan"):
        clip_grad_norm([parameter], 1.0, error_if_nonfinite=True)
    assert math.isnan(clip_grad_norm([parameter], 1.0))
    assert np.isnan(parameter.grad).all()  # as PyTorch: a NaN norm spreads
    with pytest.raises(ValueError, match="clip_grad_norm: max_norm must be a finite number"):
        clip_grad_norm([parameter], -1.0)
    parameter.grad = np.zeros(3, np.int64)
    with pytest.raises(DTypeError, match="the grad of 'w' must be a float32 or float64"):
        clip_grad_norm([parameter], 1.0)


def test_clip_grad_norm_is_the_same_on_1_and_2_threads(rng, threads):
    grad = rng.standard_normal(300_001).astype(np.float32)
    results = []
    for n_threads in (1, 2):
        corenet.set_num_threads(n_threads)
        parameter = corenet.Parameter("w", np.zeros_like(grad))
        parameter.grad[...] = grad
        results.append((clip_grad_norm([parameter], 1.0), parameter.grad))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


@needs_torch
def test_clip_grad_norm_matches_torch(rng):
    params = make_parameters(rng, np.float64)
    tensors = [torch.zeros(p.value.shape, dtype=torch.float64) for p in params]
    for parameter, tensor in zip(params, tensors):
        parameter.grad[...] = rng.standard_normal(parameter.value.shape)
        tensor.grad = torch.tensor(parameter.grad.copy())
    total = clip_grad_norm(params, 5.0)
    assert total == pytest.approx(torch.nn.utils.clip_grad_norm_(tensors, 5.0).item(),
                                  rel=1e-12)
    for parameter, tensor in zip(params, tensors):
        np.testing.assert_allclose(parameter.grad, tensor.grad.numpy(), rtol=1e-12)
