"""The Keras file layer: layouts, roles, rewrite/restore, safety, and loading back in real Keras."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import lzma
import math
import os
import pickle
import sys
import warnings
import zipfile
import zlib

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference
from wqkernels.cli import main
from wqkernels.files import roles
from wqkernels.files.packed import xz_compress

from .helpers import assert_bit_equal

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
import make_keras2_files as k2  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")

#: keras 3.15 calls np.array(variable) in ways numpy 2 deprecates; nothing of ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _listing(directory) -> set:
    return set(os.listdir(directory))


@pytest.fixture
def keras20(tmp_path):
    path = tmp_path / "keras20.h5"
    return path, k2.write_keras20_full(path)


@pytest.fixture
def tfkeras(tmp_path):
    path = tmp_path / "tfkeras.h5"
    return path, k2.write_tfkeras_weights(path)


def _attrs_exact(obj) -> dict:
    """Attributes with their exact HDF5 types (class, size, cset) and values."""
    out = {}
    for name in obj.attrs:
        aid = h5py.h5a.open(obj.id, name.encode())
        tid = aid.get_type()
        kind = (type(tid).__name__, tid.get_size(),
                tid.get_cset() if isinstance(tid, h5py.h5t.TypeStringID) else None,
                tid.is_variable_str() if isinstance(tid, h5py.h5t.TypeStringID) else None)
        value = obj.attrs[name]
        out[name] = (kind, value.tolist() if isinstance(value, np.ndarray) else value)
    return out


def _tree(f: h5py.File) -> dict:
    """Every object: groups with attributes, datasets with attributes, dtype, shape and filters."""
    out = {"/": ("group", _attrs_exact(f))}

    def visit(name, obj):
        if isinstance(obj, h5py.Group):
            out[name] = ("group", _attrs_exact(obj))
        else:
            out[name] = ("dataset", _attrs_exact(obj), str(obj.dtype), obj.shape, obj.compression)
    f.visititems(visit)
    return out


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- Recipe ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"bits": 1}, {"bits": 9}, {"sparsity": 1.5}, {"sparsity": -0.1},
                                    {"granularity": "block:0"}, {"granularity": "block:x"},
                                    {"granularity": "row"}, {"storage": "int8"}, {"compress": "zstd"},
                                    {"storage": "packed"}, {"method": "best", "bits": 4},
                                    {"sparsity": "3:2"}, {"bits": 4, "target_sqnr": 30},
                                    {"min_size": -1}, {"allocation": "spread"}])
def test_recipe_refuses_impossible(kwargs):
    with pytest.raises(ValueError):
        Recipe(**kwargs)


def test_recipe_defaults():
    assert Recipe(bits=4).method == "mse"
    assert Recipe(bits=3).method == "mse"
    assert Recipe(bits=5).method == "minmax"
    assert Recipe(bits=8, method="mse").method == "mse"
    assert Recipe().granularity == "channel"
    assert Recipe(bits=4, granularity="block:32").block_size == 32
    assert Recipe(sparsity="2:4").n_m == (2, 4)
    assert pickle.loads(pickle.dumps(Recipe(bits=4))) == Recipe(bits=4)


# ---- roles -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,role,ndim,axis", [
    ("Dense", "kernel", 2, 1), ("Conv2D", "kernel", 4, 3), ("Conv1D", "kernel", 3, 2),
    ("DepthwiseConv2D", "kernel", 4, 2), ("SeparableConv2D", "depthwise_kernel", 4, 2),
    ("SeparableConv2D", "pointwise_kernel", 4, 3), ("Conv2DTranspose", "kernel", 4, 2),
    ("Embedding", "embeddings", 2, 0), ("LSTM", "recurrent_kernel", 2, 1), (None, "kernel", 2, 1),
])
def test_channel_axis(cls, role, ndim, axis):
    assert roles.channel_axis(cls, role, ndim) == axis


def test_block_view_runs_along_the_reduction_axis():
    assert roles.block_view((3, 3, 8, 16), "Conv2D", "kernel") == ((72, 16), 0)
    assert roles.block_view((3, 3, 8, 2), "DepthwiseConv2D", "kernel") == ((9, 16), 0)
    assert roles.block_view((3, 3, 6, 8), "Conv2DTranspose", "kernel") == ((3, 3, 6, 8), 3)
    assert roles.block_view((20, 8), "Embedding", "embeddings") == ((20, 8), 1)


def test_class_from_name():
    assert roles.class_from_name("depthwise_conv2d_3") == "DepthwiseConv2D"
    assert roles.class_from_name("conv2d_transpose") == "Conv2DTranspose"
    assert roles.class_from_name("my_thing") is None


# ---- Keras 2 layouts written by h5py -------------------------------------------------------------

def test_inspect_keras20(keras20):
    path, _ = keras20
    infos = {i.path: i for i in wqkernels.inspect(path)}
    k = infos["model_weights/conv2d_1/conv2d_1_1/kernel:0"]
    assert (k.layer, k.layer_class, k.role, k.prunable, k.shape) == ("conv2d_1", "Conv2D", "kernel", True, (3, 3, 3, 4))
    assert infos["model_weights/depthwise_conv2d_1/depthwise_conv2d_1_1/depthwise_kernel:0"].prunable
    assert not infos["model_weights/dense_1/dense_1_1/bias:0"].prunable
    assert infos["optimizer_weights/Variable_0:0"].role == "optimizer"


def test_inspect_json(keras20, capsys):
    code, out, err = run_cli(["inspect", keras20[0], "--json"], capsys)
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert {"path", "layer", "layer_class", "role", "prunable", "shape", "dtype", "nbytes", "sparsity"} <= set(rows[0])
    assert rows[0]["shape"] == [3, 3, 3, 4]


@pytest.mark.parametrize("which", ["keras20", "tfkeras"])
def test_rewrite_keras2_layouts_exact(which, keras20, tfkeras, tmp_path, capsys):
    src, values = keras20 if which == "keras20" else tfkeras
    before = _sha(src)
    dst = tmp_path / "out.h5"
    code, out, err = run_cli(["rewrite", src, "-o", dst, "--bits", "4"], capsys)
    assert code == 0, err
    assert _sha(src) == before
    with h5py.File(src) as a, h5py.File(dst) as b:
        ta, tb = _tree(a), _tree(b)
        assert ta.keys() == tb.keys()
        for name in ta:
            assert ta[name] == tb[name], name  # attributes with exact types, dtypes, shapes
        expected = {"conv2d_1": (0, 3), "depthwise_conv2d_1": (0, 2), "dense_1": (0, 1)}
        for layer, (index, axis) in expected.items():
            g = b[f"model_weights/{layer}" if which == "keras20" else layer]
            names = [n.decode() for n in g.attrs["weight_names"]]
            assert_bit_equal(g[names[index]][()],
                             reference.fake_quantize(values[layer][index], 4, axis=axis, method="mse"), layer)
            assert_bit_equal(g[names[1]][()], values[layer][1], "bias kept")
    if which == "tfkeras":
        with h5py.File(dst) as b:
            assert "layer_names" not in b.attrs and "layer_names1" in b.attrs


def test_report_json_and_table(keras20, tmp_path, capsys):
    report_path = tmp_path / "r.json"
    code, out, err = run_cli(["rewrite", keras20[0], "-o", tmp_path / "o.h5", "--bits", "8",
                              "--report", report_path], capsys)
    assert code == 0, err
    assert "SQNR" in out and "ratio" in out
    data = json.loads(report_path.read_text())
    assert len(data["weights"]) == 3 and data["totals"]["bits_per_weight"] == 8
    assert all(w["sqnr_db"] > 30 for w in data["weights"])


def test_packed_restore_is_bit_identical_to_float32(keras20, tmp_path, capsys):
    src = keras20[0]
    for granularity in ("channel", "tensor", "block:16"):
        f32, packed, restored = (tmp_path / f"{n}-{granularity[:5]}.h5" for n in ("f32", "packed", "restored"))
        common = ["--bits", "3", "--granularity", granularity]
        assert run_cli(["rewrite", src, "-o", f32, *common], capsys)[0] == 0
        assert run_cli(["rewrite", src, "-o", packed, *common, "--storage", "packed"], capsys)[0] == 0
        assert run_cli(["restore", packed, "-o", restored], capsys)[0] == 0
        with h5py.File(f32) as a, h5py.File(restored) as b:
            assert _tree(a) == _tree(b)
            a.visititems(lambda n, o: assert_bit_equal(o[()], b[n][()], n) if isinstance(o, h5py.Dataset) else None)
        loaded_f32, loaded_packed = wqkernels.load_weights(f32), wqkernels.load_weights(packed)
        assert loaded_f32.keys() == loaded_packed.keys()
        for k in loaded_f32:
            assert_bit_equal(loaded_f32[k], loaded_packed[k], k)
        assert os.path.getsize(packed) < os.path.getsize(f32)


def test_packed_inspect_and_rewrite_from_packed(keras20, tmp_path):
    packed = tmp_path / "p.h5"
    wqkernels.rewrite(keras20[0], packed, Recipe(bits=4, storage="packed"))
    infos = {i.path: i for i in wqkernels.inspect(packed)}
    assert infos["model_weights/dense_1/dense_1_1/kernel:0"].storage == "packed:4"
    again = tmp_path / "again.h5"
    wqkernels.rewrite(packed, again, Recipe(bits=4))  # already on the grid: quantizing again is exact
    assert_bit_equal(wqkernels.load_weights(again)["model_weights/dense_1/dense_1_1/kernel:0"],
                     wqkernels.load_weights(packed)["model_weights/dense_1/dense_1_1/kernel:0"])


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


def test_include_exclude_min_size(keras20, tmp_path):
    src, values = keras20
    report = wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(bits=4, exclude=("*dense*",), min_size=50))
    done = {r.path for r in report.rows if r.rewritten}
    assert done == {"model_weights/conv2d_1/conv2d_1_1/kernel:0"}  # depthwise: 36 < 50 elements
    report = wqkernels.rewrite(src, tmp_path / "o2.h5", Recipe(bits=4, include=("*depthwise*",)))
    assert {r.path for r in report.rows if r.rewritten} == \
        {"model_weights/depthwise_conv2d_1/depthwise_conv2d_1_1/depthwise_kernel:0"}


def test_in_place(keras20, capsys):
    src = keras20[0]
    code, out, err = run_cli(["rewrite", src, "-o", src, "--bits", "8"], capsys)
    assert code != 0 and "in-place" in err
    before = _sha(src)
    code, out, err = run_cli(["rewrite", src, "-o", src, "--bits", "8", "--in-place"], capsys)
    assert code == 0, err
    assert _sha(src) != before
    assert _listing(src.parent) == {src.name}


@pytest.mark.parametrize("which,patched,recipe,suffix", [
    ("keras20", "fake_quantize", Recipe(bits=4), ".h5"),
    ("keras3_zip", "quantize", Recipe(bits=4, storage="packed"), ".keras"),
])
def test_interrupted_rewrite_leaves_nothing(which, patched, recipe, suffix, request, tmp_path, monkeypatch):
    src = request.getfixturevalue(which)
    src = src[0] if isinstance(src, tuple) else src
    before = _sha(src)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib.import_module("wqkernels.files.transform"), patched, interrupt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        wqkernels.rewrite(src, out_dir / f"o{suffix}", recipe)
    assert _listing(out_dir) == set()
    assert _sha(src) == before


# ---- bad input ------------------------------------------------------------------------------------

def _make_bad(kind: str, tmp_path, good):
    p = tmp_path / f"bad-{kind}"
    if kind == "missing":
        return tmp_path / "nothing.h5"
    if kind == "directory":
        p.mkdir()
        return p
    if kind == "text":
        p.write_text("hello, I am not a model\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        p.write_bytes(data[: len(data) // 3])
    elif kind == "corrupt":
        data = bytearray(good.read_bytes())
        data[200:2000] = os.urandom(1800)
        p.write_bytes(bytes(data))
    elif kind == "bad-zip":
        p.write_bytes(b"PK\x03\x04" + os.urandom(300))
    elif kind == "zip-not-keras":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("hello.txt", "hi")
    elif kind == "not-keras":
        with h5py.File(p, "w") as f:
            f["data"] = np.arange(10.0)
    elif kind == "unsupported-layout":
        with h5py.File(p, "w") as f:
            f.create_group("model_weights")
    elif kind in ("soft-link", "external-link", "external-dataset", "virtual-dataset", "huge-shape",
                  "hard-link-cycle", "dataset-linked-twice"):
        import shutil
        shutil.copy(good, p)
        with h5py.File(p, "a") as f:
            g = f["model_weights/dense_1"]
            if kind == "soft-link":
                g["extra"] = h5py.SoftLink("/model_weights/conv2d_1")
            elif kind == "external-link":
                g["extra"] = h5py.ExternalLink("/etc/passwd", "/x")
            elif kind == "hard-link-cycle":
                g["extra"] = f["model_weights"]
            elif kind == "dataset-linked-twice":
                g["extra"] = g["dense_1_1/kernel:0"]
            elif kind == "external-dataset":
                g.create_dataset("extra", shape=(10,), dtype="f4", external=[("/etc/hostname", 0, 40)])
            elif kind == "virtual-dataset":
                layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
                layout[:] = h5py.VirtualSource("other.h5", "x", shape=(4,))
                g.create_virtual_dataset("extra", layout)
            else:
                del g["dense_1_1/kernel:0"]
                g.create_dataset("dense_1_1/kernel:0", shape=(1 << 20, 1 << 16), dtype="f4", chunks=(1024, 64))
    return p


BAD = ["missing", "directory", "text", "empty", "truncated", "corrupt", "bad-zip", "zip-not-keras",
       "not-keras", "unsupported-layout", "soft-link", "external-link", "external-dataset",
       "virtual-dataset", "huge-shape", "hard-link-cycle", "dataset-linked-twice"]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("command", ["inspect", "rewrite", "restore"])
def test_bad_input_one_line(kind, command, keras20, tmp_path, capsys):
    src = _make_bad(kind, tmp_path, keras20[0])
    before = _sha(src) if src.is_file() else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [command, src] + ([] if command == "inspect" else ["-o", out_dir / "o.h5"])
    if command == "rewrite":
        args += ["--bits", "8"]
    code, out, err = run_cli(args, capsys)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and str(src.name) in err
    assert _listing(out_dir) == set()
    if before is not None:
        assert _sha(src) == before


@pytest.mark.parametrize("option", [["--bits", "1"], ["--sparsity", "1.5"], ["--granularity", "block:0"],
                                    ["--bits", "4", "--granularity", "block:-3"], ["--storage", "packed"],
                                    ["--sparsity", "half"]])
def test_impossible_recipe(option, keras20, tmp_path, capsys):
    code, out, err = run_cli(["rewrite", keras20[0], "-o", tmp_path / "o.h5", *option], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("where", ["missing-dir", "under-a-file", "is-a-dir"])
def test_unwritable_destination(where, keras20, tmp_path, capsys):
    dst = {"missing-dir": tmp_path / "no" / "such" / "o.h5", "under-a-file": keras20[0] / "o.h5",
           "is-a-dir": tmp_path}[where]
    before = _sha(keras20[0])
    code, out, err = run_cli(["rewrite", keras20[0], "-o", dst, "--bits", "8"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _sha(keras20[0]) == before


def test_restore_refuses_unpacked(keras20, tmp_path, capsys):
    code, out, err = run_cli(["restore", keras20[0], "-o", tmp_path / "o.h5"], capsys)
    assert code != 0 and "not a packed file" in err


# ---- real Keras -------------------------------------------------------------------------------

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
@pytest.mark.parametrize("name", ["conv", "rnn"])
@pytest.mark.parametrize("fmt", ["h5", "keras", "weights.h5"])
def test_keras_loads_rewrites(name, fmt, km, saved, tmp_path, capsys):
    keras = _keras()
    model, paths, x = saved[name]
    src = paths[fmt]
    before = _sha(src)
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
        expected.set_weights(km.expected_weights(model, 4, "mse", storage))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the stripped optimizer state is reported as a warning
            loaded = _load(keras, km, name, fmt, dst)
        for got, want in zip(loaded.weights, expected.weights):
            assert_bit_equal(np.asarray(got.numpy()), np.asarray(want.numpy()), got.path)
        if predict:
            np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(expected(x)))
    assert _sha(src) == before


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
        expected.set_weights([w if i else reference.fake_quantize(w, 4, axis=axes[layer], method="mse")
                              for layer, ws in values.items() for i, w in enumerate(ws)])
        np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(expected(x)))


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


# ---- Keras 3 layouts written by h5py (no keras needed) ----------------------------------------------

@pytest.fixture
def keras3_zip(tmp_path):
    """A .keras archive with a Keras 3 weights file (no config names: roles from group names)."""
    rng = np.random.default_rng(3)
    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        for group, arrays in (("conv2d", [(3, 3, 2, 8), (8,)]), ("depthwise_conv2d", [(3, 3, 8, 1), (8,)]),
                              ("conv2d_transpose", [(3, 3, 4, 8), (4,)]), ("embedding", [(30, 8)])):
            g = f.create_group(f"layers/{group}/vars")
            for i, shape in enumerate(arrays):
                g.create_dataset(str(i), data=rng.standard_normal(shape).astype(np.float32))
        f.create_group("optimizer/vars").create_dataset("0", data=np.int64(3))
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        z.writestr(zipfile.ZipInfo("config.json"), '{"class_name": "Functional", "config": {"layers": []}}',
                   compress_type=zipfile.ZIP_DEFLATED)
        z.write(weights, "model.weights.h5")
    weights.unlink()
    return path


def test_keras3_roles_from_group_names(keras3_zip):
    infos = {i.path: i for i in wqkernels.inspect(keras3_zip)}
    assert infos["layers/depthwise_conv2d/vars/0"].layer_class == "DepthwiseConv2D"
    assert [i.path for i in infos.values() if i.prunable] == [
        "layers/conv2d/vars/0", "layers/conv2d_transpose/vars/0", "layers/depthwise_conv2d/vars/0",
        "layers/embedding/vars/0"]
    assert infos["optimizer/vars/0"].role == "optimizer"


def test_bare_weights_unnamed_layers_by_shape(tmp_path, capsys):
    # no config and names that say nothing: float tensors of 2+ axes are kernels, channels last
    src, dst = tmp_path / "bare.weights.h5", tmp_path / "int8.weights.h5"
    rng = np.random.default_rng(5)
    with h5py.File(src, "w") as f:
        for name, shapes in {"dense_2": [(32, 10), (10,)], "my_projection": [(64, 32), (32,)],
                             "block": [(3, 3, 8, 16)], "scales": [(16,), (16,)]}.items():
            for i, shape in enumerate(shapes):
                f[f"layers/{name}/vars/{i}"] = rng.normal(size=shape).astype(np.float32)
        f["layers/my_projection/vars/2"] = np.arange(6, dtype=np.int32).reshape(2, 3)
    infos = {i.path: i for i in wqkernels.inspect(src)}
    assert [p for p, i in infos.items() if i.prunable] == [
        "layers/block/vars/0", "layers/dense_2/vars/0", "layers/my_projection/vars/0"]
    assert infos["layers/my_projection/vars/0"].role_source == "shape"
    assert infos["layers/dense_2/vars/0"].role_source == "names"
    code, out, err = run_cli(["rewrite", src, "-o", dst, "--bits", "8", "--exclude", "*/block/*"], capsys)
    assert code == 0, err
    assert "shapes where no name says" in out and "taken for kernels" in out
    before, after = wqkernels.load_weights(src), wqkernels.load_weights(dst)
    assert_bit_equal(after["layers/my_projection/vars/0"],
                     reference.fake_quantize(before["layers/my_projection/vars/0"], 8, axis=1))
    for path in ("layers/block/vars/0", "layers/my_projection/vars/1", "layers/my_projection/vars/2",
                 "layers/scales/vars/0"):
        assert_bit_equal(after[path], before[path], path)


def test_keras3_zip_rewrite(keras3_zip, tmp_path):
    dst = tmp_path / "out.keras"
    report = wqkernels.rewrite(keras3_zip, dst, Recipe(bits=4, granularity="channel", strip_optimizer=True))
    assert "names" in report.role_source
    with zipfile.ZipFile(keras3_zip) as a, zipfile.ZipFile(dst) as b:
        assert [(i.filename, i.compress_type) for i in a.infolist()] == \
            [(i.filename, i.compress_type) for i in b.infolist()]
        for name in ("metadata.json", "config.json"):
            assert a.read(name) == b.read(name)
    before, after = wqkernels.load_weights(keras3_zip), wqkernels.load_weights(dst)
    assert "optimizer/vars/0" not in after
    for path, axis in (("layers/conv2d/vars/0", 3), ("layers/depthwise_conv2d/vars/0", 2),
                       ("layers/conv2d_transpose/vars/0", 2), ("layers/embedding/vars/0", 0)):
        assert_bit_equal(after[path], reference.fake_quantize(before[path], 4, axis=axis, method="mse"), path)
    assert_bit_equal(after["layers/conv2d/vars/1"], before["layers/conv2d/vars/1"])


def test_blocked_packed_keras3(keras3_zip, tmp_path):
    f32, packed = tmp_path / "f.keras", tmp_path / "p.keras"
    wqkernels.rewrite(keras3_zip, f32, Recipe(bits=4, granularity="block:8"))
    wqkernels.rewrite(keras3_zip, packed, Recipe(bits=4, granularity="block:8", storage="packed"))
    a, b = wqkernels.load_weights(f32), wqkernels.load_weights(packed)
    for k in a:
        assert_bit_equal(a[k], b[k], k)
    source = wqkernels.load_weights(keras3_zip)["layers/conv2d/vars/0"]
    expected = reference.fake_quantize(source.reshape(18, 8), 4, axis=0, block_size=8, method="mse")
    assert_bit_equal(a["layers/conv2d/vars/0"], expected.reshape(3, 3, 2, 8))


# ---- pruning and bit allocation (wqkernels.allocation, issue 5) ------------------------------------

def _allocation():
    return pytest.importorskip("wqkernels.allocation", reason="needs wqkernels.allocation (issue 5)")


def _kernels_of(path) -> dict:
    return {k: v for k, v in wqkernels.load_weights(path).items()
            if k.endswith(("kernel:0", "depthwise_kernel:0"))}


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_sparsity_goes_through_prune_model(allocation, keras20, tmp_path):
    alloc = _allocation()
    src = keras20[0]
    dst = tmp_path / "o.h5"
    report = wqkernels.rewrite(src, dst, Recipe(sparsity=0.5, allocation=allocation, min_size=0))
    before, after = _kernels_of(src), _kernels_of(dst)
    expected = alloc.prune_model(before, 0.5, allocation=allocation, min_size=0)
    for k in before:
        assert_bit_equal(after[k], expected[k], k)
    total = sum(v.size for v in before.values())
    assert report.sparsity == pytest.approx(int(0.5 * total) / total)


def test_sparsity_then_bits(keras20, tmp_path):
    alloc = _allocation()
    src = keras20[0]
    dst = tmp_path / "o.h5"
    wqkernels.rewrite(src, dst, Recipe(sparsity=0.5, bits=4))
    before, after = _kernels_of(src), _kernels_of(dst)
    pruned = alloc.prune_model(before, 0.5)
    axes = {"conv2d_1": 3, "depthwise_conv2d_1": 2, "dense_1": 1}
    for k in before:
        axis = axes[k.split("/")[1]]
        assert_bit_equal(after[k], reference.fake_quantize(pruned[k], 4, axis=axis, method="mse"), k)


def test_target_sqnr_chooses_bits_per_tensor(keras20, tmp_path, capsys):
    alloc = _allocation()
    src = keras20[0]
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "o.h5", "--target-sqnr", "25",
                              "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "r.json").read_text())["weights"]
    before = _kernels_of(src)
    axes = {"conv2d_1": 3, "depthwise_conv2d_1": 2, "dense_1": 1}
    for row in rows:
        axis = axes[row["path"].split("/")[1]]
        assert row["bits"] == alloc.bits_for_sqnr(before[row["path"]], 25, axis=axis)
        assert row["sqnr_db"] >= 25 or row["bits"] == 8


def test_nonfinite_weight_named(tmp_path, capsys):
    src = tmp_path / "nan.h5"
    k2.write_tfkeras_weights(src)
    with h5py.File(src, "a") as f:
        f["dense_1/dense_1/kernel:0"][0, 0] = np.nan
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "o.h5", "--bits", "8"], capsys)
    assert code != 0 and "dense_1/dense_1/kernel:0" in err and "NaN" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.h5").exists()


def _edit_index(group: h5py.Group, change) -> None:
    """Rewrite the index of a packed container with `change(index)` applied."""
    index = json.loads(zlib.decompress(group["index"][()].tobytes()))
    change(index)
    text = json.dumps(index).encode()
    del group["index"]
    group["index"] = np.frombuffer(zlib.compress(text), np.uint8)
    group.attrs["index_bytes"] = len(text)


def _assert_refused(packed, tmp_path, capsys) -> None:
    """inspect and restore of a damaged packed file fail with one line, leaving no output."""
    for command in (["inspect", packed], ["restore", packed, "-o", tmp_path / "r.h5"]):
        code, out, err = run_cli(command, capsys)
        assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.parametrize("damage", ["index-size", "offsets", "skeleton", "format", "version"])
def test_corrupt_packed_container(damage, keras20, tmp_path, capsys):
    packed = tmp_path / "p.h5"
    wqkernels.rewrite(keras20[0], packed, Recipe(bits=4, storage="packed"))
    with h5py.File(packed, "a") as f:
        g = f["wqkernels"]
        if damage == "index-size":
            g.attrs["index_bytes"] = 1 << 40
        elif damage == "format":
            g.attrs["format"] = "something else"
        elif damage == "version":
            g.attrs["version"] = 99
        elif damage == "skeleton":
            data = g["skeleton"][()]
            del g["skeleton"]
            g["skeleton"] = data[: len(data) // 2]
        else:
            _edit_index(g, lambda index: index["tensors"][0]["codes"].__setitem__(0, 10**9))
    _assert_refused(packed, tmp_path, capsys)


@pytest.mark.parametrize("compress", ["gzip", "lzf"])
def test_packed_compressed_restores_like_float32(compress, tmp_path):
    src = tmp_path / "big.h5"
    rng = np.random.default_rng(1)
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        kernel = rng.standard_normal((256, 512)).astype(np.float32)
        kernel[rng.random(kernel.shape) < 0.7] = 0  # as if pruned: the codes compress
        g.create_dataset("dense/kernel:0", data=kernel)
    recipe = dict(bits=3, compress=compress)  # 48 KiB of codes: large enough to compress
    wqkernels.rewrite(src, tmp_path / "f.h5", Recipe(**recipe))
    wqkernels.rewrite(src, tmp_path / "p.h5", Recipe(storage="packed", **recipe))
    wqkernels.restore(tmp_path / "p.h5", tmp_path / "r.h5")
    with h5py.File(tmp_path / "f.h5") as a, h5py.File(tmp_path / "r.h5") as b, h5py.File(tmp_path / "p.h5") as p:
        assert _tree(a) == _tree(b)
        assert b["dense/dense/kernel:0"].compression == compress
        assert_bit_equal(a["dense/dense/kernel:0"][()], b["dense/dense/kernel:0"][()])
        assert p["wqkernels/codes"].compression == compress
        assert p["wqkernels/scales"].compression is None  # 1 KiB: too small


def test_packed_dense_codes_stay_uncompressed(tmp_path):
    src = tmp_path / "big.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        g.create_dataset("dense/kernel:0", data=np.random.default_rng(2).standard_normal((256, 512)).astype(np.float32))
    wqkernels.rewrite(src, tmp_path / "p.h5", Recipe(bits=4, storage="packed", compress="gzip"))
    with h5py.File(tmp_path / "p.h5") as p:
        assert p["wqkernels/codes"].compression is None  # 4-bit codes of a Gaussian: nothing to gain
        assert p["wqkernels/codes"].chunks is None  # 64 KiB, under 1 MiB: contiguous, no chunk index


def _write_big_legacy(path) -> None:
    """A legacy full-model .h5 of three Dense layers with kernels of 1024x600 (70 % zeros, as if
    pruned) and Adam's state: two moments per kernel, the second chunked and gzip-compressed with
    an attribute, and the iteration count."""
    rng = np.random.default_rng(3)
    names = ["dense", "dense_1", "dense_2"]
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = b"2.4.0", b"tensorflow"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([n.encode() for n in names])
        opt = f.create_group("optimizer_weights")
        moments = []
        for name in names:
            kernel = rng.standard_normal((1024, 600)).astype(np.float32)
            kernel[rng.random(kernel.shape) < 0.7] = 0
            g = mw.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()])
            g.create_dataset(f"{name}/kernel:0", data=kernel)
            g.create_dataset(f"{name}/bias:0", data=rng.standard_normal(600).astype(np.float32))
            opt.create_dataset(f"Adam/{name}/kernel/m:0", data=kernel * 0.1)
            v = opt.create_dataset(f"Adam/{name}/kernel/v:0", data=kernel ** 2, chunks=(256, 600), compression="gzip")
            v.attrs["note"] = b"second moment"
            moments += [f"Adam/{name}/kernel/m:0", f"Adam/{name}/kernel/v:0"]
        opt.create_dataset("Adam/iterations:0", data=np.int64(7))
        opt.attrs["weight_names"] = np.array([n.encode() for n in ["Adam/iterations:0", *moments]])


@pytest.fixture
def big_legacy(tmp_path):
    path = tmp_path / "big.h5"
    _write_big_legacy(path)
    return path


#: int8 codes of two kernels (1.2 MiB: chunked); dense_2's kernel and the moments are kept aside
BIG_RECIPE = dict(bits=8, exclude=("*dense_2*",))


def _assert_same_weights(a, b) -> None:
    wa, wb = wqkernels.load_weights(a), wqkernels.load_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert_bit_equal(wa[k], wb[k], k)


@pytest.mark.parametrize("compress", ["none", "gzip", "lzf"])
def test_packed_large_datasets_kept_aside(compress, big_legacy, tmp_path):
    f32, packed, restored = (tmp_path / f"{n}.h5" for n in ("f32", "packed", "restored"))
    wqkernels.rewrite(big_legacy, f32, Recipe(compress=compress, **BIG_RECIPE))
    wqkernels.rewrite(big_legacy, packed, Recipe(storage="packed", compress=compress, **BIG_RECIPE))
    wqkernels.restore(packed, restored)
    with h5py.File(f32) as a, h5py.File(restored) as b:
        assert _tree(a) == _tree(b)  # filters, chunks and attributes of the kept datasets too
        a.visititems(lambda n, o: assert_bit_equal(o[()], b[n][()], n) if isinstance(o, h5py.Dataset) else None)
        assert b["optimizer_weights/Adam/dense/kernel/v:0"].chunks == (256, 600)
    _assert_same_weights(f32, packed)
    with h5py.File(packed) as p:
        g = p["wqkernels"]
        index = json.loads(zlib.decompress(g["index"][()].tobytes()))
        assert sorted(index["datasets"]) == ["model_weights/dense_2/dense_2/kernel:0"] + [
            f"optimizer_weights/Adam/{n}/kernel/{m}:0" for n in ("dense", "dense_1", "dense_2") for m in "mv"]
        assert set(g["datasets"]) == {str(k) for k in range(len(index["datasets"]))}
        assert index["skeleton_bytes"] < 64_000  # biases and placeholders only
        assert g["codes"].chunks is not None and g["codes"].size == 2 * 1024 * 600
        assert g["codes"].compression == (None if compress == "none" else compress)
        assert g["scales"].chunks is None
    infos = {i.path: i for i in wqkernels.inspect(packed)}
    assert infos["model_weights/dense/dense/kernel:0"].storage == "packed:8"
    assert infos["model_weights/dense_2/dense_2/kernel:0"].storage == "dataset"


def test_packed_source_with_kept_datasets_rewrites(big_legacy, tmp_path):
    packed, again, stripped, f32 = (tmp_path / f"{n}.h5" for n in ("packed", "again", "stripped", "f32"))
    wqkernels.rewrite(big_legacy, packed, Recipe(storage="packed", **BIG_RECIPE))
    wqkernels.rewrite(big_legacy, f32, Recipe(**BIG_RECIPE))
    wqkernels.rewrite(packed, again, Recipe(storage="packed", **BIG_RECIPE))  # on the grid: exact
    _assert_same_weights(packed, again)
    wqkernels.restore(again, tmp_path / "restored.h5")
    with h5py.File(f32) as a, h5py.File(tmp_path / "restored.h5") as b:
        assert _tree(a) == _tree(b)
    fewer = tmp_path / "fewer.h5"  # dense_1's codes dequantized: a large float32 dataset, kept aside
    wqkernels.rewrite(packed, fewer, Recipe(storage="packed", bits=8, exclude=("*dense_1*", "*dense_2*")))
    _assert_same_weights(packed, fewer)
    with h5py.File(fewer) as p:
        index = json.loads(zlib.decompress(p["wqkernels/index"][()].tobytes()))
        assert "model_weights/dense_1/dense_1/kernel:0" in index["datasets"]
    report = wqkernels.rewrite(packed, stripped, Recipe(storage="packed", bits=8, strip_optimizer=True))
    with h5py.File(stripped) as p:  # dense_2 quantized now; no optimizer state left to keep aside
        assert json.loads(zlib.decompress(p["wqkernels/index"][()].tobytes()))["datasets"] == []
        assert "datasets" not in p["wqkernels"]
    assert all(row.rewritten for row in report.rows)


def test_packed_arrays_written_in_chunks(keras20, tmp_path, monkeypatch):
    """Arrays beyond CHUNK_BYTES go to a growing chunked dataset, parts larger than a chunk too."""
    recipe = Recipe(bits=4, symmetric=False, storage="packed")  # zero points stored
    wqkernels.rewrite(keras20[0], tmp_path / "whole.h5", recipe)
    monkeypatch.setattr(importlib.import_module("wqkernels.files.packed"), "CHUNK_BYTES", 8)
    wqkernels.rewrite(keras20[0], tmp_path / "chunked.h5", recipe)
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "chunked.h5") as b:
        for name in ("codes", "scales", "zero_points"):
            assert a[f"wqkernels/{name}"].chunks is None and b[f"wqkernels/{name}"].chunks is not None
            assert_bit_equal(a[f"wqkernels/{name}"][()], b[f"wqkernels/{name}"][()], name)
    _assert_same_weights(tmp_path / "whole.h5", tmp_path / "chunked.h5")


@pytest.mark.parametrize("damage", ["missing", "shape", "soft-link", "quantized-path", "unknown-path", "twice"])
def test_corrupt_kept_datasets(damage, big_legacy, tmp_path, capsys):
    packed = tmp_path / "p.h5"
    wqkernels.rewrite(big_legacy, packed, Recipe(storage="packed", **BIG_RECIPE))
    with h5py.File(packed, "a") as f:
        g = f["wqkernels"]
        if damage == "missing":
            del g["datasets/0"]
        elif damage == "shape":
            del g["datasets/0"]
            g["datasets/0"] = np.zeros(3, np.float32)
        elif damage == "soft-link":
            del g["datasets/0"]
            g["datasets/0"] = h5py.SoftLink("/wqkernels/codes")
        elif damage == "quantized-path":
            _edit_index(g, lambda index: index["datasets"].__setitem__(0, index["tensors"][0]["path"]))
        elif damage == "unknown-path":
            _edit_index(g, lambda index: index["datasets"].__setitem__(0, "model_weights/nothing"))
        else:
            _edit_index(g, lambda index: index["datasets"].__setitem__(1, index["datasets"][0]))
    _assert_refused(packed, tmp_path, capsys)


def test_skeleton_dictionary_bounded_by_its_size():
    """xz preset 9 takes a 64 MiB dictionary (and ~670 MiB to compress) whatever the input; the
    skeleton's is only as large as the skeleton, at the same compression."""
    data = np.random.default_rng(0).integers(0, 16, 200_000, dtype=np.uint8).tobytes()
    packed = xz_compress(data)
    assert lzma.LZMADecompressor(memlimit=2 << 20).decompress(packed) == data  # a 256 KiB dictionary
    preset9 = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    with pytest.raises(lzma.LZMAError):
        lzma.LZMADecompressor(memlimit=2 << 20).decompress(preset9)
    assert len(packed) <= len(preset9) + 16


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
    """What batch rewriting (issue 6) relies on: a picklable call returning a picklable Report."""
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        report = pool.submit(wqkernels.rewrite, str(keras20[0]), str(tmp_path / "o.h5"), Recipe(bits=8)).result()
    assert report.destination == str(tmp_path / "o.h5") and len(report.rows) == 3
    assert_bit_equal(wqkernels.load_weights(tmp_path / "o.h5")["model_weights/dense_1/dense_1_1/kernel:0"],
                     reference.fake_quantize(keras20[1]["dense_1"][0], 8, axis=1))


def test_group_creation_order_kept(tmp_path):
    src = tmp_path / "ordered.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"zeta", b"alpha"])
        for name in ("zeta", "alpha"):
            g = f.create_group(name, track_order=True)
            g.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode()])
            g.create_dataset(f"{name}/kernel:0", data=np.ones((4, 4), np.float32))
            g.create_group("z_extra")
            g.create_group("a_extra")
    wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(bits=8))
    with h5py.File(tmp_path / "o.h5") as f:
        assert list(f["zeta"]) == ["zeta", "z_extra", "a_extra"]


def test_n_m_sparsity_along_the_input_axis(keras20, tmp_path, capsys):
    src = keras20[0]
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "d.h5", "--sparsity", "2:4"], capsys)
    assert code == 0, err
    before = _kernels_of(src)
    for k, v in _kernels_of(tmp_path / "d.h5").items():  # all under 1024 weights: dense by default
        assert_bit_equal(v, before[k], k)
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "o.h5", "--sparsity", "2:4", "--min-size", "0"], capsys)
    assert code == 0, err
    after = _kernels_of(tmp_path / "o.h5")
    views = {"conv2d_1": ((27, 4), 0), "depthwise_conv2d_1": ((9, 4), 0), "dense_1": ((64, 5), 0)}
    for k in before:
        view, axis = views[k.split("/")[1]]
        expected = reference.prune_n_m(before[k].reshape(view), n=2, m=4, axis=axis).reshape(before[k].shape)
        assert_bit_equal(after[k], expected, k)


def test_sparsity_counts_all_prunable_weights_when_min_size_is_given(keras20, tmp_path):
    src = keras20[0]
    wqkernels.rewrite(src, tmp_path / "o.h5", wqkernels.Recipe(sparsity=0.5, min_size=100))
    before, after = _kernels_of(src), _kernels_of(tmp_path / "o.h5")
    total = sum(v.size for v in before.values())
    assert sum(int((v == 0).sum()) for v in after.values()) == total // 2
    small = [k for k, v in before.items() if v.size < 100]
    assert small and all(np.array_equal(after[k], before[k]) for k in small)


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
