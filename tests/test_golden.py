"""Golden files: Keras weight files of every layout wqkernels reads, and packed files, with the
arrays it must get from them, bit for bit.

``tests/data/golden/`` holds small files (a Keras 2.0-era ``.h5`` with split ``layer_names``, a
tf.keras weights ``.h5``, a Keras 3 ``.h5``, ``.weights.h5`` and ``.keras``, and packed files of the
current format version), ``MANIFEST.json`` describing them, and ``.npz`` files with what
``wqkernels.load_weights`` returns for each and for its rewrite with fixed recipes.  A change to a
kernel, to how a layout is read, or to the packed format therefore fails here.

When such a change is intended, regenerate the expectations and commit them with the change,
saying why (a deliberate act: review the diff of ``MANIFEST.json`` and which files changed; files
whose content did not change come out byte for byte the same)::

    KERAS_BACKEND=jax PYTHONPATH=src python tests/data/make_golden.py

The source files are fixed inputs, made only when missing (``--sources`` re-makes them).

A new packed format version adds ``packed_v<N>_*`` files beside the old ones, which stay: old
versions are read forever (or refused with an error naming the version, which these tests then
must be changed to expect).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import zipfile
import zlib

import h5py
import numpy as np
import pytest
from helpers import assert_bit_equal

import wqkernels
from wqkernels import KerasFileError, Recipe

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden")
with open(os.path.join(GOLDEN, "MANIFEST.json")) as _f:
    MANIFEST = json.load(_f)
FILES = MANIFEST["files"]
SOURCES = [name for name, entry in FILES.items() if "packed" not in entry]
PACKED = [name for name, entry in FILES.items() if "packed" in entry]
REWRITES = [(name, label) for name, entry in FILES.items() for label in entry["rewrites"]]
#: the parts of a packed index that describe the stored tensors (the recipe is a record of what
#: was asked, and the skeleton's size depends on the HDF5 library)
INDEX_KEYS = ("format", "version", "layout", "tensors", "datasets")
MAX_BYTES = 200 << 10


def golden(name: str) -> str:
    return os.path.join(GOLDEN, name)


def expected(npz: str) -> dict[str, np.ndarray]:
    with np.load(golden(npz)) as z:
        return {k: z[k] for k in z.files}


def assert_same_weights(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: other weights: {sorted(set(got) ^ set(want))}"
    for key, value in want.items():
        assert_bit_equal(got[key], value, f"{what}: {key}")


@contextlib.contextmanager
def weights_file(path):
    """The weights HDF5 file of `path`: the file itself, or a .keras archive's member."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            data = zf.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as f:
            yield f
    else:
        with h5py.File(path, "r") as f:
            yield f


def stored(path) -> dict[str, np.ndarray]:
    """Every dataset of the weights file by path, as h5py reads it (not through wqkernels)."""
    out = {}

    def read(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with weights_file(path) as f:
        f.visititems(read)
    return out


def container(path) -> dict:
    """A packed file's format attributes, index and arrays, read with h5py and zlib."""
    with weights_file(path) as f:
        group = f["wqkernels"]
        index = json.loads(zlib.decompress(group["index"][()].tobytes()))
        return {"format": group.attrs["format"], "version": int(group.attrs["version"]),
                "index": {k: index.get(k) for k in INDEX_KEYS},
                "arrays": {k: group[k][()] for k in ("codes", "scales", "zero_points")}}


def test_the_golden_files_are_listed_and_small():
    listed = {"MANIFEST.json"}
    for name, entry in FILES.items():
        listed |= {name, entry["expected"]} | {r["expected"] for r in entry["rewrites"].values()}
    assert sorted(os.listdir(GOLDEN)) == sorted(listed)
    for name in listed:
        assert os.path.getsize(golden(name)) < MAX_BYTES, name


@pytest.mark.parametrize("name", list(FILES))
def test_load_weights_returns_the_golden_arrays(name):
    assert_same_weights(wqkernels.load_weights(golden(name)), expected(FILES[name]["expected"]), name)


@pytest.mark.parametrize("name", SOURCES)
def test_the_golden_arrays_are_the_datasets_of_the_file(name):
    """The expectation is the file's own data, not only what wqkernels once read from it."""
    data = stored(golden(name))
    for key, value in expected(FILES[name]["expected"]).items():
        assert_bit_equal(data[key], value, f"{name}: {key}")


@pytest.mark.parametrize("name", list(FILES))
def test_inspect_lists_the_golden_roles(name):
    rows = [[w.path, w.layer, w.layer_class, w.role, w.prunable, list(w.shape), w.dtype, w.role_source,
             w.storage] for w in wqkernels.inspect(golden(name))]
    assert rows == FILES[name]["inspect"]


@pytest.mark.parametrize("name,label", REWRITES)
def test_rewrite_with_a_fixed_recipe_gives_the_golden_arrays(name, label, tmp_path):
    spec = FILES[name]["rewrites"][label]
    out = tmp_path / f"out-{name}"
    wqkernels.rewrite(golden(name), out, _recipe(spec["recipe"]))
    want = expected(spec["expected"])
    assert_same_weights(wqkernels.load_weights(out), want, f"{name} {label}")
    data = stored(out)
    for key, value in want.items():  # float16 storage reads back as float32, exactly
        raw = data[key].astype(value.dtype) if data[key].dtype.kind == value.dtype.kind == "f" else data[key]
        assert_bit_equal(raw, value, f"{name} {label}: stored {key}")


# ---- packed files ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PACKED)
def test_packed_files_carry_their_format_version(name):
    c = container(golden(name))
    version = FILES[name]["packed"]["version"]
    assert c["format"] == "wqkernels-packed"
    assert c["version"] == c["index"]["version"] == version
    assert re.match(rf"packed_v{version}_", name)


@pytest.mark.parametrize("name", PACKED)
def test_restore_of_a_packed_file_gives_the_golden_arrays(name, tmp_path):
    out = tmp_path / f"restored-{name}"
    wqkernels.restore(golden(name), out)
    want = expected(FILES[name]["expected"])
    assert_same_weights(wqkernels.load_weights(out), want, f"{name} restored")
    data = stored(out)
    for key, value in want.items():
        assert_bit_equal(data[key], value, f"{name} restored: stored {key}")


def _recipe(kwargs: dict) -> Recipe:
    """A recorded recipe, every kernel at its bits unless it says otherwise (``narrow_bits``)."""
    return Recipe(**{"narrow_bits": 0, **kwargs})


def _packed_rewrite(name: str, out) -> None:
    spec = FILES[name]["packed"]
    wqkernels.rewrite(golden(spec["source"]), out, _recipe(spec["recipe"]))


@pytest.mark.parametrize("name", PACKED)
def test_the_writer_reproduces_the_packed_files_of_its_version(name, tmp_path):
    out = tmp_path / f"again-{name}"
    _packed_rewrite(name, out)
    got, want = container(out), container(golden(name))
    if got["version"] != want["version"]:
        pytest.skip(f"version {want['version']} is an older format: only reading it is checked")
    assert got["format"] == want["format"]
    assert got["index"] == want["index"]
    for key, value in want["arrays"].items():
        assert_bit_equal(got["arrays"][key], value, f"{name}: {key}")
    assert_same_weights(wqkernels.load_weights(out), expected(FILES[name]["expected"]), name)


def test_the_current_packed_version_has_golden_files(tmp_path):
    out = tmp_path / "current.h5"
    _packed_rewrite(PACKED[0], out)
    version = container(out)["version"]
    assert any(FILES[name]["packed"]["version"] == version for name in PACKED), (
        f"the writer writes packed format version {version}, which no golden file has: add them "
        f"with tests/data/make_golden.py and keep the older ones")


def test_a_newer_packed_version_is_refused_naming_it(tmp_path):
    name = next(n for n in PACKED if not zipfile.is_zipfile(golden(n)))
    path = tmp_path / name
    shutil.copyfile(golden(name), path)
    with h5py.File(path, "r+") as f:
        newer = int(f["wqkernels"].attrs["version"]) + 1
        f["wqkernels"].attrs["version"] = newer
    for call in (wqkernels.load_weights, wqkernels.inspect):
        with pytest.raises(KerasFileError, match=rf"{name}: packed format version {newer} is newer"):
            call(path)
    with pytest.raises(KerasFileError, match=f"version {newer}"):
        wqkernels.restore(path, tmp_path / "restored.h5")
    assert not os.path.exists(tmp_path / "restored.h5")


# ---- Keras loads what a packed file restores to ---------------------------------------------------

#: packed HDF5 files made from files Keras 3 wrote (Keras 3 does not read Keras 2.0's model
#: config).  A format version changes how the packed weights are read, whatever holds them; a
#: .keras archive around them is rebuilt as for a current packed file, which the Keras tests of
#: rewrites load.  So archives are left out here, where Keras takes seconds per layer to build.
KERAS3_PACKED = [name for name in PACKED if FILES[name]["packed"]["source"].startswith("keras3")
                 and not zipfile.is_zipfile(golden(name))]


@pytest.mark.keras
@pytest.mark.slow
# keras 3.15 calls np.array(variable) in ways numpy 2 deprecates; nothing of ours
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.parametrize("name", KERAS3_PACKED)
def test_keras_loads_the_restored_packed_files(name, tmp_path):
    """Keras reads every restored value: the model it loads, saved again, holds the golden arrays."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    pytest.importorskip("jax")
    keras = pytest.importorskip("keras")
    restored, saved = tmp_path / "restored.h5", tmp_path / "saved.h5"
    wqkernels.restore(golden(name), restored)
    # compile=False: Keras 3 cannot compile its own legacy .h5 of a loss="mse" model
    model = keras.saving.load_model(restored, compile=False)
    model.save(saved)
    want = {k: v for k, v in expected(FILES[name]["expected"]).items() if not k.startswith("optimizer")}
    got = {k: v for k, v in wqkernels.load_weights(saved).items() if not k.startswith("optimizer")}
    assert_same_weights(got, want, f"{name} through Keras")
