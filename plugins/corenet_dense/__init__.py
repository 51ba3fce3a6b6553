"""corenet's built-in dense layers: linear and maxout, the merges add and concat, and
the layers that train them: dropout, batch_norm1d, batch_norm2d and layer_norm."""
import corenet

CORENET_PLUGIN_API = 1


@corenet.hookimpl
def corenet_layers():
    from corenet_dense.dropout import Dropout
    from corenet_dense.linear import Linear
    from corenet_dense.maxout import Maxout
    from corenet_dense.merge import Add, Concat
    from corenet_dense.normalization import BatchNorm1d, BatchNorm2d, LayerNorm

    return [Linear, Maxout, Add, Concat, Dropout, BatchNorm1d, BatchNorm2d, LayerNorm]
