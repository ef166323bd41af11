"""Every layout read and written exactly: Keras 2.0, tf.keras, Keras 3 (.weights.h5, .keras)."""
from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference

from .helpers import assert_bit_equal, default_grid, hdf5_tree, run_cli, sha256_of


def test_inspect_keras20(keras20):
    path, _ = keras20
    infos = {i.path: i for i in wqkernels.inspect(path)}
    k = infos["model_weights/conv2d_1/conv2d_1_1/kernel:0"]
    assert (k.layer, k.layer_class, k.role, k.prunable, k.shape) == ("conv2d_1", "Conv2D", "kernel", True, (3, 3, 3, 4))
    assert infos["model_weights/depthwise_conv2d_1/depthwise_conv2d_1_1/depthwise_kernel:0"].prunable
    assert not infos["model_weights/dense_1/dense_1_1/bias:0"].prunable
    assert infos["optimizer_weights/Variable_0:0"].role == "optimizer"


def test_inspect_json(keras20, capsys):
    code, out, err = run_cli(["inspect", keras20[0], "--json"], capsys)
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert {"path", "layer", "layer_class", "role", "prunable", "shape", "dtype", "nbytes", "sparsity"} <= set(rows[0])
    assert rows[0]["shape"] == [3, 3, 3, 4]


@pytest.mark.parametrize("which", ["keras20", "tfkeras"])
def test_rewrite_keras2_layouts_exact(which, keras20, tfkeras, tmp_path, capsys):
    src, values = keras20 if which == "keras20" else tfkeras
    before = sha256_of(src)
    dst = tmp_path / "out.h5"
    code, out, err = run_cli(["rewrite", src, "-o", dst, "--bits", "4", "--narrow-bits", "0"], capsys)
    assert code == 0, err
    assert sha256_of(src) == before
    with h5py.File(src) as a, h5py.File(dst) as b:
        ta, tb = hdf5_tree(a), hdf5_tree(b)
        assert ta.keys() == tb.keys()
        for name in ta:
            assert ta[name] == tb[name], name  # attributes with exact types, dtypes, shapes
        expected = {"conv2d_1": (0, 3), "depthwise_conv2d_1": (0, 2), "dense_1": (0, 1)}
        for layer, (index, axis) in expected.items():
            g = b[f"model_weights/{layer}" if which == "keras20" else layer]
            names = [n.decode() for n in g.attrs["weight_names"]]
            assert_bit_equal(g[names[index]][()],
                             reference.fake_quantize(values[layer][index], 4, axis=axis, **default_grid(4)), layer)
            assert_bit_equal(g[names[1]][()], values[layer][1], "bias kept")
    if which == "tfkeras":
        with h5py.File(dst) as b:
            assert "layer_names" not in b.attrs and "layer_names1" in b.attrs


def test_keras3_zip_rewrite(keras3_zip, tmp_path):
    dst = tmp_path / "out.keras"
    report = wqkernels.rewrite(keras3_zip, dst, Recipe(bits=4, granularity="channel", strip_optimizer=True,
                                                                narrow_bits=0))
    assert "names" in report.role_source
    with zipfile.ZipFile(keras3_zip) as a, zipfile.ZipFile(dst) as b:
        assert [(i.filename, i.compress_type) for i in a.infolist()] == \
            [(i.filename, i.compress_type) for i in b.infolist()]
        for name in ("metadata.json", "config.json"):
            assert a.read(name) == b.read(name)
    before, after = wqkernels.load_weights(keras3_zip), wqkernels.load_weights(dst)
    assert "optimizer/vars/0" not in after
    for path, axis in (("layers/conv2d/vars/0", 3), ("layers/depthwise_conv2d/vars/0", 2),
                       ("layers/conv2d_transpose/vars/0", 2), ("layers/embedding/vars/0", 0)):
        assert_bit_equal(after[path], reference.fake_quantize(before[path], 4, axis=axis, **default_grid(4)), path)
    assert_bit_equal(after["layers/conv2d/vars/1"], before["layers/conv2d/vars/1"])


@pytest.mark.parametrize("storage", ["float32", "packed"])
def test_groups_of_different_settings_keep_their_own(storage, tmp_path):
    """Groups recreated in one rewrite with different creation settings each keep theirs (the
    property lists are shared between groups of the same settings only)."""
    from h5py import h5p

    src = tmp_path / "mixed.h5"
    settings = {"a": (True, 0), "b": (False, 4), "c": (True, 2), "d": (False, 0)}  # track_order, attr phase
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in settings])
        for name, (track, phase) in settings.items():
            gcpl = h5p.create(h5p.GROUP_CREATE)
            if track:
                gcpl.set_link_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED)
                gcpl.set_attr_creation_order(h5p.CRT_ORDER_TRACKED)
            if phase:
                gcpl.set_attr_phase_change(phase, phase - 1)
            g = h5py.Group(h5py.h5g.create(f.id, name.encode(), gcpl=gcpl))
            g.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode()])
            g.create_dataset(f"{name}/kernel:0", data=np.ones((4, 4), np.float32))
    wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(bits=8, storage=storage))
    if storage == "packed":
        wqkernels.restore(tmp_path / "o.h5", tmp_path / "r.h5")
    with h5py.File(src) as a, h5py.File(tmp_path / ("r.h5" if storage == "packed" else "o.h5")) as b:
        for name in settings:
            old, new = a[name].id.get_create_plist(), b[name].id.get_create_plist()
            assert new.get_link_creation_order() == old.get_link_creation_order()
            assert new.get_attr_creation_order() == old.get_attr_creation_order()
            assert new.get_attr_phase_change() == old.get_attr_phase_change()


def test_group_creation_order_kept(tmp_path):
    src = tmp_path / "ordered.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"zeta", b"alpha"])
        for name in ("zeta", "alpha"):
            g = f.create_group(name, track_order=True)
            g.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode()])
            g.create_dataset(f"{name}/kernel:0", data=np.ones((4, 4), np.float32))
            g.create_group("z_extra")
            g.create_group("a_extra")
    wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(bits=8))
    with h5py.File(tmp_path / "o.h5") as f:
        assert list(f["zeta"]) == ["zeta", "z_extra", "a_extra"]


def test_string_attributes_of_every_kind_read_and_copied_exactly(tmp_path):
    """Attributes of string types that differ only in length, character set or padding, read
    one after another (their dtypes are remembered by type: none may stand for another)."""
    from h5py import h5a, h5s, h5t

    from wqkernels.files.h5tree import attr_value, copy_attrs, string_attr

    kinds = {"vlen_ascii": (h5t.VARIABLE, h5t.CSET_ASCII, h5t.STR_NULLTERM),
             "vlen_utf8": (h5t.VARIABLE, h5t.CSET_UTF8, h5t.STR_NULLTERM),
             "fixed5_ascii": (5, h5t.CSET_ASCII, h5t.STR_NULLPAD),
             "fixed5_utf8": (5, h5t.CSET_UTF8, h5t.STR_NULLTERM),
             "fixed7_ascii": (7, h5t.CSET_ASCII, h5t.STR_SPACEPAD),
             "fixed7_utf8": (7, h5t.CSET_UTF8, h5t.STR_NULLPAD)}
    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as f:
        for name, (size, cset, pad) in kinds.items():
            tid = h5t.C_S1.copy()
            tid.set_size(size)
            tid.set_cset(cset)
            if size != h5t.VARIABLE:
                tid.set_strpad(pad)
            for shape, suffix in (((), ""), ((2,), "_list")):
                words = ["abc", "d"] if shape else "abcde"
                space = h5s.create_simple(shape) if shape else h5s.create(h5s.SCALAR)
                aid = h5a.create(f.id, (name + suffix).encode(), tid, space)
                if size == h5t.VARIABLE:
                    aid.write(np.array(words, dtype=h5py.string_dtype()))
                else:
                    aid.write(np.array(words, dtype=f"S{size}"), mtype=tid)
        g = f.create_group("copy")
        copy_attrs(f, g)
    with h5py.File(path) as f:
        for name in f.attrs:
            expected = f.attrs[name]
            got = attr_value(f, name)
            assert type(got) is type(expected) and np.array_equal(got, expected), name
            if isinstance(got, np.ndarray):
                assert got.dtype == expected.dtype and got.dtype.metadata == expected.dtype.metadata, name
            else:
                assert string_attr(f, name) == (expected.decode() if isinstance(expected, bytes) else expected), name
            old, new = h5a.open(f.id, name.encode()), h5a.open(f["copy"].id, name.encode())
            assert new.get_type().equal(old.get_type()), name
            assert np.array_equal(f["copy"].attrs[name], expected), name
