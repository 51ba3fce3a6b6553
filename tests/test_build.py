"""The build without OpenMP: a compiler that refuses -fopenmp still builds corenet,
with serial kernels that give the same results."""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source checkout")
def test_a_compiler_without_openmp_builds_serial_kernels(tmp_path):
    pytest.importorskip("Cython")
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "*.so", "*.c", "build", ".ci-venv", "*.egg-info", ".benchmarks"))
    compiler = tmp_path / "cc-without-openmp"
    compiler.write_text(textwrap.dedent("""\
        #!/bin/sh
        for arg in "$@"; do
          case "$arg" in -fopenmp) echo "no OpenMP here" >&2; exit 1;; esac
        done
        exec gcc "$@"
    """))
    compiler.chmod(0o755)
    env = dict(os.environ, CC=str(compiler), LDSHARED=f"{compiler} -shared")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"],
                           cwd=source, capture_output=True, text=True, env=env, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "building serial kernels" in build.stderr
    check = subprocess.run([sys.executable, "-c", textwrap.dedent("""\
        import numpy as np, corenet
        from corenet.kernels.threads import openmp_enabled
        from corenet.kernels.gemm import matmul
        a = np.random.default_rng(0).standard_normal((300, 200))
        assert not openmp_enabled() and corenet.get_num_threads() == 1
        assert np.allclose(matmul(a, a, trans_b=True), a @ a.T)
        print("serial ok")
    """)], cwd=source, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=f"{source}{os.pathsep}{source / 'plugins'}"))
    assert check.stdout.strip() == "serial ok", check.stderr
