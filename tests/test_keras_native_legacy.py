"""storage="keras" on legacy .h5 files: Keras 3's own quantized layers, checked against Keras.

Keras itself is the oracle: each native layer group of a rewritten legacy ``.h5`` must list, in
``weight_names``, the variables ``model.quantize(...)`` then ``model.save("x.h5")`` lists, and
hold them byte for byte (dtype, shape, data, attributes); the root ``model_config`` must carry
Keras's dtype policies and quantization configs, and ``keras.saving.load_model`` must predict
exactly what Keras's own quantized model predicts.  Keras 2 / tf.keras sources keep their naming
style (``kernel:0``) and string types.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe
from wqkernels.cli import main
from wqkernels.files.compare import compare

from .keras_env import KERAS_MARKS, keras, randomize, strip_ids
from keras.quantizers import Int4QuantizationConfig  # noqa: E402

pytestmark = [
    *KERAS_MARKS,
    # keras warns when it skips a layer it cannot quantize: nothing of ours
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
layers = keras.layers

#: (Keras mode, Keras config, our recipe options, the mode our reader reports)
MODES = {
    "int8": ("int8", None, {"bits": 8}, "int8"),
    "int4": ("int4", Int4QuantizationConfig(block_size=-1), {"bits": 4}, "int4/-1"),
    "int4/32": ("int4", Int4QuantizationConfig(block_size=32), {"bits": 4, "granularity": "block:32"}, "int4/32"),
}

def zoo_model(seed=0):
    """Embedding, EinsumDense with two equations (with and without bias), Dense with and without
    bias; 129 rows: blocks of 32 do not divide them."""
    inp = keras.Input((7,), dtype="int32")
    x = layers.Embedding(50, 129, name="emb")(inp)
    x = layers.EinsumDense("abc,cd->abd", output_shape=(7, 40), bias_axes="d", name="plain")(x)
    x = layers.EinsumDense("abc,cde->abde", output_shape=(7, 4, 9), name="heads")(x)
    x = layers.Reshape((7, 36))(x)
    x = layers.Dense(70, name="with_bias")(x)
    x = layers.Dense(33, use_bias=False, name="no_bias")(x)
    return randomize(keras.Model(inp, x), seed)


def _zoo_input(n=4):
    return np.random.default_rng(3).integers(0, 50, size=(n, 7)).astype(np.int32)


def _keras_quantized(src, mode_name, dst):
    """Keras's own route: load the float .h5, quantize, save as .h5."""
    mode, config = MODES[mode_name][:2]
    model = keras.saving.load_model(src, compile=False)
    model.quantize(mode, config=config)
    model.save(dst)
    return model


def _layer_groups(path) -> dict:
    """{layer: [(weight name, dtype, shape, bytes, attributes)]} in weight_names order."""
    out = {}
    with h5py.File(path) as f:
        root = f["model_weights"] if "model_weights" in f else f
        for layer in root.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            group = root[layer]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            out[layer] = [(n, group[n].dtype, group[n].shape, group[n][()].tobytes(), dict(group[n].attrs))
                          for n in names]
    return out


def _config_layers(path) -> dict:
    with h5py.File(path) as f:
        config = json.loads(f.attrs["model_config"])
    return {c["config"]["name"]: c["config"] for c in config["config"]["layers"]}

@pytest.mark.parametrize("mode_name", list(MODES))
def test_variables_are_keras_own(tmp_path, mode_name):
    src, ours, theirs = tmp_path / "float.h5", tmp_path / "ours.h5", tmp_path / "keras.h5"
    zoo_model().save(src)
    expected = _keras_quantized(src, mode_name, theirs)
    report = wqkernels.rewrite(src, ours, Recipe(storage="keras", **MODES[mode_name][2]))
    assert _layer_groups(ours) == _layer_groups(theirs)
    ours_layers, their_layers = _config_layers(ours), _config_layers(theirs)
    assert ours_layers.keys() == their_layers.keys()
    for name, config in their_layers.items():
        assert strip_ids(ours_layers[name].get("dtype")) == strip_ids(config.get("dtype")), name
        assert strip_ids(ours_layers[name].get("quantization_config")) == \
            strip_ids(config.get("quantization_config")), name
    loaded = keras.saving.load_model(ours, compile=False)
    native = [layer.name for layer in loaded.layers if layer.quantization_mode is not None]
    assert sorted(native) == ["emb", "heads", "no_bias", "plain", "with_bias"]
    x = _zoo_input()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(expected(x)))
    assert f"Keras-native {MODES[mode_name][3]}: 5 layers (emb, heads, no_bias, plain, with_bias)" in report.notes
    assert not any("load_weights" in n for n in report.notes)  # load_model reads the config


# ---- Keras 2 / tf.keras sources ------------------------------------------------------------

def _dense_config(name: str, units: int, use_bias: bool) -> dict:
    return {"class_name": "Dense", "config": {
        "name": name, "trainable": True, "dtype": "float32", "units": units, "activation": "linear",
        "use_bias": use_bias, "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}}


def _names(values) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype="S")


def write_tf_keras_h5(path, seed=0) -> dict:
    """A tf.keras 2.x full-model .h5 of Sequential([Dense(20), Dense(7, use_bias=False)]) on 30
    inputs: its config style, fixed-length byte attributes and ``kernel:0`` names."""
    rng = np.random.default_rng(seed)
    values = {"dense": [rng.standard_normal((30, 20)).astype(np.float32), rng.standard_normal(20).astype(np.float32)],
              "dense_1": [rng.standard_normal((20, 7)).astype(np.float32)]}
    values["dense"][0][:, 0] = 0
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 30], "dtype": "float32", "sparse": False,
                                                "ragged": False, "name": "dense_input"}},
        _dense_config("dense", 20, True), _dense_config("dense_1", 7, False)]}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(b"2.12.0")
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        f.attrs["model_config"] = np.bytes_(json.dumps(config).encode())
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = _names(["dense_input", "dense", "dense_1"])
        weights.create_group("dense_input").attrs["weight_names"] = np.array([], dtype=np.float64)
        for layer, arrays in values.items():
            group = weights.create_group(layer)
            names = [f"{layer}/{w}:0" for w in ("kernel", "bias")[:len(arrays)]]
            group.attrs["weight_names"] = _names(names)
            for name, array in zip(names, arrays):
                group.create_dataset(name, data=array)
    return values


@pytest.mark.parametrize("mode_name", ["int8", "int4/32"])
def test_tf_keras_source(tmp_path, mode_name):
    """A Keras 2 .h5: Keras 3 loads our rewrite with load_model(compile=False), as its own
    quantized model; the variables keep the source's naming style and byte-string types."""
    src, ours, theirs = tmp_path / "tf.h5", tmp_path / "ours.h5", tmp_path / "keras.h5"
    write_tf_keras_h5(src)
    expected = _keras_quantized(src, mode_name, theirs)
    wqkernels.rewrite(src, ours, Recipe(storage="keras", **MODES[mode_name][2]))
    x = np.random.default_rng(4).standard_normal((3, 30)).astype(np.float32)
    loaded = keras.saving.load_model(ours, compile=False)
    assert [layer.quantization_mode for layer in loaded.layers] == [MODES[mode_name][0]] * 2
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(expected(x)))
    mine, keras_own = _layer_groups(ours), _layer_groups(theirs)
    suffix = ["kernel", "kernel_scale"] + (["kernel_zero", "g_idx"] if mode_name == "int4/32" else [])
    assert [n for n, *_ in mine["dense"]] == ["dense/bias:0"] + [f"dense/{s}:0" for s in suffix]
    assert [n for n, *_ in mine["dense_1"]] == [f"dense_1/{s}:0" for s in suffix]
    for layer in ("dense", "dense_1"):  # Keras's own save names them its way: the same variables
        assert [v[1:] for v in mine[layer]] == [v[1:] for v in keras_own[layer]], layer
    with h5py.File(ours) as f:
        assert f["model_weights/dense"].attrs["weight_names"].dtype.kind == "S"
        assert isinstance(f.attrs["model_config"], bytes)


def _cnn():
    """The model of the Keras 2 fixtures (tests/data/make_keras2_files.py)."""
    return keras.Sequential([keras.Input((6, 6, 3)), layers.Conv2D(4, 3), layers.DepthwiseConv2D(3, padding="same"),
                             layers.Flatten(), layers.Dense(5)])


@pytest.mark.parametrize("fixture,mode_name", [("keras20", "int8"), ("tfkeras", "int4/32"), ("tfkeras", "int8")])
def test_keras2_fixtures_load_after_quantize(request, tmp_path, fixture, mode_name):
    """The Keras 2.0 full file (its config is too sparse for load_model) and the tf.keras
    weights-only file load into a model quantized by Keras; the convolutions stay float."""
    src, values = request.getfixturevalue(fixture)
    dst = tmp_path / f"q-{src.name}"
    report = wqkernels.rewrite(src, dst, Recipe(storage="keras", **MODES[mode_name][2]))
    assert any(n.startswith(f"Keras-native {MODES[mode_name][3]}: 1 layer (dense_1)") for n in report.notes)
    weights_only = fixture == "tfkeras"
    assert any("model.quantize" in n and "load_weights" in n for n in report.notes) == weights_only
    mode, config = MODES[mode_name][:2]
    model = _cnn()
    model.quantize(mode, config=config)
    model.load_weights(dst)
    stored = wqkernels.load_weights(dst)
    expected = _cnn()  # the float values we stored for the convolutions, Keras's quantization of the Dense
    prefix = "" if weights_only else "model_weights/"
    inner = "conv2d_1" if weights_only else "conv2d_1_1"
    conv = stored[f"{prefix}conv2d_1/{inner}/kernel:0"]
    depthwise = stored[next(p for p in stored if "depthwise_kernel" in p)]
    expected.set_weights([conv, values["conv2d_1"][1], depthwise, values["depthwise_conv2d_1"][1],
                          *values["dense_1"]])
    expected.quantize(mode, config=config)
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(expected(x)))
    with h5py.File(dst) as f:
        group = f[f"{prefix}dense_1"]
        listed = [n.decode() for n in group.attrs["weight_names"]]
        suffix = ["kernel_scale"] + (["kernel_zero", "g_idx"] if mode_name == "int4/32" else [])
        name = "dense_1_1" if not weights_only else "dense_1"
        assert listed == [f"{name}/bias:0", f"{name}/kernel:0"] + [f"{name}/{s}:0" for s in suffix]


def test_nested_model_weights_listed_under_their_own_layer(tmp_path):
    """In a legacy .h5 a nested model's weights sit in its group: inspect, the report and compare
    name the layer each belongs to (as for a .keras), while the file keeps Keras's grouping."""
    inner = keras.Sequential([keras.Input((12,)), layers.Dense(8, name="inner_dense")], name="inner")
    inp = keras.Input((12,))
    model = randomize(keras.Model(inp, layers.Dense(3, name="top")(inner(inp))), 3)
    model.save(tmp_path / "nested.h5")
    model.save(tmp_path / "nested.keras")
    names = {}
    for kind in ("h5", "keras"):
        src = tmp_path / f"nested.{kind}"
        listed = {w.path: w.layer for w in wqkernels.inspect(src)}
        report = wqkernels.rewrite(src, tmp_path / f"o.{kind}", Recipe(bits=8))
        assert report.rows and all(r.layer == listed[r.path] for r in report.rows)
        names[kind] = sorted(listed.values())
    assert names["h5"] == names["keras"] == ["inner_dense", "inner_dense", "top", "top"]
    compared = compare(tmp_path / "nested.h5", tmp_path / "o.h5")
    assert sorted(r.layer for r in compared.rows) == names["h5"]
    with h5py.File(tmp_path / "o.h5") as f, h5py.File(tmp_path / "nested.h5") as g:  # (Keras's groups kept)
        assert list(f["model_weights"].attrs["layer_names"]) == list(g["model_weights"].attrs["layer_names"])
        assert "inner" in f["model_weights"] and "inner_dense" not in f["model_weights"]


def test_nested_model_layers_stay_float(tmp_path):
    """A model nested in a legacy .h5 lists all its layers' variables in one group: its Dense
    stays float on the grid, the top-level one is native, and the file loads."""
    inner = keras.Sequential([keras.Input((12,)), layers.Dense(8, name="inner_dense")], name="inner")
    inp = keras.Input((12,))
    out = layers.Dense(3, name="top")(inner(inp))
    src, dst = tmp_path / "nested.h5", tmp_path / "q.h5"
    randomize(keras.Model(inp, out), 2).save(src)
    report = wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    assert "Keras-native int8: 1 layer (top)" in report.notes
    assert any(n.startswith("kept float on the 8-bit grid: inner_dense (a layer of a nested model")  # (its own name)
               for n in report.notes), report.notes
    loaded = keras.saving.load_model(dst, compile=False)
    assert loaded.get_layer("top").quantization_mode == "int8"
    assert loaded.get_layer("inner").get_layer("inner_dense").quantization_mode is None
    kernel = next(p for p in wqkernels.load_weights(src) if "inner_dense" in p and p.endswith("kernel"))
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("inner").get_layer("inner_dense").kernel),
                                  wqkernels.load_weights(dst)[kernel])
    loaded(np.zeros((1, 12), np.float32))


def test_attention_stays_float_and_loads(tmp_path):
    """Keras 3.15 cannot reload a quantized MultiHeadAttention from a legacy .h5, even its own
    ("Weight count mismatch"): its sublayers keep their float dtype on the grid."""
    inp = keras.Input((6, 16))
    x = layers.MultiHeadAttention(2, 8, name="mha")(inp, inp)
    x = layers.Dense(5, name="head")(x)
    src, dst = tmp_path / "att.h5", tmp_path / "att8.h5"
    randomize(keras.Model(inp, x), 6).save(src)
    report = wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    assert "Keras-native int8: 1 layer (head)" in report.notes
    assert any(n.startswith("kept float on the 8-bit grid: mha (sublayers") and "reload" in n for n in report.notes)
    loaded = keras.saving.load_model(dst, compile=False)
    assert loaded.get_layer("head").quantization_mode == "int8" and loaded.get_layer("mha").quantization_mode is None
    kernel = "model_weights/mha/mha/query/kernel"
    np.testing.assert_array_equal(wqkernels.load_weights(dst)[kernel],
                                  wqkernels.fake_quantize(wqkernels.load_weights(src)[kernel], 8, axis=2,
                                                          rounding="sum"))
    loaded(np.zeros((2, 6, 16), np.float32))


def test_float16_layers_stay_float(tmp_path):
    """Keras refuses to quantize float16 compute; such layers keep float16 on the grid."""
    inp = keras.Input((20,))
    y = layers.Dense(8, name="half", dtype="float16")(inp)
    y = layers.Dense(4, name="full")(y)
    src, dst = tmp_path / "h.h5", tmp_path / "q.h5"
    randomize(keras.Model(inp, y), 8).save(src)
    report = wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    loaded = keras.saving.load_model(dst, compile=False)
    assert loaded.get_layer("half").quantization_mode is None and loaded.get_layer("full").quantization_mode == "int8"
    assert any("half (float16 compute" in n for n in report.notes)
    assert _layer_groups(dst)["half"][0][1] == np.float16


# ---- sparsity, reading back, the CLI ---------------------------------------------------------

def dense_model(seed=0):
    inp = keras.Input((300,))
    x = layers.Dense(70, name="with_bias")(inp)
    x = layers.Dense(33, use_bias=False, name="no_bias")(x)
    return randomize(keras.Model(inp, x), seed)


@pytest.mark.parametrize("granularity", ["channel", "block:32"])
def test_sparsity_keeps_zero_codes(tmp_path, granularity):
    src, pruned, dst = tmp_path / "f.h5", tmp_path / "p.h5", tmp_path / "s.h5"
    dense_model().save(src)
    wqkernels.rewrite(src, pruned, Recipe(sparsity=0.5))
    report = wqkernels.rewrite(src, dst, Recipe(bits=4, storage="keras", sparsity=0.5, granularity=granularity))
    assert report.sparsity >= 0.5
    before, after = wqkernels.load_weights(pruned), wqkernels.load_weights(dst)
    for path in ("model_weights/with_bias/with_bias/kernel", "model_weights/no_bias/no_bias/kernel"):
        assert after[path].shape == before[path].shape
        assert np.all(after[path][before[path] == 0] == 0), path
    if granularity == "channel":  # symmetric codes: a zero is the code 0 (two nibbles per byte)
        with h5py.File(dst) as f:
            codes = f["model_weights/no_bias/no_bias/kernel"][()]
        low = codes.astype(np.int16) << 12 >> 12
        zero = before["model_weights/no_bias/no_bias/kernel"][:, 0::2] == 0
        assert np.all(low[zero] == 0)
    loaded = keras.saving.load_model(dst, compile=False)
    assert loaded.get_layer("with_bias").quantization_mode == "int4"


@pytest.mark.parametrize("mode_name", list(MODES))
def test_our_outputs_read_back(tmp_path, mode_name, capsys):
    """Our legacy native files, like Keras's: inspect shows mode and bits, load_weights the float
    kernels the layers compute with, a second quantizing rewrite refuses them in one line."""
    src, ours = tmp_path / "f.h5", tmp_path / "ours.h5"
    dense_model().save(src)
    wqkernels.rewrite(src, ours, Recipe(storage="keras", **MODES[mode_name][2]))
    storage = f"keras:{MODES[mode_name][3]}"
    infos = {i.path: i for i in wqkernels.inspect(ours)}
    kernels = {"with_bias": "model_weights/with_bias/with_bias/kernel",
               "no_bias": "model_weights/no_bias/no_bias/kernel"}
    for path in kernels.values():
        assert infos[path].storage == storage and not infos[path].prunable
    assert infos["model_weights/with_bias/with_bias/kernel_scale"].role == "kernel_scale"
    weights = wqkernels.load_weights(ours)
    model = keras.saving.load_model(ours, compile=False)
    for name, path in kernels.items():
        layer = model.get_layer(name)
        assert weights[path].shape == ((300, 70) if name == "with_bias" else (70, 33))
        x = np.eye(weights[path].shape[0], dtype=np.float32)
        bias = np.asarray(layer.bias) if layer.bias is not None else 0
        computed = np.asarray(layer(x)) - bias  # the kernel the quantized layer computes with
        np.testing.assert_allclose(weights[path], computed, rtol=1e-2, atol=1e-2 * np.abs(weights[path]).max())
    with pytest.raises(wqkernels.KerasFileError, match="already quantized by Keras"):
        wqkernels.rewrite(ours, tmp_path / "again.h5", Recipe(bits=8))
    assert main(["rewrite", str(ours), "-o", str(tmp_path / "again.h5"), "--bits", "4"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already quantized by Keras" in err
    assert not os.path.exists(tmp_path / "again.h5")
    assert main(["inspect", str(ours)]) == 0
    assert storage in capsys.readouterr().out


def test_keras_own_legacy_files_read_back(tmp_path):
    """A legacy .h5 Keras quantized reads as our own do: the same dequantized kernels."""
    src, ours, theirs = tmp_path / "f.h5", tmp_path / "ours.h5", tmp_path / "keras.h5"
    zoo_model().save(src)
    _keras_quantized(src, "int4/32", theirs)
    wqkernels.rewrite(src, ours, Recipe(bits=4, storage="keras", granularity="block:32"))
    mine, keras_own = wqkernels.load_weights(ours), wqkernels.load_weights(theirs)
    assert mine.keys() == keras_own.keys()
    for path, values in keras_own.items():
        np.testing.assert_array_equal(mine[path], values)
    floats = wqkernels.load_weights(src)
    assert mine["model_weights/heads/heads/kernel"].shape == floats["model_weights/heads/heads/kernel"].shape
    assert {i.storage for i in wqkernels.inspect(theirs) if i.role in ("kernel", "embeddings")} == {"keras:int4/32"}


def test_compiled_model_with_optimizer_loads(tmp_path):
    """A .h5 saved with its optimizer state loads compiled (keras.saving.load_model's default)."""
    model = dense_model()
    model.compile(keras.optimizers.Adam(), keras.losses.MeanSquaredError())
    model.fit(np.ones((8, 300), np.float32), np.ones((8, 33), np.float32), verbose=0)
    src, dst = tmp_path / "trained.h5", tmp_path / "q.h5"
    model.save(src)
    with h5py.File(src) as f:
        assert "optimizer_weights" in f
    wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    loaded = keras.saving.load_model(dst)
    model.quantize("int8")
    x = np.random.default_rng(5).standard_normal((2, 300)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_cli_storage_keras_on_legacy_h5(tmp_path, capsys):
    src, dst = tmp_path / "m.h5", tmp_path / "q.h5"
    dense_model().save(src)
    assert main(["rewrite", str(src), "-o", str(dst), "--bits", "8", "--storage", "keras"]) == 0
    assert "Keras-native int8: 2 layers (no_bias, with_bias)" in capsys.readouterr().out
    assert keras.saving.load_model(dst, compile=False).get_layer("with_bias").quantization_mode == "int8"
