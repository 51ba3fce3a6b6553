"""The thread count shared by every corenet kernel.

Kernels pass it to ``prange(..., num_threads=n)``; it is also handed to the
OpenMP runtime so that tools such as threadpoolctl see the same number.

After ``fork()`` the child runs every kernel on one thread: GNU OpenMP's thread
pool does not survive a fork (the child would wait forever for pool threads
that were not copied), and a region of one thread does not use the pool. A
``pthread_atfork`` child handler sets the count to 1 before any Python code of
the child runs, as PyTorch does.
"""
import os
import warnings

from corenet.kernels._openmp cimport CORENET_OPENMP, omp_get_max_threads, omp_set_num_threads

cdef extern from *:
    """
    #include <pthread.h>

    /* The count lives in C so that the fork handler, which runs in the child before any
       Python code, can reach it. */
    static int corenet_num_threads = 1;
    static int corenet_in_forked_child = 0;

    static void corenet_after_fork_in_child(void) {
        corenet_num_threads = 1;
        corenet_in_forked_child = 1;
    }

    static int corenet_install_fork_handler(void) {
        return pthread_atfork(NULL, NULL, corenet_after_fork_in_child);
    }
    """
    int corenet_num_threads
    int corenet_in_forked_child
    int corenet_install_fork_handler() noexcept nogil


cdef int num_threads() noexcept nogil:
    # A limit set through the OpenMP runtime (threadpoolctl's threadpool_limits)
    # lowers corenet's count too; corenet.set_num_threads sets both.
    cdef int limit = omp_get_max_threads()
    return limit if limit < corenet_num_threads else corenet_num_threads


def in_forked_child() -> bool:
    """True in a process made by fork() from one that had imported corenet: its kernels
    run on one thread."""
    return bool(corenet_in_forked_child)


cdef int threads_for(Py_ssize_t work, Py_ssize_t grain) noexcept nogil:
    # Each thread gets at least a grain of work: a region whose second thread
    # would get less waits longer for it (waking it, the barrier) than it saves.
    cdef int limit = num_threads()
    cdef Py_ssize_t worth = work // grain if grain > 0 else limit
    if worth < 1:
        return 1
    return limit if worth >= limit else <int>worth


def openmp_enabled() -> bool:
    """True when the kernels were compiled with OpenMP."""
    return bool(CORENET_OPENMP)


# More than the cores of any machine corenet targets: each thread is an OS thread, and
# the kernels' scratch grows with the count (2**31 overflowed a C int before).
MAX_THREADS = 1024


def _available_cpus() -> int:
    try:
        return min(len(os.sched_getaffinity(0)), MAX_THREADS)
    except AttributeError:  # not on Linux
        return min(os.cpu_count() or 1, MAX_THREADS)


def _default_num_threads() -> int:
    for variable in ("CORENET_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "").strip()
        if value:
            try:
                count = int(value.split(",")[0])
            except ValueError:
                count = 0
            if 1 <= count <= MAX_THREADS:
                return count
            # A warning, not an error, as the OpenMP runtime treats a bad OMP_NUM_THREADS:
            # an error here would break `import corenet`, and so every corenet command,
            # with a traceback before any of corenet's own error handling could run.
            warnings.warn(f"corenet: {variable} must be an integer from 1 to {MAX_THREADS}, "
                          f"got {value!r}; it is ignored", RuntimeWarning, stacklevel=2)
    return _available_cpus()


def set_num_threads(n) -> None:
    """Use ``n`` threads in every corenet kernel (1 without OpenMP, and 1 in a child made
    by fork(), where more would hang: a RuntimeWarning says so)."""
    global corenet_num_threads
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads expects an integer from 1 to {MAX_THREADS}, "
                         f"got {n!r}")
    if corenet_in_forked_child and n > 1:
        warnings.warn("corenet: a child made by fork() runs kernels on one thread (the "
                      "OpenMP thread pool does not survive fork); use the 'spawn' start "
                      "method for more", RuntimeWarning, stacklevel=2)
        n = 1
    corenet_num_threads = n if CORENET_OPENMP else 1
    omp_set_num_threads(corenet_num_threads)


def get_num_threads() -> int:
    """The number of threads corenet's kernels use."""
    return num_threads()


if corenet_install_fork_handler() != 0:
    raise RuntimeError("corenet: pthread_atfork failed to install the fork handler")
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
