"""float16 and bfloat16 weights: pruned and quantized in float32, written back in their own type
for float storage, packed or Keras-native from them; outputs never larger than the source."""
from __future__ import annotations

import os
import zipfile

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference
from wqkernels.keras_schemes import bfloat16_values, round_bfloat16

from .helpers import default_grid

from .keras_env import KERAS_MARKS, keras

pytestmark = KERAS_MARKS

DTYPES = ("bfloat16", "float16")


def _model(dtype, seed=0):
    rng = np.random.default_rng(seed)
    inp = keras.Input((48,))
    x = keras.layers.Dense(64, name="a", dtype=dtype)(inp)
    x = keras.layers.Dense(10, name="b", dtype=dtype)(x)
    model = keras.Model(inp, x)
    for v in model.weights:
        v.assign(rng.standard_normal(v.shape).astype(np.float32) * 0.3)
    return model


def _kernel_dtypes(path) -> dict:
    with h5py.File(zipfile.ZipFile(path).open("model.weights.h5")) as f:
        return {p: (f[p].dtype, dict(f[p].attrs)) for p in ("layers/dense/vars/0", "layers/dense_1/vars/0")}


def test_round_bfloat16_is_nearest_even():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.random.default_rng(1).standard_normal(100_000).astype(np.float32) * 10.0 ** np.arange(-5, 5).repeat(10_000)
    x[:4] = [1.00390625, 1.01171875, -3.0078125, 0.0]  # ties
    np.testing.assert_array_equal(round_bfloat16(x), x.astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inspect_and_load(tmp_path, dtype):
    src = tmp_path / "m.keras"
    model = _model(dtype)
    model.save(src)
    infos = {i.path: i for i in wqkernels.inspect(src)}
    assert infos["layers/dense/vars/0"].dtype == dtype and infos["layers/dense/vars/0"].prunable
    weights = wqkernels.load_weights(src)
    assert weights["layers/dense/vars/0"].dtype == np.float32
    np.testing.assert_array_equal(weights["layers/dense/vars/0"], np.asarray(model.get_layer("a").kernel, np.float32))


@pytest.mark.parametrize("storage", ["float32", "float16", "packed", "keras"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_storage(tmp_path, dtype, storage):
    src, dst = tmp_path / "m.keras", tmp_path / "q.keras"
    model = _model(dtype)
    model.save(src)
    recipe = Recipe(bits=8 if storage == "keras" else 4, sparsity=0.5, storage=storage)
    report = wqkernels.rewrite(src, dst, recipe)
    assert all(r.bytes_after <= r.bytes_before for r in report.rows)  # no weight grows
    assert os.path.getsize(dst) <= os.path.getsize(src) + 1024  # (HDF5's own headers: a few hundred bytes)
    assert report.sparsity >= 0.5
    loaded_path = dst
    if storage == "packed":
        loaded_path = tmp_path / "r.keras"
        wqkernels.restore(dst, loaded_path)
    if storage in ("float32", "float16", "packed"):
        stored = _kernel_dtypes(loaded_path)["layers/dense/vars/0"]
        assert (stored[0].kind, stored[0].itemsize) == (("V", 2) if dtype == "bfloat16" else ("f", 2))
        # computed in float32: the float32 values on the grid, rounded to the weight's own type
        before = wqkernels.load_weights(src)["layers/dense/vars/0"]
        pruned = wqkernels.prune(before, sparsity=report.rows[0].sparsity_after)
        grid = reference.fake_quantize(pruned, 4, axis=1, **default_grid(4))
        own = round_bfloat16(grid) if dtype == "bfloat16" else grid.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(wqkernels.load_weights(loaded_path)["layers/dense/vars/0"], own)
    loaded = keras.saving.load_model(loaded_path)
    x = np.random.default_rng(2).standard_normal((3, 48)).astype(np.float32)
    assert np.all(np.isfinite(np.asarray(loaded(x), np.float32)))
    if storage == "keras" and dtype == "bfloat16":
        assert loaded.get_layer("a").quantization_mode == "int8"
    if storage == "keras" and dtype == "float16":  # Keras does not quantize float16 compute
        assert loaded.get_layer("a").quantization_mode is None


def test_bfloat16_values_reads_opaque_data():
    bits = np.array([0x3F80, 0xC040, 0x0000], np.uint16)
    np.testing.assert_array_equal(bfloat16_values(bits.view("V2")), np.array([1.0, -3.0, 0.0], np.float32))


def test_mixed_precision_keeps_working(tmp_path):
    """float32 variables with float16 compute: rewritten as float32 weights, as before."""
    src, dst = tmp_path / "m.keras", tmp_path / "q.keras"
    _model("mixed_float16").save(src)
    wqkernels.rewrite(src, dst, Recipe(bits=8))
    assert _kernel_dtypes(dst)["layers/dense/vars/0"][0] == np.float32
    native = tmp_path / "n.keras"
    report = wqkernels.rewrite(src, native, Recipe(bits=8, storage="keras"))  # Keras: no int8 with float16 compute
    assert keras.saving.load_model(native).get_layer("a").quantization_mode is None
    assert any(n.startswith("kept float on the 8-bit grid: ") and "float16 compute" in n
               and "a" in n.split(": ")[1].split(" (")[0].split(", ") for n in report.notes)
