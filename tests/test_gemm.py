"""corenet's GEMM against numpy and against the slow reference loop."""
import numpy as np
import pytest

import corenet
from corenet.errors import DTypeError, ShapeError
from corenet.kernels.gemm import matmul, matmul_b_panels, pack_b_panels, reference_matmul

SHAPES = [(1, 1, 1), (333, 77, 129), (1, 300, 257), (300, 1, 257), (257, 300, 1),
          (8, 32, 384), (9, 33, 385), (64, 256, 784), (16, 10, 32), (200, 3100, 20),
          (0, 5, 3), (4, 0, 3), (5, 4, 0)]
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}


def operands(rng, m, n, k, dtype, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    return a, b, expected


def assert_close(result, expected, dtype, k):
    scale = np.sqrt(max(k, 1)) * max(1.0, np.abs(expected).max(initial=0))
    np.testing.assert_allclose(result, expected, rtol=0, atol=TOLERANCE[dtype] * scale)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matmul_matches_numpy(m, n, k, dtype, trans_a, trans_b, n_threads, rng, threads):
    corenet.set_num_threads(n_threads)
    a, b, expected = operands(rng, m, n, k, dtype, trans_a, trans_b)
    result = matmul(a, b, trans_a, trans_b)
    assert result.dtype == dtype and result.shape == (m, n)
    assert_close(result, expected, dtype, k)


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(13, 37, 50), (40, 70, 400), (3, 2, 1)])
def test_matmul_matches_reference_loop(m, n, k, dtype, trans_a, trans_b, rng):
    a, b, _ = operands(rng, m, n, k, dtype, trans_a, trans_b)
    assert_close(matmul(a, b, trans_a, trans_b), reference_matmul(a, b, trans_a, trans_b),
                 dtype, k)


def test_reference_loop_matches_numpy(rng):
    a, b, expected = operands(rng, 7, 5, 3, np.float64, False, True)
    np.testing.assert_allclose(reference_matmul(a, b, trans_b=True), expected, rtol=1e-12)


ACTIVATIONS = {
    None: lambda z, p: z,
    "relu": lambda z, p: np.maximum(z, 0),
    "sigmoid": lambda z, p: 1 / (1 + np.exp(-z)),
    "tanh": lambda z, p: np.tanh(z),
    "leaky_relu": lambda z, p: np.where(z > 0, z, p * z),
    "elu": lambda z, p: np.where(z > 0, z, p * np.expm1(z)),
}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(45, 70, 500), (8, 32, 16), (3, 5, 0), (45, 7, 300),
                                   (3, 300, 50), (1, 1, 17)])
@pytest.mark.parametrize("bias_per_row", [False, True])
def test_epilogue_bias_activation_and_accumulate(m, n, k, dtype, trans_b, activation,
                                                 bias_per_row, rng):
    # The shapes reach the packed path and both thin paths (dot, axpy).
    a, b, expected = operands(rng, m, n, k, dtype, False, trans_b)
    bias = rng.standard_normal(m if bias_per_row else n).astype(dtype)
    broadcast = bias[:, None] if bias_per_row else bias
    out = rng.standard_normal((m, n)).astype(dtype)
    before = out.astype(np.float64)
    function = ACTIVATIONS[activation]
    matmul(a, b, trans_b=trans_b, out=out, bias=bias, activation=activation,
           activation_param=0.3, accumulate=True, bias_per_row=bias_per_row)
    assert_close(out, function(before + expected + broadcast, 0.3), dtype, k)
    result = matmul(a, b, trans_b=trans_b, bias=bias, bias_per_row=bias_per_row)
    assert_close(result, expected + broadcast, dtype, k)


@pytest.mark.parametrize("n_threads", [2, 3])
def test_row_blocks_of_the_shared_panel_cover_c_once(n_threads, rng, threads):
    # A tall product takes the shared-panel split: row blocks that shrink as the rows
    # run out (1000 rows: 166 slivers and a short one of 4 rows), two k blocks, bias
    # and activation in the last one. Every row once, each with the reference's value.
    m, n, k = 1000, 300, 1100
    a, b, expected = operands(rng, m, n, k, np.float32, False, False)
    bias = rng.standard_normal(n).astype(np.float32)
    corenet.set_num_threads(n_threads)
    result = matmul(a, b, bias=bias, activation="relu")
    assert_close(result, np.maximum(expected + bias, 0), np.float32, k)


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", [(1024, 1024, 1024), (64, 10, 256), (1000, 40, 33),
                                   (1000, 10, 1024), (1, 5000, 300), (3, 2000, 100)])
def test_bitwise_identical_for_any_thread_count(shape, trans_b, rng, threads):
    m, n, k = shape
    a, b, _ = operands(rng, m, n, k, np.float32, False, trans_b)
    results = []
    for n_threads in (1, 2, 3):
        corenet.set_num_threads(n_threads)
        results.append(matmul(a, b, trans_b=trans_b))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_non_contiguous_inputs_are_read_correctly(rng):
    a = rng.standard_normal((40, 60))[:, ::2]
    b = rng.standard_normal((30, 20))
    # atol: an entry near zero after cancellation differs in its last bits, by more
    # than rtol allows, when the build has no FMA.
    np.testing.assert_allclose(matmul(a, b), a @ b, rtol=1e-12, atol=1e-12)


def test_errors_name_the_problem():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ShapeError, match=r"inner dimensions differ: op\(a\) is \(3, 4\)"):
        matmul(a, a)
    with pytest.raises(DTypeError, match="got float32 and float64"):
        matmul(a, np.ones((4, 2)))
    with pytest.raises(DTypeError, match="int64"):
        matmul(np.ones((2, 2), np.int64), np.ones((2, 2), np.int64))
    with pytest.raises(ShapeError, match="2-D"):
        matmul(np.ones(3, np.float32), a)
    with pytest.raises(ShapeError, match=r"out must be .* shape \(3, 3\)"):
        matmul(a, a, trans_b=True, out=np.empty((3, 4), np.float32))
    with pytest.raises(ShapeError, match=r"bias must have shape \(3,\)"):
        matmul(a, a, trans_b=True, bias=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="activation must be one of"):
        matmul(a, a, trans_b=True, activation="softmax")
    # (m, 0) @ (0, n): tiny operands, a product of 2⁴⁰ elements
    with pytest.raises(ShapeError, match=r"matmul: the product of shape \(1048576, 1048576\) "
                                         r"float32 would take"):
        matmul(np.ones((1 << 20, 0), np.float32), np.ones((0, 1 << 20), np.float32))


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_arrays_in_the_other_byte_order_are_refused(dtype):
    # Their type number is float32's or float64's: they once reached the kernel of
    # the other width (a heap overflow), or read as the wrong numbers.
    swapped = np.ones((4, 4), dtype)
    native = np.ones((4, 4), dtype[1:])
    for a, b in ((swapped, swapped), (native, swapped), (swapped, native)):
        with pytest.raises(DTypeError, match=f"byte order, got {a.dtype} and {b.dtype}"):
            matmul(a, b)
        with pytest.raises(DTypeError, match="byte order"):
            reference_matmul(a, b)
    with pytest.raises(ShapeError, match=r"out must be .* in the machine's byte order, got >f"):
        matmul(native, native, out=np.empty((4, 4), dtype))


@pytest.mark.parametrize("size, expected", [("48K", 48 << 10), ("1M", 1 << 20),
                                           ("2G", 2 << 30), ("512", 512), ("", 0),
                                           ("K", 0), ("12Q", 0)])
def test_cache_sizes_are_read_from_sysfs_or_unknown(tmp_path, size, expected):
    from corenet.kernels import gemm

    for index, (level, kind, text) in enumerate([(1, "Instruction", "32K"), (1, "Data", "64K"),
                                                 (2, "Unified", size)]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", text)):
            (folder / name).write_text(f"{value}\n")
    assert gemm.cache_bytes(1, str(tmp_path)) == 64 << 10  # the data cache, not the other
    assert gemm.cache_bytes(2, str(tmp_path)) == expected
    assert gemm.cache_bytes(3, str(tmp_path)) == 0
    assert gemm.cache_bytes(2, str(tmp_path / "missing")) == 0


def test_cache_blocks_follow_the_caches_and_never_change_results(rng):
    from corenet.kernels import gemm

    mr, nr = gemm.tile_shape("float32")
    kc = gemm.blocks()["kc_float32"]
    mc, nc = gemm.cache_blocks(512 << 10, 32 << 20, 2)
    assert mc % mr == 0 and nc % nr == 0
    assert mc * kc * 4 <= 256 << 10 < (mc + mr) * kc * 4  # A block: half of L2
    assert gemm.cache_blocks(1 << 20, 32 << 20, 2)[0] > mc  # a larger L2, a larger MC
    before = gemm.blocks()
    a = rng.standard_normal((300, 700)).astype(np.float32)
    b = rng.standard_normal((700, 500)).astype(np.float32)
    expected = matmul(a, b)
    try:
        gemm.use_cache_blocks(2 * mr, 2 * nr)  # many small blocks
        np.testing.assert_array_equal(matmul(a, b), expected)
    finally:
        gemm.use_cache_blocks(before["mc"], before["nc"])
    with pytest.raises(ValueError, match="MC must be"):
        gemm.use_cache_blocks(0, 1024)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
@pytest.mark.parametrize("bias_per_row", [False, True])
def test_short_last_sliver_is_bitwise_the_full_kernels(dtype, activation, bias_per_row, rng):
    # m % MR rows go through the narrower kernels (several panels at a time); the
    # same rows inside a taller product go through the full kernel. (Products of
    # fewer than MR rows take the thin paths instead.)
    from corenet.kernels import gemm

    mr, nr = gemm.tile_shape(dtype)
    k, n = 300, 5 * nr + 3  # full panels, odd and even counts of them, and a partial one
    a = rng.standard_normal((2 * mr, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    old = rng.standard_normal((2 * mr, n)).astype(dtype)
    bias = rng.standard_normal(2 * mr if bias_per_row else n).astype(dtype)
    full = old.copy()
    matmul(a, b, out=full, bias=bias, activation=activation, accumulate=True,
           bias_per_row=bias_per_row)
    for m in range(mr + 1, 2 * mr):
        part = old[:m].copy()
        matmul(a[:m], b, out=part, bias=bias[:m] if bias_per_row else bias,
               activation=activation, accumulate=True, bias_per_row=bias_per_row)
        np.testing.assert_array_equal(part, full[:m], err_msg=f"m={m}")


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(64, 455, 576), (13, 100, 600), (6, 16, 1), (7, 33, 700),
                                   (300, 17, 1000), (2, 20, 5), (3, 5, 0)])
def test_matmul_on_prepacked_panels_is_bitwise_the_packed_path(m, n, k, dtype, n_threads,
                                                                  rng, threads):
    # A convolution writes its columns as the GEMM's panels (gemm_b_panels). Where
    # gemm_ex packs B itself (m >= MR, n >= NR) the two agree bitwise, with the
    # epilogue and accumulate; elsewhere they agree with numpy.
    from corenet.kernels.gemm import matmul_b_panels, pack_b_panels, tile_shape

    corenet.set_num_threads(n_threads)
    a, b, expected = operands(rng, m, n, k, dtype, False, False)
    bias = rng.standard_normal(m).astype(dtype)
    old = rng.standard_normal((m, n)).astype(dtype)
    ours, theirs = old.copy(), old.copy()
    matmul_b_panels(a, pack_b_panels(b), n, out=ours, bias=bias, bias_per_row=True,
                    activation="tanh", accumulate=True)
    matmul(a, b, out=theirs, bias=bias, bias_per_row=True, activation="tanh",
           accumulate=True)
    mr, nr = tile_shape(dtype)
    if m >= mr and n >= nr:
        np.testing.assert_array_equal(ours, theirs)
    assert_close(ours, np.tanh(old + expected + bias[:, None]), dtype, k)
    assert_close(matmul_b_panels(a, pack_b_panels(b), n), expected, dtype, k)


@pytest.mark.parametrize("trans_b", [False, True], ids=["rows", "transposed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,n", [(1, 1), (5, 16), (37, 70), (300, 33), (0, 9), (9, 0)])
def test_packing_panels_matches_numpys_layout(k, n, dtype, trans_b, rng):
    # pack_panels, the GEMM's own packing that a convolution's dW uses on its
    # columns: panel q holds columns q·NR .. q·NR + NR - 1 of B, row by row, zeros
    # past n, from B's rows or from its stored transpose.
    from corenet.kernels.gemm import pack_b_panels, tile_shape

    nr = tile_shape(dtype)[1]
    b = rng.standard_normal((k, n)).astype(dtype)
    wide = np.zeros((k, -(-n // nr) * nr), dtype)
    wide[:, :n] = b
    expected = wide.reshape(k, wide.shape[1] // nr, nr).transpose(1, 0, 2)
    panels = pack_b_panels(np.ascontiguousarray(b.T) if trans_b else b, trans_b=trans_b)
    assert panels.shape == expected.shape and panels.dtype == dtype
    np.testing.assert_array_equal(panels, expected)


def test_packing_panels_checks_its_input():
    from corenet.kernels.gemm import pack_b_panels

    with pytest.raises(DTypeError, match="pack_b_panels: expected a float32 or float64 "
                                         "array, got int64"):
        pack_b_panels(np.ones((3, 4), np.int64))
    with pytest.raises(ShapeError, match=r"pack_b_panels: expected a 2-D b, got shape \(3,\)"):
        pack_b_panels(np.ones(3, np.float32))


def test_prepacked_panels_are_checked():
    from corenet.kernels.gemm import matmul_b_panels, pack_b_panels

    a = np.ones((3, 4), np.float32)
    panels = pack_b_panels(np.ones((4, 20), np.float32))
    with pytest.raises(ShapeError, match=r"panels must have shape \(\d+, 4, \d+\), got"):
        matmul_b_panels(a, panels, 100)
    with pytest.raises(DTypeError, match="got float32 and float64"):
        matmul_b_panels(a, panels.astype(np.float64), 20)
    with pytest.raises(ValueError, match="byte boundary"):
        shifted = np.empty(panels.size + 1, np.float32)[1:].reshape(panels.shape)
        shifted[...] = panels
        matmul_b_panels(a, shifted, 20)
    with pytest.raises(ShapeError, match=r"bias must have shape \(3,\)"):
        matmul_b_panels(a, panels, 20, bias=np.ones(4, np.float32), bias_per_row=True)
    with pytest.raises(ShapeError, match="n must be at least 0, got -5"):
        matmul_b_panels(a, panels[:0], -5)
    with pytest.raises(TypeError, match="n must be an integer, got True"):
        matmul_b_panels(a, panels, True)
    with pytest.raises(TypeError):
        matmul_b_panels(a, panels, 20.0)


@pytest.mark.parametrize("n", [3, 5, 64, 200])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("case", ["out=b", "out=a", "out=a, a transposed"])
def test_an_out_that_shares_memory_with_an_input_gets_numpys_product(n, accumulate, case,
                                                                      rng):
    # The GEMM writes tiles of C while it still reads A and B: matmul(a, b, out=b) was
    # off by up to 26 at n=3, and matmul(a, a, trans_a=True, out=a) by 695 at n=200.
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    if case == "out=b":
        out, expected = b, a @ b
        arguments = (a, b)
    elif case == "out=a":
        out, expected = a, a @ b
        arguments = (a, b)
    else:
        out, expected = a, a.T @ a
        arguments = (a, a)
    if accumulate:
        expected = expected + out
    matmul(*arguments, trans_a=case.endswith("transposed"), out=out, accumulate=accumulate)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * n)


def test_a_bias_inside_out_is_read_before_out_is_written(rng):
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((30, 50)).astype(np.float32)
    out = rng.standard_normal((40, 50)).astype(np.float32)
    bias = out[7]  # a view of out's row 7
    expected = a @ b + bias
    matmul(a, b, out=out, bias=bias)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    panels_out = rng.standard_normal((40, 50)).astype(np.float32)
    expected = a @ b + panels_out[3]
    matmul_b_panels(a, pack_b_panels(b), 50, out=panels_out, bias=panels_out[3])
    np.testing.assert_allclose(panels_out, expected, rtol=1e-5, atol=1e-5)
