"""Seeded mutants of every format (truncations, flipped bits, overwritten bytes, edited packed
indexes and model configs): each gives a clean one-line error or a correct result, never a
crash, a traceback, silently different weights (where the format can tell: packed files carry
checksums), or memory beyond a bound."""
from __future__ import annotations

import json
import os
import random
import re
import sys
import tracemalloc
import zipfile
import zlib

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import KerasFileError, Recipe

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
import make_keras2_files as k2  # noqa: E402

#: mutants per format, and the most memory (Python and NumPy allocations) one may take
MUTANTS = 120
MEMORY_BOUND = 64 << 20


def _keras3(path) -> None:
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        for group, arrays in (("conv2d", [(3, 3, 2, 8), (8,)]), ("dense", [(40, 8), (8,)]), ("embedding", [(30, 8)])):
            g = f.create_group(f"layers/{group}/vars")
            g.attrs["name"] = group
            for i, shape in enumerate(arrays):
                g.create_dataset(str(i), data=rng.standard_normal(shape).astype(np.float32))
        f.create_group("optimizer/vars").create_dataset("0", data=np.int64(3))


def _archive(path, weights) -> None:
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "Conv2D", "config": {"name": "conv2d"}}, {"class_name": "Dense", "config": {"name": "dense"}},
        {"class_name": "Embedding", "config": {"name": "embedding"}}]}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        z.writestr("config.json", json.dumps(config))
        z.write(weights, "model.weights.h5")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """One small file of each format: (path, whether damage must be detected, its weights)."""
    d = tmp_path_factory.mktemp("originals")
    legacy, keras3, archive = d / "legacy.h5", d / "k3.weights.h5", d / "m.keras"
    k2.write_keras20_full(legacy)
    _keras3(keras3)
    _archive(archive, keras3)
    packed, packed_archive = d / "p.weights.h5", d / "p.keras"
    wqkernels.rewrite(keras3, packed, Recipe(bits=4, storage="packed", symmetric=False))
    wqkernels.rewrite(archive, packed_archive, Recipe(bits=3, storage="packed", granularity="block:8"))
    files = {"legacy": (legacy, False), "keras3": (keras3, False), "keras": (archive, False),
             "packed": (packed, True), "packed-keras": (packed_archive, True)}
    return {k: (p, checked, wqkernels.load_weights(p)) for k, (p, checked) in files.items()}


def _flip(data: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.choice((1, 1, 2, 4))):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data


def _overwrite(data: bytearray, rng: random.Random) -> bytearray:
    data[rng.randrange(len(data))] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x01))
    return data


def _truncate(data: bytearray, rng: random.Random) -> bytearray:
    return data[:rng.randrange(len(data))]


def _edit_json(value, rng: random.Random):
    """One random edit somewhere in a JSON document: a value replaced, a key removed, a list
    shortened or duplicated into."""
    path, node = [], value
    while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        return rng.choice([[], {}, 0, "x", None])
    parent, key = path[-1]
    action = rng.random()
    if action < 0.25 and isinstance(parent, dict):
        del parent[key]
    elif action < 0.4 and isinstance(parent, list):
        parent.append(parent[key])
    else:
        parent[key] = rng.choice([None, 0, -1, 1, 2**63, 1e308, "x", [], {}, [1, 2], True, 10**6, "layers/x/vars/0"])
    return value


def _edit_packed_index(path, rng: random.Random) -> None:
    with h5py.File(path, "a") as f:
        group = f["wqkernels"]
        index = json.loads(zlib.decompress(group["index"][()].tobytes()))
        text = json.dumps(_edit_json(index, rng)).encode()
        del group["index"]
        group["index"] = np.frombuffer(zlib.compress(text), np.uint8)
        group.attrs["index_bytes"] = len(text)


def _edit_config(path, rng: random.Random) -> None:
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    members["config.json"] = json.dumps(_edit_json(json.loads(members["config.json"]), rng)).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


#: what an attribute edit writes (numbers, arrays, bytes that are not UTF-8, empty strings, records)
_ATTRIBUTE_VALUES = (lambda: 7, lambda: 1.5, lambda: np.bool_(True), lambda: np.array([1, 2]), lambda: b"\xff\xfe",
                     lambda: "", lambda: np.array([b"a", b""]), lambda: np.zeros((), [("a", "i4"), ("b", "f4")]),
                     lambda: np.array([], np.float32), lambda: np.array([["x"]], dtype=h5py.string_dtype()))


def _edit_attribute(path, rng: random.Random) -> str:
    """One attribute of the file set to an unusual value, or removed."""
    with h5py.File(path, "a") as f:
        names = [""]
        f.visit(names.append)
        owners = [(n, k) for n in names for k in (f[n] if n else f).attrs]
        owner, key = rng.choice(owners)
        attrs = (f[owner] if owner else f).attrs
        if rng.random() < 0.2:
            del attrs[key]
            return f"attribute {key!r} of {owner!r} removed"
        attrs[key] = rng.choice(_ATTRIBUTE_VALUES)()
        return f"attribute {key!r} of {owner!r} edited"


def _mutant(kind: str, original, out, rng: random.Random) -> str:
    """Write one mutant of `original` to `out`; returns what was done."""
    how = rng.choice(["flip", "flip", "overwrite", "truncate", "structure"])
    if how == "structure":
        out.write_bytes(original.read_bytes())
        if kind == "packed":
            _edit_packed_index(out, rng)
            return "index edited"
        if kind in ("keras", "packed-keras"):
            _edit_config(out, rng)
            return "config edited"
        return _edit_attribute(out, rng)
    data = bytearray(original.read_bytes())
    out.write_bytes({"flip": _flip, "overwrite": _overwrite, "truncate": _truncate}[how](data, rng))
    return how


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["legacy", "keras3", "keras", "packed", "packed-keras"])
def test_mutants_fail_cleanly_or_read_correctly(kind, originals, tmp_path):
    original, checked, weights = originals[kind]
    rng = random.Random(f"wqkernels-{kind}")
    suffix = "".join(original.suffixes)
    outcomes = {"refused": 0, "read": 0}
    for k in range(MUTANTS):
        mutant = tmp_path / f"m{k}{suffix}"
        what = _mutant(kind, original, mutant, rng)
        traced = k % 4 == 0  # (tracing slows allocations down: one mutant in four)
        if traced:
            tracemalloc.start()
        try:
            try:
                got = wqkernels.load_weights(mutant)
                if k % 4 == 1:
                    wqkernels.rewrite(mutant, tmp_path / f"o{suffix}", Recipe(bits=8))
            except KerasFileError as exc:
                assert "\n" not in str(exc) and str(mutant) in str(exc), (what, str(exc))
                outcomes["refused"] += 1
                continue
            finally:
                if traced:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    assert peak < MEMORY_BOUND, (k, what, peak)
        except Exception as exc:  # anything else is a bug: say which mutant
            raise AssertionError(f"mutant {k} ({what}) of {kind}: {type(exc).__name__}: {exc}") from exc
        outcomes["read"] += 1
        if checked:  # the container's checks let through only what reads back the same
            assert _same(got, weights), f"mutant {k} ({what}) of {kind} reads different weights"
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp") or n.startswith(".wqkernels-")]
    assert outcomes["refused"] > MUTANTS // 10, outcomes  # the mutants do damage


@pytest.mark.parametrize("kind", ["legacy", "keras3", "packed", "packed-keras"])
def test_mutants_through_the_command_line(kind, originals, tmp_path, capsys):
    from wqkernels.cli import main
    original, checked, weights = originals[kind]
    rng = random.Random(f"wqkernels-cli-{kind}")
    suffix = "".join(original.suffixes)
    for k in range(MUTANTS // 3):
        mutant = tmp_path / f"m{k}{suffix}"
        what = _mutant(kind, original, mutant, rng)
        command = [["inspect", mutant], ["rewrite", mutant, "-o", tmp_path / f"o{suffix}", "--bits", "4"],
                   ["restore", mutant, "-o", tmp_path / f"r{suffix}"]][k % 3]
        code = main([str(c) for c in command])
        err = capsys.readouterr().err
        assert code in (0, 1), (k, what, code, err)
        assert (err == "") == (code == 0) or err.startswith("wqkernels rewrite: note: "), (k, what, err)
        assert err.count("\n") <= 1 and "Traceback" not in err, (k, what, err)
        if code == 1:  # naming the file, in words: no Python exception's name
            assert str(mutant) in err and not re.search(r"\b[A-Z]\w*Error\b", err), (k, what, err)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(os.path.dirname(__file__), "data", "fuzz"))))
@pytest.mark.parametrize("suffix", [".h5", ".weights.h5", ".keras"])
def test_inputs_a_fuzzer_found(name, suffix, tmp_path):
    """Inputs of a coverage-guided campaign (atheris) that raised something else than a
    KerasFileError: a zip of an unsupported version, a link name that is not UTF-8."""
    path = tmp_path / f"input{suffix}"
    with open(os.path.join(os.path.dirname(__file__), "data", "fuzz", name), "rb") as f:
        path.write_bytes(f.read())
    with pytest.raises(KerasFileError):
        wqkernels.load_weights(path)
