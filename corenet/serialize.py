"""Saving and loading a model as one .npz file, without pickle.

The file holds the graph's config as JSON (layer names and configs, the
plugin distribution and version of each layer, corenet's version, the dtype)
and one array per parameter. It is written to a temporary file in the same
folder and renamed over the target, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from corenet.errors import PluginError
from corenet.graph import Input, Model
from corenet.registry import registry

FORMAT = "corenet-model/1"


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
    }


def save(model: Model, path: str) -> None:
    """Write ``model`` to ``path`` atomically (an existing file is replaced whole)."""
    arrays = {"__config__": np.frombuffer(json.dumps(model_config(model)).encode(), np.uint8)}
    for index, layer in enumerate(model.layers):
        for parameter in layer.parameters():
            arrays[f"node{index}.{parameter.name}"] = parameter.value
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".corenet-", suffix=".tmp", dir=folder)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file is 0644-like
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path: str) -> Model:
    """Rebuild a model saved with ``save``; names the plugin to install if one is missing."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "__config__" not in archive.files:
                raise ValueError("no __config__ entry")
            config = json.loads(archive["__config__"].tobytes().decode())
            arrays = {name: archive[name] for name in archive.files if name != "__config__"}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, AttributeError) as error:
        raise ValueError(f"{path} is not a corenet model: {error}") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown model format {config.get('format')!r}, "
                         f"expected {FORMAT!r}")
    tensors = [Input(tuple(shape)) for shape in config["inputs"]]
    inputs = list(tensors)
    for index, node in enumerate(config["nodes"]):
        try:
            cls = registry.layer(node["layer"])
        except PluginError:
            wanted = node.get("distribution") or "the plugin that provides it"
            version = f" (saved with version {node['version']})" if node.get("version") else ""
            raise PluginError(f"{path} needs layer {node['layer']!r} from {wanted}{version}, "
                              f"which is not installed: pip install {wanted}") from None
        layer = cls(**node["config"])
        for parameter in layer.parameters():
            value = arrays[f"node{index}.{parameter.name}"]
            if value.shape != parameter.value.shape:
                raise ValueError(f"{path}: {node['layer']} parameter {parameter.name} has "
                                 f"shape {value.shape}, the config makes {parameter.value.shape}")
            parameter.value = np.ascontiguousarray(value)
            parameter.grad = np.zeros_like(parameter.value)
        tensors.append(layer(*[tensors[slot] for slot in node["inputs"]]))
    model = Model(inputs, [tensors[slot] for slot in config["outputs"]])
    return model
