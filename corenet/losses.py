"""Every registered loss: ``corenet.losses.MSE``, ``corenet.losses.create("mse")``."""
from corenet.registry import registry


def create(name: str, **config):
    """A new loss of the registered ``name``.

    >>> create("softmax_cross_entropy")
    SoftmaxCrossEntropy()
    """
    return registry.loss(name)(**config)


def names() -> list:
    return sorted(registry.load().losses)


def __getattr__(name):
    cls = registry.by_class_name("losses", name)
    if cls is None:
        raise AttributeError(f"corenet.losses has no loss class {name!r}; registered: "
                             f"{sorted(c.__name__ for c in registry.load().losses.values())}")
    return cls


def __dir__():
    return ["create", "names"] + [cls.__name__ for cls in registry.load().losses.values()]
