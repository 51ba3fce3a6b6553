# The one thread setting every kernel reads. It is decided in Python
# (corenet.set_num_threads) and read here without the GIL.

cdef int num_threads() noexcept nogil

# Threads for a loop of `work` units: as many as get a grain each (at least one),
# since spreading tiny work costs more in wake-ups and barriers than it saves.
cdef int threads_for(Py_ssize_t work, Py_ssize_t grain) noexcept nogil
