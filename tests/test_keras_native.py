"""storage="keras": Keras 3's own quantized layers, written without Keras, checked against Keras.

Keras itself is the oracle: every variable of a rewritten file must equal, byte for byte (same
names, order, dtypes, shapes and values), what ``model.quantize(...)`` then ``save`` writes for
the same float weights, and the loaded model must predict exactly what Keras's own quantized
model predicts.
"""
from __future__ import annotations

import json
import re
import shutil
import warnings
import zipfile

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, keras_schemes
from wqkernels.cli import main
from wqkernels.files.keras_native import einsum_layout

from .keras_env import KERAS_MARKS, keras, randomize, strip_ids
from keras.quantizers import Int4QuantizationConfig, Int8QuantizationConfig  # noqa: E402

pytestmark = [
    *KERAS_MARKS,
    # keras warns when it skips a layer it cannot quantize: nothing of ours
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
layers = keras.layers

#: (Keras mode, Keras config, our recipe options) for each quantized layout
MODES = {
    "int8": ("int8", None, {"bits": 8}),
    "int4": ("int4", Int4QuantizationConfig(block_size=-1), {"bits": 4}),
    "int4/32": ("int4", Int4QuantizationConfig(block_size=32), {"bits": 4, "granularity": "block:32"}),
    "int4/128": ("int4", None, {"bits": 4, "granularity": "block:128"}),
    "int4/48": ("int4", Int4QuantizationConfig(block_size=48), {"bits": 4, "granularity": "block:48"}),
}

def zoo_model(seed=0):
    """Embedding, EinsumDense with four equations (one contracting an axis that is not the
    first), Dense with and without bias; 129 and 300 rows: blocks of 32, 48 and 128 do not divide."""
    inp = keras.Input((7,), dtype="int32")
    x = layers.Embedding(50, 129, name="emb")(inp)
    x = layers.EinsumDense("abc,cd->abd", output_shape=(7, 40), bias_axes="d", name="plain")(x)
    x = layers.EinsumDense("abc,cde->abde", output_shape=(7, 4, 9), name="heads")(x)
    x = layers.EinsumDense("abcd,cde->abe", output_shape=(7, 300), bias_axes="e", name="merge")(x)
    x = layers.EinsumDense("abc,dce->abde", output_shape=(7, 5, 3), name="middle")(x)
    x = layers.Reshape((7, 15))(x)
    x = layers.Dense(70, name="with_bias")(x)
    x = layers.Dense(33, use_bias=False, name="no_bias")(x)
    return randomize(keras.Model(inp, x), seed)


def dense_model(seed=0):
    inp = keras.Input((300,))
    x = layers.Dense(70, name="with_bias")(inp)
    x = layers.Dense(33, use_bias=False, name="no_bias")(x)
    return randomize(keras.Model(inp, x), seed)


def _input(shape, seed=3):
    rng = np.random.default_rng(seed)
    if len(shape) == 2 and shape[1] == 7:
        return rng.integers(0, 50, size=shape).astype(np.int32)
    return rng.standard_normal(shape).astype(np.float32)


def _datasets(path: str, member="model.weights.h5") -> dict:
    """{path: (dtype, shape, bytes, attributes)} of the weights file of a .keras archive or file."""
    out = {}
    f = h5py.File(zipfile.ZipFile(path).open(member)) if zipfile.is_zipfile(path) else h5py.File(path)
    with f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype, obj.shape, obj[()].tobytes(), dict(obj.attrs))
        f.visititems(visit)
    return out


def _keras_quantized(src, mode_name, dst):
    mode, config, _ = MODES[mode_name]
    model = keras.saving.load_model(src)
    model.quantize(mode, config=config)
    model.save(dst)
    return model


def _config_layers(path) -> dict:
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    return {c["config"]["name"]: c["config"] for c in config["config"]["layers"]}


@pytest.mark.parametrize("mode_name", list(MODES))
def test_variables_are_keras_own(tmp_path, mode_name):
    src, ours, theirs = tmp_path / "float.keras", tmp_path / "ours.keras", tmp_path / "keras.keras"
    zoo_model().save(src)
    expected = _keras_quantized(src, mode_name, theirs)
    report = wqkernels.rewrite(src, ours, Recipe(storage="keras", **MODES[mode_name][2]))
    assert list(_datasets(ours)) == list(_datasets(theirs))
    for path, (dtype, dshape, data, attrs) in _datasets(theirs).items():
        assert _datasets(ours)[path] == (dtype, dshape, data, attrs), path
    ours_layers, their_layers = _config_layers(ours), _config_layers(theirs)
    for name, config in their_layers.items():
        assert strip_ids(ours_layers[name]["dtype"]) == strip_ids(config["dtype"]), name
        if config.get("quantization_config") is not None:
            assert strip_ids(ours_layers[name]["quantization_config"]) == strip_ids(config["quantization_config"])
    loaded = keras.saving.load_model(ours)
    native = [layer for layer in loaded.layers if layer.quantization_mode is not None]
    assert {layer.quantization_mode for layer in native} == {MODES[mode_name][0]}
    assert all(v.dtype == "int8" for layer in native for v in layer.weights if v.path.endswith(("kernel", "embeddings")))
    x = _input((4, 7))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(expected(x)))
    assert any(n.startswith("Keras-native") for n in report.notes)

EQUATIONS = ["ab,bc->ac", "abc,cd->abd", "abc,cde->abde", "abcd,cde->abe", "abc,dce->abde", "ab,cbd->acd",
             "abc,bcd->ad", "abcd,dce->abce", "abc,cd->adb", "ab,bcd->acd", "abc,acd->abd", "abcd,bd->abc"]


@pytest.mark.parametrize("equation", EQUATIONS)
def test_einsum_layout_is_keras_own(equation):
    from keras.src.layers.core.einsum_dense import _analyze_quantization_info
    inputs = re.match(r"([a-z]+),", equation).group(1)
    info = _analyze_quantization_info(equation, len(inputs))
    ours = einsum_layout(equation)
    assert [list(ours.reduced), list(ours.transpose), list(ours.expand), list(ours.squeeze)] == \
        [info[1], info[3], info[5], info[7]]


@pytest.mark.parametrize("equation", [e for e in EQUATIONS + ["btf,tfd->btd"]
                                      if e[0] not in e.split(",")[1].split("->")[0]])
def test_keras_own_int8_einsum_reads_back(tmp_path, equation):
    """load_weights of a file Keras quantized: the kernel it computes with, its scale laid out
    as the equation says (stored transposed for "btf,tfd->btd", of the kernel's rank)."""
    inputs, rest = equation.split(",")
    outputs = rest.split("->")[1]
    size = {c: 3 + i for i, c in enumerate(sorted(set(equation) - set(",->")))}
    inp = keras.Input(tuple(size[c] for c in inputs[1:]))
    layer = layers.EinsumDense(equation, output_shape=tuple(size[c] for c in outputs[1:]), name="e")
    src, theirs = tmp_path / "f.keras", tmp_path / "k.keras"
    model = randomize(keras.Model(inp, layer(inp)), 5)
    kernel = np.asarray(model.get_layer("e").kernel)
    model.save(src)
    _keras_quantized(src, "int8", theirs)
    layout = einsum_layout(equation)
    values = np.empty_like(kernel)
    keras_schemes.absmax_quantize(kernel, layout.reduced, values=values)
    np.testing.assert_array_equal(wqkernels.load_weights(theirs)["layers/einsum_dense/vars/0"], values)


def test_ellipsis_equations_stay_float(tmp_path):
    """Keras 3.15 cannot quantize an EinsumDense with '...': it keeps its float dtype, on the grid."""
    assert einsum_layout("...b,bc->...c") is None
    inp = keras.Input((5, 8))
    y = layers.EinsumDense("...b,bc->...c", output_shape=6, name="ell")(inp)
    y = layers.Dense(4, name="head")(y)
    src, dst = tmp_path / "e.keras", tmp_path / "q.keras"
    randomize(keras.Model(inp, y), 4).save(src)
    report = wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    loaded = keras.saving.load_model(dst)
    assert loaded.get_layer("ell").quantization_mode is None and loaded.get_layer("head").quantization_mode == "int8"
    assert any("ell" in n and "'...'" in n for n in report.notes)
    kernel = wqkernels.load_weights(src)["layers/einsum_dense/vars/0"]
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("ell").kernel),
                                  wqkernels.fake_quantize(kernel, 8, axis=1, rounding="sum"))


@pytest.mark.parametrize("seed", range(6))
def test_absmax_and_grouped_arithmetic_are_keras_own(seed):
    from keras.src import quantizers
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 40, size=rng.integers(2, 4)))
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-9, 3)).astype(np.float32)
    x[..., 0] = 0
    axes = tuple(sorted(int(a) for a in rng.choice(len(shape), size=rng.integers(1, len(shape)), replace=False)))
    for code_range in (keras_schemes.INT8, keras_schemes.INT4):
        codes, scale = quantizers.abs_max_quantize(x, axis=axes, value_range=code_range, to_numpy=True)
        ours = keras_schemes.absmax_quantize(x, axes, code_range)
        np.testing.assert_array_equal(ours[0], np.asarray(codes))
        np.testing.assert_array_equal(ours[1], np.asarray(scale))
    matrix = x.reshape(shape[0], -1)
    for block in (1, 3, 32):
        for axis in (0, 1):
            data = matrix if axis == 0 else np.ascontiguousarray(matrix.T)
            codes, scale, zero = quantizers.abs_max_quantize_grouped_with_zero_point(data, block, to_numpy=True)
            ours = keras_schemes.grouped_quantize(matrix, block, axis)
            flip = (lambda a: a) if axis == 0 else np.transpose
            for mine, theirs in zip(ours, (codes, scale, zero)):
                np.testing.assert_array_equal(mine, flip(np.asarray(theirs)))
    small = rng.integers(-8, 8, size=shape, dtype=np.int8)
    for axis in range(len(shape)):
        np.testing.assert_array_equal(keras_schemes.pack_int4(small, axis), np.asarray(quantizers.pack_int4(small, axis)[0]))
        np.testing.assert_array_equal(keras_schemes.unpack_int4(keras_schemes.pack_int4(small, axis), shape[axis], axis),
                                      small)


def test_bfloat16_arithmetic_is_keras_own():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from keras.src import quantizers
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((37, 21)) * 3).astype(ml_dtypes.bfloat16)
    as32 = x.astype(np.float32)
    np.testing.assert_array_equal(keras_schemes.bfloat16_values(keras_schemes.bfloat16_bits(as32)), as32)
    wide = rng.standard_normal(10_000).astype(np.float32) * 1e3
    np.testing.assert_array_equal(keras_schemes.bfloat16_bits(wide), wide.astype(ml_dtypes.bfloat16).view(np.uint16))
    codes, scale = quantizers.abs_max_quantize(x, axis=0, to_numpy=True)
    ours, our_scale = keras_schemes.absmax_quantize(as32, (0,))
    np.testing.assert_array_equal(ours, np.asarray(codes))
    np.testing.assert_array_equal(keras_schemes.bfloat16_bits(our_scale), np.asarray(scale).view(np.uint16))
    codes, scale, zero = quantizers.abs_max_quantize_grouped_with_zero_point(x, 8, to_numpy=True)
    ours = keras_schemes.grouped_quantize(as32, 8, 0, bfloat16=True)
    np.testing.assert_array_equal(ours[0], np.asarray(codes))
    np.testing.assert_array_equal(keras_schemes.bfloat16_bits(ours[1]), np.asarray(scale).view(np.uint16))
    np.testing.assert_array_equal(ours[2], np.asarray(zero))


def test_bfloat16_model_is_keras_own(tmp_path):
    inp = keras.Input((40,))
    x = layers.Dense(24, name="a", dtype="bfloat16")(inp)
    x = layers.Dense(9, name="b", dtype="bfloat16")(x)
    src = tmp_path / "bf16.keras"
    randomize(keras.Model(inp, x), 5).save(src)
    for mode_name in ("int8", "int4", "int4/32"):
        theirs, ours = tmp_path / f"k{mode_name[-2:]}.keras", tmp_path / f"o{mode_name[-2:]}.keras"
        expected = _keras_quantized(src, mode_name, theirs)
        wqkernels.rewrite(src, ours, Recipe(storage="keras", **MODES[mode_name][2]))
        assert _datasets(ours) == _datasets(theirs)
        x = _input((3, 40))
        np.testing.assert_array_equal(np.asarray(keras.saving.load_model(ours)(x)), np.asarray(expected(x)))


def test_weights_file_loads_after_model_quantize(tmp_path):
    """A .weights.h5 has no config: it loads into the user's model after model.quantize(mode)."""
    model = dense_model()
    src, dst = tmp_path / "m.weights.h5", tmp_path / "m-int4.weights.h5"
    model.save_weights(src)
    report = wqkernels.rewrite(src, dst, Recipe(bits=4, storage="keras", granularity="block:32"))
    assert any("model.quantize" in n for n in report.notes)
    target = dense_model(seed=9)
    target.quantize("int4", config=Int4QuantizationConfig(block_size=32))
    target.load_weights(dst)
    reference = dense_model()
    reference.quantize("int4", config=Int4QuantizationConfig(block_size=32))
    x = _input((2, 300))
    np.testing.assert_array_equal(np.asarray(target(x)), np.asarray(reference(x)))
    assert all(i.storage == "keras:int4/32" for i in wqkernels.inspect(dst) if i.role == "kernel")


def test_weight_only_int8(tmp_path):
    src, dst = tmp_path / "f.keras", tmp_path / "w8.keras"
    dense_model().save(src)
    wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras", activations="float"))
    assert _config_layers(dst)["with_bias"]["quantization_config"]["config"]["activation_quantizer"] is None
    expected = keras.saving.load_model(src)
    expected.quantize("int8", config=Int8QuantizationConfig(activation_quantizer=None))
    x = _input((2, 300))
    np.testing.assert_array_equal(np.asarray(keras.saving.load_model(dst)(x)), np.asarray(expected(x)))


def test_attention_and_convolutions_stay_float_and_load(tmp_path):
    """MultiHeadAttention sublayers (Keras 3.15 cannot reload them quantized) and convolutions
    (Keras does not quantize them) keep their float dtype on the grid; the model loads."""
    inp = keras.Input((6, 16))
    x = layers.Conv1D(16, 3, padding="same", name="conv")(inp)
    x = layers.MultiHeadAttention(2, 8, name="mha")(x, x)
    x = layers.Dense(5, name="head")(x)
    src, dst = tmp_path / "att.keras", tmp_path / "att8.keras"
    randomize(keras.Model(inp, x), 6).save(src)
    report = wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    loaded = keras.saving.load_model(dst)
    assert loaded.get_layer("head").quantization_mode == "int8"
    assert loaded.get_layer("mha").quantization_mode is None and loaded.get_layer("conv").quantization_mode is None
    notes = "\n".join(report.notes)
    assert "conv (Conv1D: Keras does not quantize it)" in notes and "query" in notes and "reload" in notes
    before, after = wqkernels.load_weights(src), wqkernels.load_weights(dst)
    kernel = "layers/multi_head_attention/query/vars/0"
    kernel = kernel if kernel in before else next(p for p in before if "query" in p and p.endswith("vars/0"))
    # (dim, heads, head_dim): one scale per (head, head_dim), the axes the query does not sum
    per_output = wqkernels.fake_quantize(before[kernel].reshape(16, 16), 8, axis=1, rounding="sum")
    np.testing.assert_array_equal(after[kernel], per_output.reshape(before[kernel].shape))
    loaded(_input((2, 6, 16)))


def test_sparsity_keeps_zero_codes(tmp_path):
    src, dst = tmp_path / "f.keras", tmp_path / "s.keras"
    dense_model().save(src)
    pruned = tmp_path / "p.keras"
    wqkernels.rewrite(src, pruned, Recipe(sparsity=0.5))
    for granularity in ("channel", "block:32"):
        report = wqkernels.rewrite(src, dst, Recipe(bits=4, storage="keras", sparsity=0.5, granularity=granularity))
        assert report.sparsity >= 0.5
        for path, before in wqkernels.load_weights(pruned).items():
            if path.endswith("vars/0"):
                assert np.all(wqkernels.load_weights(dst)[path][before == 0] == 0), path


def test_other_methods_use_the_same_layout(tmp_path):
    src, dst = tmp_path / "f.keras", tmp_path / "mse.keras"
    zoo_model().save(src)
    wqkernels.rewrite(src, dst, Recipe(bits=4, storage="keras", method="mse"))
    theirs = tmp_path / "k.keras"
    expected = _keras_quantized(src, "int4", theirs)
    assert {p: v[:2] for p, v in _datasets(dst).items()} == {p: v[:2] for p, v in _datasets(theirs).items()}
    x = _input((2, 7))
    reference = np.asarray(keras.saving.load_model(src)(x))
    ours, keras_own = np.asarray(keras.saving.load_model(dst)(x)), np.asarray(expected(x))
    assert np.linalg.norm(ours - reference) <= 1.05 * np.linalg.norm(keras_own - reference)


@pytest.mark.parametrize("options,message", [
    ({"bits": 6}, "bits must be 8 or 4, got bits=6"),
    ({"target_sqnr": 30.0}, "bits must be 8 or 4, got target_sqnr=30.0"),
    ({"bits": 8, "granularity": "block:32"}, "Keras 3's int8 is per channel"),
    ({"bits": 8, "granularity": "tensor"}, "not per tensor"),
    ({"bits": 4, "granularity": "block:32", "activations": "int8"}, "takes no activation quantizer"),
    ({"bits": 8, "activations": "dynamic"}, "activations must be one of int8, float"),
])
def test_what_keras_cannot_hold_is_one_line(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Recipe(storage="keras", **options)
    with pytest.raises(ValueError, match="activations applies to storage='keras' only"):
        Recipe(bits=8, activations="int8")


def test_einsum_without_config_is_refused(tmp_path):
    src = tmp_path / "e.weights.h5"
    zoo_model().save_weights(src)
    with pytest.raises(wqkernels.KerasFileError, match="EinsumDense"):
        wqkernels.rewrite(src, tmp_path / "q.weights.h5", Recipe(bits=8, storage="keras"))


@pytest.mark.parametrize("mode_name", ["int8", "int4", "int4/32"])
def test_quantized_inputs(tmp_path, mode_name, capsys):
    """Files Keras quantized: inspect shows the mode, load_weights the float kernels their layers
    compute with, rewrite refuses to quantize them again."""
    src, theirs = tmp_path / "f.keras", tmp_path / "k.keras"
    dense_model().save(src)
    model = _keras_quantized(src, mode_name, theirs)
    infos = {i.path: i for i in wqkernels.inspect(theirs)}
    expected = "keras:" + {"int8": "int8", "int4": "int4/-1", "int4/32": "int4/32"}[mode_name]
    assert infos["layers/dense/vars/0"].storage == expected and not infos["layers/dense/vars/0"].prunable
    weights = wqkernels.load_weights(theirs)
    for name, path in (("with_bias", "layers/dense/vars/0"), ("no_bias", "layers/dense_1/vars/0")):
        layer = model.get_layer(name)
        assert weights[path].shape == tuple(layer._kernel.shape if mode_name == "int8" else
                                            (layer._orig_input_dim, layer._orig_output_dim))
        x = np.eye(weights[path].shape[0], dtype=np.float32)
        bias = np.asarray(layer.bias) if layer.bias is not None else 0
        np.testing.assert_allclose(weights[path], np.asarray(layer(x)) - bias, rtol=1e-2, atol=1e-2 * np.abs(weights[path]).max())
    with pytest.raises(wqkernels.KerasFileError, match="already quantized by Keras"):
        wqkernels.rewrite(theirs, tmp_path / "again.keras", Recipe(bits=8))
    assert main(["inspect", str(theirs)]) == 0
    assert expected in capsys.readouterr().out


def test_cli_storage_keras(tmp_path, capsys):
    src, dst = tmp_path / "f.keras", tmp_path / "q.keras"
    dense_model().save(src)
    assert main(["rewrite", str(src), "-o", str(dst), "--bits", "8", "--storage", "keras", "--activations", "float",
                 "--compress", "gzip"]) == 0
    assert "Keras-native int8" in capsys.readouterr().out
    assert keras.saving.load_model(dst).get_layer("with_bias").quantization_mode == "int8"
    with h5py.File(zipfile.ZipFile(dst).open("model.weights.h5")) as f:
        assert f["layers/dense/vars/0"].compression == "gzip"  # 21 kB of codes


def test_float16_layers_stay_float(tmp_path):
    """Keras refuses to quantize float16 compute; such layers keep float16 on the grid."""
    inp = keras.Input((20,))
    y = layers.Dense(8, name="half", dtype="float16")(inp)
    y = layers.Dense(4, name="full")(y)
    src, dst = tmp_path / "h.keras", tmp_path / "q.keras"
    randomize(keras.Model(inp, y), 8).save(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    loaded = keras.saving.load_model(dst)
    assert loaded.get_layer("half").quantization_mode is None and loaded.get_layer("full").quantization_mode == "int8"
    assert any("half (float16 compute" in n for n in report.notes)
    assert _datasets(dst)["layers/dense/vars/0"][0] == np.float16


def reversible_model(tie: bool, seed=0):
    """A ReversibleEmbedding used both ways: lookup, a Dense between, and the reverse projection
    to logits (tied: through the table itself; untied: through a table of its own)."""
    inp = keras.Input((7,), dtype="int32")
    table = layers.ReversibleEmbedding(50, 129, tie_weights=tie, name="rev")
    x = layers.Dense(129, name="mix")(table(inp))
    return randomize(keras.Model(inp, table(x, reverse=True)), seed)


@pytest.mark.parametrize("mode_name", list(MODES))
def test_tied_reversible_embedding_is_keras_own(tmp_path, mode_name):
    src, ours, theirs = tmp_path / "float.keras", tmp_path / "ours.keras", tmp_path / "keras.keras"
    reversible_model(tie=True).save(src)
    expected = _keras_quantized(src, mode_name, theirs)
    report = wqkernels.rewrite(src, ours, Recipe(storage="keras", **MODES[mode_name][2]))
    assert _datasets(ours) == _datasets(theirs)
    ours_layers, their_layers = _config_layers(ours), _config_layers(theirs)
    for key in ("dtype", "quantization_config"):
        assert strip_ids(ours_layers["rev"][key]) == strip_ids(their_layers["rev"][key]), key
    loaded = keras.saving.load_model(ours)
    assert loaded.get_layer("rev").quantization_mode == MODES[mode_name][0]
    x = _input((4, 7))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(expected(x)))
    assert any("rev" in n and n.startswith("Keras-native") for n in report.notes), report.notes
    read = wqkernels.inspect(ours)  # read back as a kernel Keras quantized
    assert {w.path: w.storage for w in read if w.path.startswith("layers/reversible_embedding")}[
        "layers/reversible_embedding/vars/0"] == "keras:" + ("int8" if mode_name == "int8" else
                                                             "int4/-1" if mode_name == "int4" else mode_name)
    table = wqkernels.load_weights(ours)["layers/reversible_embedding/vars/0"]  # dequantized
    float_table = wqkernels.load_weights(src)["layers/reversible_embedding/vars/0"]
    assert table.dtype == np.float32 and table.shape == float_table.shape == (50, 129)
    assert wqkernels.error(float_table, table).sqnr_db > (30 if mode_name == "int8" else 10)


def test_untied_reversible_embedding_stays_float_on_the_grid(tmp_path):
    """Both tables of an untied ReversibleEmbedding are kernels (quantized on the grid by float
    storage); Keras-native storage keeps the layer float, saying why, and the model loads."""
    src, dst = tmp_path / "float.keras", tmp_path / "ours.keras"
    model = reversible_model(tie=False)
    model.save(src)
    rows = {w.path: w for w in wqkernels.inspect(src)}
    assert rows["layers/reversible_embedding/vars/0"].role == "embeddings"
    assert rows["layers/reversible_embedding/vars/1"].role == "reverse_embeddings"
    assert all(rows[f"layers/reversible_embedding/vars/{i}"].prunable for i in (0, 1))
    report = wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    assert any("rev (ReversibleEmbedding" not in n and "untied reverse embeddings" in n for n in report.notes), report.notes
    loaded = keras.saving.load_model(dst)
    assert loaded.get_layer("rev").quantization_mode is None and loaded.get_layer("mix").quantization_mode == "int8"
    weights = wqkernels.load_weights(dst)
    before = wqkernels.load_weights(src)
    for i, axis in ((0, 0), (1, 1)):
        path = f"layers/reversible_embedding/vars/{i}"
        np.testing.assert_array_equal(weights[path], wqkernels.fake_quantize(before[path], 8, axis=axis,
                                                                             symmetric=True, rounding="sum"), path)


def test_inconsistent_quantized_kernels_are_one_line(tmp_path, capsys):
    """Zero points or scales that do not fit their codes are an error naming the file and the
    weight, never an IndexError from the arithmetic."""
    src, dst = tmp_path / "m.weights.h5", tmp_path / "m-int4.weights.h5"
    dense_model().save_weights(src)
    wqkernels.rewrite(src, dst, Recipe(bits=4, storage="keras", granularity="block:32"))
    with h5py.File(dst, "r") as f:
        zeros = [n for n in _datasets(dst) if n.endswith("vars/3") and f[n].ndim == 2 and f[n].shape[0] > 1]
    assert zeros
    for cut in (1, None):  # a zero point short of a group, and one of no shape at all
        bad = tmp_path / f"bad{cut}.weights.h5"
        shutil.copy(dst, bad)
        with h5py.File(bad, "r+") as f:
            kept = f[zeros[0]][:cut] if cut else None
            del f[zeros[0]]
            if cut:
                f[zeros[0]] = kept
            else:
                f.create_dataset(zeros[0], data=np.int8(0))
        with pytest.raises(wqkernels.KerasFileError, match="quantized kernel is inconsistent"):
            wqkernels.inspect(bad)
        assert main(["inspect", str(bad)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and bad.name in err


@pytest.mark.parametrize("name", [np.zeros((), [("a", "i4"), ("b", "f4")]), np.array([1, 2]), 7])
def test_layer_name_attribute_that_is_not_a_string_names_no_layer(name, tmp_path):
    """The ``name`` attribute of a Keras-native int8 layer's ``vars`` group holding a record (or
    an array) reached the user as "TypeError: unhashable type: 'writeable void-scalar'": an
    attribute that is not a string names no layer, and the kernel is still read from the config."""
    src, dst = tmp_path / "f.keras", tmp_path / "w8.keras"
    dense_model().save(src)
    wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"))
    expected = wqkernels.load_weights(dst)
    with zipfile.ZipFile(dst) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    weights = tmp_path / "w.h5"
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "a") as f:
        group = next(f[p] for p in ("layers/dense/vars", "layers/dense_1/vars") if p in f and len(f[p]) > 2)
        group.attrs["name"] = name
    members["model.weights.h5"] = weights.read_bytes()
    hostile = tmp_path / "named.keras"
    with zipfile.ZipFile(hostile, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
    got = wqkernels.load_weights(hostile)
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)


def test_layers_kept_float_are_one_note_per_reason(tmp_path):
    """A convolutional network keeps dozens of layers float: one note per reason, naming the first
    few and counting the rest, not one line per layer."""
    layers = [keras.Input((8, 8, 2))]
    layers += [keras.layers.Conv2D(2, 1, name=f"c{i:02d}") for i in range(11)]
    layers += [keras.layers.DepthwiseConv2D(1, name="dw"), keras.layers.Flatten(), keras.layers.Dense(3, name="d")]
    src = tmp_path / "convs.keras"
    keras.Sequential(layers).save(src)
    report = wqkernels.rewrite(src, tmp_path / "o.keras", Recipe(bits=8, storage="keras", min_size=0))
    kept = [n for n in report.notes if n.startswith("kept float")]
    assert kept == ["kept float on the 8-bit grid: c00, c01, c02, c03, c04, c05, c06, c07 and 3 more "
                    "(Conv2D: Keras does not quantize it)",
                    "kept float on the 8-bit grid: dw (DepthwiseConv2D: Keras does not quantize it)"]
