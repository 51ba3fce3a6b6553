"""Shared pieces of the benchmark suites and the ratio summary.

Every benchmark is parametrized over ``impl`` (corenet and its peers: numpy,
and PyTorch when installed) and sets ``benchmark.group`` to the shape it times,
so each group holds corenet and its peers on the same work. At the end of the
run a table prints, per group, how many times faster corenet ran than each
peer (peer time / corenet time, on the minimum of the rounds).
"""
import os

import numpy as np
import pytest

import corenet

RESULTS = {}  # group -> {impl: seconds}
WORK = {}  # group -> (floating-point operations of one call, threads, 4-byte words a value)
PEAKS = {}  # threads -> the best FMA peak (GFLOPS) this run measured on that many

try:
    import torch
except ImportError:  # PyTorch is an optional peer
    torch = None

try:
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None

IMPLS = ["corenet", "numpy"] + (["torch"] if torch is not None else [])


def _keep_freed_memory():
    """Give the peers their best case: glibc returns each large freed block to
    the system and page-faults it back on the next allocation, which makes a
    numpy expression with big temporaries up to twice as slow from one round to
    the next, depending on history. Keeping freed memory (as a long-running
    training process ends up doing) measures numpy and PyTorch at their best.
    corenet's steady state allocates nothing large, so this does not help it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc
        return
    if mallopt is not None:
        mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: large blocks from the heap, not mmap
        mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: keep freed heap memory


_keep_freed_memory()


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        impls = getattr(metafunc.module, "IMPLS", IMPLS)
        metafunc.parametrize("impl", [i for i in impls if i in IMPLS])


def torch_training_step(model, x, y, lr, momentum):
    """One PyTorch training step of ``model`` on (x, y): SGD with momentum and
    cross-entropy, the step the corenet groups are compared with."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_function = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optimizer.zero_grad()
        loss = loss_function(model(tx), ty)
        loss.backward()
        optimizer.step()
        return loss
    return step


class ThreadLimit:
    """Runs every implementation with the same number of threads."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.corenet_before = corenet.get_num_threads()
        corenet.set_num_threads(self.n)
        self.blas = threadpool_limits(self.n) if threadpool_limits else None
        if torch is not None:
            self.torch_before = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        corenet.set_num_threads(self.corenet_before)
        if self.blas is not None:
            self.blas.unregister()
        if torch is not None:
            torch.set_num_threads(self.torch_before)


def measure_peak(threads):
    """The FMA peak on ``threads`` threads: the best of this run's measurements,
    taken before each benchmark that counts FLOPs on that many threads and again
    for the summary. A shared host can take a core away for the whole of one
    measurement, and twice in one run (runs here measured 102 and 103 GFLOPS on two
    cores that give 200, and reported conv2d at 125-130 % of it); it cannot make
    the FMA loop faster."""
    from corenet.kernels.peak import fma_peak_gflops

    PEAKS[threads] = max(PEAKS.get(threads, 0.0), fma_peak_gflops(threads))
    return PEAKS[threads]


def layer_step(layer, x, grad):
    """One forward and backward of a corenet layer, reusing its buffers as inside a Model."""
    layer.reuse_buffers = True

    def step():
        layer.forward(x)
        return layer.backward(grad)
    return step


@pytest.fixture
def run(benchmark, impl):
    """run(group, function, threads): time ``function`` under ``group`` and record it."""

    def timed(group, function, threads=None, flops=None, dtype="float32"):
        """``flops``: the floating-point operations of one call, for GFLOPS and the
        fraction of the FMA peak in the summary (of ``dtype``: a vector holds half as
        many float64, so their peak is half the float32 one the bench measures)."""
        threads = threads or os.cpu_count() or 1
        if flops and not benchmark.disabled:
            measure_peak(threads)
        benchmark.group = group
        benchmark.extra_info.update(impl=impl, threads=threads)
        with ThreadLimit(threads):
            result = benchmark(function)
        if benchmark.stats is not None:  # None under --benchmark-disable
            RESULTS.setdefault(group, {})[impl] = benchmark.stats.stats.min
            if flops:
                WORK[group] = (flops, threads, np.dtype(dtype).itemsize // 4)
                benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.min / 1e9
        return result

    return timed


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("corenet speed-up over its peers (peer time / corenet time)")
    # The usual peers, then any other a suite compares with (e.g. "1 thread").
    peers = [impl for impl in IMPLS if impl != "corenet"]
    peers += [impl for times in RESULTS.values() for impl in times
              if impl != "corenet" and impl not in peers]
    peers = list(dict.fromkeys(peers))
    write(f"{'group':<52}" + "".join(f"{'vs ' + peer:>12}" for peer in peers))
    for group, times in RESULTS.items():
        if "corenet" not in times:
            continue
        cells = [f"{times[peer] / times['corenet']:>11.2f}x" if peer in times else f"{'-':>12}"
                 for peer in peers]
        write(f"{group:<52}" + "".join(cells))
    if WORK:
        write_rates(terminalreporter, write)


def write_rates(terminalreporter, write):
    """GFLOPS of each implementation and corenet's fraction of the FMA peak, the peak
    measured in this run, on this CPU, with the same threads."""
    terminalreporter.section("GFLOPS, and corenet's fraction of the FMA peak measured now")
    peaks = {}
    for group, (flops, threads, words) in WORK.items():
        if threads not in peaks:
            peaks[threads] = measure_peak(threads)
        peak = peaks[threads] / words  # float64: half the float32 peak
        times = RESULTS[group]
        rates = "  ".join(f"{impl} {flops / seconds / 1e9:7.1f}" for impl, seconds in
                          times.items())
        fraction = flops / times["corenet"] / 1e9 / peak if "corenet" in times else 0
        write(f"{group:<52} {rates}  corenet {fraction:6.1%} of {peak:.0f}")
