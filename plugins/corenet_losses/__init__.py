"""corenet's built-in losses: mse and softmax_cross_entropy."""
import corenet

CORENET_PLUGIN_API = 1


@corenet.hookimpl
def corenet_losses():
    from corenet_losses.losses import MSE, SoftmaxCrossEntropy

    return [MSE, SoftmaxCrossEntropy]
