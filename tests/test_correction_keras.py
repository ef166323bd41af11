"""The data-free BatchNorm correction on real Keras models (Sequential and functional): which
layers it corrects, the file holds what wqkernels.correction gives bit for bit, the mean shift of
the outputs falls, and the command line's switch."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, correction

from .helpers import assert_bit_equal, run_cli
from .keras_env import KERAS_MARKS, keras

pytestmark = KERAS_MARKS

def _layers():
    layers = keras.layers
    return [layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1"), layers.BatchNormalization(name="bn1"),
            layers.ReLU(name="relu1"), layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise"),
            layers.BatchNormalization(name="bn2"), layers.ReLU(name="relu2"),
            layers.Conv2D(32, 1, use_bias=False, name="pointwise"), layers.BatchNormalization(name="bn3"),
            layers.ReLU(name="relu3"), layers.MaxPooling2D(2, name="pool"), layers.Flatten(name="flat"),
            layers.Dropout(0.2, name="drop"), layers.Dense(64, name="dense"), layers.Dense(10, name="logits")]


def _cnn(functional: bool):
    if not functional:
        return keras.Sequential([keras.Input((8, 8, 3)), *_layers()], name="cnn")
    x = inputs = keras.Input((8, 8, 3))
    for layer in _layers():
        x = layer(x)
    return keras.Model(inputs, x, name="cnn")


def _calibrated(model, x):
    """Random kernels, and BN statistics set to the layer's real input statistics on `x` (so that
    what the correction assumes of its inputs holds), gamma and beta random."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = keras.Model(model.inputs, layer.input).predict(x, verbose=0)
            axes = tuple(range(inputs.ndim - 1))
            layer.moving_mean.assign(inputs.mean(axis=axes))
            layer.moving_variance.assign(inputs.var(axis=axes))
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
            layer.beta.assign(rng.uniform(-0.5, 0.5, layer.beta.shape).astype(np.float32))
        else:
            for v in layer.weights:
                v.assign(rng.standard_normal(v.shape).astype(np.float32) * (0.1 if "bias" in v.path else 1.0)
                         / math.sqrt(max(np.prod(v.shape[:-1]), 1)))
    return model


@pytest.fixture(scope="module", params=["sequential", "functional"])
def bn_model(request, tmp_path_factory):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).random((512, 8, 8, 3)).astype(np.float32)
    model = _cnn(request.param == "functional")
    _calibrated(model, x)
    path = tmp_path_factory.mktemp("bn") / "cnn.keras"
    model.save(path)
    return path, model, x


def _outputs(model, layer, x):
    """The per-channel mean over `x` of the output of `layer`."""
    out = keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0)
    return out.reshape(-1, out.shape[-1]).mean(axis=0)


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.models.load_model(path, compile=False)


def test_rewrite_corrects_the_layers_fed_by_batchnorm(bn_model, tmp_path):
    path, model, x = bn_model
    plain, fixed = tmp_path / "plain.keras", tmp_path / "fixed.keras"
    wqkernels.rewrite(path, plain, Recipe(sparsity=0.75, bn_correction=False))
    report = wqkernels.rewrite(path, fixed, Recipe(sparsity=0.75))
    note = next(n for n in report.notes if n.startswith("BatchNorm statistics corrected"))
    assert note == ("BatchNorm statistics corrected the pruned outputs of pointwise (bn3 moving mean and variance), "
                    "dense (kernel scale, bias)")
    # the first conv reads the image and logits reads a Dense: their statistics are not known;
    # the depthwise kernel (144 weights) stays dense
    # the relative shift of each channel's mean output on data whose statistics the BNs hold
    shifts = {}
    for layer in ("bn3", "dense", "logits"):
        y = _outputs(model, layer, x)
        for name, p in (("plain", plain), ("fixed", fixed)):
            out = _outputs(_load(p), layer, x)
            shifts[layer, name] = float(np.linalg.norm(out - y) / np.linalg.norm(y))
    assert shifts["bn3", "fixed"] < 0.6 * shifts["bn3", "plain"]
    assert shifts["dense", "fixed"] < 0.8 * shifts["dense", "plain"]
    assert shifts["logits", "fixed"] < shifts["logits", "plain"]


def test_the_file_holds_what_correct_layer_gives_bit_for_bit(bn_model, tmp_path):
    path, model, x = bn_model
    plain, fixed = tmp_path / "plain.keras", tmp_path / "fixed.keras"
    # every kernel pruned, the depthwise one too
    wqkernels.rewrite(path, plain, Recipe(sparsity=0.75, min_size=0, bn_correction=False))
    wqkernels.rewrite(path, fixed, Recipe(sparsity=0.75, min_size=0))
    layers = {layer.name: layer for layer in _load(plain).layers}
    got = {layer.name: layer for layer in _load(fixed).layers}
    floats = {layer.name: layer for layer in model.layers}

    def value(layer, attr):
        return np.asarray(getattr(layer, attr).numpy())

    def bn_input(name):
        m, s = value(floats[name], "beta").astype(np.float64), value(floats[name], "gamma").astype(np.float64)
        m1, m2 = correction.relu_moments(m, np.abs(s))
        return m1, np.maximum(m2 - m1 * m1, 0.0)

    for layer, bn, source, kind in (("depthwise", "bn2", "bn1", "depthwise"), ("pointwise", "bn3", "bn2", "conv")):
        mean, var = bn_input(source)
        want = correction.correct_layer(value(floats[layer], "kernel"), value(layers[layer], "kernel"), mean, var,
                                        kind, moving_mean=value(floats[bn], "moving_mean"),
                                        moving_variance=value(floats[bn], "moving_variance"), epsilon=1e-3)
        assert_bit_equal(value(got[bn], "moving_mean"), want.moving_mean, f"{bn} moving_mean")
        assert_bit_equal(value(got[bn], "moving_variance"), want.moving_variance, f"{bn} moving_variance")
        assert_bit_equal(value(got[layer], "kernel"), value(layers[layer], "kernel"), f"{layer} kernel")
    # the dense layer reads bn3 through its ReLU and a 2x2 max pooling: the window's rectified max
    m1, m2 = correction.max_relu_moments(value(floats["bn3"], "beta").astype(np.float64),
                                         np.abs(value(floats["bn3"], "gamma").astype(np.float64)), 4)
    mean, var = m1, np.maximum(m2 - m1 * m1, 0.0)
    want = correction.correct_layer(value(floats["dense"], "kernel"), value(layers["dense"], "kernel"), mean, var,
                                    "dense", bias=value(floats["dense"], "bias"))
    assert_bit_equal(value(got["dense"], "bias"), want.bias, "dense bias")
    assert_bit_equal(value(got["dense"], "kernel"), value(layers["dense"], "kernel") * want.scale, "dense kernel")
    for name in ("conv1", "logits", "bn1"):  # not corrected
        for v in floats[name].weights:
            attr = v.path.split("/")[-1]
            assert_bit_equal(value(got[name], attr), value(layers[name], attr), f"{name} {attr}")


def test_quantization_alone_and_the_cli_switch(bn_model, tmp_path, capsys):
    path, model, x = bn_model
    quantized = tmp_path / "q.keras"
    report = wqkernels.rewrite(path, quantized, Recipe(bits=4))
    assert not any(n.startswith("BatchNorm") for n in report.notes)
    off, on = tmp_path / "off.keras", tmp_path / "on.keras"
    run_cli(["rewrite", str(path), "-o", str(off), "--sparsity", "0.75", "--no-bn-correction", "--quiet"], capsys)
    wqkernels.rewrite(path, on, Recipe(sparsity=0.75, bn_correction=False))
    a, b = wqkernels.load_weights(off), wqkernels.load_weights(on)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    code, out, err = run_cli(["rewrite", str(path), "-o", str(tmp_path / "cli.keras"), "--sparsity", "0.75"], capsys)
    assert "BatchNorm statistics corrected" in out + err


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_nested_model_is_corrected_as_the_same_model_flat(bn_model, tmp_path, suffix):
    """A pretrained backbone inside a Sequential (the usual transfer-learning shape): the layers
    inside it are corrected as they are in the flat model, in both formats."""
    path, model, x = bn_model
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    cut = [layer.name for layer in layers].index("relu3") + 1
    backbone = keras.Sequential([keras.Input((8, 8, 3)), *layers[:cut]], name="backbone")
    nested = keras.Sequential([keras.Input((8, 8, 3)), backbone, *layers[cut:]], name="nested")
    flat, inner = tmp_path / f"flat{suffix}", tmp_path / f"nested{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(flat)
        nested.save(inner)
    reports = [wqkernels.rewrite(src, tmp_path / f"out-{src.name}", Recipe(sparsity=0.75, min_size=0))
               for src in (flat, inner)]
    notes = [next(n for n in r.notes if n.startswith("BatchNorm statistics corrected")) for r in reports]
    assert notes[0] == notes[1] == ("BatchNorm statistics corrected the pruned outputs of depthwise (bn2 moving mean and "
                                    "variance), pointwise (bn3 moving mean and variance), dense (kernel scale, bias)")
    a, b = _load(tmp_path / f"out-{flat.name}"), _load(tmp_path / f"out-{inner.name}")
    inside = {layer.name: layer for layer in b.get_layer("backbone").layers} | {layer.name: layer for layer in b.layers}
    for layer in a.layers:
        for v, w in zip(layer.weights, inside[layer.name].weights if layer.weights else []):
            assert_bit_equal(np.asarray(w.numpy()), np.asarray(v.numpy()), f"{layer.name} {v.path}")


def test_a_dense_layer_reading_a_flattened_bn_relu_map_is_corrected_under_its_covariance(tmp_path):
    """Conv-BN-ReLU twice, Flatten, Dense: the second convolution's overlapping windows correlate
    the Dense layer's inputs, and its correction uses their covariance (bit for bit what
    wqkernels.correction gives from the file's weights), not independent inputs."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 6, 3)), layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1"),
        layers.BatchNormalization(name="b1"), layers.ReLU(name="r1"),
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="c2"), layers.BatchNormalization(name="b2"),
        layers.ReLU(name="r2"), layers.Flatten(name="flat"), layers.Dense(16, name="dense"),
        layers.Dense(4, name="logits")], name="cnn")
    _calibrated(model, np.random.default_rng(2).random((256, 6, 6, 3)).astype(np.float32))
    path, plain, fixed = tmp_path / "m.keras", tmp_path / "plain.keras", tmp_path / "fixed.keras"
    model.save(path)
    wqkernels.rewrite(path, plain, Recipe(sparsity=0.75, bn_correction=False))
    report = wqkernels.rewrite(path, fixed, Recipe(sparsity=0.75))
    assert "dense (kernel scale, bias)" in next(n for n in report.notes if n.startswith("BatchNorm statistics"))
    floats, pruned, got = ({layer.name: layer for layer in m.layers} for m in (model, _load(plain), _load(fixed)))

    def value(layer, attr):
        return np.asarray(getattr(layer, attr).numpy()).astype(np.float64)

    m1, m2 = correction.relu_moments(value(floats["b1"], "beta"), np.abs(value(floats["b1"], "gamma")))
    z = correction.conv_covariance(value(floats["c2"], "kernel"), m2 - m1 * m1, (6, 6), "same")
    sd, gamma = np.sqrt(np.diag(z)), value(floats["b2"], "gamma")
    sign = np.tile(np.sign(gamma), 36)
    cov = correction.relu_covariance(np.tile(value(floats["b2"], "beta"), 36), np.tile(np.abs(gamma), 36),
                                     z / np.outer(sd, sd) * np.outer(sign, sign))
    r1, r2 = correction.relu_moments(value(floats["b2"], "beta"), np.abs(gamma))
    args = (value(floats["dense"], "kernel"), value(pruned["dense"], "kernel"), r1, r2 - r1 * r1, "dense")
    want = correction.correct_layer(*args, bias=value(floats["dense"], "bias"), cov=cov)
    assert_bit_equal(np.asarray(got["dense"].bias.numpy()), want.bias, "dense bias")
    assert_bit_equal(np.asarray(got["dense"].kernel.numpy()),
                     (np.asarray(pruned["dense"].kernel.numpy()) * want.scale).astype(np.float32), "dense kernel")
    independent = correction.correct_layer(*args, bias=value(floats["dense"], "bias"))
    assert not np.allclose(independent.scale, want.scale, rtol=1e-3)

    # a legacy .h5 of the same model records no build_config: the map's shape follows from the
    # model's input shape, and the correction is the same to the bit
    legacy, legacy_fixed = tmp_path / "m.h5", tmp_path / "fixed.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(legacy)
    wqkernels.rewrite(legacy, legacy_fixed, Recipe(sparsity=0.75))
    again = {layer.name: layer for layer in _load(legacy_fixed).layers}
    for attr in ("bias", "kernel"):
        assert_bit_equal(np.asarray(again["dense"].__getattribute__(attr).numpy()),
                         np.asarray(got["dense"].__getattribute__(attr).numpy()), f"legacy dense {attr}")


def test_input_shapes_of_a_legacy_config_are_keras_own(tmp_path):
    """Without build_config (a legacy .h5), each single-input layer's input shape is carried from
    the model's input shape through the layers whose output shape their config gives: what Keras
    itself computes, for convolutions of every padding, stride and dilation, pooling, zero padding,
    merges and nested models; unknown past a layer whose rule is not known (Reshape)."""
    from wqkernels.files.graph import graph

    layers = keras.layers
    inner = keras.Sequential([keras.Input((None, None, 6)), layers.Conv2D(5, 3, strides=2, padding="same", name="in_conv"),
                              layers.ReLU(name="in_relu")], name="inner")
    x = inputs = keras.Input((20, 19, 3), name="image")
    x = layers.ZeroPadding2D(((1, 2), (0, 3)), name="pad")(x)
    x = layers.Conv2D(4, (3, 2), strides=(2, 1), dilation_rate=1, name="valid")(x)
    x = layers.BatchNormalization(name="bn")(x)
    a = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(x)
    b = layers.SeparableConv2D(8, 3, padding="same", name="separable")(x)
    x = layers.Add(name="add")([a, b])
    x = layers.Conv2D(6, 3, dilation_rate=2, name="dilated")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(x)
    x = layers.AveragePooling2D(2, name="avgpool")(x)
    y = layers.Concatenate(name="concat")([x, x])
    x = inner(layers.Conv2D(6, 1, name="one")(y))
    g = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(7, name="dense")(x)
    x = layers.Concatenate(name="heads")([x, g])
    x = layers.Reshape((3, 4), name="reshape")(x)
    x = layers.Conv1D(2, 2, padding="causal", name="after_reshape")(x)
    model = keras.Model(inputs, x)
    path = tmp_path / "m.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    import json

    import h5py
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    nodes = graph(config)
    assert not any("build_config" in str(k) for k in config["config"]["layers"][1])
    want = {layer.name: tuple(layer.input.shape[1:]) for layer in model.layers if not isinstance(layer.input, list)}
    mapped = (None, *want["inner"])  # (the nested model's own layers, on the map it is called on)
    want["in_conv"] = want["inner"]
    want["in_relu"] = tuple(inner.get_layer("in_conv").compute_output_shape(mapped)[1:])
    checked = 0
    for name, node in nodes.items():
        if name not in want or len(node.inputs) != 1 or node.through or node.cls == "InputLayer":
            continue
        if name == "after_reshape":
            assert node.shape is None  # (past a Reshape: not known)
            continue
        assert node.shape == want[name], f"{name}: {node.shape} != {want[name]}"
        checked += 1
    assert checked >= 14, checked
