"""Data parallel over MPI: 2 ranks of 1 thread against 1 process of 2 threads, the
784-1024-1024-10 MLP at batch 1024 and LeNet-5 at batch 256. Each side runs
bench/distributed_step.py in its own process(es) and reports its best time per step;
the summary's "vs 1 process x 2 threads" is that time over the 2-rank time, and the
share of a 2-rank step spent in the gradient allreduce is printed.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/test_distributed.py -s
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import RESULTS

pytest.importorskip("mpi4py", reason="needs corenet[mpi]: pip install 'corenet[mpi]'")
if shutil.which("mpiexec") is None:
    pytest.skip("needs mpiexec on PATH (the mpich wheel brings one)", allow_module_level=True)

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_step.py")
PEER = "1 process x 2 threads"


def measure(command, steps):
    result = subprocess.run(command + [SCRIPT, *steps], capture_output=True, text=True,
                            timeout=600, cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_two_ranks_against_two_threads(model, request):
    disabled = request.config.getoption("benchmark_disable", False)
    steps = ["--steps", "2" if disabled else "10"]
    ranks = measure(["mpiexec", "-n", "2", sys.executable], [model, "--threads", "1", *steps])
    threads = measure([sys.executable], [model, "--threads", "2", *steps])
    assert ranks["ranks"] == 2 and threads["ranks"] == 1
    if disabled:
        return
    group = f"{model} step, batch {ranks['batch']}: 2 ranks x 1 thread"
    RESULTS.setdefault(group, {}).update(
        {"corenet": ranks["seconds_per_step"], PEER: threads["seconds_per_step"]})
    print(f"\n{group}: {ranks['seconds_per_step'] * 1e3:.1f} ms a step, "
          f"{ranks['communicating']:.1%} in the allreduce; one process of 2 threads "
          f"{threads['seconds_per_step'] * 1e3:.1f} ms")
