"""Every built-in layer passes the conformance kit that plugin authors run."""
import re

import numpy as np
import pytest

from corenet import Layer, Parameter, testing
from corenet.layer import (check_grad, check_input, parameter_arrays, parameter_arrays_to_write,
                           require_forward)
from corenet.registry import registry
from layer_table import LAYERS, builtin_names, layer_id


def test_every_registered_layer_has_a_row():
    assert {name for name, _, _ in LAYERS} == builtin_names()


@pytest.mark.parametrize("check", testing.CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("row", LAYERS, ids=layer_id)
def test_conformance(row, check):
    name, config, shapes = row
    check(registry.layer(name), config, shapes)


@pytest.mark.parametrize("check", testing.CHECKS, ids=lambda check: check.__name__)
def test_a_float64_layer_is_fed_float64(check):
    check(registry.layer("linear"), {"in_features": 5, "out_features": 4, "dtype": "float64"},
          [(5,)])


# -- the config check on layers whose get_config is broken ----------------------------

class Scale(Layer):
    """y = factor · x: a correct layer, to break one way at a time below."""

    name = "scale"

    def __init__(self, factor=1.0, axes=(0,)):
        super().__init__()
        self.factor = float(factor)
        self.axes = tuple(axes)  # a tuple that a model file stores as a JSON list
        self._x = None

    def forward(self, x):
        self._x = check_input(self, x)
        return self.factor * self._x

    def backward(self, grad):
        require_forward(self, self._x)
        return self.factor * check_grad(self, grad, self._x.shape, self._x.dtype)

    def get_config(self):
        return {"factor": self.factor, "axes": self.axes}


class ForgetsFactor(Scale):
    def get_config(self):
        return {"axes": self.axes}


class ReturnsList(Scale):
    def get_config(self):
        return [self.factor]


class ReturnsNumpyScalar(Scale):
    def get_config(self):
        return {"factor": np.float32(self.factor), "axes": self.axes}


class MisspellsFactor(Scale):
    def get_config(self):
        return {"facter": self.factor, "axes": self.axes}


class DriftsFactor(Scale):
    def get_config(self):  # each rebuild moves further away
        return {"factor": self.factor + 1, "axes": self.axes}


class HidesFactor(Scale):
    """The setting lives in a private attribute only the output reveals."""

    def __init__(self, factor=1.0, axes=(0,)):
        super().__init__(1.0, axes)
        self._hidden = float(factor)

    def forward(self, x):
        return self._hidden * super().forward(x)

    def backward(self, grad):
        return self._hidden * super().backward(grad)

    def get_config(self):
        return {"axes": self.axes}


class Weighted(Scale):
    """y = w · x with a parameter w of `size` values, which get_config forgets."""

    def __init__(self, factor=1.0, axes=(0,), size=1):
        super().__init__(factor, axes)
        self._weight = Parameter("w", np.ones(size, np.float32))

    def parameters(self):
        return [self._weight]


class TrainingNoise(Scale):
    """Adds fresh noise in training mode only, as dropout would."""

    def forward(self, x):
        out = super().forward(x)
        return out + np.random.default_rng().normal(size=out.shape) if self.training else out


@pytest.mark.parametrize("cls", [Scale, TrainingNoise])
def test_a_correct_layer_passes_the_config_check(cls):
    testing.check_config_round_trip(cls, {"factor": 2.0, "axes": (0, 1)}, [(3,)])


# Each broken layer, built with factor=2.0, and the start of the message it must give.
BROKEN_CONFIGS = [
    (ForgetsFactor, "ForgetsFactor.get_config() does not rebuild an equal layer: "
                    "rebuilt factor=1.0, original factor=2.0"),
    (ReturnsList, "ReturnsList.get_config() must return a dict of constructor arguments, "
                  "got list"),
    (ReturnsNumpyScalar, "ReturnsNumpyScalar.get_config(): factor=np.float32(2.0) (float32) "
                         "is not a JSON value, and a model file stores the config as JSON"),
    (MisspellsFactor, "MisspellsFactor.get_config() returned {'facter': 2.0, 'axes': [0]}, "
                      "which MisspellsFactor(**config) rejects: TypeError: "),
    (DriftsFactor, "DriftsFactor.get_config() does not rebuild an equal layer: get_config() of "
                   "the rebuilt layer differs: rebuilt factor=4.0, original factor=3.0"),
    (HidesFactor, "HidesFactor.get_config() does not rebuild an equal layer: with the same "
                  "parameters its output differs by up to"),
]


@pytest.mark.parametrize("cls, message", BROKEN_CONFIGS,
                         ids=[cls.__name__ for cls, _ in BROKEN_CONFIGS])
def test_the_config_check_names_the_layer_and_what_differs(cls, message):
    with pytest.raises(AssertionError, match="^" + re.escape(message)):
        testing.check_config_round_trip(cls, {"factor": 2.0}, [(3,)])


def test_the_config_check_compares_parameters():
    with pytest.raises(AssertionError, match=re.escape(
            "Weighted.get_config() does not rebuild an equal layer: rebuilt parameters "
            "{'w': ((1,), 'float32')}, original {'w': ((4,), 'float32')}")):
        testing.check_config_round_trip(Weighted, {"size": 4}, [(3,)])


def test_check_layer_reports_a_config_that_is_not_a_dict_before_anything_prints_it():
    message = "ReturnsList.get_config() must return a dict"
    with pytest.raises(AssertionError, match=re.escape(message)):
        testing.check_layer(ReturnsList, {}, [(3,)])


# -- the other checks on layers that break the protocol -------------------------------

class ForwardReturnsList(Scale):
    def forward(self, x):
        return super().forward(x).tolist()


class BackwardReturnsNone(Scale):
    def backward(self, grad):
        super().backward(grad)


class BackwardReturnsTwo(Scale):
    def backward(self, grad):
        return super().backward(grad), super().backward(grad)


class BackwardWrongShape(Scale):
    def backward(self, grad):
        return super().backward(grad)[:, :1]


class OutputShapeList(Scale):
    def output_shape(self, *shapes):
        return list(shapes[0])


class ParametersTuple(Weighted):
    def parameters(self):
        return (self._weight,)


class BuffersArrays(Scale):
    def state_buffers(self):
        return [np.zeros(3)]


# Each broken layer, and the message check_layer must fail it with: these were a
# TypeError or AttributeError inside the kit, or (two gradients) an accident of zip.
BROKEN_PROTOCOL = [
    (ForwardReturnsList, "scale.forward must return a numpy array, got list"),
    (BackwardReturnsNone, "scale.backward: the gradient of input 0 must be a float64 array of "
                          "its shape (3, 3), got NoneType"),
    (BackwardReturnsTwo, "scale.backward must return one gradient per input (1), got 2"),
    (BackwardWrongShape, "scale.backward: the gradient of input 0 must be a float64 array of "
                         "its shape (3, 3), got float64 (3, 1)"),
    (OutputShapeList, "scale.output_shape must return a tuple of positive ints (the "
                      "per-sample shape), got [3]"),
    (ParametersTuple, "scale.parameters() must return a list of corenet.Parameter objects, "
                      "got tuple ['Parameter']"),
    (BuffersArrays, "scale.state_buffers() must return a list of corenet.Buffer objects, got "
                    "list ['ndarray']"),
]


@pytest.mark.parametrize("cls, message", BROKEN_PROTOCOL,
                         ids=[cls.__name__ for cls, _ in BROKEN_PROTOCOL])
def test_check_layer_names_what_a_broken_layer_returns(cls, message):
    with pytest.raises(AssertionError, match="^" + re.escape(message)):
        testing.check_layer(cls, {"factor": 2.0}, [(3,)], skip=("check_save_load",))


def test_check_save_load_of_an_unregistered_layer_says_what_to_do():
    with pytest.raises(AssertionError, match="^check_save_load: no installed plugin provides "
                                             "layer 'scale'.*skip=\\('check_save_load',\\)"):
        testing.check_save_load(Scale, {"factor": 2.0}, [(3,)])


def test_check_layer_names_the_check_that_failed():
    with pytest.raises(AssertionError) as failure:
        testing.check_layer(ForwardReturnsList, {"factor": 2.0}, [(3,)])
    assert failure.value.__notes__ == [
        "in corenet.testing.check_output_shape(ForwardReturnsList, {'factor': 2.0}, [(3,)])"]


class Gain(Scale):
    """y = g · x with a learned gain g, its gradient taken as the kit asks."""

    def __init__(self, factor=1.0, axes=(0,)):
        super().__init__(factor, axes)
        self.gain = Parameter("gain", np.ones(1))

    def parameters(self):
        return [self.gain]

    def forward(self, x):
        self._x = check_input(self, x)
        return self.gain.value[0] * self._x

    def backward(self, grad):
        require_forward(self, self._x)
        grad = check_grad(self, grad, self._x.shape, self._x.dtype)
        self.take_gain_grad(np.sum(grad * self._x))
        return self.gain.value[0] * grad

    def take_gain_grad(self, value):
        _, gain_grad = parameter_arrays(self, self.gain, (1,), np.float64)
        gain_grad += value


class GainAlwaysWrites(Gain):
    """Writes its gradient even when it was set: a second backward loses the first."""

    def take_gain_grad(self, value):
        _, gain_grad, _ = parameter_arrays_to_write(self, self.gain, (1,), np.float64)
        gain_grad[...] = value


class GainIgnoresOverwrite(Gain):
    """Takes its grad unzeroed and adds anyway: the last step's gradient leaks in."""

    def take_gain_grad(self, value):
        _, gain_grad, _ = parameter_arrays_to_write(self, self.gain, (1,), np.float64)
        gain_grad += value


class GainReadsItsGrad(Gain):
    """Adds into self.gain.grad directly: None after zero_grad(set_to_none=True)."""

    def take_gain_grad(self, value):
        self.gain.grad += value


def test_the_unset_grads_check_passes_a_layer_that_adds_through_parameter_arrays():
    testing.check_unset_grads(Gain, {}, [(3,)])


class GainAndSpare(Gain):
    """A second parameter that backward never reaches: its grad stays unset."""

    def __init__(self, factor=1.0, axes=(0,)):
        super().__init__(factor, axes)
        self.spare = Parameter("spare", np.ones(2))

    def parameters(self):
        return [self.gain, self.spare]


def test_the_unset_grads_check_takes_a_parameter_backward_does_not_reach():
    testing.check_unset_grads(GainAndSpare, {}, [(3,)])


@pytest.mark.parametrize("cls, error, message", [
    (GainAlwaysWrites, AssertionError, "scale: two backwards from zeros give gain a gradient "
                                       "other than twice one's"),
    (GainIgnoresOverwrite, AssertionError, "scale: gain's gradient after "
                                           r"zero_grad\(set_to_none=True\) and one backward "
                                           "differs from the one from zeros"),
    (GainReadsItsGrad, TypeError, "unsupported operand"),
])
def test_the_unset_grads_check_fails_a_layer_that_mishandles_them(cls, error, message):
    with pytest.raises(error, match=message):
        testing.check_unset_grads(cls, {}, [(3,)])
