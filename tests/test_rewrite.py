"""rewrite and restore: reports, storages, compression, in place, interruption, other processes."""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference

from .helpers import assert_bit_equal, default_grid, listing, run_cli, sha256_of


def test_report_json_and_table(keras20, tmp_path, capsys):
    report_path = tmp_path / "r.json"
    code, out, err = run_cli(["rewrite", keras20[0], "-o", tmp_path / "o.h5", "--bits", "8",
                              "--report", report_path], capsys)
    assert code == 0, err
    assert "SQNR" in out and "ratio" in out
    data = json.loads(report_path.read_text())
    assert len(data["weights"]) == 3 and data["totals"]["bits_per_weight"] == 8
    assert all(w["sqnr_db"] > 30 for w in data["weights"])


def test_strip_optimizer_float16_and_compression(keras20, tmp_path):
    src, values = keras20
    dst = tmp_path / "o.h5"
    report = wqkernels.rewrite(src, dst, Recipe(storage="float16", compress="gzip", strip_optimizer=True))
    with h5py.File(dst) as f:
        assert "optimizer_weights" not in f
        kernel = f["model_weights/dense_1/dense_1_1/kernel:0"]
        assert kernel.dtype == np.float16 and kernel.compression is None  # 640 bytes: too small to gain
        assert_bit_equal(kernel[()], values["dense_1"][0].astype(np.float16))
    assert pickle.loads(pickle.dumps(report)).to_dict() == report.to_dict()


def test_large_datasets_get_compressed(tmp_path):
    src = tmp_path / "big.h5"
    rng = np.random.default_rng(0)
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.4.0"
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
        g.create_dataset("dense/kernel:0", data=rng.standard_normal((256, 128)).astype(np.float32))
        g.create_dataset("dense/bias:0", data=np.zeros(128, np.float32))
    for compress in ("gzip", "lzf"):
        dst = tmp_path / f"{compress}.h5"
        wqkernels.rewrite(src, dst, Recipe(bits=4, compress=compress))
        with h5py.File(dst) as f:
            assert f["dense/dense/kernel:0"].compression == compress
            assert f["dense/dense/bias:0"].compression is None
        assert os.path.getsize(dst) < 0.75 * os.path.getsize(src)  # 16 values per channel


def test_in_place(keras20, capsys):
    src = keras20[0]
    code, out, err = run_cli(["rewrite", src, "-o", src, "--bits", "8"], capsys)
    assert code != 0 and "in-place" in err
    before = sha256_of(src)
    code, out, err = run_cli(["rewrite", src, "-o", src, "--bits", "8", "--in-place"], capsys)
    assert code == 0, err
    assert sha256_of(src) != before
    assert listing(src.parent) == {src.name}


@pytest.mark.parametrize("which,patched,recipe,suffix", [
    ("keras20", "fake_quantize", Recipe(bits=4), ".h5"),
    ("keras3_zip", "quantize_packed", Recipe(bits=4, storage="packed"), ".keras"),
])
def test_interrupted_rewrite_leaves_nothing(which, patched, recipe, suffix, request, tmp_path, monkeypatch):
    src = request.getfixturevalue(which)
    src = src[0] if isinstance(src, tuple) else src
    before = sha256_of(src)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib.import_module("wqkernels.files.transform"), patched, interrupt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        wqkernels.rewrite(src, out_dir / f"o{suffix}", recipe)
    assert listing(out_dir) == set()
    assert sha256_of(src) == before


def test_permissions_kept_and_no_optimizer_confusion(tfkeras, tmp_path):
    src = tfkeras[0]
    dst = tmp_path / "o.h5"
    dst.write_bytes(b"old")
    os.chmod(dst, 0o640)
    report = wqkernels.rewrite(src, dst, Recipe(bits=8, strip_optimizer=True))
    assert os.stat(dst).st_mode & 0o777 == 0o640
    assert "optimizer state removed" not in report.notes  # weights-only legacy: nothing to strip
    assert set(wqkernels.load_weights(dst)) == set(wqkernels.load_weights(src))


def test_rewrite_runs_in_another_process(keras20, tmp_path):
    """What batch rewriting relies on: a picklable call returning a picklable Report."""
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        report = pool.submit(wqkernels.rewrite, str(keras20[0]), str(tmp_path / "o.h5"), Recipe(bits=8)).result()
    assert report.destination == str(tmp_path / "o.h5") and len(report.rows) == 3
    assert_bit_equal(wqkernels.load_weights(tmp_path / "o.h5")["model_weights/dense_1/dense_1_1/kernel:0"],
                     reference.fake_quantize(keras20[1]["dense_1"][0], 8, axis=1, **default_grid(8)))


@pytest.mark.parametrize("shape, chunks", [((8192, 8192), (32, 8192)), ((3, 3, 64, 128), (3, 3, 64, 128)),
                                           ((2, 600_000), (1, 262_144)), ((5_000_000,), (262_144,)), ((7,), (7,))])
def test_compressed_chunks_are_contiguous_runs_of_about_1_mib(shape, chunks):
    from wqkernels.files.h5tree import CHUNK_BYTES, chunk_shape
    got = chunk_shape(shape, 4)
    assert got == chunks
    differ = [i for i, (c, n) in enumerate(zip(got, shape)) if c != n]
    if differ:  # a contiguous run: single indices, then part of one axis, then whole axes
        assert all(c == 1 for c in got[:differ[-1]])
        assert math.prod(got) * 4 <= CHUNK_BYTES


def _many_dense(path, layers: int) -> None:
    """A legacy .h5 of `layers` Dense(4) layers; two kernels are not stored as a rewrite stores
    them (big-endian, chunked) and one layer's kernel is a float64."""
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        f.attrs["backend"], f.attrs["keras_version"] = "jax", "3.15.1"
        mw = f.create_group("model_weights")
        names = [f"dense_{i}" for i in range(layers)]
        mw.attrs["layer_names"] = names
        for i, name in enumerate(names):
            g = mw.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel", f"{name}/bias"]
            kernel = rng.standard_normal((4, 4)).astype({1: ">f4", 2: np.float64}.get(i, np.float32))
            g.create_dataset(f"{name}/kernel", data=kernel, chunks=(2, 4) if i == 3 else None)
            g[f"{name}/kernel"].attrs["note"] = np.int16(i)
            g.create_dataset(f"{name}/bias", data=rng.standard_normal(4).astype(np.float32))


def _datasets(path) -> dict:
    """Every dataset's values, type, layout, fill time and attributes; every group's attributes."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                dcpl = obj.id.get_create_plist()
                out[name] = (obj[()].tobytes(), obj.dtype.str, obj.shape, dcpl.get_layout(), dcpl.get_fill_time(),
                             obj.compression, dict(obj.attrs))
            else:
                out[name] = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
        f.visititems(visit)
    return out


@pytest.mark.parametrize("recipe", [Recipe(bits=8), Recipe(sparsity=0.5, bits=4, granularity="tensor"),
                                    Recipe(bits=8, storage="float16"), Recipe(bits=8, compress="gzip")],
                         ids=["int8", "pruned-int4", "float16", "gzip"])
@pytest.mark.parametrize("layers", [3, 70])  # a model_weights group copied whole, or recreated
def test_weights_written_into_copies_equal_weights_created_anew(recipe, layers, tmp_path, monkeypatch):
    from wqkernels.files import writers
    src = tmp_path / "many.h5"
    _many_dense(src, layers)
    copied, created = tmp_path / "copied.h5", tmp_path / "created.h5"
    report = wqkernels.rewrite(src, copied, recipe)
    monkeypatch.setattr(writers, "OVERWRITTEN_BYTES", 0)  # every rewritten weight created anew
    assert wqkernels.rewrite(src, created, recipe).to_dict()["weights"] == report.to_dict()["weights"]
    assert _datasets(copied) == _datasets(created)


def _order(path) -> list:
    """Every member's path, as h5py lists them (in creation order where a group tracks it)."""
    with h5py.File(path, "r") as f:
        names = []

        def listed(group, prefix):
            for name in group:
                names.append(prefix + name)
                if isinstance(group[name], h5py.Group):
                    listed(group[name], prefix + name + "/")
        listed(f, "")
        return names


@pytest.mark.parametrize("layers", [3, 70])
@pytest.mark.parametrize("track_order", [False, True])
def test_placeholders_replaced_in_copies_restore_as_created_anew(layers, track_order, tmp_path, monkeypatch):
    """A restore copies each layer whole and replaces its placeholders there: the file equals one
    whose groups were recreated, also in the order members are listed (a group tracking its
    links' creation order keeps its placeholders' places)."""
    rewrite_module = importlib.import_module("wqkernels.files.rewrite")
    src = tmp_path / "many.weights.h5"
    rng = np.random.default_rng(1)
    with h5py.File(src, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        for i in range(layers):
            g = f.create_group(f"layers/dense_{i}/vars", track_order=track_order)
            g.attrs["name"] = f"dense_{i}"
            g.create_dataset("0", data=rng.standard_normal((4, 4)).astype(np.float32))  # first, then the bias
            g.create_dataset("1", data=rng.standard_normal(4).astype(np.float32))
    packed = tmp_path / "packed.weights.h5"
    wqkernels.rewrite(src, packed, Recipe(bits=4, storage="packed", min_size=1))
    replaced, created = tmp_path / "replaced.weights.h5", tmp_path / "created.weights.h5"
    report = wqkernels.restore(packed, replaced)
    monkeypatch.setattr(rewrite_module, "replaceable", lambda root, members, paths: set())
    assert wqkernels.restore(packed, created).to_dict()["weights"] == report.to_dict()["weights"]
    assert _datasets(replaced) == _datasets(created)
    assert _order(replaced) == _order(created) == _order(src)


def test_an_optimizer_state_kept_is_told_when_it_weighs(keras20, keras3_zip, tmp_path):
    """A model saved after training may hold more optimizer state than weights, which a rewrite
    copies unless told to drop it: the note says how much and how to drop it."""
    src, values = keras20
    notes = wqkernels.rewrite(src, tmp_path / "a.h5", Recipe(bits=8)).notes  # a little state (2 %)
    assert not any("optimizer state kept" in n for n in notes), notes
    trained = tmp_path / "trained.h5"
    shutil.copyfile(src, trained)
    with h5py.File(trained, "r+") as f:  # Adam's two moments of every weight
        for name, arrays in values.items():
            for i, a in enumerate(arrays):
                for moment in ("m", "v"):
                    f.create_dataset(f"optimizer_weights/{moment}/{name}_{i}:0", data=np.zeros_like(a))
        sizes = {}
        f.visititems(lambda name, o: sizes.__setitem__(name, o.id.get_storage_size())
                     if isinstance(o, h5py.Dataset) else None)
    state = sum(n for name, n in sizes.items() if name.startswith("optimizer_weights/"))
    share = state / sum(sizes.values())
    notes = wqkernels.rewrite(trained, tmp_path / "b.h5", Recipe(bits=8)).notes
    kept = [n for n in notes if n.startswith("optimizer state kept as it is")]
    assert share > 0.5 and kept == [f"optimizer state kept as it is: {state / 1e3:.1f} kB, {share:.0%} of the "
                                    "file's data; --strip-optimizer drops it when the model is only to run"], notes
    notes = wqkernels.rewrite(trained, tmp_path / "c.h5", Recipe(bits=8, strip_optimizer=True)).notes
    assert not any("optimizer state kept" in n for n in notes) and "optimizer state removed" in notes
    notes = wqkernels.rewrite(keras3_zip, tmp_path / "d.keras", Recipe(bits=8)).notes  # 8 bytes of state
    assert not any("optimizer state kept" in n for n in notes), notes
