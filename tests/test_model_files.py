"""A model file is untrusted input: crafted and damaged files are refused with a
ModelFileError naming the file and what is wrong, before anything large is allocated;
an interrupted save leaves no temporary file behind."""
import collections
import io
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import corenet as cn
import corenet.layers as L
from corenet import serialize
from corenet.errors import ModelFileError, PluginError


def small_model():
    return cn.Sequential(L.Linear(4, 3), L.PReLU(), L.Linear(3, 2))


def saved_parts(model, path):
    """(config, arrays) of ``model`` saved at ``path``, to tamper with."""
    serialize.save(model, str(path))
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    config = json.loads(arrays.pop("__config__").tobytes())
    return config, arrays


@pytest.fixture
def parts(tmp_path):
    """(config, arrays) of a valid saved model."""
    return saved_parts(small_model(), tmp_path / "good.npz")


def write(path, config, arrays, config_bytes=None, **savez):
    """A model file from a config (or raw config bytes) and arrays, as np.savez writes it."""
    raw = config_bytes if config_bytes is not None else json.dumps(config).encode()
    (np.savez_compressed if savez.pop("compressed", False) else np.savez)(
        path, __config__=np.frombuffer(raw, np.uint8), **arrays, **savez)
    return str(path)


def refused(path, match):
    """load(path) raises a ModelFileError (nothing else) that names the file and matches."""
    with pytest.raises(ModelFileError, match=match) as caught:
        serialize.load(str(path))
    assert str(caught.value).startswith(f"{path}:")
    return caught.value


def test_a_valid_file_still_loads(tmp_path, parts):
    config, arrays = parts
    model = serialize.load(write(tmp_path / "m.npz", config, arrays))
    assert [layer.name for layer in model.layers] == ["linear", "prelu", "linear"]
    np.testing.assert_array_equal(model.layers[0].weight.value, arrays["node0.weight"])


# -- the zip container ----------------------------------------------------------------

def test_truncated_file(tmp_path, parts):
    data = open(write(tmp_path / "whole.npz", *parts), "rb").read()
    for keep in (0, 10, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{keep}.npz"
        path.write_bytes(data[:keep])
        refused(path, "not a corenet model|cannot be read|declares")


def test_damaged_array_data_fails_its_checksum(tmp_path, parts):
    path = tmp_path / "m.npz"
    write(path, *parts)
    data = bytearray(path.read_bytes())
    weights = parts[1]["node0.weight"].tobytes()
    at = bytes(data).index(weights)
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    # A small member is checked as its header is read, a large one at its end.
    refused(path, "array 'node0.weight' (has no readable .npy header|cannot be read): Bad CRC")


def test_compressed_members_are_refused(tmp_path, parts):
    refused(write(tmp_path / "m.npz", *parts, compressed=True), "compressed")


def _stored_member(name: bytes, data: bytes, offset: int) -> tuple:
    """(local header + data, central directory record) of a stored zip member."""
    import struct
    import zlib

    crc = zlib.crc32(data)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, len(data),
                        len(data), len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21, crc,
                          len(data), len(data), len(name), 0, 0, 0, 0, 0, offset) + name
    return local + data, central


def test_overlapping_members_are_refused(tmp_path, parts):
    # A "quoted overlap": each extra member's data holds the next member's header
    # and data, so that a file of a few megabytes read member by member would
    # become gigabytes. Every member alone fits in the file; together they cannot.
    import struct

    good = write(tmp_path / "good.npz", *parts)
    with zipfile.ZipFile(good) as archive:
        members = [(info.filename.encode(), archive.read(info)) for info in archive.infolist()]
    body, directory = b"", []
    for name, data in members:
        local, central = _stored_member(name, data, len(body))
        body, directory = body + local, directory + [central]
    tail, chain = bytes(4096), []  # built from the last member back to the first
    for index in reversed(range(20)):
        name = f"extra.block{index}.npy".encode()
        data = _npy(np.frombuffer(tail, np.uint8))  # a .npy whose values are the tail
        local, _ = _stored_member(name, data, 0)
        # the next member starts right after this one's local header and .npy header
        chain.append((name, data, len(local) - len(tail)))
        tail = local
    offset = len(body)
    for name, data, prefix in reversed(chain):
        directory.append(_stored_member(name, data, offset)[1])
        offset += prefix
    body += tail
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(directory), len(directory),
                      sum(map(len, directory)), len(body), 0)
    path = tmp_path / "overlap.npz"
    path.write_bytes(body + b"".join(directory) + end)
    refused(path, "declare more bytes than the file's .* they overlap")


def test_member_that_is_not_an_array(tmp_path, parts):
    path = write(tmp_path / "m.npz", *parts)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", "hello")
    refused(path, "unexpected or repeated archive member 'notes.txt'")


def test_encrypted_member_is_refused(tmp_path, parts):
    # zipfile writes no encrypted member: set the flag in the central directory by hand.
    path = pathlib.Path(write(tmp_path / "m.npz", *parts))
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # a central directory entry; its name is at +46
    while not data[entry + 46:].startswith(b"node0.weight.npy"):
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + 8] |= 0x1  # general purpose flag: encrypted
    path.write_bytes(bytes(data))
    refused(path, "array 'node0.weight' is encrypted")


def test_random_damage_gives_only_model_file_errors(tmp_path, parts):
    # Seeded: bytes overwritten anywhere (zip directory, headers, JSON, data), some files
    # cut short. Each either still loads or is a ModelFileError, never another error.
    data = pathlib.Path(write(tmp_path / "m.npz", *parts)).read_bytes()
    rng = np.random.default_rng(0)
    outcomes = collections.Counter()
    for trial in range(2000):
        damaged = bytearray(data)
        for at in rng.integers(len(data), size=rng.integers(1, 5)):
            damaged[at] = rng.integers(256)
        if trial % 5 == 0:
            damaged = damaged[:rng.integers(len(data))]
        path = tmp_path / "damaged.npz"
        path.write_bytes(bytes(damaged))
        try:
            serialize.load(str(path))
            outcomes["loaded"] += 1
        except ModelFileError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1500, outcomes


def test_member_without_an_npy_header(tmp_path, parts):
    path = write(tmp_path / "m.npz", *parts)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("node0.extra.npy", b"\x93NUMPY garbage")
    refused(path, "array 'node0.extra' has no readable .npy header")


def test_member_whose_header_leaves_a_bracket_open(tmp_path, parts):
    # Before: numpy's retry of the header through Python's tokenizer raised
    # tokenize.TokenError, which escaped as itself.
    path = write(tmp_path / "m.npz", *parts)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("node0.extra.npy", header_with_an_open_bracket())
    refused(path, "array 'node0.extra' has no readable .npy header")


def header_with_an_open_bracket() -> bytes:
    """A version 1.0 .npy header whose dict is followed by an unclosed '('."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }("
    text = text.ljust(64 - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + bytes(8)


def test_header_declaring_a_huge_shape_is_refused_fast_and_small(tmp_path, parts):
    config, arrays = parts
    config["nodes"][0]["config"].update(in_features=100_000, out_features=100_000)
    config["inputs"] = [[100_000]]
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__config__.npy", _npy(np.frombuffer(json.dumps(config).encode(),
                                                              np.uint8)))
        header = io.BytesIO()  # 40 GB declared, 64 bytes present
        np.lib.format.write_array_header_1_0(header, {
            "descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)})
        archive.writestr("node0.weight.npy", header.getvalue() + bytes(64))
    assert path.stat().st_size < 4096
    start = time.perf_counter()
    assert peak_memory_of(lambda: refused(
        path, r"declares shape \(100000, 100000\) of float32 \(40000000000 bytes\) "
              r"but the file holds 64 bytes")) < 1 << 20
    # Not a speed test: a bound no machine misses unless the file is really read.
    assert time.perf_counter() - start < 60


def test_huge_sizes_in_the_config_are_refused_before_allocating(tmp_path, parts):
    config, arrays = parts
    config["nodes"][0]["config"].update(in_features=10**9, out_features=10**9)
    path = write(tmp_path / "m.npz", config, arrays)
    assert peak_memory_of(lambda: refused(
        path, r"node 0 \('linear'\): parameter 'weight' has shape \(3, 4\) in the file, "
              r"the config makes \(1000000000, 1000000000\)")) < 1 << 20


def peak_memory_of(call) -> int:
    """The peak of Python and numpy allocations (numpy reports to tracemalloc) during call."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- the arrays -----------------------------------------------------------------------

def tamper_arrays(change):
    def tamper(config, arrays):
        change(arrays)
        return config, arrays
    return tamper


ARRAY_CASES = {
    "missing array": (tamper_arrays(lambda a: a.pop("node0.bias")),
                      r"node 0 \('linear'\): arrays do not match .* missing \['bias'\]"),
    "extra array": (tamper_arrays(lambda a: a.update({"node0.scale": np.ones(3, np.float32)})),
                    r"node 0 \('linear'\): .*unexpected \['scale'\]"),
    "array of no node": (tamper_arrays(lambda a: a.update({"node9.weight": np.ones(1, "f4")})),
                         "array 'node9.weight' belongs to no node"),
    "int dtype": (tamper_arrays(lambda a: a.update({"node0.weight": np.ones((3, 4), int)})),
                  r"node 0 \('linear'\): parameter 'weight' is int64 in the file, the config "
                  r"makes float32"),
    "float16 dtype": (tamper_arrays(lambda a: a.update({"node0.weight": np.ones((3, 4), "<f2")})),
                      "array 'node0.weight' has dtype float16"),
    "big-endian dtype": (tamper_arrays(lambda a: a.update({"node0.bias": np.ones(3, ">f4")})),
                         "array 'node0.bias' has dtype >f4"),
    "wrong shape": (tamper_arrays(lambda a: a.update({"node0.weight": np.ones((4, 3), "f4")})),
                    r"parameter 'weight' has shape \(4, 3\) in the file, "
                    r"the config makes \(3, 4\)"),
    "scalar for a vector": (tamper_arrays(lambda a: a.update({"node1.weight": np.float32(1)})),
                            r"node 1 \('prelu'\): parameter 'weight' has shape \(\)"),
}


@pytest.mark.parametrize("case", ARRAY_CASES, ids=str)
def test_arrays_that_do_not_match_the_config(tmp_path, parts, case):
    tamper, match = ARRAY_CASES[case]
    refused(write(tmp_path / "m.npz", *tamper(*parts)), match)


def test_a_negative_batch_count_is_refused(tmp_path):
    # A momentum=None batch norm divides by the count plus one: -1 loaded was a
    # ZeroDivisionError at the first training forward.
    config, arrays = saved_parts(cn.Sequential(L.Linear(4, 3), L.BatchNorm1d(3, momentum=None)),
                                 tmp_path / "bn.npz")
    arrays["node1.num_batches_tracked"] = np.array(-1, np.int64)
    refused(write(tmp_path / "m.npz", config, arrays),
            r"node 1 \('batch_norm1d'\): buffer 'num_batches_tracked' is a count, got -1")


def test_pickled_object_arrays_are_refused_without_unpickling(tmp_path, parts):
    config, arrays = parts
    arrays["node0.weight"] = np.array([Exploding()], dtype=object)
    path = write(tmp_path / "m.npz", config, arrays, allow_pickle=True)
    refused(path, "array 'node0.weight' is not a plain C-ordered array")
    pickled = tmp_path / "pickled_config.npz"
    np.savez(pickled, __config__=np.array([config], dtype=object), allow_pickle=True)
    refused(pickled, "not a plain C-ordered array")


class Exploding:
    def __reduce__(self):  # unpickling it would run os.abort
        return (os.abort, ())


def test_fortran_ordered_array_is_refused(tmp_path, parts):
    config, arrays = parts
    arrays["node0.weight"] = np.asfortranarray(arrays["node0.weight"])
    refused(write(tmp_path / "m.npz", config, arrays), "not a plain C-ordered array")


# -- the config -----------------------------------------------------------------------

def tamper_config(change):
    def tamper(config, arrays):
        change(config)
        return config, arrays
    return tamper


def node0(**values):
    return tamper_config(lambda c: c["nodes"][0]["config"].update(values))


CONFIG_CASES = {
    "wrong format": (tamper_config(lambda c: c.update(format="keras/2")),
                     "unknown model format 'keras/2', expected 'corenet-model/1'"),
    "no format": (tamper_config(lambda c: c.pop("format")), "unknown model format None"),
    "bogus dtype": (tamper_config(lambda c: c.update(dtype="int8")),
                    "dtype must be one of .*got 'int8'"),
    "dtype as a list": (tamper_config(lambda c: c.update(dtype=["float32"])),
                        r"dtype must be one of .*got \['float32'\]"),
    "negative in_features": (node0(in_features=-3),
                             r"node 0 \('linear'\): config .* is rejected: ValueError: "
                             r"linear: in_features must be a positive integer, got -3"),
    "bool in_features": (node0(in_features=True), "in_features must be a positive integer"),
    "string in_features": (node0(in_features="4"), "in_features must be a positive integer"),
    "float in_features": (node0(in_features=4.0), "in_features must be a positive integer"),
    "unknown config key": (node0(colour="red"), r"node 0 \('linear'\): config .* TypeError"),
    "bogus layer dtype": (node0(dtype="float16"),
                          r"node 0 \('linear'\): config .* DTypeError: linear: dtype must be "
                          r"float32"),
    "unknown init": (node0(init="he"), r"node 0 \('linear'\): config .* is rejected: "
                                       r"ValueError: linear: init must be one of"),
    "layer dtype against the file's": (node0(dtype="float64"),
                                       r"parameter 'weight' is float32 in the file, the "
                                       r"config makes float64"),
    "config not an object": (tamper_config(lambda c: c["nodes"][0].update(config=[4, 3])),
                             r"node 0 \('linear'\): config must be a JSON object"),
    "node not an object": (tamper_config(lambda c: c["nodes"].__setitem__(1, "prelu")),
                           "node 1: must be a JSON object, got str"),
    "layer name not a string": (tamper_config(lambda c: c["nodes"][1].update(layer=7)),
                                "node 1: layer name must be a non-empty string, got 7"),
    "node input out of range": (tamper_config(lambda c: c["nodes"][1].update(inputs=[5])),
                                r"node 1: inputs must be a non-empty list of indices below 2"),
    "node reads a later node": (tamper_config(lambda c: c["nodes"][0].update(inputs=[2])),
                                r"node 0: inputs must be .* below 1, got \[2\]"),
    "negative node input": (tamper_config(lambda c: c["nodes"][0].update(inputs=[-1])),
                            "node 0: inputs must be"),
    "node without inputs": (tamper_config(lambda c: c["nodes"][0].pop("inputs")),
                            "node 0: inputs must be .*got None"),
    "output out of range": (tamper_config(lambda c: c.update(outputs=[99])),
                            "outputs must be a non-empty list of indices below 4"),
    "nodes not a list": (tamper_config(lambda c: c.update(nodes={"0": {}})),
                         "nodes must be a list, got dict"),
    "input shape of zero": (tamper_config(lambda c: c.update(inputs=[[0]])),
                            "inputs must be a non-empty list of shapes of positive ints"),
    "input shape not a list": (tamper_config(lambda c: c.update(inputs=4)), "inputs must be"),
    "input shape against the layer": (tamper_config(lambda c: c.update(inputs=[[5]])),
                                      r"node 0 \('linear'\): cannot take inputs \[0\]: "
                                      r"linear: expected"),
    "distribution not a string": (tamper_config(lambda c: c["nodes"][0].update(distribution=[1])),
                                  r"node 0 \('linear'\): distribution must be a string"),
    "training not an object": (tamper_config(lambda c: c.update(training=[3])),
                               "training must be a JSON object, got list"),
    "split seed not an int": (tamper_config(lambda c: c.update(training={"split_seed": "3"})),
                              "training split_seed must be a non-negative integer, got '3'"),
    "test fraction of one": (tamper_config(lambda c: c.update(training={"test_fraction": 1})),
                             r"training test_fraction must be a number in \(0, 1\), got 1"),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=str)
def test_config_values_that_are_refused(tmp_path, parts, case):
    tamper, match = CONFIG_CASES[case]
    refused(write(tmp_path / "m.npz", *tamper(*parts)), match)


@pytest.mark.parametrize("raw, match", [
    (b"[1, 2, 3]", "the config must be a JSON object, got list"),
    (b"null", "the config must be a JSON object, got NoneType"),
    (b"{\"format\": ", "the config is not JSON"),
    (b"\xff\xfe\x00", "the config is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "the config is not JSON"),  # deep nesting
], ids=["list", "null", "cut short", "not UTF-8", "deeply nested"])
def test_config_that_is_not_a_json_object(tmp_path, parts, raw, match):
    refused(write(tmp_path / "m.npz", None, parts[1], config_bytes=raw), match)


def test_config_entry_of_the_wrong_dtype(tmp_path, parts):
    path = tmp_path / "m.npz"
    np.savez(path, __config__=np.ones(3, np.float32), **parts[1])
    refused(path, "__config__ must be at most .* bytes of uint8, got float32")


def test_layer_constructor_rejecting_its_config_names_the_node(tmp_path):
    x = cn.Input(shape=(3,))
    model = cn.Model(x, L.Concat()(x, L.ReLU()(x)))
    path = tmp_path / "m.npz"
    serialize.save(model, str(path))
    config = serialize.model_config(model)
    config["nodes"][1]["config"]["axis"] = 0
    write(path, config, {})
    refused(path, r"node 1 \('concat'\): config \{'axis': 0\} is rejected: ValueError: "
                  r"concat: axis 0 is the batch axis")


def test_unknown_layer_names_the_plugin_or_the_layer_to_install(tmp_path, parts):
    config, arrays = parts
    config["nodes"][1].update(layer="fancy_act", distribution="corenet-fancy", version="2.0")
    with pytest.raises(PluginError, match=r"needs layer 'fancy_act' from corenet-fancy \(saved "
                                          r"with version 2.0\).*pip install corenet-fancy"):
        serialize.load(write(tmp_path / "m.npz", config, arrays))
    config["nodes"][1].update(distribution=None, version=None)
    with pytest.raises(PluginError, match="needs layer 'fancy_act', which no installed "
                                          "plugin provides"):
        serialize.load(write(tmp_path / "m.npz", config, arrays))


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        serialize.load(str(tmp_path / "absent.npz"))


# -- interrupted saves ----------------------------------------------------------------

def test_save_interrupted_mid_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    serialize.save(small_model(), str(path))
    before = path.read_bytes()

    def write_half_then_interrupt(stream, **arrays):
        stream.write(b"PK" + bytes(1 << 16))
        raise KeyboardInterrupt  # a BaseException, as Ctrl-C is

    monkeypatch.setattr(np, "savez", write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        serialize.save(small_model(), str(path))
    assert os.listdir(tmp_path) == ["m.npz"]
    assert path.read_bytes() == before


KILLED_WRITER = """
    import os, sys, time
    import numpy as np
    import corenet as cn, corenet.layers as L
    from corenet import serialize

    def write_then_hang(stream, **arrays):
        stream.write(b"PK" + bytes(1 << 16))
        stream.flush()
        print("writing", flush=True)
        time.sleep(120)

    np.savez = write_then_hang
    serialize.save(cn.Sequential(L.Linear(4, 3)), sys.argv[1])
"""


def test_temporary_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_WRITER),
                               str(tmp_path / "m.npz")], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path)
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    stale = os.listdir(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(f".corenet-save-{writer.pid}-"), stale
    # The temporary file of a save in progress (this process is alive) is left alone.
    in_progress = tmp_path / f".corenet-save-{os.getpid()}-abc.tmp"
    in_progress.write_bytes(b"")
    serialize.save(small_model(), str(tmp_path / "other.npz"))
    assert sorted(os.listdir(tmp_path)) == sorted([in_progress.name, "other.npz"])


def test_save_onto_a_pipe_or_a_folder_is_refused_and_leaves_it_as_it_was(tmp_path):
    # The rename replaced whatever had the name: run as root, `corenet export m.npz
    # /dev/null` (or train --save /dev/null) replaced the device with a regular file.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=f"{fifo}: not a regular file"):
        serialize.save(small_model(), str(fifo))
    link = tmp_path / "link"
    link.symlink_to(fifo)  # followed: what it names is the pipe
    with pytest.raises(ValueError, match="not a regular file"):
        serialize.save(small_model(), str(link))
    with pytest.raises(IsADirectoryError, match="expected a file name, not a folder"):
        serialize.save(small_model(), str(tmp_path))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.path.islink(link)
    assert sorted(os.listdir(tmp_path)) == ["link", "pipe"]  # no temporary file left


# -- helpers --------------------------------------------------------------------------

def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


# -- state buffers: batch norm's running statistics ------------------------------------

@pytest.fixture
def batch_norm_parts(tmp_path):
    """(config, arrays) of a saved model whose node 1 has running statistics."""
    return saved_parts(cn.Sequential(L.Linear(4, 3), L.BatchNorm1d(3)), tmp_path / "bn.npz")


BUFFER_CASES = {
    "missing count": (tamper_arrays(lambda a: a.pop("node1.num_batches_tracked")),
                      r"node 1 \('batch_norm1d'\): arrays do not match the layer's parameters "
                      r"and buffers .* missing \['num_batches_tracked'\]"),
    "running_var of another shape": (
        tamper_arrays(lambda a: a.update({"node1.running_var": np.ones(4, np.float32)})),
        r"node 1 \('batch_norm1d'\): buffer 'running_var' has shape \(4,\) in the file, "
        r"the config makes \(3,\)"),
    "count as a float": (
        tamper_arrays(lambda a: a.update({"node1.num_batches_tracked": np.float32(2)})),
        r"buffer 'num_batches_tracked' is float32 in the file, the config makes int64"),
    "running_mean as a count": (
        tamper_arrays(lambda a: a.update({"node1.running_mean": np.zeros(3, np.int64)})),
        r"buffer 'running_mean' is int64 in the file, the config makes float32"),
    "count of another width": (
        tamper_arrays(lambda a: a.update({"node1.num_batches_tracked": np.int32(2)})),
        "array 'node1.num_batches_tracked' has dtype int32, the model's is float32"),
    "statistics without tracking": (
        tamper_config(lambda c: c["nodes"][1]["config"].update(track_running_stats=False)),
        r"unexpected \['num_batches_tracked', 'running_mean', 'running_var'\]"),
}


@pytest.mark.parametrize("case", BUFFER_CASES, ids=str)
def test_state_buffers_that_do_not_match_the_config(tmp_path, batch_norm_parts, case):
    tamper, match = BUFFER_CASES[case]
    refused(write(tmp_path / "m.npz", *tamper(*batch_norm_parts)), match)


def test_huge_batch_norm_is_refused_before_allocating(tmp_path, batch_norm_parts):
    config, arrays = batch_norm_parts
    config["nodes"][1]["config"].update(num_features=10**10)
    path = write(tmp_path / "m.npz", config, arrays)
    assert peak_memory_of(lambda: refused(
        path, r"node 1 \('batch_norm1d'\): parameter 'weight' has shape \(3,\) in the file, "
              r"the config makes \(10000000000,\)")) < 1 << 20


def test_a_valid_batch_norm_file_loads_its_statistics(tmp_path, batch_norm_parts):
    config, arrays = batch_norm_parts
    arrays["node1.running_var"] = np.array([1.0, 2.0, 3.0], np.float32)
    arrays["node1.num_batches_tracked"] = np.array(7)
    layer = serialize.load(write(tmp_path / "m.npz", config, arrays)).layers[1]
    np.testing.assert_array_equal(layer.running_var.value, [1.0, 2.0, 3.0])
    count = layer.num_batches_tracked.value
    assert count.shape == () and count.dtype == np.int64 and int(count) == 7
