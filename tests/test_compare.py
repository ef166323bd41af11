"""compare: two files of the same model weight by weight, on the command line and in Python."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import warnings
import weakref

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference
from wqkernels.files import KerasFileError
from wqkernels.files.compare import compare
from wqkernels.files.source import Source

from .helpers import run_cli, sha256_of

#: keras 3.15 calls np.array(variable) in ways numpy 2 deprecates; nothing of ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def test_a_file_against_itself(keras20):
    c = compare(keras20[0], keras20[0])
    assert len(c.rows) == 6 and not c.only_a and not c.only_b
    assert all(r.identical and r.mse == 0 and r.sqnr_db == math.inf for r in c.rows)
    assert c.sqnr_db == math.inf and c.max_abs == 0
    assert c.notes == ["optimizer state of the first file not compared (3 tensors)",
                       "optimizer state of the second file not compared (3 tensors)"]


def test_against_a_rewrite_per_weight_and_totals(keras20, tmp_path):
    src, dst = keras20[0], tmp_path / "int4.h5"
    wqkernels.rewrite(src, dst, Recipe(bits=4, sparsity=0.5))
    c = compare(src, dst)
    a, b = wqkernels.load_weights(src), wqkernels.load_weights(dst)
    signal = noise = 0.0
    for r in c.rows:
        assert r.path == r.path_b and r.shape == a[r.path].shape
        stats = wqkernels.error(a[r.path], b[r.path])
        assert (r.mse, r.max_abs, r.sqnr_db) == tuple(stats)
        assert (r.sparsity_a, r.sparsity_b) == (wqkernels.sparsity(a[r.path]), wqkernels.sparsity(b[r.path]))
        assert r.identical == bool(np.array_equal(a[r.path], b[r.path]))
        assert r.bits_a is None and r.bits_b is None  # float storage: no codes to read bits from
        expected = reference.statistics.compare(a[r.path], b[r.path], 128)
        np.testing.assert_array_equal(r.histogram.before, expected[3][0])
        np.testing.assert_array_equal(r.histogram.after, expected[3][1])
        signal += float(np.sum(a[r.path].astype(np.float64) ** 2))
        noise += float(np.sum((a[r.path].astype(np.float64) - b[r.path]) ** 2))
    kernels = [r for r in c.rows if r.role in ("kernel", "depthwise_kernel")]
    assert kernels and not any(r.identical for r in kernels)
    assert all(r.identical for r in c.rows if r.role == "bias")
    assert c.sqnr_db == pytest.approx(10 * math.log10(signal / noise), rel=1e-9)
    assert c.mse == pytest.approx(noise / sum(math.prod(r.shape) for r in c.rows), rel=1e-12)


def test_packed_weights_compare_as_they_dequantize_with_their_bits(keras20, tmp_path):
    src, packed = keras20[0], tmp_path / "p.h5"
    wqkernels.rewrite(src, packed, Recipe(bits=3, storage="packed", narrow_bits=0))
    c = compare(src, packed)
    rows = {r.path: r for r in c.rows}
    loaded = wqkernels.load_weights(packed)
    for r in c.rows:
        if r.role in ("kernel", "depthwise_kernel"):
            assert r.bits_b == 3 and r.bits_a is None
            assert r.mse == wqkernels.error(wqkernels.load_weights(src)[r.path], loaded[r.path]).mse
        else:
            assert r.bits_b is None and r.identical
    assert len(rows) == 6


def test_across_layouts_by_layer_and_position(keras20, tfkeras):
    """Keras 2.0's full model against tf.keras's weights-only file of the same weights: the
    paths differ, the layers and their order do not."""
    c = compare(keras20[0], tfkeras[0])
    assert len(c.rows) == 6 and not c.only_a and not c.only_b
    assert all(r.identical for r in c.rows)
    assert {(r.path.split("/")[1], r.path_b.split("/")[0]) for r in c.rows} == {
        ("conv2d_1", "conv2d_1"), ("depthwise_conv2d_1", "depthwise_conv2d_1"), ("dense_1", "dense_1")}


def _keras3_copy(src, dst, edit):
    """A copy of a .keras archive whose weights file `edit(h5py.File)` changes."""
    import zipfile
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "model.weights.h5":
                tmp = os.path.join(os.path.dirname(dst), "w.h5")
                with open(tmp, "wb") as f:
                    f.write(data)
                with h5py.File(tmp, "a") as f:
                    edit(f)
                with open(tmp, "rb") as f:
                    data = f.read()
            out.writestr(info, data)
    return dst


def test_weights_in_one_file_only(keras3_zip, tmp_path):
    def add_layer(f):
        g = f.create_group("layers/dense/vars")
        g.create_dataset("0", data=np.ones((8, 3), np.float32))
        g.create_dataset("1", data=np.zeros(3, np.float32))
    other = _keras3_copy(keras3_zip, tmp_path / "more.keras", add_layer)
    c = compare(keras3_zip, other)
    assert c.only_a == [] and c.only_b == ["layers/dense/vars/0", "layers/dense/vars/1"]
    assert len(c.rows) == 7 and all(r.identical for r in c.rows)
    reverse = compare(other, keras3_zip)
    assert reverse.only_a == ["layers/dense/vars/0", "layers/dense/vars/1"] and reverse.only_b == []


def test_not_the_same_model(keras3_zip, keras20, tmp_path):
    def reshape(f):
        del f["layers/conv2d/vars/0"]
        f["layers/conv2d/vars"].create_dataset("0", data=np.ones((3, 3, 2, 9), np.float32))
    other = _keras3_copy(keras3_zip, tmp_path / "wider.keras", reshape)
    with pytest.raises(KerasFileError, match=r"not the same model: weight 'layers/conv2d/vars/0' is 3x3x2x8 "
                                             r"in the first .* is 3x3x2x9 in the second"):
        compare(keras3_zip, other)
    with pytest.raises(KerasFileError, match="not the same model: they have no weight in common"):
        compare(keras3_zip, keras20[0])


def test_one_weight_of_each_file_at_a_time(keras20, tmp_path, monkeypatch):
    dst = tmp_path / "o.h5"
    wqkernels.rewrite(keras20[0], dst, Recipe(bits=8))
    alive, most = [], [0]
    read = Source.read

    def tracked(self, entry, buffers=None):
        value = read(self, entry, buffers)
        most[0] = max(most[0], sum(r() is not None for r in alive))
        alive.append(weakref.ref(value))
        return value
    monkeypatch.setattr(Source, "read", tracked)
    compare(keras20[0], dst)
    assert len(alive) == 12 and most[0] <= 1  # when a weight is read, only its pair may be held


def test_nonfinite_weights_are_compared_but_left_out_of_the_totals(tmp_path, keras3_zip):
    def odd(f):
        f["layers/embedding/vars/0"][0, 0] = np.nan
    other = _keras3_copy(keras3_zip, tmp_path / "nan.keras", odd)
    c = compare(keras3_zip, other)
    row = next(r for r in c.rows if r.path == "layers/embedding/vars/0")
    assert row.mse is None and row.sqnr_db is None and not row.identical and row.histogram is None
    assert row.sparsity_b == wqkernels.sparsity(wqkernels.load_weights(other)[row.path])
    assert row not in c.compared and c.sqnr_db == math.inf  # the other weights are identical


# ---- the command -------------------------------------------------------------------------------

def test_cli_table_json_and_quiet(keras20, tmp_path, capsys):
    dst = tmp_path / "o.h5"
    wqkernels.rewrite(keras20[0], dst, Recipe(bits=4))
    before = sha256_of(keras20[0]), sha256_of(dst)
    code, out, err = run_cli(["compare", keras20[0], dst], capsys)
    assert code == 0 and err == ""
    assert "SQNR dB" in out and "6 weights compared, 3 identical" in out
    code, out, err = run_cli(["compare", keras20[0], dst, "--json"], capsys)
    document = json.loads(out)
    assert code == 0 and {"a", "b", "weights", "only_in_a", "only_in_b", "totals", "notes"} <= set(document)
    assert document["totals"]["identical"] == 3 and document["weights"][0]["histogram"]["before"]
    code, out, err = run_cli(["compare", keras20[0], dst, "--quiet"], capsys)
    assert code == 0 and "SQNR dB" not in out and out.startswith(f"{keras20[0]} (legacy) vs")
    assert (sha256_of(keras20[0]), sha256_of(dst)) == before


@pytest.mark.parametrize("case", ["missing", "other model", "not keras"])
def test_cli_errors_are_one_line(case, keras20, keras3_zip, tmp_path, capsys):
    other = {"missing": tmp_path / "nothing.h5", "other model": keras3_zip, "not keras": tmp_path / "t.txt"}[case]
    (tmp_path / "t.txt").write_text("hello")
    code, out, err = run_cli(["compare", keras20[0], other, "--html", tmp_path / "page.html"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("wqkernels compare: error: ") and "Traceback" not in err
    assert not (tmp_path / "page.html").exists()


@pytest.mark.keras
@pytest.mark.slow
def test_h5_against_keras_archive_of_the_same_keras_model(tmp_path):
    """Keras's own .h5 and .keras of one model (nested Sequential, shared layer, RNNs): every
    weight pairs up, and they are identical."""
    pytest.importorskip("jax", reason="keras tests need jax (the CPU backend)")
    pytest.importorskip("keras", reason="keras tests need keras 3")
    spec = importlib.util.spec_from_file_location("keras_models", os.path.join(os.path.dirname(__file__),
                                                                               "keras_models.py"))
    km = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(km)
    for name, build in km.MODELS.items():
        model = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(tmp_path / f"{name}.h5")
            model.save(tmp_path / f"{name}.keras")
        c = compare(tmp_path / f"{name}.h5", tmp_path / f"{name}.keras")
        assert not c.only_a and not c.only_b, (name, c.only_a, c.only_b)
        assert len(c.rows) == len(model.weights) and all(r.identical for r in c.rows), name


def _keras():
    pytest.importorskip("jax", reason="keras tests need jax (the CPU backend)")
    return pytest.importorskip("keras", reason="keras tests need keras 3")


def _dense_model(keras, seed=0):
    rng = np.random.default_rng(seed)
    inp = keras.Input((64,))
    x = keras.layers.Dense(96, name="d1")(inp)
    x = keras.layers.Dense(40, name="d2", use_bias=False)(x)
    model = keras.Model(inp, x)
    for v in model.weights:
        v.assign(rng.standard_normal(v.shape).astype(np.float32) * 0.1)
    return model


@pytest.mark.keras
@pytest.mark.parametrize("options", [{"bits": 8}, {"bits": 4}, {"bits": 4, "granularity": "block:32"}])
def test_keras_native_kernels_compare_as_their_layers_compute(options, tmp_path):
    """A kernel Keras quantized is its float kernel (its scales and zero points part of it, not
    weights of their own), with its bits, against the float model."""
    keras = _keras()
    src, dst = tmp_path / "m.keras", tmp_path / "q.keras"
    _dense_model(keras).save(src)
    wqkernels.rewrite(src, dst, Recipe(storage="keras", **options))
    c = compare(src, dst)
    assert not c.only_a and not c.only_b and len(c.rows) == 3
    a, b = wqkernels.load_weights(src), wqkernels.load_weights(dst)
    for r in c.rows:
        assert r.shape == a[r.path].shape == b[r.path].shape
        assert r.mse == wqkernels.error(a[r.path], b[r.path]).mse
        if r.role == "kernel":
            assert r.bits_b == options["bits"] and r.dtype_b.startswith("int8 (keras:int")
            assert not r.identical and r.bytes_b < r.bytes_a
        else:
            assert r.identical and r.bits_b is None
    assert "keras:int" in compare(dst, dst).table()


@pytest.mark.keras
def test_sharded_saves_compare_shard_by_shard(tmp_path):
    keras = _keras()
    model = _dense_model(keras)
    index, whole = tmp_path / "x.weights.json", tmp_path / "x.weights.h5"
    model.save_weights(index, max_shard_size=0.00003)  # GB: shards of ~30 kB
    model.save_weights(whole)
    assert len([n for n in os.listdir(tmp_path) if n.startswith("x_")]) >= 2
    packed = tmp_path / "p.weights.json"
    wqkernels.rewrite(index, packed, Recipe(bits=4, storage="packed"))
    c = compare(whole, index)
    assert len(c.rows) == 3 and all(r.identical for r in c.rows) and c.size_b > os.path.getsize(index)
    c = compare(whole, packed)
    assert [r.bits_b for r in c.rows if r.role == "kernel"] == [4, 4]
