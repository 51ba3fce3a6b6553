"""Checkpoints lose nothing: a run killed at any moment and resumed ends bitwise where
an uninterrupted run ends; a checkpoint is still a model file; a malformed one is a
ModelFileError."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet import checkpoint, models, serialize
from corenet.errors import ModelFileError
from corenet.train import fit

RUN = ["train", "--epochs", "5", "--hidden", "64", "--optimizer", "adam", "--lr", "0.003",
       "--augment", "3", "--threads", "1"]


# Outside the checkout: `-m` puts the current folder first on sys.path, and CI tests an
# installed corenet beside an unbuilt checkout.
OUTSIDE = tempfile.gettempdir()


def corenet_cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "corenet.cli", *args], cwd=OUTSIDE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def arrays(path) -> dict:
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def assert_same_files(one, other):
    first, second = arrays(one), arrays(other)
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    path = tmp_path_factory.mktemp("whole") / "run.npz"
    process = corenet_cli(*RUN, "--save", str(path))
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return path


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_a_run_killed_at_any_moment_and_resumed_ends_bitwise_the_same(tmp_path, uninterrupted,
                                                                      delay):
    path = tmp_path / "run.npz"
    process = corenet_cli(*RUN, "--save", str(path))
    deadline = time.monotonic() + 300
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)  # after the first checkpoint, anywhere: in an epoch or in a save
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    epoch = checkpoint.load_checkpoint(str(path))[1]["state"]["epoch"]
    assert 1 <= epoch <= 5
    # A kill inside a save leaves that save's temporary file (SIGKILL runs no
    # cleanup), named for the killed writer; nothing else is left beside the file.
    leftovers = [name for name in os.listdir(tmp_path) if name != "run.npz"]
    for name in leftovers:
        match = serialize.TEMPORARY_NAME.fullmatch(name)
        assert match and int(match[1]) == process.pid, leftovers
    resumed = corenet_cli("train", "--resume", str(path), "--threads", "1")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert_same_files(path, uninterrupted)
    # The resumed run's first save removed the killed writer's temporary file.
    assert not [name for name in os.listdir(tmp_path) if name != "run.npz"]


def test_a_checkpoint_is_a_model_file(uninterrupted):
    model = cn.load(str(uninterrupted))
    assert model.training_info["split_seed"] == 0
    result = subprocess.run([sys.executable, "-m", "corenet.cli", "eval", str(uninterrupted),
                             "--json"], capture_output=True, text=True, timeout=300, cwd=OUTSIDE)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] > 0.9


def model_with_dropout():
    return cn.Sequential(L.Linear(6, 16), L.ReLU(), L.Dropout(0.3), L.Linear(16, 3),
                         input_shape=(6,))


def test_resume_restores_optimizer_and_random_state_in_python(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((48, 6)).astype(np.float32)
    y = rng.integers(0, 3, 48)
    loss = cn.losses.SoftmaxCrossEntropy()

    def run(epochs, path=None, resume=None, scramble=False):
        cn.random.seed(1)
        model = model_with_dropout()
        optimizer = cn.optim.Adam(model.parameters(), lr=0.01)
        start = 0
        if resume is not None:
            model, saved = checkpoint.load_checkpoint(resume)
            optimizer = cn.optim.Adam(model.parameters(), lr=0.01)
            checkpoint.restore(resume, optimizer, saved)
            start = saved["state"]["epoch"]
            if scramble:  # the random state lost: other dropout masks
                cn.random.seed(99)

        def save(epoch, mean_loss):
            if path is not None:
                checkpoint.save_checkpoint(path, model, optimizer, {"epoch": epoch + 1})
        fit(model, loss, optimizer, X, y, epochs, 8, seed=2, on_epoch=save, start_epoch=start)
        return [p.value.copy() for p in model.parameters()]

    whole = run(4)
    half = str(tmp_path / "half.npz")
    run(2, path=half)
    again = run(4, resume=half)
    for ours, theirs in zip(again, whole):
        np.testing.assert_array_equal(ours, theirs)
    # Without the random state, dropout's masks differ: the test can fail.
    scrambled = run(4, resume=half, scramble=True)
    assert not all(np.array_equal(a, b) for a, b in zip(scrambled, whole))
    model, saved = checkpoint.load_checkpoint(half)
    assert saved["state"]["epoch"] == 2 and saved["optimizer"]["state"][0]["step"] == 12


def test_optimizer_state_round_trips_exactly(tmp_path):
    model = model_with_dropout()
    optimizer = cn.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    for p in model.parameters():
        p.grad[...] = 0.5
    optimizer.step()
    path = str(tmp_path / "c.npz")
    checkpoint.save_checkpoint(path, model, optimizer, {"epoch": 1})
    _, saved = checkpoint.load_checkpoint(path)
    fresh = cn.optim.AdamW(model.parameters())
    checkpoint.restore(path, fresh, saved)
    ours, theirs = optimizer.state_dict(), fresh.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    for index, entry in ours["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(value, theirs["state"][index][key])


def test_a_plain_model_file_is_no_checkpoint(tmp_path):
    path = str(tmp_path / "m.npz")
    cn.save(model_with_dropout(), path)
    with pytest.raises(ModelFileError, match="without a checkpoint"):
        checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("document, message", [
    (b"{not json", "not JSON"),
    (json.dumps({"format": "other"}).encode(), "not a corenet-checkpoint/1"),
    (json.dumps({"format": checkpoint.FORMAT, "state": {"dict": []},
                 "optimizer": {"array": "7"}, "random": None}).encode(),
     "unexpected value"),
    (json.dumps({"format": checkpoint.FORMAT, "state": {"dict": []}}).encode(),
     "has no 'optimizer'"),
    # Nested deeper than Python's recursion limit: json.loads raised RecursionError.
    pytest.param(b"[" * 100000 + b"]" * 100000, "not JSON: maximum recursion depth exceeded",
                 id="nested-100000-deep"),
])
def test_a_malformed_checkpoint_is_a_model_file_error(tmp_path, document, message):
    path = str(tmp_path / "bad.npz")
    serialize.save(model_with_dropout(), path,
                   {checkpoint.JSON_ENTRY: np.frombuffer(document, np.uint8)})
    with pytest.raises(ModelFileError, match=message):
        checkpoint.load_checkpoint(path)


def test_resume_refuses_settings_that_are_not_options(tmp_path):
    path = str(tmp_path / "c.npz")
    model = model_with_dropout()
    checkpoint.save_checkpoint(path, model, cn.optim.SGD(model.parameters()),
                               {"epoch": 1, "argv": ["--no-such-option"], "history": [1.0]})
    result = subprocess.run([sys.executable, "-m", "corenet.cli", "train", "--resume", path],
                            capture_output=True, text=True, timeout=300, cwd=OUTSIDE)
    assert result.returncode != 0
    assert "not valid corenet train options" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, build, message", [
    # The settings say cnn, the file holds an MLP: this resumed silently as the MLP.
    (["--model", "cnn"], lambda: models.build_mlp(64, [32], 10),
     "it holds 3 layers (linear, relu, linear), the settings build 8 (conv2d, relu"),
    (["--hidden", "64"], lambda: models.build_mlp(64, [32], 10),
     "it holds layer 0 linear {'in_features': 64, 'out_features': 32"),
    (["--hidden", "32", "--dtype", "float64"], lambda: models.build_mlp(64, [32], 10),
     "it holds dtype float32, the settings build float64"),
])
def test_resume_refuses_a_model_its_settings_do_not_build(tmp_path, argv, build, message):
    path = str(tmp_path / "c.npz")
    model = build()
    checkpoint.save_checkpoint(path, model, cn.optim.SGD(model.parameters()),
                               {"epoch": 1, "argv": argv + ["--epochs", "2"], "history": [1.0]})
    result = subprocess.run([sys.executable, "-m", "corenet.cli", "train", "--resume", path],
                            capture_output=True, text=True, timeout=300, cwd=OUTSIDE)
    assert result.returncode != 0
    assert (f"{path}: the checkpoint's model is not the one its recorded settings "
            f"({' '.join(argv)} --epochs 2) build: {message}") in result.stderr
    assert "Traceback" not in result.stderr
    assert checkpoint.load_checkpoint(path)[1]["state"]["epoch"] == 1  # left as it was


class Tampered:
    """An optimizer whose saved state is altered before it is written."""

    def __init__(self, optimizer, change):
        self.inner, self.change = optimizer, change  # not .optimizer: that is a wrapper's

    def state_dict(self):
        state = self.inner.state_dict()
        self.change(state)
        return state


@pytest.mark.parametrize("change, message", [
    (lambda s: s["state"][0].update(exp_avg=np.ones(99, np.float32)), "optimizer state"),
    (lambda s: s["state"][0].update(step="many"), "optimizer state"),
    (lambda s: s["param_groups"][0].update(params=[0]), "optimizer state"),
    (lambda s: s.pop("param_groups"), "optimizer state"),
])
def test_a_tampered_optimizer_state_is_a_model_file_error(tmp_path, change, message):
    model = model_with_dropout()
    optimizer = cn.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad[...] = 1.0
    optimizer.step()
    path = str(tmp_path / "c.npz")
    checkpoint.save_checkpoint(path, model, Tampered(optimizer, change), {"epoch": 1})
    _, saved = checkpoint.load_checkpoint(path)
    with pytest.raises(ModelFileError, match=message):
        checkpoint.restore(path, cn.optim.Adam(model.parameters()), saved)


def pcg64_state(state: int, has_uint32: int = 0) -> dict:
    return {"bit_generator": "PCG64", "state": {"state": state, "inc": 1},
            "has_uint32": has_uint32, "uinteger": 0}


@pytest.mark.parametrize("state", [
    {"bit_generator": "MT19937"}, {"nonsense": 1}, [1, 2],
    # Numbers beyond what numpy stores escaped as OverflowError.
    pcg64_state(2 ** 200), pcg64_state(-1), pcg64_state(1, has_uint32=2 ** 70),
])
def test_a_tampered_random_state_is_a_model_file_error(tmp_path, state, monkeypatch):
    model = model_with_dropout()
    optimizer = cn.optim.SGD(model.parameters())
    path = str(tmp_path / "c.npz")
    checkpoint.save_checkpoint(path, model, optimizer, {"epoch": 1})
    _, saved = checkpoint.load_checkpoint(path)
    saved["random"] = state
    with pytest.raises(ModelFileError, match="random state"):
        checkpoint.restore(path, optimizer, saved)
