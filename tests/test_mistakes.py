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
    ("h5", "x", ".h5"), ("keras", "x.KERAS", ".keras"), ("h5", "x.H5", ".h5"),
    ("weights.h5", "x.Weights.h5", ".weights.h5"),
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


def test_narrow_kernels_given_more_bits_say_so(files, tmp_path, capsys):
    """A model whose kernels are all narrow (16 weights per output channel here) is summed up as
    6.00 bits/weight at --bits 4: the summary says which kernels the narrow rule widened."""
    code, out, err = run_cli(["rewrite", files["weights.h5"], "-o", tmp_path / "o.weights.h5", "--bits", "4",
                              "--storage", "packed"], capsys)
    assert code == 0 and "6.00 bits/weight" in out
    note = ("note: 1 narrow kernel (at most 16 weights per output channel) at 6 bits, not 4: dense; "
            "--narrow-bits 0 keeps them at 4")
    assert note in out.splitlines()
    for recipe in (Recipe(bits=4, narrow_bits=0), Recipe(bits=8), Recipe(target_sqnr=30)):
        report = wqkernels.rewrite(files["weights.h5"], tmp_path / "p.weights.h5", recipe)
        assert not [n for n in report.notes if "narrow" in n], (recipe, report.notes)


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
        "weight 'dense_1/dense_1/kernel:0': 1 value of this float64 weight overflows float32, the first 1e+300 at "
        "index (1, 2)"), err


@pytest.mark.parametrize("value,refused", [(65519.0, False), (65520.0, True), (-1e6, True)])
def test_float16_storage_beyond_its_range_says_it_overflows(value, refused, tmp_path, recwarn):
    """float16 stores 65520 and beyond as infinity: an error naming the value, not an infinity
    found afterwards in the stored values after a RuntimeWarning of the cast."""
    src = tmp_path / "big.h5"
    k2.write_tfkeras_weights(src)
    with h5py.File(src, "a") as f:
        f["dense_1/dense_1/kernel:0"][1, 2] = value
    if not refused:
        wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(storage="float16"))
        assert np.isfinite(wqkernels.load_weights(tmp_path / "o.h5")["dense_1/dense_1/kernel:0"]).all()
    else:
        with pytest.raises(KerasFileError) as info:
            wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(storage="float16"))
        assert str(info.value).endswith(
            f"weight 'dense_1/dense_1/kernel:0': 1 value of this weight overflows float16 (largest 65504), "
            f"the first {value!r} at index (1, 2); store it as float32"), str(info.value)
        assert not (tmp_path / "o.h5").exists()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_nan_printed_as_the_readme_shows():
    with pytest.raises(ValueError, match=r"the first is nan at index \(1,\)"):
        wqkernels.quantize(np.array([1.0, np.nan], np.float32), 8)


# ---- the command line ---------------------------------------------------------------------------

def test_abbreviated_option_refused_with_the_closest(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["rewrite", str(files["h5"]), "-o", str(tmp_path / "o.h5"), "--bit", "8"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "unrecognized arguments: --bit 8 (did you mean --bits?)" in err
    assert not (tmp_path / "o.h5").exists()


def test_argparse_errors_are_one_line(files, tmp_path, capsys):
    for args in (["rewrite", str(files["h5"]), "--bits", "3"], ["rewrite", str(files["h5"]), "-o", "x.h5", "--storage",
                                                                 "int3"], ["frobnicate"]):
        with pytest.raises(SystemExit):
            main(args)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("wqkernels") and "error: " in err, err


def test_directory_with_output_points_to_out_dir(tmp_path, capsys):
    code, out, err = run_cli(["rewrite", tmp_path, "-o", tmp_path / "x.h5", "--bits", "8"], capsys)
    assert code == 2 and "is a directory; rewrite the files in it with --out-dir DIR" in err


def test_quiet_single_file(files, tmp_path, capsys):
    code, out, err = run_cli(["rewrite", files["h5"], "-o", tmp_path / "o.h5", "--bits", "8", "--quiet"], capsys)
    # no progress bar and no per-weight table: the totals only
    assert code == 0 and err == "" and (tmp_path / "o.h5").exists()
    assert "size " in out and "weight " not in out and len(out.splitlines()) <= 3, out


@pytest.mark.parametrize("name,kind", [("model.pt", "PyTorch"), ("model.onnx", "ONNX"), ("torch.bin", "PyTorch")])
def test_other_frameworks_named(name, kind, tmp_path, capsys):
    path = tmp_path / name
    if name.endswith(".onnx"):
        path.write_bytes(b"\x08\x07\x12\x04onnx")
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02")
            z.writestr("archive/version", "3")
    code, out, err = run_cli(["inspect", path], capsys)
    assert code == 1 and err == f"wqkernels inspect: error: {path}: {kind} files are not supported (wqkernels reads " \
                                f"Keras .h5, .weights.h5 and .keras files)\n"


def test_names_with_newlines_and_escapes_stay_on_one_line(tmp_path, capsys):
    missing = tmp_path / "bad\nname\x1b[31m.h5"
    code, out, err = run_cli(["inspect", missing], capsys)
    assert code == 1 and err.count("\n") == 1 and "\x1b" not in err and "bad\\nname\\x1b[31m.h5" in err
    src = tmp_path / "escapes.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense\x1b]0;owned\x07"])
        g = f.create_group("dense\x1b]0;owned\x07")
        g.attrs["weight_names"] = np.array([b"dense\x1b]0;owned\x07/kernel:0"])
        g["dense\x1b]0;owned\x07/kernel:0"] = np.ones((4, 4), np.float32)
    code, out, err = run_cli(["inspect", src], capsys)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "dense\\x1b]0;owned\\x07" in out


def test_names_in_summaries_and_notes_are_escaped(files, tmp_path, capsys):
    """The lines around the tables (source -> destination, notes naming layers, compare's and a
    batch's totals and failures) escape names as the cells do: a file named with a newline or a
    terminal escape printed them raw, breaking the line or driving the terminal."""
    src = tmp_path / "m\nname\x1b[2J.h5"
    src.write_bytes(files["h5"].read_bytes())
    dst = tmp_path / "o\x1b]0;owned\x07.h5"
    commands = [["rewrite", src, "-o", dst, "--bits", "4"], ["rewrite", src, "-o", tmp_path / "same.h5"],
                ["compare", src, dst]]
    batch = tmp_path / "in"
    batch.mkdir()
    (batch / "bad\x1b[31m.h5").write_bytes(b"not a model")
    commands.append(["rewrite", batch, "--out-dir", tmp_path / "out", "--bits", "8", "--workers", "1"])
    for command in commands:
        code, out, err = run_cli(command, capsys)
        assert code in (0, 1) and not set("\x1b\x07") & set(out + err), (command, out, err)
        assert "m\\nname\\x1b[2J.h5" in out or "bad\\x1b[31m.h5" in out, out
        assert not [line for line in out.splitlines() if line.startswith(("name", ".h5"))], out


def test_weights_listed_in_index_order(tmp_path):
    src = tmp_path / "order.weights.h5"
    with h5py.File(src, "w") as f:
        for i in range(12):
            f[f"layers/dense/vars/{i}"] = np.ones((2, 2), np.float32)
        for k in (10, 2, 1):
            f[f"layers/dense_{k}/vars/0"] = np.ones((2, 2), np.float32)
    assert [i.path for i in wqkernels.inspect(src)] == [f"layers/dense/vars/{i}" for i in range(12)] + [
        f"layers/dense_{k}/vars/0" for k in (1, 2, 10)]


def test_inspect_into_a_closed_pipe_ends_quietly(files):
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    command = f"{sys.executable} -m wqkernels inspect {files['h5']} | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env)
    assert done.stdout.startswith("weight") and done.stderr == ""


def test_bench_only_matches_substrings_or_says_nothing_matched(capsys):
    code, out, err = run_cli(["bench", "--only", "prune sparsity", "--size", "1000", "--repeat", "1"], capsys)
    assert code == 0 and "prune sparsity 0.7" in out, err
    code, out, err = run_cli(["bench", "--only", "nothing like it", "--size", "1000", "--repeat", "1"], capsys)
    assert code == 1 and "no benchmark case matches 'nothing like it'; the cases: " in err and err.count("\n") == 1


def test_keras_archive_without_its_config_is_rewritten_for_load_weights(files, tmp_path, capsys):
    """An archive without config.json is no model keras.saving.load_model loads, but
    ``model.load_weights`` reads its weights: the rewrite is such an archive too, and says that
    the roles come from names (no model config)."""
    src, dst = tmp_path / "noconfig.keras", tmp_path / "o.keras"
    with zipfile.ZipFile(src, "w") as z:
        z.write(files["weights.h5"], "model.weights.h5")
    code, out, err = run_cli(["rewrite", src, "--bits", "4", "-o", dst], capsys)
    assert code == 0 and "no model config" in out + err, err
    with zipfile.ZipFile(dst) as z:
        assert z.namelist() == ["model.weights.h5"]
    assert wqkernels.load_weights(dst).keys() == wqkernels.load_weights(src).keys()
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="dense")])
    model.load_weights(dst)
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel), wqkernels.load_weights(dst)["layers/dense/vars/0"])


def test_keras_archive_without_metadata_is_rewritten(files, tmp_path):
    src = tmp_path / "nometa.keras"
    with zipfile.ZipFile(files["keras"]) as a, zipfile.ZipFile(src, "w") as z:
        for name in ("config.json", "model.weights.h5"):
            z.writestr(name, a.read(name))
    wqkernels.rewrite(src, tmp_path / "o.keras", Recipe(bits=8))
    with zipfile.ZipFile(tmp_path / "o.keras") as z:
        assert sorted(z.namelist()) == ["config.json", "model.weights.h5"]


@pytest.mark.parametrize("names", [(0, 2), (1, 2), (0, 1, 3)])
def test_variables_not_numbered_from_zero_in_order_are_refused(names, tmp_path, capsys):
    """Roles are read off a variable's index and Keras reads indices 0 to n-1: a renamed or
    missing variable would make a bias a kernel."""
    src = tmp_path / "gap.weights.h5"
    with h5py.File(src, "w") as f:
        for i in names:
            f[f"layers/dense/vars/{i}"] = np.ones((4, 4) if i == names[0] else 4, np.float32)
    for args in (["inspect", str(src)], ["rewrite", str(src), "-o", str(tmp_path / "o.weights.h5"), "--bits", "8"]):
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert "'layers/dense/vars' has no variable" in err and "refused" in err and "\n" not in err
    assert not (tmp_path / "o.weights.h5").exists()
