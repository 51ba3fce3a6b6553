import corenet
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    packages=["corenet_swish"],
    ext_modules=cythonize(
        [Extension("corenet_swish.swish", ["corenet_swish/swish.pyx"],
                   include_dirs=[numpy.get_include()],
                   extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])],
        include_path=[corenet.get_include()],  # corenet/kernels/*.pxd
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    ),
)
