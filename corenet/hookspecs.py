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
    """Called once when the registry loads; returns the Layer classes this plugin provides,
    as a list or tuple (``[]`` for none: anything else fails the plugin, naming it).

    Each class has a unique snake_case ``name`` (the registry key) and follows
    the layer protocol of ``corenet.Layer``.
    """


@hookspec
def corenet_losses() -> list:
    """Called once when the registry loads; returns the Loss classes this plugin provides,
    as a list or tuple (``[]`` for none).

    Each class has a unique snake_case ``name``, ``forward(pred, target) -> float``
    and ``backward() -> dL/dpred``.
    """


@hookspec
def corenet_onnx_exporters() -> dict:
    """Called by ``corenet.onnx.export`` (not at registry load: onnx is optional); returns
    {layer name: exporter} for this plugin's layers.

    An exporter ``export(graph, layer, inputs) -> str`` adds the layer's ONNX nodes
    through ``graph.node(op_type, inputs, **attributes)`` (which returns the new
    tensor's name) and ``graph.parameter(layer, name)`` (an initializer), and returns
    the name of the layer's output. ``inputs`` are the names of the layer's inputs;
    ``graph.shape(name)`` is a tensor's per-sample shape. Swish as x·sigmoid(x)::

        def export_swish(graph, layer, inputs):
            return graph.node("Mul", [inputs[0], graph.node("Sigmoid", inputs)])
    """
