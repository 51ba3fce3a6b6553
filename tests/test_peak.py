"""corenet.kernels.peak: the FMA loop the benchmarks divide their rates by."""
import math
import textwrap

import pytest

from corenet.kernels.peak import fma_peak_gflops
from corenet.kernels.threads import openmp_enabled
from test_threads import run_with_deadline


def test_the_peak_is_a_positive_finite_rate():
    rate = fma_peak_gflops(1, seconds=0.001)
    assert math.isfinite(rate) and rate > 0


@pytest.mark.parametrize("threads", [0, -1, 2 ** 31, True, 2.5, "2"])
def test_a_thread_count_outside_1_to_1024_is_refused(threads):
    # 0 and -1 ran no thread, so each run timed nothing and the loop count grew until
    # an OverflowError; 2.5 measured on 2 threads.
    with pytest.raises(ValueError, match=f"fma_peak_gflops: threads must be an integer "
                                         f"from 1 to 1024, got {threads!r}"):
        fma_peak_gflops(threads)


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), 61, None])
def test_seconds_outside_0_to_60_are_refused(seconds):
    with pytest.raises(ValueError, match=r"fma_peak_gflops: seconds must be a number in "
                                         r"\(0, 60\]"):
        fma_peak_gflops(1, seconds)


@pytest.mark.skipif(not openmp_enabled(), reason="built without OpenMP: no pool to break")
def test_a_forked_child_asking_for_two_threads_is_refused_not_hung():
    output = run_with_deadline(textwrap.dedent("""
        import os
        from corenet.kernels.peak import fma_peak_gflops
        fma_peak_gflops(2, seconds=0.001)  # the parent's OpenMP pool has two threads
        pid = os.fork()
        if pid == 0:
            try:
                fma_peak_gflops(2, seconds=0.001)
            except RuntimeError as error:
                print(error, flush=True)
            print(fma_peak_gflops(1, seconds=0.001) > 0, flush=True)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
    """), 60)
    assert output.splitlines() == [
        "fma_peak_gflops: a child made by fork() runs one thread, got threads=2", "True"]
