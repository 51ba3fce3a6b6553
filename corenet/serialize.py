"""Saving and loading a model as one .npz file, without pickle.

The file holds the graph's config as JSON (layer names and configs, the
plugin distribution and version of each layer, corenet's version, the dtype)
and one array per parameter and per state buffer (batch norm's running
statistics), named ``node{index}.{name}``. It is written to a temporary file in
the same folder and renamed over the target, so a crash never leaves half a file.

A model file is untrusted input. ``load`` reads the zip directory and every
array's .npy header first (no pickle, headers of bounded size), checks that
each array's declared size is what the file holds, checks the config's
structure, the arrays' dtypes and, for layers that declare them through
``Layer.parameter_shapes`` (and ``Layer.state_shapes``), their shapes against
the config, and only then builds layers and reads arrays; each array must then
be exactly what the built layer holds, name for name, shape and dtype. Anything
malformed is a ``ModelFileError`` naming the file and what is wrong.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import stat
import tempfile
import zipfile

import numpy as np

from corenet import npy
from corenet.errors import ModelFileError, PluginError
from corenet.graph import Input, Model
from corenet.registry import registry

FORMAT = "corenet-model/1"
CONFIG_ENTRY = "__config__"
MAX_CONFIG_BYTES = 16 << 20
ZIP_ENCRYPTED = 0x1  # general purpose flag bit 0 of a zip member
FLOAT_DTYPE_NAMES = ("float32", "float64")
# Besides the model's float dtype, the one dtype an array may have: a buffer's step
# count (batch norm's num_batches_tracked, an int64 as in PyTorch).
COUNT_DTYPE = np.dtype("<i8")


# -- saving ------------------------------------------------------------------------

def model_config(model: Model) -> dict:
    import corenet

    slots = {id(tensor): index for index, tensor in enumerate(model.inputs)}
    nodes = []
    for node in model.nodes:
        provider = registry.provider("layers", node.layer.name)
        nodes.append({
            "layer": node.layer.name,
            "config": node.layer.get_config(),
            "inputs": [slots[id(tensor)] for tensor in node.inputs],
            "distribution": provider.distribution if provider else None,
            "version": provider.version if provider else None,
        })
        slots[id(node.output)] = len(slots)
    return {
        "format": FORMAT,
        "corenet": corenet.__version__,
        "dtype": np.dtype(model.dtype).name,
        "inputs": [list(tensor.shape) for tensor in model.inputs],
        "nodes": nodes,
        "outputs": [slots[id(tensor)] for tensor in model.outputs],
        "training": dict(getattr(model, "training_info", {})),
    }


# A temporary file carries its writer's process id, so that a later save into the same
# folder can tell the leftovers of a killed writer (SIGKILL runs no cleanup) from the
# file of a save still in progress.
TEMPORARY_NAME = re.compile(r"\.corenet-save-(\d+)-[^/]*\.tmp")


# Entries a model file may carry beside the model (a checkpoint's training state):
# the model loader reads past them, corenet.checkpoint reads them.
EXTRA_PREFIX = "extra."


def save(model: Model, path: str, extra: dict | None = None) -> None:
    """Write ``model`` to ``path`` atomically (an existing file is replaced whole);
    ``extra``: more arrays to store, under names that start with ``EXTRA_PREFIX``.

    An exception during the save removes the temporary file; the temporary file of a
    save killed outright is removed by the next save into the same folder."""
    arrays = {CONFIG_ENTRY: np.frombuffer(json.dumps(model_config(model)).encode(), np.uint8)}
    for name, array in (extra or {}).items():
        if not name.startswith(EXTRA_PREFIX):
            raise ValueError(f"save: extra array {name!r} must start with {EXTRA_PREFIX!r}")
        arrays[name] = array
    for index, layer in enumerate(model.layers):
        for array in layer.parameters() + layer.state_buffers():
            arrays[f"node{index}.{array.name}"] = array.value
    write_atomically(path, lambda stream: np.savez(stream, **arrays))


def write_atomically(path: str, write) -> None:
    """``write(stream)`` into a temporary file beside ``path``, synced to disk, then
    renamed to ``path`` (corenet.save's and corenet.onnx.export's way of writing).

    An exception during the write removes the temporary file; the temporary file of a
    write killed outright is removed by the next one into the same folder."""
    check_file_name(path)
    # The rename replaces whatever has the name: run as root, an export to /dev/null
    # replaced the device with a regular file. Only a regular file is replaced.
    try:
        mode = os.stat(path).st_mode  # through symbolic links: /dev/stdout is a pipe's
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "expected a file name, not a folder", path)
    if mode is not None and not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file (a device, a pipe or a socket); "
                         f"corenet writes a new file and renames it over the old one, which "
                         f"would replace this one: give a file name")
    handle, temporary = _temporary_file_beside(path, repr(path))
    renamed = False
    try:
        # After: a missing or read-only folder is named with the path, above.
        remove_stale_temporaries(os.path.dirname(temporary))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file is 0644-like
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        renamed = True
    finally:
        if not renamed:  # any exception, KeyboardInterrupt and SystemExit included
            _remove_quietly(temporary)


def check_file_name(path: str, label: str | None = None) -> None:
    """A ValueError naming ``label`` (by default the path) for a path that names no file:
    an empty one, or one ending in a slash."""
    label = label or repr(path)
    # Else the error came at the rename, naming the temporary file ('' wrote it into the
    # parent of the working folder).
    if not path:
        raise ValueError(f"{label}: expected a file name, got an empty one")
    if path.endswith(("/", os.sep)):
        raise ValueError(f"{label}: expected a file name, not a folder (it ends in "
                         f"{path[-1]!r})")


def check_folder_writable(path: str, label: str | None = None) -> None:
    """An OSError naming ``label`` (by default the path) unless a file can be created in
    the folder of ``path``: found before a long run, not at its first save (the folder
    of /sys/x.npz exists, and root's os.access says it is writable)."""
    handle, probe = _temporary_file_beside(path, label or repr(path))
    os.close(handle)
    _remove_quietly(probe)


def _temporary_file_beside(path: str, label: str) -> tuple:
    """(handle, name) of a new temporary file in the folder of ``path``; an OSError
    naming ``label`` and the folder, not the temporary file, where none can be made."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return tempfile.mkstemp(prefix=f".corenet-save-{os.getpid()}-", suffix=".tmp",
                                dir=folder)
    except OSError as error:
        raise type(error)(f"{label}: cannot create a file in {folder}: "
                          f"{error.strerror or error}") from None


def remove_stale_temporaries(folder: str) -> None:
    """Remove the temporary files that saves killed outright left in ``folder``:
    those whose writing process no longer exists."""
    for name in os.listdir(folder):
        match = TEMPORARY_NAME.fullmatch(name)
        if match and not _process_exists(int(match[1])):
            _remove_quietly(os.path.join(folder, name))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- loading: what the file declares ------------------------------------------------

@dataclasses.dataclass
class ArrayEntry:
    """One .npy member of the archive as its header declares it (nothing read yet)."""

    info: zipfile.ZipInfo
    shape: tuple
    dtype: np.dtype
    data_offset: int  # where the data starts inside the member


def _fail(path: str, what: str, node: int | None = None, layer: str | None = None):
    where = "" if node is None else f" node {node}" + (f" ({layer!r})" if layer else "") + ":"
    raise ModelFileError(f"{path}:{where} {what}")


def _read_entries(path: str, archive: zipfile.ZipFile, file_size: int) -> dict:
    """{array name: ArrayEntry} from the zip directory and each .npy header, each
    declared size checked against what the file can hold."""
    entries = {}
    declared = 0
    for info in archive.infolist():
        # Stored members that overlap (one member's data holding the next) could make
        # a small file read as gigabytes: together they must fit in the file.
        declared += info.compress_size
        if declared > file_size:
            _fail(path, f"the archive's members declare more bytes than the file's "
                        f"{file_size}: they overlap")
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if name is None or name in entries:
            _fail(path, f"unexpected or repeated archive member {info.filename!r}")
        # corenet writes stored members; a compressed one could expand without bound.
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size \
                or not 0 <= info.header_offset <= file_size - info.compress_size:
            _fail(path, f"array {name!r} declares {info.file_size} bytes, compressed or "
                        f"beyond the file's {file_size} bytes")
        if info.flag_bits & ZIP_ENCRYPTED:
            _fail(path, f"array {name!r} is encrypted")
        entries[name] = _read_header(path, archive, info, name)
    return entries


def _read_header(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                 name: str) -> ArrayEntry:
    try:
        shape, fortran_order, dtype, data_offset = npy.read_header(archive, info)
    except npy.READ_ERRORS as error:
        _fail(path, f"array {name!r} has no readable .npy header: {error}")
    if fortran_order or dtype.hasobject or any(size < 0 for size in shape):
        _fail(path, f"array {name!r} is not a plain C-ordered array "
                    f"(dtype {dtype}, shape {shape})")
    declared = math.prod(shape) * dtype.itemsize
    if data_offset + declared != info.file_size:
        _fail(path, f"array {name!r} declares shape {shape} of {dtype} ({declared} bytes) "
                    f"but the file holds {info.file_size - data_offset} bytes for it")
    return ArrayEntry(info, tuple(shape), dtype, data_offset)


def _read_bytes(path: str, archive: zipfile.ZipFile, entry: ArrayEntry, name: str) -> bytes:
    try:
        with archive.open(entry.info) as member:
            member.read(entry.data_offset)
            data = member.read()  # the size was checked against the file: bounded
    except npy.READ_ERRORS as error:  # a CRC mismatch is found here, at the end
        _fail(path, f"array {name!r} cannot be read: {error}")
    if len(data) != entry.info.file_size - entry.data_offset:
        _fail(path, f"array {name!r} is truncated")
    return data


def _read_array(path: str, archive: zipfile.ZipFile, entry: ArrayEntry, name: str):
    data = _read_bytes(path, archive, entry, name)
    return np.frombuffer(data, entry.dtype).reshape(entry.shape).copy()


def _read_config(path: str, archive: zipfile.ZipFile, entries: dict) -> dict:
    entry = entries.pop(CONFIG_ENTRY, None)
    if entry is None:
        _fail(path, f"not a corenet model: no {CONFIG_ENTRY} entry")
    if entry.dtype != np.uint8 or len(entry.shape) != 1 or entry.shape[0] > MAX_CONFIG_BYTES:
        _fail(path, f"{CONFIG_ENTRY} must be at most {MAX_CONFIG_BYTES} bytes of uint8, "
                    f"got {entry.dtype} of shape {entry.shape}")
    try:
        config = json.loads(_read_bytes(path, archive, entry, CONFIG_ENTRY).decode())
    except npy.READ_ERRORS as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        _fail(path, f"the config is not JSON: {error}")
    if not isinstance(config, dict):
        _fail(path, f"the config must be a JSON object, got {type(config).__name__}")
    return config


# -- loading: the config's structure --------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_slots(path: str, slots, count: int, what: str, node: int | None = None) -> None:
    if not isinstance(slots, list) or not slots \
            or not all(_is_int(slot) and 0 <= slot < count for slot in slots):
        _fail(path, f"{what} must be a non-empty list of indices below {count}, "
                    f"got {slots!r}", node)


def _check_config(path: str, config: dict) -> None:
    """The config's structure: format, dtype, input shapes, nodes, outputs."""
    if config.get("format") != FORMAT:
        _fail(path, f"unknown model format {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("dtype") not in FLOAT_DTYPE_NAMES:
        _fail(path, f"dtype must be one of {FLOAT_DTYPE_NAMES}, got {config.get('dtype')!r}")
    inputs, nodes = config.get("inputs"), config.get("nodes")
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(shape, list) and shape and all(_is_int(n) and n > 0 for n in shape)
            for shape in inputs):
        _fail(path, f"inputs must be a non-empty list of shapes of positive ints, got {inputs!r}")
    if not isinstance(nodes, list):
        _fail(path, f"nodes must be a list, got {type(nodes).__name__}")
    for index, node in enumerate(nodes):
        _check_node(path, index, node, len(inputs) + index)
    _check_slots(path, config.get("outputs"), len(inputs) + len(nodes), "outputs")
    _check_training_info(path, config.get("training", {}))


def _check_training_info(path: str, info) -> None:
    """The optional record of training: a JSON object; the split seed an int, the test
    fraction a number in (0, 1), as corenet eval passes them on to the data split."""
    if not isinstance(info, dict):
        _fail(path, f"training must be a JSON object, got {type(info).__name__}")
    seed, fraction = info.get("split_seed", 0), info.get("test_fraction", 0.2)
    if not _is_int(seed) or seed < 0:
        _fail(path, f"training split_seed must be a non-negative integer, got {seed!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction < 1:
        _fail(path, f"training test_fraction must be a number in (0, 1), got {fraction!r}")


def _check_node(path: str, index: int, node, slots_before: int) -> None:
    if not isinstance(node, dict):
        _fail(path, f"must be a JSON object, got {type(node).__name__}", index)
    name = node.get("layer")
    if not isinstance(name, str) or not name:
        _fail(path, f"layer name must be a non-empty string, got {name!r}", index)
    if not isinstance(node.get("config"), dict):
        _fail(path, f"config must be a JSON object, got {node.get('config')!r}", index, name)
    for key in ("distribution", "version"):
        if not isinstance(node.get(key), (str, type(None))):
            _fail(path, f"{key} must be a string, got {node.get(key)!r}", index, name)
    # A node reads the model's inputs and the outputs of the nodes before it only.
    _check_slots(path, node.get("inputs"), slots_before, "inputs", index)


def _arrays_by_node(path: str, entries: dict, n_nodes: int, dtype: np.dtype) -> list:
    """[{array name: ArrayEntry}] per node, each array's name and dtype checked (the
    model's float dtype or a count; that it is the one its layer holds, later)."""
    by_node = [{} for _ in range(n_nodes)]
    for name, entry in entries.items():
        match = re.fullmatch(r"node(\d+)\.(\w+)", name)
        if not match or int(match[1]) >= n_nodes:
            _fail(path, f"array {name!r} belongs to no node of the model")
        if entry.dtype != dtype and entry.dtype != COUNT_DTYPE:
            _fail(path, f"array {name!r} has dtype {entry.dtype}, the model's is {dtype}")
        by_node[int(match[1])][match[2]] = entry
    return by_node


# -- loading: building the model ------------------------------------------------------

def _layer_class(path: str, node: dict) -> type:
    name = node["layer"]
    try:
        return registry.layer(name)
    except PluginError as error:
        wanted = node.get("distribution")
        for info in registry.disabled():
            if info.distribution == wanted:
                raise PluginError(f"{path} needs layer {name!r} from {wanted}, whose plugin "
                                  f"{info.name!r} is installed but disabled by "
                                  f"CORENET_DISABLE_PLUGINS") from None
        if not wanted:
            raise PluginError(f"{path} needs layer {name!r}, which no installed plugin "
                              f"provides: {error}") from None
        version = f" (saved with version {node['version']})" if node.get("version") else ""
        raise PluginError(f"{path} needs layer {name!r} from {wanted}{version}, "
                          f"which is not installed: pip install {wanted}") from None


def _layer_arrays(layer) -> dict:
    """{name: (kind, array)} of what a built layer holds: its parameters and buffers."""
    arrays = {parameter.name: ("parameter", parameter) for parameter in layer.parameters()}
    arrays.update((buffer.name, ("buffer", buffer)) for buffer in layer.state_buffers())
    return arrays


def _check_arrays(path: str, index: int, node: dict, expected: dict, saved: dict) -> None:
    """The file's arrays for a node are exactly the ones the layer makes, shape for shape.
    ``expected``: {name: (kind, shape)}, kind "parameter" or "buffer"."""
    name = node["layer"]
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or extra:
        _fail(path, f"arrays do not match the layer's parameters and buffers "
                    f"{sorted(expected)}: missing {missing}, unexpected {extra}", index, name)
    for array, (kind, shape) in expected.items():
        if tuple(saved[array].shape) != tuple(shape):
            _fail(path, f"{kind} {array!r} has shape {saved[array].shape} in the "
                        f"file, the config makes {tuple(shape)}", index, name)


def _build_layer(path: str, index: int, node: dict, cls: type, saved: dict):
    """The node's layer, its arrays checked against the file before it is built."""
    name, config = node["layer"], node["config"]
    try:
        declared = cls.parameter_shapes(**config) if hasattr(cls, "parameter_shapes") else None
        if declared is not None:
            expected = {array: ("parameter", shape) for array, shape in declared.items()}
            states = cls.state_shapes(**config) if hasattr(cls, "state_shapes") else {}
            expected.update((array, ("buffer", shape)) for array, shape in states.items())
            _check_arrays(path, index, node, expected, saved)
        layer = cls(**config)
    except ModelFileError:
        raise
    except Exception as error:  # the layer's own check of its config
        _fail(path, f"config {config!r} is rejected: {type(error).__name__}: {error}",
              index, name)
    made = _layer_arrays(layer)
    _check_arrays(path, index, node,
                  {array: (kind, held.value.shape) for array, (kind, held) in made.items()},
                  saved)
    for array, (kind, held) in made.items():
        if held.value.dtype != saved[array].dtype:
            _fail(path, f"{kind} {array!r} is {saved[array].dtype} in the file, the config "
                        f"makes {held.value.dtype}", index, name)
    return layer


def load(path: str) -> Model:
    """Rebuild a model saved with ``save``; names the plugin to install if one is missing.

    A missing or unreadable file raises OSError (FileNotFoundError ...); a malformed
    one, ModelFileError."""
    return load_with_extra(path)[0]


def load_with_extra(path: str) -> tuple:
    """(model, {name: array}): the model and the extra arrays saved beside it, each
    read with the same checks as the model's."""
    with open(path, "rb") as stream:
        file_size = os.fstat(stream.fileno()).st_size
        try:
            archive = zipfile.ZipFile(stream)
        except npy.READ_ERRORS as error:
            _fail(path, f"not a corenet model (not a readable zip archive: {error})")
        with archive:
            return _load_archive(path, archive, file_size)


def _load_archive(path: str, archive: zipfile.ZipFile, file_size: int) -> tuple:
    entries = _read_entries(path, archive, file_size)
    extra = {name: _read_array(path, archive, entries.pop(name), name)
             for name in [name for name in entries if name.startswith(EXTRA_PREFIX)]}
    config = _read_config(path, archive, entries)
    _check_config(path, config)
    by_node = _arrays_by_node(path, entries, len(config["nodes"]), np.dtype(config["dtype"]))
    tensors = [Input(tuple(shape)) for shape in config["inputs"]]
    inputs = list(tensors)
    for index, node in enumerate(config["nodes"]):
        layer = _build_layer(path, index, node, _layer_class(path, node), by_node[index])
        for array, (kind, held) in _layer_arrays(layer).items():
            held.value = _read_array(path, archive, by_node[index][array],
                                     f"node{index}.{array}")
            # A count (batch norm's num_batches_tracked) is never negative: a momentum=None
            # batch norm divides by it plus one (-1 was a ZeroDivisionError in training).
            if held.value.dtype == COUNT_DTYPE and held.value.size and held.value.min() < 0:
                _fail(path, f"{kind} {array!r} is a count, got {held.value.min()}", index,
                      node["layer"])
            if kind == "parameter":
                held.grad = np.zeros_like(held.value)
        try:
            tensors.append(layer(*[tensors[slot] for slot in node["inputs"]]))
        except (ValueError, TypeError) as error:  # ShapeError, DTypeError, reuse
            _fail(path, f"cannot take inputs {node['inputs']}: {error}", index, node["layer"])
    try:
        model = Model(inputs, [tensors[slot] for slot in config["outputs"]])
    except (ValueError, TypeError) as error:
        _fail(path, f"the graph is not a valid model: {error}")
    model.training_info = dict(config.get("training", {}))
    return model, extra
