"""Run under mpiexec (or alone): time per training step and the share spent on the
gradient allreduce, printed by rank 0 as one JSON line. bench/test_distributed.py runs it.

    mpiexec -n 2 python bench/distributed_step.py mlp --threads 1
    python bench/distributed_step.py mlp --threads 2          # one process, no MPI
    mpiexec -n 2 python bench/distributed_step.py allreduce   # time vs size, for the α-β fit
"""
import argparse
import json
import time

import numpy as np

import corenet as cn
import corenet.layers as L
from corenet.train import batches, train_step
from test_cnn import lenet_corenet as lenet


def mlp():
    return cn.Sequential(L.Linear(784, 1024), L.ReLU(), L.Linear(1024, 1024), L.ReLU(),
                         L.Linear(1024, 10))


MODELS = {"mlp": (mlp, 1024), "lenet": (lenet, 256)}


def time_steps(name, steps, distributed):
    build, batch = MODELS[name]
    cn.random.seed(0)
    model = build()
    rng = np.random.default_rng(0)
    X = rng.random((batch,) + model.inputs[0].shape, np.float32)
    y = rng.integers(0, 10, batch)
    loss = cn.losses.SoftmaxCrossEntropy()
    optimizer = cn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    index = next(batches(batch, batch, None))
    communicating = [0.0]
    if distributed:
        from corenet import distributed as dist

        optimizer = dist.DistributedOptimizer(optimizer, model)
        step, reducer = dist.DistributedStep(), optimizer.reducer
        # Time in the reducer: packing and posting after each layer, and the wait after
        # backward for what is still in flight (what overlap did not hide).
        for method in ("_after_layer", "finish"):
            setattr(reducer, method, timed(getattr(reducer, method), communicating))
        run = lambda: step(model, loss, optimizer, X, y, index)  # noqa: E731
    else:
        run = lambda: train_step(model, loss, optimizer, X, y)  # noqa: E731
    for _ in range(3):
        run()
    times, shares = [], []
    for _ in range(steps):
        communicating[0] = 0.0
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        shares.append(communicating[0] / times[-1])
    best = int(np.argmin(times))
    return {"model": name, "batch": batch, "seconds_per_step": times[best],
            "median_seconds": float(np.median(times)), "communicating": shares[best],
            "threads": cn.get_num_threads()}


def timed(function, total):
    def wrapper(*args):
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            total[0] += time.perf_counter() - start
    return wrapper


def time_allreduce(repeats=20):
    from corenet import distributed as dist

    rows = []
    for size in [2 ** k for k in range(8, 23, 2)]:
        values = np.ones(size, np.float32)
        best = float("inf")
        for _ in range(repeats):
            dist.MPI.COMM_WORLD.Barrier()
            start = time.perf_counter()
            dist.allreduce_in_rank_order(values)
            best = min(best, time.perf_counter() - start)
        rows.append((size * 4, dist.MPI.COMM_WORLD.allreduce(best, op=dist.MPI.MAX)))
    nbytes, seconds = np.array(rows).T
    beta, alpha = np.polyfit(nbytes, seconds, 1)
    return {"allreduce_bytes": nbytes.tolist(), "seconds": seconds.tolist(),
            "alpha_seconds": alpha, "beta_seconds_per_byte": beta}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=[*MODELS, "allreduce"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    cn.set_num_threads(args.threads)
    from mpi4py import MPI  # noqa: F401 - MPI decides whether this is a job of ranks

    ranks = MPI.COMM_WORLD.Get_size()
    result = time_allreduce() if args.what == "allreduce" else \
        time_steps(args.what, args.steps, ranks > 1)
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(json.dumps({"ranks": ranks, **result}))
