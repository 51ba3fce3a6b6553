"""corenet's built-in dense layers: linear, and the merges add and concat."""
import corenet

CORENET_PLUGIN_API = 1


@corenet.hookimpl
def corenet_layers():
    from corenet_dense.linear import Linear
    from corenet_dense.merge import Add, Concat

    return [Linear, Add, Concat]
