"""Initial weights: PyTorch's formulas and fans, seeded through corenet.random, in the config."""
import json
import math

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet import init, random

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")

# (layer, its weight's fan_in and fan_out, as PyTorch computes them from the weight's shape)
LAYERS = [
    (lambda **init: L.Linear(600, 300, **init), 600, 300),
    # (out, in/groups, kh, kw): fan_in = in/groups · kh · kw, fan_out = out · kh · kw
    (lambda **init: L.Conv2d(128, 128, (3, 5), groups=2, **init), 64 * 15, 128 * 15),
    (lambda **init: L.Conv3d(48, 96, 3, **init), 48 * 27, 96 * 27),
    # maxout: the weight of Linear(in, out · pieces)
    (lambda **init: L.Maxout(500, 100, pieces=3, **init), 500, 300),
]

# (spec, (uniform bound or None, standard deviation) from fan_in and fan_out)
EXPECTED = [
    ("pytorch_uniform", lambda fan_in, fan_out: (1 / math.sqrt(fan_in), None)),
    ("kaiming_uniform", lambda fan_in, fan_out: (math.sqrt(6 / fan_in), None)),
    ("kaiming_normal", lambda fan_in, fan_out: (None, math.sqrt(2 / fan_in))),
    ("xavier_uniform", lambda fan_in, fan_out: (math.sqrt(6 / (fan_in + fan_out)), None)),
    ("xavier_normal", lambda fan_in, fan_out: (None, math.sqrt(2 / (fan_in + fan_out)))),
    (("kaiming_normal", {"mode": "fan_out"}),
     lambda fan_in, fan_out: (None, math.sqrt(2 / fan_out))),
    (("kaiming_uniform", {"nonlinearity": "tanh"}),
     lambda fan_in, fan_out: (5 / 3 * math.sqrt(3 / fan_in), None)),
    (("kaiming_normal", {"a": 0.2}),
     lambda fan_in, fan_out: (None, math.sqrt(2 / (1.04 * fan_in)))),
    (("xavier_normal", {"gain": 2.0}),
     lambda fan_in, fan_out: (None, 2 * math.sqrt(2 / (fan_in + fan_out)))),
]


@pytest.mark.parametrize("spec, expected", EXPECTED, ids=[str(spec) for spec, _ in EXPECTED])
@pytest.mark.parametrize("make, fan_in, fan_out", LAYERS, ids=["linear", "conv2d", "conv3d",
                                                                "maxout"])
def test_weights_have_the_formula_s_spread(make, fan_in, fan_out, spec, expected):
    random.seed(0)
    weight = make(init=spec).weight.value.astype(np.float64)
    assert weight.size > 100_000
    bound, std = expected(fan_in, fan_out)
    if bound is not None:  # uniform in ±bound: std = bound/√3, reaches near both ends
        std = bound / math.sqrt(3)
        assert np.abs(weight).max() <= bound
        assert weight.max() > 0.999 * bound and weight.min() < -0.999 * bound
    else:  # normal: about 4.6 % of the draws beyond 2 std
        assert np.mean(np.abs(weight) > 2 * std) == pytest.approx(0.0455, abs=0.005)
    # The sample mean and std of n ≥ 10⁵ draws are within a few thousandths of std.
    assert abs(weight.mean()) < 0.02 * std
    assert weight.std() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("make, fan_in, fan_out", LAYERS[:2], ids=["linear", "conv2d"])
def test_constants_and_the_bias(make, fan_in, fan_out):
    layer = make(init="zeros", bias_init=("constant", -0.25))
    assert not np.any(layer.weight.value) and np.all(layer.bias.value == -0.25)
    layer = make(init=("constant", 0.5), bias_init="ones")
    assert np.all(layer.weight.value == 0.5) and np.all(layer.bias.value == 1)
    bias = make(init="kaiming_normal").bias.value  # bias_init stays PyTorch's default
    assert np.abs(bias).max() <= 1 / math.sqrt(fan_in) and np.any(bias)


def test_the_default_is_pytorch_s_and_draws_what_corenet_drew_before():
    random.seed(3)
    layer = L.Linear(4, 3)
    rng = np.random.default_rng(3)  # the draws of corenet's Linear before init= existed
    np.testing.assert_array_equal(layer.weight.value,
                                  rng.uniform(-0.5, 0.5, (3, 4)).astype(np.float32))
    np.testing.assert_array_equal(layer.bias.value, rng.uniform(-0.5, 0.5, 3).astype(np.float32))
    assert layer.get_config()["init"] == layer.get_config()["bias_init"] == "pytorch_uniform"


@pytest.mark.parametrize("spec", ["kaiming_uniform", "kaiming_normal", "xavier_uniform",
                                  "xavier_normal", "pytorch_uniform"])
def test_the_same_seed_gives_the_same_weights(spec):
    def build():
        return cn.Sequential(L.Linear(6, 5, init=spec), L.Maxout(5, 4, 2, init=spec),
                             L.Linear(4, 2, init=spec))

    random.seed(11)
    first = [p.value.copy() for p in build().parameters()]
    random.seed(11)
    second = [p.value for p in build().parameters()]
    third = [p.value for p in build().parameters()]  # the generator moved on
    for a, b, c in zip(first, second, third):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_config_round_trip_through_json_and_a_file(tmp_path):
    layer = L.Conv2d(2, 3, 3, init=("kaiming_normal", {"mode": "fan_out", "nonlinearity": "relu"}),
                     bias_init=("constant", 0.1))
    config = layer.get_config()
    assert config["init"] == ["kaiming_normal", {"mode": "fan_out", "nonlinearity": "relu"}]
    assert config["bias_init"] == ["constant", 0.1]
    rebuilt = L.Conv2d(**json.loads(json.dumps(config)))
    assert rebuilt.get_config() == config
    model = cn.Sequential(L.Linear(4, 3, init=("xavier_uniform", {"gain": 2.0})),
                          L.Linear(3, 2, init="zeros", bias_init="zeros"))
    cn.save(model, str(tmp_path / "m.npz"))
    loaded = cn.load(str(tmp_path / "m.npz"))
    assert [layer.get_config() for layer in loaded.layers] == \
        [layer.get_config() for layer in model.layers]
    # Defaults leave no options in the config: the spec is then a bare name.
    assert L.Linear(2, 2, init=("kaiming_uniform", {"a": 0})).get_config()["init"] == \
        "kaiming_uniform"


@pytest.mark.parametrize("kwargs, match", [
    ({"init": "he_normal"}, r"linear: init must be one of 'pytorch_uniform', 'kaiming_uniform'"
                            r".*got 'he_normal'"),
    ({"init": 0.1}, "linear: init must be one of .*got 0.1"),
    ({"init": "constant"}, r"linear: init: 'constant' needs its value: \('constant', 0.1\)"),
    ({"init": ("constant", "big")}, "constant option 'value' must be a finite number, got 'big'"),
    ({"init": ("constant", float("nan"))}, "must be a finite number, got nan"),
    ({"init": ("kaiming_normal", {"mode": "fan_avg"})},
     "kaiming_normal option 'mode' must be 'fan_in' or 'fan_out', got 'fan_avg'"),
    ({"init": ("kaiming_normal", {"nonlinearity": "swish"})},
     r"option 'nonlinearity' must be one of \[.*'relu'.*\], got 'swish'"),
    ({"init": ("kaiming_normal", {"gain": 2})},
     r"'kaiming_normal' takes the options \['a', 'mode', 'nonlinearity'\], got \['gain'\]"),
    ({"init": ("xavier_uniform", {"gain": -1})}, "option 'gain' must be a finite number >= 0"),
    ({"init": ("zeros", {"value": 1})}, r"'zeros' takes the options none, got \['value'\]"),
    ({"init": ("xavier_uniform", 2.0)}, "the options of 'xavier_uniform' must be a dict"),
    ({"bias_init": "kaiming_uniform"},
     r"linear: bias_init must be one of 'pytorch_uniform', 'zeros', 'ones', 'constant'"),
])
def test_bad_specs_name_the_layer_and_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.Linear(3, 2, **kwargs)


def test_every_layer_with_init_refuses_a_bad_spec():
    for make in (lambda: L.Conv2d(1, 1, 1, init="nope"), lambda: L.Conv3d(1, 1, 1, init="nope"),
                 lambda: L.Maxout(2, 2, 2, init="nope")):
        with pytest.raises(ValueError, match=r"(conv2d|conv3d|maxout): init must be one of"):
            make()


@needs_torch
@pytest.mark.parametrize("nonlinearity, a", [("linear", 0), ("sigmoid", 0), ("tanh", 0),
                                             ("relu", 0), ("leaky_relu", 0), ("leaky_relu", 0.3),
                                             ("selu", 0), ("conv2d", 0)])
def test_gains_are_pytorch_s(nonlinearity, a):
    assert init.gain(nonlinearity, a) == pytest.approx(
        torch.nn.init.calculate_gain(nonlinearity, a), rel=1e-12)


@needs_torch
@pytest.mark.parametrize("name", ["kaiming_uniform", "kaiming_normal", "xavier_uniform",
                                  "xavier_normal"])
def test_spread_matches_pytorch_s_functions_on_a_grouped_conv(name):
    layer = L.Conv2d(32, 48, (3, 5), groups=2, init=name)
    reference = torch.empty(layer.weight.value.shape, dtype=torch.float64)
    torch.manual_seed(0)
    getattr(torch.nn.init, name + "_")(reference)
    assert layer.weight.value.std() == pytest.approx(reference.std().item(), rel=0.03)
    assert np.abs(layer.weight.value).max() <= 1.01 * reference.abs().max().item() \
        or name.endswith("normal")
