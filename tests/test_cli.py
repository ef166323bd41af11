"""Bad input on the command line: one line on stderr, a non-zero status, nothing written."""
from __future__ import annotations

import json
import os
import zipfile

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import reference

from .helpers import assert_bit_equal, listing, run_cli, sha256_of


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
    before = sha256_of(src) if src.is_file() else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [command, src] + ([] if command == "inspect" else ["-o", out_dir / "o.h5"])
    if command == "rewrite":
        args += ["--bits", "8"]
    code, out, err = run_cli(args, capsys)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and str(src.name) in err
    assert listing(out_dir) == set()
    if before is not None:
        assert sha256_of(src) == before


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
    before = sha256_of(keras20[0])
    code, out, err = run_cli(["rewrite", keras20[0], "-o", dst, "--bits", "8"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sha256_of(keras20[0]) == before


def test_restore_refuses_unpacked(keras20, tmp_path, capsys):
    code, out, err = run_cli(["restore", keras20[0], "-o", tmp_path / "o.h5"], capsys)
    assert code != 0 and "not a packed file" in err


@pytest.mark.parametrize("flag,signed", [(None, False), ("--symmetric", True), ("--asymmetric", False)])
def test_symmetric_and_asymmetric_grids(flag, signed, keras20, tmp_path, capsys):
    out = tmp_path / "out.h5"
    code, _, err = run_cli(["rewrite", keras20[0], "-o", out, "--bits", "3", "--method", "minmax",
                            "--granularity", "tensor", *([flag] if flag else [])], capsys)
    assert code == 0, err
    for path, w in wqkernels.load_weights(out).items():
        if path.endswith("dense_1_1/kernel:0"):
            levels = np.unique(w)
            codes = levels / np.abs(levels[levels != 0]).min()  # symmetric: whole steps from -3 to 3
            symmetric_grid = np.allclose(codes, np.round(codes), atol=1e-4) and np.abs(codes).max() <= 3 + 1e-4
            assert symmetric_grid if signed else (len(levels) == 8 and not symmetric_grid)


@pytest.mark.parametrize("flag,symmetric", [(None, False), ("--symmetric", True), ("--asymmetric", False)])
def test_grid_flags_write_what_the_recipe_says(flag, symmetric, keras20, tmp_path, capsys):
    out = tmp_path / "out.h5"
    code, _, err = run_cli(["rewrite", keras20[0], "-o", out, "--bits", "2", *([flag] if flag else [])], capsys)
    assert code == 0, err
    method = "mse" if symmetric else "minmax"  # the default method: mse for symmetric 2-bit grids only
    assert_bit_equal(wqkernels.load_weights(out)["model_weights/dense_1/dense_1_1/kernel:0"],
                     reference.fake_quantize(keras20[1]["dense_1"][0], 2, axis=1, symmetric=symmetric,
                                             method=method, rounding="sum"))


@pytest.mark.parametrize("flag,rounding", [(None, "sum"), ("sum", "sum"), ("nearest", "nearest")])
def test_rounding_flag_writes_what_the_recipe_says(flag, rounding, keras20, tmp_path, capsys):
    out = tmp_path / "out.h5"
    code, _, err = run_cli(["rewrite", keras20[0], "-o", out, "--bits", "3",
                            *(["--rounding", flag] if flag else [])], capsys)
    assert code == 0, err
    assert_bit_equal(wqkernels.load_weights(out)["model_weights/dense_1/dense_1_1/kernel:0"],
                     reference.fake_quantize(keras20[1]["dense_1"][0], 3, axis=1, symmetric=False,
                                             rounding=rounding))


def test_keras_storage_is_symmetric(keras20, tmp_path, capsys):
    code, _, err = run_cli(["rewrite", keras20[0], "-o", tmp_path / "o.h5", "--bits", "8", "--storage", "keras",
                            "--asymmetric"], capsys)
    assert code == 2 and err.count("\n") == 1 and "symmetric=False does not apply" in err, err


def test_symmetric_excludes_asymmetric(keras20, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(["rewrite", keras20[0], "-o", tmp_path / "o.h5", "--bits", "4", "--symmetric", "--asymmetric"],
                capsys)
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("flag,narrow", [(None, 4), ("0", 2), ("1", 3)])
def test_narrow_bits_flag(flag, narrow, keras3_zip, tmp_path, capsys):
    """At --bits 2 the 3x3 depthwise kernel (9 weights per output channel) gets --narrow-bits more
    (2 by default); the 3x3x2 convolution (18 per channel) keeps 2."""
    report = tmp_path / "r.json"
    code, _, err = run_cli(["rewrite", keras3_zip, "-o", tmp_path / "o.keras", "--bits", "2", "--report", report,
                            *(["--narrow-bits", flag] if flag else [])], capsys)
    assert code == 0, err
    bits = {r["path"]: r["bits"] for r in json.loads(report.read_text())["weights"]}
    assert bits["layers/depthwise_conv2d/vars/0"] == narrow and bits["layers/conv2d/vars/0"] == 2


def test_bad_narrow_bits_flag(keras3_zip, tmp_path, capsys):
    code, _, err = run_cli(["rewrite", keras3_zip, "-o", tmp_path / "o.keras", "--bits", "2", "--narrow-bits", "9"],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "narrow_bits" in err, err
