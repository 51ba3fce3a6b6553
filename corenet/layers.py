"""Every registered layer: ``corenet.layers.Linear``, ``corenet.layers.create("linear", ...)``.

>>> create("leaky_relu", negative_slope=0.1)
LeakyReLU(negative_slope=0.1)

The first attribute looked up here loads the plugins.
"""
from corenet.registry import namespace

create, names, __getattr__, __dir__ = namespace("layers")
