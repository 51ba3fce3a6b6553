"""The thread count shared by every corenet kernel.

Kernels pass it to ``prange(..., num_threads=n)``; it is also handed to the
OpenMP runtime so that tools such as threadpoolctl see the same number.
"""
import os

from corenet.kernels._openmp cimport CORENET_OPENMP, omp_get_max_threads, omp_set_num_threads

cdef int _num_threads = 1


cdef int num_threads() noexcept nogil:
    # A limit set through the OpenMP runtime (threadpoolctl's threadpool_limits)
    # lowers corenet's count too; corenet.set_num_threads sets both.
    cdef int limit = omp_get_max_threads()
    return limit if limit < _num_threads else _num_threads


cdef int threads_for(Py_ssize_t work, Py_ssize_t grain) noexcept nogil:
    if work < grain:
        return 1
    return num_threads()


def openmp_enabled() -> bool:
    """True when the kernels were compiled with OpenMP."""
    return bool(CORENET_OPENMP)


def _default_num_threads() -> int:
    for variable in ("CORENET_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "").strip()
        if value:
            try:
                count = int(value.split(",")[0])
            except ValueError:
                raise ValueError(f"{variable} must be a positive integer, got {value!r}") from None
            if count < 1:
                raise ValueError(f"{variable} must be a positive integer, got {value!r}")
            return count
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_num_threads(n) -> None:
    """Use ``n`` threads in every corenet kernel (1 without OpenMP)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads expects a positive integer, got {n!r}")
    _num_threads = n if CORENET_OPENMP else 1
    omp_set_num_threads(_num_threads)


def get_num_threads() -> int:
    """The number of threads corenet's kernels use."""
    return num_threads()


set_num_threads(_default_num_threads())


cdef extern from *:
    """
    #ifndef CORENET_COMPILE_FLAGS
    #define CORENET_COMPILE_FLAGS "unknown"
    #endif
    """
    const char* CORENET_COMPILE_FLAGS


def compile_flags() -> str:
    """The C compiler flags the kernels were built with."""
    return CORENET_COMPILE_FLAGS.decode()
