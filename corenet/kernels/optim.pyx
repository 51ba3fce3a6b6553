"""Optimizer update loops and the global gradient norm.

Each update is one pass over the parameters of a group (of one dtype) that reads
and writes every element of each parameter, its gradient and its state once, with
PyTorch's arithmetic in PyTorch's order (so results agree with torch.optim to
rounding). The elements
are split statically among the threads and each element's arithmetic is the
same on any thread count: results are bitwise identical for any number of
threads. The Python-callable functions check every array before the nogil
block; corenet.optim checks them first with errors that name the parameter.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport pow, sqrt, sqrtf
from libc.stdlib cimport free, malloc, qsort

from corenet.kernels.threads cimport threads_for

cnp.import_array()

cdef enum:
    GRAIN = 1 << 15  # elements below which one thread runs
    # The threads take whole blocks of this many elements. The sum of squares sums each
    # block in LANES interleaved partial sums, then the blocks in order: its value
    # depends on the array only, not on the thread count.
    BLOCK = 1 << 14
    LANES = 16


cdef inline floating lerp(floating start, floating end, floating weight) noexcept nogil:
    # PyTorch's lerp: the form that stays exact at the end its weight is near.
    cdef floating one = 1  # a float32 one: the literal 1 would compute in double
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (one - weight)


cdef inline floating square_root(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating* block_of(floating* array, Py_ssize_t start) noexcept nogil:
    # The block of an optional state array (NULL stays NULL).
    return NULL if array == NULL else array + start


# Each update runs over one block in a plain loop: GCC takes the tests of settings
# (weight decay, momentum, amsgrad...) out of the loop and vectorizes each variant,
# which it does not do inside an OpenMP loop.

# -- SGD ---------------------------------------------------------------------------

cdef void sgd_block(floating* value, const floating* grad, floating* buffer,  # OUT, IN, OUT
                    Py_ssize_t size, floating lr, floating weight_decay, floating momentum,
                    floating dampening, bint nesterov, bint first) noexcept nogil:
    """d = g + wd·w; b = d on the first step, else momentum·b + (1 − dampening)·d;
    w −= lr·(d + momentum·b if nesterov else b). No buffer (NULL) at momentum 0."""
    cdef Py_ssize_t i
    cdef floating direction, velocity
    cdef floating one = 1  # a float32 one: the literal 1 would compute in double
    cdef floating keep = one - dampening
    for i in range(size):
        direction = grad[i]
        if weight_decay != 0:  # PyTorch adds nothing at 0, so an inf weight stays inf
            direction = direction + weight_decay * value[i]
        if buffer != NULL:
            velocity = direction if first else momentum * buffer[i] + keep * direction
            buffer[i] = velocity
            direction = direction + momentum * velocity if nesterov else velocity
        value[i] = value[i] - lr * direction


cdef struct Tensor:  # one parameter of a pass over many: its arrays, scalars and blocks
    void* value
    const void* grad
    void* state[3]  # SGD: momentum buffer; Adam: m, v, v max; RMSprop: s, mean, buffer
    Py_ssize_t size, first_block
    bint first  # SGD: the momentum buffer's first step
    double step_size, bias_correction2_sqrt  # Adam: from the parameter's step count


cdef inline Py_ssize_t tensor_of(const Tensor* tensors, Py_ssize_t count,
                                  Py_ssize_t block) noexcept nogil:
    """The tensor whose blocks hold ``block``: the last whose first block is at or before it
    (an empty tensor has none, and the next one starts where it would)."""
    cdef Py_ssize_t low = 0, high = count - 1, middle
    while low < high:
        middle = (low + high + 1) // 2
        if tensors[middle].first_block <= block:
            low = middle
        else:
            high = middle - 1
    return low


cdef void sgd_update(const Tensor* tensors, Py_ssize_t count, Py_ssize_t blocks,
                     int n_threads, floating lr, floating weight_decay,
                     floating momentum, floating dampening, bint nesterov) noexcept nogil:
    # One parallel region for every tensor (PyTorch's "foreach"), as for Adam and RMSprop:
    # each region wakes the other threads, and a small model's step had one per parameter.
    cdef Py_ssize_t block, start
    cdef const Tensor* tensor
    for block in prange(blocks, num_threads=n_threads, schedule='static'):
        tensor = &tensors[tensor_of(tensors, count, block)]
        start = (block - tensor.first_block) * BLOCK
        sgd_block(<floating*>tensor.value + start, <const floating*>tensor.grad + start,
                  block_of(<floating*>tensor.state[0], start), min(BLOCK, tensor.size - start),
                  lr, weight_decay, momentum, dampening, nesterov, tensor.first)


# -- Adam and AdamW -----------------------------------------------------------------

cdef void adam_block(floating* value, const floating* grad, floating* exp_avg,
                     floating* exp_avg_sq, floating* max_exp_avg_sq,  # OUT, IN, OUT, OUT, OUT
                     Py_ssize_t size, floating l2_decay, floating decoupled_factor,
                     floating beta1_complement, floating beta2, floating beta2_complement,
                     floating bias_correction2_sqrt, floating eps,
                     floating neg_step_size) noexcept nogil:
    """w ·= decoupled_factor (AdamW); g += l2_decay·w (Adam); m = lerp(m, g, 1 − β1);
    v = β2·v + (1 − β2)·g·g; v̂ = max(v̂, v) with amsgrad;
    w += −step_size · m / (sqrt(v or v̂) / sqrt(1 − β2ᵗ) + eps)."""
    cdef Py_ssize_t i
    cdef floating weight, direction, first_moment, second_moment
    for i in range(size):
        weight = value[i]
        if decoupled_factor != 1:
            weight = weight * decoupled_factor
        direction = grad[i]
        if l2_decay != 0:
            direction = direction + l2_decay * weight
        first_moment = lerp(exp_avg[i], direction, beta1_complement)
        exp_avg[i] = first_moment
        second_moment = exp_avg_sq[i] * beta2 + beta2_complement * direction * direction
        exp_avg_sq[i] = second_moment
        if max_exp_avg_sq != NULL:
            if not max_exp_avg_sq[i] <= second_moment:  # a NaN propagates, as torch.maximum
                second_moment = max_exp_avg_sq[i]
            max_exp_avg_sq[i] = second_moment
        value[i] = weight + neg_step_size * (
            first_moment / (square_root(second_moment) / bias_correction2_sqrt + eps))


cdef void adam_update(const Tensor* tensors, Py_ssize_t count, Py_ssize_t blocks,
                      int n_threads, floating l2_decay, floating decoupled_factor,
                      floating beta1_complement, floating beta2, floating beta2_complement,
                      floating eps) noexcept nogil:
    cdef Py_ssize_t block, start
    cdef const Tensor* tensor
    for block in prange(blocks, num_threads=n_threads, schedule='static'):
        tensor = &tensors[tensor_of(tensors, count, block)]
        start = (block - tensor.first_block) * BLOCK
        adam_block(<floating*>tensor.value + start, <const floating*>tensor.grad + start,
                   <floating*>tensor.state[0] + start, <floating*>tensor.state[1] + start,
                   block_of(<floating*>tensor.state[2], start), min(BLOCK, tensor.size - start),
                   l2_decay, decoupled_factor, beta1_complement, beta2, beta2_complement,
                   <floating>tensor.bias_correction2_sqrt, eps, <floating>-tensor.step_size)


# -- RMSprop --------------------------------------------------------------------------

cdef inline void rmsprop_loop(floating* value, const floating* grad, floating* square_avg,
                              floating* grad_avg, floating* buffer,  # OUT, IN, OUT, OUT, OUT
                              Py_ssize_t size, floating lr, floating weight_decay,
                              floating alpha, floating alpha_complement, floating eps,
                              floating momentum, bint centered,
                              bint with_momentum) noexcept nogil:
    """g += wd·w; s = α·s + (1 − α)·g·g; a = lerp(a, g, 1 − α) if centered (grad_avg);
    r = sqrt(s − a·a or s) + eps; b = momentum·b + g/r and w −= lr·b (with_momentum),
    else w −= lr·g/r."""
    cdef Py_ssize_t i
    cdef floating direction, mean_square, mean, scaled
    for i in range(size):
        direction = grad[i] + weight_decay * value[i] if weight_decay != 0 else grad[i]
        mean_square = square_avg[i] * alpha + alpha_complement * direction * direction
        square_avg[i] = mean_square
        if centered:
            mean = lerp(grad_avg[i], direction, alpha_complement)
            grad_avg[i] = mean
            mean_square = mean_square + (-mean) * mean
        scaled = direction / (square_root(mean_square) + eps)
        if with_momentum:
            scaled = buffer[i] * momentum + scaled
            buffer[i] = scaled
        value[i] = value[i] + (-lr) * scaled


cdef void rmsprop_block(floating* value, const floating* grad, floating* square_avg,
                        floating* grad_avg, floating* buffer, Py_ssize_t size, floating lr,
                        floating weight_decay, floating alpha, floating alpha_complement,
                        floating eps, floating momentum) noexcept nogil:
    # One loop for each variant: a loop that tests both settings is too large for GCC
    # to take the tests out, and it would not vectorize.
    if grad_avg == NULL and buffer == NULL:
        rmsprop_loop(value, grad, square_avg, grad_avg, buffer, size, lr, weight_decay, alpha,
                     alpha_complement, eps, momentum, False, False)
    elif buffer == NULL:
        rmsprop_loop(value, grad, square_avg, grad_avg, buffer, size, lr, weight_decay, alpha,
                     alpha_complement, eps, momentum, True, False)
    elif grad_avg == NULL:
        rmsprop_loop(value, grad, square_avg, grad_avg, buffer, size, lr, weight_decay, alpha,
                     alpha_complement, eps, momentum, False, True)
    else:
        rmsprop_loop(value, grad, square_avg, grad_avg, buffer, size, lr, weight_decay, alpha,
                     alpha_complement, eps, momentum, True, True)


cdef void rmsprop_update(const Tensor* tensors, Py_ssize_t count, Py_ssize_t blocks,
                         int n_threads, floating lr, floating weight_decay, floating alpha,
                         floating alpha_complement, floating eps,
                         floating momentum) noexcept nogil:
    cdef Py_ssize_t block, start
    cdef const Tensor* tensor
    for block in prange(blocks, num_threads=n_threads, schedule='static'):
        tensor = &tensors[tensor_of(tensors, count, block)]
        start = (block - tensor.first_block) * BLOCK
        rmsprop_block(<floating*>tensor.value + start, <const floating*>tensor.grad + start,
                      <floating*>tensor.state[0] + start,
                      block_of(<floating*>tensor.state[1], start),
                      block_of(<floating*>tensor.state[2], start),
                      min(BLOCK, tensor.size - start), lr, weight_decay, alpha,
                      alpha_complement, eps, momentum)


# -- the global norm and the scaling of gradients -------------------------------------

cdef double block_sum_of_squares(const floating* x, Py_ssize_t size) noexcept nogil:
    """Σ x² in double, in LANES partial sums that the compiler can keep in vectors."""
    cdef double lanes[LANES]
    cdef double total = 0
    cdef Py_ssize_t chunk, lane, whole = size - size % LANES
    cdef const floating* chunk_start
    for lane in range(LANES):
        lanes[lane] = 0
    for chunk in range(whole // LANES):
        chunk_start = x + chunk * LANES
        for lane in range(LANES):
            lanes[lane] += <double>chunk_start[lane] * <double>chunk_start[lane]
    for lane in range(size - whole):
        lanes[lane] += <double>x[whole + lane] * <double>x[whole + lane]
    for lane in range(LANES):
        total += lanes[lane]
    return total


cdef double sum_of_squares_of(const floating* x, Py_ssize_t size, double* partial) noexcept nogil:
    cdef Py_ssize_t block, n_blocks = (size + BLOCK - 1) // BLOCK
    cdef double total = 0
    for block in prange(n_blocks, num_threads=threads_for(size, GRAIN), schedule='static'):
        partial[block] = block_sum_of_squares(x + block * BLOCK,
                                              min(BLOCK, size - block * BLOCK))
    for block in range(n_blocks):
        total += partial[block]
    return total


cdef void scale_update(floating* x, Py_ssize_t size, double factor) noexcept nogil:  # IN/OUT
    """x *= factor, multiplied in double and rounded once: a float32 factor of the
    clipping below float32's range (norm 6e40, max_norm 1e-6) would zero every x."""
    cdef Py_ssize_t i
    for i in prange(size, num_threads=threads_for(size, GRAIN), schedule='static'):
        x[i] = <floating>(x[i] * factor)


# -- the Python-callable functions ------------------------------------------------------

cdef int checked_type(str kernel, cnp.ndarray value, tuple outputs, tuple inputs) except -1:
    """The dtype number of ``value``, once it and every other array given (None allowed)
    are C-contiguous arrays of its float dtype and size, and value and outputs writeable."""
    cdef int type_num = cnp.PyArray_TYPE(value)
    cdef Py_ssize_t size = cnp.PyArray_SIZE(value)
    # Type numbers ignore byte order: a big-endian float32 array would be read as native.
    if type_num not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64) \
            or not cnp.PyArray_IS_C_CONTIGUOUS(value) or not cnp.PyArray_ISNOTSWAPPED(value):
        raise ValueError(f"{kernel}: expected a C-contiguous float array of native byte "
                         f"order, got {value.dtype}")
    for array in outputs + inputs:
        if array is None:
            continue
        # PyArray_Check, not isinstance: an object can claim ndarray as its __class__.
        if not cnp.PyArray_Check(array) or cnp.PyArray_TYPE(<cnp.ndarray>array) != type_num \
                or cnp.PyArray_SIZE(<cnp.ndarray>array) != size \
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>array) \
                or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>array):
            raise ValueError(f"{kernel}: {getattr(array, 'dtype', type(array).__name__)}"
                             f"{getattr(array, 'shape', '')} does not match the parameter "
                             f"{value.dtype}{(<object>value).shape}")
    for array in (value,) + outputs:
        if array is not None and not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>array):
            raise ValueError(f"{kernel}: the parameter and its state must be writeable")
    return type_num


cdef inline bint same_layout(object array, cnp.ndarray value, bint writeable):
    """array is a C-contiguous array of value's native float dtype and shape (and
    writeable, if asked)."""
    if not cnp.PyArray_Check(array):
        return False
    cdef cnp.ndarray other = <cnp.ndarray>array
    if cnp.PyArray_TYPE(other) != cnp.PyArray_TYPE(value) \
            or not cnp.PyArray_ISNOTSWAPPED(other) or not cnp.PyArray_IS_C_CONTIGUOUS(other) \
            or (writeable and not cnp.PyArray_ISWRITEABLE(other)) \
            or cnp.PyArray_NDIM(other) != cnp.PyArray_NDIM(value):
        return False
    cdef int axis
    for axis in range(cnp.PyArray_NDIM(value)):
        if cnp.PyArray_DIM(other, axis) != cnp.PyArray_DIM(value, axis):
            return False
    return True


def parameter_ready(object value, object grad, object state) -> bool:
    """True when a parameter's value, grad and optimizer state are as the update
    loops need them: corenet.optim.check_parameter's checks, at C level, for the
    common case of every step. False sends the caller to those checks, which name
    what is wrong (or accept what this one is too strict for: a step count that is
    a numpy integer)."""
    if not cnp.PyArray_Check(value):
        return False
    cdef cnp.ndarray array = <cnp.ndarray>value
    if cnp.PyArray_TYPE(array) not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64) \
            or not same_layout(value, array, True) or not same_layout(grad, array, False):
        return False
    if state is None:
        return True
    if type(state) is not dict or "step" not in state:
        return False
    for key, item in (<dict>state).items():
        if key == "step":
            if type(item) is not int or not 0 <= item < 2 ** 62:
                return False
        elif item is not None and not same_layout(item, array, True):
            return False
    return True


cdef struct Span:  # the bytes of one array of one tensor
    size_t start, end
    Py_ssize_t tensor


cdef int by_start(const void* a, const void* b) noexcept nogil:
    # By start, then end: a tensor's identical arrays (value as its own grad) side by side.
    cdef const Span* x = <const Span*>a
    cdef const Span* y = <const Span*>b
    if x.start != y.start:
        return -1 if x.start < y.start else 1
    return (x.end > y.end) - (x.end < y.end)


cdef inline bint conflict(const Span* x, const Span* y) noexcept nogil:
    """Two overlapping spans whose updates could race: of two tensors, or of one tensor
    whose arrays overlap shifted (the same array twice is read and written element by
    element, in place)."""
    return x.tensor != y.tensor or x.start != y.start or x.end != y.end


cdef bint spans_conflict(Span* spans, Py_ssize_t count) noexcept nogil:
    """Whether two of ``spans`` overlap and conflict (sorts ``spans``). In order of start,
    the first span to conflict with an earlier one overlaps the one that reaches
    furthest, and conflicts with it: otherwise that one would share its extent and
    tensor, and so conflict with the same earlier span, an earlier conflict."""
    qsort(spans, count, sizeof(Span), by_start)
    cdef Py_ssize_t furthest = -1, i
    for i in range(count):
        if furthest >= 0 and spans[i].start < spans[furthest].end \
                and conflict(&spans[i], &spans[furthest]):
            return True
        if furthest < 0 or spans[i].end > spans[furthest].end:
            furthest = i
    return False


cdef inline Py_ssize_t add_span(Span* spans, Py_ssize_t count, const void* data,
                                size_t nbytes, Py_ssize_t tensor) noexcept nogil:
    """Appends the bytes of one array (none if NULL or empty); the new count."""
    if data == NULL or nbytes == 0:
        return count
    spans[count] = Span(<size_t>data, <size_t>data + nbytes, tensor)
    return count + 1


def arrays_conflict(tensors) -> bool:
    """Whether the C-contiguous arrays of ``tensors`` (a sequence of tuples of arrays or
    None, the arrays of one tensor each) overlap where a parallel update could race:
    arrays of two tensors, or of one tensor shifted against each other. The test twin of
    the check TensorTable.fill makes for the passes of SGD, Adam and RMSprop."""
    tensors = [tuple(arrays) for arrays in tensors]
    cdef Py_ssize_t n_spans = 0, tensor
    for arrays in tensors:
        for array in arrays:
            if not (array is None or (cnp.PyArray_Check(array)
                                      and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>array))):
                raise TypeError(f"arrays_conflict: expected C-contiguous arrays or None, got "
                                f"{type(array).__name__}")
    cdef Span* spans = <Span*>malloc(max(sum(len(arrays) for arrays in tensors), 1)
                                     * sizeof(Span))
    if spans == NULL:
        raise MemoryError()
    try:
        for tensor, arrays in enumerate(tensors):
            for array in arrays:
                if array is not None:
                    n_spans = add_span(spans, n_spans, cnp.PyArray_DATA(<cnp.ndarray>array),
                                       cnp.PyArray_NBYTES(<cnp.ndarray>array), tensor)
        return spans_conflict(spans, n_spans)
    finally:
        free(spans)


cdef inline void* data_or_null(cnp.ndarray array):
    return NULL if array is None else cnp.PyArray_DATA(array)


cdef class TensorTable:
    """The C table of a pass over many parameters, checked and filled by ``fill``: their
    arrays, blocks, and the thread count (one where their memory is shared)."""
    cdef Tensor* tensors
    cdef Span* spans
    cdef Py_ssize_t count, blocks
    cdef int n_threads, type_num
    cdef tuple keep  # the arrays, alive while the kernel holds their addresses

    def __cinit__(self, Py_ssize_t count):
        self.tensors = <Tensor*>malloc(max(count, 1) * sizeof(Tensor))
        self.spans = <Span*>malloc(max(5 * count, 1) * sizeof(Span))
        if self.tensors == NULL or self.spans == NULL:
            raise MemoryError()
        self.count = count

    def __dealloc__(self):
        free(self.tensors)
        free(self.spans)

    cdef int fill(self, str kernel, tuple values, tuple grads, tuple states,
                  tuple used=(True, True, True)) except -1:
        """``states``: per tensor, a tuple of 3 state arrays or None (absent); each is
        checked, and one of a kind not ``used`` (a buffer at momentum 0) is not read."""
        self.keep = (values, grads, states)
        cdef Py_ssize_t total_size = 0, n_spans = 0, index, kind
        cdef size_t nbytes
        cdef Tensor* tensor
        self.type_num = -1
        self.blocks = 0
        for index in range(self.count):
            value, grad, arrays = values[index], grads[index], states[index]
            if not cnp.PyArray_Check(value) or not cnp.PyArray_Check(grad) \
                    or not all(array is None or cnp.PyArray_Check(array) for array in arrays):
                raise TypeError(f"{kernel}: expected arrays (an absent state may be None), "
                                f"got {type(value).__name__}, {type(grad).__name__}, "
                                f"{', '.join(type(array).__name__ for array in arrays)}")
            if checked_type(kernel, value, arrays, (grad,)) != self.type_num \
                    and self.type_num != -1:
                raise ValueError(f"{kernel}: the parameters mix float32 and float64")
            self.type_num = cnp.PyArray_TYPE(<cnp.ndarray>value)
            tensor = &self.tensors[index]
            tensor.value = cnp.PyArray_DATA(<cnp.ndarray>value)
            tensor.grad = cnp.PyArray_DATA(<cnp.ndarray>grad)
            for kind in range(3):
                tensor.state[kind] = data_or_null(arrays[kind]) if used[kind] else NULL
            tensor.size = cnp.PyArray_SIZE(<cnp.ndarray>value)
            tensor.first_block = self.blocks
            tensor.first = False
            total_size += tensor.size
            self.blocks += (tensor.size + BLOCK - 1) // BLOCK
            nbytes = cnp.PyArray_NBYTES(<cnp.ndarray>value)
            n_spans = add_span(self.spans, n_spans, tensor.value, nbytes, index)
            n_spans = add_span(self.spans, n_spans, tensor.grad, nbytes, index)
            for kind in range(3):
                n_spans = add_span(self.spans, n_spans, tensor.state[kind], nbytes, index)
        # Arrays a user made share memory (tied weights, a grad that is a view of another
        # array) would race in a parallel pass: one thread takes the blocks in order, each
        # tensor's after the one before, as one call each would.
        self.n_threads = 1 if spans_conflict(self.spans, n_spans) \
            else threads_for(total_size, GRAIN)
        return 0


cdef tuple same_length(str kernel, dict sequences):
    """The sequences as tuples (ours: a caller cannot free an array under the kernel),
    once they have one length."""
    tuples = tuple(tuple(sequence) for sequence in sequences.values())
    if len({len(items) for items in tuples}) > 1:
        raise ValueError(f"{kernel}: expected sequences of one length, got "
                         + ", ".join(f"{len(items)} {name}"
                                     for name, items in zip(sequences, tuples)))
    return tuples


def sgd_step(cnp.ndarray value not None, cnp.ndarray grad not None, cnp.ndarray buffer,
             double lr, double weight_decay=0, double momentum=0, double dampening=0,
             bint nesterov=False, bint first=False):
    """One SGD update of ``value`` in place, as torch.optim.SGD. ``buffer`` is the momentum
    buffer (None at momentum 0); ``first`` fills it with the direction, as PyTorch's first
    step does."""
    sgd_step_many([value], [grad], [buffer], [first], lr, weight_decay, momentum, dampening,
                  nesterov, "sgd_step")


def sgd_step_many(values, grads, buffers, firsts, double lr, double weight_decay=0,
                  double momentum=0, double dampening=0, bint nesterov=False,
                  str kernel="sgd_step_many"):
    """sgd_step on each (value, grad, buffer, first) of the sequences, all of one dtype,
    in one parallel pass: bitwise what one call each gives."""
    values, grads, buffers, firsts = same_length(kernel, {
        "values": values, "grads": grads, "buffers": buffers, "flags": firsts})
    for first in firsts:
        if not isinstance(first, (bool, np.bool_)):
            raise TypeError(f"{kernel}: the first-step flags must be True or False, got "
                            f"{type(first).__name__}")
    if momentum != 0 and any(buffer is None for buffer in buffers):
        raise ValueError(f"{kernel}: momentum needs a buffer array")
    cdef TensorTable table = TensorTable(len(values))
    table.fill(kernel, values, grads, tuple((buffer, None, None) for buffer in buffers),
               (momentum != 0, False, False))
    cdef Py_ssize_t index
    for index in range(table.count):
        table.tensors[index].first = firsts[index]
    if table.type_num == cnp.NPY_FLOAT32:
        with nogil:
            sgd_update[float](table.tensors, table.count, table.blocks, table.n_threads,
                              <float>lr, <float>weight_decay, <float>momentum,
                              <float>dampening, nesterov)
    elif table.count:
        with nogil:
            sgd_update[double](table.tensors, table.count, table.blocks, table.n_threads, lr,
                               weight_decay, momentum, dampening, nesterov)


def adam_step(cnp.ndarray value not None, cnp.ndarray grad not None,
              cnp.ndarray exp_avg not None, cnp.ndarray exp_avg_sq not None,
              cnp.ndarray max_exp_avg_sq, long step, double lr, double beta1, double beta2,
              double eps, double weight_decay=0, bint decoupled=False):
    """Adam's update number ``step`` (from 1) of ``value`` in place, as torch.optim.Adam;
    AdamW's with ``decoupled``. ``max_exp_avg_sq`` is given for amsgrad, else None."""
    adam_step_many([value], [grad], [exp_avg], [exp_avg_sq], [max_exp_avg_sq], [step], lr,
                   beta1, beta2, eps, weight_decay, decoupled, "adam_step")


def adam_step_many(values, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, double lr,
                   double beta1, double beta2, double eps, double weight_decay=0,
                   bint decoupled=False, str kernel="adam_step_many"):
    """adam_step on each parameter of the sequences (each with its own step count), all
    of one dtype, in one parallel pass: bitwise what one call each gives."""
    values, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = same_length(kernel, {
        "values": values, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
        "max_exp_avg_sqs": max_exp_avg_sqs, "steps": steps})
    for step in steps:
        if not isinstance(step, (int, np.integer)) or isinstance(step, (bool, np.bool_)) \
                or step < 1:
            raise ValueError(f"{kernel}: step counts from 1, got {step!r}")
    if any(array is None for array in exp_avgs + exp_avg_sqs):
        raise ValueError(f"{kernel}: exp_avg and exp_avg_sq must be arrays")
    cdef TensorTable table = TensorTable(len(values))
    table.fill(kernel, values, grads, tuple(zip(exp_avgs, exp_avg_sqs, max_exp_avg_sqs)))
    # The scalars as PyTorch works them out, in double.
    cdef double decoupled_factor = 1 - lr * weight_decay if decoupled else 1
    cdef double l2_decay = 0 if decoupled else weight_decay
    cdef Py_ssize_t index
    for index in range(table.count):
        table.tensors[index].step_size = lr / (1 - pow(beta1, <double>steps[index]))
        table.tensors[index].bias_correction2_sqrt = \
            pow(1 - pow(beta2, <double>steps[index]), 0.5)
    if table.type_num == cnp.NPY_FLOAT32:
        with nogil:
            adam_update[float](table.tensors, table.count, table.blocks, table.n_threads,
                               <float>l2_decay, <float>decoupled_factor, <float>(1 - beta1),
                               <float>beta2, <float>(1 - beta2), <float>eps)
    elif table.count:
        with nogil:
            adam_update[double](table.tensors, table.count, table.blocks, table.n_threads,
                                l2_decay, decoupled_factor, 1 - beta1, beta2, 1 - beta2, eps)


def rmsprop_step(cnp.ndarray value not None, cnp.ndarray grad not None,
                 cnp.ndarray square_avg not None, cnp.ndarray grad_avg, cnp.ndarray buffer,
                 double lr, double alpha, double eps, double weight_decay=0,
                 double momentum=0):
    """One RMSprop update of ``value`` in place, as torch.optim.RMSprop. ``grad_avg`` is
    given when centered, ``buffer`` when momentum > 0; else None."""
    rmsprop_step_many([value], [grad], [square_avg], [grad_avg], [buffer], lr, alpha, eps,
                      weight_decay, momentum, "rmsprop_step")


def rmsprop_step_many(values, grads, square_avgs, grad_avgs, buffers, double lr,
                      double alpha, double eps, double weight_decay=0, double momentum=0,
                      str kernel="rmsprop_step_many"):
    """rmsprop_step on each parameter of the sequences, all of one dtype, in one parallel
    pass: bitwise what one call each gives."""
    values, grads, square_avgs, grad_avgs, buffers = same_length(kernel, {
        "values": values, "grads": grads, "square_avgs": square_avgs,
        "grad_avgs": grad_avgs, "buffers": buffers})
    if any(array is None for array in square_avgs):
        raise ValueError(f"{kernel}: square_avg must be an array")
    if momentum > 0 and any(buffer is None for buffer in buffers):
        raise ValueError(f"{kernel}: momentum needs a buffer array")
    cdef TensorTable table = TensorTable(len(values))
    table.fill(kernel, values, grads, tuple(zip(square_avgs, grad_avgs, buffers)),
               (True, True, momentum > 0))
    if table.type_num == cnp.NPY_FLOAT32:
        with nogil:
            rmsprop_update[float](table.tensors, table.count, table.blocks, table.n_threads,
                                  <float>lr, <float>weight_decay, <float>alpha,
                                  <float>(1 - alpha), <float>eps, <float>momentum)
    elif table.count:
        with nogil:
            rmsprop_update[double](table.tensors, table.count, table.blocks, table.n_threads,
                                   lr, weight_decay, alpha, 1 - alpha, eps, momentum)


def sum_of_squares(cnp.ndarray x not None) -> float:
    """Σ x² of a C-contiguous float array, in double, the same for any thread count."""
    cdef int type_num = checked_type("sum_of_squares", x, (), ())
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    cdef double total
    cdef double* partial = <double*>malloc(max(1, (size + BLOCK - 1) // BLOCK)
                                           * sizeof(double))
    if partial == NULL:
        raise MemoryError()
    try:
        with nogil:
            if type_num == cnp.NPY_FLOAT32:
                total = sum_of_squares_of(<const float*>cnp.PyArray_DATA(x), size, partial)
            else:
                total = sum_of_squares_of(<const double*>cnp.PyArray_DATA(x), size, partial)
    finally:
        free(partial)
    return total


def scale(cnp.ndarray x not None, double factor) -> None:
    """x *= factor in place, each product computed in double and rounded to x's dtype."""
    cdef int type_num = checked_type("scale", x, (), ())
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    with nogil:
        if type_num == cnp.NPY_FLOAT32:
            scale_update(<float*>cnp.PyArray_DATA(x), size, factor)
        else:
            scale_update(<double*>cnp.PyArray_DATA(x), size, factor)
