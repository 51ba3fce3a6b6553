"""Checkpoints: a model file that also holds what training needs to go on exactly.

``save_checkpoint(path, model, optimizer, state)`` writes the model as ``corenet.save``
does (atomically: a run killed at any moment leaves the previous checkpoint whole),
plus the optimizer's state_dict, corenet.random's generator state and ``state``, a
dict of plain values (the epoch, the settings of the run). ``corenet.load``,
``corenet eval`` and ``predict`` read a checkpoint as the model it holds;
``load_checkpoint`` gives the rest back, checked as untrusted input.

>>> import tempfile, os, corenet as cn, corenet.layers as L
>>> model = cn.Sequential(L.Linear(3, 2), input_shape=(3,))
>>> optimizer = cn.optim.Adam(model.parameters())
>>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
>>> save_checkpoint(path, model, optimizer, {"epoch": 1})
>>> model_again, saved = load_checkpoint(path)
>>> saved["state"]["epoch"]
1
"""
from __future__ import annotations

import json

import numpy as np

from corenet import random, serialize
from corenet.errors import ModelFileError

FORMAT = "corenet-checkpoint/1"
JSON_ENTRY = serialize.EXTRA_PREFIX + "checkpoint"
ARRAY_PREFIX = serialize.EXTRA_PREFIX + "array."
MAX_DEPTH = 16


def save_checkpoint(path: str, model, optimizer, state: dict) -> None:
    arrays = {}
    document = {
        "format": FORMAT,
        "state": _encode(state, arrays),
        "optimizer": _encode(_inner(optimizer).state_dict(), arrays),
        "random": _encode(random.generator().bit_generator.state, arrays),
    }
    extra = {ARRAY_PREFIX + name: array for name, array in arrays.items()}
    extra[JSON_ENTRY] = np.frombuffer(json.dumps(document).encode(), np.uint8)
    serialize.save(model, path, extra)


def load_checkpoint(path: str) -> tuple:
    """(model, {"state": dict, "optimizer": state_dict, "random": generator state}), or a
    ModelFileError naming the file when it holds no checkpoint or a malformed one."""
    model, extra = serialize.load_with_extra(path)
    raw = extra.pop(JSON_ENTRY, None)
    if raw is None:
        raise ModelFileError(f"{path}: a model file without a checkpoint (saved by "
                             f"corenet.save, not by corenet train --save)")
    try:
        document = json.loads(raw.tobytes().decode())
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON; nested thousands deep
        raise ModelFileError(f"{path}: the checkpoint is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a {FORMAT} checkpoint")
    arrays = {name[len(ARRAY_PREFIX):]: array for name, array in extra.items()
              if name.startswith(ARRAY_PREFIX)}
    saved = {}
    for key in ("state", "optimizer", "random"):
        if key not in document:
            raise ModelFileError(f"{path}: the checkpoint has no {key!r}")
        saved[key] = _decode(path, document[key], arrays)
    if not isinstance(saved["state"], dict):
        raise ModelFileError(f"{path}: the checkpoint's state must be a dict")
    return model, saved


def restore(path: str, optimizer, saved: dict) -> None:
    """Give ``optimizer`` and corenet.random the state of a loaded checkpoint; errors
    name the file."""
    try:
        _inner(optimizer).load_state_dict(saved["optimizer"])
    except (ValueError, TypeError, KeyError) as error:
        raise ModelFileError(f"{path}: the optimizer state does not fit: {error}") from None
    generator = np.random.default_rng()
    try:
        generator.bit_generator.state = saved["random"]
    except (ValueError, TypeError, KeyError, OverflowError) as error:  # OverflowError: > uint64
        raise ModelFileError(f"{path}: the random state is malformed: {error}") from None
    random.set_generator(generator)


def _inner(optimizer):
    """The optimizer that holds the state (a distributed wrapper holds one)."""
    return getattr(optimizer, "optimizer", optimizer)


# JSON keeps dicts with string keys only and knows no tuple or array: each value is
# tagged so that it comes back as it was (an optimizer's state is keyed by int).

def _encode(value, arrays: dict):
    if isinstance(value, np.ndarray):
        name = str(len(arrays))
        arrays[name] = value
        return {"array": name}
    if isinstance(value, dict):
        return {"dict": [[key, _encode(item, arrays)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(item, arrays) for item in value]}
    if isinstance(value, list):
        return {"list": [_encode(item, arrays) for item in value]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint: cannot store a {type(value).__name__}")


def _decode(path: str, value, arrays: dict, depth: int = 0):
    if depth > MAX_DEPTH:
        raise ModelFileError(f"{path}: the checkpoint nests deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        raise ModelFileError(f"{path}: unexpected value in the checkpoint: {value!r:.80}")
    (tag, content), = value.items()
    if tag == "array" and isinstance(content, str) and content in arrays:
        return arrays[content]
    if tag in ("list", "tuple") and isinstance(content, list):
        items = [_decode(path, item, arrays, depth + 1) for item in content]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict" and isinstance(content, list) and all(
            isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (int, str))
            and not isinstance(pair[0], bool) for pair in content):
        return {key: _decode(path, item, arrays, depth + 1) for key, item in content}
    raise ModelFileError(f"{path}: unexpected value in the checkpoint: {value!r:.80}")


def check_resumed_model(path: str, model, expected, argv: list) -> None:
    """A ModelFileError naming the first difference between the architecture of a
    checkpoint's model and that of the model its recorded settings build."""
    def architecture(net) -> dict:
        config = json.loads(json.dumps(serialize.model_config(net)))  # tuples, as in the file
        return {"dtype": config["dtype"], "inputs": config["inputs"],
                "outputs": config["outputs"],
                "nodes": [(node["layer"], node["config"], node["inputs"])
                          for node in config["nodes"]]}

    held, built = architecture(model), architecture(expected)
    if held == built:
        return
    differences = []
    if len(held["nodes"]) != len(built["nodes"]):
        differences.append(
            f"{len(held['nodes'])} layers ({', '.join(n[0] for n in held['nodes'])}), the "
            f"settings build {len(built['nodes'])} ({', '.join(n[0] for n in built['nodes'])})")
    differences += [f"{key} {held[key]}, the settings build {built[key]}"
                    for key in ("dtype", "inputs", "outputs") if held[key] != built[key]]
    differences += [f"layer {index} {mine[0]} {mine[1]}, the settings build {theirs[0]} "
                    f"{theirs[1]}" for index, (mine, theirs)
                    in enumerate(zip(held["nodes"], built["nodes"])) if mine != theirs]
    what = differences[0]  # the first one says enough
    raise ModelFileError(f"{path}: the checkpoint's model is not the one its recorded "
                         f"settings ({' '.join(argv) or 'the defaults'}) build: it holds "
                         f"{what}")
