"""corenet: a deep-learning framework for the CPU.

A small Python core (the layer protocol, a graph executor, the plugin
registry, losses, optimizers, training loop) over Cython kernels; layers and
losses come from plugins found through the ``corenet`` entry-point group, the
first time the registry is used (``import corenet`` loads none).
"""
from corenet.errors import DTypeError, ModelFileError, PluginError, ShapeError, StateDictError
from corenet.graph import Input, Model, Sequential, SymbolicTensor
from corenet.hookspecs import hookimpl
from corenet.kernels.threads import get_num_threads, set_num_threads
from corenet.layer import Buffer, Layer, Parameter
from corenet.loss import Loss
from corenet.registry import PLUGIN_API

__version__ = "0.1.0"


def get_include() -> str:
    """The folder to give Cython's include_path so that a plugin can
    ``from corenet.kernels.gemm cimport gemm`` (it holds corenet/kernels/*.pxd)."""
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def show_config() -> dict:
    """Print (and return) how corenet was built and how it runs here."""
    from corenet.info import build_info

    info = build_info()
    for key, value in info.items():
        print(f"{key:>16}: {value}")
    return info


def __getattr__(name):
    # The submodules that reach the registry are imported on first use, and so are
    # corenet.save and corenet.load (corenet.serialize's), which need it.
    import importlib

    if name in ("data", "diagnostics", "init", "interop", "layers", "losses", "onnx", "optim",
                "random", "serialize", "testing", "train"):
        return importlib.import_module(f"corenet.{name}")
    if name in ("save", "load"):
        return getattr(importlib.import_module("corenet.serialize"), name)
    raise AttributeError(f"module 'corenet' has no attribute {name!r}")


__all__ = ["Buffer", "DTypeError", "Input", "Layer", "Loss", "Model", "ModelFileError",
           "PLUGIN_API", "Parameter", "PluginError", "Sequential", "ShapeError", "StateDictError",
           "SymbolicTensor",
           "get_include", "get_num_threads", "hookimpl", "load", "save", "set_num_threads",
           "show_config"]
