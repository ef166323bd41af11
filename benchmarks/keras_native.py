"""Keras-native storage against Keras's own route, in one run: time, peak memory, loaded memory.

    python benchmarks/keras_native.py [--size-mb 400] [--dir DIR] [--markdown]

Two models are saved as ``.keras`` (float32): a stack of Dense layers of about ``--size-mb`` MB,
and an Embedding feeding EinsumDense projections (attention-shaped equations) of about the same
size.  Each is quantized to int8 and to int4 (blocks of 128, Keras's default) twice, each time in
a fresh process:

- wqkernels: ``rewrite(src, dst, Recipe(bits=B, storage="keras"[, granularity="block:128"]))``;
- Keras: ``load_model(src)``, ``model.quantize(mode)``, ``model.save(dst)``.

Reported per case: the seconds of the operation (imports excluded), the peak resident memory
of the process (imports included: ru_maxrss), whether the two files' variables are identical
byte for byte, and the memory of the loaded quantized model's variables against the float
model's.  The goals: wqkernels >= 5x faster, <= 1/4 of Keras's peak memory, loaded variables
<= 0.27x float32 for int8 and <= 0.15x for int4.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

MAKE = r"""
import os, sys, numpy as np
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras
kind, size_mb, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
if kind == "dense":
    width = 4096
    count = max(1, round(size_mb * 1e6 / (4 * width * width)))
    inp = keras.Input((width,))
    x = inp
    for i in range(count):
        x = keras.layers.Dense(width, name=f"dense{i}")(x)
else:
    dim, heads, head_dim = 1024, 16, 64
    vocab = int(size_mb * 1e6 / 2 / (4 * dim))
    count = max(1, round(size_mb * 1e6 / 2 / (4 * dim * heads * head_dim)))
    inp = keras.Input((16,), dtype="int32")
    x = keras.layers.Embedding(vocab, dim, name="emb")(inp)
    for i in range(count // 2):
        y = keras.layers.EinsumDense("abc,cde->abde", output_shape=(16, heads, head_dim), bias_axes="de",
                                     name=f"proj{i}")(x)
        x = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(16, dim), bias_axes="e", name=f"out{i}")(y)
model = keras.Model(inp, x)
for v in model.weights:
    v.assign((rng.standard_normal(v.shape, dtype=np.float32) * 0.02))
model.save(path)
print(sum(v.numpy().nbytes for v in model.weights))
"""

OURS = r"""
import resource, sys, time
import wqkernels
src, dst, bits, block = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
recipe = wqkernels.Recipe(bits=bits, storage="keras", granularity="channel" if block == "-" else f"block:{block}")
start = time.perf_counter()
wqkernels.rewrite(src, dst, recipe)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

KERAS = r"""
import os, resource, sys, time, warnings
os.environ.setdefault("KERAS_BACKEND", "jax")
warnings.simplefilter("ignore")
import keras
src, dst, bits, block = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
model = keras.saving.load_model(src)
if bits == 8:
    model.quantize("int8")
else:
    model.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=-1 if block == "-" else int(block)))
model.save(dst)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

LOADED = r"""
import os, sys, warnings
os.environ.setdefault("KERAS_BACKEND", "jax")
warnings.simplefilter("ignore")
import keras
model = keras.saving.load_model(sys.argv[1])
print(sum(v.numpy().nbytes for v in model.weights))
"""


def _run(script: str, *args) -> list[float]:
    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True, capture_output=True,
                         text=True, env=env).stdout.split()
    return [float(v) for v in out]


def _variables(path: str) -> str:
    """A digest of every variable of a .keras file (names, dtypes, shapes, bytes)."""
    import h5py
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as z, h5py.File(z.open("model.weights.h5")) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                digest.update(f"{name} {obj.dtype} {obj.shape}".encode())
                digest.update(obj[()].tobytes())
        f.visititems(visit)
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=400)
    parser.add_argument("--dir", help="where to put the models (default: a temporary directory)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    tmp = None if args.dir else tempfile.TemporaryDirectory()
    directory = args.dir or tmp.name
    os.makedirs(directory, exist_ok=True)
    rows = []
    for kind in ("dense", "embedding"):
        src = os.path.join(directory, f"{kind}.keras")
        float_bytes = _run(MAKE, kind, args.size_mb, src)[0]
        for bits, block in ((8, "-"), (4, "128")):
            ours, theirs = os.path.join(directory, f"{kind}-{bits}-ours.keras"), os.path.join(directory, f"{kind}-{bits}-keras.keras")
            t_ours, rss_ours = _run(OURS, src, ours, bits, block)
            t_keras, rss_keras = _run(KERAS, src, theirs, bits, block)
            loaded = _run(LOADED, ours)[0]
            rows.append({"model": kind, "mode": "int8" if bits == 8 else f"int4/{block}",
                         "float_mb": float_bytes / 1e6, "ours_s": t_ours, "keras_s": t_keras,
                         "speedup": t_keras / t_ours, "ours_rss_mib": rss_ours / 2**20,
                         "keras_rss_mib": rss_keras / 2**20, "rss_ratio": rss_ours / rss_keras,
                         "loaded_ratio": loaded / float_bytes, "identical": _variables(ours) == _variables(theirs)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    head = ("model", "mode", "float32 MB", "wqkernels s", "Keras s", "speed-up", "wqkernels peak MiB",
            "Keras peak MiB", "peak ratio", "loaded vars / float32", "identical variables")
    lines = [(r["model"], r["mode"], f"{r['float_mb']:.0f}", f"{r['ours_s']:.2f}", f"{r['keras_s']:.2f}",
              f"{r['speedup']:.1f}x", f"{r['ours_rss_mib']:.0f}", f"{r['keras_rss_mib']:.0f}",
              f"{r['rss_ratio']:.2f}", f"{r['loaded_ratio']:.3f}", "yes" if r["identical"] else "NO") for r in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
        for line in (head, *lines):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
