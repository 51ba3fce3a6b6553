"""The graph executor: symbolic tensors, nodes, Model (a DAG) and Sequential.

Calling a layer on symbolic tensors adds a node; Model orders the nodes once
(iteratively, in a stable order), checks every shape while the graph is built,
then runs forward in that order and backward in reverse, summing the
gradients of a tensor that feeds several nodes. Each layer's output and each
gradient a layer returns are checked against the declared per-sample shape and
the model's dtype, so that a broken layer is named where it goes wrong.
"""
from __future__ import annotations

import numpy as np

from corenet.arguments import as_int
from corenet.errors import DTypeError, ShapeError
from corenet.kernels.elementwise import accumulate
from corenet.layer import (FLOAT_DTYPES, Layer, as_array, as_float_dtype, contiguous,
                           zero_layer_grads)
from corenet.memory import check_allocation


class SymbolicTensor:
    """The per-sample shape of a value in a graph and the node that makes it."""

    __slots__ = ("shape", "node", "name")

    def __init__(self, shape: tuple, node: "Node | None" = None, name: str | None = None):
        self.shape = tuple(shape)
        self.node = node
        self.name = name

    def __repr__(self) -> str:
        source = self.node.layer.name if self.node else "input"
        return f"SymbolicTensor(shape={self.shape}, from={source})"


def Input(shape, name: str | None = None) -> SymbolicTensor:
    """A model input of per-sample shape ``shape`` (the batch axis is implied).

    >>> import corenet as cn
    >>> cn.Input(shape=(64,))
    SymbolicTensor(shape=(64,), from=input)
    """
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not shape or not _positive_ints(shape):
        raise ShapeError(f"Input: shape must be a non-empty tuple of positive ints, got "
                         f"{shape!r}")
    return SymbolicTensor(tuple(int(size) for size in shape), None, name)


def _positive_ints(sizes) -> bool:
    return all(isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 1
               for size in sizes)


class Node:
    __slots__ = ("layer", "inputs", "output")

    def __init__(self, layer: Layer, inputs: tuple):
        self.layer = layer
        self.inputs = inputs
        self.output = None


def add_node(layer: Layer, inputs: tuple) -> SymbolicTensor:
    """Called by Layer.__call__ on symbolic tensors: check shapes now, not mid-epoch."""
    if layer._node is not None:
        raise ValueError(f"{layer!r} is already used at another node of a graph; a layer "
                         f"instance belongs to one node: create a new instance "
                         f"(shared weights are not supported)")
    shape = _declared_shape(layer, layer.output_shape(*(tensor.shape for tensor in inputs)))
    node = Node(layer, inputs)
    node.output = SymbolicTensor(shape, node)
    layer._node = node
    return node.output


def _declared_shape(layer: Layer, shape) -> tuple:
    """What output_shape returned, checked: the executor checks each forward against it."""
    if not isinstance(shape, tuple) or not _positive_ints(shape):
        raise ShapeError(f"{layer!r}: output_shape must return the per-sample output shape "
                         f"as a tuple of positive ints, got {shape!r}")
    return tuple(int(size) for size in shape)


def _as_list(tensors) -> list:
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def topological_order(outputs: list) -> list:
    """Nodes that the outputs depend on, each after its inputs' nodes (iterative DFS)."""
    order, done, on_path = [], set(), set()
    for output in outputs:
        if output.node is None or id(output.node) in done:
            continue
        stack = [(output.node, 0)]
        on_path.add(id(output.node))
        while stack:
            node, next_input = stack.pop()
            if next_input < len(node.inputs):
                stack.append((node, next_input + 1))
                child = node.inputs[next_input].node
                if child is not None and id(child) not in done:
                    if id(child) in on_path:
                        raise ValueError("the graph has a cycle")
                    on_path.add(id(child))
                    stack.append((child, 0))
            else:
                on_path.discard(id(node))
                done.add(id(node))
                order.append(node)
    return order


class HookHandle:
    """What register_forward_hook returns: ``remove()`` unregisters the hook (once)."""

    __slots__ = ("_hooks", "_hook")

    def __init__(self, hooks: list, hook):
        self._hooks = hooks
        self._hook = hook

    def remove(self) -> None:
        if self._hook is not None and self._hook in self._hooks:
            self._hooks.remove(self._hook)
        self._hook = None


class Model:
    """A DAG of layers from ``inputs`` to ``outputs``.

    >>> import corenet as cn, corenet.layers as L, numpy as np
    >>> x = cn.Input(shape=(4,))
    >>> h = L.ReLU()(L.Linear(4, 8)(x))
    >>> model = cn.Model(inputs=x, outputs=L.Linear(8, 2)(L.Add()(h, L.Linear(4, 8)(x))))
    >>> model.forward(np.ones((3, 4), np.float32)).shape
    (3, 2)

    ``forward`` returns fresh arrays; the intermediate values live in buffers
    that the layers reuse from step to step. ``backward`` returns dL/dinputs
    only when ``requires_input_grad`` is True (as ``x.requires_grad`` in
    PyTorch); otherwise the first layers skip that product and it returns None.
    """

    def __init__(self, inputs, outputs, requires_input_grad: bool = False):
        self.inputs = _as_list(inputs)
        self.outputs = _as_list(outputs)
        for tensor in self.inputs + self.outputs:
            if not isinstance(tensor, SymbolicTensor):
                raise TypeError(f"Model: inputs and outputs must be symbolic tensors, "
                                f"got {type(tensor).__name__}")
        self.nodes = topological_order(self.outputs)
        self.layers = [node.layer for node in self.nodes]
        self._build_plan()
        self.requires_input_grad = requires_input_grad
        self._forward_hooks = []
        # How the model was trained, as far as later commands need it (corenet train
        # records the split seed and test fraction); saved and loaded with the model.
        self.training_info: dict = {}
        # Called as hook(layer) right after each layer's backward, in backward order:
        # corenet.distributed starts a bucket's allreduce there (while earlier layers compute).
        self.backward_hooks: list = []
        # (shape, dtype) of each output of the last forward: its gradients must match them.
        self._output_specs: list | None = None
        # The dtype of the first parameter, else of the first layer that has one (a
        # layer_norm without affine parameters still computes in its dtype), else float32.
        parameters = self.parameters()
        dtypes = [np.dtype(layer.dtype) for layer in self.layers
                  if getattr(layer, "dtype", None) is not None]
        self.dtype = parameters[0].value.dtype if parameters else \
            dtypes[0] if dtypes else np.dtype(np.float32)
        # A layer computes in its own dtype and refuses inputs of another: a float64 Linear
        # after a float32 one built fine and failed at every forward, mid-epoch.
        for layer in self.layers:
            dtype = getattr(layer, "dtype", None)
            if dtype is not None and np.dtype(dtype) != self.dtype:
                raise DTypeError(f"Model: {layer!r} computes in {np.dtype(dtype)}, the model "
                                 f"in {self.dtype} (its first parameters'); build every layer "
                                 f"with one dtype, or convert them with Model.astype")

    def _build_plan(self) -> None:
        slots = {id(tensor): index for index, tensor in enumerate(self.inputs)}
        if len(slots) != len(self.inputs):  # forward takes one array per input
            raise ValueError("Model: an Input is listed twice among the model's inputs")
        for node in self.nodes:
            for tensor in node.inputs:
                if tensor.node is None and id(tensor) not in slots:
                    raise ValueError(f"Model: {node.layer!r} reads an Input {tensor} that is "
                                     f"not among the model's inputs")
            slots[id(node.output)] = len(slots)
        for tensor in self.outputs:
            if id(tensor) not in slots:
                raise ValueError(f"Model: output {tensor} is not computed from the inputs")
        self._n_slots = len(slots)
        # The per-sample shape of each slot, which a gradient flowing into it must have.
        self._slot_shapes = [tensor.shape for tensor in self.inputs] + \
            [node.output.shape for node in self.nodes]
        self._input_slots = list(range(len(self.inputs)))
        self._output_slots = [slots[id(tensor)] for tensor in self.outputs]
        # (layer, input slots, output slot) of every node, for the forward hooks. The
        # first node of a fused pair never fills its output slot (nor so the second's input).
        self._node_slots = [(node.layer, [slots[id(t)] for t in node.inputs],
                             slots[id(node.output)]) for node in self.nodes]
        # (layer, input slots, output slot, fused) in topological order. A fused pair
        # (see _fusable_pairs) is one entry that writes the second node's output;
        # `fused` is the second layer, None elsewhere.
        pairs = self._fusable_pairs()
        second_nodes = {id(second) for second in pairs.values()}
        self._plan = []
        for node in self.nodes:
            if id(node) in second_nodes:
                continue
            second = pairs.get(id(node))
            self._plan.append((node.layer, [slots[id(t)] for t in node.inputs],
                               slots[id((second or node).output)],
                               second.layer if second else None))
        for layer in self.layers:
            layer.reuse_buffers = True

    def _fusable_pairs(self) -> dict:
        """Offer each layer the node that alone consumes its output (Linear → ReLU:
        the ReLU goes into the GEMM epilogue). Returns {id(first): second node}."""
        consumers = {}
        for node in self.nodes:
            for tensor in node.inputs:
                consumers.setdefault(id(tensor), []).append(node)
        outputs = {id(tensor) for tensor in self.outputs}
        pairs, seconds = {}, set()
        for node in self.nodes:
            following = consumers.get(id(node.output), [])
            if (len(following) == 1 and len(following[0].inputs) == 1
                    and id(node.output) not in outputs and id(node) not in seconds
                    and hasattr(node.layer, "can_fuse")
                    and node.layer.can_fuse(following[0].layer)):
                pairs[id(node)] = following[0]
                seconds.add(id(following[0]))
        return pairs

    @property
    def requires_input_grad(self) -> bool:
        return self._requires_input_grad

    @requires_input_grad.setter
    def requires_input_grad(self, value: bool) -> None:
        self._requires_input_grad = bool(value)
        # (layer, needs_input_grad, fused_activation or no setting), applied before
        # every forward: another Model over the same layers may set them otherwise.
        self._settings = []
        for layer, input_slots, _, fused in self._plan:
            from_inputs = all(slot in self._input_slots for slot in input_slots)
            self._settings.append((layer, self._requires_input_grad or not from_inputs,
                                   hasattr(layer, "can_fuse"), fused))
        # The plan in backward order, with whether each input slot needs a gradient: a
        # None for one of them silently left every layer before it without one.
        self._backward_plan = [
            (layer, input_slots, output_slot, fused,
             [self._requires_input_grad or slot not in self._input_slots
              for slot in input_slots])
            for layer, input_slots, output_slot, fused in reversed(self._plan)]

    # -- running -----------------------------------------------------------------

    def _check_input(self, index: int, x) -> np.ndarray:
        expected = self.inputs[index].shape
        if (type(x) is np.ndarray and x.dtype == self.dtype and x.shape[1:] == expected
                and x.ndim == len(expected) + 1 and x.shape[0] and x.flags.c_contiguous):
            return x  # every step: no label built
        label = f"Model input {index}" + (f" {self.inputs[index].name!r}"
                                          if self.inputs[index].name else "")
        x = as_array(label, "the input", x)
        if x.dtype.kind not in "f":
            raise DTypeError(f"{label}: expected a float array, got dtype {x.dtype}")
        if x.ndim != len(expected) + 1 or x.shape[1:] != expected:
            raise ShapeError(f"{label}: expected shape (batch, {', '.join(map(str, expected))}), "
                             f"got {x.shape}")
        if x.shape[0] == 0:
            raise ShapeError(f"{label}: got an empty batch, shape {x.shape}")
        if x.dtype != self.dtype or not x.flags.c_contiguous:
            # Like Keras, floats of another width are cast to the model's dtype.
            check_allocation(label, "a C-contiguous copy of the input", x.shape, self.dtype)
            x = np.ascontiguousarray(x, dtype=self.dtype)
        return x

    def forward(self, *xs):
        """Run the graph; one array per output (a single array for one output)."""
        if len(xs) != len(self.inputs):
            raise TypeError(f"Model.forward: expected {len(self.inputs)} input array(s), "
                            f"got {len(xs)}")
        values = [None] * self._n_slots
        for index, x in enumerate(xs):
            values[index] = self._check_input(index, x)
        for layer, needs_input_grad, fusable, fused in self._settings:
            layer.needs_input_grad = needs_input_grad
            if fusable:
                layer.fused_activation = fused
        shapes, dtype = self._slot_shapes, self.dtype
        try:
            for layer, input_slots, output_slot, fused in self._plan:
                if len(input_slots) == 1:
                    output = layer.forward(values[input_slots[0]])
                else:
                    output = layer.forward(*[values[slot] for slot in input_slots])
                # Cheap, every step: a wrong output otherwise fails later, blaming another.
                expected = (len(values[input_slots[0]]),) + shapes[output_slot]
                if not (isinstance(output, np.ndarray) and output.shape == expected
                        and output.dtype == dtype):
                    _raise_bad_output(layer, fused, output, expected, dtype)
                values[output_slot] = output
        finally:
            for layer, _, fusable, _ in self._settings:
                if fusable:  # a layer called on its own afterwards runs unfused
                    layer.fused_activation = None
        if self._forward_hooks:
            self._run_forward_hooks(values)
        # Copies: the layers reuse their buffers at the next step.
        outputs = [values[slot].copy() for slot in self._output_slots]
        self._output_specs = [(output.shape, output.dtype) for output in outputs]
        return outputs[0] if len(outputs) == 1 else outputs

    __call__ = forward

    def register_forward_hook(self, hook) -> "HookHandle":
        """Call ``hook(layer, inputs, output)`` for each layer after every forward, as
        PyTorch's hooks of that name; returns a handle whose ``remove()`` unregisters it.

        ``inputs`` is the tuple of the layer's input arrays. Fused pairs (Linear → ReLU)
        never materialise the first layer's output: that layer gets no call, and the
        second gets ``(None,)`` as its inputs. The arrays are the executor's buffers,
        valid until the next forward: read them, do not keep or modify them.

        >>> import corenet as cn, corenet.layers as L, numpy as np
        >>> model = cn.Sequential(L.Linear(2, 3), L.ReLU())
        >>> seen = []
        >>> handle = model.register_forward_hook(lambda layer, inputs, out: seen.append(
        ...     (layer.name, inputs[0] is None, out.shape)))
        >>> _ = model.forward(np.ones((4, 2), np.float32)); handle.remove()
        >>> seen
        [('relu', True, (4, 3))]
        """
        if not callable(hook):
            raise TypeError(f"register_forward_hook: expected a callable, got "
                            f"{type(hook).__name__}")
        self._forward_hooks.append(hook)
        return HookHandle(self._forward_hooks, hook)

    def _run_forward_hooks(self, values: list) -> None:
        for layer, input_slots, output_slot in self._node_slots:
            output = values[output_slot]
            if output is None:  # the first layer of a fused pair
                continue
            inputs = tuple(values[slot] for slot in input_slots)
            for hook in list(self._forward_hooks):
                hook(layer, inputs, output)

    def backward(self, *grads):
        """Back-propagate dL/doutputs; parameters' .grad receive dL/dW (added)."""
        if len(grads) != len(self.outputs):
            raise TypeError(f"Model.backward: expected {len(self.outputs)} gradient(s), "
                            f"got {len(grads)}")
        grads = [self._check_output_grad(index, grad) for index, grad in enumerate(grads)]
        values = [None] * self._n_slots
        owned = set()  # slots whose array the executor allocated to sum fan-out
        for slot, grad in zip(self._output_slots, grads):
            values[slot] = self._add_grad(values, owned, slot, grad)
        dtype, shapes = self.dtype, self._slot_shapes
        for layer, input_slots, output_slot, fused, needed in self._backward_plan:
            grad = values[output_slot]
            values[output_slot] = None
            if grad is None:
                continue
            input_grads = layer.backward(grad)
            for hook in self.backward_hooks:
                if fused is not None:  # the pair ran as one: its second layer first
                    hook(fused)
                hook(layer)
            if len(input_slots) == 1:
                input_grads = (input_grads,)
            elif input_grads is None:
                input_grads = (None,) * len(input_slots)
            elif (not isinstance(input_grads, (tuple, list))
                  or len(input_grads) != len(input_slots)):
                # zip would pair the inputs with the rows of one array, or drop a gradient.
                raise TypeError(f"Model.backward: {layer!r} has {len(input_slots)} inputs, "
                                f"its backward must return a tuple of as many gradients, "
                                f"got {_describe_grads(input_grads)}")
            for index, (slot, input_grad) in enumerate(zip(input_slots, input_grads)):
                expected = (len(grad),) + shapes[slot]
                if not (isinstance(input_grad, np.ndarray) and input_grad.shape == expected
                        and input_grad.dtype == dtype):
                    if input_grad is None and not needed[index]:
                        continue  # an input of the model that needs no gradient
                    _raise_bad_input_grad(layer, index, input_grad, expected, dtype)
                values[slot] = self._add_grad(values, owned, slot, input_grad)
        if not self._requires_input_grad:
            return None
        input_grads = [values[slot] if values[slot] is None else values[slot].copy()
                       for slot in self._input_slots]
        return input_grads[0] if len(input_grads) == 1 else input_grads

    def _check_output_grad(self, index: int, grad) -> np.ndarray:
        """The gradient of output ``index``: the shape and dtype forward gave that output
        (an output that is an input reaches no layer's own check)."""
        specs = self._output_specs
        if (specs is not None and type(grad) is np.ndarray and grad.shape == specs[index][0]
                and grad.dtype == specs[index][1] and grad.flags.c_contiguous):
            return grad  # the loss's gradient, every step: no messages built
        label = f"Model.backward: gradient {index}"
        if grad is None:  # it would skip the whole backward pass, silently
            raise TypeError(f"{label} is None; give one array per output (zeros for an "
                            f"output the loss does not use)")
        if self._output_specs is None:
            raise RuntimeError("Model.backward called before forward")
        shape, dtype = self._output_specs[index]
        grad = as_array("Model.backward", f"gradient {index}", grad)
        _check_grad_spec(label, grad, shape, dtype, "the forward output's")
        return contiguous("Model.backward", f"gradient {index}", grad)

    @staticmethod
    def _add_grad(values: list, owned: set, slot: int, grad: np.ndarray) -> np.ndarray:
        current = values[slot]
        if current is None:
            return grad
        if slot not in owned:  # never write into an array a layer owns
            owned.add(slot)
            current = current.copy()  # C-contiguous, as accumulate requires
        accumulate(current, contiguous("Model.backward", "a gradient", grad))
        return current

    # -- parameters and modes ----------------------------------------------------

    def parameters(self) -> list:
        return [parameter for layer in self.layers for parameter in layer.parameters()]

    def state_dict(self) -> dict:
        """{"<node index>.<parameter or buffer>": array copy}: PyTorch's keys for a
        Sequential ("0.weight", "2.bias", "1.running_mean"); see corenet.state."""
        from corenet.state import state_dict

        return state_dict(self)

    def load_state_dict(self, state: dict, strict: bool = True):
        """Copy arrays (or PyTorch tensors) into the parameters and buffers, checked first;
        strict: missing and unexpected keys are errors too. Returns (missing, unexpected)."""
        from corenet.state import load_state_dict

        return load_state_dict(self, state, strict)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Every layer's gradients to zero, or to None (Parameter.unset_grad)."""
        for layer in self.layers:
            zero_layer_grads(layer, set_to_none)  # a plugin's zero_grad may take no argument

    def astype(self, dtype) -> "Model":
        """Convert every parameter (and so the model's inputs) to float32 or float64."""
        dtype = as_float_dtype(dtype, type(self).__name__)
        for layer in self.layers:
            layer.astype(dtype)
        self.dtype = dtype
        return self

    def train(self, mode: bool = True) -> "Model":
        """Every layer in training mode, as PyTorch's ``Module.train``; ``fit`` calls it."""
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> "Model":
        """Every layer in evaluation mode (dropout off, batch norm's running statistics);
        ``predict`` and ``evaluate`` use it for their pass and restore the modes after."""
        return self.train(False)

    def predict(self, x, batch_size: int = 1024):
        """Forward in evaluation mode, in batches; returns what forward does: one array,
        or a list of one array per output."""
        batch_size = as_int("Model.predict", "batch_size", batch_size, 1, integral_floats=False)
        x = as_array("Model.predict", "the input", x)
        if x.ndim == 0 or len(x) == 0:
            raise ShapeError(f"Model.predict: expected a non-empty batch, got shape {x.shape}")
        for output in self.outputs:  # a zero-stride view of 10¹² samples: refused, not run
            check_allocation("Model.predict", "the output", (len(x),) + output.shape,
                             self.dtype)
        was_training = [layer.training for layer in self.layers]
        self.eval()
        try:
            parts = [self.forward(x[start:start + batch_size])
                     for start in range(0, len(x), batch_size)]
        finally:
            for layer, mode in zip(self.layers, was_training):
                layer.training = mode
        if len(self.outputs) == 1:
            return np.concatenate(parts)
        return [np.concatenate(batches) for batches in zip(*parts)]  # output by output

    def __repr__(self) -> str:
        lines = [f"  {layer!r}" for layer in self.layers]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _check_grad_spec(label: str, grad: np.ndarray, shape: tuple, dtype, source: str) -> None:
    """A gradient has the shape and dtype of what it differentiates (``source``)."""
    if grad.shape != shape:
        raise ShapeError(f"{label}: expected shape {shape} ({source}), got {grad.shape}")
    if grad.dtype != dtype:
        raise DTypeError(f"{label}: expected {dtype} ({source}), got {grad.dtype}")


def _raise_bad_input_grad(layer: Layer, index: int, grad, shape: tuple, dtype) -> None:
    """What is wrong with the gradient ``layer.backward`` returned for its input ``index``,
    once the cheap check in Model.backward failed."""
    if grad is None:
        raise TypeError(f"Model.backward: {layer!r} returned None as the gradient of its "
                        f"input {index}, which the layers before it (or requires_input_grad) "
                        f"need; return an array of shape {shape}")
    if not isinstance(grad, np.ndarray):  # a pair for one input, or a list
        raise ShapeError(f"Model.backward: {layer!r} returned {_describe_grads(grad)} as the "
                         f"gradient of an input of shape {shape}")
    _check_grad_spec(f"Model.backward: {layer!r}, the gradient of its input {index}", grad,
                     shape, dtype, "that input's")


def _raise_bad_output(layer: Layer, fused, output, shape: tuple, dtype) -> None:
    label = f"Model.forward: {layer!r}" + (f" (fused with {fused!r})" if fused else "")
    if not isinstance(output, np.ndarray):
        raise TypeError(f"{label} returned {_describe_grads(output)}; expected an array of "
                        f"shape {shape} and dtype {dtype}")
    if output.shape != shape:
        raise ShapeError(f"{label} returned an array of shape {output.shape}; expected "
                         f"{shape} (the batch, then the shape its output_shape declared)")
    raise DTypeError(f"{label} returned an array of dtype {output.dtype}; expected {dtype} "
                     f"(the model's dtype)")


def _describe_grads(grads) -> str:
    if grads is None:
        return "None"
    if isinstance(grads, np.ndarray):
        return f"an array of shape {grads.shape}"
    if isinstance(grads, (tuple, list)):
        return f"a {type(grads).__name__} of {len(grads)}"
    return f"a {type(grads).__name__}"


class Sequential(Model):
    """A chain of layers; the input shape comes from the first layer when it knows it.

    >>> import corenet as cn, corenet.layers as L
    >>> model = cn.Sequential(L.Linear(64, 128), L.ReLU(), L.Linear(128, 10))
    >>> model.inputs[0].shape
    (64,)

    A first layer that takes any shape (an activation) needs ``input_shape``.
    """

    def __init__(self, *layers: Layer, input_shape=None, requires_input_grad: bool = False):
        if not layers:
            raise ValueError("Sequential: give at least one layer")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: expected layers, got {type(layer).__name__}")
        if input_shape is None:
            input_shape = getattr(layers[0], "input_shape", None)
        if input_shape is None:
            raise ValueError(f"Sequential: {layers[0]!r} does not fix the input shape; "
                             f"pass input_shape=(features, ...)")
        x = Input(input_shape)
        output = x
        for layer in layers:
            output = layer(output)
        super().__init__(x, output, requires_input_grad)


__all__ = ["FLOAT_DTYPES", "Input", "Model", "Sequential", "SymbolicTensor"]
