"""The training steps of bench/, corenet and its peers timed in turns: the MLP steps of
test_mlp.py, LeNet-5's of test_cnn.py and the convolutions of test_conv.py.

pytest-benchmark times each implementation for about a second, one after another. On a
shared host whose speed changes for seconds at a time (here the 64-32-10 step took 71 µs
for a stretch of steps, then 150 µs for the next), a peer can draw a fast stretch and
corenet a slow one. Here the implementations take turns in blocks of 0.2 s for several
seconds, so every stretch is shared by all, and the median is fair as well as the
minimum. Each block starts with 50 ms that are not counted: the threads of the one
before still spin then (PyTorch's OpenMP polls for milliseconds, OpenBLAS for up to
0.1 s), and in blocks of 20 ms without that pause corenet's 784-256-256-10 step took
1.7 ms where alone it takes 0.9.

    python bench/alternate.py                 # every step: mlp, lenet and conv
    python bench/alternate.py --seconds 20 --threads 1 --cases conv
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from any folder
from conftest import IMPLS, ThreadLimit  # noqa: E402
from test_cnn import BATCHES, lenet_step  # noqa: E402
from test_conv import CONV_CASES, conv_step  # noqa: E402
from test_mlp import CONFIGS, STEPS, data  # noqa: E402

CASES = ("mlp", "lenet", "conv")

BLOCK_SECONDS = 0.2
SETTLE_SECONDS = 0.05


def step_times(step, seconds: float) -> list:
    """Per-step seconds of ``step`` run for about ``seconds``, at least one step."""
    times = []
    end = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        step()
        now = time.perf_counter()
        times.append(now - start)
        if now >= end:
            return times


def alternate(steps: dict, seconds: float) -> dict:
    """{impl: per-step seconds}, the implementations taking turns in blocks."""
    times = {impl: [] for impl in steps}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for impl, step in steps.items():
            step_times(step, SETTLE_SECONDS)
            times[impl] += step_times(step, BLOCK_SECONDS)
    return times


def case_steps(names):
    """(title, {impl: step}) of each case in ``names``, in bench/'s groups' titles;
    the steps are built when the case's turn comes, under the thread limit."""
    if "mlp" in names:
        for sizes, batch in CONFIGS:
            x, y = data(sizes, batch)
            yield (f"mlp step {'-'.join(map(str, sizes))} batch {batch}",
                   {impl: STEPS[impl](sizes, x, y) for impl in IMPLS})
    if "lenet" in names:  # corenet and PyTorch only, as in test_cnn.py
        for batch in BATCHES:
            yield (f"lenet-5 training step batch {batch}",
                   {impl: lenet_step(impl, batch) for impl in IMPLS if impl != "numpy"})
    if "conv" in names:
        for case in CONV_CASES:
            n_axes, c_in, c_out, kernel, _, shape = case
            steps = {impl: conv_step(impl, *case) for impl in IMPLS}
            yield (f"conv{n_axes}d {c_in}->{c_out} {kernel}^{n_axes} "
                   f"{'x'.join(map(str, shape[2:]))} b{shape[0]} fwd+bwd",
                   {impl: step for impl, step in steps.items() if step is not None})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per step (default 8)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of {', '.join(CASES)} (default all)")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or not 1 <= args.threads <= 1024:
        parser.error(f"--seconds must be positive and --threads from 1 to 1024, got "
                     f"{args.seconds} and {args.threads}")
    names = args.cases.split(",")
    if not names or set(names) - set(CASES):
        parser.error(f"--cases takes a comma-separated list of {', '.join(CASES)}, "
                     f"got {args.cases!r}")
    print(f"{args.threads} threads; per-step µs, minimum and median; "
          f"speed-up = peer time / corenet time")
    with ThreadLimit(args.threads):
        for title, steps in case_steps(names):
            report(title, alternate(steps, args.seconds))


def report(title: str, times: dict) -> None:
    best = {impl: min(t) for impl, t in times.items()}
    median = {impl: float(np.median(t)) for impl, t in times.items()}
    print(title)
    for impl in times:
        line = f"  {impl:8s} min {best[impl] * 1e6:9.1f}  median {median[impl] * 1e6:9.1f}"
        if impl != "corenet":
            line += (f"  speed-up {best[impl] / best['corenet']:.2f}x (min), "
                     f"{median[impl] / median['corenet']:.2f}x (median)")
        print(line)


if __name__ == "__main__":
    main()
