"""Valid files that were refused or damaged: big-endian kernels, name lists too long for an
object header, strings escaped where they are shown."""
from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe

from .helpers import assert_bit_equal

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
import make_keras2_files as k2  # noqa: E402


@pytest.mark.parametrize("recipe", [Recipe(bits=4), Recipe(sparsity=0.5), Recipe(sparsity=0.5, bits=8, storage="packed"),
                                    Recipe(storage="float16")])
def test_big_endian_kernels_read_like_little_endian(recipe, tmp_path):
    """Keras loads big-endian float kernels; they were refused ('got dtype >f4')."""
    little, big = tmp_path / "le.h5", tmp_path / "be.h5"
    k2.write_tfkeras_weights(little)
    k2.write_tfkeras_weights(big)
    with h5py.File(big, "a") as f:
        for name in ("dense_1/dense_1/kernel:0", "conv2d_1/conv2d_1/kernel:0"):
            data = f[name][()]
            del f[name]
            f.create_dataset(name, data=data.astype(">f4"))
    assert [i.sparsity for i in wqkernels.inspect(big)] == [i.sparsity for i in wqkernels.inspect(little)]
    wqkernels.rewrite(big, tmp_path / "o-be.h5", recipe)
    wqkernels.rewrite(little, tmp_path / "o-le.h5", recipe)
    a, b = wqkernels.load_weights(tmp_path / "o-be.h5"), wqkernels.load_weights(tmp_path / "o-le.h5")
    for k in b:
        assert_bit_equal(a[k].astype(a[k].dtype.newbyteorder("=")), b[k], k)


def test_name_list_too_long_for_a_header_is_split_like_keras(tmp_path):
    """A legacy file written with dense attribute storage holds 2500 layer names in one
    attribute; the output (default HDF5 format) could not: 'object header message is too large'."""
    n = 2500
    names = [f"a_dense_layer_with_a_long_name_{i}" for i in range(n)]  # 35 bytes each: 87 KB
    src = tmp_path / "many.h5"
    with h5py.File(src, "w", libver="latest") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in names])
        for i, name in enumerate(names):
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode()])
            g.create_dataset(f"{name}/kernel:0", data=np.full((2, 2), i % 7 + 0.5, np.float32))
    dst = tmp_path / "o.h5"
    wqkernels.rewrite(src, dst, Recipe(bits=8))
    with h5py.File(dst) as f:
        chunks = [a for a in f.attrs if a.startswith("layer_names")]
        assert "layer_names" not in f.attrs and len(chunks) > 1
        assert all(f.attrs[a].nbytes <= 64512 for a in chunks)
        data = np.asarray([name.encode() for name in names])
        expected = 1
        while any(p.nbytes > 64512 for p in np.array_split(data, expected)):
            expected += 1
        assert len(chunks) == expected  # the fewest chunks, as Keras's loop finds them
        read = [v.decode() for k in range(len(chunks)) for v in f.attrs[f"layer_names{k}"]]
    assert [v for v in read] == names
    assert [i.path for i in wqkernels.inspect(dst)] == [i.path for i in wqkernels.inspect(src)]


def test_a_damaged_dataset_the_rewrite_only_copies_does_not_refuse_the_file(tmp_path):
    """A small optimizer dataset whose checksummed chunk is damaged is copied as it is (or
    dropped with --strip-optimizer): the walk judges structure and reads values only where a
    weight is rewritten, so the file rewrites as before; reading that dataset stays an error."""
    src, dst = tmp_path / "m.weights.h5", tmp_path / "out.weights.h5"
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((16, 8)).astype(np.float32)
    marker = np.full(64, 1234.5678, np.float32)
    with h5py.File(src, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        g = f.create_group("layers/dense/vars")
        g.create_dataset("0", data=kernel)
        g.create_dataset("1", data=np.zeros(8, np.float32))
        f.create_group("optimizer/vars").create_dataset("0", data=marker, chunks=(64,), fletcher32=True)
    clean = tmp_path / "clean.weights.h5"
    wqkernels.rewrite(src, clean, Recipe(bits=8))
    want = wqkernels.load_weights(clean)["layers/dense/vars/0"]
    raw = bytearray(src.read_bytes())
    at = raw.find(marker.tobytes())
    assert at > 0
    raw[at] ^= 0xFF
    src.write_bytes(bytes(raw))
    with h5py.File(src, "r") as f, pytest.raises(OSError):
        f["optimizer/vars/0"][()]  # the damage is real

    for recipe in (Recipe(bits=8), Recipe(bits=8, strip_optimizer=True)):
        wqkernels.rewrite(src, dst, recipe)
        with h5py.File(dst, "r") as f:
            assert_bit_equal(f["layers/dense/vars/0"][()], want)
            assert ("optimizer" in f) != recipe.strip_optimizer


@pytest.mark.parametrize("recipe", [Recipe(bits=8, storage="float16"), Recipe(bits=4, storage="packed", min_size=1)])
def test_groups_tracking_creation_order_with_many_members(recipe, tmp_path):
    """A group that tracks its members' creation order keeps them in dense storage past 8; a
    group made with its property list took that storage's addresses in the source file, and no
    member could be added to it ('address of object past end of allocation')."""
    src, dst, back = tmp_path / "m.weights.h5", tmp_path / "o.weights.h5", tmp_path / "b.weights.h5"
    rng = np.random.default_rng(0)
    names = [f"dense_{i}" for i in (3, 1, 4, 10, 5, 9, 2, 6, 0, 7, 8)]  # listed in creation order
    with h5py.File(src, "w", track_order=True) as f:
        f.create_group("vars").attrs["name"] = "model"
        for name in names:
            g = f.create_group(f"layers/{name}/vars", track_order=True)
            g.attrs["name"] = name
            g.create_dataset("0", data=rng.standard_normal((4, 4)).astype(np.float32))
            g.create_dataset("1", data=rng.standard_normal(4).astype(np.float32))
    wqkernels.rewrite(src, dst, recipe)
    if recipe.storage == "packed":
        wqkernels.restore(dst, back)
        dst = back
    with h5py.File(dst) as f:
        assert list(f["layers"]) == names
        assert all(f[f"layers/{n}/vars/0"].shape == (4, 4) for n in names)
    assert sorted(wqkernels.load_weights(dst)) == sorted(wqkernels.load_weights(src))
