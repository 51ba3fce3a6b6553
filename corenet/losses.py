"""Every registered loss: ``corenet.losses.MSE``, ``corenet.losses.create("mse")``.

>>> create("softmax_cross_entropy")
SoftmaxCrossEntropy()
"""
from corenet.registry import namespace

create, names, __getattr__, __dir__ = namespace("losses")
