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


torch = pytest.importorskip("torch", reason="PyTorch is the reference where installed")


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
