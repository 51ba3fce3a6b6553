"""Fewer threads while other processes take cores, all of them again when they are gone.

A parallel region ends when its slowest thread does. When the OS gives one of
corenet's cores to another process, each region waits for the thread that is not
running: with one core of two kept busy, the digits CNN trained 1.45x slower on two
threads than on one (Zen 3). Linux counts the time each thread spent ready but
waiting for a CPU (``/proc/self/task/*/schedstat``, the run queue delay), which is
about zero on an idle machine and most of the wall time on a busy one.

``ContentionGovernor`` reads it between training steps. While the threads together
wait more than ``threshold`` of the wall time, it gives up as many threads as the
cores they waited for (two threads beside one busy core: one); after
``retry_after`` seconds it tries the full count again. Results do not depend on the
thread count (corenet's kernels split outputs, never sums), so switching changes no
value. A count the user sets meanwhile becomes the full count. ``corenet train``
uses it unless the thread count is given (``--threads``, ``CORENET_NUM_THREADS``,
``OMP_NUM_THREADS``) or it runs under MPI.

>>> governor = ContentionGovernor()  # fit(..., callbacks=[governor])
"""
from __future__ import annotations

import math
import os
import time

from corenet.kernels.threads import get_num_threads, set_num_threads
from corenet.train import Callback

TASKS = "/proc/self/task"


def run_queue_seconds(tasks: str = TASKS) -> float | None:
    """Seconds the threads of this process have spent ready to run but waiting for a
    CPU, summed over its threads (those that ended are not counted); None where the
    system does not say (not Linux), 0 where the kernel keeps no such statistics."""
    try:
        threads = os.listdir(tasks)
    except OSError:
        return None
    total, found = 0, False
    for thread in threads:
        try:
            with open(f"{tasks}/{thread}/schedstat") as handle:
                fields = handle.read().split()
            total += int(fields[1])  # on the CPU, waiting on a run queue, time slices
            found = True
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if found else None


class ContentionGovernor(Callback):
    """Gives up threads while the process waits for CPUs, as the module says.
    ``switches`` counts the changes of thread count."""

    def __init__(self, interval: float = 0.1, threshold: float = 0.1,
                 retry_after: float = 4.0, clock=time.monotonic, waited=run_queue_seconds):
        if not (interval > 0 and threshold > 0 and retry_after > 0):
            raise ValueError(f"ContentionGovernor: interval, threshold and retry_after must be "
                             f"positive, got {interval}, {threshold} and {retry_after}")
        self.interval, self.threshold, self.retry_after = interval, threshold, retry_after
        self.clock, self.waited = clock, waited
        self.switches = 0
        self._mark = None  # (time, run queue seconds) at the start of this interval
        self._full = self._current = 1  # the user's count, and the count last seen or set
        self._reduced_at = None  # when it last gave up threads

    def on_train_begin(self) -> None:
        self._full = self._current = get_num_threads()
        self._reduced_at = None
        waited = self.waited()
        self._mark = None if waited is None else (self.clock(), waited)

    def on_batch_end(self, epoch: int, batch: int, loss: float) -> None:
        if self._mark is None:
            return
        now = self.clock()
        start, waited_before = self._mark
        if now - start < self.interval:
            return
        waited = self.waited()
        if waited is None:
            self._mark = None
            return
        self._mark = (now, waited)
        if get_num_threads() != self._current:  # the user's own count: the full one now
            self._full = self._current = get_num_threads()
            self._reduced_at = None
        waiting_cores = (waited - waited_before) / (now - start)
        if waiting_cores > self.threshold and self._current > 1:
            self._use(max(1, self._current - math.ceil(waiting_cores)))
            self._reduced_at = now
        elif self._reduced_at is not None and now - self._reduced_at >= self.retry_after:
            # Fewer threads do not wait where more would: only trying tells.
            self._use(self._full)
            self._reduced_at = None

    def on_train_end(self) -> None:
        if self._reduced_at is not None and get_num_threads() == self._current:
            self._use(self._full)
        self._reduced_at = None

    def _use(self, threads: int) -> None:
        set_num_threads(threads)
        self._current = threads
        self.switches += 1
