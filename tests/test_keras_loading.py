"""Real Keras loads what wqkernels writes, and runs it with the expected predictions."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference

from .helpers import assert_bit_equal, default_grid, run_cli, sha256_of

os.environ.setdefault("KERAS_BACKEND", "jax")

#: keras 3.15 calls np.array(variable) in ways numpy 2 deprecates; nothing of ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _keras():
    pytest.importorskip("jax", reason="keras tests need jax (the CPU backend)")
    return pytest.importorskip("keras", reason="keras tests need keras 3")


@pytest.fixture(scope="module")
def km():
    _keras()
    spec = importlib.util.spec_from_file_location("keras_models", os.path.join(os.path.dirname(__file__),
                                                                               "keras_models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def saved(km, tmp_path_factory):
    """Each model saved as .h5, .keras and .weights.h5 (with an optimizer), with its input."""
    keras = _keras()
    out = {}
    base = tmp_path_factory.mktemp("models")
    for name, build in km.MODELS.items():
        model = build()
        model.compile(optimizer="adam", loss="mse")
        model.optimizer.build(model.trainable_variables)
        paths = {}
        for fmt in ("h5", "keras", "weights.h5"):
            paths[fmt] = base / f"{name}.{fmt}"
            if fmt == "weights.h5":
                model.save_weights(paths[fmt])
            else:
                model.save(paths[fmt])
        out[name] = (model, paths, km.sample_input(model))
    assert keras.backend.backend() == "jax"
    return out


def _load(keras, km, name, fmt, path):
    if fmt == "weights.h5":
        model = km.MODELS[name](seed=99)
        model.load_weights(path)
        return model
    return keras.models.load_model(path, compile=False)


CASES = [("float32", "none"), ("float32", "gzip"), ("float16", "lzf"), ("packed", "none")]


PREDICT = ("gzip", "packed")  # predictions are compared for these cases, weights bit for bit for all


@pytest.mark.keras
def test_stripped_keras_archive_loads_without_warnings(saved, tmp_path, capsys):
    """Keras compiles a model whose archive has a compile config and then warns that the
    optimizer's variables are missing: a stripped archive has neither, and loads uncompiled."""
    keras = _keras()
    model, paths, x = saved["conv"]
    dst = tmp_path / "stripped.keras"
    code, out, err = run_cli(["rewrite", paths["keras"], "-o", dst, "--bits", "8", "--strip-optimizer"], capsys)
    assert code == 0 and "the model loads uncompiled" in out + err, err
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = keras.models.load_model(dst)
    assert not loaded.compiled
    with zipfile.ZipFile(paths["keras"]) as a, zipfile.ZipFile(dst) as b:
        before, after = json.loads(a.read("config.json")), json.loads(b.read("config.json"))
    assert before.pop("compile_config") is not None and after == before


@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.parametrize("name", ["conv", "rnn"])
@pytest.mark.parametrize("fmt", ["h5", "keras", "weights.h5"])
def test_keras_loads_rewrites(name, fmt, km, saved, tmp_path, capsys):
    keras = _keras()
    model, paths, x = saved[name]
    src = paths[fmt]
    before = sha256_of(src)
    expected = km.MODELS[name](seed=7)
    for storage, compress in CASES:
        dst = tmp_path / f"{storage}-{compress}.{fmt}"
        code, out, err = run_cli(["rewrite", src, "-o", dst, "--bits", "4", "--storage", storage,
                                  "--compress", compress, "--strip-optimizer"], capsys)
        assert code == 0, err
        predict = storage in PREDICT or compress in PREDICT
        if storage == "packed":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(Exception):
                    _load(keras, km, name, fmt, dst)
            restored = tmp_path / f"restored.{fmt}"
            assert run_cli(["restore", dst, "-o", restored], capsys)[0] == 0
            dst, storage = restored, "float32"
        default = Recipe(bits=4)
        expected.set_weights(km.expected_weights(model, 4, default.method, storage, symmetric=default.symmetric,
                                                 narrow_bits=default.narrow_bits))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the stripped optimizer state is reported as a warning
            loaded = _load(keras, km, name, fmt, dst)
        for got, want in zip(loaded.weights, expected.weights):
            assert_bit_equal(np.asarray(got.numpy()), np.asarray(want.numpy()), got.path)
        if predict:
            np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(expected(x)))
    assert sha256_of(src) == before


@pytest.mark.keras
def test_keras_zip_members_kept(saved, tmp_path):
    src = saved["conv"][1]["keras"]
    dst = tmp_path / "o.keras"
    wqkernels.rewrite(src, dst, Recipe(bits=8))
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst) as b:
        ia, ib = a.infolist(), b.infolist()
        assert [i.filename for i in ia] == [i.filename for i in ib]
        assert [i.compress_type for i in ia] == [i.compress_type for i in ib]
        for i in ia:
            if i.filename != "model.weights.h5":
                assert a.read(i) == b.read(i.filename)


@pytest.mark.slow
@pytest.mark.keras
def test_keras2_layouts_load_in_keras3(keras20, tfkeras, tmp_path, capsys):
    keras = _keras()
    from keras import layers

    def build():
        return keras.Sequential([keras.Input((6, 6, 3)), layers.Conv2D(4, 3), layers.DepthwiseConv2D(3, padding="same"),
                                 layers.Flatten(), layers.Dense(5)])
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    for src, values in (keras20, tfkeras):
        dst = tmp_path / f"o-{src.name}"
        assert run_cli(["rewrite", src, "-o", dst, "--bits", "4"], capsys)[0] == 0
        model = build()
        model.load_weights(dst)
        expected = build()
        axes = {"conv2d_1": 3, "depthwise_conv2d_1": 2, "dense_1": 1}
        bits = {"conv2d_1": 4, "depthwise_conv2d_1": 6, "dense_1": 4}  # 9 weights per depthwise channel: narrow
        expected.set_weights([w if i else reference.fake_quantize(w, bits[layer], axis=axes[layer],
                                                                  **default_grid(bits[layer]))
                              for layer, ws in values.items() for i, w in enumerate(ws)])
        np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(expected(x)))


@pytest.mark.slow
@pytest.mark.keras
def test_small_cnn_packed_int8_size(tmp_path):
    """~60k parameters in ~150 weight datasets: packed int8, optimizer stripped, < 120 KB."""
    keras = _keras()
    from keras import layers
    inp = keras.Input((28, 28, 1))
    x = layers.BatchNormalization()(layers.Conv2D(60, 3, padding="same")(inp))
    for _ in range(12):
        x = layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same")(x))
        x = layers.BatchNormalization()(layers.Conv2D(60, 1)(x))
    model = keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.standard_normal(v.shape).astype(np.float32) * 0.1)
    src, dst = tmp_path / "cnn.h5", tmp_path / "cnn-int8.h5"
    model.save(src)
    assert 55_000 < model.count_params() < 65_000 and len(model.weights) >= 150
    report = wqkernels.rewrite(src, dst, Recipe(bits=8, storage="packed", strip_optimizer=True))
    print(f"\nsmall CNN: {os.path.getsize(src)} -> {os.path.getsize(dst)} bytes packed int8")
    assert os.path.getsize(dst) < 120_000
    assert report.bits_per_weight == 8


def test_einsum_kernels_quantized_per_output_channel_load_closer(tmp_path):
    """EinsumDense kernels whose output axes are not (only) last: the output first (``dc``),
    attention's heads (``cde``: once one scale per head_dim shared by the heads) and the output
    split around the summed axis (``dce``); each output channel now has its own scale (its
    largest magnitude stays exact) and the model's outputs move less than with the old axes."""
    keras = _keras()
    from keras import layers

    from wqkernels.allocation import default_rounding
    from wqkernels.files import roles
    inp = keras.Input((6, 12))
    x = layers.EinsumDense("abc,dc->abd", (6, 16), name="first")(inp)
    x = layers.EinsumDense("abc,cde->abde", (6, 4, 8), name="heads")(x)
    x = layers.Reshape((6, 32))(x)
    x = layers.EinsumDense("abc,dce->abde", (6, 5, 3), name="split")(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(0)
    summed = {"first": (1,), "heads": (0,), "split": (1,)}
    for name, axes in summed.items():
        kernel = model.get_layer(name).kernel
        w = rng.standard_normal(kernel.shape).astype(np.float32)
        kept = [n if a not in axes else 1 for a, n in enumerate(w.shape)]
        w *= np.float32(4.0) ** rng.integers(-3, 3, size=kept).astype(np.float32)  # channels of many magnitudes
        kernel.assign(w)
    src, dst = tmp_path / "e.keras", tmp_path / "e4.keras"
    model.save(src)
    wqkernels.rewrite(src, dst, Recipe(bits=4, method="minmax", symmetric=True, narrow_bits=0))
    loaded = keras.saving.load_model(dst)
    data = rng.standard_normal((64, 6, 12)).astype(np.float32)
    want = np.asarray(model(data))
    old = keras.models.clone_model(model)
    for name, axes in summed.items():
        w = np.asarray(model.get_layer(name).kernel)
        after = np.asarray(loaded.get_layer(name).kernel)
        np.testing.assert_allclose(np.abs(after).max(axis=axes), np.abs(w).max(axis=axes), rtol=1e-6)  # one scale each
        view, axis, block = roles.channel_view(w.shape, "EinsumDense", "kernel", axes)
        expected = reference.fake_quantize(w.reshape(view), 4, axis=axis, block_size=block, method="minmax",
                                           symmetric=True, rounding=default_rounding("kernel"))
        assert_bit_equal(after, expected.reshape(w.shape))
        old.get_layer(name).kernel.assign(reference.fake_quantize(w, 4, axis=w.ndim - 1, method="minmax",
                                                                  rounding=default_rounding("kernel")))
    error = float(np.square(np.asarray(loaded(data)) - want).mean())
    old_error = float(np.square(np.asarray(old(data)) - want).mean())
    assert error < old_error, (error, old_error)
