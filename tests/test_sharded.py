"""Sharded Keras 3 weights (``x.weights.json`` + ``x_00000.weights.h5``, ...): inspect, load,
rewrite in every storage, restore, atomic outputs; each output loads with ``load_weights``."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

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
    fifo = tmp_path / "pipe_00000.weights.h5"
    os.mkfifo(fifo)
    piped = tmp_path / "pipe.weights.json"
    piped.write_text(json.dumps({"weight_map": {"/layers/dense/vars": fifo.name}}))
    assert main(["inspect", str(piped)]) == 1
    assert "shard 'pipe_00000.weights.h5' is not a regular file" in capsys.readouterr().err
    with pytest.raises(wqkernels.KerasFileError, match="must end in .weights.json"):
        wqkernels.rewrite(index, tmp_path / "y.weights.h5", Recipe(bits=8))
    with pytest.raises(wqkernels.KerasFileError, match="overwrite the source"):
        wqkernels.rewrite(index, index, Recipe(bits=8))


def _same_weights(a, b):
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("size", ["300KB", 0.00028])
def test_reshard_to_the_size_given(tmp_path, shards, size):
    """Shards of at most the size given (Keras's GB or a unit), a layer's variables split across
    two of them where the size falls, loaded by Keras like its own quantized model."""
    model, index = shards
    out = tmp_path / "y.weights.json"
    wqkernels.rewrite(index, out, Recipe(bits=8, storage="keras"), max_shard_size=size)
    limit = wqkernels.files.sharded.shard_bytes(size)
    written = json.loads(out.read_text())
    spans = [v for v in written["weight_map"].values() if isinstance(v, list)]
    assert spans and all(len(v) == 2 for v in spans)
    files = _shard_files(out)
    assert len(files) == 2 and files[0] == "y_00000.weights.h5"
    for name in files:
        import h5py
        with h5py.File(tmp_path / name) as f:
            sizes = []
            f.visititems(lambda _, o: sizes.append(o.size * o.dtype.itemsize) if isinstance(o, h5py.Dataset) else None)
        assert 0 < sum(sizes) <= limit
    assert written["metadata"]["total_size"] == sum(np.asarray(v).nbytes for v in _quantized(model).weights)
    target = _model(seed=3)
    target.quantize("int8")
    target.load_weights(out)
    _same_weights(target, _quantized(model))


def _quantized(model):
    twin = _model()
    twin.set_weights(model.get_weights())
    twin.quantize("int8")
    return twin


def test_split_a_single_weights_file(tmp_path, shards, capsys):
    model, _ = shards
    single = tmp_path / "single.weights.h5"
    model.save_weights(single)
    out = tmp_path / "z.weights.json"
    assert main(["rewrite", str(single), "-o", str(out), "--bits", "4", "--max-shard-size", "0.001", "--quiet"]) == 0
    assert len(_shard_files(out)) == 3  # 2 MB of float32 variables, two of 1 MB at most (1 GB = 1024**3 bytes)
    expected = tmp_path / "expected.weights.h5"
    wqkernels.rewrite(single, expected, Recipe(bits=4))
    target, reference = _model(seed=1), _model(seed=2)
    target.load_weights(out)
    reference.load_weights(expected)
    _same_weights(target, reference)
    assert [i.path for i in wqkernels.inspect(out)] == [i.path for i in wqkernels.inspect(expected)]


def test_bad_shard_sizes_are_one_line(tmp_path, shards, capsys):
    model, index = shards
    listing = set(os.listdir(tmp_path))
    for size, error in (("big", "must be a size such as 500MB"), ("-1MB", "must be a size such as"),
                        (0, "at least one byte"), (True, "must be a number of GB"),
                        ("100KB", "weight 'layers/dense/vars/0' has 131072 bytes, more than the largest shard")):
        with pytest.raises((TypeError, ValueError), match=error):
            wqkernels.rewrite(index, tmp_path / "y.weights.json", Recipe(bits=8), max_shard_size=size)
    with pytest.raises(ValueError, match="packed files keep the source's shards"):
        wqkernels.rewrite(index, tmp_path / "y.weights.json", Recipe(bits=4, storage="packed"), max_shard_size=1)
    with pytest.raises(wqkernels.KerasFileError, match="must end in .weights.json"):
        wqkernels.rewrite(index, tmp_path / "y.weights.h5", Recipe(bits=8), max_shard_size=1)
    with pytest.raises(wqkernels.KerasFileError, match="would overwrite the source's shards"):
        wqkernels.rewrite(index, index, Recipe(bits=8), max_shard_size=1)
    with pytest.raises(wqkernels.KerasFileError, match="give max_shard_size"):
        wqkernels.rewrite(tmp_path / "x_00001.weights.h5", tmp_path / "y.weights.json", Recipe(bits=8))
    keras_file = tmp_path / "m.keras"
    model.save(keras_file)
    listing.add("m.keras")
    assert main(["rewrite", str(keras_file), "-o", str(tmp_path / "m.weights.json"), "--bits", "8",
                 "--max-shard-size", "1GB"]) == 1
    err = capsys.readouterr().err
    assert "splits Keras 3 weights" in err and len(err.strip().splitlines()) == 1
    assert set(os.listdir(tmp_path)) == listing
    for flags, error in ((["--max-shard-size", "big"], "--max-shard-size must be a size such as 500MB"),
                         (["--max-shard-size", "1", "--storage", "packed"], "packed files keep the source's shards")):
        assert main(["rewrite", str(index), "-o", str(tmp_path / "y.weights.json"), "--bits", "4", *flags]) == 2
        err = capsys.readouterr().err
        assert error in err and "ValueError" not in err and len(err.strip().splitlines()) == 1
    assert set(os.listdir(tmp_path)) == listing


def test_resharding_shows_nothing_until_complete(tmp_path, shards, monkeypatch):
    _, index = shards
    listing = set(os.listdir(tmp_path))
    sh = importlib.import_module("wqkernels.files.sharded")
    real = sh.h5o.copy
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)
    monkeypatch.setattr(sh.h5o, "copy", failing)
    with pytest.raises((wqkernels.KerasFileError, OSError)):
        wqkernels.rewrite(index, tmp_path / "z.weights.json", Recipe(bits=8), max_shard_size="300KB")
    assert set(os.listdir(tmp_path)) == listing


@pytest.fixture
def three_shards(tmp_path, shards):
    """The source index, an output index of three shards written from it, its recipe and shards."""
    _, index = shards
    out = tmp_path / "y.weights.json"
    recipe = Recipe(bits=8, storage="keras")
    wqkernels.rewrite(index, out, recipe, max_shard_size="263KB")
    many = _shard_files(out)
    assert len(many) == 3
    return index, out, recipe, many


def test_fewer_shards_over_an_index_remove_exactly_its_surplus(tmp_path, three_shards):
    """The shards the old index named that the new one does not are removed once the new index
    is in place, in place or not; never a file the old index did not name, a file it names that
    is not named as one of its shards, a link, a directory, a file outside the directory, or a
    shard of the source."""
    index, out, recipe, many = three_shards
    (tmp_path / "y_00099.weights.h5").write_bytes(b"not named by the index")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "y_00042.weights.h5").write_bytes(b"outside")
    (tmp_path / "y_00097.weights.h5").symlink_to(tmp_path / "y_00099.weights.h5")
    (tmp_path / "y_00098.weights.h5").mkdir()
    written = json.loads(out.read_text())
    (tmp_path / "w_00001.weights.h5").write_bytes(b"a shard of another index")
    (tmp_path / "train.py").write_bytes(b"the user's script")
    written["weight_map"].update({"/a": "y_00097.weights.h5", "/b": "y_00098.weights.h5",
                                  "/c": "elsewhere/y_00042.weights.h5", "/d": "x_00001.weights.h5",
                                  "/e": "train.py", "/g": "w_00001.weights.h5", "/f": "y_00096\0.weights.h5"})
    out.write_text(json.dumps(written))
    before = set(os.listdir(tmp_path))
    wqkernels.rewrite(index, out, recipe, max_shard_size="300KB")
    assert _shard_files(out) == many[:2]
    assert set(os.listdir(tmp_path)) == before - {many[2]}
    target = _model(seed=1)
    target.quantize("int8")
    target.load_weights(out)
    wqkernels.rewrite(out, out, Recipe(), max_shard_size="10MB", in_place=True)
    assert _shard_files(out) == many[:1]
    assert set(os.listdir(tmp_path)) == before - set(many[1:])
    again = _model(seed=2)
    again.quantize("int8")
    again.load_weights(out)
    _same_weights(again, target)
    z = tmp_path / "z.weights.json"
    wqkernels.rewrite(index, z, recipe, max_shard_size="263KB")
    wqkernels.rewrite(index, z, recipe)  # one shard per source shard
    assert _shard_files(z) == ["z_00000.weights.h5", "z_00001.weights.h5"]
    assert not (tmp_path / "z_00002.weights.h5").exists()


def test_a_sharded_keras_native_report_says_each_note_once(tmp_path, shards):
    _, index = shards
    for size in (None, "300KB"):
        report = wqkernels.rewrite(index, tmp_path / "k.weights.json", Recipe(bits=8, storage="keras"),
                                   max_shard_size=size)
        native = [n for n in report.notes if n.startswith("Keras-native")]
        assert len(native) == 1 and native[0].startswith("Keras-native int8: 3 layers ("), report.notes
        assert len([n for n in report.notes if n.startswith("loads with")]) == 1
        assert len(report.notes) == len(set(report.notes))


def _other_process(code: str, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_a_second_rewrite_into_a_sharded_destination_is_refused(tmp_path, shards):
    """Another process writing one shard of the destination: refused as for a single file, and
    nothing written."""
    _, index = shards
    out = tmp_path / "out"
    out.mkdir()
    writer = _other_process("import sys, time; from wqkernels.files import atomic; "
                            "print(atomic.temp_beside(sys.argv[1]), flush=True); time.sleep(120)",
                            out / "y_00001.weights.h5")
    try:
        held = os.path.basename(writer.stdout.readline().strip())
        with pytest.raises(wqkernels.KerasFileError, match="y_00001.weights.h5: another process is writing it"):
            wqkernels.rewrite(index, out / "y.weights.json", Recipe(bits=8))
        assert os.listdir(out) == [held]
    finally:
        writer.kill()
        writer.communicate()
    wqkernels.rewrite(index, out / "y.weights.json", Recipe(bits=8))  # its writer gone
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


#: a rewrite whose process dies (os._exit, as under SIGKILL) before its os.replace number argv[1]
_CRASHING = """
import os, sys, wqkernels
limit, real, calls = int(sys.argv[1]), os.replace, [0]
def replace(a, b):
    if calls[0] == limit:
        os._exit(9)
    calls[0] += 1
    real(a, b)
os.replace = replace
wqkernels.rewrite(sys.argv[2], sys.argv[3], wqkernels.Recipe(bits=4))
"""


def test_a_crash_between_the_renames_is_never_read_as_a_model(tmp_path, shards):
    """Killed after any number of its renames, a rewrite over an index leaves the old set, the
    new one, or an index that reading refuses in one line: shards of two sets taken together
    loaded silently as a model of neither."""
    _, index = shards
    new = tmp_path / "new"
    new.mkdir()
    wqkernels.rewrite(index, new / "y.weights.json", Recipe(bits=4))
    want_new = wqkernels.load_weights(new / "y.weights.json")
    count = len(_shard_files(new / "y.weights.json"))
    seen = set()
    for limit in range(count + 2):  # every shard's rename and the index's, and none
        out = tmp_path / f"out{limit}"
        out.mkdir()
        wqkernels.rewrite(index, out / "y.weights.json", Recipe(bits=8))
        want_old = wqkernels.load_weights(out / "y.weights.json")
        done = _other_process(_CRASHING, limit, index, out / "y.weights.json")
        _, stderr = done.communicate(timeout=120)
        assert done.returncode == (0 if limit > count else 9), stderr
        try:
            got = wqkernels.load_weights(out / "y.weights.json")
        except wqkernels.KerasFileError as exc:
            assert "was not written with this index" in str(exc) and "\n" not in str(exc)
            seen.add("refused")
        else:
            same = [all(np.array_equal(got[k], want[k]) for k in want) and got.keys() == want.keys()
                    for want in (want_old, want_new)]
            assert any(same), f"after {limit} renames: neither the old weights nor the new"
            seen.add("old" if same[0] else "new")
        assert main(["rewrite", str(index), "-o", str(out / "y.weights.json"), "--bits", "4"]) == 0  # repaired
        got = wqkernels.load_weights(out / "y.weights.json")
        assert all(np.array_equal(got[k], want_new[k]) for k in want_new)
        assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    assert seen == {"old", "refused", "new"}


def test_shards_holding_only_optimizer_variables_are_read(tmp_path):
    """Keras's sharded save of a trained model puts optimizer variables in shards of their own,
    with no ``layers`` or ``vars`` group: such a shard was refused as "not a Keras weights file"."""
    model = _model()
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.zeros((4, 64), np.float32), np.zeros((4, 300), np.float32), verbose=0)
    index = tmp_path / "t.weights.json"
    model.save_weights(index, max_shard_size=0.0012)
    import h5py
    optimizer_only = [n for n in _shard_files(index) if set(h5py.File(tmp_path / n)) == {"optimizer"}]
    assert optimizer_only  # what the test is about
    infos = wqkernels.inspect(index)
    assert sum(i.role == "optimizer" for i in infos) == len(model.optimizer.variables)
    out = tmp_path / "o.weights.json"
    notes = wqkernels.rewrite(index, out, Recipe(bits=8)).notes
    assert any(n.startswith("optimizer state kept as it is: ") for n in notes), notes  # Adam's two moments: 2/3
    again = _model(seed=1)
    again.compile(keras.optimizers.Adam(), "mse")
    again.optimizer.build(again.trainable_variables)
    again.load_weights(out)
    np.testing.assert_array_equal(np.asarray(again.get_layer("d3").kernel),
                                  wqkernels.load_weights(out)["layers/dense_2/vars/0"])
    # stripped of its optimizer, a shard that held only optimizer variables is not written (an
    # empty shard is no weights file), nor named by the index
    stripped = tmp_path / "s.weights.json"
    report = wqkernels.rewrite(index, stripped, Recipe(bits=8, strip_optimizer=True))
    assert report.role_source == "names (no model config)"  # (not "config, names": an optimizer shard has no classes)
    shards = _shard_files(stripped)
    assert len(shards) == len(_shard_files(index)) - len(optimizer_only)
    assert all(os.path.exists(tmp_path / n) for n in shards)
    assert not any(group.startswith("/optimizer") for group in json.loads(stripped.read_text())["weight_map"])
    assert not any(i.role == "optimizer" for i in wqkernels.inspect(stripped))
    fresh = _model(seed=2)
    fresh.load_weights(stripped)
    np.testing.assert_array_equal(np.asarray(fresh.get_layer("d3").kernel),
                                  wqkernels.load_weights(out)["layers/dense_2/vars/0"])


def test_a_layer_split_over_two_shards_is_read_and_a_gap_refused(tmp_path, capsys):
    """Keras starts a new shard between two variables of one layer when the first fills its shard;
    the variables are numbered over the whole set, so a gap is looked for there, not per shard."""
    model = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(300), keras.layers.Dense(3)])
    index = tmp_path / "s.weights.json"
    model.save_weights(index, max_shard_size=1.2e6 / 1024**3)  # the first kernel fills its shard
    import h5py
    with h5py.File(tmp_path / "s_00000.weights.h5", "r") as f:
        assert "layers/dense/vars/0" in f and "layers/dense/vars/1" not in f  # what the test is about
    assert [i.role for i in wqkernels.inspect(index)] == ["kernel", "bias", "kernel", "bias"]
    out = tmp_path / "o.weights.json"
    wqkernels.rewrite(index, out, Recipe(bits=8))
    model.load_weights(out)
    # total_size counts the variables' bytes, as Keras's own index does (not the files' sizes)
    assert json.loads(out.read_text())["metadata"]["total_size"] == json.loads(index.read_text())["metadata"]["total_size"]
    with h5py.File(tmp_path / "s_00001.weights.h5", "r+") as f:
        f.move("layers/dense_1/vars/1", "layers/dense_1/vars/2")
    assert main(["inspect", str(index)]) == 1
    err = capsys.readouterr().err.strip()
    assert "'layers/dense_1/vars' has no variable 1 but has 2" in err and "\n" not in err


def test_old_shards_left_by_a_stop_after_the_index_rename_are_removed_next_time(tmp_path, three_shards, monkeypatch):
    """A rewrite stopped between renaming its index into place and removing the old shards it
    no longer names leaves them; they carry the token of a set no index names, so the next
    rewrite into the same index removes them (and never a shard-named file wqkernels did not write)."""
    from wqkernels.files import sharded
    index, out, recipe, many = three_shards
    (tmp_path / "y_00099.weights.h5").write_bytes(b"the user's own file, named like a shard")
    with monkeypatch.context() as m:
        m.setattr(sharded, "_remove_regular", lambda path: None)  # stopped before removing the surplus
        wqkernels.rewrite(index, out, recipe, max_shard_size="300KB")
    assert _shard_files(out) == many[:2] and (tmp_path / many[2]).exists()
    wqkernels.rewrite(index, out, recipe, max_shard_size="300KB")
    assert not (tmp_path / many[2]).exists()
    assert (tmp_path / "y_00099.weights.h5").read_bytes() == b"the user's own file, named like a shard"
    target = _model(seed=1)
    target.quantize("int8")
    target.load_weights(out)
