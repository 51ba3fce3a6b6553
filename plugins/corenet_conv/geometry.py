"""Window geometry shared by the convolutions and the pooling layers.

Every layer works in three spatial axes (D, H, W): a 2-D layer is a 3-D one
with depth 1, a kernel of depth 1 and no padding in depth, so one kernel serves
both. Arguments are checked and normalised here, once, in the constructor.
"""
from __future__ import annotations

from corenet.arguments import as_int
from corenet.errors import ShapeError
from corenet.layer import SetOnce

# Kernel, stride, padding and dilation beyond this are refused: the kernels compute
# window offsets in C integers, where 2⁶² + 2⁶² would overflow.
MAX_WINDOW = 2 ** 31 - 1


def as_tuple(layer_name: str, label: str, value, n_axes: int, minimum: int) -> tuple:
    """An int or a sequence of ``n_axes`` ints, as PyTorch takes kernel_size and stride."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_axes:
            raise ValueError(f"{layer_name}: {label} must be an int or {n_axes} ints, "
                             f"got {value!r}")
        return tuple(as_int(layer_name, label, item, minimum, MAX_WINDOW) for item in value)
    return (as_int(layer_name, label, value, minimum, MAX_WINDOW),) * n_axes


class Window(SetOnce):
    """Kernel, stride, padding (before and after) and dilation over n_axes axes.

    ``padding`` is an int, n_axes ints, or "same" (stride 1 only, as PyTorch: the
    total padding d·(k − 1) split with the odd one after) or "valid".
    """

    set_once = frozenset({"layer_name", "n_axes", "kernel", "stride", "dilation",
                          "padding_config", "pad_before", "pad_after"})

    def __init__(self, layer_name: str, n_axes: int, kernel_size, stride, padding,
                 dilation=1):
        self.layer_name = layer_name
        self.n_axes = n_axes
        self.kernel = as_tuple(layer_name, "kernel_size", kernel_size, n_axes, 1)
        self.stride = as_tuple(layer_name, "stride", stride, n_axes, 1)
        self.dilation = as_tuple(layer_name, "dilation", dilation, n_axes, 1)
        if isinstance(padding, str):
            if padding == "valid":
                self.pad_before = self.pad_after = (0,) * n_axes
            elif padding == "same":
                if any(s != 1 for s in self.stride):
                    raise ValueError(f"{layer_name}: padding='same' needs stride 1, "
                                     f"got stride {self.stride}")
                totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel)]
                self.pad_before = tuple(total // 2 for total in totals)
                self.pad_after = tuple(total - total // 2 for total in totals)
            else:
                raise ValueError(f"{layer_name}: padding must be an int, {n_axes} ints, "
                                 f"'same' or 'valid', got {padding!r}")
            self.padding_config = padding
        else:
            self.pad_before = self.pad_after = as_tuple(layer_name, "padding", padding,
                                                        n_axes, 0)
            self.padding_config = list(self.pad_before) if n_axes > 1 else self.pad_before[0]

    def output_size(self, spatial: tuple) -> tuple:
        """The output's spatial shape, or a ShapeError when the dilated kernel does
        not fit in the padded input."""
        sizes = []
        for axis, size in enumerate(spatial):
            padded = size + self.pad_before[axis] + self.pad_after[axis]
            extent = self.dilation[axis] * (self.kernel[axis] - 1) + 1
            if padded < extent:
                raise ShapeError(
                    f"{self.layer_name}: input spatial size {tuple(spatial)} padded by "
                    f"{self.pad_before}+{self.pad_after} is smaller than the dilated kernel "
                    f"{tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))}")
            sizes.append((padded - extent) // self.stride[axis] + 1)
        return tuple(sizes)

    def as_3d(self) -> tuple:
        """(kernel, stride, pad_before, dilation) as 3-tuples (depth 1 for 2-D)."""
        extra = 3 - self.n_axes
        return ((1,) * extra + self.kernel, (1,) * extra + self.stride,
                (0,) * extra + self.pad_before, (1,) * extra + self.dilation)

    def config(self) -> dict:
        def plain(values):
            return list(values) if self.n_axes > 1 else values[0]
        return {"kernel_size": plain(self.kernel), "stride": plain(self.stride),
                "padding": self.padding_config, "dilation": plain(self.dilation)}


def spatial_input(layer_name: str, n_axes: int, input_shapes: tuple) -> tuple:
    """The one per-sample input shape (channels, *n_axes spatial sizes), or a ShapeError."""
    if len(input_shapes) != 1 or len(input_shapes[0]) != n_axes + 1:
        raise ShapeError(f"{layer_name}: expected per-sample shape (channels, "
                         f"{', '.join('DHW'[3 - n_axes:])}), got "
                         f"{', '.join(map(str, input_shapes))}")
    return tuple(input_shapes[0])


def as_3d_shape(shape: tuple) -> tuple:
    """(N, C, D, H, W) for an (N, C, H, W) or (N, C, D, H, W) shape."""
    return shape if len(shape) == 5 else shape[:2] + (1,) + shape[2:]
