"""An example corenet plugin: one layer, registered through the `corenet` entry point,
and its ONNX export."""
import corenet

CORENET_PLUGIN_API = 1


@corenet.hookimpl
def corenet_layers():
    from corenet_swish.swish import Swish

    return [Swish]


@corenet.hookimpl
def corenet_onnx_exporters():
    return {"swish": export_swish}


def export_swish(graph, layer, inputs):
    """swish(x) = x · sigmoid(x): the default ONNX domain has Sigmoid and Mul."""
    return graph.node("Mul", [inputs[0], graph.node("Sigmoid", inputs)])
