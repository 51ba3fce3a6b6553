"""The builds other than this machine's: a compiler that refuses -fopenmp still builds
corenet, with serial kernels that give the same results; a portable build (no native
tuning) builds; and AVX-512's GEMM tile, forced on this CPU, passes the GEMM and
convolution tests, so that layout is checked on machines without AVX-512."""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source checkout")
def test_a_portable_serial_build_with_the_wide_tile_passes_the_kernel_tests(tmp_path):
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
    # One build for the three variants: each takes two minutes on two cores.
    env = dict(os.environ, CC=str(compiler), LDSHARED=f"{compiler} -shared",
               CORENET_PORTABLE="1", CORENET_WIDE_TILE="1")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"],
                           cwd=source, capture_output=True, text=True, env=env, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "building serial kernels" in build.stderr
    built = dict(os.environ, PYTHONPATH=f"{source}{os.pathsep}{source / 'plugins'}")
    check = subprocess.run([sys.executable, "-c", textwrap.dedent("""\
        import corenet
        from corenet.kernels.threads import openmp_enabled
        from corenet.kernels.gemm import tile_shape
        assert corenet.__file__.startswith(%r)
        assert not openmp_enabled() and corenet.get_num_threads() == 1
        print(*tile_shape("float32"))
    """ % str(source))], cwd=source, capture_output=True, text=True, timeout=300, env=built)
    assert check.stdout.split() == ["8", "32"], check.stderr
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_gemm.py", "tests/test_conv.py"],
                           cwd=source, capture_output=True, text=True, timeout=900, env=built)
    assert tests.returncode == 0, tests.stdout[-3000:]
