import numpy as np
import pytest

import corenet
from corenet.optim import SGD


def parameters(rng, dtype=np.float64):
    params = [corenet.Parameter("w", rng.standard_normal((3, 4)).astype(dtype)),
              corenet.Parameter("b", rng.standard_normal(4).astype(dtype))]
    return params


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_sgd_matches_the_update_rule(momentum, weight_decay, rng):
    params = parameters(rng)
    values = [p.value.copy() for p in params]
    velocities = [np.zeros_like(v) for v in values]
    optimizer = SGD(params, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for _ in range(3):
        for p, value, velocity in zip(params, values, velocities):
            p.grad[...] = rng.standard_normal(p.grad.shape)
            step = momentum * velocity + p.grad + weight_decay * value
            velocity[...] = step if momentum else 0
            value -= 0.1 * step
        optimizer.step()
        for p, value in zip(params, values):
            np.testing.assert_allclose(p.value, value, rtol=1e-14)


def test_zero_grad(rng):
    params = parameters(rng)
    for p in params:
        p.grad[...] = 1
    SGD(params, lr=0.1).zero_grad()
    assert all(not p.grad.any() for p in params)


def test_sgd_rejects_bad_settings(rng):
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        SGD(parameters(rng), lr=float("nan"))
    with pytest.raises(ValueError, match="got no parameters"):
        SGD([], lr=0.1)


def test_sgd_refuses_a_parameter_whose_dtype_changed(rng):
    params = parameters(rng, np.float32)
    optimizer = SGD(params, lr=0.1, momentum=0.9)
    params[0].astype(np.float64)
    with pytest.raises(ValueError, match="does not match the parameter"):
        optimizer.step()


try:
    import torch
except ImportError:  # the tests that do not compare with PyTorch run without it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")


@needs_torch
def test_sgd_matches_pytorch(rng):
    params = parameters(rng)
    torch_params = [torch.tensor(p.value.copy(), requires_grad=True) for p in params]
    ours = SGD(params, lr=0.05, momentum=0.9, weight_decay=0.001)
    theirs = torch.optim.SGD(torch_params, lr=0.05, momentum=0.9, weight_decay=0.001)
    for _ in range(4):
        for p, t in zip(params, torch_params):
            grad = rng.standard_normal(p.grad.shape)
            p.grad[...] = grad
            t.grad = torch.tensor(grad)
        ours.step()
        theirs.step()
    for p, t in zip(params, torch_params):
        np.testing.assert_allclose(p.value, t.detach().numpy(), rtol=1e-12)


def test_sgd_skips_a_none_grad_and_refuses_bad_parameter_arrays():
    import corenet as cn

    first = cn.Parameter("w", np.ones(3, np.float32))
    second = cn.Parameter("b", np.ones(2, np.float32))
    optimizer = cn.optim.SGD([first, second], lr=0.5, momentum=0.9)
    first.grad[:] = 1
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
    with pytest.raises(ValueError, match=r"'w' changed shape from \(3,\) to \(4,\)"):
        optimizer.step()
    first.value = np.ones(3, np.float32)
    first.grad = np.ones(3, np.float64)
    with pytest.raises(ValueError, match="the grad of 'w' must be a C-contiguous float32"):
        optimizer.step()
    first.value = np.ones(3, np.int64)
    with pytest.raises(TypeError, match="'w' must be a float32 or float64 array, got int64"):
        optimizer.step()
