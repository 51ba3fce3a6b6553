"""Which activations a GEMM-based layer (Linear, the convolutions) can run in its
GEMM's epilogue when the executor fuses the pair (see Layer.can_fuse)."""
from __future__ import annotations

from corenet.arguments import as_float
from corenet.kernels.gemm import EPILOGUES

# name -> the attribute holding the activation's parameter (None: no parameter).
FUSABLE = {"relu": None, "sigmoid": None, "tanh": None, "leaky_relu": "negative_slope",
           "elu": "alpha"}


def fusion_of(activation) -> tuple[int, float] | None:
    """(epilogue code, parameter) for an activation layer, or None if it cannot fuse:
    backward recovers f'(x) from y = f(x) only for a non-negative slope or alpha."""
    if activation is None or activation.name not in FUSABLE:
        return None
    attribute = FUSABLE[activation.name]
    param = as_float(activation.name, attribute, getattr(activation, attribute)) \
        if attribute else 0.0
    if param < 0 or (activation.name == "elu" and param == 0):
        return None
    return EPILOGUES[activation.name], param


def fused_epilogue(layer) -> tuple[int, float] | None:
    """fusion_of(layer.fused_activation), set by the executor when it fused the pair;
    an error if that activation can no longer fuse (a slope set negative since): the
    executor skips the activation's node, so computing without it would be wrong."""
    activation = layer.fused_activation
    if activation is None:
        return None
    fusion = fusion_of(activation)
    if fusion is None:
        raise ValueError(f"{activation.name}: its parameter changed after the model fused it "
                         f"into {layer.name}, to a value the fused pair cannot compute; build "
                         f"the model again")
    return fusion
