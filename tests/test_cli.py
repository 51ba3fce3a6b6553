"""The corenet command end to end, as a user runs it."""
import json
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.errors import PluginError

from test_data_and_files import write_idx


def corenet(*args, timeout=300):
    # Run outside the checkout, so that the installed corenet is the one imported.
    return subprocess.run([sys.executable, "-m", "corenet.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=tempfile.gettempdir())


def test_default_train_reaches_97_percent_on_digits():
    result = corenet("train", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert {"test_accuracy", "test_loss", "train_loss", "epochs", "seconds", "threads"} <= set(
        metrics)
    assert metrics["test_accuracy"] >= 0.97
    assert metrics["epochs"] == 40
    assert "epoch 40/40 train_loss" in result.stderr  # plain lines when not on a terminal


def test_train_options_save_eval_predict(tmp_path):
    path = str(tmp_path / "model.npz")
    result = corenet("train", "--epochs", "3", "--batch-size", "64", "--lr", "0.05",
                     "--momentum", "0.5", "--seed", "3", "--threads", "1", "--hidden", "32,16",
                     "--activation", "tanh", "--save", path, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["threads"] == 1 and metrics["epochs"] == 3
    evaluated = corenet("eval", path, "--seed", "3", "--json")
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(metrics["test_accuracy"])
    predicted = corenet("predict", path, "digits", "--json")
    predictions = json.loads(predicted.stdout)["predictions"]
    assert len(predictions) == 1797 and set(predictions) <= set(range(10))


def test_cnn_reaches_98_5_percent_on_digits_and_saves_evaluates_predicts(tmp_path):
    path = str(tmp_path / "cnn.npz")
    result = corenet("train", "--model", "cnn", "--save", path, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["epochs"] == 15 and metrics["test_accuracy"] >= 0.985
    evaluated = corenet("eval", path, "--json")
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(metrics["test_accuracy"])
    predicted = json.loads(corenet("predict", path, "digits", "--json").stdout)["predictions"]
    assert len(predicted) == 1797


def bright_square_images(channels_axis: bool, rng) -> tuple:
    """Two classes of 6 x 6 images: a bright 2 x 2 square in the top left or bottom right."""
    labels = rng.integers(0, 2, 200)
    images = rng.uniform(0, 0.3, (200, 6, 6)).astype(np.float32)
    for image, label in zip(images, labels):
        corner = slice(0, 2) if label == 0 else slice(4, 6)
        image[corner, corner] += 0.7
    if channels_axis:  # two channels, the second a dimmer copy
        images = np.stack([images, images * 0.5], axis=1)
    return images, labels


@pytest.mark.parametrize("channels_axis", [False, True], ids=["N,H,W", "N,C,H,W"])
def test_cnn_trains_on_image_files(channels_axis, tmp_path, rng):
    X, y = bright_square_images(channels_axis, rng)
    path = str(tmp_path / "squares.npz")
    np.savez(path, X=X, y=y)
    result = corenet("train", "--model", "cnn", "--data", path, "--epochs", "8", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_accuracy"] >= 0.95


def test_cnn_takes_idx_images_in_their_own_shape(tmp_path, rng):
    # Before: IDX images were flattened, so 6 x 8 images (48 pixels) were refused as
    # not square, and 4 x 16 ones were trained on as 8 x 8.
    X, y = bright_square_images(False, rng)
    pixels = (np.pad(X, ((0, 0), (0, 0), (0, 2))) * 255).astype(np.uint8)
    write_idx(tmp_path / "images.idx.gz", pixels)
    write_idx(tmp_path / "labels.idx.gz", y.astype(np.uint8))
    path = str(tmp_path / "cnn.npz")
    files = f"{tmp_path / 'images.idx.gz'},{tmp_path / 'labels.idx.gz'}"
    result = corenet("train", "--model", "cnn", "--data", files, "--epochs", "8", "--save", path,
                     "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_accuracy"] >= 0.95
    assert cn.load(path).inputs[0].shape == (1, 6, 8)


def test_cnn_refuses_data_that_are_not_images(tmp_path):
    path = str(tmp_path / "flat.npz")
    np.savez(path, X=np.ones((20, 7), np.float32), y=np.arange(20) % 2)
    result = corenet("train", "--model", "cnn", "--data", path)
    assert result.returncode != 0
    assert "a convolutional model needs images" in result.stderr
    assert "Traceback" not in result.stderr


def test_plain_output_lines():
    result = corenet("train", "--epochs", "2")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("epoch 1/2 train_loss ")
    assert "test_accuracy" in lines[1] and lines[-1].startswith("test accuracy ")


def test_nan_loss_stops_with_a_message_and_non_zero_exit():
    result = corenet("train", "--epochs", "2", "--lr", "1e30", "--schedule", "constant")
    assert result.returncode == 3
    assert "training stopped: the loss became" in result.stderr
    assert "try a smaller learning rate" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_with_adamw_a_warmup_a_step_schedule_and_clipping():
    result = corenet("train", "--optimizer", "adamw", "--lr", "0.003", "--schedule", "step",
                     "--warmup", "2", "--clip-norm", "1", "--epochs", "8", "--threads", "1",
                     "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["optimizer"] == "adamw" and metrics["test_accuracy"] >= 0.95


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "adam", "--momentum", "0.9"],
     "momentum is a setting of sgd and rmsprop, not of adam"),
    (["--optimizer", "rmsprop", "--nesterov"], "nesterov is a setting of sgd, not of rmsprop"),
    (["--nesterov", "--momentum", "0"], "SGD: Nesterov momentum needs momentum > 0"),
    (["--optimizer", "adam", "--lr", "-1"], "Adam: lr must be a finite number >= 0, got -1"),
    (["--warmup", "3", "--epochs", "3"], "a warm-up of 3 epochs needs more epochs"),
    (["--clip-norm", "0"], "expected a positive number, got 0"),
])
def test_bad_optimizer_settings_exit_2_with_the_reason(args, message):
    result = corenet("train", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "epoch" not in result.stdout


def test_save_into_a_missing_folder_fails_before_training(tmp_path):
    result = corenet("train", "--save", str(tmp_path / "no" / "model.npz"))
    assert result.returncode == 2 and "its folder does not exist" in result.stderr
    assert "epoch" not in result.stdout


@pytest.mark.parametrize("fraction", ["1", "2", "nan", "inf", "-0.5", "0"])
def test_test_fraction_must_be_between_0_and_1(fraction):
    result = corenet("train", "--test-fraction", fraction)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"expected a fraction between 0 and 1, got {fraction}" in result.stderr


def test_save_onto_a_folder_and_unreadable_inputs_are_clear_errors(tmp_path):
    result = corenet("train", "--save", str(tmp_path))
    assert result.returncode == 2 and "expected a file name, not a folder" in result.stderr
    assert "epoch" not in result.stdout  # refused before training
    model = tmp_path / "m.npz"
    assert corenet("train", "--epochs", "1", "--save", str(model)).returncode == 0
    for args in (("predict", str(tmp_path), "digits"), ("predict", str(model), str(tmp_path)),
                 ("export", str(model), str(tmp_path))):
        result = corenet(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (tmp_path / "x.idx").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 1, 7]))
    result = corenet("predict", str(model), str(tmp_path / "x.idx"))
    assert result.returncode == 2 and "not an .npz file" in result.stderr, result.stderr


def test_save_onto_a_pipe_is_refused_before_training(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = corenet("train", "--save", str(fifo))
    assert result.returncode == 2 and "expected a file name, not a device or a pipe" in \
        result.stderr
    assert "epoch" not in result.stdout  # refused before training
    assert os.listdir(tmp_path) == ["pipe"]


def test_eval_json_of_a_nan_loss_is_valid_json(tmp_path):
    # json.dumps wrote "loss": NaN, which JSON readers refuse. (NaN data is refused when
    # it is loaded: a NaN weight gives the NaN loss.)
    model = tmp_path / "m.npz"
    network = cn.Sequential(L.Linear(4, 3))
    network.layers[0].weight.value[1, 2] = np.nan
    cn.save(network, str(model))
    np.savez(tmp_path / "nan.npz", X=np.ones((5, 4), np.float32), y=np.zeros(5, np.int64))
    result = corenet("eval", str(model), "--data", str(tmp_path / "nan.npz"), "--all", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(name))
    assert metrics["loss"] is None and metrics["samples"] == 5


def test_a_data_file_without_y_is_one_plain_line(tmp_path, capsys):
    # The loader raises a KeyError, as numpy's archive does; its str() was in quotes.
    from corenet import cli

    np.savez(tmp_path / "e.npz", X=np.ones((3, 2)))
    assert cli.main(["train", "--data", str(tmp_path / "e.npz")]) == 2
    assert capsys.readouterr().err == (
        f"corenet train: error: {tmp_path / 'e.npz'}: expected arrays X and y, missing "
        f"['y'] (has ['X'])\n")


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    # Each array of a run can fit while all of them together do not (a very wide
    # image through --model cnn): numpy's MemoryError becomes one line and exit 2.
    from corenet import cli

    def train(args):
        raise MemoryError("Unable to allocate 6.00 GiB for an array")

    monkeypatch.setitem(cli.COMMANDS, "train", train)
    assert cli.main(["train"]) == 2
    error = capsys.readouterr().err
    assert error == ("corenet train: error: out of memory (Unable to allocate 6.00 GiB for "
                     "an array); try a smaller --batch-size or smaller data\n")


def test_unknown_activation_and_bad_data_are_clear_errors(tmp_path):
    result = corenet("train", "--activation", "nope")
    assert result.returncode == 2 and "no layer named 'nope'" in result.stderr
    for not_activation in ("linear", "add", "softmax", "flatten", "global_avg_pool"):
        result = corenet("train", "--activation", not_activation)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"--activation {not_activation}: not an elementwise activation" in result.stderr
    missing = corenet("train", "--data", str(tmp_path / "missing.npz"))
    assert missing.returncode == 2 and "no dataset at" in missing.stderr


def test_train_on_an_npz_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    result = corenet("train", "--data", str(tmp_path / "data.npz"), "--epochs", "20", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_accuracy"] > 0.9


def test_plugins_and_info():
    plugins = json.loads(corenet("plugins", "--json").stdout)["plugins"]
    assert {p["name"] for p in plugins} >= {"dense", "activations", "losses"}
    text = corenet("plugins").stdout
    assert ("layers: linear, maxout, add, concat, dropout, batch_norm1d, batch_norm2d, "
            "layer_norm") in text
    info = json.loads(corenet("info", "--json").stdout)
    assert info["openmp"] in ("on", "off (serial kernels)")
    assert "-O3" in info["compile flags"]
    assert info["threads"] >= 1


def start_corenet(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "corenet.cli", *args], text=True,
                            cwd=tempfile.gettempdir(), **popen)


def test_ctrl_c_stops_training_with_one_line_status_130_and_a_whole_checkpoint(tmp_path):
    path = tmp_path / "model.npz"
    process = start_corenet("train", "--epochs", "100000", "--save", str(path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout.readline().startswith("epoch 1/100000 ")  # training is running
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr == "corenet train: interrupted\n"
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file
    from corenet.checkpoint import load_checkpoint

    assert load_checkpoint(str(path))[1]["state"]["epoch"] >= 1  # the last epoch, whole


@pytest.mark.parametrize("args", [("train", "--epochs", "3"), ("predict", "MODEL", "digits"),
                                  ("plugins",)], ids=lambda args: args[0])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, args):
    # As `corenet ... | head -1` once head has exited: the reading end is closed, so the
    # first write fails (deterministically, unlike a real head racing the writer).
    if "MODEL" in args:
        model = tmp_path / "m.npz"
        assert corenet("train", "--epochs", "1", "--save", str(model)).returncode == 0
        args = tuple(str(model) if arg == "MODEL" else arg for arg in args)
    process = start_corenet(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141
    assert stderr == ""


def test_python_dash_m_corenet():
    result = subprocess.run([sys.executable, "-m", "corenet", "info", "--json"],
                            capture_output=True, text=True, timeout=300,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] >= 1
    usage = subprocess.run([sys.executable, "-m", "corenet", "--help"], capture_output=True,
                           text=True, timeout=300, cwd=tempfile.gettempdir())
    assert usage.stdout.startswith("usage: corenet ")


def test_save_and_load_at_the_top_level(tmp_path):
    model = cn.Sequential(L.Linear(3, 2))
    cn.save(model, str(tmp_path / "m.npz"))
    loaded = cn.load(str(tmp_path / "m.npz"))
    np.testing.assert_array_equal(loaded.layers[0].weight.value, model.layers[0].weight.value)
    assert {"save", "load"} <= set(cn.__all__)


def test_a_misspelt_layer_name_suggests_the_closest():
    result = corenet("train", "--activation", "rleu")
    assert result.returncode == 2
    assert "no layer named 'rleu' (did you mean 'relu' or 'prelu'?)" in result.stderr
    with pytest.raises(PluginError, match=r"'sigmod' \(did you mean 'sigmoid'\?\)"):
        L.create("sigmod")
    with pytest.raises(AttributeError, match=r"class 'Relu' \(did you mean 'ReLU'"):
        L.Relu


def test_a_disabled_plugin_is_reported_as_disabled(tmp_path):
    disabled = dict(os.environ, CORENET_DISABLE_PLUGINS="activations")
    listing = subprocess.run([sys.executable, "-m", "corenet", "plugins"], capture_output=True,
                             text=True, timeout=300, cwd=tempfile.gettempdir(), env=disabled)
    assert "activations  (corenet 0.1.0)\n  DISABLED by CORENET_DISABLE_PLUGINS\n" \
        in listing.stdout
    result = subprocess.run([sys.executable, "-m", "corenet", "train", "--activation", "relu"],
                            capture_output=True, text=True, timeout=300,
                            cwd=tempfile.gettempdir(), env=disabled)
    assert result.returncode == 2
    assert "no layer named 'relu'" in result.stderr
    assert "CORENET_DISABLE_PLUGINS disables 'activations' (distribution 'corenet'), " \
           "which may provide it" in result.stderr
    path = tmp_path / "m.npz"
    assert corenet("train", "--epochs", "1", "--save", str(path)).returncode == 0
    evaluated = subprocess.run([sys.executable, "-m", "corenet", "eval", str(path)],
                               capture_output=True, text=True, timeout=300,
                               cwd=tempfile.gettempdir(), env=disabled)
    assert evaluated.returncode == 2
    assert "needs layer 'relu' from corenet, whose plugin 'activations' is installed but " \
           "disabled by CORENET_DISABLE_PLUGINS" in evaluated.stderr
    # The dense plugin off: train's Linear is a missing class, named with the reason
    # (it was an AttributeError traceback).
    no_dense = dict(os.environ, CORENET_DISABLE_PLUGINS="dense")
    result = subprocess.run([sys.executable, "-m", "corenet", "train", "--epochs", "1"],
                            capture_output=True, text=True, timeout=300,
                            cwd=tempfile.gettempdir(), env=no_dense)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "corenet.layers has no layer class 'Linear'" in result.stderr
    assert "CORENET_DISABLE_PLUGINS disables 'dense'" in result.stderr


def test_eval_uses_the_split_recorded_in_the_model(tmp_path):
    path = str(tmp_path / "model.npz")
    trained = corenet("train", "--epochs", "2", "--seed", "3", "--test-fraction", "0.25",
                      "--save", path, "--json")
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads(trained.stdout)
    assert cn.load(path).training_info == {"split_seed": 3, "test_fraction": 0.25}
    evaluated = json.loads(corenet("eval", path, "--json").stdout)
    assert evaluated["split_seed"] == 3
    assert evaluated["samples"] == metrics["test_samples"] == 449  # a quarter, not a fifth
    assert evaluated["accuracy"] == pytest.approx(metrics["test_accuracy"])
    told = json.loads(corenet("eval", path, "--seed", "5", "--test-fraction", "0.2",
                              "--json").stdout)
    assert told["split_seed"] == 5 and told["samples"] == 359


def refused(result, message):
    """Exit 2 with ``message`` on stderr, no traceback and no training."""
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "epoch" not in result.stdout


def test_augment_past_the_memory_and_a_negative_augment_are_refused():
    # --augment 100000000 grew memory without end; -1 was taken as 0.
    refused(corenet("train", "--epochs", "1", "--hidden", "8", "--augment", "100000000",
                    timeout=60), "shift_augment: 100000000 shifted copies and the images of "
                                 "shape (143800001438, 64) float32 would take")
    refused(corenet("train", "--augment", "-1"),
            "argument --augment: expected a non-negative integer, got -1")


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("resume") / "ck.npz")
    assert corenet("train", "--epochs", "2", "--hidden", "8", "--save", path).returncode == 0
    return path


@pytest.mark.parametrize("options, named", [
    (["--lr", "5"], "--lr"), (["--hidden", "16"], "--hidden"), (["--model", "cnn"], "--model"),
    (["--dtype", "float64"], "--dtype"), (["--data", "x.npz"], "--data"),
    (["--optimizer", "adam"], "--optimizer"), (["--seed", "5"], "--seed"),
    (["--hid=16", "--lr=3", "--epochs", "3"], "--hidden, --lr"),  # abbreviated, with =
])
def test_resume_refuses_options_its_checkpoint_overrides(checkpoint_file, options, named):
    # Each ran on with the checkpoint's settings, exit 0.
    refused(corenet("train", "--resume", checkpoint_file, *options),
            f"--resume {checkpoint_file} goes on with the checkpoint's settings, which "
            f"override {named} given here")


def test_resume_takes_epochs_threads_and_json(checkpoint_file):
    result = corenet("train", "--resume", checkpoint_file, "--epochs", "3", "--threads", "1",
                     "--json", "--save", checkpoint_file + ".more.npz")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 3


def test_options_a_model_file_or_the_cnn_ignores_are_refused(checkpoint_file):
    refused(corenet("train", "--model", checkpoint_file, "--dtype", "float64", "--hidden",
                    "16", "--activation", "tanh"),
            f"--model {checkpoint_file} ignores --hidden, --activation, --dtype (a model file "
            f"brings its own layers and dtype): leave them out")
    refused(corenet("train", "--model", "cnn", "--hidden", "8"),
            "--model cnn ignores --hidden (the CNN has no hidden sizes to set): leave it out")
    # Given as their defaults are, they are ignored all the same; not given, no error.
    refused(corenet("train", "--model", "cnn", "--hidden", "256"), "ignores --hidden")
    result = corenet("train", "--model", checkpoint_file, "--epochs", "1", "--lr", "0.01")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [["train"], ["eval", "MODEL"]], ids=lambda c: c[0])
def test_a_negative_seed_is_refused_naming_seed(command, tmp_path):
    # numpy's "expected non-negative integer" named no option.
    model = tmp_path / "m.npz"
    cn.save(cn.Sequential(L.Linear(64, 10)), str(model))
    command = [str(model) if word == "MODEL" else word for word in command]
    refused(corenet(*command, "--seed", "-1"),
            "argument --seed: expected a non-negative integer, got -1")


@pytest.mark.parametrize("value, message", [
    (-1, "the seed must be at least 0, got -1"), (2.5, "the seed must be an integer, got 2.5"),
    ("abc", "the seed must be an integer, got 'abc'"),
    (True, "the seed must be an integer, got True")])
def test_random_seed_checks_its_value(value, message):
    with pytest.raises(ValueError, match=f"corenet.random.seed: {message}"):
        cn.random.seed(value)
    with pytest.raises(ValueError, match=f"corenet.random.seeded: {message}"):
        with cn.random.seeded(value):
            pass
    cn.random.seed(np.int64(3))  # numpy's integers are integers


def unwritable_folder(tmp_path) -> str:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root: a folder of sysfs refuses new files even so
        folder = "/sys"
        try:
            os.close(os.open("/sys/.corenet-probe", os.O_CREAT | os.O_WRONLY))
            os.unlink("/sys/.corenet-probe")
            pytest.skip("no folder here refuses a new file")
        except OSError:
            pass
    return str(folder)


def test_save_paths_that_cannot_be_written_are_refused_before_training(tmp_path):
    # x.npz/ trained, then failed naming the temporary file; a read-only folder failed
    # only at the end of epoch 1.
    refused(corenet("train", "--save", str(tmp_path / "x.npz") + "/"),
            "x.npz/': expected a file name, not a folder (it ends in '/')")
    refused(corenet("train", "--save", ""), "--save '': expected a file name, got an empty one")
    folder = unwritable_folder(tmp_path)
    refused(corenet("train", "--save", os.path.join(folder, "x.npz")),
            f"x.npz': cannot create a file in {folder}: Permission denied")
    assert os.listdir(tmp_path) == ["read-only"]


def test_export_to_an_empty_name_is_refused(tmp_path):
    # It failed at the rename to '', after cleaning the parent of the working folder.
    model = tmp_path / "m.npz"
    cn.save(cn.Sequential(L.Linear(4, 3)), str(model))
    refused(corenet("export", str(model), ""),
            "corenet export: error: FILE.onnx '': expected a file name, got an empty one")


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_predict_refuses_inputs_that_are_not_finite(tmp_path, value):
    # The samples holding them were predicted as class 0, silently.
    model = tmp_path / "m.npz"
    cn.save(cn.Sequential(L.Linear(4, 3)), str(model))
    X = np.ones((5, 4), np.float32)
    X[3, 1] = value
    np.savez(tmp_path / "x.npz", X=X)
    refused(corenet("predict", str(model), str(tmp_path / "x.npz")),
            "x.npz: X must hold finite numbers, got inf or NaN in 1 of 5 samples (the first: "
            "sample 3)")


def test_labels_far_past_any_class_count_are_refused_as_labels(tmp_path):
    # A label of 10**9 was reported as a 29.8 GiB linear weight.
    np.savez(tmp_path / "y.npz", X=np.ones((4, 4), np.float32), y=np.array([0, 1, 2, 10**9]))
    refused(corenet("train", "--data", str(tmp_path / "y.npz")),
            "y.npz: labels must be class indices 0..C-1 with C at most 100000, got labels "
            "from 0 to 1000000000")


@pytest.mark.parametrize("sizes", ["8,,8", "8,", ",8"])
def test_hidden_sizes_may_not_be_empty(sizes):
    # 8,,8 was read as 8,8.
    refused(corenet("train", "--hidden", sizes),
            f"argument --hidden: expected sizes like 256,128, got {sizes!r} (an empty size)")


def test_a_thread_count_set_num_threads_refuses_is_one_line(tmp_path):
    # The count was set outside the error handler: a traceback, exit 1.
    model = tmp_path / "m.npz"
    cn.save(cn.Sequential(L.Linear(64, 10)), str(model))
    refused(corenet("eval", str(model), "--threads", "100000000000"), "100000000000")


def test_predict_and_eval_refuse_a_model_that_is_not_a_classifier(tmp_path):
    # predict took the argmax of two stacked outputs over the samples and printed sample
    # indices as classes; of a conv's (N, 3, 6, 6) output, one 2-D array per sample.
    x = cn.Input((64,))
    two = tmp_path / "two.npz"
    cn.save(cn.Model(x, [L.Linear(64, 10)(x), L.Linear(64, 10)(x)]), str(two))
    image = cn.Input((1, 8, 8))
    conv = tmp_path / "conv.npz"
    cn.save(cn.Model(image, L.Conv2d(1, 3, 3)(image)), str(conv))
    wanted = "a classifier's model has one output of shape (classes,) per sample; this one gives"
    refused(corenet("predict", str(two), "digits"),
            f"two.npz: {wanted} 2 outputs, of per-sample shapes (10,), (10,)")
    refused(corenet("predict", str(conv), "digits"),
            f"conv.npz: {wanted} outputs of per-sample shape (3, 6, 6)")
    refused(corenet("eval", str(two)), f"two.npz: {wanted} 2 outputs")


def test_predict_refuses_a_model_whose_outputs_are_not_finite(tmp_path):
    # A NaN weight in a model file made every sample class 3, with exit status 0.
    model = cn.Sequential(L.Linear(64, 10))
    model.layers[0].weight.value[3, 5] = np.nan
    cn.save(model, str(tmp_path / "nan.npz"))
    refused(corenet("predict", str(tmp_path / "nan.npz"), "digits"),
            "nan.npz: the model's outputs are NaN for 1797 of 1797 samples (the first: "
            "sample 0), from finite inputs: its weights or statistics are not finite, or its "
            "values overflowed")


@pytest.mark.parametrize("value", [1e300, np.nan])
def test_train_refuses_data_that_is_not_finite_in_float32(tmp_path, value):
    # 1e300 became inf as float32 with a numpy warning, and training stopped advising a
    # smaller learning rate.
    X = np.ones((40, 4))
    X[7, 2] = value
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(40) % 3)
    result = corenet("train", "--data", str(tmp_path / "d.npz"), "--epochs", "1")
    refused(result, "d.npz: X must hold finite numbers, got inf or NaN in 1 of 40 samples "
                    "(the first: sample 7)")
    assert "Warning" not in result.stderr
