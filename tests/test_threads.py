"""Threads: the setting, its defaults, threadpoolctl, determinism, steady state, coexistence."""
import os
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.kernels.threads import openmp_enabled
from corenet.train import train_step


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, cwd=tempfile.gettempdir(),
                          env=dict(os.environ, **env))


def test_set_and_get(threads):
    cn.set_num_threads(1)
    assert cn.get_num_threads() == 1
    cn.set_num_threads(3)
    assert cn.get_num_threads() == (3 if openmp_enabled() else 1)
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="positive integer"):
            cn.set_num_threads(bad)


@pytest.mark.parametrize("env, expected", [
    ({"CORENET_NUM_THREADS": "3", "OMP_NUM_THREADS": "2"}, 3),
    ({"OMP_NUM_THREADS": "2"}, 2),
    ({}, len(os.sched_getaffinity(0))),
])
def test_default_comes_from_the_environment(env, expected):
    clean = {key: value for key, value in os.environ.items()
             if key not in ("CORENET_NUM_THREADS", "OMP_NUM_THREADS")}
    code = "import corenet; print(corenet.get_num_threads())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(clean, **env), cwd=tempfile.gettempdir())
    assert int(result.stdout) == (expected if openmp_enabled() else 1), result.stderr


@pytest.mark.skipif(not openmp_enabled(), reason="built without OpenMP")
def test_threadpoolctl_sees_and_limits_corenets_pool(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    cn.set_num_threads(2)
    pools = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "openmp"]
    assert any(pool["num_threads"] == 2 for pool in pools), pools
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert cn.get_num_threads() == 1
    assert cn.get_num_threads() == 2


def mlp_and_batch(seed=0):
    cn.random.seed(seed)
    model = cn.Sequential(L.Linear(784, 256), L.ReLU(), L.Linear(256, 256), L.ReLU(),
                          L.Linear(256, 10))
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((64, 784)).astype(np.float32), rng.integers(0, 10, 64)


def test_a_training_step_is_bitwise_identical_on_1_and_2_threads(threads):
    results = []
    for n_threads in (1, 2):
        cn.set_num_threads(n_threads)
        model, x, y = mlp_and_batch()
        loss = cn.losses.SoftmaxCrossEntropy()
        optimizer = cn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        values = [train_step(model, loss, optimizer, x, y) for _ in range(3)]
        results.append((values, model.forward(x), [p.grad.copy() for p in model.parameters()],
                        [p.value.copy() for p in model.parameters()]))
    (values_1, out_1, grads_1, params_1), (values_2, out_2, grads_2, params_2) = results
    assert values_1 == values_2
    np.testing.assert_array_equal(out_1, out_2)
    for one, two in zip(grads_1 + params_1, grads_2 + params_2):
        np.testing.assert_array_equal(one, two)


def test_a_steady_state_training_step_allocates_no_large_array():
    model, x, y = mlp_and_batch()
    loss = cn.losses.SoftmaxCrossEntropy()
    optimizer = cn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # the first steps allocate the buffers
        train_step(model, loss, optimizer, x, y)
    tracemalloc.start()
    try:
        train_step(model, loss, optimizer, x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    smallest_activation = 64 * 256 * 4  # one hidden layer's output: 64 KiB
    # What remains are the loss's gradient and the returned output, 64 x 10 each.
    assert peak < smallest_activation / 4, peak


def test_corenet_numpy_and_torch_together():
    pytest.importorskip("torch")
    result = run_python("""
        import numpy as np, torch, corenet as cn, corenet.layers as L
        a = torch.randn(300, 300); b = (a @ a).numpy()
        model = cn.Sequential(L.Linear(300, 64), L.ReLU(), L.Linear(64, 3))
        out = model.forward(np.ascontiguousarray(b, np.float32))
        c = np.ones((200, 200)) @ np.ones((200, 200))
        print(out.shape, float(c[0, 0]), torch.get_num_threads() >= 1)
    """)
    assert result.stdout.split() == ["(300,", "3)", "200.0", "True"], result.stderr


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "prelu",
                                  "softmax"])
def test_activations_are_bitwise_identical_on_1_and_2_threads(name, threads):
    # Large enough (above every grain size) that two threads really run.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 1000)).astype(np.float32)
    grad = rng.standard_normal((512, 1000)).astype(np.float32)
    results = []
    for n_threads in (1, 2):
        cn.set_num_threads(n_threads)
        layer = L.create(name)
        out = layer.forward(x).copy()
        results.append([out, layer.backward(grad)] + [p.grad for p in layer.parameters()])
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
