"""Convolution and pooling: PyTorch parity over the options, chunked batches, fusion,
thread invariance of a small CNN, steady-state memory and clear errors."""
import tracemalloc

import numpy as np
import pytest

import corenet
import corenet as cn
import corenet.layers as L
from corenet.errors import ShapeError
from corenet.testing import away_from_kinks

CONV_CASES = [  # (n_axes, config, input shape)
    (2, dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 7, 8)),
    (2, dict(in_channels=3, out_channels=5, kernel_size=(3, 2), stride=(2, 3), padding=(2, 1)),
     (3, 3, 9, 11)),
    (2, dict(in_channels=2, out_channels=4, kernel_size=3, dilation=(2, 3), padding=1),
     (2, 2, 11, 10)),
    (2, dict(in_channels=6, out_channels=4, kernel_size=3, groups=2, bias=False), (2, 6, 5, 5)),
    (2, dict(in_channels=5, out_channels=10, kernel_size=3, groups=5, padding="same"),
     (2, 5, 6, 7)),  # depthwise, channel multiplier 2
    (2, dict(in_channels=2, out_channels=3, kernel_size=4, padding="same", dilation=2),
     (2, 2, 9, 8)),  # "same" with an even total padding from an even kernel
    (2, dict(in_channels=2, out_channels=3, kernel_size=(4, 3), padding="same",
             dilation=(1, 3)), (2, 2, 9, 8)),  # "same" with an odd total: 1 above, 2 below
    (3, dict(in_channels=2, out_channels=2, kernel_size=(2, 3, 4), padding="same"),
     (1, 2, 4, 5, 6)),  # odd totals in depth and width, even in height
    (2, dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", dilation=4),
     (2, 2, 3, 5)),  # offsets that read only padding
    (2, dict(in_channels=1, out_channels=6, kernel_size=5, padding=2), (5, 1, 28, 28)),
    (2, dict(in_channels=8, out_channels=4, kernel_size=3, padding=(2, 1), dilation=(2, 1)),
     (2, 8, 48, 40)),  # a sample's columns in position tiles
    (3, dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
     (2, 4, 10, 12, 14)),
    (2, dict(in_channels=4, out_channels=8, kernel_size=1), (3, 4, 5, 5)),
    (2, dict(in_channels=3, out_channels=2, kernel_size=(1, 5), stride=2), (1, 3, 5, 13)),
    (3, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (2, 2, 5, 6, 7)),
    (3, dict(in_channels=4, out_channels=4, kernel_size=(2, 3, 1), stride=(2, 1, 2),
             dilation=(1, 2, 1), groups=2, bias=False), (2, 4, 6, 7, 5)),
    (3, dict(in_channels=2, out_channels=2, kernel_size=3, padding="same", groups=2),
     (1, 2, 4, 4, 4)),
    (3, dict(in_channels=3, out_channels=2, kernel_size=(2, 3, 3), padding=(0, 1, 1)),
     (2, 3, 4, 5, 6)),  # height and width kept, depth not
    (2, dict(in_channels=96, out_channels=96, kernel_size=3, padding=1, groups=2),
     (2, 96, 9, 8)),  # 432 rows of columns a group: tiles' products in several k blocks
    (2, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2),
     (3, 4, 40, 36)),  # 360 output positions: forward multiplies sample by sample
]


def case_id(case):
    n_axes, config, shape = case
    return f"{n_axes}d-" + ",".join(f"{k}={v}" for k, v in config.items()) + f"-{shape}"


try:
    import torch
except ImportError:  # the other tests here run without it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference where installed")


def torch_conv(n_axes, config, layer, dtype):
    module = (torch.nn.Conv2d if n_axes == 2 else torch.nn.Conv3d)(**config)
    module = module.double() if dtype == np.float64 else module
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(layer.weight.value))
        if layer.bias is not None:
            module.bias.copy_(torch.from_numpy(layer.bias.value))
    return module


@pytest.fixture(params=["chunks", "tiles", "direct"])
def walk(request, monkeypatch):
    """How a convolution walks the batch: through im2col in chunks as the shapes
    decide ("chunks"), or with every sample's output positions in tiles of 64 where
    the geometry allows (stride 1, height and width kept): the path large images
    take; or, for stride 1, forward and backward through the direct kernels with no
    columns ("direct"), the path small samples take."""
    from corenet_conv import conv as conv_module

    monkeypatch.setattr(conv_module, "DIRECT", "always" if request.param == "direct"
                        else "never")
    if request.param == "tiles":
        monkeypatch.setattr(conv_module, "CHUNK_BYTES", 1)
        monkeypatch.setattr(conv_module, "TILE_BYTES", 1)
    return request.param


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_convolution_matches_pytorch(case, dtype, rng, walk):
    n_axes, config, shape = case
    layer = (L.Conv2d if n_axes == 2 else L.Conv3d)(**config, dtype=dtype)
    module = torch_conv(n_axes, config, layer, dtype)
    x = rng.standard_normal(shape).astype(dtype)
    out = layer.forward(x)
    grad = rng.standard_normal(out.shape).astype(dtype)
    x_grad = layer.backward(grad)
    x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
    out_torch = module(x_torch)
    out_torch.backward(torch.from_numpy(grad))
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10,
                                                                            atol=1e-11)
    np.testing.assert_allclose(out, out_torch.detach().numpy(), **tolerance)
    np.testing.assert_allclose(x_grad, x_torch.grad.numpy(), **tolerance)
    np.testing.assert_allclose(layer.weight.grad, module.weight.grad.numpy(), **tolerance)
    if layer.bias is not None:
        np.testing.assert_allclose(layer.bias.grad, module.bias.grad.numpy(), **tolerance)


@pytest.mark.parametrize("n_axes", [2, 3])
def test_every_way_of_walking_the_batch_gives_the_same_result(n_axes, rng, monkeypatch):
    from corenet_conv import conv as conv_module

    config = dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)
    shape = (7, 3) + (9,) * n_axes
    x = rng.standard_normal(shape)
    results = []
    # One chunk; chunks of one sample taken by the threads (partial weight gradients);
    # one sample at a time with the threads inside the products; then the last two
    # with each sample's positions in tiles of 64 ("same" padding, 81 or 729
    # positions): (sample, tile) units taken by the threads, dx as the adjoint
    # convolution; one sample at a time, tile by tile; and both again in 3-D with
    # tiles of 400 positions, longer than the GEMM's k block of 256 in float64, so
    # that dW takes each tile in two strips.
    for chunk_bytes, workspace, tile_bytes in ((1 << 30, 1 << 30, 1 << 30),
                                               (1, 1 << 30, 1 << 30), (1 << 30, 1, 1 << 30),
                                               (1, 1 << 30, 1), (1, 1, 1),
                                               (1, 1 << 30, 1 << 18), (1, 1, 1 << 18)):
        monkeypatch.setattr(conv_module, "CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(conv_module, "WORKSPACE_BYTES", workspace)
        monkeypatch.setattr(conv_module, "TILE_BYTES", tile_bytes)
        corenet.random.seed(0)
        layer = (L.Conv2d if n_axes == 2 else L.Conv3d)(**config, dtype="float64")
        out = layer.forward(x).copy()
        x_grad = layer.backward(np.cos(out))
        results.append((out, x_grad, layer.weight.grad, layer.bias.grad))
    for other in results[1:]:
        for one, many in zip(results[0], other):
            np.testing.assert_allclose(one, many, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [(3, 2), (2, 3)], ids=["narrowing", "widening"])
@pytest.mark.parametrize("n_axes", [2, 3])
def test_tiled_backward_dx_matches_finite_differences(n_axes, channels, walk, rng):
    # In parallel with position tiles, dx is a convolution of dL/dy with the kernel
    # flipped when in_channels >= out_channels, else Wᵀ·dY and col2vol, sample by
    # sample (backward_units); on the direct path, Wᵀ·dY added from registers into
    # a padded dx: each against finite differences of the forward.
    c_in, c_out = channels
    layer = (L.Conv2d if n_axes == 2 else L.Conv3d)(c_in, c_out, 3, padding="same",
                                                    dilation=2, dtype="float64")
    layer.reuse_buffers = True  # keeps its buffers, as inside a model: seen below
    x = rng.standard_normal((3, c_in) + (9,) * n_axes)
    weights = rng.standard_normal((3, c_out) + (9,) * n_axes)
    layer.forward(x)
    x_grad = layer.backward(weights).copy()
    assert ("weight_t" in layer._buffers) == (walk == "tiles" and c_in >= c_out)
    step = 1e-6
    for index in [(0, 0) + (0,) * n_axes, (1, 1) + (4,) * n_axes, (2, 0) + (8,) * n_axes,
                  (2, c_in - 1) + (1, 7, 3)[:n_axes]]:
        shifted = x.copy()
        shifted[index] += step
        up = np.sum(layer.forward(shifted) * weights)
        shifted[index] -= 2 * step
        down = np.sum(layer.forward(shifted) * weights)
        assert abs((up - down) / (2 * step) - x_grad[index]) < 1e-6, index


def test_workspace_stays_bounded_on_large_images():
    from corenet_conv import conv as conv_module

    layer = L.Conv2d(3, 8, 3, padding=1)
    x = np.ones((12, 3, 224, 224), np.float32)
    layer.forward(x)
    layer.backward(np.ones((12, 8, 224, 224), np.float32))
    scratch = sum(array.nbytes for key, array in layer._buffers.items()
                  if key not in ("out", "x_grad"))
    per_sample_columns = 3 * 9 * 224 * 224 * 4
    # Position tiles ("same" padding, stride 1): two tiles (columns and their
    # gradient) and one sample's output rows per thread, and the small partial
    # weight gradients.
    partials = 12 * (8 * 3 * 9 + 8) * 4
    bound = corenet.get_num_threads() * (2 * conv_module.TILE_BYTES + 8 * 224 * 224 * 4)
    assert scratch <= bound + partials, (scratch, bound)
    assert scratch < 2 * per_sample_columns  # the whole batch's columns were never made


def test_direct_path_is_chosen_by_shape_and_keeps_its_workspace_bounded(rng, monkeypatch):
    from corenet_conv import conv as conv_module

    def convolve(layer, x):
        layer.reuse_buffers = True  # as inside a model: the padded samples are kept
        out = layer.forward(x).copy()
        layer.backward(np.cos(out))
        return out, layer.weight.grad.copy(), layer.bias.grad.copy()

    x = rng.standard_normal((9, 6, 14, 14))
    small = L.Conv2d(6, 16, 5, dtype="float64")  # LeNet's second convolution: direct
    assert "padded" not in small._buffers
    auto = convolve(small, x)
    assert "padded" in small._buffers
    large = L.Conv2d(64, 64, 3, padding=1)  # a padded sample alone exceeds the bound
    large.forward(np.zeros((1, 64, 56, 56), np.float32))
    assert "padded" not in large._buffers
    wide = L.Conv2d(3, 32, 3, padding=1)  # more than 16 output channels: im2col
    wide.forward(np.zeros((2, 3, 32, 32), np.float32))
    assert "padded" not in wide._buffers
    strided = L.Conv2d(6, 16, 5, stride=2)
    strided.forward(x.astype(np.float32))
    assert "padded" not in strided._buffers
    # Three samples of padded input (and of dL/dy on the grid) at a time: the
    # backward pads them again, chunk by chunk, and sums the same terms.
    grid_sample = 16 * (10 * 14 + 6) * 8  # 16 output rows of the grid: the larger
    monkeypatch.setattr(conv_module, "WORKSPACE_BYTES", 3 * grid_sample + 100)
    chunked = L.Conv2d(6, 16, 5, dtype="float64")
    np.copyto(chunked.weight.value, small.weight.value)
    np.copyto(chunked.bias.value, small.bias.value)
    results = convolve(chunked, x)
    assert chunked._buffers["padded"].size <= 3 * 6 * 14 * 14 + 3 * 16 * 16
    for one, other in zip(auto, results):
        np.testing.assert_allclose(one, other, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, config", [
    ((3, 1, 28, 28), dict(in_channels=1, out_channels=16, kernel_size=5, padding=2)),
    ((3, 6, 14, 14), dict(in_channels=6, out_channels=16, kernel_size=5)),
    ((2, 4, 6, 7, 8), dict(in_channels=4, out_channels=16, kernel_size=3, padding=1)),
])
def test_direct_forward_is_bitwise_im2col_and_the_gemm(shape, config, rng, monkeypatch):
    """The direct kernel adds the GEMM's terms in the GEMM's order: the same bits
    (16 output channels: whole slivers of the packed kernel on any CPU)."""
    from corenet_conv import conv as conv_module

    x = rng.standard_normal(shape).astype(np.float32)
    outputs = []
    for path in ("never", "always"):
        monkeypatch.setattr(conv_module, "DIRECT", path)
        corenet.random.seed(0)
        conv = (L.Conv2d if len(shape) == 4 else L.Conv3d)(**config)
        model = cn.Sequential(conv, L.ReLU(), input_shape=shape[1:])
        outputs.append(model.forward(x).copy())
        assert ("padded" in conv._buffers) == (path == "always")
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_direct_weight_gradient_skips_what_no_output_reads(monkeypatch):
    """The direct path computes positions past each row's end too, and drops them.
    An inf that only those positions read must not reach dW as 0 · inf = NaN."""
    from corenet_conv import conv as conv_module

    x = np.ones((2, 1, 6, 9))
    x[:, 0, :, 8] = np.inf  # the last column: only the kernel's right column reads it
    results = []
    for path in ("never", "always"):
        monkeypatch.setattr(conv_module, "DIRECT", path)
        conv = L.Conv2d(1, 2, 3, dtype="float64")
        conv.weight.value[...] = 0.5
        conv.bias.value[...] = 0.25
        with np.errstate(invalid="ignore"):
            out = conv.forward(x).copy()
            conv.backward(np.ones_like(out))
        results.append((out, conv.weight.grad.copy(), conv.bias.grad.copy()))
    weight_grad = results[1][1]
    assert np.isfinite(weight_grad[:, :, :, :2]).all()  # 2 x 4 x 7 outputs, 1 each
    np.testing.assert_array_equal(weight_grad[:, :, :, :2], 56.0)
    assert np.isinf(weight_grad[:, :, :, 2]).all()
    for one, other in zip(*results):
        np.testing.assert_array_equal(one, other)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu", "elu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("channels, size", [
    ((3, 5), (10, 9)),
    # More input channels than output: dx as the adjoint convolution in tiles; and
    # 272 positions, which the chunks' forward multiplies sample by sample.
    ((6, 4), (17, 16)),
], ids=["widening", "narrowing"])
def test_fused_activation_is_bitwise_the_unfused_pair(activation, dtype, channels, size, rng,
                                                      walk):
    conv = L.Conv2d(*channels, 3, padding=1, dtype=dtype)
    act = L.create(activation)
    model = cn.Sequential(conv, act, input_shape=(channels[0],) + size,
                          requires_input_grad=True)
    assert model._plan[0][3] is act  # the executor fused the pair
    x = rng.standard_normal((4, channels[0]) + size).astype(dtype)
    grad = rng.standard_normal((4, channels[1]) + size).astype(dtype)
    fused_out = model.forward(x)
    fused_x_grad = model.backward(grad)
    fused_grads = [p.grad.copy() for p in conv.parameters()]
    conv.zero_grad()
    out = act.forward(conv.forward(x)).copy()  # alone, each layer runs unfused
    x_grad = conv.backward(act.backward(grad))
    np.testing.assert_array_equal(fused_out, out)
    np.testing.assert_array_equal(fused_x_grad, x_grad)
    for fused, plain in zip(fused_grads, conv.parameters()):
        np.testing.assert_array_equal(fused, plain.grad)


def small_cnn(n_axes=2):
    corenet.random.seed(3)
    if n_axes == 2:
        return cn.Sequential(
            L.Conv2d(2, 8, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
            L.Conv2d(8, 8, 3, groups=2), L.Tanh(), L.AvgPool2d(2, stride=1, padding=1),
            L.Flatten(), L.Linear(8 * 5 * 5, 10), input_shape=(2, 12, 12),
            requires_input_grad=True)
    return cn.Sequential(
        L.Conv3d(2, 4, 3, padding=1), L.ReLU(), L.MaxPool3d(2), L.Conv3d(4, 4, 2),
        L.GlobalAvgPool(), L.Linear(4, 3), input_shape=(2, 6, 6, 6), requires_input_grad=True)


@pytest.mark.parametrize("n_axes", [2, 3])
def test_small_cnn_is_bitwise_the_same_on_any_thread_count(n_axes, rng, threads, walk):
    model = small_cnn(n_axes)
    x = rng.standard_normal((64,) + model.inputs[0].shape).astype(np.float32)
    results = []
    for n_threads in (1, 2, 3):
        corenet.set_num_threads(n_threads)
        model.zero_grad()
        out = model.forward(x)
        x_grad = model.backward(np.sin(out))
        results.append([out, x_grad] + [p.grad.copy() for p in model.parameters()])
    for one, other in zip(results[0], results[1]):
        np.testing.assert_array_equal(one, other)
    for one, other in zip(results[0], results[2]):
        np.testing.assert_array_equal(one, other)


def test_small_cnn_gradient_matches_finite_differences(rng):
    from corenet.testing import finite_difference_gradient, relative_error

    model = small_cnn().astype("float64")
    x = away_from_kinks((3, 2, 12, 12), rng)
    weights = rng.standard_normal((3, 10))

    def objective():
        return float(np.sum(model.forward(x) * weights))

    objective()
    model.zero_grad()
    x_grad = model.backward(weights)
    assert relative_error(x_grad, finite_difference_gradient(objective, x)) < 1e-6
    first = model.parameters()[0]
    analytic = first.grad.copy()
    assert relative_error(analytic, finite_difference_gradient(objective, first.value)) < 1e-6


def test_training_step_allocates_no_large_arrays(rng, walk):
    model = small_cnn()
    model.requires_input_grad = False  # dL/dx would be returned as a fresh array
    loss = cn.losses.SoftmaxCrossEntropy()
    optimizer = cn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = rng.standard_normal((128, 2, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    for _ in range(2):
        cn.train.train_step(model, loss, optimizer, x, y)
    tracemalloc.start()
    try:
        cn.train.train_step(model, loss, optimizer, x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The first layer's output alone is 128 x 8 x 12 x 12 floats (590 KB).
    assert peak < 64 * 1024, peak


@needs_torch
def test_max_pool_sends_ties_to_the_first_index_as_pytorch():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = 1.0
    layer = L.MaxPool2d(3, stride=1, padding=1)
    layer.forward(x)
    grad = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    ours = layer.backward(grad)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.max_pool2d(x_torch, 3, 1, 1).backward(torch.from_numpy(grad))
    np.testing.assert_array_equal(ours, x_torch.grad.numpy())


@needs_torch
@pytest.mark.parametrize("shape", [(4, 16, 28, 28), (3, 5, 7, 9)], ids=["even", "odd"])
def test_max_pool_2x2_on_a_large_batch_matches_pytorch(shape, rng):
    """The 2 x 2 case's own kernels, forward and the one-pass backward: an odd last
    row and column lie in no window, and a gradient of -0 comes back +0 as PyTorch's."""
    x = rng.standard_normal(shape).astype(np.float32)
    layer = L.MaxPool2d(2)
    out = layer.forward(x)
    grad = rng.standard_normal(out.shape).astype(np.float32)
    grad[:, :, 0, :] = -0.0
    x_grad = layer.backward(grad)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    out_torch = torch.nn.functional.max_pool2d(x_torch, 2)
    out_torch.backward(torch.from_numpy(grad))
    np.testing.assert_array_equal(out, out_torch.detach().numpy())
    np.testing.assert_array_equal(x_grad, x_torch.grad.numpy())
    np.testing.assert_array_equal(np.signbit(x_grad), np.signbit(x_torch.grad.numpy()))


POOL_CASES = [  # (layer, input shape): the options the layer table's rows leave out
    (L.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 0)), (2, 3, 7, 6)),
    (L.AvgPool2d((2, 3), stride=(3, 1), padding=1), (2, 3, 8, 7)),
    (L.MaxPool3d((2, 3, 2), stride=(1, 2, 3), padding=(1, 1, 0)), (2, 3, 5, 7, 8)),
    (L.AvgPool3d(3, stride=2, padding=1), (2, 2, 5, 6, 7)),  # padding counts in the divisor
    (L.AvgPool3d((1, 2, 3), padding=(0, 1, 1)), (1, 2, 3, 4, 5)),
    (L.GlobalAvgPool(), (2, 3, 4, 5, 6)),
    (L.GlobalAvgPool(), (2, 3, 7)),
]


def torch_pool(layer):
    F = torch.nn.functional
    if isinstance(layer, L.GlobalAvgPool):
        return lambda x: x.mean(dim=tuple(range(2, x.ndim)))
    window = layer.get_config()  # kernel_size, stride and padding, as PyTorch names them
    return lambda x: getattr(F, layer.name)(x, **window)


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer, shape", POOL_CASES, ids=lambda case: str(case))
def test_pooling_matches_pytorch(layer, shape, dtype, rng):
    # Distinct values, so that each window's arg-max is one element.
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0).astype(dtype)
    layer = type(layer)(**layer.get_config())  # a layer of its own for each run
    out = layer.forward(x)
    grad = rng.standard_normal(out.shape).astype(dtype)
    x_grad = layer.backward(grad)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    out_torch = torch_pool(layer)(x_torch)
    out_torch.backward(torch.from_numpy(grad))
    tolerance = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13)
    np.testing.assert_allclose(out, out_torch.detach().numpy(), **tolerance)
    np.testing.assert_allclose(x_grad, x_torch.grad.numpy(), **tolerance)


def test_global_average_is_the_same_on_any_thread_count(rng, threads):
    # 512 planes of 323: enough work that the mean runs on two threads.
    x = rng.standard_normal((8, 64, 17, 19)).astype(np.float32)
    outputs = []
    for n_threads in (1, 2):
        corenet.set_num_threads(n_threads)
        outputs.append(L.GlobalAvgPool().forward(x))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_allclose(outputs[0], x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 2, 256, 256), (3, 2, 255, 256)],
                         ids=["fewer planes than threads", "odd height"])
def test_max_pool_2x2_is_the_same_on_any_thread_count(shape, rng, threads):
    # Even heights go to the kernel as one tall image a thread, odd ones a plane a call.
    x = rng.standard_normal(shape).astype(np.float32)
    grad = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2))
    results = []
    for n_threads in (1, 3):
        corenet.set_num_threads(n_threads)
        layer = L.MaxPool2d(2)
        results.append((layer.forward(x).copy(), layer.backward(grad.astype(np.float32))))
    for one, many in zip(*results):
        np.testing.assert_array_equal(one, many)
    windows = x[:, :, :shape[2] // 2 * 2].reshape(shape[0], shape[1], shape[2] // 2, 2,
                                                     shape[3] // 2, 2)
    np.testing.assert_array_equal(results[0][0], windows.max(axis=(3, 5)))


@needs_torch
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3, 5, 7)], ids=["even", "odd"])
def test_max_pool_2x2_takes_nan_as_pytorch(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, 0] = x[0, 1, 1, 1] = x[1, 2, 2, 1] = x[1, 2, 3, 0] = np.nan  # first, last, two
    layer = L.MaxPool2d(2)
    out = layer.forward(x)
    grad = rng.standard_normal(out.shape).astype(np.float32)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    out_torch = torch.nn.functional.max_pool2d(x_torch, 2)
    out_torch.backward(torch.from_numpy(grad))
    np.testing.assert_array_equal(out, out_torch.detach().numpy())
    np.testing.assert_array_equal(layer.backward(grad), x_torch.grad.numpy())


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize("build, message", [
    (lambda: L.Conv2d(3, 4, 3)(cn.Input((2, 8, 8))), r"conv2d: expected 3 input channels"),
    (lambda: L.Conv2d(3, 4, 5)(cn.Input((3, 4, 8))),
     r"conv2d: input spatial size \(4, 8\) .* smaller than the dilated kernel \(5, 5\)"),
    (lambda: L.Conv2d(3, 4, 3, dilation=3)(cn.Input((3, 6, 8))),
     r"smaller than the dilated kernel \(7, 7\)"),
    (lambda: L.Conv3d(3, 4, 3)(cn.Input((3, 8, 8))), r"conv3d: expected per-sample shape"),
    (lambda: L.MaxPool2d(4)(cn.Input((3, 3, 8))), r"max_pool2d: input spatial size"),
    (lambda: L.Linear(10, 3)(L.Flatten()(cn.Input((2, 2, 2)))), r"linear: expected"),
])
def test_shape_errors_are_raised_when_the_graph_is_built(build, message):
    with pytest.raises(ShapeError, match=message):
        build()


@pytest.mark.parametrize("build, message", [
    (lambda: L.Conv2d(3, 4, 3, stride=0), r"conv2d: stride must be at least 1, got 0"),
    (lambda: L.Conv2d(3, 4, 3, stride=(1, -2)), r"conv2d: stride must be at least 1, got -2"),
    (lambda: L.Conv2d(3, 4, 3, padding=-1), r"conv2d: padding must be at least 0, got -1"),
    (lambda: L.Conv2d(3, 4, 3, groups=2), r"conv2d: groups=2 must divide in_channels=3"),
    (lambda: L.Conv2d(4, 3, 3, groups=2), r"out_channels=3"),
    (lambda: L.Conv2d(3, 4, 3, stride=2, padding="same"), r"padding='same' needs stride 1"),
    (lambda: L.Conv2d(3, 4, (3, 3, 3)), r"kernel_size must be an int or 2 ints"),
    (lambda: L.Conv2d(3, True, 3), r"out_channels must be an integer, got True"),
    (lambda: L.Conv3d(2.5, 4, 3), r"in_channels must be an integer, got 2.5"),
    (lambda: L.Conv2d(3, 4, float("nan")), r"kernel_size must be an integer, got nan"),
    (lambda: L.Conv2d(3, 4, 3, padding="full"), r"padding must be an int, 2 ints, 'same'"),
    (lambda: L.Conv2d(3, 4, 3, dtype="float16"), r"dtype must be float32 or float64"),
    (lambda: L.MaxPool2d(2, padding=2), r"max_pool2d: padding \(2, 2\) must be at most half"),
    (lambda: L.AvgPool3d(0), r"avg_pool3d: kernel_size must be at least 1"),
])
def test_bad_arguments_are_clear_errors(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_bad_arrays_are_clear_errors(rng):
    layer = L.Conv2d(3, 4, 3)
    with pytest.raises(ShapeError, match=r"conv2d: expected a 4-D input"):
        layer.forward(np.ones((3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match=r"conv2d: expected 3 input channels"):
        layer.forward(np.ones((2, 2, 8, 8), np.float32))
    with pytest.raises(ShapeError, match=r"conv2d: input spatial size \(2, 8\)"):
        layer.forward(np.ones((2, 3, 2, 8), np.float32))
    layer.weight.value = np.ones((4, 3, 3), np.float32)  # a user replaced the weight
    message = (r"conv2d: parameter 'weight' must be a float32 array of shape \(4, 3, 3, 3\), "
               r"got float32 \(4, 3, 3\)")
    with pytest.raises(ShapeError, match=message):
        layer.forward(np.ones((2, 3, 8, 8), np.float32))


@pytest.mark.parametrize("layer", [L.MaxPool2d(2, padding=1), L.AvgPool2d(2, padding=1),
                                   L.MaxPool3d(2, padding=1), L.GlobalAvgPool()],
                         ids=lambda layer: layer.name)
def test_pooling_an_empty_spatial_axis_is_a_clear_error(layer):
    # With padding, every window would hold only padding: no input to take a max of,
    # nowhere to route its gradient (the kernel once read and wrote out of bounds);
    # a global average would be 0 / 0.
    shape = (2, 3, 4, 0, 4) if getattr(layer, "n_axes", 2) == 3 else (2, 3, 0, 4)
    with pytest.raises(ShapeError, match=f"{layer.name}: every spatial size must be at "
                                         f"least 1"):
        layer.forward(np.zeros(shape, np.float32))


def test_average_pool_of_a_huge_kernel_divides_by_its_volume():
    # count_include_pad: one input of 1 in a window of (2³¹ - 1)³ positions. The
    # volume overflows a 64-bit integer; as a float it does not.
    layer = L.AvgPool3d(2 ** 31 - 1, stride=1, padding=2 ** 30 - 1)
    out = layer.forward(np.ones((1, 1, 1, 1, 1), np.float64))
    np.testing.assert_allclose(out, 1.0 / float(2 ** 31 - 1) ** 3, rtol=1e-12)


def test_replaced_parameter_arrays_are_checked_or_handled():
    layer = L.Conv2d(2, 3, 3)
    x = np.ones((2, 2, 5, 5), np.float32)
    layer.weight.value = np.asfortranarray(layer.weight.value)  # non-contiguous: read a copy
    expected = layer.forward(x).copy()
    layer.weight.grad = None  # PyTorch's habit: a None grad starts from zero
    layer.backward(np.ones_like(expected))
    assert layer.weight.grad.shape == (3, 2, 3, 3) and np.any(layer.weight.grad)
    layer.bias.grad = np.zeros(3)  # float64 grad for a float32 layer
    layer.forward(x)
    with pytest.raises(ShapeError, match=r"conv2d: parameter 'bias': its grad must be a "
                                         r"float32 array of shape \(3,\), got float64"):
        layer.backward(np.ones_like(expected))
    layer.bias.grad = np.zeros(3, np.float32)
    layer.bias.grad.flags.writeable = False
    with pytest.raises(ValueError, match=r"its grad must be a writeable C-contiguous array"):
        layer.backward(np.ones_like(expected))


@pytest.mark.parametrize("build, x_shape, key, value", [
    (lambda: L.Conv2d(3, 4, 3, bias=False), (2, 3, 5, 5), "out_channels", 1_000_000),
    (lambda: L.Conv2d(3, 4, 3), (2, 3, 5, 5), "in_channels", 300),
    (lambda: L.Conv2d(4, 4, 3), (2, 4, 5, 5), "groups", 2),
    (lambda: L.Conv2d(4, 4, 3), (2, 4, 5, 5), "window", None),
    (lambda: L.Conv3d(2, 2, 3), (1, 2, 3, 3, 3), "weight_shape", (2, 2, 1, 1, 1)),
    (lambda: L.MaxPool2d(2), (2, 3, 4, 4), "window", None),
])
def test_the_sizes_a_layer_was_built_with_cannot_be_changed(build, x_shape, key, value, rng):
    # Before: the kernels took the new sizes with the old weight; an out_channels of
    # 10⁶ read past its end (a segfault), groups=2 gave a wrong answer silently.
    layer = build()
    x = rng.standard_normal(x_shape).astype(np.float32)
    expected = layer.forward(x).copy()
    with pytest.raises(AttributeError, match=f"^{layer.name}: {key} is fixed when the layer "
                                             f"is built; build a new layer to change it$"):
        setattr(layer, key, value)
    with pytest.raises(AttributeError, match=f"^{layer.name}: stride is fixed"):
        layer.window.stride = (0,) * len(layer.window.stride)
    np.testing.assert_array_equal(layer.forward(x), expected)


def test_windows_near_the_largest_size_are_computed_not_wrapped(walk, rng):
    # The direct path sized its grid in C integers, which wrapped: the first layer
    # segfaulted, the second asked numpy for an array of negative size.
    huge = L.Conv2d(1, 1, (4, 3), dilation=(1431655765, 2 ** 31 - 8), padding=2 ** 31 - 1)
    out = huge.forward(np.ones((1, 1, 2, 2), np.float32))
    assert out.shape == (1, 1, 1, 16)  # every tap falls in the padding: the bias alone
    np.testing.assert_array_equal(out, np.full(out.shape, huge.bias.value[0]))
    dilated = L.Conv3d(2, 4, 3, dilation=2 ** 30, padding="same")
    x = rng.standard_normal((2, 2, 4, 4, 4)).astype(np.float32)
    # Only the kernel's centre tap lands inside the input.
    centre = dilated.weight.value[:, :, 1, 1, 1]
    expected = np.einsum("oc,ncdhw->nodhw", centre, x) + dilated.bias.value[:, None, None, None]
    np.testing.assert_allclose(dilated.forward(x), expected, rtol=1e-5, atol=1e-6)
