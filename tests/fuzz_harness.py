"""Runs fuzz cases in worker processes, so that a crash or a hang is a finding and not
the end of the test session, and keeps the table of outcomes.

One worker runs a batch of cases and answers a line per case. When it dies, the case
it was running is run again alone in a fresh worker: a crash there too is reported
with its signal and the worker's last lines of stderr (faulthandler's traceback);
then the batch goes on in a new worker from the next case. A case that does not
answer within CASE_TIMEOUT seconds is a hang: the worker is killed.

    python tests/fuzz_harness.py    runs every group and prints the table
"""
from __future__ import annotations

import collections
import functools
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_worker.py")
# Generous: a case takes milliseconds, but the machine may be shared and busy.
CASE_TIMEOUT = float(os.environ.get("CORENET_FUZZ_TIMEOUT", "60"))
STARTUP_TIMEOUT = 300  # a worker's imports, before its first case
OUTCOMES = ("correct", "unchecked", "clean_error", "unclear_error", "wrong_result", "crash",
            "hang", "harness_error")
BAD_OUTCOMES = ("unclear_error", "wrong_result", "crash", "hang", "harness_error")

# group -> Counter of outcomes, filled by every run_cases of this process.
TALLY: dict = collections.defaultdict(collections.Counter)


def worker_environment() -> dict:
    environment = dict(os.environ)
    tests = os.path.dirname(WORKER)
    environment["PYTHONPATH"] = os.pathsep.join(
        [tests] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    environment.update(PYTHONFAULTHANDLER="1", PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1",
                       CORENET_NUM_THREADS=environment.get("CORENET_FUZZ_THREADS", "2"))
    return environment


@functools.cache
def generated_cases(scale: float) -> dict:
    """{group: cases} as fuzz_strategies draws them in a fresh process: the same on every
    run (in a test session, other tests' imports changed hypothesis's draws)."""
    strategies = os.path.join(os.path.dirname(WORKER), "fuzz_strategies.py")
    result = subprocess.run([sys.executable, strategies, str(scale)], capture_output=True,
                            text=True, env=worker_environment())
    if result.returncode:
        raise RuntimeError(f"drawing the fuzz cases failed:\n{result.stderr}")
    return json.loads(result.stdout)


def run_cases(cases: list, group: str | None = None, timeout: float = CASE_TIMEOUT) -> list:
    """One outcome dict per case, in order; counted in TALLY under ``group`` if given."""
    outcomes = [None] * len(cases)
    with tempfile.TemporaryDirectory(prefix="corenet-fuzz-") as folder:
        path = os.path.join(folder, "cases.jsonl")
        with open(path, "w") as stream:
            for case in cases:
                stream.write(json.dumps(case) + "\n")
        start = 0
        while start < len(cases):
            start = _run_batch(path, start, len(cases), outcomes, timeout, folder)
    if group is not None:
        TALLY[group].update(result["outcome"] for result in outcomes)
    return outcomes


def _run_batch(path, start, stop, outcomes, timeout, folder) -> int:
    """Runs cases start.. in one worker; returns where the next worker starts."""
    with _Worker(path, start, stop, folder) as worker:
        index = start
        worker.wait_ready()
        while index < stop:
            line = worker.read_line(timeout)
            if line is None or line == "":  # no answer in time, or the worker died
                worker.stop()
                how = "no answer in time" if line is None else worker.death()
                outcomes[index] = _alone(path, index, timeout, folder, line is None, how)
                return index + 1
            record = json.loads(line)
            outcomes[record.pop("index")] = record
            index += 1
    return stop


def _alone(path, index, timeout, folder, hung, how) -> dict:
    """Case ``index`` again in a fresh worker: the crash or hang as it shows alone."""
    with _Worker(path, index, index + 1, folder) as worker:
        worker.wait_ready()
        line = worker.read_line(timeout)
        worker.stop()
        if line is None:
            return {"outcome": "hang", "detail": f"no answer within {timeout:.0f} s"}
        if line == "":
            return {"outcome": "crash", "detail": worker.death()}
    return {"outcome": "hang" if hung else "crash",
            "detail": f"in a batch after other cases: {how}; alone: {line.strip()[:300]}"}


class _Worker:
    def __init__(self, path, start, stop, folder):
        self.stderr_path = os.path.join(folder, f"stderr-{start}.txt")
        self.stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, WORKER, path, str(start), str(stop)], stdout=subprocess.PIPE,
            stderr=self.stderr, stdin=subprocess.DEVNULL, env=worker_environment(),
            start_new_session=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.buffer = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        self.selector.close()
        self.process.stdout.close()
        self.stderr.close()

    def wait_ready(self) -> None:
        """Until the worker has imported what it needs; it must not fail there."""
        line = self.read_line(STARTUP_TIMEOUT)
        if not line or not json.loads(line).get("ready"):
            self.stop()
            raise RuntimeError(f"a fuzz worker did not start: {line!r}; {self.death()}")

    def read_line(self, timeout: float):
        """The next line; "" at the end of output (the worker exited); None on timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                return None
            chunk = os.read(self.process.stdout.fileno(), 1 << 16)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode() + "\n"

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()

    def death(self) -> str:
        code = self.process.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        self.stderr.flush()
        with open(self.stderr_path, "rb") as stream:
            tail = stream.read()[-1500:].decode(errors="replace")
        return f"{how}; stderr: {tail}"


def table(tally: dict | None = None) -> str:
    """The outcome counts per group, and the total."""
    tally = TALLY if tally is None else tally
    columns = ("cases",) + OUTCOMES
    rows = [(group, sum(counts.values()), *[counts[o] for o in OUTCOMES])
            for group, counts in sorted(tally.items())]
    if len(rows) > 1:
        rows.append(("total", *[sum(row[i] for row in rows) for i in range(1, len(columns) + 1)]))
    widths = [max(len("group"), *(len(row[0]) for row in rows))] + [len(c) for c in columns]
    lines = ["  ".join(text.rjust(width) if i else text.ljust(width)
                       for i, (text, width) in enumerate(zip(("group",) + columns, widths)))]
    for row in rows:
        lines.append("  ".join(str(value).rjust(width) if i else str(value).ljust(width)
                               for i, (value, width) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def failures(cases: list, outcomes: list) -> list:
    """Each bad outcome with its case and the command that reproduces it."""
    return [f"{result['outcome']}: {result['detail']}\n    reproduce: python {WORKER} --case "
            f"'{json.dumps(case)}'"
            for case, result in zip(cases, outcomes) if result["outcome"] in BAD_OUTCOMES]


if __name__ == "__main__":
    import fuzz_strategies

    for name, cases in generated_cases(fuzz_strategies.SCALE).items():
        found = failures(cases, run_cases(cases, name))
        print(f"{name}: {len(found)} bad outcomes", *found[:20], sep="\n  ")
    print(table())
