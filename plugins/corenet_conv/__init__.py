"""corenet's built-in vision layers: convolution, pooling and flatten in 2-D and 3-D."""
import corenet

CORENET_PLUGIN_API = 1


@corenet.hookimpl
def corenet_layers():
    from corenet_conv.conv import Conv2d, Conv3d
    from corenet_conv.flatten import Flatten
    from corenet_conv.pool import (AvgPool2d, AvgPool3d, GlobalAvgPool, MaxPool2d,
                                   MaxPool3d)

    return [Conv2d, Conv3d, MaxPool2d, MaxPool3d, AvgPool2d, AvgPool3d, GlobalAvgPool,
            Flatten]
