"""Datasets: the bundled UCI digits, .npz files with X and y, MNIST-format IDX files.

Every loader returns (X, y): X float32 of shape (samples, features...) scaled
to [0, 1] for images, y int64 class labels.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from importlib import resources

import numpy as np

from corenet import npy
from corenet.errors import ShapeError
from corenet.memory import check_allocation

DIGITS_NOTICE = "DIGITS_NOTICE.txt"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits bundled with corenet: 1,797 images of 8x8 pixels.

    X is (1797, 64) float32 in [0, 1] (pixels 0..16 divided by 16), y the digit.
    CC BY 4.0, E. Alpaydin and C. Kaynak; see corenet/data/DIGITS_NOTICE.txt.

    >>> X, y = load_digits(); X.shape, y.shape
    ((1797, 64), (1797,))
    """
    with resources.files("corenet").joinpath("data/digits.npz").open("rb") as handle:
        with np.load(handle) as archive:
            return archive["X"].astype(np.float32) / 16.0, archive["y"].astype(np.int64)


def _npz_header(path: str, archive: zipfile.ZipFile, name: str) -> tuple:
    """(shape, dtype) of member ``name``.npy, read from its header and checked against
    the size the archive declares for it, before any of its data is read: a header
    may declare terabytes, and a small compressed member may expand without bound
    (the archive's declared size bounds what reading it produces)."""
    info = archive.getinfo(f"{name}.npy")
    try:
        shape, _, dtype, offset = npy.read_header(archive, info)
    except (OSError,) + npy.READ_ERRORS as error:
        raise ValueError(f"{path}: array {name} has no readable .npy header: {error}") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise ValueError(f"{path}: {name} must be an array of numbers, got dtype {dtype}")
    declared = math.prod(shape) * dtype.itemsize
    if offset + declared != info.file_size:
        raise ValueError(f"{path}: {name} declares shape {shape} of {dtype} ({declared} "
                         f"bytes) but the file holds {info.file_size - offset} bytes for it")
    check_allocation(path, name, shape, dtype)
    return tuple(shape), dtype


def _npz_headers(path: str, names: tuple) -> list:
    """[(shape, dtype)] of the named arrays of an .npz file, checked (_npz_header)."""
    try:
        with zipfile.ZipFile(path) as archive:
            found = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            missing = set(names) - set(found)
            if missing:
                raise KeyError(f"{path}: expected arrays {' and '.join(names)}, missing "
                               f"{sorted(missing)} (has {found})")
            return [_npz_header(path, archive, name) for name in names]
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: not an .npz file: {error}") from None


def _as_inputs(X: np.ndarray, source: str) -> np.ndarray:
    # uint8 means 8-bit pixels: scaled to [0, 1] as for MNIST. Other dtypes are kept.
    if X.dtype == np.uint8:
        X = X.astype(np.float32)
        X /= 255  # in place: one float32 copy of MNIST, not two
        return X
    with np.errstate(over="ignore", invalid="ignore"):  # said below, naming the file
        X = X.astype(np.float32)
    check_finite(X, source)
    return X


def check_finite(X: np.ndarray, source: str) -> None:
    """A ValueError naming the samples of ``X`` that hold an inf or a NaN (the loaders
    call it on X as float32, where 1e300 is inf). Training on them stopped with advice
    to lower the learning rate, and the argmax of their outputs said class 0, silently."""
    if X.size == 0:  # no samples, or empty ones: the loaders say so
        return
    bad = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
    if len(bad):
        raise ValueError(f"{source}: X must hold finite numbers, got inf or NaN in "
                         f"{len(bad)} of {len(X)} samples (the first: sample {bad[0]})")


def load_npz_inputs(path: str) -> np.ndarray:
    """X of an .npz file (what ``corenet predict`` reads), as load_npz takes it."""
    (x_shape, _), = _npz_headers(path, ("X",))
    if len(x_shape) < 2:
        raise ShapeError(f"{path}: expected X of shape (samples, features...), got {x_shape}")
    check_allocation(path, "X as float32", x_shape, np.float32)
    with np.load(path, allow_pickle=False) as archive:
        return _as_inputs(archive["X"], path)


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """An .npz file holding arrays ``X`` (samples first) and ``y`` (integer labels).

    A uint8 X is taken as pixels and divided by 255; any other X is cast to float32,
    and refused if it then holds inf or NaN.
    """
    (x_shape, _), (y_shape, y_dtype) = _npz_headers(path, ("X", "y"))
    if len(x_shape) < 2 or len(y_shape) != 1:
        raise ShapeError(f"{path}: expected X of shape (samples, features...) and y of shape "
                         f"(samples,), got {x_shape} and {y_shape}")
    if x_shape[0] != y_shape[0]:
        raise ShapeError(f"{path}: X has {x_shape[0]} samples but y has {y_shape[0]}")
    if y_dtype.kind not in "iu":
        raise ValueError(f"{path}: y must hold integer class labels, got dtype {y_dtype}")
    check_allocation(path, "X as float32", x_shape, np.float32)
    with np.load(path, allow_pickle=False) as archive:
        X, y = archive["X"], archive["y"]
    return _as_inputs(X, path), _labels(path, y)


def _labels(path: str, y: np.ndarray) -> np.ndarray:
    """y as int64, refusing values int64 cannot hold (a uint64 past 2⁶³ would wrap)."""
    if y.dtype == np.uint64 and y.size and y.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{path}: labels must be below 2**63, got {y.max()}")
    return y.astype(np.int64)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """One IDX array (MNIST's format), gzipped or not. At most the bytes its header
    declares are read (a small .gz file may expand to gigabytes), and their size
    is checked against the memory this process may use first."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 \
                    or header[2] not in _IDX_TYPES or header[3] == 0:
                raise ValueError(f"{path}: not an IDX file (bad magic number {header!r})")
            ndim = header[3]
            dims = handle.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise ValueError(f"{path}: IDX header declares {ndim} dimensions, but the "
                                 f"file ends inside them")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_IDX_TYPES[header[2]])
            check_allocation(path, "the IDX array", shape, dtype)
            expected = math.prod(shape) * dtype.itemsize
            data = handle.read(expected + 1)  # one byte more tells a longer file
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a readable gzip file: {error}") from None
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes), "
                         f"found {'more' if len(data) > expected else len(data)} bytes")
    return np.frombuffer(data, dtype).reshape(shape)


def load_idx(images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-format images and labels: X keeps each image's shape ((N, 28, 28) for
    MNIST), uint8 pixels scaled to [0, 1]."""
    raw = read_idx(images)
    y = read_idx(labels)
    if raw.ndim < 2 or y.ndim != 1:
        raise ShapeError(f"expected images of shape (samples, ...) in {images} and labels of "
                         f"shape (samples,) in {labels}, got {raw.shape} and {y.shape}")
    if len(raw) != len(y):
        raise ShapeError(f"{images} has {len(raw)} images but {labels} has {len(y)} labels")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{labels}: labels must be integers, got IDX type {y.dtype}")
    # The image shape stays: --model cnn reads (N, H, W) as it is, where flattened
    # rows of 4x16 pixels were taken for 8x8 images.
    return _as_inputs(raw, images), y.astype(np.int64)


def load(spec: str | None) -> tuple[np.ndarray, np.ndarray]:
    """What ``corenet train --data`` accepts: nothing or 'digits' (the bundled set),
    a .npz path, or 'IMAGES,LABELS' IDX paths."""
    if spec in (None, "", "digits"):
        return load_digits()
    X, y = _load_file(spec)
    if len(X) == 0:
        raise ValueError(f"{spec}: the dataset has no samples")
    if X[0].size == 0:  # else the first layer's error, naming a layer, not the data
        raise ValueError(f"{spec}: the samples are empty: X has shape {X.shape}")
    return X, y


def _load_file(spec: str) -> tuple[np.ndarray, np.ndarray]:
    if "," in spec:
        images, labels = spec.split(",", 1)
        return load_idx(images, labels)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"no dataset at {spec!r}: give 'digits', a .npz file with X "
                                f"and y, or IMAGES,LABELS in IDX format")
    if spec.endswith(".npz"):
        return load_npz(spec)
    raise ValueError(f"{spec!r}: expected a .npz file or IMAGES,LABELS IDX files")


def train_test_split(X: np.ndarray, y: np.ndarray, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple:
    """A seeded shuffle, then the last ``test_fraction`` of it held out for testing."""
    if len(X) < 2:
        raise ValueError(f"{len(X)} samples: a split needs at least 2, one to train on and "
                         f"one to test")
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = min(len(X) - 1, max(1, int(round(len(X) * test_fraction))))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def square_side(features: int) -> int:
    """The side of a square image of ``features`` pixels, or 0 if there is none."""
    side = math.isqrt(features)
    return side if side and side * side == features else 0


def shift_augment(X: np.ndarray, copies: int, seed: int = 0,
                  image_shape: tuple | None = None) -> np.ndarray:
    """``copies`` versions of the images in the rows of X, each moved by up to one
    pixel in each direction (zeros shifted in), stacked after the originals.
    ``image_shape`` is each row's (channels, height, width), every channel moved
    alike; by default one square channel.

    The bundled digits are 8x8 and small: shifted copies are what lifts a plain
    MLP from about 96.5% to about 98% on the held-out images.
    """
    if image_shape is None:
        side = square_side(X.shape[1])
        if not side:
            raise ShapeError(f"shift_augment: expected square images, got {X.shape[1]} "
                             f"features")
        image_shape = (1, side, side)
    if len(image_shape) != 3 or math.prod(image_shape) != X.shape[1]:
        raise ShapeError(f"shift_augment: image shape {tuple(image_shape)} does not hold "
                         f"{X.shape[1]} features")
    # The copies are stacked whole: --augment 100000000 grew memory until the system gave.
    check_allocation("shift_augment", f"{copies} shifted copies and the images",
                     (len(X) * (copies + 1), X.shape[1]), X.dtype)
    height, width = image_shape[1:]
    rng = np.random.default_rng(seed)
    images = X.reshape((len(X),) + tuple(image_shape))
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    parts = [X]
    for _ in range(copies):
        moved = np.empty_like(images)
        dy = rng.integers(-1, 2, len(X))
        dx = rng.integers(-1, 2, len(X))
        for shift_y in (-1, 0, 1):
            for shift_x in (-1, 0, 1):
                chosen = (dy == shift_y) & (dx == shift_x)
                moved[chosen] = padded[chosen, :, 1 - shift_y:1 - shift_y + height,
                                       1 - shift_x:1 - shift_x + width]
        parts.append(moved.reshape(len(X), -1))
    return np.concatenate(parts)
