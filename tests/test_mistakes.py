"""User mistakes: output names of another format, recipes that change nothing, options and
messages of the command line."""
from __future__ import annotations

import os
import sys
import zipfile

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import KerasFileError, Recipe
from wqkernels.cli import main

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
import make_keras2_files as k2  # noqa: E402


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def files(tmp_path):
    """One source of each format: legacy .h5, Keras 3 .weights.h5, .keras."""
    legacy = tmp_path / "legacy.h5"
    k2.write_keras20_full(legacy)
    keras3 = tmp_path / "k3.weights.h5"
    with h5py.File(keras3, "w") as f:
        f["layers/dense/vars/0"] = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
        f["layers/dense/vars/1"] = np.zeros(8, np.float32)
    archive = tmp_path / "m.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", '{"class_name": "Functional", "config": {"layers": []}}')
        z.write(keras3, "model.weights.h5")
    return {"h5": legacy, "weights.h5": keras3, "keras": archive}


@pytest.mark.parametrize("source,name,expected", [
    ("keras", "out.h5", ".keras"), ("h5", "out.keras", ".h5"), ("keras", "x.weights.h5", ".keras"),
    ("keras", "x.onnx", ".keras"), ("weights.h5", "x.h5", ".weights.h5"), ("h5", "x.weights.h5", ".h5"),
    ("h5", "x", ".h5"),
])
def test_output_named_for_another_format_is_refused_before_any_work(source, name, expected, files, tmp_path,
                                                                    capsys):
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run_cli(["rewrite", files[source], "-o", out / name, "--bits", "8"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"name it {expected}" in err and str(out / name) in err
    assert os.listdir(out) == []


@pytest.mark.parametrize("source,name", [("h5", "o.hdf5"), ("h5", "o.h5"), ("weights.h5", "o.weights.h5"),
                                         ("keras", "o.keras")])
def test_output_named_for_its_format_is_written(source, name, files, tmp_path):
    wqkernels.rewrite(files[source], tmp_path / name, Recipe(bits=8))
    assert os.path.getsize(tmp_path / name) > 0


def test_unusual_name_kept_when_the_source_has_it(files, tmp_path):
    """A source named .bin writes a .bin (batch outputs keep their source's name)."""
    src = tmp_path / "model.bin"
    src.write_bytes(files["h5"].read_bytes())
    wqkernels.rewrite(src, tmp_path / "out.bin", Recipe(bits=8))
    with pytest.raises(KerasFileError, match="name it .h5"):
        wqkernels.rewrite(src, tmp_path / "out.keras", Recipe(bits=8))


@pytest.mark.parametrize("args,why", [
    ([], "the recipe changes no weight"),
    (["--bits", "8", "--include", "nothing*"], "no prunable weight matches --include/--exclude"),
    (["--bits", "8", "--min-size", "100000"], "every prunable weight is under --min-size 100000"),
])
def test_recipe_that_changes_nothing_says_so(args, why, files, tmp_path, capsys):
    code, out, err = run_cli(["rewrite", files["h5"], "-o", tmp_path / "o.h5", *args], capsys)
    assert code == 0
    assert err.startswith(f"wqkernels rewrite: note: nothing rewritten: {why}") and len(err.splitlines()) == 1
    assert f"note: nothing rewritten: {why}" in out
    report = wqkernels.rewrite(files["h5"], tmp_path / "o2.h5", Recipe(**({"bits": 8} if args else {})))
    assert any(n.startswith("nothing rewritten") for n in report.notes) == (not args)


def test_restore_is_not_nothing(files, tmp_path, capsys):
    wqkernels.rewrite(files["h5"], tmp_path / "p.h5", Recipe(bits=4, storage="packed"))
    code, out, err = run_cli(["restore", tmp_path / "p.h5", "-o", tmp_path / "r.h5"], capsys)
    assert code == 0 and err == ""


# ---- odd but valid arguments, and what the errors say --------------------------------------

@pytest.mark.parametrize("class_name", [[1], 3, {"a": 1}, None, 2.5])
def test_non_string_class_name_in_config(class_name, tmp_path):
    """A layer config naming its class with a list, int or dict: roles fall back to the names."""
    weights = tmp_path / "w.weights.h5"
    with h5py.File(weights, "w") as f:
        g = f.create_group("layers/conv2d/vars")
        g.attrs["name"] = "conv2d"
        g["0"] = np.random.default_rng(0).standard_normal((3, 3, 2, 8)).astype(np.float32)
    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": class_name, "config": {"name": "conv2d"}},
        {"class_name": "Sequential", "config": {"name": "sub", "layers": [{"class_name": class_name}]}}]}}
    src = tmp_path / "m.keras"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("config.json", __import__("json").dumps(config))
        z.write(weights, "model.weights.h5")
    (info,) = wqkernels.inspect(src)
    assert info.layer_class == "Conv2D" and info.role_source == "names" and info.prunable
    wqkernels.rewrite(src, tmp_path / "o.keras", Recipe(bits=8))


@pytest.mark.parametrize("size", [2**63, 2**63 - 1, 2**40, 10**30])
def test_huge_block_is_one_block_per_channel(size, files, tmp_path):
    wqkernels.rewrite(files["h5"], tmp_path / "huge.h5", Recipe(bits=4, granularity=f"block:{size}"))
    wqkernels.rewrite(files["h5"], tmp_path / "axis.h5", Recipe(bits=4, granularity="block:100000"))
    a, b = wqkernels.load_weights(tmp_path / "huge.h5"), wqkernels.load_weights(tmp_path / "axis.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["bytes", "pathlike"])
def test_bytes_and_pathlike_paths(kind, files, tmp_path):
    import pathlib

    def as_kind(p):
        return os.fsencode(str(p)) if kind == "bytes" else pathlib.PurePath(p)
    for name in ("h5", "keras"):
        assert [i.path for i in wqkernels.inspect(as_kind(files[name]))] == \
            [i.path for i in wqkernels.inspect(str(files[name]))]
        out = tmp_path / f"o.{name}"
        wqkernels.rewrite(as_kind(files[name]), as_kind(out), Recipe(bits=8))
        assert out.exists()
    with pytest.raises(TypeError, match=r"path must be a file path \(str, bytes or os.PathLike\), got int"):
        wqkernels.inspect(3)


@pytest.fixture
def nan_file(tmp_path):
    src = tmp_path / "nan.h5"
    k2.write_tfkeras_weights(src)
    with h5py.File(src, "a") as f:
        f["dense_1/dense_1/kernel:0"][0, 0] = np.nan
    return src


@pytest.mark.parametrize("recipe", [["--bits", "8"], ["--sparsity", "0.5"], ["--sparsity", "0.5", "--allocation",
                                    "uniform"], ["--storage", "float16"], ["--sparsity", "2:4", "--min-size", "0"],
                                    ["--target-sqnr", "20"]])
def test_nonfinite_error_names_file_and_weight_for_every_recipe(recipe, nan_file, tmp_path, capsys):
    code, out, err = run_cli(["rewrite", nan_file, "-o", tmp_path / "o.h5", *recipe], capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"{nan_file}: weight 'dense_1/dense_1/kernel:0': " in err and "NaN or infinite" in err
    assert "np.float32" not in err and not (tmp_path / "o.h5").exists()


def test_float64_beyond_float32_says_it_overflows(tmp_path, capsys):
    src = tmp_path / "f64.h5"
    k2.write_tfkeras_weights(src)
    with h5py.File(src, "a") as f:
        data = f["dense_1/dense_1/kernel:0"][()].astype(np.float64)
        data[1, 2] = 1e300
        del f["dense_1/dense_1/kernel:0"]
        f["dense_1/dense_1/kernel:0"] = data
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "o.h5", "--bits", "8"], capsys)
    assert code == 1 and err.strip().endswith(
        "weight 'dense_1/dense_1/kernel:0': 1 value of this float64 weight overflow float32, the first 1e+300 at "
        "index (1, 2)"), err


def test_nan_printed_as_the_readme_shows():
    with pytest.raises(ValueError, match=r"the first is nan at index \(1,\)"):
        wqkernels.quantize(np.array([1.0, np.nan], np.float32), 8)
