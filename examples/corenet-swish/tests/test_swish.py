"""What a plugin author runs: corenet's conformance kit, plus a reference check, plus
the ONNX export checked with onnxruntime."""
import numpy as np
import pytest

import corenet as cn

import corenet.layers as L
from corenet.testing import check_layer


def test_conformance():
    check_layer(L.Swish, {}, [(7,)])


def test_matches_numpy():
    x = np.linspace(-5, 5, 11)[None, :]
    np.testing.assert_allclose(L.Swish().forward(x), x / (1 + np.exp(-x)), rtol=1e-12)


def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnx", reason='the ONNX export needs pip install "corenet[onnx]"')
    runtime = pytest.importorskip("onnxruntime", reason='needs pip install "corenet[onnx]"')
    import corenet.onnx

    model = cn.Sequential(L.Linear(5, 4), L.Swish())
    corenet.onnx.export(model, str(tmp_path / "swish.onnx"))
    session = runtime.InferenceSession(str(tmp_path / "swish.onnx"),
                                       providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32) * 3
    (got,) = session.run(None, {"input": x})
    np.testing.assert_allclose(got, model.forward(x), rtol=1e-5, atol=1e-5)
    import onnx

    graph = onnx.load(str(tmp_path / "swish.onnx")).graph
    assert [node.op_type for node in graph.node] == ["Gemm", "Sigmoid", "Mul"]
