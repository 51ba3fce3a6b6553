# A shim so that every kernel builds with or without OpenMP: without it the
# prange loops run serially and these helpers report one thread.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CORENET_OPENMP 1
    #else
    #define CORENET_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static void omp_set_num_threads(int n) { (void)n; }
    static int omp_get_thread_num(void) { return 0; }
    #endif
    """
    bint CORENET_OPENMP
    int omp_get_max_threads() noexcept nogil
    void omp_set_num_threads(int n) noexcept nogil
    int omp_get_thread_num() noexcept nogil
