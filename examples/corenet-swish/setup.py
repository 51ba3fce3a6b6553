import corenet
import numpy
from Cython.Build import cythonize
from corenet.kernels.threads import compile_flags
from setuptools import Extension, setup

# The flags corenet itself was built with: -O3, -fopenmp when the compiler has OpenMP,
# -march=native unless corenet was built with CORENET_PORTABLE=1 (docs/plugins.md, §7).
flags = compile_flags().split()

setup(
    ext_modules=cythonize(
        [Extension("corenet_swish.swish", ["src/corenet_swish/swish.pyx"],
                   include_dirs=[numpy.get_include()],
                   extra_compile_args=flags,
                   extra_link_args=[flag for flag in flags if flag == "-fopenmp"])],
        include_path=[corenet.get_include()],  # corenet/kernels/*.pxd
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    ),
)
