"""Threads: the setting, its defaults, threadpoolctl, determinism, steady state, coexistence."""
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
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
    # 2**31 was an OverflowError from the C int, and 10**5 threads took gigabytes of
    # scratch for a small convolution.
    for bad in (0, -1, 1.5, "2", True, 1025, 2 ** 31):
        with pytest.raises(ValueError, match=r"set_num_threads expects an integer from 1 to "
                                             r"1024, got"):
            cn.set_num_threads(bad)


@pytest.mark.parametrize("value", ["0", "abc", "99999999999", "1e9"])
@pytest.mark.parametrize("command", [
    [sys.executable, "-c", "import corenet; print(corenet.get_num_threads())"],
    [sys.executable, "-m", "corenet", "info", "--json"],
])
def test_a_bad_thread_count_in_the_environment_is_named_and_replaced(value, command):
    # A warning and the default, as OpenMP treats a bad OMP_NUM_THREADS: an error at import
    # was a traceback from every corenet command.
    clean = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    result = subprocess.run(command, capture_output=True, text=True,
                            env=dict(clean, CORENET_NUM_THREADS=value),
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr
    assert f"CORENET_NUM_THREADS must be an integer from 1 to 1024, got {value!r}; it is " \
        f"ignored" in result.stderr
    assert "Traceback" not in result.stderr
    expected = len(os.sched_getaffinity(0)) if openmp_enabled() else 1
    threads = json.loads(result.stdout)["threads"] if "info" in command else int(result.stdout)
    assert threads == expected


@pytest.mark.parametrize("env, expected", [
    ({"CORENET_NUM_THREADS": "3", "OMP_NUM_THREADS": "2"}, 3),
    ({"CORENET_NUM_THREADS": "0", "OMP_NUM_THREADS": "2"}, 2),  # the bad one is skipped
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


# -- fork ---------------------------------------------------------------------------

AFTER_A_PARALLEL_GEMM = """
    import os, sys, warnings
    import numpy as np, corenet
    from corenet.kernels import matmul
    from corenet.kernels.threads import in_forked_child

    corenet.set_num_threads(2)
    a = np.ones((512, 512), np.float32)
    matmul(a, a)  # above the grain: the OpenMP pool now has a second thread

    def work_in_child():
        product = matmul(a, a)  # hung here before the fork handler
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            corenet.set_num_threads(2)
        return (float(product[0, 0]), corenet.get_num_threads(), in_forked_child(),
                [str(w.message)[:40] for w in caught])
"""

FORKS = {
    "os.fork": """
        pid = os.fork()
        if pid == 0:
            print("child", *work_in_child(), flush=True)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        print("parent", corenet.get_num_threads(), in_forked_child())
    """,
    "multiprocessing fork": """
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(1) as pool:
            print("child", *pool.apply(work_in_child), flush=True)
        print("parent", corenet.get_num_threads(), in_forked_child())
    """,
}


def run_with_deadline(code: str, seconds: float) -> str:
    """stdout of ``python -c code``; a hang (of it or a child it forked) fails the test,
    and the whole process group is killed so that no hung child outlives it."""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               cwd=tempfile.gettempdir())
    try:
        stdout, stderr = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        pytest.fail(f"hung for {seconds} s after fork")
    assert process.returncode == 0, stderr
    return stdout


@pytest.mark.skipif(not openmp_enabled(), reason="built without OpenMP: no pool to break")
@pytest.mark.parametrize("fork", FORKS, ids=str)
def test_a_forked_child_runs_kernels_on_one_thread(fork):
    code = textwrap.dedent(AFTER_A_PARALLEL_GEMM) + textwrap.dedent(FORKS[fork])
    lines = run_with_deadline(code, seconds=60).splitlines()
    assert lines[0].startswith("child 512.0 1 True ['corenet: a child made by fork() runs"), lines
    assert lines[1] == "parent 2 False"


def test_a_short_lived_thread_frees_its_gemm_buffer(threads):
    from corenet.kernels import matmul

    cn.set_num_threads(1)  # the GEMM runs on the calling thread, in that thread's buffer
    a = np.ones((512, 512), np.float32)
    matmul(a, a)

    def resident_mib():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096 / 2 ** 20

    before = resident_mib()
    for _ in range(100):
        thread = threading.Thread(target=matmul, args=(a, a))
        thread.start()
        thread.join()
    assert resident_mib() - before < 20  # leaking, it grew by about 84 MiB


SPIN_PROBE = """
import os, time
import numpy as np
import corenet
from corenet.kernels import matmul
corenet.set_num_threads(2)
a = np.ones((512, 512), np.float32)
samples = []
for _ in range(20):
    matmul(a, a)  # a parallel region; then its worker idles while we sleep
    start = time.process_time()
    time.sleep(0.05)
    samples.append(time.process_time() - start)
print(sorted(samples)[len(samples) // 2] * 1e3, os.environ.get("GOMP_SPINCOUNT"))
"""


def spin_probe(env):
    """Median CPU time (ms) of a process sleeping 50 ms after a parallel kernel, and
    its GOMP_SPINCOUNT after importing corenet."""
    result = subprocess.run([sys.executable, "-c", SPIN_PROBE], capture_output=True, text=True,
                            env=env, timeout=120, check=True, cwd=tempfile.gettempdir())
    milliseconds, variable = result.stdout.split()
    return float(milliseconds), variable


@pytest.mark.skipif(not openmp_enabled(), reason="built without OpenMP")
def test_idle_openmp_threads_sleep_soon_unless_the_user_says_otherwise():
    # libgomp's default idle thread polls ~300,000 rounds: 6-8 ms of CPU after every
    # kernel, taken from the Python thread and from other processes.
    clean = {key: value for key, value in os.environ.items()
             if key not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    milliseconds, variable = spin_probe(clean)
    assert milliseconds < 2.0
    assert variable == "None"  # not left behind for libraries loaded later
    milliseconds, variable = spin_probe({**clean, "GOMP_SPINCOUNT": "300000"})
    assert variable == "300000" and milliseconds > 2.0
