"""corenet.distributed over MPI. Two ways to run this file, and CI runs both:

    pytest tests/test_distributed.py                         launches mpiexec jobs of 2-4 ranks
    mpiexec -n 2 pytest tests/test_distributed.py            the tests that run inside the job

Every test skips, saying why, when mpi4py is not installed.
"""
import doctest
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason='mpi4py is not installed: pip install "corenet[mpi]"')

import corenet as cn  # noqa: E402
import corenet.layers as L  # noqa: E402
from corenet import distributed as dist  # noqa: E402
from corenet.gradients import AccumulatingStep  # noqa: E402
from corenet.train import fit  # noqa: E402
from distributed_worker import rank_values  # noqa: E402

WORLD = dist.MPI.COMM_WORLD
HERE = os.path.dirname(os.path.abspath(__file__))
MPIEXEC = shutil.which("mpiexec")

in_job = pytest.mark.skipif(WORLD.Get_size() < 2,
                            reason="runs inside an MPI job: mpiexec -n 2 pytest "
                                   "tests/test_distributed.py")
launches_jobs = pytest.mark.skipif(WORLD.Get_size() > 1 or MPIEXEC is None,
                                   reason="launches its own mpiexec: run in one process, "
                                          "with mpiexec on PATH")


# -- in one process too ---------------------------------------------------------------

@pytest.mark.parametrize("weight", [float("nan"), -0.5, 1.5, "half", True])
def test_a_weight_that_is_no_share_of_the_batch_is_refused(weight):
    # It scaled this rank's gradients as it was: NaN weights on every rank, silently.
    model = cn.Sequential(L.Linear(3, 2))
    optimizer = dist.DistributedOptimizer(cn.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match=r"DistributedOptimizer: weight is this rank's share "
                                         r"of the global batch, a number in \[0, 1\], got "):
        optimizer.weight = weight
    optimizer.weight = 1
    assert optimizer.weight == 1.0


def test_shard_of_an_empty_global_batch_is_an_error_not_a_division_by_zero():
    with pytest.raises(ValueError, match=r"shard: got an empty global batch \(no sample "
                                         r"indices\)"):
        dist.shard(np.arange(0))


# -- inside the job -------------------------------------------------------------------

@in_job
def test_allreduce_adds_in_rank_order():
    size = WORLD.Get_size()
    expected = rank_values(0, size).copy()
    for rank in range(1, size):
        expected += rank_values(rank, size)
    got = dist.allreduce_in_rank_order(rank_values(WORLD.Get_rank(), size))
    assert got.tobytes() == expected.tobytes()


@in_job
def test_broadcast_parameters_gives_every_rank_the_weights_of_rank_0():
    cn.random.seed(WORLD.Get_rank())  # different weights on each rank
    model = cn.Sequential(L.Linear(6, 4))
    dist.broadcast_parameters(model)
    cn.random.seed(0)
    expected = cn.Sequential(L.Linear(6, 4))
    for p, q in zip(model.parameters(), expected.parameters()):
        assert p.value.tobytes() == q.value.tobytes()


@in_job
@pytest.mark.parametrize("build, message", [
    # rank 1's (4, 8) weight took rank 0's (8, 4) bytes; then MPI's "Message truncated"
    (lambda rank: cn.Sequential(L.Linear(4, 8) if rank == 0 else L.Linear(8, 4)),
     r"parameter 0 \(weight\) is 'float32\(8, 4\)' on rank 0 and 'float32\(4, 8\)' on rank 1"),
    # rank 1 waited for ever for the broadcasts of parameters rank 0 does not have
    (lambda rank: cn.Sequential(*[L.Linear(4, 4) for _ in range(1 + rank)]),
     "the number of parameters is 2 on rank 0 and 4 on rank 1"),
    (lambda rank: cn.Sequential(L.Linear(4, 4, dtype=["float32", "float64"][rank > 0])),
     r"parameter 0 \(weight\) is 'float32\(4, 4\)' on rank 0 and 'float64\(4, 4\)'")])
def test_broadcast_parameters_of_other_models_is_an_error_on_every_rank(build, message):
    model = build(WORLD.Get_rank())
    with pytest.raises(ValueError, match="broadcast_parameters: every rank must hold the "
                                         "same, but " + message):
        dist.broadcast_parameters(model)


def mlp():
    cn.random.seed(0)
    return cn.Sequential(L.Linear(30, 24), L.ReLU(), L.Linear(24, 16), L.Tanh(),
                         L.Linear(16, 5))


def cnn():
    cn.random.seed(0)
    return cn.Sequential(L.Conv2d(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                         L.Linear(4 * 3 * 3, 5), input_shape=(1, 6, 6))


@in_job
@pytest.mark.parametrize("build", [mlp, cnn])
def test_ranks_train_bitwise_as_one_process_accumulating(build):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((71, 30 if build is mlp else 36)).astype(np.float32)
    X = X.reshape((71,) + build().inputs[0].shape)
    y = rng.integers(0, 5, 71)
    loss = cn.losses.SoftmaxCrossEntropy()

    def train(step, wrap):
        model = build()
        optimizer = wrap(cn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                      weight_decay=1e-3), model)
        # 71 = 4 batches of 16 and one of 7: uneven parts on the last.
        history = fit(model, loss, optimizer, X, y, epochs=2, batch_size=16, step=step)
        return model, history

    # Small buckets: several allreduces in flight during one backward.
    distributed, history = train(dist.DistributedStep(), lambda optimizer, model:
                                 dist.DistributedOptimizer(optimizer, model, bucket_bytes=512))
    alone, alone_history = train(AccumulatingStep(WORLD.Get_size()), lambda o, m: o)
    assert history == alone_history
    for p, q in zip(distributed.parameters(), alone.parameters()):
        assert p.value.tobytes() == q.value.tobytes()
    replicas = WORLD.allgather(b"".join(p.value.tobytes() for p in distributed.parameters()))
    assert len(set(replicas)) == 1


@in_job
def test_a_bucket_allreduce_starts_before_backward_ends():
    model = mlp()
    optimizer = dist.DistributedOptimizer(cn.optim.SGD(model.parameters(), lr=0.1), model,
                                          bucket_bytes=1)  # one parameter per bucket
    started = {}
    model.backward_hooks.append(
        lambda layer: started.setdefault(id(layer), optimizer.reducer.chain.started))
    optimizer.zero_grad()
    model.backward(model.forward(np.ones((4, 30), np.float32)))
    first = model.layers[0]
    # When the first layer's backward is done, the four later parameters' buckets are
    # already on their way; its own two start then.
    assert started[id(first)] == 6 and started[id(model.layers[2])] == 4
    assert started[id(model.layers[-1])] == 2
    optimizer.step()


@in_job
def test_docstring_examples_of_the_module():
    result = doctest.testmod(dist, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@in_job
@pytest.mark.parametrize("other, message", [
    # an opaque mpi4py.MPI.Exception
    ({"outputs": 4}, "GradientReducer: every rank must hold the same, but the number of "
                     "gradient values is 195 on rank 0 and 212 on rank 1"),
    # an assertion failure in MPICH's C code (typerep_yaksa_pack.c)
    ({"dtype": "float64"}, "GradientReducer: every rank must hold the same, but the "
                           "gradients' dtype is 'float32' on rank 0 and 'float64' on rank 1"),
    # hung
    ({"batch_size": 16}, r"DistributedStep: every rank must hold the same, but the global "
                         r"batch size \(len\(index\)\) is 32 on rank 0 and 16 on rank 1"),
    # hung
    ({"samples": 128}, r"DistributedStep: every rank must hold the same, but the number of "
                       r"samples \(len\(X\)\) is 256 on rank 0 and 128 on rank 1")])
def test_ranks_that_train_other_models_or_batches_all_fail_naming_them(other, message):
    mine = other if WORLD.Get_rank() == 1 else {}
    cn.random.seed(0)
    model = cn.Sequential(L.Linear(8, 16), L.ReLU(), L.Linear(16, mine.get("outputs", 3)))
    model.astype(mine.get("dtype", "float32"))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((mine.get("samples", 256), 8))
    X = X.astype(model.layers[0].weight.value.dtype)
    y = np.arange(len(X)) % 3
    with pytest.raises(ValueError, match=message):
        optimizer = dist.DistributedOptimizer(cn.optim.SGD(model.parameters(), lr=0.1), model)
        fit(model, cn.losses.SoftmaxCrossEntropy(), optimizer, X, y, epochs=1,
            batch_size=mine.get("batch_size", 32), step=dist.DistributedStep())


@in_job
def test_diagnostics_count_the_dead_units_over_the_samples_of_every_rank():
    from corenet.diagnostics import Diagnostics

    # Unit 0 is on for one sample alone, which only one rank holds: alive for the batch.
    X = -np.ones((64, 1), np.float32)
    X[37] = 1.0
    y = np.zeros(64, np.int64)

    def dead_units(step, wrap):
        cn.random.seed(0)
        model = cn.Sequential(L.Linear(1, 2), L.ReLU(), L.Linear(2, 2))
        model.layers[0].weight.value[:] = [[1.0], [-1.0]]
        model.layers[0].bias.value[:] = 0.0
        optimizer = wrap(cn.optim.SGD(model.parameters(), lr=0.0), model)
        diagnostics = Diagnostics()
        fit(model, cn.losses.SoftmaxCrossEntropy(), optimizer, X, y, epochs=1,
            batch_size=64, step=step, callbacks=[diagnostics])
        return [entry.as_dict() for entry in diagnostics.history[-1].layers]

    distributed = dead_units(dist.DistributedStep(), dist.DistributedOptimizer)
    alone = dead_units(AccumulatingStep(WORLD.Get_size()), lambda optimizer, model: optimizer)
    assert distributed == alone
    assert distributed[1]["dead_units"] == 0


# -- launching jobs ---------------------------------------------------------------------

def mpiexec(n, *args, timeout=60):
    start = time.monotonic()
    result = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *args],
                            capture_output=True, text=True, timeout=timeout, cwd=HERE)
    return result, time.monotonic() - start


@launches_jobs
@pytest.mark.parametrize("ranks", [3, 4])
def test_the_sum_of_3_and_4_ranks_is_the_sequential_sum(ranks):
    result, _ = mpiexec(ranks, "distributed_worker.py", "order")
    assert result.returncode == 0, result.stderr
    # Element 0 is 1e8 + 1 - 1e8 (+ 1) in float32: 0.0 (1.0) in rank order, where 1e8 + 1
    # rounds to 1e8; (1e8 - 1e8) + 1 would give 1.0 (2.0).
    assert result.stdout.split() == ["ok", "np.float32(0.0)" if ranks == 3 else
                                     "np.float32(1.0)"]
    values = [rank_values(rank, 4)[0] for rank in range(4)]
    assert (values[0] + values[1]) + (values[2] + values[3]) == 0.0  # grouping matters


@launches_jobs
def test_a_rank_that_raises_ends_the_job_and_is_named():
    result, seconds = mpiexec(2, "distributed_worker.py", "raise", timeout=30)
    assert result.returncode != 0
    assert "rank 1 of 2: RuntimeError: a fault injected by the test" in result.stderr
    assert seconds < 30


@launches_jobs
def test_a_rank_that_dies_ends_the_job():
    result, seconds = mpiexec(2, "distributed_worker.py", "killed", timeout=30)
    assert result.returncode != 0 and seconds < 30


@launches_jobs
def test_corenet_train_distributed_saves_what_accumulate_saves_and_resumes_on_any_ranks(
        tmp_path):
    from corenet.cli import main

    train = ["train", "--epochs", "1", "--hidden", "16", "--augment", "0", "--json"]
    result, _ = mpiexec(2, "-m", "corenet", *train, "--distributed",
                        "--save", str(tmp_path / "two.cnet"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1  # rank 0 alone prints
    assert main(train + ["--accumulate", "2", "--save", str(tmp_path / "one.cnet")]) == 0
    assert (tmp_path / "two.cnet").read_bytes() == (tmp_path / "one.cnet").read_bytes()
    # Continue on 3 ranks from the file written by 2, as a new run from its weights
    # (a model file brings its own layers: --hidden is refused with it)...
    from_file = [option for option in train if option not in ("--hidden", "16")]
    result, _ = mpiexec(3, "-m", "corenet", *from_file, "--distributed", "--model",
                        str(tmp_path / "two.cnet"), "--save", str(tmp_path / "three.cnet"))
    assert result.returncode == 0, result.stderr
    assert main(from_file + ["--accumulate", "3", "--model", str(tmp_path / "two.cnet"),
                             "--save", str(tmp_path / "alone.cnet")]) == 0
    assert (tmp_path / "three.cnet").read_bytes() == (tmp_path / "alone.cnet").read_bytes()
    # ... and resumed as the same run, optimizer state and all, one epoch more.
    result, _ = mpiexec(3, "-m", "corenet", "train", "--resume", str(tmp_path / "two.cnet"),
                        "--epochs", "2", "--distributed", "--save",
                        str(tmp_path / "resumed3.cnet"))
    assert result.returncode == 0, result.stderr
    assert main(["train", "--resume", str(tmp_path / "one.cnet"), "--epochs", "2",
                 "--accumulate", "3", "--save", str(tmp_path / "resumed1.cnet")]) == 0
    assert (tmp_path / "resumed3.cnet").read_bytes() == \
        (tmp_path / "resumed1.cnet").read_bytes()


@launches_jobs
@pytest.mark.parametrize("other, message", [
    (["--batch-size", "64"], "--batch-size is 32 on rank 0 and 64 on rank 1"),  # hung
    (["--data", "half.npz"], "the data (--data) is 'X (1797, 64) float32"),      # hung
    (["--accumulate", "2"], "--accumulate and --distributed: give one of them"),  # hung
    (["--seed", "1"], "--seed is 0 on rank 0 and 1 on rank 1"),     # other batches, silently
    (["--lr", "0.5"], "--lr is None on rank 0 and 0.5 on rank 1"),  # replicas drifted apart
    (["--hidden", "32"], "--hidden is [16] on rank 0 and [32] on rank 1")])  # MPI's error
def test_ranks_started_with_other_settings_or_data_all_fail_naming_them(other, message,
                                                                         tmp_path):
    from corenet.data import load_digits

    X, y = load_digits()
    np.savez(tmp_path / "half.npz", X=X[:900], y=y[:900])
    train = [sys.executable, "-m", "corenet", "train", "--epochs", "1", "--hidden", "16",
             "--augment", "0", "--distributed"]
    other = [str(tmp_path / word) if word == "half.npz" else word for word in other]
    result = subprocess.run([MPIEXEC, "-n", "1", *train, ":", "-n", "1", *train, *other],
                            capture_output=True, text=True, timeout=30, cwd=HERE)
    assert result.returncode != 0
    # Both ranks fail, but rank 0 alone prints (rank 1 only with --accumulate).
    assert re.search(r"rank [01] of 2: ValueError: ", result.stderr) and \
        message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr



@launches_jobs
@pytest.mark.parametrize("other, status, message", [
    (["--lr", "-1"], 2, "ValueError: SGD: lr must be a finite number >= 0, got -1.0"),
    (["--data", "nonexist.npz"], 2, "FileNotFoundError: no dataset at 'nonexist.npz'"),
    (["--lr", "1e300"], 3, "TrainingDiverged: the loss became nan at epoch 1")])
def test_corenet_train_distributed_errors_are_one_line_and_the_status_of_one_process(
        other, status, message):
    # Each rank printed its traceback (27-50 lines) and the job exited 1, diverged or not.
    result, _ = mpiexec(2, "-m", "corenet", "train", "--distributed", "--epochs", "1",
                        "--hidden", "8", "--augment", "0", *other)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("corenet train")]
    assert len(ours) == 1 and ours[0].startswith("corenet train: rank 0 of 2: ") and \
        message in ours[0], result.stderr


@launches_jobs
def test_an_interrupted_corenet_train_distributed_exits_130_with_one_line():
    import signal

    job = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "corenet", "train",
                            "--distributed", "--epochs", "1000", "--hidden", "8"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           cwd=HERE)
    time.sleep(3)  # in the middle of training
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
