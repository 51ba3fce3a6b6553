"""Data-parallel training over MPI (mpi4py, ``pip install "corenet[mpi]"``).

Each of K ranks holds a replica of the model and takes its share of every global batch;
the gradients are summed in rank order, so the replicas stay bitwise identical and equal
to one process that accumulates K micro-batches (``corenet train --accumulate K``; the
contract is spelled out in corenet.gradients). From the shell::

    mpiexec -n 2 corenet train --distributed --batch-size 64

In a loop written by hand, in the manner of Horovod and PyTorch DDP::

    from corenet import distributed as dist
    from corenet.gradients import micro_batch_gradient
    from corenet.train import batches
    comm = dist.init()                        # an uncaught error on any rank ends the job
    dist.broadcast_parameters(model)          # every rank starts from rank 0's weights
    optimizer = dist.DistributedOptimizer(cn.optim.SGD(model.parameters(), lr=0.1), model)
    for index in batches(len(X), 64, np.random.default_rng(0)):  # same batches on all ranks
        run, optimizer.weight = dist.shard(index)
        micro_batch_gradient(model, loss, optimizer, X, y, run)  # zero_grad, forward, backward
        optimizer.step()                      # waits for the allreduce, then updates

The allreduce of a bucket of gradients starts as soon as the backward of its layers is
done (Model.backward_hooks), while the earlier layers are still computing.
"""
from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import math
import sys
import time
import traceback

import numpy as np

try:
    from mpi4py import MPI
except ImportError as error:  # pragma: no cover - exercised where mpi4py is missing
    raise ImportError('corenet.distributed needs mpi4py and an MPI library: '
                      'pip install "corenet[mpi]"') from error

from corenet.gradients import DEFAULT_BUCKET_BYTES, FlatGradients, add_in_order, \
    micro_batch_gradient, micro_batches


ABORT_GRACE_SECONDS = 0.5


def init():
    """MPI's world communicator, with fail-fast errors: an exception that no one catches
    prints ``rank R: ...`` and aborts every rank (instead of leaving the others waiting
    forever in a collective), and a crash prints its Python traceback."""
    comm = MPI.COMM_WORLD
    faulthandler.enable()
    if not getattr(sys.excepthook, "aborts_mpi", False):
        def abort_on_uncaught(kind, error, trace):
            report(comm, error, trace)
            comm.Abort(1)
        abort_on_uncaught.aborts_mpi = True
        sys.excepthook = abort_on_uncaught
    return comm


def report(comm, error: BaseException, trace=None, prefix: str = "corenet") -> None:
    """``prefix: rank R: Error: message`` on stderr, after the traceback: one write, then
    a moment for mpiexec to forward it, since the Abort that follows may cut off output
    still on its way (a test saw the traceback arrive without its last line)."""
    text = "".join(traceback.format_exception(type(error), error,
                                              trace or error.__traceback__))
    sys.stderr.write(f"{text}{prefix}: rank {comm.Get_rank()} of {comm.Get_size()}: "
                     f"{type(error).__name__}: {error}\n")
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_SECONDS)


# The exit statuses of the corenet command line (corenet.cli): bad arguments or data,
# a diverged loss, Ctrl-C. Any other exception is a bug: traceback, status 1.
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def exit_status(error: BaseException) -> int | None:
    """The status ``corenet`` exits with for ``error``, or None for an unexpected one."""
    from corenet.errors import DTypeError, PluginError
    from corenet.train import TrainingDiverged

    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, TrainingDiverged):
        return EXIT_DIVERGED
    if isinstance(error, (DTypeError, PluginError, OSError, KeyError, ValueError,
                          MemoryError)):
        return EXIT_BAD_INPUT
    return None


def report_line(comm, error: BaseException, prefix: str = "corenet") -> None:
    """``prefix: rank R of K: Error: message`` alone on stderr, then a moment for mpiexec
    to forward it before the Abort. Ranks other than 0 wait first: when every rank has
    the same error (a bad --lr), rank 0's abort ends the job before they print theirs."""
    if comm.Get_rank() != 0:
        time.sleep(2 * ABORT_GRACE_SECONDS)
    # A KeyError's str() is the repr of its message: print the message itself.
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = "interrupted" if isinstance(error, KeyboardInterrupt) else \
        f"{type(error).__name__}: {message}"
    sys.stderr.write(f"{prefix}: rank {comm.Get_rank()} of {comm.Get_size()}: {text}\n")
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_SECONDS)


@contextlib.contextmanager
def abort_on_error(comm=None, prefix: str = "corenet"):
    """Any exception inside (an interrupt too) is reported with the rank and aborts the
    whole job: the other ranks would otherwise wait for this one forever. Bad input, a
    diverged loss and Ctrl-C are one line and the statuses of ``corenet`` (2, 3, 130);
    anything else keeps its traceback and aborts with status 1."""
    comm = comm or MPI.COMM_WORLD
    try:
        yield comm
    except SystemExit as stop:
        if stop.code not in (None, 0):
            report(comm, stop, prefix=prefix)
            comm.Abort(stop.code if isinstance(stop.code, int) else 1)
        raise
    except BaseException as error:
        status = exit_status(error)
        if status is None:
            report(comm, error, prefix=prefix)
        else:
            report_line(comm, error, prefix)
        comm.Abort(status or 1)


def threads_per_rank(comm=None) -> int:
    """The CPUs this process may use shared among the ranks on its machine: K ranks on
    one machine that each took every core would fight over them."""
    import os

    comm = comm or MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return max(1, len(os.sched_getaffinity(0)) // local.Get_size())
    finally:
        local.Free()


def broadcast_parameters(model, root: int = 0, comm=None) -> None:
    """Every rank's parameter values become rank ``root``'s (in place)."""
    comm = comm or MPI.COMM_WORLD
    parameters = model.parameters()
    # Checked first: a rank with more parameters waited for ever for the broadcasts the
    # others never sent; one whose (8, 4) weight was the others' (4, 8) took their bytes.
    check_same_on_every_rank(
        dict({"the number of parameters": len(parameters)},
             **{f"parameter {index} ({parameter.name})":
                f"{parameter.value.dtype}{tuple(parameter.value.shape)}"
                for index, parameter in enumerate(parameters)}),
        comm, "broadcast_parameters")
    for parameter in parameters:
        comm.Bcast(parameter.value, root=root)


def digest(value) -> str:
    """A short hash of nested dicts, lists and tuples of plain values and numpy arrays
    (each array's dtype, shape and bytes), to compare what ranks hold without sending it."""
    hasher = hashlib.blake2b(digest_size=8)

    def feed(item):
        if isinstance(item, np.ndarray):
            hasher.update(f"array {item.dtype.str} {item.shape};".encode())
            hasher.update(np.ascontiguousarray(item).view(np.uint8).reshape(-1))
        elif isinstance(item, dict):
            hasher.update(b"{")
            for key in sorted(item, key=repr):
                feed(key)
                feed(item[key])
            hasher.update(b"}")
        elif isinstance(item, (list, tuple)):
            hasher.update(b"[")
            for entry in item:
                feed(entry)
            hasher.update(b"]")
        else:
            hasher.update(f"{item!r};".encode())

    feed(value)
    return hasher.hexdigest()


def check_same_on_every_rank(values: dict, comm=None, what: str = "corenet") -> None:
    """A ValueError on every rank, naming the first entry and the ranks that differ, when
    some rank's ``values`` (label -> a plain value) are not rank 0's; every rank raises the
    same, so none is left waiting for the others."""
    comm = comm or MPI.COMM_WORLD
    raise_on_difference(comm.allgather(values), what)


def raise_on_difference(everyone: list, what: str = "corenet") -> None:
    """check_same_on_every_rank on what the ranks' ``values`` already gathered are."""
    first = everyone[0]
    for rank, theirs in enumerate(everyone[1:], 1):
        for label in list(first) + [label for label in theirs if label not in first]:
            if first.get(label) != theirs.get(label):
                raise ValueError(f"{what}: every rank must hold the same, but "
                                 f"{label} is {first.get(label)!r} on rank 0 and "
                                 f"{theirs.get(label)!r} on rank {rank}")


def shard(index: np.ndarray, comm=None) -> tuple[np.ndarray, float]:
    """This rank's part of a global batch and its weight, len(part) / len(index): contiguous
    runs in rank order, the same cut as --accumulate's micro-batches."""
    comm = comm or MPI.COMM_WORLD
    if len(index) == 0:  # the weight below would divide by zero
        raise ValueError("shard: got an empty global batch (no sample indices)")
    run = micro_batches(index, comm.Get_size())[comm.Get_rank()]
    return run, len(run) / len(index)


class ChainAllreduce:
    """The sum over ranks of each rank's ``local`` vector, span by span, in rank order.

    Why not MPI's Allreduce with MPI.SUM: the standard lets the library choose how the
    additions are grouped (binomial tree, recursive doubling, reduce-scatter, chosen by
    message size and rank count, differently in MPICH and Open MPI), and float addition is
    not associative, so the sum of more than two ranks could change with the library, the
    rank count or the message size. Here a span travels down a chain, rank 0 -> 1 -> ... ->
    K-1, each rank adding its own part to what it received: ((g0 + g1) + g2) + ..., exactly
    the order of one process that accumulates micro-batches. The last rank then broadcasts
    the sum; a broadcast copies and never adds, so MPI's choice of algorithm cannot change
    the bits. Spans started one after another pipeline the chain: while rank 2 adds span 0,
    rank 1 adds span 1. All calls are non-blocking; ``poll`` advances what has arrived.
    """

    def __init__(self, comm, spans: list, local: np.ndarray):
        self.comm, self.spans, self.local = comm, spans, local
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.last = self.size - 1
        self.incoming = np.empty_like(local) if self.rank > 0 else None
        self.result = np.empty_like(local) if self.rank < self.last else None
        self.reset()

    @property
    def total(self) -> np.ndarray:
        """Where the sum is once ``finish`` has returned."""
        if self.size == 1:
            return self.local
        return self.incoming if self.rank == self.last else self.result

    def reset(self) -> None:
        self.started = 0
        self.added = 0 if self.rank > 0 else None  # spans whose receive is consumed
        self.receives, self.pending = [], []

    def start(self, span: int) -> None:
        """Begin span ``span``; spans must start in order, 0, 1, 2, ..., on every rank
        (the broadcasts are collectives, posted in the same order everywhere)."""
        assert span == self.started, f"span {span} started before span {self.started}"
        self.started += 1
        if self.size == 1:
            return
        part = self.spans[span]
        if self.rank == 0:
            self.pending.append(self.comm.Isend(self.local[part], dest=1, tag=span))
        else:
            self.receives.append(self.comm.Irecv(self.incoming[part], source=self.rank - 1,
                                                 tag=span))
        if self.rank != self.last:
            self.pending.append(self.comm.Ibcast(self.result[part], root=self.last))

    def poll(self) -> None:
        """Add and pass on the spans that have arrived, in order (no waiting)."""
        if self.rank > 0:
            while self.added < self.started and self.receives[self.added].Test():
                self._add_and_pass_on(self.added)

    def finish(self) -> np.ndarray:
        """Wait for every started span; returns ``total``."""
        if self.rank > 0:
            while self.added < self.started:
                self.receives[self.added].Wait()
                self._add_and_pass_on(self.added)
        MPI.Request.Waitall(self.pending)
        self.reset()
        return self.total

    def _add_and_pass_on(self, span: int) -> None:
        part = self.spans[span]
        add_in_order(self.incoming[part], self.local[part])
        if self.rank != self.last:
            self.pending.append(self.comm.Isend(self.incoming[part], dest=self.rank + 1,
                                                tag=span))
        else:
            self.pending.append(self.comm.Ibcast(self.incoming[part], root=self.last))
        self.added += 1


def allreduce_in_rank_order(array: np.ndarray, comm=None) -> np.ndarray:
    """The sum of ``array`` over ranks, added in rank order (a new array on every rank).

    >>> float(allreduce_in_rank_order(np.ones(1, np.float32))[0]) == MPI.COMM_WORLD.size
    True
    """
    comm = comm or MPI.COMM_WORLD
    local = np.ascontiguousarray(array).reshape(-1).copy()
    chain = ChainAllreduce(comm, [slice(0, local.size)], local)
    chain.start(0)
    return chain.finish().reshape(np.shape(array)).copy()


class GradientReducer:
    """Allreduces a model's gradients in buckets, each started as soon as the backward of
    its layers is done. ``begin()`` before backward, ``finish()`` after it: then every
    parameter's grad is Σ_rank weight_rank · grad_rank, summed in rank order.

    ``weight`` is this rank's share of the global batch (len(part) / len(batch)); the
    default 1/K suits equal parts.
    """

    def __init__(self, model, comm=None, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        # A communicator of its own: its messages never meet the user's.
        self.comm = (comm or MPI.COMM_WORLD).Dup()
        self.flat = FlatGradients(model.parameters(), bucket_bytes)
        spans = [self.flat.span(bucket) for bucket in range(len(self.flat.buckets))]
        # Other sizes (another model) made an opaque MPI error, another dtype a crash in
        # MPICH's C code, other buckets a hang: every rank says so first.
        check_same_on_every_rank({
            "the number of gradient values": self.flat.size,
            "the gradients' dtype": str(self.flat.dtype),
            "the buckets (spans of the gradient vector)":
                [(span.start, span.stop) for span in spans]}, self.comm, "GradientReducer")
        self.chain = ChainAllreduce(self.comm, spans,
                                    np.zeros(self.flat.size, self.flat.dtype))
        self.weight = 1.0 / self.comm.Get_size()
        index_of = {id(p): index for index, p in enumerate(self.flat.parameters)}
        self._parameters_of = {id(layer): [index_of[id(p)] for p in layer.parameters()]
                               for layer in model.layers if layer.parameters()}
        self._active = False
        model.backward_hooks.append(self._after_layer)

    def begin(self) -> None:
        self._packed = [False] * len(self.flat.parameters)
        self._missing = [end - first for first, end in self.flat.buckets]
        self._active = True

    def _after_layer(self, layer) -> None:
        if not self._active:  # a backward outside a step (a gradient check, say)
            return
        for index in self._parameters_of.get(id(layer), ()):
            self._pack(index)
        # Buckets start in order: ranks must post their broadcasts in the same order.
        while self.chain.started < len(self._missing) and \
                self._missing[self.chain.started] == 0:
            self.chain.start(self.chain.started)
        self.chain.poll()

    def _pack(self, index: int) -> None:
        if not self._packed[index]:
            self.flat.pack(self.chain.local, index, self.weight)
            self._packed[index] = True
            self._missing[self.flat.bucket_of[index]] -= 1

    def finish(self) -> None:
        if not self._active:
            raise RuntimeError("GradientReducer.finish called without begin (call "
                               "zero_grad before backward)")
        # Parameters whose layer did not run backward (no samples on this rank, or a
        # branch the loss does not reach) contribute their grads as they are.
        for index in range(len(self._packed)):
            self._pack(index)
        while self.chain.started < len(self._missing):
            self.chain.start(self.chain.started)
        self.flat.unpack(self.chain.finish())
        self._active = False

    def sum_in_rank_order(self, value: float) -> float:
        """Σ over ranks of a Python float, added in rank order (the batch loss)."""
        return sum(self.comm.allgather(float(value)))


def communicator_of(model):
    """The communicator of the GradientReducer that allreduces ``model``'s gradients, or
    None: what the diagnostics combine their per-rank counts over."""
    for hook in model.backward_hooks:
        reducer = getattr(hook, "__self__", None)
        if isinstance(reducer, GradientReducer):
            return reducer.comm
    return None


class DistributedOptimizer:
    """An optimizer whose ``step`` first waits for the allreduce of the gradients.

    ``zero_grad()`` starts a step (the reducer then packs each layer's gradients as its
    backward finishes, times ``weight``), ``step()`` finishes the allreduce and updates.
    Other attributes (``lr``, ``params``) are the wrapped optimizer's.
    """

    def __init__(self, optimizer, model, comm=None, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.__dict__["optimizer"] = optimizer
        self.__dict__["reducer"] = GradientReducer(model, comm, bucket_bytes)

    @property
    def weight(self) -> float:
        return self.reducer.weight

    @weight.setter
    def weight(self, value: float) -> None:
        # This rank's share of the global batch, which scales its gradients: a NaN (or a
        # share outside [0, 1]) made NaN or wrong weights on every rank, silently.
        try:
            share = float(value)
        except (TypeError, ValueError):
            share = math.nan
        if isinstance(value, bool) or not 0.0 <= share <= 1.0:
            raise ValueError(f"DistributedOptimizer: weight is this rank's share of the "
                             f"global batch, a number in [0, 1], got {value!r}")
        self.reducer.weight = share

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zeros, whatever ``set_to_none`` says (a grad that is None already packs as
        zeros): the reducer packs every gradient as soon as its layer's backward ends."""
        self.optimizer.zero_grad()
        self.reducer.begin()

    def step(self) -> None:
        self.reducer.finish()
        self.optimizer.step()

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):
        if name == "weight":
            object.__setattr__(self, name, value)
        else:
            setattr(self.optimizer, name, value)


class DistributedStep:
    """The ``step`` of corenet.train.fit under MPI: this rank's part of the global batch,
    forward, backward (allreduce overlapped), update; returns the global batch loss.
    ``optimizer`` must be a DistributedOptimizer."""

    def __call__(self, model, loss, optimizer, X, y, index) -> float:
        if not isinstance(optimizer, DistributedOptimizer):
            raise TypeError(f"DistributedStep needs a DistributedOptimizer, got "
                            f"{type(optimizer).__name__}")
        reducer = optimizer.reducer
        run, optimizer.weight = shard(index, reducer.comm)
        value = micro_batch_gradient(model, loss, optimizer, X, y, run)
        reducer.finish()
        # The batches are compared in the gather of the loss: a rank with other data or
        # another batch size left the others waiting for ever, or trained on other samples.
        gathered = reducer.comm.allgather((float(optimizer.weight * value),
                                           self.describe_batch(X, index)))
        raise_on_difference([batch for _, batch in gathered], "DistributedStep")
        optimizer.optimizer.step()
        return sum(part for part, _ in gathered)  # in rank order

    @staticmethod
    def describe_batch(X, index) -> dict:
        """What must be the same on every rank for a step: the data's size, the batch."""
        return {"the number of samples (len(X))": len(X),
                "the global batch size (len(index))": len(index),
                "the global batch (a digest of its sample indices)":
                    digest(np.asarray(index))}
