"""Elementwise activations: each forward and each backward is one parallel pass.

Backward takes f' from the output y where f' is a function of it: relu,
sigmoid' = y(1 − y), tanh' = 1 − y², elu' = y + alpha for x <= 0 (as PyTorch
does); from the input otherwise (leaky_relu, prelu). These are the expressions
of corenet/kernels/fused.pxd: a GEMM that runs the activation in its epilogue
keeps only y, and the fused pair is bitwise equal to the two layers. The cost:
where sigmoid, tanh and elu saturate, the derivative loses relative precision
and is exactly 0 once y rounds to ±1 or −alpha (README, Numerics).
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expm1, tanh

from corenet.kernels.threads cimport threads_for

from corenet.arguments import as_float
from corenet.errors import ShapeError
from corenet.memory import check_parameters
from corenet.layer import (Layer, Parameter, as_float_dtype, check_grad, check_input,
                           parameter_arrays, require_forward)

cnp.import_array()

cdef enum Kind:
    KIND_SIGMOID
    KIND_TANH
    KIND_RELU
    KIND_LEAKY_RELU
    KIND_ELU

cdef enum:
    GRAIN = 1 << 15  # elements below which one thread runs
    CHUNK = 1 << 13  # elements a thread hands to one vector-kernel call

# float32 goes through the SIMD kernels of vector_math.h; float64 through libm
# below, for the accuracy that gradient checks in float64 need.
ctypedef void (*forward_kernel)(const float* x, float* y, ptrdiff_t n,
                               float param) noexcept nogil
ctypedef void (*backward_kernel)(const float* x, const float* y, const float* g, float* dx,
                                ptrdiff_t n, float param) noexcept nogil

cdef extern from "vector_math.h" nogil:
    void cn_sigmoid_forward(const float*, float*, ptrdiff_t, float)
    void cn_tanh_forward(const float*, float*, ptrdiff_t, float)
    void cn_relu_forward(const float*, float*, ptrdiff_t, float)
    void cn_leaky_relu_forward(const float*, float*, ptrdiff_t, float)
    void cn_elu_forward(const float*, float*, ptrdiff_t, float)
    void cn_sigmoid_backward(const float*, const float*, const float*, float*, ptrdiff_t, float)
    void cn_tanh_backward(const float*, const float*, const float*, float*, ptrdiff_t, float)
    void cn_relu_backward(const float*, const float*, const float*, float*, ptrdiff_t, float)
    void cn_leaky_relu_backward(const float*, const float*, const float*, float*, ptrdiff_t,
                                float)
    void cn_elu_backward(const float*, const float*, const float*, float*, ptrdiff_t, float)
    double cn_tanh_slope_double(double y)

# Indexed by Kind.
cdef forward_kernel[5] FLOAT_FORWARD = [cn_sigmoid_forward, cn_tanh_forward, cn_relu_forward,
                                        cn_leaky_relu_forward, cn_elu_forward]
cdef backward_kernel[5] FLOAT_BACKWARD = [cn_sigmoid_backward, cn_tanh_backward,
                                          cn_relu_backward, cn_leaky_relu_backward,
                                          cn_elu_backward]


cdef void float_forward(int kind, const float* x, float* y, Py_ssize_t size,
                        float parameter) noexcept nogil:
    cdef Py_ssize_t chunk
    cdef forward_kernel kernel = FLOAT_FORWARD[kind]
    for chunk in prange((size + CHUNK - 1) // CHUNK, num_threads=threads_for(size, GRAIN),
                        schedule='static'):
        kernel(x + chunk * CHUNK, y + chunk * CHUNK, min(<Py_ssize_t>CHUNK, size - chunk * CHUNK),
               parameter)


cdef void float_backward(int kind, const float* x, const float* y, const float* grad,
                         float* x_grad, Py_ssize_t size, float parameter) noexcept nogil:
    cdef Py_ssize_t chunk, start
    cdef backward_kernel kernel = FLOAT_BACKWARD[kind]
    for chunk in prange((size + CHUNK - 1) // CHUNK, num_threads=threads_for(size, GRAIN),
                        schedule='static'):
        start = chunk * CHUNK
        kernel(x + start, y + start, grad + start, x_grad + start,
               min(<Py_ssize_t>CHUNK, size - start), parameter)


cdef inline floating sigmoid(floating x) noexcept nogil:
    cdef floating e
    if x >= 0:
        return 1 / (1 + exp(-x))
    e = exp(x)  # never overflows for x < 0
    return e / (1 + e)


cdef void activation_forward(int kind, const floating* x, floating* y, Py_ssize_t size,
                             floating parameter) noexcept nogil:
    cdef Py_ssize_t i
    cdef int n = threads_for(size, GRAIN)
    if floating is float:
        float_forward(kind, x, y, size, parameter)
    elif kind == KIND_SIGMOID:
        for i in prange(size, num_threads=n, schedule='static'):
            y[i] = sigmoid(x[i])
    elif kind == KIND_TANH:
        for i in prange(size, num_threads=n, schedule='static'):
            y[i] = tanh(x[i])
    elif kind == KIND_RELU:
        for i in prange(size, num_threads=n, schedule='static'):
            y[i] = 0 if x[i] < 0 else x[i]
    elif kind == KIND_LEAKY_RELU:
        for i in prange(size, num_threads=n, schedule='static'):
            y[i] = x[i] if x[i] > 0 else parameter * x[i]
    elif kind == KIND_ELU:
        for i in prange(size, num_threads=n, schedule='static'):
            y[i] = x[i] if x[i] > 0 else parameter * expm1(x[i])


cdef void activation_backward(int kind, const floating* x, const floating* y,
                              const floating* grad, floating* x_grad, Py_ssize_t size,
                              floating parameter) noexcept nogil:
    cdef Py_ssize_t i
    cdef int n = threads_for(size, GRAIN)
    if floating is float:
        float_backward(kind, x, y, grad, x_grad, size, parameter)
    elif kind == KIND_SIGMOID:
        for i in prange(size, num_threads=n, schedule='static'):
            x_grad[i] = grad[i] * y[i] * (1 - y[i])
    elif kind == KIND_TANH:
        for i in prange(size, num_threads=n, schedule='static'):
            x_grad[i] = grad[i] * cn_tanh_slope_double(y[i])
    elif kind == KIND_RELU:
        for i in prange(size, num_threads=n, schedule='static'):
            x_grad[i] = grad[i] if y[i] > 0 else 0
    elif kind == KIND_LEAKY_RELU:
        for i in prange(size, num_threads=n, schedule='static'):
            x_grad[i] = grad[i] if x[i] > 0 else parameter * grad[i]
    elif kind == KIND_ELU:
        for i in prange(size, num_threads=n, schedule='static'):
            x_grad[i] = grad[i] if x[i] > 0 else grad[i] * (y[i] + parameter)


cdef void run_forward(int kind, cnp.ndarray x, cnp.ndarray y, double parameter):
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            activation_forward(kind, <const float*>cnp.PyArray_DATA(x),
                               <float*>cnp.PyArray_DATA(y), size, <float>parameter)
    else:
        with nogil:
            activation_forward(kind, <const double*>cnp.PyArray_DATA(x),
                               <double*>cnp.PyArray_DATA(y), size, parameter)


cdef void run_backward(int kind, cnp.ndarray x, cnp.ndarray y, cnp.ndarray grad,
                       cnp.ndarray x_grad, double parameter):
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            activation_backward(kind, <const float*>cnp.PyArray_DATA(x),
                                <const float*>cnp.PyArray_DATA(y),
                                <const float*>cnp.PyArray_DATA(grad),
                                <float*>cnp.PyArray_DATA(x_grad), size, <float>parameter)
    else:
        with nogil:
            activation_backward(kind, <const double*>cnp.PyArray_DATA(x),
                                <const double*>cnp.PyArray_DATA(y),
                                <const double*>cnp.PyArray_DATA(grad),
                                <double*>cnp.PyArray_DATA(x_grad), size, parameter)


class Activation(Layer):
    """An elementwise f(x) on any shape (batch first); no parameters, dtype of its input."""

    kind = -1
    elementwise = True

    def __init__(self):
        super().__init__()
        self._x = None
        self._y = None

    def _parameter(self):
        return 0.0

    def forward(self, x):
        x = check_input(self, x)
        y = self.buffer("out", x.shape, x.dtype)
        # The class's kind: the kernels index tables by it (an instance's 1000 crashed).
        run_forward(type(self).kind, x, y, self._parameter())
        self._x = x
        self._y = y
        return y

    def backward(self, grad):
        require_forward(self, self._y)
        grad = check_grad(self, grad, self._y.shape, self._y.dtype)
        x_grad = self.buffer("x_grad", grad.shape, grad.dtype)
        run_backward(type(self).kind, self._x, self._y, grad, x_grad, self._parameter())
        return x_grad


class Sigmoid(Activation):
    """1 / (1 + e^-x), computed without overflow for any x."""
    name = "sigmoid"
    kind = KIND_SIGMOID


class Tanh(Activation):
    name = "tanh"
    kind = KIND_TANH


class ReLU(Activation):
    """max(x, 0); its gradient at 0 is 0, as in PyTorch."""
    name = "relu"
    kind = KIND_RELU


class LeakyReLU(Activation):
    """x for x > 0, negative_slope · x otherwise."""
    name = "leaky_relu"
    kind = KIND_LEAKY_RELU

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = as_float(self.name, "negative_slope", negative_slope)

    def _parameter(self):
        # Checked at use: it may be set after construction, as in PyTorch.
        return as_float(self.name, "negative_slope", self.negative_slope)

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class ELU(Activation):
    """x for x > 0, alpha · (e^x − 1) otherwise."""
    name = "elu"
    kind = KIND_ELU

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = as_float(self.name, "alpha", alpha)

    def _parameter(self):
        return as_float(self.name, "alpha", self.alpha)

    def get_config(self):
        return {"alpha": self.alpha}


cdef void prelu_forward(const floating* x, const floating* weight, floating* y,
                        Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
                        bint shared) noexcept nogil:
    """x viewed as (outer, channels, inner); one slope per channel, or weight[0] for all."""
    cdef Py_ssize_t row, i, c
    cdef floating slope
    cdef int n = threads_for(outer * channels * inner, GRAIN)
    for row in prange(outer * channels, num_threads=n, schedule='static'):
        c = row % channels
        slope = weight[0] if shared else weight[c]
        for i in range(row * inner, (row + 1) * inner):
            y[i] = x[i] if x[i] > 0 else slope * x[i]


cdef void prelu_backward(const floating* x, const floating* weight, const floating* grad,
                         floating* x_grad, floating* weight_grad, Py_ssize_t outer,
                         Py_ssize_t channels, Py_ssize_t inner, bint shared) noexcept nogil:
    """dx = g or slope·g; d(slope) += Σ g·x over x ≤ 0. The slope gradient of a
    channel is summed by one thread in one order, so it is deterministic, and in
    double: a float32 running sum over a 64 x 16 x 64 x 64 batch was 1e-3 off."""
    cdef Py_ssize_t row, i, c, o
    cdef floating slope
    cdef double total
    cdef int n = threads_for(outer * channels * inner, GRAIN)
    for row in prange(outer * channels, num_threads=n, schedule='static'):
        slope = weight[0] if shared else weight[row % channels]
        for i in range(row * inner, (row + 1) * inner):
            x_grad[i] = grad[i] if x[i] > 0 else slope * grad[i]
    if shared:
        total = 0
        for i in range(outer * channels * inner):
            if x[i] <= 0:
                total = total + <double>grad[i] * x[i]
        weight_grad[0] += total
        return
    n = threads_for(outer * channels * inner, GRAIN)
    for c in prange(channels, num_threads=n, schedule='static'):
        total = 0
        for o in range(outer):
            for i in range((o * channels + c) * inner, (o * channels + c + 1) * inner):
                if x[i] <= 0:
                    total = total + <double>grad[i] * x[i]
        weight_grad[c] += total


def _check_num_parameters(num_parameters):
    if isinstance(num_parameters, bool) or not isinstance(num_parameters, int) \
            or num_parameters < 1:
        raise ValueError(f"prelu: num_parameters must be a positive integer, "
                         f"got {num_parameters!r}")


class PReLU(Layer):
    """x for x > 0, a · x otherwise, with a learned: one slope shared by all
    (num_parameters=1) or one per channel, the channel axis being 1 as in PyTorch.

    >>> import corenet.layers as L, numpy as np
    >>> L.PReLU(num_parameters=3).weight.value
    array([0.25, 0.25, 0.25], dtype=float32)
    """

    name = "prelu"
    elementwise = True

    def __init__(self, num_parameters=1, init=0.25, dtype="float32"):
        super().__init__()
        check_parameters(self.name, self.parameter_shapes(num_parameters, init, dtype))
        self.num_parameters = num_parameters
        self.init = as_float(self.name, "init", init)
        self.dtype = as_float_dtype(dtype, self.name)
        self.weight = Parameter("weight", np.full(num_parameters, self.init, self.dtype))
        self._x = None

    @classmethod
    def parameter_shapes(cls, num_parameters=1, init=0.25, dtype="float32"):
        """{name: shape} of the parameters, every argument checked, nothing allocated."""
        _check_num_parameters(num_parameters)
        as_float(cls.name, "init", init)
        as_float_dtype(dtype, cls.name)
        return {"weight": (num_parameters,)}

    def _view(self, x):
        """(outer, channels, inner) sizes of x around the channel axis 1."""
        if self.num_parameters == 1:
            return 1, 1, x.size
        if x.ndim < 2 or x.shape[1] != self.num_parameters:
            raise ShapeError(f"{self.name}: expected {self.num_parameters} channels in axis 1, "
                             f"got shape {x.shape}")
        return x.shape[0], x.shape[1], x.size // (x.shape[0] * x.shape[1])

    def forward(self, x):
        x = check_input(self, x, dtype=self.dtype)
        y = self.buffer("out", x.shape, x.dtype)
        cdef Py_ssize_t outer, channels, inner
        outer, channels, inner = self._view(x)
        weight, _ = parameter_arrays(self, self.weight, (self.num_parameters,), self.dtype,
                                     with_grad=False)
        cdef cnp.ndarray x_arr = x, y_arr = y, w_arr = weight
        cdef bint shared = self.num_parameters == 1
        if x.dtype == np.float32:
            prelu_forward(<const float*>cnp.PyArray_DATA(x_arr),
                          <const float*>cnp.PyArray_DATA(w_arr), <float*>cnp.PyArray_DATA(y_arr),
                          outer, channels, inner, shared)
        else:
            prelu_forward(<const double*>cnp.PyArray_DATA(x_arr),
                          <const double*>cnp.PyArray_DATA(w_arr),
                          <double*>cnp.PyArray_DATA(y_arr), outer, channels, inner, shared)
        self._x = x
        return y

    def backward(self, grad):
        require_forward(self, self._x)
        x = self._x
        grad = check_grad(self, grad, x.shape, x.dtype)
        x_grad = self.buffer("x_grad", x.shape, x.dtype)
        cdef Py_ssize_t outer, channels, inner
        outer, channels, inner = self._view(x)
        cdef cnp.ndarray x_arr = x, g_arr = grad, xg_arr = x_grad
        weight, weight_grad = parameter_arrays(self, self.weight, (self.num_parameters,),
                                               self.dtype)
        cdef cnp.ndarray w_arr = weight, wg_arr = weight_grad
        cdef bint shared = self.num_parameters == 1
        if x.dtype == np.float32:
            prelu_backward(<const float*>cnp.PyArray_DATA(x_arr),
                           <const float*>cnp.PyArray_DATA(w_arr),
                           <const float*>cnp.PyArray_DATA(g_arr),
                           <float*>cnp.PyArray_DATA(xg_arr), <float*>cnp.PyArray_DATA(wg_arr),
                           outer, channels, inner, shared)
        else:
            prelu_backward(<const double*>cnp.PyArray_DATA(x_arr),
                           <const double*>cnp.PyArray_DATA(w_arr),
                           <const double*>cnp.PyArray_DATA(g_arr),
                           <double*>cnp.PyArray_DATA(xg_arr), <double*>cnp.PyArray_DATA(wg_arr),
                           outer, channels, inner, shared)
        return x_grad

    def parameters(self):
        return [self.weight]

    def output_shape(self, *input_shapes):
        shape = super().output_shape(*input_shapes)
        if self.num_parameters > 1 and (len(shape) < 1 or shape[0] != self.num_parameters):
            raise ShapeError(f"{self.name}: expected {self.num_parameters} channels first in the "
                             f"per-sample shape, got {shape}")
        return shape

    def get_config(self):
        return {"num_parameters": self.num_parameters, "init": self.init,
                "dtype": self.dtype.name}
