"""Rewriting a ~100 MB legacy .h5 (int8 per-channel, float32 storage, no compression) against
copying all its datasets with h5py (read all, write all): goal at most 2x.

Run: ``python -m pytest benchmarks/test_bench_files.py -s`` (prints the ratio), or run this file.
Both are timed in the same process, interleaved, best of `repeat`.
"""
from __future__ import annotations

import os
import tempfile
import time

import h5py
import numpy as np

import wqkernels

LAYERS = 24                 # Dense layers of (1024, 1024) plus a bias each: 24 * 4 MiB ~ 100 MB
SIDE = 1024


def make_legacy_h5(path: str, layers: int = LAYERS, side: int = SIDE, seed: int = 0) -> None:
    """A Keras 3-style legacy full-model .h5 of Dense layers (no model config needed)."""
    rng = np.random.default_rng(seed)
    names = [f"dense_{i}" for i in range(layers)]
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = "3.15.1", "jax"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = names
        for name in names:
            g = mw.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel", f"{name}/bias"]
            g.create_dataset(f"{name}/kernel", data=rng.standard_normal((side, side), dtype=np.float32))
            g.create_dataset(f"{name}/bias", data=rng.standard_normal(side, dtype=np.float32))


def copy_datasets(src: str, dst: str) -> None:
    """The baseline: read every dataset with h5py and write it to a new file."""
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                b.create_dataset(name, data=obj[()])
        a.visititems(visit)


def measure(directory: str, repeat: int = 3) -> dict:
    src = os.path.join(directory, "model.h5")
    make_legacy_h5(src)
    recipe = wqkernels.Recipe(bits=8, granularity="channel", storage="float32")
    times = {"copy": [], "rewrite": []}
    copy, int8 = os.path.join(directory, "copy.h5"), os.path.join(directory, "int8.h5")
    for _ in range(repeat):
        for name, fn in (("copy", lambda: copy_datasets(src, copy)),
                         ("rewrite", lambda: wqkernels.rewrite(src, int8, recipe))):
            for old in (copy, int8):  # both write a new file: freeing the old one is not timed
                if os.path.exists(old):
                    os.unlink(old)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    return {"size_mb": os.path.getsize(src) / 1e6, **best, "ratio": best["rewrite"] / best["copy"]}


def _print(result: dict) -> None:
    print(f"\nrewrite int8 per-channel of a {result['size_mb']:.0f} MB legacy .h5: "
          f"{result['rewrite']:.3f} s; h5py copy of all datasets: {result['copy']:.3f} s; "
          f"ratio {result['ratio']:.2f} (goal <= 2)")


def test_rewrite_vs_copy(tmp_path):
    result = measure(str(tmp_path))
    _print(result)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        _print(measure(tmp))
