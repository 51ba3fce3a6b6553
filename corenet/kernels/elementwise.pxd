from cython cimport floating

# total[i] += x[i] for i < size, parallel over i.
cdef void add_into(floating* total,     # IN/OUT
                   const floating* x,   # IN
                   Py_ssize_t size) noexcept nogil
