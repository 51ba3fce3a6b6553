"""The ``corenet`` command: train, eval, predict, export, plugins, info."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:  # --augment -1 was read as 0, --seed -1 gave numpy's error
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:  # also nan
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def _sizes(text: str) -> list:
    parts = text.split(",")
    if not all(part.strip() for part in parts):  # 8,,8 was read as 8,8
        raise argparse.ArgumentTypeError(f"expected sizes like 256,128, got {text!r} (an empty "
                                         f"size)")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128 or 256,128, got {text!r}")
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 256,128, got {text!r}")
    return sizes


def json_text(value) -> str:
    """``value`` as JSON, a NaN or infinite float as null: json.dumps writes them as NaN
    and Infinity, which no JSON reader takes (eval --json on data holding a NaN gave
    "loss": NaN)."""
    def finite(item):
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(entry) for key, entry in item.items()}
        if isinstance(item, (list, tuple)):
            return [finite(entry) for entry in item]
        return item
    return json.dumps(finite(value), allow_nan=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corenet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an MLP classifier (default: bundled digits)")
    train.add_argument("--data", default="digits",
                       help="'digits' (bundled), a .npz with X and y, or IMAGES,LABELS IDX files")
    train.add_argument("--model", default="mlp",
                       help="'mlp' (default), 'cnn' (two conv-relu-pool stages, then a "
                            "linear layer), or a model file saved with --save to continue")
    train.add_argument("--hidden", type=_sizes, default=[256],
                       help="hidden layer sizes, e.g. 256,128 (default 256)")
    train.add_argument("--activation", default="relu", help="any registered activation layer")
    train.add_argument("--epochs", type=_positive_int,
                       help="passes over the training set (default: 40 for mlp, 15 for cnn)")
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw", "rmsprop"])
    train.add_argument("--lr", type=float,
                       help="learning rate (default: 0.02 for sgd, else PyTorch's default)")
    train.add_argument("--momentum", type=float,
                       help="sgd (default 0.9) and rmsprop (default 0) only")
    train.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    train.add_argument("--weight-decay", type=float,
                       help="default 0, 0.01 for adamw (decoupled there, L2 otherwise)")
    train.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"],
                       help="learning rate over the epochs (default cosine decay)")
    train.add_argument("--warmup", type=int, default=0,
                       help="epochs of linear warm-up from lr/10 before the schedule")
    train.add_argument("--step-size", type=_positive_int,
                       help="--schedule step: epochs between decays (default a third)")
    train.add_argument("--gamma", type=float, default=0.1,
                       help="--schedule step: factor of each decay (default 0.1)")
    train.add_argument("--clip-norm", type=_positive_float,
                       help="clip the gradients of each step to this global L2 norm")
    train.add_argument("--augment", type=_non_negative_int, default=2,
                       help="shifted copies of each square training image (default 2)")
    train.add_argument("--seed", type=_non_negative_int, default=0,
                       help="split, initial weights and shuffling")
    train.add_argument("--test-fraction", type=_fraction, default=0.2,
                       help="share of the samples held out for testing (default 0.2)")
    train.add_argument("--threads", type=_positive_int, help="kernel threads (default: all CPUs)")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--save", help="write a checkpoint (the model, the optimizer, the "
                                      "schedule's and the random state) to this file "
                                      "atomically at the end of every epoch")
    train.add_argument("--resume", metavar="FILE",
                       help="go on from a checkpoint of --save, with its settings (and "
                            "saving to it unless --save says otherwise)")
    train.add_argument("--accumulate", type=_positive_int, default=1, metavar="K",
                       help="sum the gradients of K micro-batches of each batch before a step")
    train.add_argument("--distributed", action="store_true",
                       help="data parallel over MPI, under mpiexec -n K; --batch-size is the "
                            "global batch (needs corenet[mpi])")
    train.add_argument("--json", action="store_true", help="print one JSON object of metrics")
    train.add_argument("--diagnostics", action="store_true",
                       help="each epoch: dead units of the ReLU-family layers, gradient norm "
                            "of each layer, vanishing/exploding warnings (in --json too)")

    evaluate = commands.add_parser("eval", help="loss and accuracy of a saved model")
    evaluate.add_argument("model")
    evaluate.add_argument("--data", default="digits")
    evaluate.add_argument("--seed", type=_non_negative_int,
                          help="split seed whose test part is evaluated (default: the one the "
                               "model was trained with, recorded in its file; else 0)")
    evaluate.add_argument("--test-fraction", type=_fraction,
                          help="default: the one recorded in the model's file, else 0.2")
    evaluate.add_argument("--all", action="store_true", help="evaluate on every sample")
    evaluate.add_argument("--threads", type=_positive_int)
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser("predict", help="class predictions of a saved model")
    predict.add_argument("model")
    predict.add_argument("inputs", help="a .npz with X (and optionally y), or 'digits'")
    predict.add_argument("--threads", type=_positive_int)
    predict.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="write a saved model as an ONNX file")
    export.add_argument("model", help="a model file saved by corenet train --save")
    export.add_argument("output", metavar="FILE.onnx")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer")

    plugins = commands.add_parser("plugins", help="list the installed plugins")
    plugins.add_argument("--json", action="store_true")

    info = commands.add_parser("info", help="version, build flags, OpenMP, threads")
    info.add_argument("--json", action="store_true")
    parser.commands = commands.choices  # each command's own parser, for given_options
    return parser


def command_train(args) -> int:
    if not args.distributed:
        return train_model(args, None)
    import corenet as cn
    from corenet import distributed

    comm = distributed.init()
    with distributed.abort_on_error(comm, "corenet train"):  # never leave a rank waiting
        # Inside the job: a rank that alone had this error and exited left the others
        # waiting for it for ever.
        if args.accumulate > 1:
            raise ValueError("--accumulate and --distributed: give one of them (K ranks are "
                             "what --accumulate K computes in one process)")
        if not args.threads:
            cn.set_num_threads(distributed.threads_per_rank(comm))
        return train_model(args, comm)


def train_model(args, comm) -> int:
    """corenet train, in one process (comm None) or as one rank of an MPI job."""
    import time

    import corenet as cn
    from corenet import data, models, serialize
    from corenet.contention import ContentionGovernor
    from corenet.diagnostics import Diagnostics
    from corenet.progress import Progress
    from corenet.gradients import AccumulatingStep
    from corenet.train import evaluate, fit, make_optimizer, make_schedule

    from corenet import checkpoint

    saved = None
    if args.resume:
        check_resume_options(args)
        args, saved = resumed_settings(args)
    else:
        check_model_options(args)
    if args.save is not None:
        check_save_path(args.save)
    if args.epochs is None:
        args.epochs = 15 if args.model == "cnn" else 40
    schedule = make_schedule(args.schedule, args.epochs, args.warmup, args.step_size,
                             args.gamma)
    X, y = data.load(args.data)
    cn.random.seed(args.seed)
    n_classes = class_count(y, args.data)
    if args.model == "cnn":
        model = models.build_cnn(models.image_shape(X), n_classes, activation=args.activation,
                                 dtype=args.dtype)
    elif args.model == "mlp":
        model = models.build_mlp(int(np.prod(X.shape[1:])), args.hidden, n_classes,
                                 args.activation, args.dtype)
    elif saved is None:
        model = serialize.load(args.model)
    if saved is not None:
        # The checkpoint's model must be the one its settings build (a checkpoint whose
        # settings say --model cnn but which holds an MLP would otherwise train on
        # silently under the wrong settings). A --model FILE run is not checked: that
        # file may have changed or be gone since.
        if args.model in models.MODELS:
            checkpoint.check_resumed_model(args.resume, saved["model"], model,
                                           args.argv[1:])
        model = saved.pop("model")
    # Images, as the data gives them: flat rows of a square number of pixels were
    # shifted as one channel even when they held four (N, 4, 4, 4).
    images = models.image_shape(X) if models.holds_images(X) else None
    X = X.reshape(len(X), -1)
    X_train, y_train, X_test, y_test = data.train_test_split(X, y, args.test_fraction, args.seed)
    if args.augment > 0 and images is not None:
        X_train = data.shift_augment(X_train, args.augment, args.seed, images)
        y_train = np.tile(y_train, args.augment + 1)
    X_train, X_test = models.as_model_input(model, X_train), models.as_model_input(model, X_test)
    loss = cn.losses.SoftmaxCrossEntropy()
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr, args.momentum,
                               args.weight_decay, args.nesterov)
    start_epoch, history_before = 0, []
    if saved is not None:
        checkpoint.restore(args.resume, optimizer, saved)
        start_epoch, history_before = saved["state"]["epoch"], saved["state"]["history"]
    step = AccumulatingStep(args.accumulate) if args.accumulate > 1 else None
    root = comm is None or comm.Get_rank() == 0  # only rank 0 prints and saves
    if comm is not None:
        from corenet import distributed

        # Ranks started with other settings or data (mpiexec -n 1 ... : -n 1 ... --seed 1)
        # waited for each other for ever (another --batch-size, another data size) or
        # trained silently on other batches (--seed), with replicas drifting apart (--lr).
        settings = {f"--{name.replace('_', '-')}": value for name, value in vars(args).items()
                    if name not in RANK_OWN_OPTIONS}
        distributed.check_same_on_every_rank(dict(settings, **{
            "the data (--data)": f"X {X.shape} {X.dtype}, y {y.shape} {y.dtype}, digest "
                                 f"{distributed.digest([X, y])}",
            "the model (--model)": distributed.digest(
                [serialize.model_config(model),
                 [buffer.value for layer in model.layers for buffer in layer.state_buffers()]]),
            "the epoch to start from (--resume)": start_epoch,
            "the optimizer state (--resume)": distributed.digest(optimizer.state_dict())}),
            comm, "corenet train --distributed")
        distributed.broadcast_parameters(model, comm=comm)
        optimizer = distributed.DistributedOptimizer(optimizer, model, comm)
        step = distributed.DistributedStep()
    out = sys.stderr if args.json else sys.stdout
    progress = Progress(args.epochs, stream=out)
    # The warnings are printed with the report, not also through the warnings module.
    diagnostics = Diagnostics(warn=False) if args.diagnostics else None

    model.training_info = {"split_seed": args.seed, "test_fraction": args.test_fraction}
    losses = list(history_before)

    def on_epoch(epoch, mean_loss):
        losses.append(mean_loss)
        if args.save:
            checkpoint.save_checkpoint(args.save, model, optimizer, {
                "epoch": epoch + 1, "argv": training_argv(getattr(args, "argv", ["train"])),
                "history": losses})
        test_loss, accuracy = evaluate(model, loss, X_test, y_test)
        progress.on_epoch(epoch, mean_loss, f" test_loss {test_loss:.4f} "
                                            f"test_accuracy {accuracy:.4f}")
        if diagnostics is not None:
            print(diagnostics.history[-1].format(), file=out, flush=True)

    callbacks = [diagnostics] if diagnostics is not None else []
    pinned = args.threads or any(os.environ.get(name, "").strip()
                                 for name in ("CORENET_NUM_THREADS", "OMP_NUM_THREADS"))
    if not pinned and comm is None:  # fewer threads while other processes take cores
        callbacks.append(ContentionGovernor())
    start = time.perf_counter()
    history = fit(model, loss, optimizer, X_train, y_train, args.epochs, args.batch_size,
                  args.seed, on_batch=progress.on_batch if root else None,
                  on_epoch=on_epoch if root else None, lr_schedule=schedule,
                  callbacks=callbacks, step=step,
                  clip_norm=args.clip_norm, start_epoch=start_epoch)
    history = history_before + history
    seconds = time.perf_counter() - start
    if not root:
        return 0
    test_loss, accuracy = evaluate(model, loss, X_test, y_test)
    metrics = {"test_accuracy": accuracy, "test_loss": test_loss, "train_loss": history[-1],
               "epochs": args.epochs, "seconds": round(seconds, 3),
               "threads": cn.get_num_threads(), "optimizer": args.optimizer,
               "samples": len(X_train), "test_samples": len(X_test),
               "ranks": comm.Get_size() if comm else 1}
    if diagnostics is not None:
        metrics["diagnostics"] = [report.as_dict() for report in diagnostics.history]
    if args.json:
        print(json_text(metrics))
    else:
        print(f"test accuracy {accuracy:.4f}, test loss {test_loss:.4f}, "
              f"{args.epochs} epochs in {seconds:.2f} s on {cn.get_num_threads()} thread(s)")
    return 0


def check_save_path(path: str) -> None:
    """Errors for a --save path no checkpoint can be written to, found before training so
    that no training run is lost to a typo or a read-only folder."""
    from corenet import serialize

    label = f"--save {path!r}"
    serialize.check_file_name(path, label)
    if os.path.isdir(path):
        raise ValueError(f"{label}: expected a file name, not a folder")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{label}: expected a file name, not a device or a pipe (the "
                         f"checkpoint is renamed over what has the name)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise FileNotFoundError(f"--save {path}: its folder does not exist")
    serialize.check_folder_writable(path, label)


# More classes than this are taken for a mistake in the labels (a label of 10**9 asked
# for a 30 GiB output layer), not a classification task.
MAX_CLASSES = 100_000


def class_count(y: np.ndarray, source: str) -> int:
    """The number of classes of labels ``y`` (class indices 0..C-1) of data ``source``."""
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= MAX_CLASSES:
        raise ValueError(f"--data {source}: labels must be class indices 0..C-1 with C at "
                         f"most {MAX_CLASSES}, got labels from {low} to {high}")
    return high + 1


def given_options(argv: list) -> list:
    """The options a `corenet train` command line (``argv``, "train" first) gives itself,
    as their full --names (abbreviated or as --name=value on the line)."""
    parser, unset = build_parser(), object()
    command = parser.commands[argv[0]]
    # Every default a marker: what differs from it, the command line set.
    command.set_defaults(**dict.fromkeys(vars(command.parse_args([])), unset))
    given = vars(parser.parse_args(argv))
    return ["--" + name.replace("_", "-") for name, value in given.items()
            if value is not unset and name != "command"]


def check_resume_options(args) -> None:
    """A ValueError naming each option of a --resume run that its checkpoint's settings
    would silently override."""
    overridden = [name for name in given_options(getattr(args, "argv", ["train"]))
                  if name not in RESUME_OPTIONS]
    if overridden:
        allowed = ", ".join(sorted(RESUME_OPTIONS - {"--resume"}))
        raise ValueError(f"--resume {args.resume} goes on with the checkpoint's settings, "
                         f"which override {', '.join(overridden)} given here: leave "
                         f"{_it_or_them(overridden)} out (a resumed run takes only {allowed}), "
                         f"or start a new run from its weights with --model {args.resume}")


def check_model_options(args) -> None:
    """A ValueError naming each option given that --model cnn or a model file ignores."""
    if args.model == "mlp":
        return
    if args.model == "cnn":
        ignored, reason = ("--hidden",), "the CNN has no hidden sizes to set"
    else:
        ignored, reason = ("--hidden", "--activation", "--dtype"), \
            "a model file brings its own layers and dtype"
    given = [name for name in given_options(getattr(args, "argv", ["train"]))
             if name in ignored]
    if given:
        raise ValueError(f"--model {args.model} ignores {', '.join(given)} ({reason}): "
                         f"leave {_it_or_them(given)} out")


def _it_or_them(names: list) -> str:
    return "it" if len(names) == 1 else "them"


# Options each rank of a --distributed run may have its own of (rank 0 alone saves; the
# data and a --model file are compared by content, since paths may differ by machine).
RANK_OWN_OPTIONS = {"threads", "json", "diagnostics", "save", "resume", "argv", "command",
                    "distributed", "accumulate", "data", "model"}


# Options of a run that do not change what it computes (K ranks compute what --accumulate
# K does, on any threads): a checkpoint keeps the others, and a resumed run takes these
# from its own command line (so it may go on with another number of ranks).
NOT_SETTINGS = {"--save": 1, "--resume": 1, "--threads": 1, "--json": 0, "--diagnostics": 0,
                "--distributed": 0, "--accumulate": 1}
# What a resumed run may give itself: the rest are the checkpoint's settings.
RESUME_OPTIONS = set(NOT_SETTINGS) | {"--epochs"}


def training_argv(argv: list) -> list:
    """The training settings of a `corenet train` command line, for its checkpoint."""
    kept, skip = [], 0
    for word in argv[1:]:  # after "train"
        name = word.split("=", 1)[0]
        if skip:
            skip -= 1
        elif name in NOT_SETTINGS:
            skip = NOT_SETTINGS[name] if "=" not in word else 0
        else:
            kept.append(word)
    return kept


def resumed_settings(args) -> tuple:
    """The settings of the checkpoint's run, parsed as that command line was (so checked
    the same way), with this call's --save, --threads, --json and --diagnostics; and the
    checkpoint, its model under "model"."""
    from corenet import checkpoint
    from corenet.errors import ModelFileError

    model, saved = checkpoint.load_checkpoint(args.resume)
    state = saved["state"]
    argv = state.get("argv")
    if not (isinstance(argv, list) and all(isinstance(word, str) for word in argv)):
        raise ModelFileError(f"{args.resume}: the checkpoint's settings are malformed")
    try:
        settings = build_parser().parse_args(["train"] + argv)
    except SystemExit:
        raise ModelFileError(f"{args.resume}: the checkpoint's settings {argv} are not "
                             f"valid corenet train options") from None
    if args.epochs is not None:  # run longer (or shorter) than the checkpoint's run
        settings.epochs = args.epochs
    if settings.epochs is None:
        settings.epochs = 15 if settings.model == "cnn" else 40
    epoch, history = state.get("epoch"), state.get("history")
    if not (type(epoch) is int and 0 <= epoch <= settings.epochs and isinstance(history, list)
            and len(history) == epoch and all(type(v) is float for v in history)):
        raise ModelFileError(f"{args.resume}: the checkpoint's epoch {epoch!r} or history do "
                             f"not fit a run of {settings.epochs} epochs")
    for name in ("threads", "json", "diagnostics", "resume", "distributed", "accumulate"):
        setattr(settings, name, getattr(args, name))
    settings.save = args.save or args.resume
    settings.argv = ["train"] + argv + (["--epochs", str(args.epochs)] if args.epochs else [])
    saved["model"] = model
    return settings, saved


def command_eval(args) -> int:
    import corenet as cn
    from corenet import data, models, serialize
    from corenet.train import check_classifier_output, evaluate

    model = serialize.load(args.model)
    X, y = data.load(args.data)
    X = X.reshape(len(X), -1)
    # The split the model was trained with, unless told otherwise: its test part is
    # data the model has not seen.
    seed = args.seed if args.seed is not None else model.training_info.get("split_seed", 0)
    fraction = args.test_fraction if args.test_fraction is not None else \
        model.training_info.get("test_fraction", 0.2)
    if not args.all:
        _, _, X, y = data.train_test_split(X, y, fraction, seed)
    X = models.as_model_input(model, X)
    check_classifier_output(args.model, model.predict(X[:1]))  # naming the file, at once
    test_loss, accuracy = evaluate(model, cn.losses.SoftmaxCrossEntropy(), X, y)
    metrics = {"accuracy": accuracy, "loss": test_loss, "samples": len(X),
               "split_seed": None if args.all else seed}
    print(json_text(metrics) if args.json else
          f"accuracy {accuracy:.4f}, loss {test_loss:.4f} on {len(X)} samples")
    return 0


def command_predict(args) -> int:
    from corenet import data, models, serialize

    model = serialize.load(args.model)
    if args.inputs == "digits":
        X, _ = data.load_digits()
    else:
        X = data.load_npz_inputs(args.inputs)
    # (load_npz_inputs refused inf and NaN already, and the bundled digits are finite.)
    predictions = np.argmax(class_scores(model, models.as_model_input(model, X), args.model),
                            axis=1)
    if args.json:
        print(json.dumps({"predictions": predictions.tolist()}))
    else:
        print("\n".join(map(str, predictions)))
    return 0


def class_scores(model, X: np.ndarray, source: str) -> np.ndarray:
    """The model's (samples, classes) outputs for X, refusing what an argmax would turn
    into classes silently: several outputs or another shape (the argmax ran over the
    samples), and scores that are NaN (a model file's weights or statistics)."""
    from corenet.train import check_classifier_output

    check_classifier_output(source, model.predict(X[:1]))  # before the whole set
    scores = model.predict(X)
    # An inf score still has an argmax; a NaN has none (numpy says the NaN's class).
    bad = np.flatnonzero(np.isnan(scores).any(axis=1))
    if len(bad):
        raise ValueError(f"{source}: the model's outputs are NaN for {len(bad)} of {len(X)} "
                         f"samples (the first: sample {bad[0]}), from finite inputs: its "
                         f"weights or statistics are not finite, or its values overflowed")
    return scores


def command_export(args) -> int:
    from corenet import serialize
    from corenet.onnx import export

    serialize.check_file_name(args.output, f"FILE.onnx {args.output!r}")  # before any work
    model = serialize.load(args.model)
    # `corenet export m.npz m.npz` replaced the saved model with its ONNX file.
    if os.path.exists(args.output) and os.path.samefile(args.model, args.output):
        raise ValueError(f"FILE.onnx {args.output!r} is the model file itself: give the "
                         f"ONNX file another name")
    try:
        export(model, args.output, args.opset)
    except ImportError as error:  # the onnx extra is not installed: say which
        print(f"corenet export: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.output}")
    return 0


def command_plugins(args) -> int:
    from corenet.registry import registry

    plugins = [info.as_dict() for info in registry.load().plugins.values()]
    if args.json:
        print(json.dumps({"plugins": plugins}, indent=2))
        return 0
    for plugin in plugins:
        print(f"{plugin['name']}  ({plugin['distribution']} {plugin['version']})")
        if plugin["disabled"]:
            print("  DISABLED by CORENET_DISABLE_PLUGINS")
        if plugin["error"]:
            print(f"  FAILED: {plugin['error']}")
        if plugin["layers"]:
            print(f"  layers: {', '.join(plugin['layers'])}")
        if plugin["losses"]:
            print(f"  losses: {', '.join(plugin['losses'])}")
        if not (plugin["disabled"] or plugin["error"] or plugin["layers"] or plugin["losses"]):
            print("  provides no layers or losses")
    return 0


def command_info(args) -> int:
    from corenet.info import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>16}: {value}")
    return 0


COMMANDS = {"train": command_train, "eval": command_eval, "predict": command_predict,
            "export": command_export, "plugins": command_plugins, "info": command_info}


# Exit statuses besides 0: bad arguments or data, a diverged training, and the shell's
# 128 + signal for Ctrl-C (SIGINT) and a closed output pipe (SIGPIPE).
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        # One line, no traceback. Nothing half-written stays: --save replaces its file
        # whole at the end of each epoch, and an interrupted save removes its temporary
        # file; --resume goes on from the last epoch saved.
        print(f"corenet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`corenet predict ... | head`): stop quietly, and point
        # stdout at /dev/null so that the interpreter's last flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def run(args) -> int:
    """The command, with corenet's errors as one line on stderr and an exit status."""
    import corenet
    from corenet.errors import DTypeError, PluginError, ShapeError
    from corenet.train import TrainingDiverged

    try:
        if getattr(args, "threads", None):  # a count past the bound is an error: one line
            corenet.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except TrainingDiverged as error:
        print(f"corenet {args.command}: training stopped: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except BrokenPipeError:
        raise  # main stops quietly: the reader went away
    except (ShapeError, DTypeError, PluginError, OSError, KeyError, ValueError) as error:
        # OSError: a missing file, a folder given for a file, no permission. A KeyError's
        # str() is the repr of its message, quotes and escapes included: print the message.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"corenet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as error:  # each array fits, all of them together did not
        print(f"corenet {args.command}: error: out of memory ({error or 'no details'}); "
              f"try a smaller --batch-size or smaller data", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
