"""Learning-rate schedules: values from their formulas, against torch.optim.lr_scheduler
where installed, applied to parameter groups, and driven by corenet.train.fit."""
import math

import numpy as np
import pytest

import corenet
import corenet.layers as L
from corenet.optim import SGD, Adam
from corenet.schedules import Constant, CosineDecay, LinearWarmup, Sequence, StepDecay
from corenet.train import cosine_schedule, fit, make_schedule

try:
    import torch
except ImportError:  # the tests that do not compare with PyTorch run without it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")


def test_values_from_their_formulas():
    assert [StepDecay(3, 0.5)(0.8, t) for t in range(7)] == [0.8] * 3 + [0.4] * 3 + [0.2]
    cosine = CosineDecay(4, min_lr=0.1)
    assert [cosine(0.5, t) for t in (0, 2, 4)] == pytest.approx([0.5, 0.3, 0.1], abs=1e-15)
    warmup = LinearWarmup(4, start_factor=0.2)
    assert [warmup(1.0, t) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1, 1])
    assert LinearWarmup(5)(0.3, 0) == pytest.approx(0.1)  # PyTorch's start_factor 1/3
    assert Constant()(0.25, 99) == 0.25
    chained = Sequence([LinearWarmup(2, 0.5), StepDecay(2, 0.1), Constant()], [2, 6])
    assert [chained(1.0, t) for t in range(8)] == pytest.approx(
        [0.5, 0.75, 1, 1, 0.1, 0.1, 1, 1])


def test_cosine_schedule_is_the_cosine_decay_of_before():
    schedule = cosine_schedule(0.02, 40)
    for epoch in (0, 7, 39):
        assert schedule(epoch) == 0.02 * 0.5 * (1 + math.cos(math.pi * epoch / 40))


def torch_rates(make, steps, base_rates):
    tensors = [torch.zeros(1, requires_grad=True) for _ in base_rates]
    optimizer = torch.optim.SGD([{"params": [t], "lr": lr} for t, lr in zip(tensors, base_rates)])
    scheduler = make(optimizer, torch.optim.lr_scheduler)
    rates = []
    for _ in range(steps):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return np.array(rates)


CASES = [
    (StepDecay(3, 0.5), lambda o, S: S.StepLR(o, 3, 0.5)),
    (CosineDecay(10), lambda o, S: S.CosineAnnealingLR(o, 10)),
    (CosineDecay(7, min_lr=0.001), lambda o, S: S.CosineAnnealingLR(o, 7, eta_min=0.001)),
    (LinearWarmup(4, 0.1), lambda o, S: S.LinearLR(o, 0.1, total_iters=4)),
    (LinearWarmup(5), lambda o, S: S.LinearLR(o)),
    (LinearWarmup(3, 1.0, 0.25), lambda o, S: S.LinearLR(o, 1.0, 0.25, total_iters=3)),
    (Sequence([LinearWarmup(3, 0.1), CosineDecay(12)], [3]),
     lambda o, S: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=3),
                                     S.CosineAnnealingLR(o, 12)], milestones=[3])),
    (Sequence([LinearWarmup(2, 0.25), StepDecay(4)], [2]),
     lambda o, S: S.SequentialLR(o, [S.LinearLR(o, 0.25, total_iters=2), S.StepLR(o, 4)],
                                 milestones=[2])),
]


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on scheduler order
@pytest.mark.parametrize("schedule, make", CASES, ids=[repr(c[0]) for c in CASES])
def test_matches_torch_lr_scheduler(schedule, make):
    base_rates = (0.1, 0.03)
    expected = torch_rates(make, 16, base_rates)
    ours = np.array([[schedule(lr, t) for lr in base_rates] for t in range(16)])
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)


def test_apply_scales_each_groups_own_base_rate(rng):
    weight = corenet.Parameter("weight", rng.standard_normal((3, 2)))
    bias = corenet.Parameter("bias", rng.standard_normal(3))
    optimizer = Adam([{"params": [weight], "lr": 0.1}, {"params": [bias], "lr": 0.01}])
    schedule = StepDecay(2, 0.5)
    rates = []
    for t in range(5):
        schedule.apply(optimizer, t)
        rates.append([group["lr"] for group in optimizer.param_groups])
    assert rates == [[0.1, 0.01]] * 2 + [[0.05, 0.005]] * 2 + [[0.025, 0.0025]]
    assert [group["initial_lr"] for group in optimizer.param_groups] == [0.1, 0.01]
    assert optimizer.state_dict()["param_groups"][1]["initial_lr"] == 0.01


@pytest.mark.parametrize("make, message", [
    (lambda: StepDecay(0), "StepDecay: step_size must be an integer >= 1, got 0"),
    (lambda: StepDecay(2, gamma=0.0), "StepDecay: gamma must be a finite number > 0"),
    (lambda: CosineDecay(2.5), "CosineDecay: total must be an integer >= 1, got 2.5"),
    (lambda: CosineDecay(5, min_lr=-1.0), "CosineDecay: min_lr must be a finite number >= 0"),
    (lambda: LinearWarmup(3, start_factor=0.0), r"start_factor must be in \(0, 1\], got 0.0"),
    (lambda: LinearWarmup(True), "LinearWarmup: steps must be an integer >= 1, got True"),
    (lambda: Sequence([Constant(), Constant()], []), "2 schedules need 1 milestones, got 0"),
    (lambda: Sequence([Constant(), Constant(), Constant()], [4, 2]),
     r"milestones must be increasing integers >= 1, got \(4, 2\)"),
    (lambda: Sequence([Constant(), "cosine"], [2]), "expected one or more schedules"),
    (lambda: StepDecay(2)(0.1, -1), "StepDecay: t must be an integer >= 0, got -1"),
    # Settings that are no numbers were math's or the comparison's TypeError, unnamed.
    (lambda: StepDecay(2, gamma="0.5"), "StepDecay: gamma must be a finite number > 0, "
                                        "got '0.5'"),
    (lambda: CosineDecay(5, min_lr=None), "CosineDecay: min_lr must be a finite number >= 0, "
                                          "got None"),
    (lambda: LinearWarmup(3, start_factor="a"), r"start_factor must be in \(0, 1\], got 'a'"),
    (lambda: CosineDecay(5)("0.1", 1), "CosineDecay: base_lr must be a finite number >= 0, "
                                       "got '0.1'"),
    (lambda: CosineDecay(5)(float("nan"), 1), "base_lr must be a finite number >= 0, got nan"),
    # gamma ** 400 was an OverflowError "Numerical result out of range".
    (lambda: StepDecay(1, gamma=10.0)(0.1, 400), "StepDecay: the lr at t=400 from base_lr "
                                                 "0.1 is inf, not a finite number"),
])
def test_bad_schedules_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_make_schedule_composes_warmup_and_the_main_schedule():
    schedule = make_schedule("cosine", 10, warmup=2)
    assert schedule == Sequence([LinearWarmup(2, 0.1), CosineDecay(8)], [2])
    assert make_schedule("step", 9) == StepDecay(3, 0.1)
    assert make_schedule("step", 9, step_size=2, gamma=0.5) == StepDecay(2, 0.5)
    assert make_schedule("constant", 3) == Constant()
    with pytest.raises(ValueError, match="a warm-up of 5 epochs needs more epochs"):
        make_schedule("cosine", 5, warmup=5)
    with pytest.raises(ValueError, match="no schedule named 'linear'"):
        make_schedule("linear", 5)


def small_problem(seed=0):
    corenet.random.seed(seed)
    model = corenet.Sequential(L.Linear(4, 8), L.ReLU(), L.Linear(8, 3))
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)


def test_fit_applies_a_schedule_each_epoch_to_every_group():
    model, X, y = small_problem()
    weights, biases = model.parameters()[0::2], model.parameters()[1::2]
    optimizer = SGD([{"params": weights, "lr": 0.2}, {"params": biases, "lr": 0.1}])
    seen = []
    fit(model, corenet.losses.SoftmaxCrossEntropy(), optimizer, X, y, epochs=4, batch_size=8,
        on_epoch=lambda epoch, loss: seen.append([g["lr"] for g in optimizer.param_groups]),
        lr_schedule=Sequence([LinearWarmup(2, 0.5), Constant()], [2]))
    np.testing.assert_allclose(seen, [[0.1, 0.05], [0.15, 0.075], [0.2, 0.1], [0.2, 0.1]])
    # A plain callable sets every group's lr, as before schedules existed.
    fit(model, corenet.losses.SoftmaxCrossEntropy(), optimizer, X, y, epochs=1,
        lr_schedule=lambda epoch: 0.01)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.01]


def test_fit_clips_each_step_to_the_norm(monkeypatch):
    import corenet.train

    model, X, y = small_problem()
    norms = []

    def recording_clip(parameters, max_norm):
        from corenet.optim import clip_grad_norm

        norms.append(clip_grad_norm(parameters, max_norm))
        norms.append(math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2))
                                   for p in parameters)))
        return norms[-2]
    monkeypatch.setattr(corenet.train, "clip_grad_norm", recording_clip)
    fit(model, corenet.losses.SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), X, y,
        epochs=1, batch_size=10, clip_norm=0.05)
    before, after = norms[0::2], norms[1::2]
    assert len(before) == 4 and min(before) > 0.05  # every step was clipped ...
    assert after == pytest.approx([0.05] * 4, rel=1e-4)  # ... to the norm asked for
