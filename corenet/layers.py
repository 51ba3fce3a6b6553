"""Every registered layer: ``corenet.layers.Linear``, ``corenet.layers.create("linear", ...)``.

The first attribute looked up here loads the plugins.
"""
from corenet.registry import registry


def create(name: str, **config):
    """A new layer of the registered ``name`` built from its config.

    >>> create("leaky_relu", negative_slope=0.1)
    LeakyReLU(negative_slope=0.1)
    """
    return registry.layer(name)(**config)


def names() -> list:
    """The registered layer names, sorted."""
    return sorted(registry.load().layers)


def __getattr__(name):
    cls = registry.by_class_name("layers", name)
    if cls is None:
        raise AttributeError(f"corenet.layers has no layer class {name!r}; registered: "
                             f"{sorted(c.__name__ for c in registry.load().layers.values())}")
    return cls


def __dir__():
    return ["create", "names"] + [cls.__name__ for cls in registry.load().layers.values()]
