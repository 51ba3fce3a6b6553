"""corenet.gradients and --accumulate: flat gradients in buckets, micro-batches, and the
sum behind the determinism contract (no MPI needed)."""
import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet.cli import main
from corenet.gradients import AccumulatingStep, FlatGradients, micro_batches
from corenet.train import fit, train_step


def mlp(seed=0):
    cn.random.seed(seed)
    return cn.Sequential(L.Linear(20, 16), L.ReLU(), L.Linear(16, 12), L.Tanh(),
                         L.Linear(12, 5))


def test_buckets_hold_whole_parameters_in_backward_order():
    model = mlp()
    flat = FlatGradients(model.parameters(), bucket_bytes=16 * 12 * 4)
    assert flat.parameters == model.parameters()[::-1]
    assert flat.size == sum(p.value.size for p in model.parameters())
    # Bytes in backward order: 20, 240, 48 | 768 | 64 | 1280 (larger than a bucket: alone).
    assert flat.buckets == [(0, 3), (3, 4), (4, 5), (5, 6)]
    assert flat.span(1) == slice(5 + 60 + 12, 5 + 60 + 12 + 192)


def test_pack_weighs_and_unpack_restores(rng):
    model = mlp()
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.grad.shape)
    flat = FlatGradients(model.parameters())
    out = np.empty(flat.size, np.float32)
    flat.pack_all(out, 0.25)
    expected = [p.grad * np.float32(0.25) for p in flat.parameters]
    model.zero_grad()
    flat.unpack(out)
    for p, grad in zip(flat.parameters, expected):
        assert np.array_equal(p.grad, grad)


def test_an_unset_grad_packs_as_zeros_and_unpacks_into_an_array(rng):
    # A rank whose run was empty after zero_grad(set_to_none=True) (fit's steps, then
    # distributed training) packed None: a ValueError on that rank only.
    model = mlp()
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.grad.shape)
    model.zero_grad(set_to_none=True)
    flat = FlatGradients(model.parameters())
    out = np.ones(flat.size, np.float32)
    flat.pack_all(out, 0.5)
    assert not out.any()
    flat.unpack(np.arange(flat.size, dtype=np.float32))
    first = flat.parameters[0]
    np.testing.assert_array_equal(first.grad.reshape(-1), np.arange(first.value.size))


def test_pack_refuses_a_grad_of_the_wrong_dtype():
    model = mlp()
    model.parameters()[0].grad = np.zeros((16, 20))
    flat = FlatGradients(model.parameters())
    with pytest.raises(ValueError, match="grad of 'weight' must be a float32 array of shape"):
        flat.pack_all(np.empty(flat.size, np.float32), 1.0)


def test_micro_batches_are_contiguous_runs_in_order():
    runs = micro_batches(np.arange(10, 17), 3)
    assert [list(r) for r in runs] == [[10, 11, 12], [13, 14], [15, 16]]
    assert [len(r) for r in micro_batches(np.arange(2), 4)] == [1, 1, 0, 0]


def test_backward_hooks_run_after_each_layer_in_backward_order():
    model = mlp()
    seen = []
    model.backward_hooks.append(seen.append)
    model.forward(np.ones((3, 20), np.float32))
    model.backward(np.ones((3, 5), np.float32))
    assert seen == model.layers[::-1]


def data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 20)).astype(np.float32), rng.integers(0, 5, n)


def train(step, epochs=2, batch_size=16):
    model = mlp()
    optimizer = cn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    X, y = data()
    history = fit(model, cn.losses.SoftmaxCrossEntropy(), optimizer, X, y, epochs,
                  batch_size, step=step)
    return model, history


def test_one_micro_batch_is_bitwise_the_plain_step():
    plain, plain_history = train(None)
    one, one_history = train(AccumulatingStep(1))
    assert plain_history == one_history
    for a, b in zip(plain.parameters(), one.parameters()):
        assert a.value.tobytes() == b.value.tobytes()


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_accumulated_micro_batches_give_the_global_batch_gradient(parts):
    # 16 samples in 7 parts: runs of 3, 3, 2, 2, 2, 2, 2 weighted by their size; the last
    # batch of 50 has 2 samples, so 5 runs are empty and weigh nothing.
    model = mlp()
    X, y = data()
    loss = cn.losses.SoftmaxCrossEntropy()
    for index in (np.arange(16), np.arange(48, 50)):
        reference = mlp()
        train_step(reference, loss, cn.optim.SGD(reference.parameters(), lr=0.0),
                   X[index], y[index])
        value = AccumulatingStep(parts)(model, loss, cn.optim.SGD(model.parameters(), lr=0.0),
                                        X, y, index)
        assert value == pytest.approx(loss.forward(reference.forward(X[index]), y[index]),
                                      rel=1e-6)
        for p, q in zip(model.parameters(), reference.parameters()):
            np.testing.assert_allclose(p.grad, q.grad, rtol=2e-5, atol=1e-7)


def test_an_empty_global_batch_is_an_error_not_a_division_by_zero():
    # Each micro-batch's weight is len(run) / len(index): a ZeroDivisionError before.
    model = mlp()
    X, y = data()
    with pytest.raises(ValueError, match=r"accumulate: got an empty global batch \(no "
                                         r"sample indices\)"):
        AccumulatingStep(2)(model, cn.losses.SoftmaxCrossEntropy(),
                            cn.optim.SGD(model.parameters(), lr=0.1), X, y, np.arange(0))


def test_accumulate_on_the_command_line(tmp_path, capsys):
    args = ["train", "--epochs", "1", "--hidden", "16", "--augment", "0", "--json"]
    assert main(args + ["--accumulate", "3", "--save", str(tmp_path / "a.cnet")]) == 0
    assert main(args + ["--save", str(tmp_path / "b.cnet")]) == 0
    a, b = cn.load(str(tmp_path / "a.cnet")), cn.load(str(tmp_path / "b.cnet"))
    # The same training up to rounding: close, yet not the same bits.
    differs = False
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.value, q.value, rtol=1e-3, atol=1e-5)
        differs |= p.value.tobytes() != q.value.tobytes()
    assert differs
