"""What the fuzz suite (test_fuzz.py) found, one test per fix: arguments taken silently or
refused with a message that names nothing, arrays claiming terabytes that reached numpy's
allocator, a predict on such an array that never returned, lists numpy cannot read."""
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.errors import DTypeError, ShapeError
from corenet.kernels.elementwise import accumulate
from corenet.losses import MSE, SoftmaxCrossEntropy
from corenet.optim import SGD

import fuzz_harness
from corenet_dense import dropout, maxout, normalization
from corenet.registry import registry
from layer_table import LAYERS, layer_id
from test_model_files import peak_memory_of


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


# -- arrays that claim more memory than the machine has -----------------------------------

def refused_small(call, error, message):
    """call() raises error matching message, having allocated less than 1 MiB."""
    def expect():
        with pytest.raises(error, match=message):
            call()
    assert peak_memory_of(expect) < 1 << 20


TERABYTES = np.broadcast_to(np.float32(1), (2 ** 40, 8))  # 32 TiB claimed, 4 bytes held


@pytest.mark.parametrize("call, message", [
    (lambda: L.ReLU().forward(TERABYTES[:, ::2]),
     r"relu: a C-contiguous copy of the input of shape \(1099511627776, 4\) float32 would "
     r"take 16.0 TiB, more than the memory this process may use"),
    (lambda: L.Linear(8, 2).forward(TERABYTES), r"linear: a C-contiguous copy of the input"),
    (lambda: L.Conv2d(1, 1, 1, padding=10 ** 6).forward(np.ones((1, 1, 1, 1), np.float32)),
     r"conv2d: the output of shape \(1, 1, 2000001, 2000001\) float32"),
    (lambda: L.Linear(2 ** 20, 2 ** 20), r"linear: parameter 'weight' of shape "
                                         r"\(1048576, 1048576\) float64 would take 8.0 TiB"),
    (lambda: L.PReLU(2 ** 42), r"prelu: parameter 'weight'"),
    (lambda: L.Conv3d(1, 2 ** 20, 2 ** 10), r"conv3d: parameter 'weight'"),
    (lambda: MSE().forward(TERABYTES, TERABYTES), r"mse: a C-contiguous copy of the predictions"),
    (lambda: cn.Sequential(L.Linear(8, 2)).forward(TERABYTES),
     r"Model input 0: a C-contiguous copy of the input"),
])
def test_a_huge_array_is_refused_before_it_is_allocated(call, message):
    # Before: numpy's "MemoryError: Unable to allocate 32.0 TiB".
    refused_small(call, ShapeError, message)


def test_the_bound_is_the_address_space_limit_when_it_is_lower():
    # A 4 GiB prelu weight (drawn in float64: 8 GiB) under `ulimit -v` 6 GiB: numpy's
    # MemoryError before (the fuzz workers run under such a limit).
    code = ("import resource, corenet.layers as L; resource.setrlimit(resource.RLIMIT_AS, "
            "(6 << 30, resource.getrlimit(resource.RLIMIT_AS)[1])); L.PReLU(2 ** 30)")
    # Run outside the checkout: `-c` puts the current folder first on sys.path, and the
    # checkout's corenet is not built when CI tests an installed one.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 1
    assert ("ShapeError: prelu: parameter 'weight' of shape (1073741824,) float64 would take "
            "8.0 GiB, more than the memory this process may use") in result.stderr


def test_predict_on_a_huge_broadcast_input_is_refused_at_once():
    # Before: predict walked 2⁴⁰ batches of one sample and never returned. In a worker,
    # so that a regression shows as a hang instead of stalling the session.
    case = {"group": "model", "scenario": "predict", "layer": "relu", "config": {},
            "dtype": "float32", "seed": 0, "then": None, "batch_size": 1,
            "inputs": [{"shape": [3, 7], "dtype": "float32", "layout": "C", "seed": 0}],
            "mutation": {"kind": "huge", "axis": 0, "size": 2 ** 40}}
    [result] = fuzz_harness.run_cases([case], timeout=60)
    assert result["outcome"] == "clean_error", result
    assert "Model.predict: the output of shape (1099511627776, 7) float32" in result["detail"]


# -- what numpy cannot read as an array ----------------------------------------------------------

RAGGED = [[1.0, 2.0], [3.0]]


@pytest.mark.parametrize("call, message", [
    (lambda: L.ReLU().forward(RAGGED), "relu: the input cannot be read as an array of numbers"),
    (lambda: MSE().forward(RAGGED, RAGGED), "mse: the predictions cannot be read as an array"),
    (lambda: MSE().forward(np.ones((2, 2)), RAGGED), "mse: the targets cannot be read"),
    (lambda: SoftmaxCrossEntropy().forward(np.ones((2, 2)), [[0], []]),
     "softmax_cross_entropy: the labels cannot be read"),
    (lambda: cn.Sequential(L.Linear(2, 2)).forward(RAGGED), "Model input 0: the input cannot"),
    (lambda: cn.Sequential(L.Linear(2, 2)).predict(RAGGED), "Model.predict: the input cannot"),
])
def test_a_ragged_list_is_a_dtype_error_naming_the_layer(call, message):
    with pytest.raises(DTypeError, match=message):
        call()


def test_a_ragged_gradient_is_refused_by_backward():
    layer = L.Sigmoid()
    layer.forward(np.ones((2, 2), np.float32))
    with pytest.raises(DTypeError, match="sigmoid.backward: the gradient cannot be read"):
        layer.backward(RAGGED)


def test_flatten_backward_checks_the_gradient_against_the_forward_dtype():
    layer = L.Flatten()
    layer.forward(np.ones((2, 3, 4), np.float32))
    # Before: a list had no .dtype (AttributeError); an int gradient went through.
    with pytest.raises(DTypeError, match="flatten.backward: expected a float32 gradient"):
        layer.backward(np.ones((2, 12)).tolist())
    with pytest.raises(DTypeError, match="flatten.backward: expected a float32 gradient, "
                                         "got int64"):
        layer.backward(np.ones((2, 12), np.int64))


@pytest.mark.parametrize("row", LAYERS, ids=layer_id)
def test_backward_after_astype_is_refused_until_forward_runs_again(row):
    # Before: linear, maxout and the convolutions read the float32 input of the
    # forward as float64 (garbage gradients, or a segfault); the norms failed with
    # Cython's "Buffer dtype mismatch", which names no layer.
    name, config, shapes = row
    layer = registry.layer(name)(**config)
    xs = [np.ones((2,) + shape, np.float32) for shape in shapes]
    out = layer.forward(*xs)
    layer.astype("float64")
    with pytest.raises(DTypeError, match=f"^{name}.backward: "):
        layer.backward(np.ones(out.shape))
    out = layer.forward(*[x.astype(np.float64) for x in xs])
    layer.backward(np.ones(out.shape))


def test_layers_take_samples_of_size_zero():
    empty = np.ones((3, 0), np.float32)
    # Softmax divided by zero columns (ZeroDivisionError); flatten asked numpy for -1.
    assert L.Softmax().forward(empty).shape == (3, 0)
    layer = L.Softmax()
    layer.forward(empty)
    assert layer.backward(empty).shape == (3, 0)
    assert L.Flatten().forward(np.ones((3, 0, 2), np.float32)).shape == (3, 0)


@pytest.mark.parametrize("track_running_stats", [True, False])
def test_batch_norm_takes_samples_of_size_zero_and_keeps_its_statistics(track_running_stats):
    # The running variance became NaN (a variance over no values, times count / (count - 1)).
    layer = L.BatchNorm2d(2, track_running_stats=track_running_stats)
    layer.needs_input_grad = True
    empty = np.ones((3, 2, 0, 3), np.float32)
    assert layer.forward(empty).shape == empty.shape
    assert layer.backward(empty).shape == empty.shape
    assert not layer.weight.grad.any() and not layer.bias.grad.any()
    if track_running_stats:
        np.testing.assert_array_equal(layer.running_mean.value, 0)
        np.testing.assert_array_equal(layer.running_var.value, 1)
        assert layer.num_batches_tracked.value == 1  # counted, as in PyTorch


def test_layer_norm_takes_an_input_with_no_rows():
    # The statistics twin refused zero rows, naming itself rather than the layer.
    layer = L.LayerNorm(4)
    layer.needs_input_grad = True
    empty = np.ones((2, 0, 4), np.float32)
    assert layer.forward(empty).shape == empty.shape
    assert layer.backward(empty).shape == empty.shape
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


# -- models and optimizers ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [None, 3.0, (True,), "abc", (2, None)])
def test_input_shapes_that_are_not_positive_ints_are_refused(shape):
    with pytest.raises(ShapeError, match="Input: shape must be a non-empty tuple of positive "
                                         "ints"):
        cn.Input(shape)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "3", None, True])
def test_predict_refuses_a_batch_size_that_is_not_a_positive_int(batch_size):
    model = cn.Sequential(L.Linear(2, 2))
    with pytest.raises(ValueError, match="Model.predict: batch_size must be"):
        model.predict(np.ones((3, 2), np.float32), batch_size)


def test_predict_refuses_an_empty_batch():
    with pytest.raises(ShapeError, match=r"Model.predict: expected a non-empty batch, got "
                                         r"shape \(0, 2\)"):
        cn.Sequential(L.Linear(2, 2)).predict(np.ones((0, 2), np.float32))


def test_an_input_listed_twice_is_refused():
    # Before: the model was built, and forward failed with an IndexError.
    x = cn.Input((3,))
    with pytest.raises(ValueError, match="Model: an Input is listed twice"):
        cn.Model([x, x], L.ReLU()(x))


def test_a_none_gradient_is_refused_by_model_backward():
    # Before: backward(None) returned at once and left every gradient as it was.
    model = cn.Sequential(L.Linear(2, 2))
    model.forward(np.ones((3, 2), np.float32))
    with pytest.raises(TypeError, match="Model.backward: gradient 0 is None"):
        model.backward(None)


@pytest.mark.parametrize("params, message", [
    (3, "SGD: params must be an iterable of corenet.Parameter, got int"),
    ([None], "SGD: params must hold corenet.Parameter objects, got NoneType"),
    ([np.ones(3)], "SGD: params must hold corenet.Parameter objects, got ndarray"),
])
def test_sgd_refuses_what_is_not_a_list_of_parameters(params, message):
    with pytest.raises(TypeError, match=message):
        SGD(params, lr=0.1)


@pytest.mark.parametrize("settings", [{"lr": "0.1"}, {"lr": [1, 2]}, {"lr": True},
                                      {"momentum": {}}, {"weight_decay": float("inf")}])
def test_sgd_refuses_settings_that_are_not_finite_numbers(settings):
    parameters = [cn.Parameter("w", np.ones(3, np.float32))]
    with pytest.raises(ValueError, match=r"SGD: \w+ must be a finite number >= 0"):
        SGD(parameters, **{"lr": 0.1, **settings})


# -- attributes set after construction ---------------------------------------------------------

@pytest.mark.parametrize("build, key", [
    (lambda: L.Maxout(4, 3, 2), "in_features"),
    (lambda: L.Maxout(4, 3, 2), "pieces"),
    (lambda: L.LayerNorm(3), "normalized_shape"),
    (lambda: L.BatchNorm1d(3), "num_features"),
    (lambda: L.BatchNorm2d(3, track_running_stats=False), "track_running_stats"),
    (lambda: L.Concat(), "axis"),
])
def test_sizes_that_shape_the_parameters_are_fixed(build, key):
    # Before: Maxout's and LayerNorm's kernels took the new size with the old arrays
    # (segfaults); BatchNorm looked for running statistics it never made.
    layer = build()
    before = getattr(layer, key)
    with pytest.raises(AttributeError, match=f"^{layer.name}: {key} is fixed when the layer "
                                             f"is built"):
        setattr(layer, key, 1)
    assert getattr(layer, key) == before


def test_linear_backward_refuses_an_input_of_other_features_than_in_features():
    # Before: in_features and the weight replaced between forward and backward had the
    # kernel write past the gradient (glibc's "malloc(): invalid size").
    layer = L.Linear(1000, 10)
    out = layer.forward(np.ones((8, 1000), np.float32))
    layer.in_features = 1
    layer.weight = cn.Parameter("weight", np.zeros((10, 1), np.float32))
    with pytest.raises(ShapeError, match="linear: the forward's input has 1000 features, "
                                         "in_features is now 1"):
        layer.backward(np.ones_like(out))


def test_activation_settings_are_checked_where_they_are_used():
    relu = L.ReLU()
    relu.kind = 1000  # the kernels' table index is the class's: this crashed before
    np.testing.assert_array_equal(relu.forward(np.array([[-1.0, 2.0]], np.float32)), [[0, 2]])
    leaky = L.LeakyReLU()
    leaky.negative_slope = "a"
    with pytest.raises(ValueError, match="leaky_relu: negative_slope must be a finite number"):
        leaky.forward(np.ones((2, 2), np.float32))
    elu = L.ELU()
    elu.alpha = None
    with pytest.raises(ValueError, match="elu: alpha must be a finite number, got None"):
        elu.forward(np.ones((2, 2), np.float32))


def test_an_activation_changed_after_fusion_is_an_error_not_a_skipped_node():
    x = cn.Input((4,))
    leaky = L.LeakyReLU(0.1)
    model = cn.Model(x, leaky(L.Linear(4, 3)(x)))
    leaky.negative_slope = 0.2  # still fusable: used
    out = model.forward(np.full((2, 4), -1.0, np.float32))
    assert np.all(out[out < 0] != 0)
    # A negative slope cannot run in the epilogue; the node is skipped, so the Linear
    # computed without any activation before.
    leaky.negative_slope = -0.5
    with pytest.raises(ValueError, match="leaky_relu: its parameter changed after the model "
                                         "fused it into linear"):
        model.forward(np.ones((2, 4), np.float32))


def test_dropout_backward_scales_by_the_forward_p():
    layer = L.Dropout(0.5)
    out = layer.forward(np.ones((1, 64), np.float32))
    layer.p = 0.2  # before: backward scaled by 1 / 0.8 where forward used 1 / 0.5
    np.testing.assert_array_equal(layer.backward(np.ones_like(out)), out)
    layer.p = 1.5
    with pytest.raises(ValueError, match=r"dropout: p must be a number in \[0, 1\), got 1.5"):
        layer.forward(np.ones((1, 64), np.float32))


def test_batch_norm_checks_eps_momentum_and_the_batch_count_at_each_forward():
    x = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    layer = L.BatchNorm1d(3)
    layer.eps = -1.0  # before: NaN outputs
    with pytest.raises(ValueError, match="batch_norm1d: eps must be a number > 0, got -1.0"):
        layer.forward(x)
    layer.eps, layer.momentum = 1e-5, float("nan")
    with pytest.raises(ValueError, match=r"batch_norm1d: momentum must be a number in \[0, 1\]"):
        layer.forward(x)
    layer = L.BatchNorm1d(3, momentum=None)
    layer.num_batches_tracked.value[...] = -1  # before: ZeroDivisionError
    with pytest.raises(ValueError, match="batch_norm1d: num_batches_tracked must be >= 0"):
        layer.forward(x)


KERNEL_TWIN_CALLS = [
    # (call, message): each ran the kernel past an array's end, or wrote to bytes
    (lambda: dropout.apply_mask(np.ones(1 << 20, np.float32), np.zeros(1, np.float32), 1, 0.5),
     "apply_mask: target has 1 element, expected 1048576"),
    (lambda: dropout.apply_mask(np.ones(4, np.float32), np.zeros(4, np.float32), 1, 1.0),
     r"apply_mask: p must be in \[0, 1\), got 1.0"),
    (lambda: maxout.maxout_pieces(np.ones(2, np.float32), np.zeros(1 << 20, np.float32),
                                  np.zeros(1 << 20, np.int32), 4),
     "maxout_pieces: z has 2 elements, expected 4194304"),
    (lambda: maxout.maxout_pieces(np.ones(0, np.float32), np.zeros(4, np.float32),
                                  np.zeros(4, np.int32), 2 ** 62),  # 4 · 2⁶² wraps to 0 in C
     "maxout_pieces: z has 0 elements, expected 18446744073709551616"),
    (lambda: maxout.maxout_pieces(np.ones(8, np.float32), np.zeros(4, np.float32),
                                  np.zeros(3, np.int32), 2),
     "maxout_pieces: chosen has 3 elements, expected 4"),
    (lambda: maxout.maxout_route(np.ones(2, np.float32), np.zeros(2, np.int32),
                                 np.zeros(3, np.float32), 2),
     "maxout_route: z_grad has 3 elements, expected 4"),
    (lambda: normalization.statistics(np.ones(4, np.float32), 1000, 1000, 1000, np.zeros(1),
                                      np.zeros(1)),
     "statistics: x has 4 elements, expected 1000000000"),
    (lambda: normalization.statistics(np.ones(4, np.float32), 2, 2, 1, np.zeros(2), np.zeros(1)),
     "statistics: variance has 1 element, expected 2"),
    (lambda: normalization.statistics(np.ones(4, np.float32), -2, -2, 1, np.zeros(2),
                                      np.zeros(2)),
     "statistics: batch must be at least 1, got -2"),
    (lambda: normalization.grad_sums(np.ones(4, np.float32), np.ones(3, np.float32), np.zeros(2),
                                     2, 2, 1, np.zeros(2), np.zeros(2)),
     "grad_sums: x has 3 elements, expected 4"),
    (lambda: normalization.affine(np.zeros(6, np.float32), np.ones(6, np.float32), None, None,
                                  None, None, np.zeros(2), 1, 2, 3),
     "affine: p needs p_scale, got None"),
    (lambda: normalization.affine(np.zeros(6, np.float32), None, None, None, None, None,
                                  np.zeros(1), 1, 2, 3),
     "affine: shift has 1 element, expected 2"),
    (lambda: normalization.layer_norm_forward(np.ones(6, np.float32), np.zeros(2), np.ones(2),
                                              np.ones(4, np.float32), None,
                                              np.zeros(6, np.float32), 3),
     "layer_norm_forward: weight has 4 elements, expected 3"),
    (lambda: normalization.layer_norm_input_grad(np.ones(6, np.float32), np.ones(6, np.float32),
                                                 np.zeros(3), np.ones(3), None,
                                                 np.zeros(6, np.float32), 3),
     "layer_norm_input_grad: grad has 6 elements, expected 9"),
    (lambda: normalization.layer_norm_parameter_sums(np.ones(6, np.float32),
                                                     np.ones(6, np.float32), np.zeros(2),
                                                     np.ones(2), np.zeros(3), np.zeros(2), 3),
     "layer_norm_parameter_sums: bias_sum has 2 elements, expected 3"),
    (lambda: accumulate(np.frombuffer(bytes(16), np.float32), np.ones(4, np.float32)),
     "accumulate: the total is read-only"),
]


@pytest.mark.parametrize("call, message", KERNEL_TWIN_CALLS,
                         ids=[message.split(":")[0] for _, message in KERNEL_TWIN_CALLS])
def test_the_python_twins_of_kernels_check_their_arrays_against_the_sizes(call, message):
    with pytest.raises(ValueError, match=message + "$"):
        call()


def test_the_python_twins_of_kernels_take_empty_arrays():
    # An empty batch has nothing to do (&x[0] of an empty view is an IndexError in a
    # build with CORENET_CYTHON_CHECKS, whose bounds checks are on).
    empty = np.zeros(0, np.float32)
    dropout.apply_mask(empty, empty.copy(), 1, 0.5)
    maxout.maxout_pieces(empty, empty.copy(), np.zeros(0, np.int32), 3)
    weight_sum, bias_sum = np.ones(3), np.ones(3)
    normalization.layer_norm_parameter_sums(empty, empty, np.zeros(0), np.zeros(0), weight_sum,
                                            bias_sum, 3)
    assert not weight_sum.any() and not bias_sum.any()


@pytest.mark.parametrize("value", [-1.0, np.nan])
def test_batch_norm_in_eval_refuses_a_running_variance_below_minus_eps(value):
    # From a model file: the square root made every output NaN, with a numpy warning.
    layer = L.BatchNorm1d(3).eval()
    layer.running_var.value[1] = value
    with pytest.raises(ValueError, match=rf"batch_norm1d: running_var must hold numbers > -eps "
                                         rf"\(-1e-05\), got {value}"):
        layer.forward(np.ones((2, 3), np.float32))
    layer.running_var.value[1] = -1e-6  # var + eps > 0, as PyTorch takes it
    assert np.isfinite(layer.forward(np.ones((2, 3), np.float32))).all()
