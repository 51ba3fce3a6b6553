"""The loss protocol: ``forward(pred, target) -> float``, then ``backward() -> dL/dpred``.

Losses are averaged over the batch, so dL/dpred carries a 1/N.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from corenet.errors import DTypeError, ShapeError
from corenet.layer import FLOAT_DTYPES, as_array, contiguous


class Loss:
    """Base of every loss. A subclass whose forward computes the gradient too
    stores it in ``self._grad``; the default backward returns it."""

    name: ClassVar[str] = ""
    _grad = None

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self) -> np.ndarray:
        if self._grad is None:
            raise RuntimeError(f"{self.name}.backward called before forward")
        return self._grad

    def __call__(self, pred, target) -> float:
        return self.forward(pred, target)

    def get_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def check_pred(self, pred, ndim: int | None = None) -> np.ndarray:
        pred = as_array(self.name, "the predictions", pred)
        if pred.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"{self.name}: expected float32 or float64 predictions, "
                             f"got dtype {pred.dtype}")
        if ndim is not None and pred.ndim != ndim:
            raise ShapeError(f"{self.name}: expected {ndim}-D predictions (batch first), "
                             f"got shape {pred.shape}")
        if pred.ndim == 0 or pred.shape[0] == 0:
            raise ShapeError(f"{self.name}: expected a non-empty batch of predictions, "
                             f"got shape {pred.shape}")
        return contiguous(self.name, "the predictions", pred)
