"""ONNX export and import: ``export(model, path)`` and ``load(path)``.

>>> import os, tempfile, corenet as cn, corenet.layers as L, corenet.onnx
>>> model = cn.Sequential(L.Linear(4, 3), L.ReLU())
>>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
>>> corenet.onnx.export(model, path)
>>> [layer.name for layer in corenet.onnx.load(path).layers]
['linear', 'relu']

The export computes what ``model.predict`` does (evaluation mode: dropout is the
identity, batch norm uses its running statistics); ``load`` returns the model in
evaluation mode.

The ``onnx`` package is optional (``pip install "corenet[onnx]"`` brings it and
onnxruntime); corenet imports without it, and these functions say what to install.
Each layer converts through a table from layer name to function (``EXPORTERS`` in
corenet.onnx.export, ``IMPORTERS`` by ONNX operator in corenet.onnx.load); a plugin
adds the export of its own layers through the ``corenet_onnx_exporters`` hook.
"""
from corenet.onnx.export import DEFAULT_OPSET, EXPORTERS, export
from corenet.onnx.load import IMPORTERS, load

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "IMPORTERS", "export", "load"]
