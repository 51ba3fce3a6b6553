"""Dropout, inverted: in training each element is zeroed with probability p and the
others scaled by 1/(1 − p), so evaluation (the identity) needs no rescaling.

The mask is a function of one 64-bit key, drawn from corenet.random at each
forward in training, and of the element's index: element i is kept when
splitmix64(key + (i + 1)·0x9E3779B97F4A7C15) >> 11 ≥ p·2⁵³ (its top 53 bits
as a uniform number in [0, 1), at least p). So ``corenet.random.seed(n)``
repeats a run exactly, any thread computes any element, and backward applies
the very mask forward drew without storing it.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint64_t

from corenet.kernels.threads cimport threads_for

from corenet import random
from corenet.layer import Layer, check_grad, check_input, check_lengths, require_forward

cnp.import_array()

cdef enum:
    GRAIN = 1 << 15  # elements below which one thread runs
    CHUNK = 1 << 12  # elements a thread takes at a time

cdef uint64_t GOLDEN_GAMMA = 0x9E3779B97F4A7C15ULL


cdef inline uint64_t splitmix64(uint64_t state) noexcept nogil:
    """The output function of SplitMix64 (Steele, Lea and Flood 2014)."""
    state = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9ULL
    state = (state ^ (state >> 27)) * 0x94D049BB133111EBULL
    return state ^ (state >> 31)


cdef void scale_kept(const floating* source, floating* target, Py_ssize_t size,
                     uint64_t key, uint64_t threshold, floating scale) noexcept nogil:
    """target[i] = source[i] · scale where element i is kept, source[i] · 0 where not
    (a NaN stays NaN, as in PyTorch). Forward passes x, backward dL/dy."""
    cdef Py_ssize_t chunk, i, start
    cdef uint64_t bits
    for chunk in prange((size + CHUNK - 1) // CHUNK, num_threads=threads_for(size, GRAIN),
                        schedule='static'):
        start = chunk * CHUNK
        for i in range(start, min(start + CHUNK, size)):
            bits = splitmix64(key + <uint64_t>(i + 1) * GOLDEN_GAMMA) >> 11
            target[i] = source[i] * (scale if bits >= threshold else 0)


def apply_mask(const floating[::1] source, floating[::1] target, uint64_t key, double p):
    """target = source masked and scaled by the mask of ``key`` (flat arrays)."""
    cdef uint64_t threshold
    cdef floating scale
    if target.shape[0] != source.shape[0]:
        check_lengths("apply_mask", target=(target.shape[0], source.shape[0]))
    if not 0 <= p < 1:  # before the conversions below: a NaN or negative one is undefined
        raise ValueError(f"apply_mask: p must be in [0, 1), got {p}")
    if source.shape[0] == 0:
        return
    threshold = <uint64_t>(p * 9007199254740992.0)  # p · 2⁵³
    scale = <floating>(1.0 / (1.0 - p))
    with nogil:
        scale_kept(&source[0], &target[0], source.shape[0], key, threshold, scale)


def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) \
            or not 0 <= p < 1:
        raise ValueError(f"dropout: p must be a number in [0, 1), got {p!r}")


class Dropout(Layer):
    """In training, zero each element with probability ``p`` and scale the rest by
    1/(1 − p); in evaluation (``model.eval()``), the identity. Any shape, float32 or
    float64, as torch.nn.Dropout; masks drawn from corenet.random.

    >>> import corenet.layers as L, numpy as np
    >>> L.Dropout(0.5).eval().forward(np.ones((1, 4), np.float32))
    array([[1., 1., 1., 1.]], dtype=float32)
    """

    name = "dropout"

    def __init__(self, p=0.5):
        super().__init__()
        _check_p(p)
        self.p = float(p)
        self._shape = None
        self._key = None  # None: the last forward was the identity

    def forward(self, x):
        x = check_input(self, x)
        _check_p(self.p)  # p may change between steps, as in PyTorch
        self._shape, self._dtype = x.shape, x.dtype
        if not self.training or self.p == 0:
            self._key = None
            return x
        # backward masks with the forward's p: a p set in between scaled by another
        self._key, self._p = int(random.generator().integers(0, 1 << 64, dtype=np.uint64)), \
            float(self.p)
        out = self.buffer("out", x.shape, x.dtype)
        apply_mask(x.reshape(-1), out.reshape(-1), self._key, self._p)
        return out

    def backward(self, grad):
        require_forward(self, self._shape)
        grad = check_grad(self, grad, self._shape, self._dtype)
        if not self.needs_input_grad:
            return None
        if self._key is None:
            return grad
        x_grad = self.buffer("x_grad", grad.shape, grad.dtype)
        apply_mask(grad.reshape(-1), x_grad.reshape(-1), self._key, self._p)
        return x_grad

    def get_config(self):
        return {"p": self.p}
