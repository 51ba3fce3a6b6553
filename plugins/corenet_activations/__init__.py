"""corenet's built-in activations: elementwise ones and softmax."""
import corenet

CORENET_PLUGIN_API = 1


@corenet.hookimpl
def corenet_layers():
    from corenet_activations.pointwise import ELU, PReLU, LeakyReLU, ReLU, Sigmoid, Tanh
    from corenet_activations.softmax import Softmax

    return [Sigmoid, Tanh, ReLU, LeakyReLU, PReLU, ELU, Softmax]
