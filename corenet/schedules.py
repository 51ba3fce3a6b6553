"""Learning-rate schedules: a parameter group's learning rate at step t from its base.

A schedule is a callable ``schedule(base_lr, t) -> lr`` whose values are those of
the torch.optim.lr_scheduler of the same kind (in closed form): ``StepDecay`` is
StepLR, ``CosineDecay`` CosineAnnealingLR, ``LinearWarmup`` LinearLR, and
``Sequence`` SequentialLR, which runs one schedule after another (warm-up, then
cosine decay). ``schedule.apply(optimizer, t)`` sets the lr of every parameter group
from its base, which is the group's lr the first time (kept as ``initial_lr``, as
PyTorch does). t counts whatever the caller steps: ``corenet.train.fit`` steps epochs.

>>> schedule = Sequence([LinearWarmup(2, start_factor=0.5), CosineDecay(4)], milestones=[2])
>>> [round(schedule(0.1, t), 4) for t in range(6)]
[0.05, 0.075, 0.1, 0.0854, 0.05, 0.0146]
"""
from __future__ import annotations

import bisect
import math
import numbers
from dataclasses import dataclass


def _check(schedule, condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"{type(schedule).__name__}: {message}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    """A finite real number (a string or None was math's TypeError naming no schedule)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)


class Schedule:
    """Base of the schedules: subclasses define ``lr(base_lr, t)``."""

    def lr(self, base_lr: float, t: int) -> float:
        raise NotImplementedError

    def __call__(self, base_lr: float, t: int) -> float:
        if not _is_count(t) or t < 0:
            raise ValueError(f"{type(self).__name__}: t must be an integer >= 0, got {t!r}")
        if not _is_finite(base_lr) or base_lr < 0:
            raise ValueError(f"{type(self).__name__}: base_lr must be a finite number >= 0, "
                             f"got {base_lr!r}")
        try:
            lr = self.lr(base_lr, t)
        except OverflowError:  # gamma ** k of a StepDecay with gamma > 1
            lr = math.inf
        if not math.isfinite(lr):  # never written into an optimizer's groups
            raise ValueError(f"{type(self).__name__}: the lr at t={t} from base_lr {base_lr!r} "
                             f"is {lr}, not a finite number")
        return lr

    def apply(self, optimizer, t: int) -> None:
        """Set each parameter group's lr to this schedule's value at t."""
        for group in optimizer.param_groups:
            group["lr"] = self(group.setdefault("initial_lr", group["lr"]), t)


@dataclass(frozen=True)
class Constant(Schedule):
    """The base lr at every step (after a warm-up, in a Sequence)."""

    def lr(self, base_lr: float, t: int) -> float:
        return base_lr


@dataclass(frozen=True)
class StepDecay(Schedule):
    """base_lr · gamma^(t // step_size), as torch's StepLR."""

    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        _check(self, _is_count(self.step_size) and self.step_size >= 1,
               f"step_size must be an integer >= 1, got {self.step_size!r}")
        _check(self, _is_finite(self.gamma) and self.gamma > 0,
               f"gamma must be a finite number > 0, got {self.gamma!r}")

    def lr(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** (t // self.step_size)


@dataclass(frozen=True)
class CosineDecay(Schedule):
    """min_lr + (base_lr − min_lr)·(1 + cos(π·t/total))/2, as torch's CosineAnnealingLR
    (T_max=total, eta_min=min_lr): base_lr at 0, min_lr at total."""

    total: int
    min_lr: float = 0.0

    def __post_init__(self):
        _check(self, _is_count(self.total) and self.total >= 1,
               f"total must be an integer >= 1, got {self.total!r}")
        _check(self, _is_finite(self.min_lr) and self.min_lr >= 0,
               f"min_lr must be a finite number >= 0, got {self.min_lr!r}")

    def lr(self, base_lr: float, t: int) -> float:
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * t / self.total)) / 2


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """base_lr times a factor going linearly from start_factor to end_factor over
    ``steps`` steps, then staying there, as torch's LinearLR (total_iters=steps)."""

    steps: int
    start_factor: float = 1 / 3
    end_factor: float = 1.0

    def __post_init__(self):
        _check(self, _is_count(self.steps) and self.steps >= 1,
               f"steps must be an integer >= 1, got {self.steps!r}")
        _check(self, _is_finite(self.start_factor) and 0 < self.start_factor <= 1,
               f"start_factor must be in (0, 1], got {self.start_factor!r}")
        _check(self, _is_finite(self.end_factor) and 0 <= self.end_factor <= 1,
               f"end_factor must be in [0, 1], got {self.end_factor!r}")

    def lr(self, base_lr: float, t: int) -> float:
        progress = min(t, self.steps) / self.steps
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


@dataclass(frozen=True)
class Sequence(Schedule):
    """One schedule after another, as torch's SequentialLR: schedules[i] runs from
    milestones[i − 1] (0 for the first), counting its own steps from 0 there."""

    schedules: tuple
    milestones: tuple

    def __init__(self, schedules, milestones):
        object.__setattr__(self, "schedules", tuple(schedules))
        object.__setattr__(self, "milestones", tuple(milestones))
        _check(self, all(isinstance(s, Schedule) for s in self.schedules) and self.schedules,
               f"expected one or more schedules, got {self.schedules!r}")
        _check(self, len(self.milestones) == len(self.schedules) - 1,
               f"{len(self.schedules)} schedules need {len(self.schedules) - 1} milestones, "
               f"got {len(self.milestones)}")
        _check(self, all(_is_count(m) for m in self.milestones)
               and list(self.milestones) == sorted(set(self.milestones))
               and (not self.milestones or self.milestones[0] >= 1),
               f"milestones must be increasing integers >= 1, got {self.milestones!r}")

    def lr(self, base_lr: float, t: int) -> float:
        index = bisect.bisect_right(self.milestones, t)
        start = self.milestones[index - 1] if index else 0
        return self.schedules[index](base_lr, t - start)
