"""One row per built-in layer: (name, config, per-sample input shapes).

Every row runs through corenet.testing's conformance checks and the numpy and
PyTorch reference checks.
"""
from corenet.registry import registry
LAYERS = [
    ("linear", {"in_features": 5, "out_features": 4}, [(5,)]),
    ("linear", {"in_features": 6, "out_features": 3, "bias": False}, [(6,)]),
    ("linear", {"in_features": 4, "out_features": 3,
                "init": ("kaiming_normal", {"mode": "fan_out"}), "bias_init": ("constant", 0.1)},
     [(4,)]),
    ("maxout", {"in_features": 5, "out_features": 3, "pieces": 4}, [(5,)]),
    ("maxout", {"in_features": 6, "out_features": 2, "pieces": 2, "bias": False,
                "init": "xavier_uniform"}, [(6,)]),
    ("dropout", {"p": 0.3}, [(4, 5)]),
    ("dropout", {"p": 0.0}, [(7,)]),
    ("batch_norm1d", {"num_features": 4}, [(4,)]),
    ("batch_norm1d", {"num_features": 3, "momentum": None, "affine": False}, [(3, 5)]),
    ("batch_norm2d", {"num_features": 3}, [(3, 4, 5)]),
    ("batch_norm2d", {"num_features": 2, "eps": 1e-3, "track_running_stats": False},
     [(2, 3, 3)]),
    ("layer_norm", {"normalized_shape": (4, 5)}, [(3, 4, 5)]),
    ("layer_norm", {"normalized_shape": 6, "bias": False}, [(6,)]),
    ("layer_norm", {"normalized_shape": 5, "elementwise_affine": False}, [(2, 5)]),
    ("sigmoid", {}, [(7,)]),
    ("tanh", {}, [(7,)]),
    ("relu", {}, [(7,)]),
    ("leaky_relu", {"negative_slope": 0.1}, [(7,)]),
    ("prelu", {}, [(6,)]),
    ("prelu", {"num_parameters": 3}, [(3, 4)]),
    ("elu", {"alpha": 0.7}, [(7,)]),
    ("softmax", {}, [(6,)]),
    ("add", {}, [(5,), (5,)]),
    ("add", {}, [(2, 3), (2, 3), (2, 3)]),
    ("concat", {}, [(3,), (4,)]),
    ("concat", {"axis": 1}, [(2, 3), (1, 3)]),
    ("conv2d", {"in_channels": 2, "out_channels": 3, "kernel_size": 3}, [(2, 5, 6)]),
    ("conv2d", {"in_channels": 4, "out_channels": 2, "kernel_size": (2, 3), "stride": (2, 1),
                "padding": (1, 2), "dilation": (1, 2), "groups": 2, "bias": False},
     [(4, 5, 7)]),
    ("conv2d", {"in_channels": 3, "out_channels": 3, "kernel_size": 3, "padding": "same",
                "groups": 3}, [(3, 4, 5)]),
    ("conv2d", {"in_channels": 2, "out_channels": 2, "kernel_size": 2, "init": "kaiming_uniform",
                "bias_init": "zeros"}, [(2, 3, 3)]),
    ("conv3d", {"in_channels": 2, "out_channels": 2, "kernel_size": (2, 3, 2), "stride": 2,
                "padding": 1}, [(2, 4, 5, 4)]),
    ("max_pool2d", {"kernel_size": 2}, [(2, 4, 6)]),
    ("max_pool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, [(2, 5, 6)]),
    ("max_pool3d", {"kernel_size": (2, 2, 3), "stride": 1}, [(2, 3, 4, 5)]),
    ("avg_pool2d", {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0)}, [(2, 5, 4)]),
    ("avg_pool3d", {"kernel_size": 2, "padding": 1}, [(2, 3, 4, 3)]),
    ("global_avg_pool", {}, [(3, 4, 5)]),
    ("flatten", {}, [(2, 3, 4)]),
]


def layer_id(row) -> str:
    name, config, shapes = row
    options = ",".join(f"{key}={value}" for key, value in config.items())
    return f"{name}[{options}]{'x'.join(str(s) for s in shapes)}"


def builtin_names(kind: str = "layers") -> set:
    """The names corenet's own plugins register: the tables the tests keep complete.
    Third-party plugins installed beside corenet (its example plugin, say) add others."""
    return {name for name in getattr(registry.load(), kind)
            if registry.provider(kind, name).distribution == "corenet"}
