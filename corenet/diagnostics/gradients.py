"""Gradient norms per layer, and which layers' gradients vanish or explode.

The lecture's picture: dL/dW of an early layer is a product of the Jacobians of all
the layers after it, so its size can shrink or grow geometrically with depth. Here a
layer's gradient is compared with the others' in the same model: its norm divided by
the median of the layers' norms.
"""
from __future__ import annotations

import math

import numpy as np

# Default thresholds on (a layer's gradient norm) / (median of the layers' norms).
VANISHING = 1e-3
EXPLODING = 1e3


class GradientWarning(RuntimeWarning):
    """A layer's gradient vanishes or explodes relative to the other layers'."""


def layer_gradient_norm(layer) -> float | None:
    """L2 norm of all the layer's parameter gradients taken together (None without any).

    >>> import corenet.layers as L
    >>> layer = L.Linear(2, 1); layer.weight.grad[:] = 3; layer.bias.grad[:] = 1
    >>> layer_gradient_norm(layer)    # sqrt(3² + 3² + 1²)
    4.358898943540674
    """
    grads = [parameter.grad for parameter in layer.parameters() if parameter.grad is not None]
    if not grads:
        return None
    # vdot: one pass, no temporary array. In float32 a norm above ~1e19 becomes inf,
    # which is reported as exploding, as it should be.
    return math.sqrt(sum(float(np.vdot(grad, grad)) for grad in grads))


def gradient_norms(model) -> dict[int, float]:
    """{index in model.layers: layer_gradient_norm} for the layers with parameters."""
    norms = {}
    for index, layer in enumerate(model.layers):
        norm = layer_gradient_norm(layer)
        if norm is not None:
            norms[index] = norm
    return norms


def median_norm(norms: dict) -> float:
    """The median of the finite norms (0 when there are none): what each is compared with."""
    finite = [norm for norm in norms.values() if math.isfinite(norm)]
    return float(np.median(finite)) if finite else 0.0


def gradient_problems(norms: dict, vanishing: float = VANISHING,
                      exploding: float = EXPLODING) -> dict:
    """{key: "vanishing" | "exploding"} for the norms that stand out from the others.

    A norm is *vanishing* when it is zero (no gradient reaches that layer) or below
    ``vanishing`` × the median of the finite norms; *exploding* when it is infinite or
    NaN, or above ``exploding`` × the median. With two layers the median is their mean,
    so only the smaller of two norms more than 1/vanishing apart is flagged. A norm that
    shrinks geometrically with depth (the lecture's vanishing gradient) flags both ends:
    the first layers as vanishing, the last as exploding relative to the rest.

    >>> gradient_problems({0: 1e-7, 1: 0.5, 2: 0.2, 3: 4e3})
    {0: 'vanishing', 3: 'exploding'}
    """
    if not 0 < vanishing < 1 < exploding:
        raise ValueError(f"gradient_problems: expected 0 < vanishing < 1 < exploding, got "
                         f"vanishing={vanishing!r}, exploding={exploding!r}")
    median = median_norm(norms)
    problems = {}
    for key, norm in norms.items():
        if not math.isfinite(norm) or (median > 0 and norm > exploding * median):
            problems[key] = "exploding"
        elif norm == 0 or norm < vanishing * median:
            problems[key] = "vanishing"
    return problems


def describe_problem(label: str, norm: float, median: float, problem: str,
                     vanishing: float = VANISHING, exploding: float = EXPLODING) -> str:
    """One line on a layer that gradient_problems flagged, with the numbers it compared."""
    if not math.isfinite(norm):
        return f"{label} gradient norm is {norm}: {problem}"
    if median == 0:
        return f"{label} gradient norm is 0, as most layers': {problem}"
    threshold = vanishing if problem == "vanishing" else exploding
    return (f"{label} gradient norm {norm:.3e} is {norm / median:.3g} x the median of the "
            f"layers' norms ({median:.3e}): {problem} (threshold {threshold:g} x)")
