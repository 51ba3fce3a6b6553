"""The hooks a corenet plugin may implement.

A plugin is a module (or object) named by an entry point in the ``corenet``
group; corenet calls these hooks once, the first time the registry is used::

    import corenet

    @corenet.hookimpl
    def corenet_layers():
        return [MyLayer]
"""
import pluggy

hookspec = pluggy.HookspecMarker("corenet")
hookimpl = pluggy.HookimplMarker("corenet")


@hookspec
def corenet_layers() -> list:
    """Called once when the registry loads; returns the Layer classes this plugin provides.

    Each class has a unique snake_case ``name`` (the registry key) and follows
    the layer protocol of ``corenet.Layer``.
    """


@hookspec
def corenet_losses() -> list:
    """Called once when the registry loads; returns the Loss classes this plugin provides.

    Each class has a unique snake_case ``name``, ``forward(pred, target) -> float``
    and ``backward() -> dL/dpred``.
    """
