"""Linear: y = x Wᵀ + b, with W (out, in) and b (out,) laid out as in PyTorch.

Backward, as in the lecture: dL/dx = dL/dy · W, dL/dW = (dL/dy)ᵀ · x,
dL/db = Σ_batch dL/dy. All three products are corenet's GEMM; the weight
gradient is accumulated by the GEMM itself, with no extra pass.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from libc.string cimport memset

from corenet.kernels.fused cimport (activation_derivative_times, cn_add_row_double,
                                    cn_add_row_float_in_double, cn_relu_gradient_double,
                                    cn_relu_gradient_float)
from corenet.kernels.gemm cimport EPILOGUE_NONE, EPILOGUE_RELU, gemm
from corenet.kernels.threads cimport threads_for

from corenet import init as initializers
from corenet.arguments import as_bool
from corenet.errors import ShapeError
from corenet.fusion import fused_epilogue, fusion_of
from corenet.memory import check_parameters
from corenet.layer import (Layer, Parameter, as_float_dtype, check_grad, check_input,
                           parameter_arrays, parameter_arrays_to_write, require_forward)

cnp.import_array()

cdef enum:
    GRAIN = 1 << 14  # elements below which one thread runs
    COLUMN_BLOCK = 256  # columns whose double sums sum_columns keeps on the stack


cdef void sum_columns(int kind, floating param, const floating* grad, const floating* out,
                      floating* pre_grad, floating* sums, Py_ssize_t rows, Py_ssize_t columns,
                      Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """Columns [start, stop): with an activation (kind), pre_grad = grad · f'(x) from
    out = f(x), row piece by row piece while each is in L1 (the element-by-element
    loop took 4.6 % of the 784-1024-1024-10 step on 2 Zen 3 threads); then sums[j] +=
    Σ_i of pre_grad (of grad without an activation) over the rows in order, in double
    (a float32 running sum was 1.4e-5 off at 2^16 rows). sums may be NULL."""
    cdef double totals[COLUMN_BLOCK]
    cdef Py_ssize_t j0 = start, j1, i, j, row
    cdef const floating* summed = grad if kind == EPILOGUE_NONE else pre_grad
    while j0 < stop:
        j1 = min(stop, j0 + COLUMN_BLOCK)
        memset(totals, 0, (j1 - j0) * sizeof(double))
        for i in range(rows):
            row = i * columns
            if kind == EPILOGUE_RELU:
                if floating is float:
                    cn_relu_gradient_float(pre_grad + row + j0, grad + row + j0,
                                           out + row + j0, j1 - j0)
                else:
                    cn_relu_gradient_double(pre_grad + row + j0, grad + row + j0,
                                            out + row + j0, j1 - j0)
            elif kind != EPILOGUE_NONE:
                for j in range(j0, j1):
                    pre_grad[row + j] = activation_derivative_times(kind, grad[row + j],
                                                                    out[row + j], param)
            if sums != NULL:
                if floating is float:
                    cn_add_row_float_in_double(totals, summed + row + j0, j1 - j0)
                else:
                    cn_add_row_double(totals, summed + row + j0, j1 - j0)
        if sums != NULL:
            for j in range(j0, j1):
                sums[j] = <floating>(sums[j] + totals[j - j0])
        j0 = j1


cdef void activation_backward_and_column_sums(int kind, floating param, const floating* grad,
                                              const floating* out, floating* pre_grad,
                                              floating* sums, Py_ssize_t rows,
                                              Py_ssize_t columns) noexcept nogil:
    """sum_columns over all columns (kind EPILOGUE_NONE: the column sums of grad only),
    threads owning column ranges: each sum has one order whatever the thread count."""
    cdef int n_threads = threads_for(rows * columns, GRAIN)
    cdef Py_ssize_t chunk = (columns + n_threads - 1) // n_threads
    cdef Py_ssize_t part, start, stop
    for part in prange(n_threads, num_threads=n_threads, schedule='static'):
        start = part * chunk
        stop = min(columns, start + chunk)
        if start < stop:  # more threads than columns: no pointer past the rows
            sum_columns(kind, param, grad, out, pre_grad, sums, rows, columns, start, stop)


cdef int activation_backward(int kind, double param, cnp.ndarray grad, cnp.ndarray out,
                             cnp.ndarray pre_grad, object bias_grad) except -1:
    cdef Py_ssize_t rows = out.shape[0], columns = out.shape[1]
    cdef void* sums = NULL if bias_grad is None else cnp.PyArray_DATA(bias_grad)
    if out.descr.type_num == cnp.NPY_FLOAT32:
        with nogil:
            activation_backward_and_column_sums(
                kind, <float>param, <const float*>cnp.PyArray_DATA(grad),
                <const float*>cnp.PyArray_DATA(out), <float*>cnp.PyArray_DATA(pre_grad),
                <float*>sums, rows, columns)
    else:
        with nogil:
            activation_backward_and_column_sums(
                kind, param, <const double*>cnp.PyArray_DATA(grad),
                <const double*>cnp.PyArray_DATA(out), <double*>cnp.PyArray_DATA(pre_grad),
                <double*>sums, rows, columns)
    return 0


cdef int linear_forward(cnp.ndarray x, cnp.ndarray weight, object bias, cnp.ndarray out,
                        int epilogue, double param) except -1:
    cdef Py_ssize_t n = x.shape[0], k = x.shape[1], m = weight.shape[0]
    cdef void* bias_data = NULL if bias is None else cnp.PyArray_DATA(bias)
    cdef int status
    if x.descr.type_num == cnp.NPY_FLOAT32:
        with nogil:
            status = gemm(False, True, n, m, k, <const float*>cnp.PyArray_DATA(x), k,
                          <const float*>cnp.PyArray_DATA(weight), k,
                          <float*>cnp.PyArray_DATA(out), m, False, <const float*>bias_data,
                          epilogue, <float>param)
    else:
        with nogil:
            status = gemm(False, True, n, m, k, <const double*>cnp.PyArray_DATA(x), k,
                          <const double*>cnp.PyArray_DATA(weight), k,
                          <double*>cnp.PyArray_DATA(out), m, False, <const double*>bias_data,
                          epilogue, param)
    if status:
        raise MemoryError("linear: could not allocate GEMM buffers")
    return 0


cdef int linear_backward(cnp.ndarray grad, cnp.ndarray x, cnp.ndarray weight,
                         cnp.ndarray weight_grad, bint add_to_weight_grad, object bias_grad,
                         object x_grad) except -1:
    cdef Py_ssize_t n = x.shape[0], k = x.shape[1], m = weight.shape[0]
    cdef void* bias_grad_data = NULL if bias_grad is None else cnp.PyArray_DATA(bias_grad)
    cdef void* x_grad_data = NULL if x_grad is None else cnp.PyArray_DATA(x_grad)
    cdef int status = 0
    if x.descr.type_num == cnp.NPY_FLOAT32:
        with nogil:
            # dW (m x k) += gradᵀ (m x n) · x (n x k), or = after zero_grad(set_to_none=True)
            status |= gemm(True, False, m, k, n, <const float*>cnp.PyArray_DATA(grad), m,
                           <const float*>cnp.PyArray_DATA(x), k,
                           <float*>cnp.PyArray_DATA(weight_grad), k, add_to_weight_grad, NULL,
                           EPILOGUE_NONE, 0)
            if bias_grad_data != NULL:
                activation_backward_and_column_sums(
                    EPILOGUE_NONE, <float>0, <const float*>cnp.PyArray_DATA(grad), NULL, NULL,
                    <float*>bias_grad_data, n, m)
            if x_grad_data != NULL:
                # dx (n x k) = grad (n x m) · W (m x k)
                status |= gemm(False, False, n, k, m, <const float*>cnp.PyArray_DATA(grad), m,
                               <const float*>cnp.PyArray_DATA(weight), k,
                               <float*>x_grad_data, k, False, NULL, EPILOGUE_NONE,
                               0)
    else:
        with nogil:
            status |= gemm(True, False, m, k, n, <const double*>cnp.PyArray_DATA(grad), m,
                           <const double*>cnp.PyArray_DATA(x), k,
                           <double*>cnp.PyArray_DATA(weight_grad), k, add_to_weight_grad, NULL,
                           EPILOGUE_NONE, 0)
            if bias_grad_data != NULL:
                activation_backward_and_column_sums(
                    EPILOGUE_NONE, <double>0, <const double*>cnp.PyArray_DATA(grad), NULL, NULL,
                    <double*>bias_grad_data, n, m)
            if x_grad_data != NULL:
                status |= gemm(False, False, n, k, m, <const double*>cnp.PyArray_DATA(grad), m,
                               <const double*>cnp.PyArray_DATA(weight), k,
                               <double*>x_grad_data, k, False, NULL, EPILOGUE_NONE,
                               0)
    if status:
        raise MemoryError("linear: could not allocate GEMM buffers")
    return 0


def _check_sizes(in_features, out_features):
    for label, size in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"linear: {label} must be a positive integer, got {size!r}")


class Linear(Layer):
    """y = x Wᵀ + b on a batch of row vectors, x of shape (batch, in_features).

    Weights and bias start as in PyTorch: uniform in ±1/√in_features
    (``init="pytorch_uniform"``). ``init`` takes any corenet.init spec for the
    weight (fan_in = in_features, fan_out = out_features), ``bias_init``
    "pytorch_uniform", "zeros", "ones" or ("constant", value).

    >>> import corenet.layers as L, numpy as np
    >>> L.Linear(3, 2).forward(np.ones((4, 3), np.float32)).shape
    (4, 2)
    """

    name = "linear"

    def __init__(self, in_features, out_features, bias=True, dtype="float32",
                 init="pytorch_uniform", bias_init="pytorch_uniform"):
        super().__init__()
        check_parameters(self.name, self.parameter_shapes(in_features, out_features, bias, dtype))
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dtype = as_float_dtype(dtype, self.name)
        self.init = initializers.get(init, self.name)
        self.bias_init = initializers.get_bias(bias_init, self.name)
        fans = (self.in_features, self.out_features)
        self.weight = Parameter("weight", self.init(
            (self.out_features, self.in_features), *fans, self.dtype))
        self.bias = Parameter("bias", self.bias_init(
            (self.out_features,), *fans, self.dtype)) if bias else None
        self.input_shape = (self.in_features,)
        # Set by the executor before each forward: the activation layer that follows
        # when the pair runs as this one layer, the activation in the GEMM's epilogue.
        self.fused_activation = None
        self._fusion = None
        self._x = None
        self._out = None

    @classmethod
    def parameter_shapes(cls, in_features, out_features, bias=True, dtype="float32",
                         init="pytorch_uniform", bias_init="pytorch_uniform"):
        """{name: shape} of the parameters, every argument checked, nothing allocated."""
        _check_sizes(in_features, out_features)
        as_float_dtype(dtype, cls.name)
        initializers.get(init, cls.name)
        initializers.get_bias(bias_init, cls.name)
        shapes = {"weight": (int(out_features), int(in_features))}
        if as_bool(cls.name, "bias", bias):
            shapes["bias"] = (int(out_features),)
        return shapes

    def forward(self, x):
        x = check_input(self, x, ndim=2, features=self.in_features, dtype=self.dtype)
        out = self.buffer("out", (x.shape[0], self.out_features), self.dtype)
        self._fusion = fused_epilogue(self)
        code, param = self._fusion or (EPILOGUE_NONE, 0.0)
        weight, _ = parameter_arrays(self, self.weight, (self.out_features, self.in_features),
                                     self.dtype, with_grad=False)
        bias = None
        if self.bias is not None:
            bias, _ = parameter_arrays(self, self.bias, (self.out_features,), self.dtype,
                                       with_grad=False)
        linear_forward(x, weight, bias, out, code, param)
        self._x = x
        self._out = out
        return out

    def backward(self, grad):
        require_forward(self, self._x)
        x = self._x
        if x.shape[1] != self.in_features:  # in_features and the weight set since forward
            raise ShapeError(f"{self.name}: the forward's input has {x.shape[1]} features, "
                             f"in_features is now {self.in_features}: run forward again")
        grad = check_grad(self, grad, (x.shape[0], self.out_features), self.dtype)
        x_grad = self.buffer("x_grad", x.shape, self.dtype) if self.needs_input_grad else None
        bias_grad = None
        if self.bias is not None:
            _, bias_grad = parameter_arrays(self, self.bias, (self.out_features,), self.dtype)
        # After zero_grad(set_to_none=True) the GEMM writes dW instead of adding to zeros.
        weight, weight_grad, overwrite = parameter_arrays_to_write(
            self, self.weight, (self.out_features, self.in_features), self.dtype)
        try:
            if self._fusion is not None:
                # One pass takes the gradient through the activation and sums it into
                # the bias gradient; the GEMMs then read that copy.
                pre_grad = self.buffer("pre_activation_grad", grad.shape, self.dtype)
                code, param = self._fusion
                activation_backward(code, param, grad, self._out, pre_grad, bias_grad)
                grad, bias_grad = pre_grad, None
            linear_backward(grad, x, weight, weight_grad, not overwrite, bias_grad, x_grad)
        except BaseException:
            if overwrite:  # not written: what a later backward adds to must be zeros
                weight_grad.fill(0)
            raise
        return x_grad

    def can_fuse(self, following):
        """Whether this layer can run ``following`` (its only consumer) in its own
        forward and backward: relu, sigmoid, tanh, leaky_relu and elu, in the GEMM's
        epilogue."""
        return fusion_of(following) is not None

    def parameters(self):
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def output_shape(self, *input_shapes):
        if len(input_shapes) != 1 or len(input_shapes[0]) != 1 \
                or input_shapes[0][0] != self.in_features:
            raise ShapeError(f"{self.name}: expected per-sample shape ({self.in_features},), "
                             f"got {', '.join(map(str, input_shapes))}")
        return (self.out_features,)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": self.dtype.name,
                "init": self.init.config(), "bias_init": self.bias_init.config()}
