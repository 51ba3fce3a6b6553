"""Run by tests/test_distributed.py as ``mpiexec -n K python distributed_worker.py CASE``.

order  : the rank-order allreduce on values where the grouping of the additions matters;
         rank 0 prints "ok" when every rank got the sequential sum bitwise.
raise  : rank 1 raises in the middle of training; the job must end, naming rank 1.
killed : rank 1 is killed by SIGKILL in the middle of training; the job must end.
"""
import os
import signal
import sys

import numpy as np

import corenet as cn
import corenet.layers as L
from corenet import distributed as dist
from corenet.train import fit


def rank_values(rank: int, size: int) -> np.ndarray:
    """Every rank's contribution, computable on any rank. Element 0 is the classic case:
    1e8, 1, -1e8, 1 in float32 sums to 1 in rank order, to 0 as (a + b) + (c + d)."""
    rng = np.random.default_rng(rank)
    values = (rng.standard_normal(1000) * 10.0 ** rng.integers(-4, 9, 1000)).astype(np.float32)
    values[0] = [1e8, 1, -1e8, 1][rank % 4]
    return values


def check_order(comm) -> None:
    size = comm.Get_size()
    expected = rank_values(0, size).copy()
    for rank in range(1, size):
        expected += rank_values(rank, size)
    got = dist.allreduce_in_rank_order(rank_values(comm.Get_rank(), size), comm)
    assert got.tobytes() == expected.tobytes(), "not the rank-order sum"
    results = comm.gather(got.tobytes())
    if comm.Get_rank() == 0:
        assert len(set(results)) == 1, "ranks disagree"
        print(f"ok {expected[0]!r}")


def train_until_fault(comm, case: str) -> None:
    cn.random.seed(0)
    model = cn.Sequential(L.Linear(64, 32), L.ReLU(), L.Linear(32, 10))
    optimizer = dist.DistributedOptimizer(cn.optim.SGD(model.parameters(), lr=0.1), model)
    rng = np.random.default_rng(0)
    X, y = rng.random((512, 64), np.float32), rng.integers(0, 10, 512)

    def on_batch(epoch, batch, n_batches, loss):
        if comm.Get_rank() == 1 and batch == 3:
            if case == "raise":
                raise RuntimeError("a fault injected by the test")
            os.kill(os.getpid(), signal.SIGKILL)

    fit(model, cn.losses.SoftmaxCrossEntropy(), optimizer, X, y, epochs=1000,
        batch_size=64, on_batch=on_batch, step=dist.DistributedStep())


if __name__ == "__main__":
    world = dist.init()
    if sys.argv[1] == "order":
        check_order(world)
    else:
        train_until_fault(world, sys.argv[1])
