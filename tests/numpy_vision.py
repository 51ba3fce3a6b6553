"""Plain numpy references for the vision layers, written for clarity, not speed:
a padded input and one sum per kernel offset (convolution), sliding windows
(pooling)."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _tuple(value, n_axes):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n_axes


def _pads(padding, kernel, dilation, n_axes):
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return [(t // 2, t - t // 2) for t in totals]
    if padding == "valid":
        return [(0, 0)] * n_axes
    return [(p, p) for p in _tuple(padding, n_axes)]


def conv(layer, x):
    """Cross-correlation as torch.nn.ConvNd computes it, for any n spatial axes."""
    weight = layer.weight.value.astype(np.float64)
    n_axes = x.ndim - 2
    config = layer.get_config()
    kernel = weight.shape[2:]
    stride = _tuple(config["stride"], n_axes)
    dilation = _tuple(config["dilation"], n_axes)
    pads = _pads(config["padding"], kernel, dilation, n_axes)
    x = np.pad(x, [(0, 0), (0, 0)] + pads)
    groups = config["groups"]
    in_per_group, out_per_group = x.shape[1] // groups, weight.shape[0] // groups
    out_size = [(x.shape[2 + a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
                for a in range(n_axes)]
    out = np.zeros((x.shape[0], weight.shape[0], *out_size))
    for offset in np.ndindex(*kernel):
        window = tuple(slice(o * d, o * d + (size - 1) * s + 1, s)
                       for o, d, s, size in zip(offset, dilation, stride, out_size))
        patch = x[(slice(None), slice(None)) + window]
        for g in range(groups):
            xs = patch[:, g * in_per_group:(g + 1) * in_per_group]
            ws = weight[g * out_per_group:(g + 1) * out_per_group][(Ellipsis,) + offset]
            out[:, g * out_per_group:(g + 1) * out_per_group] += np.einsum(
                "nc...,oc->no...", xs, ws)
    if layer.bias is not None:
        out += layer.bias.value.reshape((1, -1) + (1,) * n_axes)
    return out


def pool(layer, x, reduce):
    n_axes = x.ndim - 2
    config = layer.get_config()
    kernel = _tuple(config["kernel_size"], n_axes)
    stride = _tuple(config["stride"], n_axes)
    pads = [(p, p) for p in _tuple(config["padding"], n_axes)]
    fill = -np.inf if reduce == "max" else 0.0
    x = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=fill)
    windows = sliding_window_view(x, kernel, axis=tuple(range(2, 2 + n_axes)))
    windows = windows[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)]
    axes = tuple(range(-n_axes, 0))
    return windows.max(axis=axes) if reduce == "max" else windows.mean(axis=axes)
