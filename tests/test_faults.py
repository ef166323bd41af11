"""Faults of the machine: full disks, signals, killed processes, concurrent writers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest


def write_big_legacy(path, layers: int = 6) -> None:
    """A legacy .h5 of `layers` Dense layers of 256x512 (3 MB)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        mw = f.create_group("model_weights")
        names = [f"dense_{i}" for i in range(layers)]
        mw.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in names:
            g = mw.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}/kernel:0".encode(), f"{n}/bias:0".encode()])
            g[f"{n}/kernel:0"] = rng.standard_normal((256, 512)).astype(np.float32)
            g[f"{n}/bias:0"] = rng.standard_normal(512).astype(np.float32)


def cli(*args, limit_bytes: int | None = None, **popen) -> subprocess.CompletedProcess:
    """The command line in a fresh interpreter; with `limit_bytes`, files it writes may not grow
    beyond that (RLIMIT_FSIZE: the write fails with EFBIG, as on a full disk with ENOSPC)."""
    # the limit is set by the child itself: a preexec_fn would fork this process, which JAX
    # (imported by other tests) warns against
    start = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); "
             "sys.argv = ['wqkernels', *sys.argv[1:]]; runpy.run_module('wqkernels', run_name='__main__')")
    command = ["-c", start] if limit_bytes else ["-m", "wqkernels"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120, **popen)


@pytest.mark.parametrize("options", [["--compress", "gzip"], ["--storage", "packed"],
                                     ["--storage", "packed", "--compress", "gzip"], [],
                                     ["--storage", "float16", "--compress", "lzf"]])
@pytest.mark.parametrize("limit", [60_000, 300_000, 1_000_000])
def test_write_refused_by_the_file_system_is_one_line(options, limit, tmp_path):
    """A full disk while writing a gzip or packed output printed the error, then segfaulted in
    HDF5's clean-up (it does not recover from a failed write); now one line, nothing left."""
    src = tmp_path / "big.h5"
    write_big_legacy(src)
    out = tmp_path / "out"
    out.mkdir()
    done = cli("rewrite", src, "-o", out / "o.h5", "--bits", "4", *options, limit_bytes=limit)
    assert done.returncode in (0, 1), done.stderr
    if done.returncode == 1:
        assert done.stderr == f"wqkernels rewrite: error: {out / 'o.h5'}: cannot write (File too large)\n"
        assert os.listdir(out) == []
    else:
        assert done.stderr == "" and os.listdir(out) == ["o.h5"]


def test_keras_archive_refused_write_is_one_line(tmp_path):
    import zipfile
    weights = tmp_path / "w.h5"
    with h5py.File(weights, "w") as f:
        f["layers/dense/vars/0"] = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    src = tmp_path / "m.keras"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("config.json", "{}")
        z.write(weights, "model.weights.h5")
    out = tmp_path / "out"
    out.mkdir()
    done = cli("rewrite", src, "-o", out / "o.keras", "--bits", "4", limit_bytes=200_000)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"m.keras: cannot extract model.weights.h5 into {out} (File too large)" in done.stderr
    assert os.listdir(out) == []
