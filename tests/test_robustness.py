"""What the fuzz suite (test_fuzz.py) found, one test per fix: arguments taken silently or
refused with a message that names nothing, arrays claiming terabytes that reached numpy's
allocator, a predict on such an array that never returned, lists numpy cannot read."""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.errors import DTypeError
from corenet.losses import MSE, SoftmaxCrossEntropy


# -- constructor arguments -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [None, False, 3, np.float32(0.5), "abc", [1]])
def test_a_dtype_that_is_not_float32_or_float64_is_refused(dtype):
    # numpy reads None as float64, and `None in (float32, float64)` was True.
    for build in (lambda: L.Linear(2, 3, dtype=dtype), lambda: L.PReLU(dtype=dtype),
                  lambda: L.Conv2d(1, 1, 1, dtype=dtype)):
        with pytest.raises(DTypeError, match=r"^(linear|prelu|conv2d): dtype must be float32 "
                                             r"or float64, got"):
            build()


@pytest.mark.parametrize("build, message", [
    (lambda: L.LeakyReLU("0.1"), "leaky_relu: negative_slope must be a finite number, got '0.1'"),
    (lambda: L.LeakyReLU(True), "leaky_relu: negative_slope must be a finite number, got True"),
    (lambda: L.ELU(float("nan")), "elu: alpha must be a finite number, got nan"),
    (lambda: L.ELU(float("-inf")), "elu: alpha must be a finite number, got -inf"),
    (lambda: L.PReLU(init=True), "prelu: init must be a finite number, got True"),
    (lambda: L.PReLU(init=[1]), r"prelu: init must be a finite number, got \[1\]"),
    (lambda: L.Linear(2, 3, bias="False"), "linear: bias must be True or False, got 'False'"),
    (lambda: L.Linear(2, 3, bias=2.0), "linear: bias must be True or False, got 2.0"),
    (lambda: L.Concat(axis=0.5), "concat: axis must be an integer, got 0.5"),
    (lambda: L.Concat(axis=None), "concat: axis must be an integer, got None"),
    (lambda: L.Concat(axis="1"), "concat: axis must be an integer, got '1'"),
    (lambda: L.Conv2d(1, 1, 1, stride=2 ** 63), "conv2d: stride must be at most 2147483647"),
    (lambda: L.MaxPool2d(2 ** 40), "max_pool2d: kernel_size must be at most 2147483647"),
])
def test_numbers_of_the_wrong_kind_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_the_values_that_were_taken_still_are():
    assert L.LeakyReLU(np.float32(0.5)).negative_slope == 0.5
    assert L.ELU(2).alpha == 2.0
    assert L.Linear(2, 3, bias=np.bool_(False)).bias is None
    assert L.Concat(axis=np.int64(1)).axis == 1
    assert L.Conv2d(1, 1, 3.0).window.kernel == (3, 3)  # an integral float, as before


@pytest.mark.parametrize("build, message", [
    (lambda: L.Tanh(colour=1), r"tanh: got an unexpected keyword argument "
                               r"'colour'; it takes \(\)"),
    (lambda: L.Conv2d(3), r"conv2d: missing a required argument: 'out_channels'; it takes "
                          r"\(in_channels, out_channels, kernel_size, stride=1"),
    (lambda: L.Flatten(1), r"flatten: too many positional arguments"),
])
def test_argument_errors_name_the_layer(build, message):
    # A Cython __init__ said only "__init__() got an unexpected keyword argument".
    with pytest.raises(TypeError, match=message):
        build()


def test_a_type_error_inside_a_constructor_is_left_as_it_is():
    class Strict(cn.Layer):
        name = "fuzz_strict"

        def __init__(self, size=1):
            super().__init__()
            raise TypeError("size must be a prime")

    with pytest.raises(TypeError, match="^size must be a prime$"):
        Strict(2)


# -- what numpy cannot read as an array ----------------------------------------------------------

RAGGED = [[1.0, 2.0], [3.0]]


@pytest.mark.parametrize("call, message", [
    (lambda: L.ReLU().forward(RAGGED), "relu: the input cannot be read as an array of numbers"),
    (lambda: MSE().forward(RAGGED, RAGGED), "mse: the predictions cannot be read as an array"),
    (lambda: MSE().forward(np.ones((2, 2)), RAGGED), "mse: the targets cannot be read"),
    (lambda: SoftmaxCrossEntropy().forward(np.ones((2, 2)), [[0], []]),
     "softmax_cross_entropy: the labels cannot be read"),
    (lambda: cn.Sequential(L.Linear(2, 2)).forward(RAGGED), "Model input 0: the input cannot"),
])
def test_a_ragged_list_is_a_dtype_error_naming_the_layer(call, message):
    with pytest.raises(DTypeError, match=message):
        call()


def test_a_ragged_gradient_is_refused_by_backward():
    layer = L.Sigmoid()
    layer.forward(np.ones((2, 2), np.float32))
    with pytest.raises(DTypeError, match="sigmoid.backward: the gradient cannot be read"):
        layer.backward(RAGGED)
