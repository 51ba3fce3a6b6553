"""Builds corenet's Cython extensions: the core kernels and the built-in plugins.

Environment switches:
  CORENET_PORTABLE=1      no -march=native (a binary to run on other CPUs)
  CORENET_CYTHON_CHECKS=1 bounds and wraparound checks back on, for debugging
  CORENET_WIDE_TILE=1     AVX-512's GEMM tile (8 x 32 floats) on any CPU, slowly: lets the
                          tests check that layout on a machine without AVX-512
"""
import os
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

PLUGIN_PACKAGES = ["corenet_dense", "corenet_activations", "corenet_losses", "corenet_conv"]

# module name -> source; plugins live under plugins/<package>/.
EXTENSIONS = {
    "corenet.kernels.threads": "corenet/kernels/threads.pyx",
    "corenet.kernels.gemm": "corenet/kernels/gemm.pyx",
    "corenet.kernels.optim": "corenet/kernels/optim.pyx",
    "corenet.kernels.elementwise": "corenet/kernels/elementwise.pyx",
    "corenet.kernels.peak": "corenet/kernels/peak.pyx",
    "corenet_dense.linear": "plugins/corenet_dense/linear.pyx",
    "corenet_dense.merge": "plugins/corenet_dense/merge.pyx",
    "corenet_dense.maxout": "plugins/corenet_dense/maxout.pyx",
    "corenet_dense.dropout": "plugins/corenet_dense/dropout.pyx",
    "corenet_dense.normalization": "plugins/corenet_dense/normalization.pyx",
    "corenet_activations.pointwise": "plugins/corenet_activations/pointwise.pyx",
    "corenet_activations.softmax": "plugins/corenet_activations/softmax.pyx",
    "corenet_losses.losses": "plugins/corenet_losses/losses.pyx",
    "corenet_conv.vol2col": "plugins/corenet_conv/vol2col.pyx",
    "corenet_conv.direct": "plugins/corenet_conv/direct.pyx",
    "corenet_conv.conv": "plugins/corenet_conv/conv.pyx",
    "corenet_conv.pool": "plugins/corenet_conv/pool.pyx",
}

# Flags for one extension only. The optimizer loops take square roots, which GCC
# vectorizes only when sqrt need not set errno (no corenet code reads errno).
EXTRA_FLAGS = {"corenet.kernels.optim": ["-fno-math-errno"]}
# GCC turns a copy loop into a call to memmove or memset; vol2col's rows are often
# a few elements long (a 10-wide image row), where the call costs more than the copy.
EXTRA_FLAGS["corenet_conv.vol2col"] = ["-fno-tree-loop-distribute-patterns"]


OPENMP_PROGRAM = "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n"
PLAIN_PROGRAM = "int main(void) { return 0; }\n"


def compiler_accepts(flags, source=PLAIN_PROGRAM):
    """True when the C compiler builds ``source`` with these flags."""
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "probe.c")
        with open(path, "w") as handle:
            handle.write(source)
        command = compiler.split() + [path, "-o", os.path.join(folder, "probe")] + flags
        try:
            result = subprocess.run(command, capture_output=True)
        except OSError:
            return False
        return result.returncode == 0


def compile_flags():
    flags = ["-O3", "-std=gnu11"]
    if os.environ.get("CORENET_PORTABLE", "") not in ("", "0"):
        pass
    elif compiler_accepts(["-march=native"]):
        flags.append("-march=native")
    if os.environ.get("CORENET_WIDE_TILE", "") not in ("", "0"):
        flags.append("-DCN_WIDE_TILE")
    openmp = compiler_accepts(["-fopenmp"], OPENMP_PROGRAM)
    if not openmp:
        print("corenet: the compiler has no OpenMP; building serial kernels", file=sys.stderr)
    return flags, (["-fopenmp"] if openmp else [])


# Included by .pyx files directly or through each other (microkernel.h includes
# vector_math.h), which Cython does not follow: an edit rebuilds every module.
HEADERS = ["corenet/kernels/microkernel.h", "corenet/kernels/vector_math.h",
           "plugins/corenet_conv/direct.h"]


def extensions():
    flags, openmp = compile_flags()
    described = " ".join(flags + openmp)
    checks = os.environ.get("CORENET_CYTHON_CHECKS", "") not in ("", "0")
    modules = [
        Extension(
            name,
            [source],
            depends=HEADERS,
            include_dirs=[numpy.get_include(), "corenet/kernels"],
            extra_compile_args=flags + openmp + EXTRA_FLAGS.get(name, []),
            extra_link_args=openmp,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                           ("CORENET_COMPILE_FLAGS", '"%s"' % described)],
        )
        for name, source in EXTENSIONS.items()
    ]
    return cythonize(
        modules,
        include_path=[".", "plugins"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": checks,
            # Off for speed; it also applies to Python objects in .pyx files: no x[-1] there.
            "wraparound": checks,
            "initializedcheck": checks,
            "cdivision": not checks,
        },
    )


setup(
    packages=["corenet", "corenet.diagnostics", "corenet.kernels", "corenet.onnx"] + PLUGIN_PACKAGES,
    package_dir={name: f"plugins/{name}" for name in PLUGIN_PACKAGES},
    package_data={
        "corenet": ["data/*.npz", "data/*.txt"],
        "corenet.kernels": ["*.pxd", "*.h"],
        "corenet_conv": ["*.pxd"],
        "corenet_dense": ["*.pxd"],
    },
    ext_modules=extensions(),
)
