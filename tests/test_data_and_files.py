"""Datasets and saved models."""
import gzip
import os
import struct

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet import data, serialize
from corenet.errors import ModelFileError, PluginError, ShapeError

from test_model_files import header_with_an_open_bracket


def test_bundled_digits():
    X, y = data.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert 0 <= X.min() and X.max() == 1.0
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_split_is_seeded_and_disjoint():
    X, y = data.load_digits()
    first = data.train_test_split(X, y, 0.2, seed=1)
    again = data.train_test_split(X, y, 0.2, seed=1)
    np.testing.assert_array_equal(first[2], again[2])
    assert len(first[0]) + len(first[2]) == len(X) and len(first[2]) == 359


def test_shift_augment_moves_images_by_one_pixel():
    image = np.zeros((1, 9), np.float32)
    image[0, 4] = 1  # the centre of a 3x3 image
    shifted = data.shift_augment(image, copies=20, seed=0)
    assert shifted.shape == (21, 9)
    assert np.all(shifted.sum(axis=1) == 1)  # a centre pixel never falls off
    assert len({int(np.argmax(row)) for row in shifted}) > 3
    with pytest.raises(ShapeError, match="square images"):
        data.shift_augment(np.zeros((1, 8)), 1)


def test_shift_augment_moves_every_channel_alike():
    # Before, corenet train flattened (N, 4, 4, 4) data and shifted it as 8 x 8
    # images, mixing the channels.
    images = np.zeros((1, 3, 4, 5), np.float32)
    images[0, :, 1:3, 2] = [[1, 2], [3, 4], [5, 6]]
    shifted = data.shift_augment(images.reshape(1, -1), copies=30, seed=0,
                                 image_shape=(3, 4, 5)).reshape(-1, 3, 4, 5)
    for copy in shifted:
        (rows, columns), = {tuple(map(tuple, np.nonzero(channel))) for channel in copy}
        assert max(columns) - min(columns) == 0 and max(rows) - min(rows) == 1
        np.testing.assert_array_equal(copy[:, rows, columns], images[0, :, 1:3, 2])
    assert len({tuple(np.argwhere(copy[0])[0]) for copy in shifted}) > 3
    with pytest.raises(ShapeError, match=r"image shape \(3, 4, 4\) does not hold 60"):
        data.shift_augment(images.reshape(1, -1), 1, image_shape=(3, 4, 4))


def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, codes[array.dtype], array.ndim]))
        handle.write(struct.pack(f">{array.ndim}I", *array.shape))
        handle.write(array.tobytes())


def test_idx_and_npz_loaders(tmp_path):
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    labels = np.array([1, 7], np.uint8)
    write_idx(tmp_path / "x.gz", images)
    write_idx(tmp_path / "y.gz", labels)
    X, y = data.load(f"{tmp_path / 'x.gz'},{tmp_path / 'y.gz'}")
    np.testing.assert_allclose(X, images / 255.0)  # each image keeps its shape
    assert y.tolist() == [1, 7]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(str(tmp_path / "bad"))
    np.savez(tmp_path / "d.npz", X=np.ones((3, 2)), y=np.array([0, 1, 0]))
    X, y = data.load(str(tmp_path / "d.npz"))
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.savez(tmp_path / "e.npz", X=np.ones((3, 2)))
    with pytest.raises(KeyError, match="missing \\['y'\\]"):
        data.load(str(tmp_path / "e.npz"))


def test_an_idx_file_is_read_no_further_than_its_header_declares(tmp_path):
    # A gzip bomb: 10 bytes declared, 200 MB of zeros after them in a file of about
    # 200 KB. The reader stops one byte past the declared data.
    path = tmp_path / "bomb.idx.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10))
        for _ in range(200):
            handle.write(bytes(1 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match=r"bomb.idx.gz: IDX header says shape \(10,\) "
                                         r"\(10 bytes\), found more bytes"):
        data.read_idx(str(path))


@pytest.mark.parametrize("content, name, match", [
    (bytes([0, 0, 0x08, 0]), "zero.idx", "not an IDX file"),  # no dimensions
    (bytes([0, 0, 0x08, 200, 0, 0, 0, 1]), "short.idx", "IDX header declares 200 dimensions, but"),
    (bytes([0, 0, 0x08, 1, 0, 0, 0, 1, 7]), "plain.idx.gz", "not a readable gzip file"),
])
def test_malformed_idx_headers_are_clear_errors(tmp_path, content, name, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"{name}: {match}"):
        data.read_idx(str(tmp_path / name))


def test_idx_labels_must_be_integers(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((2, 3, 3), np.uint8))
    with gzip.open(tmp_path / "y.gz", "wb") as handle:  # float32 labels (IDX type 0x0D)
        handle.write(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2))
        handle.write(np.array([1.5, 2.0], ">f4").tobytes())
    with pytest.raises(ValueError, match="labels must be integers, got IDX type >f4"):
        data.load(f"{tmp_path / 'x.gz'},{tmp_path / 'y.gz'}")


def _npz_with_x_header(path, declared_shape, payload):
    """An .npz whose X .npy header declares one shape and holds other bytes."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": declared_shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", header.getvalue() + payload)
        y = io.BytesIO()
        np.lib.format.write_array(y, np.zeros(4, np.int64))
        archive.writestr("y.npy", y.getvalue())


@pytest.mark.parametrize("arrays, match", [
    (dict(X=np.float32(1), y=np.int64(1)), r"expected X of shape \(samples, features...\)"),
    (dict(X=np.ones((4, 2)), y=np.zeros((4, 1), np.int64)), r"and y of shape \(samples,\)"),
    (dict(X=np.zeros(4, [("a", "<f4"), ("b", "<f4")]).reshape(2, 2), y=np.zeros(2, np.int64)),
     "X must be an array of numbers"),
    (dict(X=np.ones((2, 2)), y=np.array([1, 2 ** 63], np.uint64)), "labels must be below 2"),
])
def test_malformed_npz_datasets_are_clear_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises((ValueError, ShapeError), match=match):
        data.load(str(tmp_path / "d.npz"))


def test_datasets_too_small_to_split_are_clear_errors(tmp_path):
    np.savez(tmp_path / "empty.npz", X=np.ones((0, 4)), y=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty.npz: the dataset has no samples"):
        data.load(str(tmp_path / "empty.npz"))
    np.savez(tmp_path / "blank.npz", X=np.ones((3, 2, 0)), y=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"blank.npz: the samples are empty: X has shape "
                                         r"\(3, 2, 0\)"):
        data.load(str(tmp_path / "blank.npz"))
    # IDX files of no images: numpy's "cannot reshape array of size 0" before.
    write_idx(tmp_path / "x.gz", np.zeros((0, 4, 4), np.uint8))
    write_idx(tmp_path / "y.gz", np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match="y.gz: the dataset has no samples"):
        data.load(f"{tmp_path / 'x.gz'},{tmp_path / 'y.gz'}")
    with pytest.raises(ValueError, match="1 samples: a split needs at least 2"):
        data.train_test_split(np.ones((1, 4)), np.zeros(1, np.int64), 0.2)
    X_train, _, X_test, _ = data.train_test_split(np.ones((2, 4)), np.zeros(2), 0.9)
    assert len(X_train) == len(X_test) == 1  # one left to train on, whatever the fraction


def test_npz_headers_are_checked_before_reading(tmp_path):
    # A header that declares 4 TiB over 1 MiB of data: refused from the sizes, before
    # numpy would try to allocate it.
    _npz_with_x_header(tmp_path / "lie.npz", (2 ** 34, 64), bytes(1 << 20))
    with pytest.raises(ValueError, match=r"lie.npz: X declares shape \(17179869184, 64\) "
                                         r"of float32 .* but the file holds 1048576 bytes"):
        data.load(str(tmp_path / "lie.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz: not an .npz file"):
        data.load(str(tmp_path / "text.npz"))
    # The tokenizer numpy retries an old header with raised its own TokenError.
    import zipfile
    with zipfile.ZipFile(tmp_path / "bracket.npz", "w") as archive:
        archive.writestr("X.npy", header_with_an_open_bracket())
        archive.writestr("y.npy", header_with_an_open_bracket())
    with pytest.raises(ValueError, match="bracket.npz: array X has no readable .npy header"):
        data.load(str(tmp_path / "bracket.npz"))


def test_save_load_round_trip(tmp_path, rng):
    x = cn.Input(shape=(4,))
    h = L.PReLU()(L.Linear(4, 5)(x))
    model = cn.Model(x, L.Softmax()(L.Linear(9, 3)(L.Concat()(h, x))))
    path = str(tmp_path / "m.npz")
    serialize.save(model, path)
    loaded = serialize.load(path)
    inputs = rng.standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(inputs), loaded.forward(inputs))
    assert [p.name for p in loaded.parameters()] == [p.name for p in model.parameters()]
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    model = cn.Sequential(L.Linear(2, 2))
    path = tmp_path / "m.npz"
    serialize.save(model, str(path))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        serialize.save(model, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind


def test_loading_something_that_is_not_a_model_is_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelFileError, match="garbage.npz: not a corenet model"):
        serialize.load(str(garbage))
    np.savez(tmp_path / "plain.npz", X=np.ones(3))
    with pytest.raises(ModelFileError, match="plain.npz: not a corenet model: no __config__"):
        serialize.load(str(tmp_path / "plain.npz"))
    with pytest.raises(FileNotFoundError):
        serialize.load(str(tmp_path / "missing.npz"))


def test_loading_a_model_whose_plugin_is_missing_names_it(tmp_path):
    model = cn.Sequential(L.Linear(2, 2))
    path = str(tmp_path / "m.npz")
    serialize.save(model, path)
    config = serialize.model_config(model)
    config["nodes"][0]["layer"] = "fancy"
    config["nodes"][0]["distribution"] = "corenet-fancy"
    import json

    arrays = {"__config__": np.frombuffer(json.dumps(config).encode(), np.uint8),
              "node0.weight": np.ones((2, 2), np.float32)}
    np.savez(path, **arrays)
    with pytest.raises(PluginError, match="needs layer 'fancy' from corenet-fancy .*"
                                          "pip install corenet-fancy"):
        serialize.load(path)


def test_shift_augment_checks_the_size_of_its_result_first():
    # 10**12 copies grew memory until the system gave.
    with pytest.raises(ShapeError, match=r"shift_augment: 1000000000000 shifted copies and "
                                         r"the images of shape \(2000000000002, 9\) float32"):
        data.shift_augment(np.zeros((2, 9), np.float32), 10**12)


@pytest.mark.parametrize("name, message", [
    ("", "'': expected a file name, got an empty one"),
    ("m.npz/", "'m.npz/': expected a file name, not a folder")])
def test_saving_to_no_file_name_is_refused_before_writing(tmp_path, monkeypatch, name, message):
    # '' wrote a temporary file into the parent of the working folder, then failed to
    # rename it, naming the temporary file.
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(ValueError, match=message):
        serialize.save(cn.Sequential(L.Linear(2, 2)), name)
    assert os.listdir(tmp_path) == ["work"] and os.listdir(tmp_path / "work") == []


def test_saving_into_a_folder_that_refuses_files_names_the_path(tmp_path):
    missing = str(tmp_path / "no" / "m.npz")
    with pytest.raises(FileNotFoundError, match=f"'{missing}': cannot create a file in "):
        serialize.save(cn.Sequential(L.Linear(2, 2)), missing)
