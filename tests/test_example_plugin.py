"""The example third-party plugin builds against the installed corenet, is found
through its entry point, and passes the conformance kit."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "corenet-swish"


@pytest.mark.skipif(not EXAMPLE.exists(), reason="needs the source checkout")
def test_example_plugin_installs_registers_and_conforms(tmp_path):
    pytest.importorskip("Cython")
    build = tmp_path / "build"
    target = tmp_path / "site"
    import shutil

    shutil.copytree(EXAMPLE, build)  # build outside the checkout, leaving it clean
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
         "--target", str(target), str(build)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=str(target))
    listing = subprocess.run([sys.executable, "-m", "corenet.cli", "plugins"], cwd=tmp_path,
                             capture_output=True, text=True, env=env, timeout=300)
    assert "swish  (corenet-swish 0.1.0)" in listing.stdout, listing.stderr
    assert "layers: swish" in listing.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(build / "tests")], cwd=tmp_path, capture_output=True,
                           text=True, env=env, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:]
    # Its ONNX test runs where onnx and onnxruntime are installed (the same python).
    has_onnx = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))
    assert ("3 passed" if has_onnx else "2 passed, 1 skipped") in tests.stdout, tests.stdout
