"""Integrity of what is read: packed containers that do not match themselves, damaged HDF5
types and attributes, and older packed versions still read."""
from __future__ import annotations

import json
import os
import shutil
import sys
import zlib

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import KerasFileError, Recipe

from .helpers import assert_bit_equal

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
import make_keras2_files as k2  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


def write_keras3(path, seed: int = 12) -> None:
    """A Keras 3 .weights.h5 written with h5py: the source of ``data/packed-v2.weights.h5``."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        for group, arrays in (("conv2d", [(3, 3, 2, 8), (8,)]), ("dense", [(40, 8), (8,)]), ("embedding", [(30, 8)])):
            g = f.create_group(f"layers/{group}/vars")
            for i, shape in enumerate(arrays):
                g.create_dataset(str(i), data=rng.standard_normal(shape).astype(np.float32))
        f.create_group("optimizer/vars").create_dataset("0", data=np.int64(3))


@pytest.fixture
def keras3(tmp_path):
    path = tmp_path / "m.weights.h5"
    write_keras3(path)
    return path


@pytest.fixture
def packed(keras3, tmp_path):
    path = tmp_path / "p.weights.h5"
    wqkernels.rewrite(keras3, path, Recipe(bits=4, storage="packed", symmetric=False))
    return path


def edit_index(path, change) -> None:
    """Rewrite the index of a packed container with `change(index, group)` applied."""
    with h5py.File(path, "a") as f:
        group = f["wqkernels"]
        index = json.loads(zlib.decompress(group["index"][()].tobytes()))
        change(index, group)
        text = json.dumps(index).encode()
        del group["index"]
        group["index"] = np.frombuffer(zlib.compress(text), np.uint8)
        group.attrs["index_bytes"] = len(text)


def first(index) -> dict:
    return index["tensors"][0]


def _flip_code(index, group):
    group["codes"][3] = group["codes"][3] ^ 1


def _double_scale(index, group):
    group["scales"][0] = group["scales"][0] * 2


def _unwritten_codes(index, group):
    size = group["codes"].shape
    del group["codes"]
    group.create_dataset("codes", shape=size, dtype=np.uint8)


DAMAGE = {
    "record-removed": lambda index, group: index["tensors"].pop(0),
    "layout-relabelled": lambda index, group: index.__setitem__("layout", "legacy-weights"),
    "shape-flattened": lambda index, group: first(index).__setitem__("shape", [int(np.prod(first(index)["shape"]))]),
    "points-at-a-bias": lambda index, group: first(index).__setitem__("path", "layers/conv2d/vars/1"),
    "record-twice": lambda index, group: index["tensors"].append(dict(first(index))),
    "axis-edited": lambda index, group: first(index).__setitem__("axis", 0),
    "bits-edited": lambda index, group: first(index).__setitem__("bits", 8),
    "scale-edited": _double_scale,
    "code-flipped": _flip_code,
    "codes-unwritten": _unwritten_codes,
    "bool-as-bits": lambda index, group: first(index).__setitem__("bits", True),
    "string-offset": lambda index, group: first(index).__setitem__("codes", ["0", 5]),
    "not-a-record": lambda index, group: index["tensors"].append([]),
    "dataset-checksums-removed": lambda index, group: index.pop("dataset_crc32"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_packed_container_is_an_error_never_different_weights(damage, packed, tmp_path):
    edit_index(packed, DAMAGE[damage])
    with pytest.raises(KerasFileError) as info:
        wqkernels.load_weights(packed)
    assert str(packed) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(KerasFileError):
        wqkernels.restore(packed, tmp_path / "r.weights.h5")
    assert not (tmp_path / "r.weights.h5").exists()


def test_checksum_error_names_the_weight(packed):
    edit_index(packed, _flip_code)
    with pytest.raises(KerasFileError, match=r"weight 'layers/conv2d/vars/0' is corrupt .*checksum"):
        wqkernels.load_weights(packed)


def test_placeholder_redeclared_huge_is_refused_without_allocating(packed):
    """The skeleton's placeholder re-declared 10^6 x 10^6: the record no longer matches it."""
    from wqkernels.files import packed as module
    with h5py.File(packed, "a") as f:
        group = f["wqkernels"]
        image = module.lzma.decompress(group["skeleton"][()].tobytes())
        import io
        buffer = io.BytesIO(image)
        with h5py.File(buffer, "a") as skeleton:
            like = skeleton["layers/conv2d/vars/0"]
            attrs = dict(like.attrs)
            del skeleton["layers/conv2d/vars/0"]
            stub = skeleton.create_dataset("layers/conv2d/vars/0", shape=(10**6, 10**6), dtype=np.float32,
                                           fill_time="never")
            stub.attrs.update(attrs)
        image = buffer.getvalue()
        del group["skeleton"]
        group["skeleton"] = np.frombuffer(module.xz_compress(image), np.uint8)
        group.attrs["skeleton_bytes"] = len(image)
        index = json.loads(zlib.decompress(group["index"][()].tobytes()))
        index["skeleton_bytes"] = len(image)
        text = json.dumps(index).encode()
        del group["index"]
        group["index"] = np.frombuffer(zlib.compress(text), np.uint8)
        group.attrs["index_bytes"] = len(text)
    with pytest.raises(KerasFileError, match="does not match the skeleton"):
        wqkernels.inspect(packed)


def test_kept_dataset_checked(tmp_path):
    """A large dataset kept outside the skeleton is checked against its CRC too."""
    src = tmp_path / "big.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
        g["dense/kernel:0"] = np.random.default_rng(0).standard_normal((128, 256)).astype(np.float32)
        g["dense/bias:0"] = np.zeros(256, np.float32)
    packed = tmp_path / "p.h5"
    wqkernels.rewrite(src, packed, Recipe(bits=8, storage="packed", exclude=("*kernel*",)))  # kept aside
    assert_bit_equal(wqkernels.load_weights(packed)["dense/dense/kernel:0"], wqkernels.load_weights(src)["dense/dense/kernel:0"])
    with h5py.File(packed, "a") as f:
        f["wqkernels/datasets/0"][5, 5] = 1.0
    with pytest.raises(KerasFileError, match="dense/dense/kernel:0' is corrupt"):
        wqkernels.load_weights(packed)
    with pytest.raises(KerasFileError, match="corrupt"):
        wqkernels.restore(packed, tmp_path / "r.h5")
    assert not (tmp_path / "r.h5").exists()


def test_version_2_still_read(tmp_path):
    """``data/packed-v2.weights.h5``: ``write_keras3`` packed at 4 bits, asymmetric, by format
    version 2 (no placeholder marks, no checksums); it restores to the float32 rewrite."""
    src = tmp_path / "src.weights.h5"
    write_keras3(src)
    golden = os.path.join(DATA, "packed-v2.weights.h5")
    with h5py.File(golden) as f:
        assert f["wqkernels"].attrs["version"] == 2
    wqkernels.rewrite(src, tmp_path / "f.weights.h5",
                      Recipe(bits=4, symmetric=False, method="mse", rounding="nearest"))  # what made it
    expected = wqkernels.load_weights(tmp_path / "f.weights.h5")
    got = wqkernels.load_weights(golden)
    assert got.keys() == expected.keys()
    for k in got:
        assert_bit_equal(got[k], expected[k], k)
    wqkernels.restore(golden, tmp_path / "r.weights.h5")
    restored = wqkernels.load_weights(tmp_path / "r.weights.h5")
    for k in got:
        assert_bit_equal(restored[k], expected[k], k)


def test_version_2_record_pointing_at_a_bias_is_refused(tmp_path):
    golden = tmp_path / "v2.weights.h5"
    shutil.copy(os.path.join(DATA, "packed-v2.weights.h5"), golden)
    edit_index(golden, lambda index, group: first(index).__setitem__("path", "layers/conv2d/vars/1"))
    with pytest.raises(KerasFileError, match="does not match"):
        wqkernels.load_weights(golden)


def test_written_container_is_version_3_with_marked_placeholders(packed):
    with h5py.File(packed) as f:
        assert f["wqkernels"].attrs["version"] == 3
    from wqkernels.files.source import Source
    with Source(packed) as source:
        marked = {p for p, info in source.packed.members.items() if info is not None and info.placeholder}
        assert marked == set(source.packed.tensors) and all("crc32" in t for t in source.packed.tensors.values())


# ---- HDF5 types and attributes that are not read safely --------------------------------------

def _retype_attribute(path, obj: str, name: str, tid) -> None:
    """Replace attribute `name` of `obj` by one of the HDF5 type `tid` (scalar)."""
    with h5py.File(path, "a") as f:
        target = f[obj]
        del target.attrs[name]
        h5py.h5a.create(target.id, name.encode(), tid, h5py.h5s.create(h5py.h5s.SCALAR))


@pytest.mark.parametrize("command", ["inspect", "rewrite", "restore"])
def test_vlen_sequence_attribute_refused_not_read(command, packed, tmp_path):
    """A flipped class bit turns the ``format`` string into a variable-length sequence: reading it
    crashed h5py.  Types are checked before any attribute is read."""
    _retype_attribute(packed, "wqkernels", "format", h5py.h5t.vlen_create(h5py.h5t.STD_U8LE))
    call = {"inspect": lambda: wqkernels.inspect(packed),
            "rewrite": lambda: wqkernels.rewrite(packed, tmp_path / "o.weights.h5", Recipe(bits=8)),
            "restore": lambda: wqkernels.restore(packed, tmp_path / "o.weights.h5")}[command]
    with pytest.raises(KerasFileError, match="attribute 'format' of 'wqkernels' has a variable-length"):
        call()
    assert sorted(os.listdir(tmp_path)) == ["m.weights.h5", "p.weights.h5"]


def test_non_standard_float_dataset_refused_by_rewrite_as_by_inspect(tmp_path):
    """A damaged datatype message (odd float bit fields): inspect could not read the data, and
    rewrite copied it unread (H5Ocopy).  Both refuse it now, naming the dataset."""
    src = tmp_path / "odd.h5"
    k2.write_tfkeras_weights(src)
    odd = h5py.h5t.IEEE_F32LE.copy()
    odd.set_fields(31, 23, 8, 0, 23)
    odd.set_ebias(100)
    with h5py.File(src, "a") as f:
        g = f["dense_1/dense_1"]
        data = g["bias:0"][()]
        del g["bias:0"]
        dset = h5py.h5d.create(g.id, b"bias:0", odd, h5py.h5s.create_simple(data.shape))
        dset.write(h5py.h5s.ALL, h5py.h5s.ALL, data)
    for call in (lambda: wqkernels.inspect(src), lambda: wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(bits=8))):
        with pytest.raises(KerasFileError, match="'dense_1/dense_1/bias:0' has a non-standard float type"):
            call()
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("kind", ["attribute", "dataset"])
def test_object_references_refused_clearly(kind, tmp_path):
    """References would be copied as addresses into the source file: refused, with the reason."""
    src = tmp_path / "refs.h5"
    k2.write_tfkeras_weights(src)
    with h5py.File(src, "a") as f:
        ref = f["dense_1"].ref
        if kind == "attribute":
            f["dense_1"].attrs.create("link", ref, dtype=h5py.ref_dtype)
        else:
            f["dense_1"].create_dataset("links", data=np.array([ref]), dtype=h5py.ref_dtype)
    with pytest.raises(KerasFileError, match="references"):
        wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(bits=8))
    assert not (tmp_path / "o.h5").exists()


# ---- bounded by the real content ---------------------------------------------------------------

def _archive(path, config: bytes, weights, **members) -> None:
    import zipfile
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", config)
        z.write(weights, "model.weights.h5")
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.parametrize("config", [b"[" + b"{}," * (30 << 20) + b"{}]", b"[" * 200_000 + b"]" * 200_000,
                                    b'{"config": [' + b"[]," * (5 << 20) + b"[]]}"])
def test_config_beyond_what_a_model_needs_is_refused_before_parsing(config, keras3, tmp_path):
    src = tmp_path / "bomb.keras"
    _archive(src, config, keras3)
    with pytest.raises(KerasFileError, match="model config|config.json"):
        wqkernels.inspect(src)


def test_asset_declaring_far_more_than_it_stores_is_refused(keras3, tmp_path):
    src = tmp_path / "asset.keras"
    _archive(src, b"{}", keras3, **{"assets/vocab.txt": b"\0" * (80 << 20)})
    with pytest.raises(KerasFileError, match="assets/vocab.txt declares"):
        wqkernels.inspect(src)


def test_total_of_unbacked_declared_sizes_is_refused(tmp_path):
    """40 never-written kernels of 60 MiB in a 99 KB file made a 2.5 GB output: each passes the
    per-dataset check, their total does not."""
    src = tmp_path / "declared.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([f"d{i}".encode() for i in range(40)])
        for i in range(40):
            g = f.create_group(f"d{i}")
            g.attrs["weight_names"] = np.array([f"d{i}/kernel:0".encode()])
            g.create_dataset(f"d{i}/kernel:0", shape=(3960, 3960), dtype="f4")
    with pytest.raises(KerasFileError, match="declare 2509056000 bytes more than they store"):
        wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(bits=8))
    assert not (tmp_path / "o.h5").exists()


def test_packed_index_bounded_by_the_skeleton(packed):
    """60 M empty records (241 KB compressed) took 4.9 GB to parse: the index may take only so
    many bytes per dataset of the skeleton."""
    text = b'{"tensors": [' + b"{}," * (20 << 20) + b"{}]}"
    with h5py.File(packed, "a") as f:
        group = f["wqkernels"]
        del group["index"]
        group["index"] = np.frombuffer(zlib.compress(text, 9), np.uint8)
        group.attrs["index_bytes"] = len(text)
    with pytest.raises(KerasFileError, match="packed index declares .* bytes for .* datasets; refused"):
        wqkernels.inspect(packed)


def test_global_heap_that_hangs_hdf5_is_refused(keras3, tmp_path):
    """One flipped byte made a heap's free space 0 bytes long: HDF5 then loops for ever on the
    first string attribute it reads."""
    data = bytearray(keras3.read_bytes())
    at = data.find(b"GCOL\x01\x00\x00\x00")
    assert at >= 0
    p = at + 16
    while int.from_bytes(data[p:p + 2], "little") != 0:  # to the free-space object
        p += 16 + (int.from_bytes(data[p + 8:p + 16], "little") + 7) // 8 * 8
    data[p + 8:p + 16] = (0).to_bytes(8, "little")
    hostile = tmp_path / "hang.weights.h5"
    hostile.write_bytes(bytes(data))
    with pytest.raises(KerasFileError, match=f"corrupt HDF5 global heap at byte {at}; refused"):
        wqkernels.inspect(hostile)


@pytest.mark.parametrize("scan", [8, 37, 1 << 20])
def test_heap_scan_finds_what_bytes_find_finds(scan, monkeypatch, tmp_path):
    """The scan for collection signatures (a kernel, over a file read a buffer at a time) finds
    every signature bytes.find finds, across the buffers' seams, and sums the bytes it read for
    the CRC-32 of a .keras member."""
    from wqkernels.files import h5tree
    sig = b"GCOL\x01\x00\x00\x00"
    rng = np.random.default_rng(scan)
    data = bytearray(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for at in (0, 30, 36, 37, 40, 500, 4992):
        data[at:at + 8] = sig
    data[1000:1005] = sig[:5]  # a signature cut short is none
    data = bytes(data)
    want, at = [], data.find(sig)
    while at >= 0:
        want.append(at)
        at = data.find(sig, at + 1)
    monkeypatch.setattr(h5tree.FileBytes, "CHUNK", scan)
    assert list(h5tree._signatures(data)) == want
    path = tmp_path / "bytes"
    path.write_bytes(b"head" + data + b"tail")
    with open(path, "rb") as f:
        member = h5tree.FileBytes(f, 4, len(data), crc=True)
        assert list(h5tree._signatures(member)) == want
        assert member.crc32() == zlib.crc32(data)


def test_damaged_version_does_not_skip_the_checks(packed):
    with h5py.File(packed, "a") as f:
        f["wqkernels"].attrs["version"] = 2
    with pytest.raises(KerasFileError, match="inconsistent"):
        wqkernels.load_weights(packed)


def test_keras_weights_member_with_a_flipped_byte_is_refused(keras3_zip, tmp_path):
    """A .keras archive's weights are read in place when stored uncompressed (as Keras writes
    them); a byte flipped inside a weight's data fails the member's CRC-32, checked in the same
    read as the heap scan, before anything is read or written."""
    import zipfile
    with zipfile.ZipFile(keras3_zip) as z:
        info = z.getinfo("model.weights.h5")
        assert info.compress_type == zipfile.ZIP_STORED
    with h5py.File(zipfile.ZipFile(keras3_zip).open("model.weights.h5")) as f:
        offset = f["layers/embedding/vars/0"].id.get_offset()  # of the data in the member
    data = bytearray(keras3_zip.read_bytes())
    with open(keras3_zip, "rb") as raw:
        raw.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(raw.read(4), "<u2")
    at = info.header_offset + 30 + int(name_len) + int(extra_len) + offset + 17
    data[at] ^= 0x10
    bad = tmp_path / "bad.keras"
    bad.write_bytes(bytes(data))
    for call in (lambda: wqkernels.load_weights(bad), lambda: wqkernels.rewrite(bad, tmp_path / "o.keras", Recipe(bits=8))):
        with pytest.raises(KerasFileError, match=r"bad CRC-32 for file 'model.weights.h5'"):
            call()
    assert not (tmp_path / "o.keras").exists()
    assert wqkernels.load_weights(keras3_zip)  # the intact archive reads


def test_member_stored_twice_is_refused(keras3_zip, tmp_path):
    """Which of two members of one name a zip reader takes is its own choice: refused, and nothing
    written."""
    import warnings
    import zipfile
    bad = tmp_path / "dup.keras"
    listing = set(os.listdir(tmp_path)) | {bad.name}
    with zipfile.ZipFile(keras3_zip) as z, zipfile.ZipFile(bad, "w") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (zipfile warns of the duplicate it is told to write)
        for info in z.infolist():
            out.writestr(info, z.read(info))
        out.writestr("model.weights.h5", z.read("model.weights.h5"))
    for call in (lambda: wqkernels.inspect(bad), lambda: wqkernels.rewrite(bad, tmp_path / "o.keras", Recipe(bits=8))):
        with pytest.raises(KerasFileError, match="holds model.weights.h5 twice"):
            call()
    assert set(os.listdir(tmp_path)) == listing


@pytest.mark.parametrize("command", ["inspect", "rewrite"])
def test_string_attribute_of_unknown_character_set_is_refused_naming_it(command, keras3, tmp_path):
    """One byte of a string attribute's datatype changed its character set to one HDF5 does not
    define: h5py's TypeError ("Unknown string encoding") reached the user without the file's name,
    and rewrite copied the attribute unread."""
    data = bytearray(keras3.read_bytes())
    at = data.find(b"\x19\x01\x01\x00")  # a variable-length UTF-8 string type, as h5py writes one
    assert at >= 0
    data[at + 2] = 8
    hostile = tmp_path / "cset.weights.h5"
    hostile.write_bytes(bytes(data))
    call = {"inspect": lambda: wqkernels.inspect(hostile),
            "rewrite": lambda: wqkernels.rewrite(hostile, tmp_path / "o.weights.h5", Recipe(bits=8))}[command]
    with pytest.raises(KerasFileError, match=rf"^{hostile}: attribute 'name' of '\S+' has a string type of unknown "
                                             r"character set \(code 8\); refused$"):
        call()
    assert not (tmp_path / "o.weights.h5").exists()


def _corrupt_skeleton(group):
    data = group["skeleton"][()]
    data[len(data) // 2] ^= 0xFF
    group["skeleton"][...] = data


@pytest.mark.parametrize("damage, message", [
    (lambda g: g.attrs.__setitem__("version", np.array([3, 3])), "packed container's 'version' attribute is not an integer"),
    (lambda g: g.attrs.__setitem__("index_bytes", 1.5), "packed container's 'index_bytes' attribute is not an integer"),
    (lambda g: g.attrs.__delitem__("index_bytes"), "packed container lacks its 'index_bytes' attribute"),
    (lambda g: g.attrs.__setitem__("skeleton_bytes", "many"), "packed container's 'skeleton_bytes' attribute is not an integer"),
    (lambda g: g.attrs.__setitem__("format", np.array([b"wqkernels-packed", b"x"])), "group .wqkernels. is not a wqkernels packed container"),
    (_corrupt_skeleton, r"packed skeleton is corrupt \(its xz data does not decompress: Corrupt input data\)"),
])
def test_damaged_packed_header_is_said_in_words(damage, message, packed):
    """The container's attributes and compressed skeleton read by their own checks: a catch-all
    put Python's exception name in the line ("TypeError: index_bytes is not an integer",
    "LZMAError", "The truth value of an array ... is ambiguous")."""
    with h5py.File(packed, "a") as f:
        damage(f["wqkernels"])
    with pytest.raises(KerasFileError, match=f"^{packed}: {message}") as caught:
        wqkernels.inspect(packed)
    assert "Error" not in str(caught.value)


def test_packed_index_that_does_not_inflate_or_parse_is_said_in_words(packed):
    with h5py.File(packed, "a") as f:
        group = f["wqkernels"]
        del group["index"]
        group["index"] = np.frombuffer(zlib.compress(b"not json"), np.uint8)
        group.attrs["index_bytes"] = 8
    with pytest.raises(KerasFileError, match=rf"^{packed}: packed index is corrupt \(not JSON\)$"):
        wqkernels.inspect(packed)
    with h5py.File(packed, "a") as f:
        f["wqkernels/index"][0] ^= 0xFF
    with pytest.raises(KerasFileError, match=rf"^{packed}: packed index is corrupt \(it does not inflate: "):
        wqkernels.inspect(packed)


def test_packed_index_checksum_that_is_not_an_integer_is_said_in_words(packed):
    edit_index(packed, lambda index, group: index.__setitem__("dataset_crc32", ["x"] * len(index["datasets"]))
               if index["datasets"] else index.__setitem__("skeleton_bytes", "x"))
    with pytest.raises(KerasFileError, match=rf"^{packed}: packed index field '\w+' is not an integer$"):
        wqkernels.inspect(packed)


@pytest.mark.parametrize("obj, name", [("model_weights", "layer_names"), ("model_weights/dense_1", "weight_names"),
                                       ("optimizer_weights", "weight_names")])
@pytest.mark.parametrize("value", [7, 1.5, True, np.array([b"dense_1", b""])])
def test_name_list_that_is_not_a_list_of_names_is_refused_naming_it(obj, name, value, tmp_path):
    """A legacy ``layer_names`` or ``weight_names`` holding a number reached the user as
    "TypeError: 'numpy.int64' object is not iterable", an empty name as h5py's ValueError on
    opening a group named ''."""
    src = tmp_path / "names.h5"
    k2.write_keras20_full(src)
    with h5py.File(src, "a") as f:
        if obj not in f:
            pytest.skip(f"{obj} not in this file")
        f[obj].attrs[name] = value
    with pytest.raises(KerasFileError, match=rf"^{src}: attribute '{name}' of '{obj}' is not a list of names$"):
        wqkernels.inspect(src)


@pytest.mark.parametrize("path", ["layers", "layers/dense/vars", "layers/dense/vars/0"])
def test_damaged_object_header_names_the_object(path, keras3, tmp_path):
    """An object whose header is damaged is named by its path, in words: h5py's KeyError reached
    the user as "cannot read or write as a Keras file ('Unable to ...')", its RuntimeErrors with
    their type's name."""
    with h5py.File(keras3) as f:
        address = h5py.h5o.get_info(f[path].id).addr
    data = bytearray(keras3.read_bytes())
    data[address] = 7  # the header's version
    hostile = tmp_path / "header.weights.h5"
    hostile.write_bytes(bytes(data))
    with pytest.raises(KerasFileError, match=rf"^{hostile}: unreadable object at '{path}', its HDF5 metadata "
                                             r"damaged \(Unable to synchronously open object \(bad object header "
                                             r"version number\)\)$"):
        wqkernels.inspect(hostile)


@pytest.mark.parametrize("layout", ["keras3", "legacy"])
@pytest.mark.parametrize("data, what", [(np.zeros(8, [("a", "f4"), ("b", "i4")]), "records \\(a compound type\\)"),
                                        (np.full(8, b"s", "S3"), "strings"),
                                        (np.full(8, "s", object), "strings")])
def test_weight_of_records_or_strings_is_refused_naming_it(layout, data, what, tmp_path):
    """A compound or string dataset where a weight is expected was listed as a bias and copied
    (Keras fails to assign it), and compare ended with NumPy's "Cannot compare structured or
    void to non-void arrays" without the file's name."""
    src = tmp_path / ("w.weights.h5" if layout == "keras3" else "w.h5")
    if layout == "keras3":
        write_keras3(src)
        path = "layers/dense/vars/1"
    else:
        k2.write_keras20_full(src)
        with h5py.File(src) as f:
            path = next(f"model_weights/dense_1/{n}" for n in f["model_weights/dense_1"].attrs["weight_names"].astype(str)
                        if "bias" in n)
    with h5py.File(src, "a") as f:
        shape = f[path].shape
        del f[path]
        dtype = h5py.string_dtype() if data.dtype == object else data.dtype
        f.create_dataset(path, data=np.resize(data, shape), dtype=dtype)
    for call in (lambda: wqkernels.inspect(src), lambda: wqkernels.rewrite(src, tmp_path / f"o{src.name}", Recipe(bits=8))):
        with pytest.raises(KerasFileError, match=f"^{src}: weight '{path}' holds {what}, not numbers; refused$"):
            call()
    assert not (tmp_path / f"o{src.name}").exists()


def test_member_names_that_are_not_utf8_are_refused_in_one_line(tmp_path, capsys):
    """A group name of bytes that are not UTF-8 was read as text with a replacement character,
    which then named no member: h5py's "component not found" reached the user without the file."""
    from h5py import h5g

    from wqkernels.cli import main
    path = tmp_path / "bad.weights.h5"
    with h5py.File(path, "w") as f:
        f["layers/dense/vars/0"] = np.ones((8, 8), np.float32)
        vars_ = h5g.create(h5g.create(f["layers"].id, b"d\xff"), b"vars")
        h5py.Group(vars_).create_dataset("0", data=np.ones((8, 8), np.float32))
    for command in (["inspect", str(path)], ["rewrite", str(path), "-o", str(tmp_path / "o.weights.h5"), "--bits", "4"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err == (f"wqkernels {command[0]}: error: {path}: a member of 'layers' has a name that is not UTF-8 "
                       f"(b'd\\xff'); refused\n"), err
    assert not (tmp_path / "o.weights.h5").exists()


@pytest.mark.parametrize("error", [KeyError("'shape'"), TypeError("unhashable type: 'list'")])
def test_fault_of_the_walk_is_not_blamed_on_the_file(error, keras3, monkeypatch):
    """h5py's KeyError or TypeError on a damaged header is the file's (above); the same errors
    raised by the walk's own checks are a fault of ours, shown as they are."""
    from wqkernels.files import h5tree

    def check_dataset(*args):
        raise error
    monkeypatch.setattr(h5tree, "check_dataset", check_dataset)
    with pytest.raises(type(error)):
        wqkernels.inspect(keras3)


def test_what_counts_as_the_file_error(tmp_path):
    """A KeyError raised by h5py (a missing or unreadable object) or by zipfile (a missing
    member) is the file's; one raised by our own code is not; other errors always are."""
    import io
    import zipfile

    from wqkernels.files.errors import of_the_file

    def raised(call):
        try:
            call()
        except Exception as exc:
            return exc
        raise AssertionError("nothing raised")

    with h5py.File(tmp_path / "empty.h5", "w") as f:
        assert of_the_file(raised(lambda: h5py.h5o.open(f.id, b"missing")))
    archive = io.BytesIO()
    zipfile.ZipFile(archive, "w").close()
    assert of_the_file(raised(lambda: zipfile.ZipFile(archive).open("missing")))
    assert not of_the_file(raised(lambda: {}["shape"]))
    assert not of_the_file(raised(lambda: len(None)))
    assert of_the_file(raised(lambda: int("x")))
