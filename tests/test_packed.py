"""Packed storage: restore equals the float32 rewrite bit for bit; corrupt containers are refused."""
from __future__ import annotations

import importlib
import importlib.util
import json
import lzma
import os
import zlib

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference
from wqkernels.files.packed import xz_compress

from .helpers import assert_bit_equal, assert_same_weights, default_grid, hdf5_tree, run_cli


def test_packed_restore_is_bit_identical_to_float32(keras20, tmp_path, capsys):
    src = keras20[0]
    for granularity in ("channel", "tensor", "block:16"):
        f32, packed, restored = (tmp_path / f"{n}-{granularity[:5]}.h5" for n in ("f32", "packed", "restored"))
        common = ["--bits", "3", "--granularity", granularity]
        assert run_cli(["rewrite", src, "-o", f32, *common], capsys)[0] == 0
        assert run_cli(["rewrite", src, "-o", packed, *common, "--storage", "packed"], capsys)[0] == 0
        assert run_cli(["restore", packed, "-o", restored], capsys)[0] == 0
        with h5py.File(f32) as a, h5py.File(restored) as b:
            assert hdf5_tree(a) == hdf5_tree(b)
            a.visititems(lambda n, o: assert_bit_equal(o[()], b[n][()], n) if isinstance(o, h5py.Dataset) else None)
        loaded_f32, loaded_packed = wqkernels.load_weights(f32), wqkernels.load_weights(packed)
        assert loaded_f32.keys() == loaded_packed.keys()
        for k in loaded_f32:
            assert_bit_equal(loaded_f32[k], loaded_packed[k], k)
        assert os.path.getsize(packed) < os.path.getsize(f32)


def test_packed_skeleton_read_in_memory_by_hdf5(keras20, tmp_path):
    """The skeleton is opened from its image by HDF5's core driver, not through a Python file
    object (whose driver makes a Python call for each piece of metadata read)."""
    from wqkernels.files.source import Source
    packed = tmp_path / "p.h5"
    wqkernels.rewrite(keras20[0], packed, Recipe(bits=4, storage="packed"))
    with Source(packed) as source:
        assert source.packed.skeleton.driver == "core"
        assert {e.path for e in source.entries} == {i.path for i in wqkernels.inspect(keras20[0])}


def test_images_open_at_once_keep_their_contents():
    """Two HDF5 images open at the same time (the shards of a packed set) are two files."""
    from wqkernels.files.h5tree import open_image
    images = []
    for k in range(2):
        with h5py.File(f"image{k}", "w", driver="core", backing_store=False) as f:
            f[f"only{k}"] = np.arange(3) + k
            f.flush()
            images.append(f.id.get_file_image())
    first, second = (open_image(image) for image in images)
    try:
        assert list(first) == ["only0"] and list(second) == ["only1"]
        assert second["only1"][()].tolist() == [1, 2, 3]
    finally:
        first.close()
        second.close()


def test_packed_inspect_and_rewrite_from_packed(keras20, tmp_path):
    packed = tmp_path / "p.h5"
    wqkernels.rewrite(keras20[0], packed, Recipe(bits=4, storage="packed"))
    infos = {i.path: i for i in wqkernels.inspect(packed)}
    assert infos["model_weights/dense_1/dense_1_1/kernel:0"].storage == "packed:4"
    again = tmp_path / "again.h5"
    wqkernels.rewrite(packed, again, Recipe(bits=4))  # already on the grid: quantizing again is exact
    assert_bit_equal(wqkernels.load_weights(again)["model_weights/dense_1/dense_1_1/kernel:0"],
                     wqkernels.load_weights(packed)["model_weights/dense_1/dense_1_1/kernel:0"])


def test_blocked_packed_keras3(keras3_zip, tmp_path):
    f32, packed = tmp_path / "f.keras", tmp_path / "p.keras"
    wqkernels.rewrite(keras3_zip, f32, Recipe(bits=4, granularity="block:8"))
    wqkernels.rewrite(keras3_zip, packed, Recipe(bits=4, granularity="block:8", storage="packed"))
    a, b = wqkernels.load_weights(f32), wqkernels.load_weights(packed)
    for k in a:
        assert_bit_equal(a[k], b[k], k)
    source = wqkernels.load_weights(keras3_zip)["layers/conv2d/vars/0"]
    expected = reference.fake_quantize(source.reshape(18, 8), 4, axis=0, block_size=8, **default_grid(4))
    assert_bit_equal(a["layers/conv2d/vars/0"], expected.reshape(3, 3, 2, 8))


def _edit_index(group: h5py.Group, change) -> None:
    """Rewrite the index of a packed container with `change(index)` applied."""
    index = json.loads(zlib.decompress(group["index"][()].tobytes()))
    change(index)
    text = json.dumps(index).encode()
    del group["index"]
    group["index"] = np.frombuffer(zlib.compress(text), np.uint8)
    group.attrs["index_bytes"] = len(text)


def _assert_refused(packed, tmp_path, capsys) -> None:
    """inspect and restore of a damaged packed file fail with one line, leaving no output."""
    for command in (["inspect", packed], ["restore", packed, "-o", tmp_path / "r.h5"]):
        code, out, err = run_cli(command, capsys)
        assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.parametrize("damage", ["index-size", "offsets", "skeleton", "image", "format", "version"])
def test_corrupt_packed_container(damage, keras20, tmp_path, capsys):
    packed = tmp_path / "p.h5"
    wqkernels.rewrite(keras20[0], packed, Recipe(bits=4, storage="packed"))
    with h5py.File(packed, "a") as f:
        g = f["wqkernels"]
        if damage == "index-size":
            g.attrs["index_bytes"] = 1 << 40
        elif damage == "format":
            g.attrs["format"] = "something else"
        elif damage == "version":
            g.attrs["version"] = 99
        elif damage == "skeleton":
            data = g["skeleton"][()]
            del g["skeleton"]
            g["skeleton"] = data[: len(data) // 2]
        elif damage == "image":  # whole xz data, of bytes that are no HDF5 file
            image = lzma.decompress(g["skeleton"][()].tobytes())
            del g["skeleton"]
            g["skeleton"] = np.frombuffer(xz_compress(image[:len(image) // 2]), np.uint8)
            g.attrs["skeleton_bytes"] = len(image) // 2
        else:
            _edit_index(g, lambda index: index["tensors"][0]["codes"].__setitem__(0, 10**9))
    _assert_refused(packed, tmp_path, capsys)


@pytest.mark.parametrize("compress", ["gzip", "lzf"])
def test_packed_compressed_restores_like_float32(compress, tmp_path):
    src = tmp_path / "big.h5"
    rng = np.random.default_rng(1)
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        kernel = rng.standard_normal((256, 512)).astype(np.float32)
        kernel[rng.random(kernel.shape) < 0.7] = 0  # as if pruned: the codes compress
        g.create_dataset("dense/kernel:0", data=kernel)
    recipe = dict(bits=3, compress=compress)  # 48 KiB of codes: large enough to compress
    wqkernels.rewrite(src, tmp_path / "f.h5", Recipe(**recipe))
    wqkernels.rewrite(src, tmp_path / "p.h5", Recipe(storage="packed", **recipe))
    wqkernels.restore(tmp_path / "p.h5", tmp_path / "r.h5")
    with h5py.File(tmp_path / "f.h5") as a, h5py.File(tmp_path / "r.h5") as b, h5py.File(tmp_path / "p.h5") as p:
        assert hdf5_tree(a) == hdf5_tree(b)
        assert b["dense/dense/kernel:0"].compression == compress
        assert_bit_equal(a["dense/dense/kernel:0"][()], b["dense/dense/kernel:0"][()])
        assert p["wqkernels/codes"].compression == compress
        assert p["wqkernels/scales"].compression is None  # 1 KiB: too small


def test_packed_dense_codes_stay_uncompressed(tmp_path):
    src = tmp_path / "big.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        g.create_dataset("dense/kernel:0", data=np.random.default_rng(2).standard_normal((256, 512)).astype(np.float32))
    recipe = Recipe(bits=4, symmetric=True, method="mse", storage="packed", compress="gzip")
    wqkernels.rewrite(src, tmp_path / "p.h5", recipe)
    with h5py.File(tmp_path / "p.h5") as p:
        assert p["wqkernels/codes"].compression is None  # 4-bit codes of a Gaussian: nothing to gain
        assert p["wqkernels/codes"].chunks is None  # 64 KiB, under 1 MiB: contiguous, no chunk index


def _write_big_legacy(path) -> None:
    """A legacy full-model .h5 of three Dense layers with kernels of 1024x600 (70 % zeros, as if
    pruned) and Adam's state: two moments per kernel, the second chunked and gzip-compressed with
    an attribute, and the iteration count."""
    rng = np.random.default_rng(3)
    names = ["dense", "dense_1", "dense_2"]
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = b"2.4.0", b"tensorflow"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([n.encode() for n in names])
        opt = f.create_group("optimizer_weights")
        moments = []
        for name in names:
            kernel = rng.standard_normal((1024, 600)).astype(np.float32)
            kernel[rng.random(kernel.shape) < 0.7] = 0
            g = mw.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()])
            g.create_dataset(f"{name}/kernel:0", data=kernel)
            g.create_dataset(f"{name}/bias:0", data=rng.standard_normal(600).astype(np.float32))
            opt.create_dataset(f"Adam/{name}/kernel/m:0", data=kernel * 0.1)
            v = opt.create_dataset(f"Adam/{name}/kernel/v:0", data=kernel ** 2, chunks=(256, 600), compression="gzip")
            v.attrs["note"] = b"second moment"
            moments += [f"Adam/{name}/kernel/m:0", f"Adam/{name}/kernel/v:0"]
        opt.create_dataset("Adam/iterations:0", data=np.int64(7))
        opt.attrs["weight_names"] = np.array([n.encode() for n in ["Adam/iterations:0", *moments]])


@pytest.fixture
def big_legacy(tmp_path):
    path = tmp_path / "big.h5"
    _write_big_legacy(path)
    return path


BIG_RECIPE = dict(bits=8, symmetric=True, exclude=("*dense_2*",))  # a symmetric grid requantizes exactly


@pytest.mark.parametrize("compress", ["none", "gzip", "lzf"])
def test_packed_large_datasets_kept_aside(compress, big_legacy, tmp_path):
    f32, packed, restored = (tmp_path / f"{n}.h5" for n in ("f32", "packed", "restored"))
    wqkernels.rewrite(big_legacy, f32, Recipe(compress=compress, **BIG_RECIPE))
    wqkernels.rewrite(big_legacy, packed, Recipe(storage="packed", compress=compress, **BIG_RECIPE))
    wqkernels.restore(packed, restored)
    with h5py.File(f32) as a, h5py.File(restored) as b:
        assert hdf5_tree(a) == hdf5_tree(b)  # filters, chunks and attributes of the kept datasets too
        a.visititems(lambda n, o: assert_bit_equal(o[()], b[n][()], n) if isinstance(o, h5py.Dataset) else None)
        assert b["optimizer_weights/Adam/dense/kernel/v:0"].chunks == (256, 600)
    assert_same_weights(f32, packed)
    with h5py.File(packed) as p:
        g = p["wqkernels"]
        index = json.loads(zlib.decompress(g["index"][()].tobytes()))
        assert sorted(index["datasets"]) == ["model_weights/dense_2/dense_2/kernel:0"] + [
            f"optimizer_weights/Adam/{n}/kernel/{m}:0" for n in ("dense", "dense_1", "dense_2") for m in "mv"]
        assert set(g["datasets"]) == {str(k) for k in range(len(index["datasets"]))}
        assert index["skeleton_bytes"] < 64_000  # biases and placeholders only
        assert g["codes"].chunks is not None and g["codes"].size == 2 * 1024 * 600
        assert g["codes"].compression == (None if compress == "none" else compress)
        assert g["scales"].chunks is None
    infos = {i.path: i for i in wqkernels.inspect(packed)}
    assert infos["model_weights/dense/dense/kernel:0"].storage == "packed:8"
    assert infos["model_weights/dense_2/dense_2/kernel:0"].storage == "dataset"


def test_packed_source_with_kept_datasets_rewrites(big_legacy, tmp_path):
    packed, again, stripped, f32 = (tmp_path / f"{n}.h5" for n in ("packed", "again", "stripped", "f32"))
    wqkernels.rewrite(big_legacy, packed, Recipe(storage="packed", **BIG_RECIPE))
    wqkernels.rewrite(big_legacy, f32, Recipe(**BIG_RECIPE))
    wqkernels.rewrite(packed, again, Recipe(storage="packed", **BIG_RECIPE))  # on the grid: exact
    assert_same_weights(packed, again)
    wqkernels.restore(again, tmp_path / "restored.h5")
    with h5py.File(f32) as a, h5py.File(tmp_path / "restored.h5") as b:
        assert hdf5_tree(a) == hdf5_tree(b)
    fewer = tmp_path / "fewer.h5"  # dense_1's codes dequantized: a large float32 dataset, kept aside
    wqkernels.rewrite(packed, fewer, Recipe(storage="packed", bits=8, symmetric=True,
                                            exclude=("*dense_1*", "*dense_2*")))
    assert_same_weights(packed, fewer)
    with h5py.File(fewer) as p:
        index = json.loads(zlib.decompress(p["wqkernels/index"][()].tobytes()))
        assert "model_weights/dense_1/dense_1/kernel:0" in index["datasets"]
    report = wqkernels.rewrite(packed, stripped, Recipe(storage="packed", bits=8, symmetric=True,
                                                        strip_optimizer=True))
    with h5py.File(stripped) as p:  # dense_2 quantized now; no optimizer state left to keep aside
        assert json.loads(zlib.decompress(p["wqkernels/index"][()].tobytes()))["datasets"] == []
        assert "datasets" not in p["wqkernels"]
    assert all(row.rewritten for row in report.rows)


def test_packed_arrays_written_in_chunks(keras20, tmp_path, monkeypatch):
    """Arrays beyond CHUNK_BYTES go to a growing chunked dataset, parts larger than a chunk too."""
    recipe = Recipe(bits=4, symmetric=False, storage="packed")  # zero points stored
    wqkernels.rewrite(keras20[0], tmp_path / "whole.h5", recipe)
    monkeypatch.setattr(importlib.import_module("wqkernels.files.packed"), "CHUNK_BYTES", 8)
    wqkernels.rewrite(keras20[0], tmp_path / "chunked.h5", recipe)
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "chunked.h5") as b:
        for name in ("codes", "scales", "zero_points"):
            assert a[f"wqkernels/{name}"].chunks is None and b[f"wqkernels/{name}"].chunks is not None
            assert_bit_equal(a[f"wqkernels/{name}"][()], b[f"wqkernels/{name}"][()], name)
    assert_same_weights(tmp_path / "whole.h5", tmp_path / "chunked.h5")


@pytest.mark.parametrize("damage", ["missing", "shape", "soft-link", "quantized-path", "unknown-path", "twice"])
def test_corrupt_kept_datasets(damage, big_legacy, tmp_path, capsys):
    packed = tmp_path / "p.h5"
    wqkernels.rewrite(big_legacy, packed, Recipe(storage="packed", **BIG_RECIPE))
    with h5py.File(packed, "a") as f:
        g = f["wqkernels"]
        if damage == "missing":
            del g["datasets/0"]
        elif damage == "shape":
            del g["datasets/0"]
            g["datasets/0"] = np.zeros(3, np.float32)
        elif damage == "soft-link":
            del g["datasets/0"]
            g["datasets/0"] = h5py.SoftLink("/wqkernels/codes")
        elif damage == "quantized-path":
            _edit_index(g, lambda index: index["datasets"].__setitem__(0, index["tensors"][0]["path"]))
        elif damage == "unknown-path":
            _edit_index(g, lambda index: index["datasets"].__setitem__(0, "model_weights/nothing"))
        else:
            _edit_index(g, lambda index: index["datasets"].__setitem__(1, index["datasets"][0]))
    _assert_refused(packed, tmp_path, capsys)


def test_skeleton_dictionary_bounded_by_its_size():
    """xz preset 9 takes a 64 MiB dictionary (and ~670 MiB to compress) whatever the input; the
    skeleton's is only as large as the skeleton, at the same compression."""
    data = np.random.default_rng(0).integers(0, 16, 200_000, dtype=np.uint8).tobytes()
    packed = xz_compress(data)
    assert lzma.LZMADecompressor(memlimit=2 << 20).decompress(packed) == data  # a 256 KiB dictionary
    preset9 = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    with pytest.raises(lzma.LZMAError):
        lzma.LZMADecompressor(memlimit=2 << 20).decompress(preset9)
    assert len(packed) <= len(preset9) + 16
