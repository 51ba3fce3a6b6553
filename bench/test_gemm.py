"""GEMM: corenet.kernels.matmul beside numpy (OpenBLAS) and torch.matmul.

For a fair OpenBLAS baseline on this machine, run with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset (they cap it at its Haswell kernels):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/test_gemm.py
"""
import numpy as np
import pytest

from conftest import torch
from corenet.kernels.gemm import matmul


def operands(m, n, k, dtype, trans_a=False, trans_b=False):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b, np.empty((m, n), dtype)


def gemm_function(impl, a, b, out, trans_a, trans_b):
    if impl == "corenet":
        return lambda: matmul(a, b, trans_a, trans_b, out=out)
    if impl == "numpy":
        a_op, b_op = (a.T if trans_a else a), (b.T if trans_b else b)
        return lambda: np.matmul(a_op, b_op, out=out)
    ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
    a_op, b_op = (ta.T if trans_a else ta), (tb.T if trans_b else tb)
    return lambda: torch.matmul(a_op, b_op, out=tout)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [64, 256, 1024, 2048])
def test_square(run, impl, n, dtype, threads):
    a, b, out = operands(n, n, n, dtype)
    run(f"gemm {dtype} n={n} threads={threads}", gemm_function(impl, a, b, out, False, False),
        threads, flops=2 * n ** 3, dtype=dtype)


def test_convolution_shaped_product(run, impl):
    # conv2d 64->64 3x3 pad 1 on 8 samples of 56x56 (bench/test_conv.py) as one im2col
    # product, W (64 x 576) times the columns (576 x 8·3136): the GEMM rate at the
    # convolution's own size, which the issue compares the convolution with.
    m, n, k = 64, 8 * 56 * 56, 64 * 9
    a, b, out = operands(m, n, k, "float32")
    run(f"gemm float32 {m}x{n}x{k} NN (conv2d's product)",
        gemm_function(impl, a, b, out, False, False), flops=2 * m * n * k)


@pytest.mark.parametrize("trans", ["NT", "TN"])
@pytest.mark.parametrize("n", [256, 1024])
def test_transposed(run, impl, n, trans):
    trans_a, trans_b = trans[0] == "T", trans[1] == "T"
    a, b, out = operands(n, n, n, "float32", trans_a, trans_b)
    run(f"gemm float32 {trans} n={n}", gemm_function(impl, a, b, out, trans_a, trans_b))


# (m, n, k, trans_a, trans_b): odd shapes and Linear's three products at batch 16..1024.
SHAPES = [
    (333, 77, 129, False, False), (1, 1024, 1024, False, False), (1024, 1, 1024, False, False),
    (16, 256, 784, False, True), (256, 784, 16, True, False), (16, 784, 256, False, False),
    (64, 256, 784, False, True), (256, 784, 64, True, False), (64, 784, 256, False, False),
    (1024, 1024, 1024, False, True), (1024, 1024, 1024, True, False),
    (1024, 10, 1024, False, True), (10, 1024, 1024, True, False),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}x{}x{}{}{}".format(
    *s[:3], "T" if s[3] else "N", "T" if s[4] else "N"))
def test_shapes(run, impl, shape):
    m, n, k, trans_a, trans_b = shape
    a, b, out = operands(m, n, k, "float32", trans_a, trans_b)
    label = f"{'T' if trans_a else 'N'}{'T' if trans_b else 'N'}"
    run(f"gemm float32 {m}x{n}x{k} {label}", gemm_function(impl, a, b, out, trans_a, trans_b))
