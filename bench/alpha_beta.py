"""The α-β model of corenet's bucketed rank-order allreduce, and the scaling efficiency it
predicts for 2-64 machines (one rank each) at a fixed global batch. README: "Data parallel".

    python bench/alpha_beta.py --step-mlp 0.487 --step-lenet 0.141   # 1-machine step times

Per bucket of n bytes the chain does K-1 hops of α + n·(β + γ) (send, then add; γ is this
machine's elementwise add, measured here), buckets pipelined down the chain, then the last
rank broadcasts (MPICH for large messages: scatter + allgather, ≈ 2·log2(K)·α + 2·n·β).
Compute per rank is the one-machine step time × 1/K (optimistic at small micro-batches).
Two bounds: nothing overlapped with backward, and everything but the first layer's bucket
hidden behind backward (what the hook aims at; the backward shrinks as 1/K too).
"""
import argparse
import math
import time

import numpy as np

from corenet.gradients import FlatGradients
from distributed_step import MODELS


def add_seconds_per_byte() -> float:
    a, b = np.ones(1 << 20, np.float32), np.ones(1 << 20, np.float32)
    best = min(_timed(lambda: np.add(a, b, out=a)) for _ in range(20))
    return best / a.nbytes


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def allreduce_seconds(bucket_bytes, ranks, alpha, beta, gamma) -> tuple:
    """(whole allreduce, the part after the last bucket - the first layer's - starts)."""
    done = [0.0] * ranks  # when each hop of the chain is free
    for n in bucket_bytes:
        for hop in range(1, ranks):
            done[hop] = max(done[hop], done[hop - 1]) + alpha + n * (beta + gamma)
    broadcast = sum(2 * math.log2(ranks) * alpha + 2 * n * beta for n in bucket_bytes)
    last = bucket_bytes[-1]
    tail = (ranks - 1) * (alpha + last * (beta + gamma)) + 2 * math.log2(ranks) * alpha \
        + 2 * last * beta
    return done[-1] + broadcast, tail


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--step-mlp", type=float, required=True, help="seconds, one machine")
    parser.add_argument("--step-lenet", type=float, required=True)
    parser.add_argument("--gbit", type=float, default=25.0)
    parser.add_argument("--latency-us", type=float, default=10.0)
    args = parser.parse_args()
    alpha, beta, gamma = args.latency_us * 1e-6, 8 / (args.gbit * 1e9), add_seconds_per_byte()
    print(f"alpha {alpha * 1e6:.1f} us, beta {beta * 1e9:.3f} ns/B, "
          f"gamma (add, measured) {gamma * 1e9:.3f} ns/B")
    print(f"{'model':<8}{'K':>4}{'compute ms':>12}{'allreduce ms':>14}"
          f"{'eff. no overlap':>17}{'eff. overlap':>14}")
    for name, step in (("mlp", args.step_mlp), ("lenet", args.step_lenet)):
        flat = FlatGradients(MODELS[name][0]().parameters())
        buckets = [flat.span(b).stop * 4 - flat.span(b).start * 4
                   for b in range(len(flat.buckets))]
        for ranks in (2, 4, 8, 16, 32, 64):
            compute = step / ranks
            total, tail = allreduce_seconds(buckets, ranks, alpha, beta, gamma)
            hidden = max(tail, total - compute * 2 / 3)  # backward is ~2/3 of a step
            print(f"{name:<8}{ranks:>4}{compute * 1e3:>12.2f}{total * 1e3:>14.2f}"
                  f"{compute / (compute + total):>17.2f}{compute / (compute + hidden):>14.2f}")


if __name__ == "__main__":
    main()
