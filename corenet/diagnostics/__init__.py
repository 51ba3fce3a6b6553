"""What the lecture asks to watch while a network trains, and the objects it draws.

- Dead units (DeadUnits) and per-layer gradient norms with vanishing / exploding
  warnings (gradient_norms, gradient_problems, GradientWarning), gathered each epoch
  by the Diagnostics callback of corenet.train.fit and by ``corenet train --diagnostics``.
- jacobian(layer_or_model, x): the matrices back-propagation multiplies.
- Linear regions: Zaslavsky's count (max_linear_regions) and the regions a network
  cuts the plane into (count_linear_regions).
"""
from corenet.diagnostics.callback import Diagnostics, EpochDiagnostics, LayerDiagnostics
from corenet.diagnostics.dead_units import RELU_FAMILY, DeadUnits
from corenet.diagnostics.gradients import (EXPLODING, VANISHING, GradientWarning,
                                           gradient_norms, gradient_problems,
                                           layer_gradient_norm)
from corenet.diagnostics.jacobian import jacobian
from corenet.diagnostics.regions import (activation_patterns, count_linear_regions,
                                         max_linear_regions)

__all__ = ["EXPLODING", "RELU_FAMILY", "VANISHING", "DeadUnits", "Diagnostics",
           "EpochDiagnostics", "GradientWarning", "LayerDiagnostics", "activation_patterns",
           "count_linear_regions", "gradient_norms", "gradient_problems", "jacobian",
           "layer_gradient_norm", "max_linear_regions"]
