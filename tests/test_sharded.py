"""Sharded Keras 3 weights (``x.weights.json`` + ``x_00000.weights.h5``, ...): inspect, load,
rewrite in every storage, restore, atomic outputs; each output loads with ``load_weights``."""
from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe
from wqkernels.cli import main

from .keras_env import KERAS_MARKS, keras

pytestmark = [
    *KERAS_MARKS,
    pytest.mark.filterwarnings("ignore:Layer InputLayer does not have a `quantize` method:UserWarning"),
]


def _model(seed=0):
    rng = np.random.default_rng(seed)
    inp = keras.Input((64,))
    x = keras.layers.Dense(512, name="d1")(inp)
    x = keras.layers.Dense(512, name="d2")(x)
    x = keras.layers.Dense(300, name="d3", use_bias=False)(x)
    model = keras.Model(inp, x)
    for v in model.weights:
        v.assign(rng.standard_normal(v.shape).astype(np.float32) * 0.1)
    return model


@pytest.fixture
def shards(tmp_path):
    model = _model()
    index = tmp_path / "x.weights.json"
    model.save_weights(index, max_shard_size=0.0012)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".weights.h5")]) >= 2
    return model, index


def _shard_files(index) -> list:
    mapping = json.loads(index.read_text())["weight_map"].values()
    return sorted({n for v in mapping for n in (v if isinstance(v, list) else [v])})


def test_inspect_and_load_read_every_shard(shards):
    model, index = shards
    infos = wqkernels.inspect(index)
    assert [i.path for i in infos if i.prunable] == ["layers/dense/vars/0", "layers/dense_1/vars/0",
                                                      "layers/dense_2/vars/0"]
    weights = wqkernels.load_weights(index)
    np.testing.assert_array_equal(weights["layers/dense_2/vars/0"], np.asarray(model.get_layer("d3").kernel))


@pytest.mark.parametrize("storage", ["float32", "float16", "packed"])
def test_rewrite_keeps_the_kind_and_loads(tmp_path, shards, storage):
    model, index = shards
    out = tmp_path / "y.weights.json"
    recipe = Recipe(bits=4, sparsity=0.5, storage=storage)
    report = wqkernels.rewrite(index, out, recipe)
    assert report.sparsity >= 0.5
    before = {n: os.path.getsize(tmp_path / n) for n in _shard_files(index)}
    after = [os.path.getsize(tmp_path / n) for n in _shard_files(out)]
    assert len(after) == len(before) and all(a <= max(before.values()) for a in after)
    if storage == "packed":
        restored = tmp_path / "r.weights.json"
        wqkernels.restore(out, restored)
        out = restored
    target = _model(seed=1)
    target.load_weights(out)
    single = tmp_path / "single.weights.h5"
    model.save_weights(single)
    expected = tmp_path / "expected.weights.h5"
    wqkernels.rewrite(single, expected, Recipe(bits=4, sparsity=0.5, storage="float16" if storage == "float16"
                                                else "float32"))
    reference = _model(seed=2)
    reference.load_weights(expected)
    for a, b in zip(target.weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keras_storage_loads_after_quantize(tmp_path, shards):
    model, index = shards
    out = tmp_path / "k.weights.json"
    wqkernels.rewrite(index, out, Recipe(bits=8, storage="keras"))
    target = _model(seed=3)
    target.quantize("int8")
    target.load_weights(out)
    model.quantize("int8")
    x = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(target(x)), np.asarray(model(x)))


def test_nothing_visible_until_complete(tmp_path, shards, monkeypatch):
    """A failure while the last shard is written leaves neither shards nor index behind."""
    _, index = shards
    listing = set(os.listdir(tmp_path))
    rw = importlib.import_module("wqkernels.files.rewrite")
    real = rw._write_weights
    calls = []

    def failing(source, tmp, *args, **kwargs):
        calls.append(tmp)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(source, tmp, *args, **kwargs)
    monkeypatch.setattr(rw, "_write_weights", failing)
    with pytest.raises(wqkernels.KerasFileError):
        wqkernels.rewrite(index, tmp_path / "z.weights.json", Recipe(bits=8))
    assert set(os.listdir(tmp_path)) == listing


def test_bad_indexes_are_one_line(tmp_path, shards, capsys):
    _, index = shards
    evil = tmp_path / "evil.weights.json"
    evil.write_text(json.dumps({"weight_map": {"/layers/dense/vars": "../x_00000.weights.h5"}}))
    with pytest.raises(wqkernels.KerasFileError, match="not a file beside it"):
        wqkernels.inspect(evil)
    missing = tmp_path / "gone.weights.json"
    missing.write_text(json.dumps({"weight_map": {"/layers/dense/vars": "gone_00000.weights.h5"}}))
    assert main(["inspect", str(missing)]) == 1
    assert "shard 'gone_00000.weights.h5' is missing" in capsys.readouterr().err
    with pytest.raises(wqkernels.KerasFileError, match="must end in .weights.json"):
        wqkernels.rewrite(index, tmp_path / "y.weights.h5", Recipe(bits=8))
    with pytest.raises(wqkernels.KerasFileError, match="overwrite the source"):
        wqkernels.rewrite(index, index, Recipe(bits=8))
