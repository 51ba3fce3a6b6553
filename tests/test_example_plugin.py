"""The example third-party plugin builds against the installed corenet, is found
through its entry point, and passes the conformance kit."""
import importlib.util
import pathlib
import shutil

import pytest

from plugin_install import install_plugin, run

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "corenet-swish"


@pytest.mark.skipif(not EXAMPLE.exists(), reason="needs the source checkout")
def test_example_plugin_installs_registers_and_conforms(tmp_path):
    pytest.importorskip("Cython")
    build = tmp_path / "build"
    shutil.copytree(EXAMPLE, build)  # build outside the checkout, leaving it clean
    env = install_plugin(build, tmp_path / "site")
    listing = run(["-m", "corenet.cli", "plugins"], tmp_path, env)
    assert "swish  (corenet-swish 0.1.0)" in listing.stdout, listing.stderr
    assert "layers: swish" in listing.stdout
    tests = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(build / "tests")],
                tmp_path, env)
    assert tests.returncode == 0, tests.stdout[-3000:]
    # Its ONNX test runs where onnx and onnxruntime are installed (the same python).
    has_onnx = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))
    assert ("3 passed" if has_onnx else "2 passed, 1 skipped") in tests.stdout, tests.stdout
