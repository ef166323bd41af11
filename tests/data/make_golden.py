"""Write the golden files that ``tests/test_golden.py`` reads, into ``tests/data/golden/``.

Regenerating them is a deliberate act: it declares that what wqkernels reads from these files,
and what it writes for the fixed recipes, has changed on purpose (see the test module)::

    KERAS_BACKEND=jax PYTHONPATH=src python tests/data/make_golden.py [--sources]

This rewrites the expected arrays, the packed files of the current format version and the
manifest from the source files, which are made only when missing (or with ``--sources``): they
are the fixed inputs.  Files whose content is the same come out byte for byte the same, so the
diff shows what changed.

Made with keras 3.15.1 (JAX backend, jax 0.10.2), h5py 3.16.0 and numpy 2.4.6; the versions of
the run that made the files are recorded in ``MANIFEST.json``.  Weights come from fixed seeds, so
re-made sources hold the same arrays, but a ``.keras`` archive also records the date it was saved.

Sources, each a small model in a layout wqkernels reads:

- ``keras20_full.h5``: Keras 2.0-era full model (``make_keras2_files.write_keras20_full``) with its
  ``layer_names`` split into ``layer_names0``/``layer_names1`` and the Dense layer's
  ``weight_names`` split into ``weight_names0``/``weight_names1``, as Keras splits lists over 64 KB;
- ``tfkeras_weights.h5``: tf.keras ``save_weights`` file (``write_tfkeras_weights``), weights at
  the root, ``layer_names`` split;
- ``keras3_full.h5``: Keras 3 ``model.save("x.h5")`` of Conv2D, BatchNormalization, LSTM, a nested
  Sequential of Dense layers and a Dense head, with Adam's state;
- ``keras3.weights.h5``: Keras 3 ``save_weights`` of Embedding, GRU, Conv1D and Dense (no config:
  roles come from the group names);
- ``keras3.keras``: Keras 3 ``model.save("x.keras")`` of Conv2D, DepthwiseConv2D, SeparableConv2D,
  Conv2DTranspose and a Dense layer applied twice, with Adam's state.

Packed files, written by ``wqkernels.rewrite(..., Recipe(storage="packed", ...))`` from the sources
and named after the format version they carry (``packed_v<N>_...``).  A new version adds new files
beside the old ones, which stay: wqkernels reads old versions forever.

Expected arrays: ``<file>.npz`` holds what ``wqkernels.load_weights(<file>)`` returns, and
``<file>.<recipe>.npz`` what it returns for the rewrite of ``<file>`` with that recipe.
``MANIFEST.json`` lists every file with its expected arrays, its recipes, the weights
``wqkernels.inspect`` lists (path, layer, class, role, prunable, shape, dtype, role source,
storage) and, for packed files, their source, recipe and format version.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile

import h5py
import numpy as np

import wqkernels

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
sys.path.insert(0, HERE)

import make_keras2_files as k2  # noqa: E402

#: the fixed recipes (keyword arguments of wqkernels.Recipe), spelled out so that a change of a
#: default does not change them
INT4_SPARSE = dict(bits=4, sparsity=0.5, method="mse", symmetric=True, rounding="nearest", min_size=0,
                   narrow_bits=0)
INT8_NM_HALF = dict(bits=8, sparsity="2:4", granularity="tensor", method="minmax", symmetric=False,
                    rounding="nearest", storage="float16", strip_optimizer=True, compress="gzip", min_size=0)
SQNR_UNIFORM_BLOCK = dict(target_sqnr=20.0, sparsity=0.3, allocation="uniform", granularity="block:8",
                          method="percentile", symmetric=True, rounding="nearest", min_size=0)

#: packed file (named with "{version}"): source, recipe
PACKED = {
    "packed_v{version}_int4_block8.h5": ("keras3_full.h5", dict(
        bits=4, storage="packed", sparsity=0.5, granularity="block:8", symmetric=False, method="mse",
        rounding="nearest", min_size=0, narrow_bits=0)),
    "packed_v{version}_int3.keras": ("keras3.keras", dict(
        bits=3, storage="packed", method="minmax", symmetric=True, rounding="nearest", strip_optimizer=True,
        narrow_bits=0)),
    "packed_v{version}_int2_keras20.h5": ("keras20_full.h5", dict(
        bits=2, storage="packed", granularity="tensor", method="percentile", symmetric=False,
        rounding="nearest", min_size=0, narrow_bits=0)),
}


# ---- sources -------------------------------------------------------------------------------------

def _split_names(obj, name: str) -> None:
    """Replace a list attribute by ``name0``/``name1`` halves of fixed-length bytes, as Keras does."""
    values = np.asarray(obj.attrs[name])
    del obj.attrs[name]
    for k, part in enumerate(np.array_split(values, 2)):
        obj.attrs[f"{name}{k}"] = part


def write_keras20(path: str) -> None:
    k2.write_keras20_full(path, seed=0)
    with h5py.File(path, "r+") as f:
        _split_names(f["model_weights"], "layer_names")
        _split_names(f["model_weights/dense_1"], "weight_names")


def write_tfkeras(path: str) -> None:
    k2.write_tfkeras_weights(path, seed=1)


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    return keras


def _randomize(model, seed: int, optimizer_variables=()):
    """tests/keras_models.py's randomize, imported only here since that module imports Keras."""
    sys.path.insert(0, os.path.dirname(HERE))
    from keras_models import randomize

    return randomize(model, seed, optimizer_variables)


def _compiled(keras, model, seed: int):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    _randomize(model, seed, model.optimizer.variables)
    return model


def keras3_full_model():
    keras = _keras()
    layers = keras.layers
    inp = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Reshape((16, 4), name="rows")(x)
    x = layers.LSTM(6, name="lstm")(x)
    sub = keras.Sequential([keras.Input((6,)), layers.Dense(8, name="inner_a"),
                            layers.Dense(5, name="inner_b")], name="sub")
    x = layers.Dense(3, name="head")(sub(x))
    return _compiled(keras, keras.Model(inp, x, name="golden_full"), seed=3)


def keras3_weights_model():
    keras = _keras()
    layers = keras.layers
    inp = keras.Input((5,), dtype="int32", name="tokens")
    x = layers.Embedding(12, 8, name="emb")(inp)
    x = layers.GRU(6, return_sequences=True, name="gru")(x)
    x = layers.Conv1D(4, 3, name="conv1d")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.Dense(3, name="head")(x)
    model = keras.Model(inp, x, name="golden_weights")
    _randomize(model, seed=4)
    return model


def keras3_archive_model():
    keras = _keras()
    layers = keras.layers
    inp = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = layers.SeparableConv2D(6, 3, padding="same", name="sep")(x)
    x = layers.Conv2DTranspose(4, 3, padding="same", name="convt")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(8, name="pre")(x)
    shared = layers.Dense(8, name="shared")
    x = layers.Dense(3, name="head")(shared(shared(x)))
    return _compiled(keras, keras.Model(inp, x, name="golden_archive"), seed=5)


def write_keras3_full(path: str) -> None:
    keras3_full_model().save(path)


def write_keras3_weights(path: str) -> None:
    keras3_weights_model().save_weights(path)


def write_keras3_archive(path: str) -> None:
    keras3_archive_model().save(path)


#: source file: the function writing it, {recipe name: recipe}
SOURCES = {
    "keras20_full.h5": (write_keras20, {"int4-sparse50": INT4_SPARSE, "int8-2of4-f16": INT8_NM_HALF}),
    "tfkeras_weights.h5": (write_tfkeras, {"int4-sparse50": INT4_SPARSE,
                                           "sqnr20-uniform-block8": SQNR_UNIFORM_BLOCK}),
    "keras3_full.h5": (write_keras3_full, {"int4-sparse50": INT4_SPARSE, "int8-2of4-f16": INT8_NM_HALF}),
    "keras3.weights.h5": (write_keras3_weights, {"int4-sparse50": INT4_SPARSE,
                                                 "sqnr20-uniform-block8": SQNR_UNIFORM_BLOCK}),
    "keras3.keras": (write_keras3_archive, {"int4-sparse50": INT4_SPARSE, "int8-2of4-f16": INT8_NM_HALF}),
}


# ---- expected arrays -----------------------------------------------------------------------------

def _inspected(path: str) -> list:
    return [[w.path, w.layer, w.layer_class, w.role, w.prunable, list(w.shape), w.dtype, w.role_source,
             w.storage] for w in wqkernels.inspect(path)]


def _save_arrays(path: str, npz: str) -> None:
    np.savez_compressed(os.path.join(GOLDEN, npz), **wqkernels.load_weights(path))


def _packed_version(path: str) -> int:
    """The format version of a packed file (its HDF5 file, or a .keras archive's weights member)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf, zf.open("model.weights.h5") as member, \
                h5py.File(member, "r") as f:
            return int(f["wqkernels"].attrs["version"])
    with h5py.File(path, "r") as f:
        return int(f["wqkernels"].attrs["version"])


def _same_arrays(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def _manifest_text(manifest: dict) -> str:
    """The manifest as indented JSON with each inspected weight on one line."""
    rows = {}
    for name, entry in manifest["files"].items():
        rows[name] = entry["inspect"]
        entry["inspect"] = f"@rows:{name}"
    text = json.dumps(manifest, indent=1)
    for name, listed in rows.items():
        manifest["files"][name]["inspect"] = listed
        lines = ",\n    ".join(json.dumps(r) for r in listed)
        text = text.replace(json.dumps(f"@rows:{name}"), f"[\n    {lines}\n   ]")
    return text + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", action="store_true", help="re-make the source files too")
    args = parser.parse_args(argv)
    keras = _keras()
    os.makedirs(GOLDEN, exist_ok=True)
    manifest_path = os.path.join(GOLDEN, "MANIFEST.json")
    old = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)["files"]
    for name, (write, _) in SOURCES.items():
        if args.sources or not os.path.exists(os.path.join(GOLDEN, name)):
            write(os.path.join(GOLDEN, name))

    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (_, recipes) in SOURCES.items():
            path = os.path.join(GOLDEN, name)
            entry = {"expected": f"{name}.npz", "inspect": _inspected(path), "rewrites": {}}
            _save_arrays(path, entry["expected"])
            for label, kwargs in recipes.items():
                out = os.path.join(tmp, f"{label}-{name}")
                wqkernels.rewrite(path, out, wqkernels.Recipe(**kwargs))
                npz = f"{name}.{label}.npz"
                _save_arrays(out, npz)
                entry["rewrites"][label] = {"recipe": kwargs, "expected": npz}
            files[name] = entry
        for pattern, (source, kwargs) in PACKED.items():
            out = os.path.join(tmp, pattern.replace("{version}", "x"))
            wqkernels.rewrite(os.path.join(GOLDEN, source), out, wqkernels.Recipe(**kwargs))
            version = _packed_version(out)
            name = pattern.format(version=version)
            path = os.path.join(GOLDEN, name)
            shutil.copyfile(out, path)
            as_float = os.path.join(tmp, f"float-{name}")
            wqkernels.rewrite(os.path.join(GOLDEN, source), as_float,
                              wqkernels.Recipe(**dict(kwargs, storage="float32")))
            if not _same_arrays(wqkernels.load_weights(path), wqkernels.load_weights(as_float)):
                raise AssertionError(f"{name}: packed arrays differ from the float32 rewrite's")
            files[name] = {"expected": f"{name}.npz", "inspect": _inspected(path), "rewrites": {},
                           "packed": {"version": version, "source": source, "recipe": kwargs}}
            _save_arrays(path, files[name]["expected"])
    # packed files of older format versions stay, with how they were made: they must read forever
    for name, entry in old.items():
        path = os.path.join(GOLDEN, name)
        if name not in files and "packed" in entry and os.path.exists(path):
            files[name] = dict(entry, inspect=_inspected(path))
            _save_arrays(path, entry["expected"])
    manifest = {"made_with": {"wqkernels": wqkernels.__version__, "keras": keras.__version__,
                              "backend": keras.backend.backend(), "h5py": h5py.__version__,
                              "hdf5": h5py.version.hdf5_version, "numpy": np.__version__},
                "files": files}
    with open(manifest_path, "w") as f:
        f.write(_manifest_text(manifest))
    for name in sorted(os.listdir(GOLDEN)):
        print(f"{os.path.getsize(os.path.join(GOLDEN, name)):8d}  golden/{name}")


if __name__ == "__main__":
    main()
