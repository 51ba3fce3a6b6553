"""The FMA peak of this CPU, measured: what the benchmarks divide their rates by.

Each thread runs twelve independent chains of vector FMAs (enough to hide the
FMA latency on two pipes), each chain started from its own value, hidden from
the compiler so that it can neither merge chains nor fold one. The rate is that
of the widest registers the kernels are compiled for (corenet.show_config()'s
SIMD width).
"""
import time

from cython.parallel cimport prange

from corenet.kernels.threads cimport num_threads
from corenet.kernels.threads import MAX_THREADS, in_forked_child

cdef extern from *:
    """
    #include "microkernel.h"
    static float cn_fma_chains(long iterations)
    {
        /* Register-wide vectors: an asm operand must fit one register. */
        cn_vf acc[12];
        cn_vf scale = cn_splat(0.9999999f), step = cn_splat(1e-7f);
        /* The compiler must not know the values: it folded the chain that starts
         * at 1, a fixed point of x * scale + step in float32, and ran 11 FMAs
         * where 12 were counted (a peak 9 % too high). */
        for (int c = 0; c < 12; ++c) {
            acc[c] = cn_splat((float)(c + 1));
            __asm__("" : "+x"(acc[c]));
        }
        __asm__("" : "+x"(scale), "+x"(step));
        for (long i = 0; i < iterations; ++i) {
            #pragma GCC unroll 12
            for (int c = 0; c < 12; ++c) acc[c] = acc[c] * scale + step;
        }
        cn_vf total = {0};
        for (int c = 0; c < 12; ++c) total += acc[c];
        return total[0];
    }
    #define CN_FLOATS_PER_VECTOR CN_LANES
    """
    float cn_fma_chains(long iterations) noexcept nogil
    int CN_FLOATS_PER_VECTOR


def fma_peak_gflops(threads=None, seconds=0.05):
    """float32 GFLOPS of the FMA loop on ``threads`` threads (corenet's count by default),
    the best of ten runs of about ``seconds`` each (on a shared machine a run can lose
    a core to another process; the best is the CPU's rate)."""
    # No annotations: Cython would convert by them (2.5 threads to 2) before the checks.
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):
        raise ValueError(f"fma_peak_gflops: threads must be an integer from 1 to "
                         f"{MAX_THREADS}, got {threads!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not 0 < seconds <= 60:
        raise ValueError(f"fma_peak_gflops: seconds must be a number in (0, 60], "
                         f"got {seconds!r}")
    if threads is not None and threads > 1 and in_forked_child():
        # The OpenMP pool does not survive fork(): more than one thread would hang.
        raise RuntimeError(f"fma_peak_gflops: a child made by fork() runs one thread, "
                           f"got threads={threads}")
    cdef int n = num_threads() if threads is None else threads
    cdef long iterations = 1 << 16
    cdef int task
    cdef float sink = 0
    best = 0.0
    for _ in range(10):
        start = time.perf_counter()
        with nogil:
            for task in prange(n, num_threads=n, schedule='static'):
                sink += cn_fma_chains(iterations)
        elapsed = time.perf_counter() - start
        best = max(best, n * iterations * 12 * CN_FLOATS_PER_VECTOR * 2 / elapsed / 1e9)
        if elapsed < seconds:  # too short to time well: run longer next time
            iterations = int(iterations * seconds / max(elapsed, 1e-6)) + 1
    return best
