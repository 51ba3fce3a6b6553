"""Which activations a GEMM-based layer (Linear, the convolutions) can run in its
GEMM's epilogue when the executor fuses the pair (see Layer.can_fuse).

A fused layer keeps only the activation's output y, so an activation fuses only
where y gives f'(x) exactly: relu, and leaky_relu with a slope >= 0 (f' is 1
where y > 0, the slope elsewhere). sigmoid, tanh and elu do not: y(1 − y),
1 − y² and y + alpha cancel where they saturate (0 once y rounds to 1 or
−alpha, while f'(x) is representable), so they run as their own layer, which
takes f' from its input (corenet_activations.pointwise)."""
from __future__ import annotations

from corenet.kernels.gemm import EPILOGUES

# name -> the attribute holding the activation's parameter (None: no parameter).
FUSABLE = {"relu": None, "leaky_relu": "negative_slope"}


def fusion_of(activation) -> tuple[int, float] | None:
    """(epilogue code, parameter) for an activation layer, or None if it cannot fuse:
    y > 0 tells x > 0 only for a non-negative slope."""
    if activation is None or activation.name not in FUSABLE:
        return None
    attribute = FUSABLE[activation.name]
    param = float(getattr(activation, attribute)) if attribute else 0.0
    if param < 0:
        return None
    return EPILOGUES[activation.name], param
