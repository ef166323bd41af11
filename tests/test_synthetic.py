"""Synthetic calibration samples from a model's BatchNormalization statistics: they reproduce the
moments, leave the model alone, and drive the calibrated rewrite from the command line; a model
without BatchNormalization is refused in one line."""
from __future__ import annotations

import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe

from .helpers import run_cli
from .keras_env import KERAS_MARKS, keras

pytestmark = [*KERAS_MARKS, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]


def _bn_cnn(seed=0):
    """A small digits-like CNN with BatchNorm after each convolution, trained a few epochs on
    structured images (so that its statistics are not those of noise)."""
    L = keras.layers
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1"), L.BatchNormalization(momentum=0.9, name="bn1"), L.ReLU(),
        L.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise"), L.BatchNormalization(momentum=0.9, name="bn2"),
        L.ReLU(), L.MaxPooling2D(2), L.Conv2D(16, 3, padding="same", use_bias=False, name="conv2"),
        L.BatchNormalization(momentum=0.9, name="bn3"), L.ReLU(), L.Flatten(), L.Dense(32, activation="relu", name="dense"),
        L.Dense(4, name="logits")])
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 512)
    x = np.zeros((512, 8, 8, 1), np.float32)
    for i, c in enumerate(y):  # a bar per class: rows or columns, top or bottom half
        band = slice(1, 4) if c % 2 == 0 else slice(4, 7)
        if c < 2:
            x[i, band, :, 0] = 1
        else:
            x[i, :, band, 0] = 1
    x += 0.2 * rng.random(x.shape).astype(np.float32)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y.astype(np.int32), epochs=8, batch_size=32, verbose=0)
    return model, x, y


@pytest.fixture(scope="module")
def bn_cnn(tmp_path_factory):
    model, x, y = _bn_cnn()
    base = tmp_path_factory.mktemp("bn")
    model.save(base / "m.keras")
    return model, base, x, y


def _moments(model, x):
    from wqkernels.keras.synthetic import batch_normalizations

    bns = batch_normalizations(model)
    outs = keras.Model(model.inputs, [bn.input for bn in bns]).predict(x, verbose=0)
    for bn, h in zip(bns, outs):
        h = np.asarray(h, np.float64).reshape(-1, h.shape[-1])
        std = np.sqrt(np.asarray(bn.moving_variance.numpy(), np.float64) + bn.epsilon)
        yield bn.name, (h.mean(0) - bn.moving_mean.numpy()) / std, h.std(0) / std


def test_synthetic_samples_reproduce_every_batch_norm_s_moments(bn_cnn):
    from wqkernels.keras.synthetic import Synthetic, synthesize

    model, _, _, _ = bn_cnn
    before = [np.array(v.numpy()) for v in model.weights]
    flags = [layer.trainable for layer in model.layers]
    (x,), facts = synthesize(model, Synthetic(count=128, steps=300))
    assert x.shape == (128, 8, 8, 1) and x.dtype == np.float32 and np.isfinite(x).all()
    assert facts["layers"] == ["bn1", "bn2", "bn3"] and facts["loss"] < facts["first_loss"], facts
    assert (facts["classes"], facts["scores"]) == (4, "logits"), facts
    noise = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    for (name, shift, ratio), (_, noise_shift, noise_ratio) in zip(_moments(model, x), _moments(model, noise)):
        # within a tenth of a standard deviation, where noise of the same size is off by far more
        assert np.abs(shift).max() < 0.1 and np.abs(ratio - 1).max() < 0.1, (name, shift, ratio)
        assert max(np.abs(noise_shift).max(), np.abs(noise_ratio - 1).max()) > 0.3, name
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights))  # the model is left alone
    assert [layer.trainable for layer in model.layers] == flags


def test_synthetic_calibration_from_the_command_line_loads_and_scores(bn_cnn, tmp_path, capsys):
    model, base, x, y = bn_cnn
    dst, free = tmp_path / "o.keras", tmp_path / "free.keras"
    code, out, err = run_cli(["rewrite", base / "m.keras", "-o", dst, "--sparsity", "0.75", "--calibration",
                              "synthetic", "--quiet", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = __import__("json").loads((tmp_path / "r.json").read_text())
    assert report["recipe"]["calibration"] == {"samples": 512, "source": "synthetic"}
    assert any("synthesized 512 samples from the statistics of 3 BatchNormalization layers" in n
               for n in report["notes"]), report["notes"]
    wqkernels.rewrite(base / "m.keras", free, Recipe(sparsity=0.75))
    loaded = keras.models.load_model(dst, compile=False)
    got = np.asarray(loaded.predict(x, verbose=0))
    assert np.isfinite(got).all()
    accuracy = float(np.mean(got.argmax(-1) == y))
    float_accuracy = float(np.mean(np.asarray(model.predict(x, verbose=0)).argmax(-1) == y))
    assert float_accuracy > 0.9 and accuracy > float_accuracy - 0.1, (accuracy, float_accuracy)
    zeros = {p: int(np.count_nonzero(w == 0)) for p, w in wqkernels.load_weights(dst).items() if "kernel" in p}
    assert zeros == {p: int(np.count_nonzero(w == 0)) for p, w in wqkernels.load_weights(free).items()
                     if "kernel" in p}


def test_a_model_without_batch_norm_is_refused_in_one_line(tmp_path, capsys):
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu", name="conv"), L.Flatten(),
                              L.Dense(4, name="logits")])
    model.save(tmp_path / "m.keras")
    dst = tmp_path / "o.keras"
    code, _, err = run_cli(["rewrite", tmp_path / "m.keras", "-o", dst, "--sparsity", "0.9", "--calibration",
                            "synthetic"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "no BatchNormalization layer" in err and "give sample inputs instead" in err, err
    assert not dst.exists()


def test_the_keras_subpackage_exports_them():
    import wqkernels.keras as wk
    from wqkernels.keras.synthetic import Synthetic, synthesize

    assert wk.Synthetic is Synthetic and wk.synthesize is synthesize and {"Synthetic", "synthesize"} <= set(wk.__all__)


def test_bad_settings_say_which():
    from wqkernels.keras.synthetic import Synthetic

    for options, name in ((dict(count=0), "count"), (dict(steps=1.5), "steps"), (dict(learning_rate=-1), "learning"),
                          (dict(labels=float("nan")), "labels")):
        with pytest.raises(ValueError, match=name):
            Synthetic(**options)


@pytest.mark.parametrize("sparsity, hinted", [(0.9, True), (0.5, False)])
def test_a_data_free_rewrite_pruning_far_points_to_synthetic_calibration(bn_cnn, sparsity, hinted, tmp_path):
    _, base, _, _ = bn_cnn
    report = wqkernels.rewrite(base / "m.keras", tmp_path / "o.keras", Recipe(sparsity=sparsity))
    assert any("--calibration synthetic" in n for n in report.notes) == hinted


def _nested_softmax_cnn(seed=0):
    """The digits-like CNN's convolutions as a nested Functional model (as a pretrained backbone
    is), under a Dense layer with a softmax: BatchNormalization only inside the nested model."""
    L = keras.layers
    keras.utils.set_random_seed(seed)
    images = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(images)
    h = L.ReLU()(L.BatchNormalization(momentum=0.9, name="bn1")(h))
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="conv2")(L.MaxPooling2D(2)(h))
    h = L.ReLU()(L.BatchNormalization(momentum=0.9, name="bn2")(h))
    backbone = keras.Model(images, h, name="backbone")
    model = keras.Sequential([keras.Input((8, 8, 1)), backbone, L.Flatten(), L.Dense(4, activation="softmax")])
    _, x, y = _bn_cnn(seed)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y.astype(np.int32), epochs=8, batch_size=32, verbose=0)
    return model, backbone, x


def test_batch_norms_inside_a_nested_model_count_and_softmax_outputs_are_probabilities():
    from wqkernels.keras.synthetic import Synthetic, synthesize

    model, backbone, _ = _nested_softmax_cnn()
    before = [np.array(v.numpy()) for v in model.weights]
    (x,), facts = synthesize(model, Synthetic(count=128, steps=300, labels=1.0))
    assert sorted(facts["layers"]) == ["bn1", "bn2"] and facts["loss"] < facts["first_loss"], facts
    assert (facts["classes"], facts["scores"]) == (4, "probabilities"), facts
    for name, shift, ratio in _moments(backbone, x):
        assert np.abs(shift).max() < 0.1 and np.abs(ratio - 1).max() < 0.1, (name, shift, ratio)
    # the class loss, taking the softmax's outputs as the probabilities they are, gives sample i class i mod 4
    classes = np.asarray(model.predict(x, verbose=0)).argmax(-1)
    assert np.mean(classes == np.arange(len(x)) % 4) > 0.9, np.bincount(classes, minlength=4)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights))
    assert all(layer.trainable for layer in [model, backbone] + backbone.layers)
