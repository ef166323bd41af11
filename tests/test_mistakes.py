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
