"""An example corenet plugin: one layer, registered through the `corenet` entry point."""
import corenet

CORENET_PLUGIN_API = 1


@corenet.hookimpl
def corenet_layers():
    from corenet_swish.swish import Swish

    return [Swish]
