"""corenet on a CPU that another process keeps busy.

The default run (``corenet train``, all cores, the MLP and ``--model cnn``) against
``corenet train --threads 1``, on an idle machine and with one process of our own
spinning on a core the whole time. Every parallel region waits for the thread that
shares its core with the spinner, so the default run goes down to one thread while the
process waits for CPUs (corenet.contention). The targets: with a core busy the
default run takes at most 1.3× the one-thread time, and idle it is not slower.
The summary shows "vs 1 thread" = one-thread time / default time (≥ 0.77, ≥ 1).
"""
import contextlib
import io
import os
import subprocess
import sys

import pytest

import corenet
from conftest import RESULTS
from corenet import cli

EPOCHS = 3
SPIN = "while True: pass"


@pytest.fixture
def busy_core():
    """One process of our own spinning for as long as a busy benchmark runs (the idle
    ones must not find it still running)."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    yield spinner
    spinner.kill()
    spinner.wait()


def train(model, threads):
    arguments = ["train", "--model", model, "--epochs", str(EPOCHS), "--json"]
    if threads is not None:
        arguments += ["--threads", str(threads)]
    else:  # what a fresh process starts with
        corenet.set_num_threads(len(os.sched_getaffinity(0)))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(arguments) == 0


@pytest.mark.parametrize("threads", [1, None], ids=["threads-1", "default"])
@pytest.mark.parametrize("load", ["idle", "busy"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_default_run(benchmark, request, model, load, threads):
    if load == "busy":
        request.getfixturevalue("busy_core")
    before = corenet.get_num_threads()
    group = f"corenet train, digits {model.upper()}, {EPOCHS} epochs, {load}"
    benchmark.group = group
    try:
        benchmark.pedantic(train, args=(model, threads), rounds=9, warmup_rounds=2)
    finally:
        corenet.set_num_threads(before)
    if benchmark.stats is not None:
        RESULTS.setdefault(group, {})["corenet" if threads is None else "1 thread"] = \
            benchmark.stats.stats.min
