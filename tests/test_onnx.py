"""ONNX export checked by onnx.checker and against onnxruntime; import back, exactly."""
import os
import sys

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet import models
from corenet.registry import registry
from layer_table import LAYERS, builtin_names, layer_id

REASON = 'needs the onnx extra: pip install "corenet[onnx]" (onnx and onnxruntime)'
onnx = pytest.importorskip("onnx", reason=REASON)
runtime = pytest.importorskip("onnxruntime", reason=REASON)
import corenet.onnx  # noqa: E402  (after the skip)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def run_onnxruntime(path, *xs):
    session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), xs)})
    return outputs[0] if len(outputs) == 1 else outputs


def random_inputs(model, batch, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch,) + tensor.shape).astype(dtype)
            for tensor in model.inputs]


def randomize(model, seed=1):
    """Parameters and state buffers away from their initial values (PReLU's 0.25
    everywhere, batch norm's running statistics of 0 and 1, say); float buffers stay
    positive (they may be variances)."""
    rng = np.random.default_rng(seed)
    for parameter in model.parameters():
        parameter.value[...] = rng.uniform(-1, 1, parameter.value.shape)
    for layer in model.layers:
        for buffer in layer.state_buffers():
            buffer.value[...] = rng.uniform(0.5, 1.5, buffer.value.shape) \
                if buffer.value.dtype.kind == "f" else 3
    return model


def state_arrays(model):
    return [array.value for layer in model.layers
            for array in layer.parameters() + layer.state_buffers()]


def check_export(model, path, batches=(1, 5), opset=corenet.onnx.DEFAULT_OPSET):
    """Export, onnx.checker, onnxruntime within 1e-5 of model.predict (evaluation mode,
    whatever the model's mode) for several batch sizes (the batch axis is dynamic), and
    the import back: the same layers, configs, parameters and buffers, in evaluation
    mode, outputs bitwise equal."""
    corenet.onnx.export(model, str(path), opset=opset)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    back = corenet.onnx.load(str(path))
    assert [(layer.name, layer.get_config()) for layer in back.layers] == \
        [(layer.name, layer.get_config()) for layer in model.layers]
    for ours, theirs in zip(state_arrays(model), state_arrays(back), strict=True):
        np.testing.assert_array_equal(theirs, ours)
        assert theirs.dtype == ours.dtype
    assert not any(layer.training for layer in back.layers)
    was_training = [layer.training for layer in model.layers]
    model.eval()
    for batch in batches:
        xs = random_inputs(model, batch, seed=batch, dtype=model.dtype)
        expected = model.forward(*xs)
        np.testing.assert_allclose(run_onnxruntime(path, *xs), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(back.forward(*xs), expected)
    for layer, mode in zip(model.layers, was_training):
        layer.train(mode)
    return proto


@pytest.mark.parametrize("row", LAYERS, ids=layer_id)
def test_every_layer_exports_and_imports(row, tmp_path):
    name, config, shapes = row
    inputs = [cn.Input(shape) for shape in shapes]
    model = randomize(cn.Model(inputs, L.create(name, **config)(*inputs)))
    check_export(model, tmp_path / "layer.onnx")


def test_every_builtin_layer_has_an_exporter():
    # A new built-in layer needs a line in corenet.onnx.export.EXPORTERS (and a row in
    # tests/layer_table.py, which the test above runs through the export).
    assert builtin_names() - set(corenet.onnx.EXPORTERS) == set()


def test_the_cli_models_export_from_the_command_line(tmp_path, capsys):
    from corenet.cli import main

    cn.random.seed(0)
    for name, model in [("mlp", models.build_mlp(64, [32], 10)),
                        ("cnn", models.build_cnn((1, 8, 8), 10, channels=(8, 16)))]:
        randomize(model)
        cn.save(model, str(tmp_path / f"{name}.npz"))
        target = tmp_path / f"{name}.onnx"
        assert main(["export", str(tmp_path / f"{name}.npz"), str(target)]) == 0
        assert f"wrote {target}" in capsys.readouterr().out
        xs = random_inputs(model, 7)
        np.testing.assert_allclose(run_onnxruntime(target, *xs), model.predict(*xs),
                                   rtol=1e-5, atol=1e-5)
        back = corenet.onnx.load(str(target))
        np.testing.assert_array_equal(back.forward(*xs), model.forward(*xs))


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    from corenet.cli import main

    cn.save(models.build_mlp(4, [3], 2), str(tmp_path / "m.npz"))
    assert main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx"),
                 "--opset", "12"]) == 2
    assert "opset must be an integer from 17" in capsys.readouterr().err


def test_the_export_is_written_as_corenet_save_writes(tmp_path):
    # It was written through a bare mkstemp: 0600 whatever the umask (unreadable by the
    # service that serves it), not synced before the rename, and the temporary file of
    # an export killed outright stayed for ever.
    stale = tmp_path / ".corenet-save-999999999-abc.tmp"  # no such process
    stale.write_bytes(b"half a file")
    path = tmp_path / "m.onnx"
    corenet.onnx.export(cn.Sequential(L.Linear(4, 3)), str(path))
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_cli_export_onto_a_pipe_or_a_folder_is_one_line_and_leaves_them(tmp_path, capsys):
    # The rename replaced whatever had the name (run as root: the device /dev/null).
    from corenet.cli import main

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cn.save(models.build_mlp(4, [3], 2), str(tmp_path / "m.npz"))
    for target, message in [(fifo, f"{fifo}: not a regular file"),
                            (tmp_path, "expected a file name, not a folder")]:
        assert main(["export", str(tmp_path / "m.npz"), str(target)]) == 2
        assert message in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "pipe"]


def test_cli_export_onto_the_model_file_itself_is_refused(tmp_path, capsys):
    from corenet.cli import main

    model = tmp_path / "m.npz"
    cn.save(models.build_mlp(4, [3], 2), str(model))
    saved = model.read_bytes()
    os.symlink(model, tmp_path / "link.onnx")
    for target in (model, tmp_path / "link.onnx"):
        assert main(["export", str(model), str(target)]) == 2
        assert f"FILE.onnx '{target}' is the model file itself" in capsys.readouterr().err
    assert model.read_bytes() == saved


def test_a_dag_with_branches_and_two_outputs(tmp_path):
    x = cn.Input((3, 6, 6), name="image")
    a = L.ReLU()(L.Conv2d(3, 4, 3, padding=1)(x))
    b = L.Conv2d(3, 4, 1)(x)
    merged = L.Add()(a, b, L.Tanh()(b))
    pooled = L.Flatten()(L.MaxPool2d(2)(merged))
    head = L.Linear(40, 5)(L.Concat()(pooled, L.GlobalAvgPool()(merged)))
    model = randomize(cn.Model(x, [L.Softmax()(head), head]))
    proto = check_export(model, tmp_path / "dag.onnx")
    assert [value.name for value in proto.graph.input] == ["image"]
    assert [value.name for value in proto.graph.output] == ["output0", "output1"]
    assert "Sum" in [node.op_type for node in proto.graph.node]  # the 3-input add


@pytest.mark.parametrize("layer, shape", [
    (lambda: L.Conv2d(2, 3, 3, padding="same", dilation=2), (2, 7, 7)),   # pads 2 and 2
    (lambda: L.Conv2d(2, 3, 2, padding="same", dilation=3), (2, 6, 7)),   # pads 1 and 2
    (lambda: L.Conv2d(2, 3, (2, 3), padding="same", dilation=(1, 2)), (2, 5, 6)),
    (lambda: L.Conv3d(2, 2, 2, padding="same", dilation=(1, 2, 3)), (2, 4, 5, 6))])
def test_a_dilated_same_convolution_runs_in_onnxruntime(layer, shape, tmp_path):
    # onnxruntime refuses auto_pad SAME_UPPER with a dilation ("Dilation not supported");
    # such a file failed at its first run. Its pads are written out, imported as "same".
    model = randomize(cn.Sequential(layer(), input_shape=shape))
    proto = check_export(model, tmp_path / "dilated.onnx")
    assert [attribute.name for attribute in proto.graph.node[0].attribute
            if attribute.name == "auto_pad"] == []


@pytest.mark.parametrize("name", ["0.weight", "0.linear/Gemm"])
def test_an_input_named_as_a_weight_or_node_keeps_its_name_and_values(name, tmp_path):
    # The input shared its name with the initializer "0.weight": onnxruntime read the
    # input as the weight, and the file computed x xᵀ + b, silently.
    x = cn.Input((4,), name=name)
    model = randomize(cn.Model(x, L.Tanh()(L.Linear(4, 4)(x))))
    proto = check_export(model, tmp_path / "named.onnx")
    assert [value.name for value in proto.graph.input] == [name]


@pytest.mark.parametrize("names, outputs, message", [
    (["output"], 1, "input 0 is named 'output', as an output is"),
    (["x", "output1"], 2, "input 1 is named 'output1', as an output is"),
    (["a", "a"], 1, "input 1 is named 'a', as another input is"),
    ([None, "input0"], 1, "input 1 is named 'input0', as another input is")])
def test_input_names_onnx_cannot_hold_are_refused_by_name(names, outputs, message, tmp_path):
    # These were onnx.checker's ValidationError (no ValueError: a traceback from the CLI).
    xs = [cn.Input((4,), name=name) for name in names]
    total = L.Add()(*xs) if len(xs) > 1 else L.ReLU()(xs[0])
    model = cn.Model(xs, [total] * outputs if outputs == 1 else [total, L.Tanh()(total)])
    with pytest.raises(ValueError, match=message):
        corenet.onnx.export(model, str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_float64_models_export_as_double(tmp_path):
    model = randomize(cn.Sequential(L.Linear(5, 4, dtype="float64"), L.Tanh(),
                                    L.Linear(4, 2, dtype="float64"), L.Softmax()))
    proto = check_export(model, tmp_path / "double.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert corenet.onnx.load(str(tmp_path / "double.onnx")).dtype == np.float64


def training_layers_model(dtype="float32"):
    cn.random.seed(0)
    return randomize(cn.Sequential(
        L.Linear(6, 8, dtype=dtype), L.BatchNorm1d(8, dtype=dtype), L.ReLU(), L.Dropout(0.5),
        L.Maxout(8, 3, pieces=2, dtype=dtype), L.LayerNorm(3, dtype=dtype)))


@pytest.mark.parametrize("opset", [17, 18])
def test_a_model_in_training_mode_exports_its_evaluation(opset, tmp_path):
    model = training_layers_model()
    before = model.state_dict()
    proto = check_export(model, tmp_path / "train.onnx", opset=opset)
    assert all(layer.training for layer in model.layers)  # the export left the modes
    for key, value in model.state_dict().items():  # and the running statistics alone
        np.testing.assert_array_equal(value, before[key])
    x = random_inputs(model, 16)[0]
    assert not np.allclose(model.forward(x), run_onnxruntime(tmp_path / "train.onnx", x))
    assert [node.op_type for node in proto.graph.node] == [
        "Gemm", "BatchNormalization", "Relu", "Dropout", "Gemm", "Reshape", "ReduceMax",
        "LayerNormalization"]
    reduce_max = proto.graph.node[6]
    # The axes of ReduceMax: an attribute in opset 17, an input from 18.
    assert ([a.name for a in reduce_max.attribute], len(reduce_max.input)) == \
        ((["axes", "keepdims"], 1) if opset == 17 else (["keepdims"], 2))


def test_float64_training_layers_export_as_double(tmp_path):
    model = training_layers_model("float64")
    check_export(model, tmp_path / "double.onnx")
    assert corenet.onnx.load(str(tmp_path / "double.onnx")).dtype == np.float64


@pytest.mark.parametrize("name, shape", [("batch_norm1d", (3,)), ("batch_norm1d", (3, 5)),
                                         ("batch_norm2d", (3, 2, 2))])
def test_batch_norm_without_running_statistics_normalises_by_the_batch(name, shape, tmp_path):
    model = randomize(cn.Sequential(L.create(name, num_features=3, track_running_stats=False),
                                    input_shape=shape))
    proto = check_export(model, tmp_path / "batch.onnx", batches=(4,))
    assert [node.op_type for node in proto.graph.node] == [
        "Unsqueeze", "Transpose", "InstanceNormalization", "Transpose", "Squeeze"]
    x = random_inputs(model, 4)[0]
    axes = (0,) + tuple(range(2, x.ndim))
    mean, variance = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    weight, bias = (p.value.reshape((1, 3) + (1,) * (x.ndim - 2)) for p in model.parameters())
    np.testing.assert_allclose(run_onnxruntime(tmp_path / "batch.onnx", x),
                               (x - mean) / np.sqrt(variance + 1e-5) * weight + bias,
                               rtol=1e-5, atol=1e-5)


def test_the_metadata_fills_in_only_what_onnx_does_not_say(tmp_path):
    model = randomize(cn.Sequential(
        L.Linear(4, 5, init="xavier_uniform"), L.BatchNorm1d(5, momentum=None, affine=False),
        L.LayerNorm(5, eps=1.234567891e-5, elementwise_affine=False)))
    path = str(tmp_path / "m.onnx")
    corenet.onnx.export(model, path)
    proto = onnx.load(path)
    entries = {entry.key: entry.value for entry in proto.metadata_props}
    assert sorted(entries) == ["corenet:0.linear/Gemm",
                               "corenet:1.batch_norm1d/BatchNormalization",
                               "corenet:2.layer_norm/LayerNormalization"]
    # Without it, a file computes the same; the training options are the defaults, and
    # ones and zeros are parameters.
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    bare = corenet.onnx.load(str(tmp_path / "bare.onnx"))
    assert [layer.get_config() for layer in bare.layers] == [
        dict(model.layers[0].get_config(), init="pytorch_uniform"),
        dict(model.layers[1].get_config(), momentum=0.1, affine=True),
        dict(model.layers[2].get_config(), eps=1.2345679e-5, elementwise_affine=True,
             bias=False)]
    assert bare.layers[1].num_batches_tracked.value == 0
    x = random_inputs(model, 3)[0]
    np.testing.assert_allclose(bare.forward(x), model.predict(x), rtol=1e-6, atol=1e-6)
    # Metadata that contradicts the operators loses: here the scale is not all ones.
    tampered = onnx.load(path)
    next(t for t in tampered.graph.initializer if t.name == "1.weight").CopyFrom(
        numpy_helper.from_array(np.full(5, 2, np.float32), "1.weight"))
    onnx.save(tampered, str(tmp_path / "tampered.onnx"))
    layer = corenet.onnx.load(str(tmp_path / "tampered.onnx")).layers[1]
    assert layer.affine and layer.momentum is None
    np.testing.assert_array_equal(layer.weight.value, 2)


@pytest.mark.parametrize("metadata, message", [
    ("{not json", "its corenet metadata is not JSON"),
    ('{"layer": "batch_norm1d", "config": [], "counts": {}}', "has no config and counts"),
    ('{"layer": "batch_norm1d", "config": {"momentum": 7}, "counts": {}}',
     r"momentum must be a number in \[0, 1\], got 7"),
    ('{"layer": "batch_norm1d", "config": {}, "counts": {"num_batches_tracked": -1}}',
     "num_batches_tracked must be a count, an integer from 0 to 9223372036854775807, got -1"),
    # Past int64 (2**63): once an OverflowError from numpy.
    ('{"layer": "batch_norm1d", "config": {}, "counts": {"num_batches_tracked": '
     '9223372036854775808}}', "from 0 to 9223372036854775807, got 9223372036854775808"),
])
def test_bad_metadata_is_refused_by_name(tmp_path, metadata, message):
    path = str(tmp_path / "m.onnx")
    corenet.onnx.export(cn.Sequential(L.BatchNorm1d(3), input_shape=(3,)), path)
    proto = onnx.load(path)
    proto.metadata_props[0].value = metadata
    onnx.save(proto, path)
    with pytest.raises(cn.ModelFileError, match=r"node 0 \('0.batch_norm1d/BatchNormalization"
                                                r"', BatchNormalization\): .*" + message):
        corenet.onnx.load(path)


def test_initializers_are_named_as_the_state_dict(tmp_path):
    model = cn.Sequential(L.Linear(4, 3), L.PReLU(), L.Linear(3, 2))
    corenet.onnx.export(model, str(tmp_path / "m.onnx"))
    names = [tensor.name for tensor in onnx.load(str(tmp_path / "m.onnx")).graph.initializer]
    assert names == list(model.state_dict())


# -- ONNX files from elsewhere ---------------------------------------------------------

def make_file(path, nodes, initializers=(), input_shape=("N", 4), opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"] + [None] * (
            len(input_shape) - 1))],
        [numpy_helper.from_array(np.asarray(value) if np.asarray(value).dtype.kind in "ib"
                                 else np.asarray(value, np.float32), name)
         for name, value in initializers])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return str(path)


@pytest.mark.parametrize("add_inputs, after, extra, layers", [
    (["b", "h"], [helper.make_node("Relu", ["z"], ["y"])], [], ["linear", "relu"]),
    (["h", "b"], [helper.make_node("Reshape", ["z", "shape"], ["pieces"]),
                  helper.make_node("ReduceMax", ["pieces"], ["y"], axes=[-1], keepdims=0)],
     [("shape", np.array([-1, 2, 3]))], ["maxout"]),
])
def test_matmul_and_add_import_as_one_linear_or_maxout(tmp_path, add_inputs, after, extra,
                                                       layers):
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((4, 6)), rng.standard_normal(6)
    path = make_file(tmp_path / "mm.onnx",
                     [helper.make_node("MatMul", ["x", "W"], ["h"]),
                      helper.make_node("Add", add_inputs, ["z"])] + after,
                     [("W", weight), ("b", bias)] + extra)
    model = corenet.onnx.load(path)
    assert [layer.name for layer in model.layers] == layers
    # maxout's weight (out, pieces, in) is the Linear's of out·pieces rows
    np.testing.assert_array_equal(model.layers[0].weight.value.reshape(6, 4),
                                  weight.T.astype(np.float32))
    x = rng.standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(model.forward(x), run_onnxruntime(path, x), rtol=1e-5, atol=1e-5)


def test_batch_layer_norm_and_dropout_from_elsewhere(tmp_path):
    rng = np.random.default_rng(0)
    scale, bias, mean = (rng.standard_normal(3) for _ in range(3))
    variance = rng.uniform(0.5, 2, 3)
    path = make_file(tmp_path / "norms.onnx",
                     [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"],
                                       epsilon=1e-3, momentum=0.99),
                      helper.make_node("Dropout", ["h", "", "off"], ["d"]),
                      helper.make_node("LayerNormalization", ["d", "ls"], ["y"], axis=1)],
                     [("s", scale), ("b", bias), ("m", mean), ("v", variance),
                      ("off", np.array(False)), ("ls", rng.standard_normal((3, 4, 5)))],
                     input_shape=("N", 3, 4, 5))
    model = corenet.onnx.load(path)
    assert [layer.get_config() for layer in model.layers] == [
        {"num_features": 3, "eps": 1e-3, "momentum": 0.01, "affine": True,
         "track_running_stats": True, "dtype": "float32"},
        {"p": 0.5},  # ONNX's default ratio
        {"normalized_shape": [3, 4, 5], "eps": 1e-5, "elementwise_affine": True, "bias": False,
         "dtype": "float32"}]
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(model.forward(x), run_onnxruntime(path, x), rtol=1e-5, atol=1e-5)


BATCH_NORM = [("s", np.ones(4)), ("b", np.zeros(4)), ("m", np.zeros(4)), ("v", np.ones(4))]


@pytest.mark.parametrize("nodes, initializers, message", [
    ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                       training_mode=1)], BATCH_NORM, "training_mode=1 normalises by the batch"),
    ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
     BATCH_NORM[:1] + [("b", np.zeros(3))] + BATCH_NORM[2:],
     r"its bias has shape \(3,\), expected \(4,\): one per channel"),
    ([helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=0)], [("s", np.ones(4))],
     "normalisation from axis 0 of a 2-D input"),
    ([helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"]),
      helper.make_node("Add", ["y", "mean"], ["z"])], [("s", np.ones(4))],
     r"its output\(s\) \['mean'\] are used"),
    ([helper.make_node("Dropout", ["x", "r", "on"], ["y"])],
     [("r", np.array(0.5)), ("on", np.array(True))], "training_mode input is not a constant"),
    ([helper.make_node("Dropout", ["x", "r"], ["y"])], [("r", np.ones(2))],
     "must be a float initializer holding one value"),
    ([helper.make_node("Dropout", ["x", "r"], ["y"])], [("r", np.ones(1))],
     r"dropout: p must be a number in \[0, 1\), got 1.0"),
    ([helper.make_node("Gemm", ["x", "W"], ["z"], transB=1),
      helper.make_node("Reshape", ["z", "shape"], ["p"]),
      helper.make_node("ReduceMax", ["p"], ["y"], axes=[2], keepdims=1)],
     [("W", np.ones((4, 4))), ("shape", np.array([0, 2, 2]))],
     r"node 1 \('unnamed', Reshape\): unsupported operator ai.onnx.Reshape"),
    ([helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], [("axes", np.array([0]))],
     "Unsqueeze is imported as the start of"),
    # onnxruntime broadcasts x (N, 4) and a slope (1, 1, 1) to (1, N, 4): not a PReLU's shape
    ([helper.make_node("PRelu", ["x", "slope"], ["y"])], [("slope", np.ones((1, 1, 1)))],
     r"its slope of shape \(1, 1, 1\) has 3 axes, expected at most 2, the input's"),
])
def test_what_the_new_operators_cannot_take_is_named(tmp_path, nodes, initializers, message):
    path = make_file(tmp_path / "bad.onnx", nodes, initializers)
    with pytest.raises(cn.ModelFileError, match=message):
        corenet.onnx.load(path)


@pytest.mark.parametrize("nodes, initializers, message", [
    ([helper.make_node("Cos", ["x"], ["y"], name="cosine")], [],
     r"node 0 \('cosine', Cos\): unsupported operator ai.onnx.Cos"),
    ([helper.make_node("Gemm", ["x", "W"], ["y"], alpha=2.0)], [("W", np.ones((4, 2)))],
     "only alpha=1, beta=1, transA=0"),
    ([helper.make_node("Gemm", ["x", "x"], ["y"])], [],
     "its B 'x' must be an initializer"),
    ([helper.make_node("Relu", ["x"], ["y"], foo=1)], [],
     "onnx.checker rejects it: Unrecognized attribute: foo"),
    ([helper.make_node("Softmax", ["x"], ["y"], axis=0)], [], "softmax over axis 0"),
    ([helper.make_node("Concat", ["x", "x"], ["y"], axis=0)], [], "along axis 0"),
    ([helper.make_node("Gemm", ["x", "W"], ["y"])], [("W", np.ones((5, 2)))],
     "linear: expected per-sample shape \\(5,\\)"),
    ([helper.make_node("GlobalAveragePool", ["x"], ["y"])], [],
     "when Flatten\\(axis=1\\) alone follows it"),
])
def test_what_cannot_be_imported_is_named(tmp_path, nodes, initializers, message):
    path = make_file(tmp_path / "bad.onnx", nodes, initializers)
    with pytest.raises(cn.ModelFileError, match=message) as caught:
        corenet.onnx.load(path)
    assert str(caught.value).startswith(path)


def test_pads_corenet_cannot_take_are_refused(tmp_path):
    path = make_file(tmp_path / "pads.onnx",
                     [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                       pads=[0, 0, 1, 1])],
                     input_shape=("N", 1, 4, 4))
    with pytest.raises(cn.ModelFileError, match="corenet pads each axis as much before"):
        corenet.onnx.load(path)


def test_malformed_and_hostile_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all\xff\xff")
    with pytest.raises(cn.ModelFileError, match="garbage.onnx"):
        corenet.onnx.load(str(garbage))
    with pytest.raises(FileNotFoundError):
        corenet.onnx.load(str(tmp_path / "missing.onnx"))
    # A weight "stored" in another file (here /etc/passwd) is refused, never read.
    path = make_file(tmp_path / "ext.onnx", [helper.make_node("Gemm", ["x", "W"], ["y"])],
                     [("W", np.ones((4, 2)))])
    proto = onnx.load(path)
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")
    onnx.save(proto, path)
    with pytest.raises(cn.ModelFileError, match="keeps its data in another file"):
        corenet.onnx.load(path)
    # An integer input, and an input without a fixed feature size.
    for input_shape, message in [(("N", "F"), "fixed positive sizes"), (("N",), "batch axis")]:
        path = make_file(tmp_path / "shape.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                         input_shape=input_shape)
        with pytest.raises(cn.ModelFileError, match=message):
            corenet.onnx.load(path)
    path = make_file(tmp_path / "old.onnx", [helper.make_node("Relu", ["x"], ["y"])], opset=11)
    with pytest.raises(cn.ModelFileError, match="opset 11"):
        corenet.onnx.load(path)
    # Element types onnx itself does not know: a KeyError inside onnx, once let through.
    path = make_file(tmp_path / "type.onnx", [helper.make_node("Gemm", ["x", "W"], ["y"])],
                     [("W", np.ones((4, 2)))])
    proto = onnx.load(path)
    proto.graph.initializer[0].data_type = 999
    onnx.save(proto, path)
    with pytest.raises(cn.ModelFileError, match="initializer 'W' cannot be read"):
        corenet.onnx.load(path)
    proto.graph.initializer[0].data_type = TensorProto.FLOAT
    proto.graph.input[0].type.tensor_type.elem_type = 999
    onnx.save(proto, path)
    with pytest.raises(cn.ModelFileError, match="input 'x' has element type code 999"):
        corenet.onnx.load(path)


def test_a_name_in_invalid_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "utf8.onnx"
    corenet.onnx.export(cn.Sequential(L.Linear(4, 3)), str(path))
    # protobuf reads the bytes as they are; onnx.checker's decoding raised UnicodeDecodeError
    path.write_bytes(path.read_bytes().replace(b"transB", b"trans\xd8", 1))
    with pytest.raises(cn.ModelFileError, match="onnx.checker cannot read it: "
                                                "UnicodeDecodeError") as caught:
        corenet.onnx.load(str(path))
    assert str(caught.value).startswith(str(path))


def test_metadata_nested_past_the_recursion_limit_is_refused(tmp_path):
    path = str(tmp_path / "deep.onnx")
    corenet.onnx.export(cn.Sequential(L.BatchNorm1d(3), input_shape=(3,)), path)
    proto = onnx.load(path)
    proto.metadata_props[0].value = "[" * 100000 + "]" * 100000
    onnx.save(proto, path)
    with pytest.raises(cn.ModelFileError, match="its corenet metadata is not JSON"):
        corenet.onnx.load(path)


@pytest.mark.parametrize("bias_shape", [(6, 1), (2, 6), (3, 2)])
def test_an_addend_that_is_not_a_row_is_not_taken_as_a_bias(tmp_path, bias_shape):
    # MatMul then Add of a (6, 1) column broadcasts down the batch in ONNX: taken for
    # a bias of 6 values, the import once computed other numbers than onnxruntime.
    path = make_file(tmp_path / "column.onnx",
                     [helper.make_node("MatMul", ["x", "W"], ["h"]),
                      helper.make_node("Add", ["h", "b"], ["y"])],
                     [("W", np.ones((4, 6))), ("b", np.ones(bias_shape))])
    with pytest.raises(cn.ModelFileError, match=r"its bias has shape \(\d, \d\), expected "
                                                r"\(6,\) or \(1, 6\)"):
        corenet.onnx.load(path)


# -- plugins, and corenet without onnx ----------------------------------------------------

class Double(cn.Layer):
    name = "double_for_onnx"

    def forward(self, x):
        return 2 * x

    def backward(self, grad):
        return 2 * grad


class DoublePlugin:
    @cn.hookimpl
    def corenet_layers(self):
        return [Double]

    @cn.hookimpl
    def corenet_onnx_exporters(self):
        return {"double_for_onnx": lambda graph, layer, inputs: graph.node(
            "Add", [inputs[0], inputs[0]])}


def test_a_plugin_exports_its_layer(tmp_path):
    registry.load()
    registry.register(DoublePlugin(), "double_plugin", distribution="double-dist")
    try:
        model = cn.Sequential(L.Linear(3, 4), Double())
        corenet.onnx.export(model, str(tmp_path / "double.onnx"))
        x = random_inputs(model, 3)[0]
        np.testing.assert_allclose(run_onnxruntime(tmp_path / "double.onnx", x),
                                   model.forward(x), rtol=1e-6)
    finally:
        registry.unregister("double_plugin")
    with pytest.raises(ValueError, match="no ONNX conversion for layer 'double_for_onnx' "
                                         "\\(node 1\\).*corenet_onnx_exporters hook"):
        corenet.onnx.export(model, str(tmp_path / "double.onnx"))


def test_a_plugin_may_not_take_over_a_builtin_export(tmp_path):
    class Clash:
        @cn.hookimpl
        def corenet_onnx_exporters(self):
            return {"relu": lambda graph, layer, inputs: inputs[0]}

    registry.load()
    registry.register(Clash(), "clash_plugin", distribution="clash-dist")
    try:
        with pytest.raises(cn.PluginError, match="'relu' is provided twice: by 'corenet' "
                                                 "and by 'clash-dist'"):
            corenet.onnx.export(cn.Sequential(L.Linear(2, 2), L.ReLU()),
                                str(tmp_path / "x.onnx"))
    finally:
        registry.unregister("clash_plugin")


def test_without_onnx_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "corenet\[onnx\]"'):
        corenet.onnx.export(cn.Sequential(L.Linear(2, 2)), str(tmp_path / "x.onnx"))
    with pytest.raises(ImportError, match=r'pip install "corenet\[onnx\]"'):
        corenet.onnx.load(str(tmp_path / "x.onnx"))


def test_docstring_example():
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module("corenet.onnx"))
    assert result.attempted > 0 and result.failed == 0
