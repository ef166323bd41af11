"""The file layer at its two extremes.

- few large weights: rewriting a ~100 MB legacy .h5 (int8 per-channel, float32 storage, no
  compression) against copying all its datasets with h5py (read all, write all): goal at most
  1.25x.  Both are timed in the same process, interleaved, best of `repeat`.
- many tiny weights: models of 500 to 50,000 Dense(4) layers (a 4x4 kernel and a bias each: 1,000
  to 100,000 weights) as a legacy .h5, a Keras 3 .weights.h5 and a .keras archive; the command
  line's `inspect`, `rewrite --bits 8`, `rewrite --bits 8 --storage packed` and `restore` of the
  packed file, each in a fresh process: wall time and peak resident memory.  Goal: 100,000
  weights in at most ~5 s each, memory far below a gigabyte.

The floor under the tiny weights: the same HDF5 calls through h5py's low-level API alone (visit,
open, read, create, copy), nothing checked (``measure_floor``).

Run: ``python -m pytest benchmarks/test_bench_files.py -s`` (prints the figures), or run this
file (``python benchmarks/test_bench_files.py tiny 1000 10000 100000`` for the tiny weights only,
``... floor 100000`` for the floor; ``TINY_BUILDS="before=old/src,after=new/src"`` runs each
command by two builds in turn, ``TINY_REPEAT=2`` keeps the best of two runs each).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

import h5py
import numpy as np

import wqkernels

LAYERS = 24                 # Dense layers of (1024, 1024) plus a bias each: 24 * 4 MiB ~ 100 MB
SIDE = 1024


def make_legacy_h5(path: str, layers: int = LAYERS, side: int = SIDE, seed: int = 0) -> None:
    """A Keras 3-style legacy full-model .h5 of Dense layers (no model config needed)."""
    rng = np.random.default_rng(seed)
    names = tiny_names(layers)
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
          f"ratio {result['ratio']:.2f} (goal <= 1.25)")


def test_rewrite_vs_copy(tmp_path):
    result = measure(str(tmp_path))
    _print(result)


# ---- many tiny weights ------------------------------------------------------------------------

#: the formats of the tiny models: file name ending -> writer
TINY_FORMATS = (".h5", ".weights.h5", ".keras")
#: each Dense layer of a tiny model: UNITS inputs and outputs (a 4x4 kernel, a bias of 4)
UNITS = 4


def _names_attr(obj, name: str, values: list) -> None:
    """A list attribute as Keras writes it: one when it fits an object header, else split into
    ``name0``, ``name1``, ... of fixed-length bytes (the split of ``h5tree.split_name_list``)."""
    data = np.asarray([v.encode() for v in values])
    if data.nbytes <= 64000:
        obj.attrs[name] = values
        return
    chunks = -(-data.nbytes // 64000)
    for k, part in enumerate(np.array_split(data, chunks)):
        obj.attrs[f"{name}{k}"] = part


_POLICY = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _dense_config(name: str) -> dict:
    """A Dense layer's entry in a Keras 3 model config, as Keras writes it."""
    return {"module": "keras.layers", "class_name": "Dense", "config": {
        "name": name, "trainable": True, "dtype": _POLICY, "units": UNITS, "activation": "linear",
        "use_bias": True,
        "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                               "config": {"seed": None, "input_axes": None, "output_axes": None},
                               "registered_name": None},
        "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                             "registered_name": None},
        "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None,
        "bias_constraint": None, "quantization_config": None},
        "registered_name": None, "build_config": {"input_shape": [None, UNITS]}}


def tiny_names(layers: int) -> list[str]:
    """The names Keras gives `layers` Dense layers (which are also their groups in a .weights.h5)."""
    return ["dense"] + [f"dense_{i}" for i in range(1, layers)] if layers else []


def tiny_config(layers: int) -> dict:
    """The config of a Sequential model of `layers` Dense(UNITS) layers."""
    body = [{"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
             "config": {"batch_shape": [None, UNITS], "dtype": "float32", "sparse": False, "ragged": False,
                        "name": "input_layer", "optional": False}}]
    body += [_dense_config(name) for name in tiny_names(layers)]
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "sequential", "trainable": True, "dtype": _POLICY,
                       "layers": body, "build_input_shape": [None, UNITS]},
            "build_config": {"input_shape": [None, UNITS]}}


def make_tiny(path: str, layers: int, seed: int = 0) -> None:
    """A Sequential model of `layers` Dense(UNITS) layers (2 x `layers` weights) in the format of
    `path`'s ending (TINY_FORMATS), laid out as Keras 3.15 saves it: a legacy .h5 has no
    model_config (Keras cannot store one this long in an attribute; roles come from names), and
    its layer_names is split as Keras splits long lists."""
    rng = np.random.default_rng(seed)
    names = tiny_names(layers)

    def weights(i):
        return rng.standard_normal((UNITS, UNITS), dtype=np.float32), rng.standard_normal(UNITS, dtype=np.float32)

    if path.endswith(".weights.h5") or path.endswith(".keras"):
        h5_path = path + ".weights.h5" if path.endswith(".keras") else path
        with h5py.File(h5_path, "w") as f:
            for i, name in enumerate(names):
                g = f.create_group(f"layers/{name}/vars")
                g.attrs["name"] = name
                for k, w in enumerate(weights(i)):
                    g.create_dataset(str(k), data=w)
            f.create_group("vars").attrs["name"] = "sequential"
        if path.endswith(".keras"):
            with zipfile.ZipFile(path, "w") as z:  # members stored, as Keras writes them
                z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1", "date_saved": "2026-01-01@00:00:00"}))
                z.writestr("config.json", json.dumps(tiny_config(layers)))
                z.write(h5_path, "model.weights.h5")
            os.unlink(h5_path)
        return
    with h5py.File(path, "w") as f:
        f.attrs["backend"], f.attrs["keras_version"] = "jax", "3.15.1"
        mw = f.create_group("model_weights")
        mw.attrs["backend"], mw.attrs["keras_version"] = "jax", "3.15.1"
        _names_attr(mw, "layer_names", names + ["top_level_model_weights"])
        for i, name in enumerate(names):
            g = mw.create_group(name)
            g.attrs["weight_names"] = [f"sequential/{name}/kernel", f"sequential/{name}/bias"]
            for w, wn in zip(weights(i), ("kernel", "bias")):
                g.create_dataset(f"sequential/{name}/{wn}", data=w)
        mw.create_group("top_level_model_weights").attrs["weight_names"] = np.zeros(0)


#: runs the command line in a fresh process and prints its wall time, CPU time (on a shared
#: machine, wall time counts the other processes' turns too) and peak resident memory (VmHWM
#: starts afresh at exec)
_MEASURED = """
import resource, sys, time
start = time.perf_counter()
from wqkernels.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read().splitlines()
usage = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT", time.perf_counter() - start, usage.ru_utime + usage.ru_stime,
      next(l.split()[1] for l in status if l.startswith("VmHWM:")))
sys.exit(code)
"""


def run_measured(args: list[str], pythonpath: str | None = None) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak resident bytes) of ``wqkernels args`` in a fresh process,
    its imports included; `pythonpath`: where that process imports wqkernels from (another
    build, for a comparison), else this process's own."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *map(str, args)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"wqkernels {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    _, seconds, cpu, kb = proc.stdout.splitlines()[-1].split()
    return float(seconds), float(cpu), int(kb) * 1024


#: the commands measured on each tiny model: name, arguments after the source
TINY_COMMANDS = (("inspect", ()), ("--bits 8", ("--bits", "8")),
                 ("--storage packed", ("--bits", "8", "--storage", "packed")), ("restore", ()),
                 ("--bits 4 packed", ("--bits", "4", "--storage", "packed")))


def _tiny_args(directory: str, fmt: str, name: str, options: tuple) -> list:
    """The command line of one of TINY_COMMANDS on ``tiny<fmt>`` in `directory` (restore: of the
    ``--storage packed`` output)."""
    src = os.path.join(directory, "tiny" + fmt)
    if name == "inspect":
        return ["inspect", src]
    if name == "restore":
        return ["restore", os.path.join(directory, "packed8" + fmt), "-o", os.path.join(directory, "restored" + fmt),
                "--quiet"]
    dst = f"packed{options[1]}" if "packed" in options else "int8"
    return ["rewrite", src, "-o", os.path.join(directory, dst + fmt), "--quiet", *options]


def measure_tiny(directory: str, weights: int, fmt: str, builds: dict | None = None, repeat: int = 1) -> list[dict]:
    """The commands of TINY_COMMANDS on a model of `weights` tiny weights in format `fmt`, each
    the best of `repeat` runs; with `builds` ({label: PYTHONPATH}), run by each build in turn,
    interleaved (A B A B), so that both see the same load."""
    src = os.path.join(directory, "tiny" + fmt)
    make_tiny(src, weights // 2)
    builds = builds or {"": None}
    rows = []
    for name, options in TINY_COMMANDS:
        args = _tiny_args(directory, fmt, name, options)
        runs: dict = {label: [] for label in builds}
        for _ in range(repeat):
            for label, pythonpath in builds.items():
                runs[label].append(run_measured(args, pythonpath))
        for label, measured in runs.items():
            rows.append({"weights": weights, "format": fmt, "command": name, "build": label,
                         "seconds": min(m[0] for m in measured), "cpu": min(m[1] for m in measured),
                         "peak_mib": max(m[2] for m in measured) / (1 << 20), "file_mb": os.path.getsize(src) / 1e6})
    floor_path = src
    if fmt == ".keras":  # the floor of the weights file inside
        floor_path = os.path.join(directory, "floor-member.weights.h5")
        with zipfile.ZipFile(src) as z, open(floor_path, "wb") as out:
            out.write(z.read("model.weights.h5"))
    for step, wall, cpu in measure_floor(floor_path):
        rows.append({"weights": weights, "format": fmt, "command": step, "build": "HDF5", "seconds": wall,
                     "cpu": cpu, "peak_mib": float("nan"), "file_mb": os.path.getsize(src) / 1e6})
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    return rows


def _print_tiny(rows: list[dict]) -> None:
    print(f"\n{'weights':>8} {'format':<12} {'MB':>6} {'command':<34} {'build':<6} {'seconds':>8} {'CPU s':>8} "
          f"{'peak MiB':>9}")
    for r in rows:
        print(f"{r['weights']:>8} {r['format']:<12} {r['file_mb']:>6.1f} {r['command'][:34]:<34} {r['build']:<6} "
              f"{r['seconds']:>8.2f} {r['cpu']:>8.2f} {r['peak_mib']:>9.0f}")


def test_tiny_weights(tmp_path):
    """Scaling in the number of weights: 1,000, 10,000 and 100,000 tiny weights, every format."""
    rows = []
    for weights in (1000, 10_000, 100_000):
        for fmt in TINY_FORMATS:
            rows += measure_tiny(str(tmp_path), weights, fmt)
    _print_tiny(rows)


# ---- the floor of HDF5 itself ------------------------------------------------------------------

def measure_floor(path: str) -> list[tuple[str, float, float]]:
    """What HDF5 alone costs on the tiny model at `path` (an HDF5 file of make_tiny's), through
    h5py's low-level API with the fewest calls each command needs and nothing checked or
    computed: (step, wall seconds, CPU seconds).  A command cannot cost less than its steps."""
    from h5py import h5d, h5g, h5o, h5p, h5s, h5t

    rows = []
    memory = h5t.py_create(np.dtype(np.float32))
    buffers = {(UNITS, UNITS): np.empty((UNITS, UNITS), np.float32), (UNITS,): np.empty(UNITS, np.float32)}

    def timed(step, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        rows.append((step, time.perf_counter() - wall, time.process_time() - cpu))

    def names(gid):  # a group's member names, in link order
        found = []
        gid.links.iterate(found.append)
        return found

    def tree(gid, visit):  # every member of each group opened in its group, depth first
        for name in names(gid):
            oid = h5o.open(gid, name)
            if isinstance(oid, h5g.GroupID):
                tree(oid, visit)
            else:
                visit(oid)

    with h5py.File(path, "r") as f:
        def describe(dsid):
            dsid.get_create_plist(), dsid.get_type(), dsid.shape

        def read(dsid):
            dsid.read(h5s.ALL, h5s.ALL, buffers[dsid.shape], mtype=memory)

        def create():
            with h5py.File(path + ".floor.h5", "w") as out:
                dcpl = h5p.create(h5p.DATASET_CREATE)
                dcpl.set_obj_track_times(False)
                stored = h5t.py_create(np.dtype(np.float32), logical=1)

                def recreate(src, dst):
                    for name in names(src):
                        oid = h5o.open(src, name)
                        if isinstance(oid, h5g.GroupID):
                            recreate(oid, h5g.create(dst, name))
                        else:
                            data = buffers[oid.shape]
                            h5d.create(dst, name, stored, h5s.create_simple(data.shape), dcpl=dcpl).write(
                                h5s.ALL, h5s.ALL, data, mtype=memory)
                recreate(f.id, out.id)

        def copy():
            with h5py.File(path + ".floor.h5", "w") as out:
                for name in names(f.id):
                    h5o.copy(f.id, name, out.id, name)

        timed("HDF5 H5Ovisit of every object", lambda: h5o.visit(f.id, lambda name: None))
        timed("HDF5 open every object, creation list, type, shape", lambda: tree(f.id, describe))
        timed("HDF5 open every object, read every weight", lambda: tree(f.id, read))
        timed("HDF5 create every group and dataset anew, write each", create)
        timed("HDF5 H5Ocopy of the whole tree", copy)
    os.unlink(path + ".floor.h5")
    return rows


def _print_floor(weights: int, rows: list) -> None:
    print(f"\nHDF5 floor, legacy .h5 of {weights} tiny weights")
    for step, wall, cpu in rows:
        print(f"{step:<58} wall {wall:7.2f} s  cpu {cpu:7.2f} s")


def test_hdf5_floor(tmp_path):
    """The HDF5 floor of a model of 10,000 tiny weights (see measure_floor)."""
    path = str(tmp_path / "tiny.h5")
    make_tiny(path, 5000)
    _print_floor(10_000, measure_floor(path))


if __name__ == "__main__":
    if sys.argv[1:2] == ["floor"]:
        with tempfile.TemporaryDirectory() as tmp:
            for n in [int(n) for n in sys.argv[2:]] or [100_000]:
                make_tiny(os.path.join(tmp, "tiny.h5"), n // 2)
                _print_floor(n, measure_floor(os.path.join(tmp, "tiny.h5")))
    elif sys.argv[1:2] == ["tiny"]:
        counts = [int(n) for n in sys.argv[2:]] or [1000, 10_000, 100_000]
        formats = [f for f in TINY_FORMATS if not os.environ.get("TINY_FORMAT") or f == os.environ["TINY_FORMAT"]]
        # TINY_BUILDS="before=/path/to/old/src,after=/path/to/new/src": each command run by both
        # builds in turn; TINY_REPEAT: runs of each, the best kept
        builds = dict(b.split("=", 1) for b in os.environ.get("TINY_BUILDS", "").split(",") if b) or None
        repeat = int(os.environ.get("TINY_REPEAT", "1"))
        print("load average at the start:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        with tempfile.TemporaryDirectory() as tmp:
            _print_tiny([r for n in counts for f in formats for r in measure_tiny(tmp, n, f, builds, repeat)])
        print("load average at the end:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _print(measure(tmp))
