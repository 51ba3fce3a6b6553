"""ContentionGovernor: one thread while the process waits for CPUs, all again after a
while, the values of training unchanged; and the run queue reading it is based on."""
import os
import sys

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet import cli
from corenet.contention import ContentionGovernor, run_queue_seconds
from corenet.train import fit


class Machine:
    """A clock and a run queue reading that the test moves: each batch takes `step`
    seconds, of which the process waits `waiting` (per second of wall time)."""

    def __init__(self, step=0.1):
        self.now, self.waited, self.step, self.waiting = 0.0, 0.0, step, 0.0

    def advance(self):
        self.now += self.step
        self.waited += self.waiting * self.step

    def batch(self, governor, index=0):
        self.advance()
        governor.on_batch_end(0, index, 1.0)

    def governor(self, **settings):
        return ContentionGovernor(clock=lambda: self.now, waited=lambda: self.waited,
                                  **settings)


def test_one_thread_while_waiting_and_all_again_after_a_while(threads):
    cn.set_num_threads(2)
    machine = Machine()
    governor = machine.governor(interval=0.25, threshold=0.1, retry_after=1.0)
    governor.on_train_begin()
    for _ in range(5):  # idle: the process waits for no CPU
        machine.batch(governor)
    assert cn.get_num_threads() == 2 and governor.switches == 0
    machine.waiting = 0.5  # another process takes a core
    for _ in range(3):
        machine.batch(governor)
    assert cn.get_num_threads() == 1 and governor.switches == 1
    for _ in range(9):  # on one thread, until retry_after has passed
        machine.batch(governor)
    assert cn.get_num_threads() == 1
    machine.batch(governor)
    assert cn.get_num_threads() == 2 and governor.switches == 2  # tries all threads again
    for _ in range(3):
        machine.batch(governor)
    assert cn.get_num_threads() == 1 and governor.switches == 3  # still busy: one again
    governor.on_train_end()
    assert cn.get_num_threads() == 2 and governor.switches == 4


def test_it_gives_up_as_many_threads_as_cores_waited_for(threads):
    cn.set_num_threads(8)
    machine = Machine()
    machine.waiting = 1.5  # two cores' worth of waiting, over the threads
    governor = machine.governor(interval=0.25, retry_after=10.0)
    governor.on_train_begin()
    for _ in range(3):
        machine.batch(governor)
    assert cn.get_num_threads() == 6
    machine.waiting = 0.0
    for _ in range(10):
        machine.batch(governor)
    governor.on_train_end()
    assert cn.get_num_threads() == 8


def test_a_count_the_user_sets_during_training_is_kept(threads):
    cn.set_num_threads(4)
    machine = Machine()
    machine.waiting = 0.5
    governor = machine.governor(interval=0.25, retry_after=1.0)
    governor.on_train_begin()
    for _ in range(3):
        machine.batch(governor)
    assert cn.get_num_threads() == 3
    machine.waiting = 0.0
    cn.set_num_threads(2)  # the user's, while reduced: the full count from now on
    for _ in range(20):
        machine.batch(governor)
    governor.on_train_end()
    assert cn.get_num_threads() == 2


def test_a_short_wait_or_one_thread_changes_nothing(threads):
    cn.set_num_threads(2)
    machine = Machine()
    machine.waiting = 0.05  # below the threshold
    governor = machine.governor(threshold=0.1)
    governor.on_train_begin()
    for _ in range(20):
        machine.batch(governor)
    assert cn.get_num_threads() == 2 and governor.switches == 0
    cn.set_num_threads(1)  # nothing to give up
    machine.waiting = 1.0
    governor.on_train_begin()
    for _ in range(20):
        machine.batch(governor)
    governor.on_train_end()
    assert cn.get_num_threads() == 1 and governor.switches == 0


def test_without_a_run_queue_reading_it_does_nothing(threads):
    cn.set_num_threads(2)
    governor = ContentionGovernor(waited=lambda: None)
    governor.on_train_begin()
    governor.on_batch_end(0, 0, 1.0)
    governor.on_train_end()
    assert cn.get_num_threads() == 2 and governor.switches == 0


@pytest.mark.parametrize("settings", [dict(interval=0), dict(threshold=-1),
                                      dict(retry_after=float("nan"))])
def test_bad_settings_are_errors(settings):
    with pytest.raises(ValueError, match="ContentionGovernor: interval, threshold and "
                                         "retry_after must be positive"):
        ContentionGovernor(**settings)


def small_cnn():
    cn.random.seed(0)
    return cn.Sequential(L.Conv2d(3, 16, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                         L.Conv2d(16, 16, 3, padding=1), L.ReLU(), L.Flatten(),
                         L.Linear(16 * 8 * 8, 10), input_shape=(3, 16, 16))


def test_switching_threads_while_training_changes_no_value(threads, rng):
    # Batches of 64 samples of 3 x 16 x 16: the convolutions and the pools run on two
    # threads when given two.
    x = rng.standard_normal((256, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    weights = []
    for switching in (False, True):
        cn.set_num_threads(2)
        model = small_cnn()
        optimizer = cn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        callbacks = []
        if switching:  # "busy" at every check, retrying often: it switches all along
            machine = Machine()
            machine.waiting = 1.0
            governor = machine.governor(interval=0.1, retry_after=0.2)
            callbacks = [governor, Ticks(machine)]
        fit(model, cn.losses.SoftmaxCrossEntropy(), optimizer, x, y, epochs=2,
            batch_size=64, callbacks=callbacks)
        weights.append([p.value.copy() for p in model.parameters()])
    assert governor.switches >= 4
    for plain, switched in zip(*weights):
        np.testing.assert_array_equal(plain, switched)


def test_the_threads_come_back_when_another_callback_fails_at_the_end(threads, rng):
    class Failing(cn.train.Callback):
        def on_train_end(self):
            raise RuntimeError("a callback's own error")

    cn.set_num_threads(2)
    machine = Machine()
    machine.waiting = 1.0
    governor = machine.governor(interval=0.1, retry_after=100.0)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    model = small_cnn()
    with pytest.raises(RuntimeError, match="a callback's own error"):
        fit(model, cn.losses.SoftmaxCrossEntropy(), cn.optim.SGD(model.parameters()), x,
            rng.integers(0, 10, 64), batch_size=8,
            callbacks=[Failing(), governor, Ticks(machine)])
    assert governor.switches == 2 and cn.get_num_threads() == 2


class Ticks(cn.train.Callback):
    """Moves the test's clock after each batch, after the governor has looked."""

    def __init__(self, machine):
        self.machine = machine

    def on_batch_end(self, epoch, batch, loss):
        self.machine.advance()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's schedstat")
def test_the_run_queue_reading_of_this_process():
    waited = run_queue_seconds()
    assert isinstance(waited, float) and waited >= 0


def test_the_run_queue_reading_skips_what_it_cannot_read(tmp_path):
    assert run_queue_seconds(str(tmp_path / "none")) is None
    for thread, text in (("1", "10 2000000000 3\n"), ("2", "garbage\n"), ("3", "5 500000000 1")):
        os.mkdir(tmp_path / thread)
        (tmp_path / thread / "schedstat").write_text(text)
    os.mkdir(tmp_path / "4")  # a thread that ended: no file
    assert run_queue_seconds(str(tmp_path)) == pytest.approx(2.5)


@pytest.mark.parametrize("arguments, environment, governed", [
    ([], {}, True), (["--threads", "1"], {}, False), ([], {"CORENET_NUM_THREADS": "2"}, False),
    ([], {"OMP_NUM_THREADS": "2"}, False)])
def test_corenet_train_governs_threads_unless_they_are_given(arguments, environment, governed,
                                                             monkeypatch, threads):
    import corenet.train

    for name in ("CORENET_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    seen = []

    def recording_fit(*args, callbacks=(), **kwargs):
        seen.extend(callbacks)
        return real_fit(*args, callbacks=callbacks, **kwargs)

    real_fit = corenet.train.fit
    monkeypatch.setattr(corenet.train, "fit", recording_fit)
    assert cli.main(["train", "--epochs", "1"] + arguments) == 0
    assert any(isinstance(callback, ContentionGovernor) for callback in seen) == governed
