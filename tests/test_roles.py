"""Roles, channel axes and classes of weights: from the config, from names, from shapes."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

import wqkernels
from wqkernels import reference
from wqkernels.calibration.rows import einsum_subscripts
from wqkernels.files import roles

from .helpers import assert_bit_equal, default_grid, run_cli


@pytest.mark.parametrize("cls,role,ndim,axis", [
    ("Dense", "kernel", 2, 1), ("Conv2D", "kernel", 4, 3), ("Conv1D", "kernel", 3, 2),
    ("DepthwiseConv2D", "kernel", 4, 2), ("SeparableConv2D", "depthwise_kernel", 4, 2),
    ("SeparableConv2D", "pointwise_kernel", 4, 3), ("Conv2DTranspose", "kernel", 4, 2),
    ("Embedding", "embeddings", 2, 0), ("LSTM", "recurrent_kernel", 2, 1), (None, "kernel", 2, 1),
])
def test_channel_axis(cls, role, ndim, axis):
    assert roles.channel_axis(cls, role, ndim) == axis


@pytest.mark.parametrize("cls, role, shape, fan", [
    ("Dense", "kernel", (10, 64), 10), ("Conv2D", "kernel", (3, 3, 1, 16), 9),
    ("DepthwiseConv2D", "kernel", (3, 3, 32, 1), 9), ("DepthwiseConv2D", "kernel", (3, 3, 32, 2), 9),
    ("SeparableConv2D", "depthwise_kernel", (5, 5, 8, 3), 25), ("SeparableConv2D", "pointwise_kernel", (1, 1, 8, 4), 8),
    ("Conv2DTranspose", "kernel", (3, 3, 4, 8), 72), ("LSTM", "kernel", (8, 256), 8),
    ("Embedding", "embeddings", (100000, 16), None), ("ReversibleEmbedding", "reverse_embeddings", (16, 500), 16)])
def test_fan_in_is_what_each_output_sums(cls, role, shape, fan):
    assert roles.fan_in(cls, role, shape) == fan


def test_block_view_runs_along_the_reduction_axis():
    assert roles.block_view((3, 3, 8, 16), "Conv2D", "kernel") == ((72, 16), 0)
    assert roles.block_view((3, 3, 8, 2), "DepthwiseConv2D", "kernel") == ((9, 16), 0)
    assert roles.block_view((3, 3, 6, 8), "Conv2DTranspose", "kernel") == ((3, 3, 6, 8), 3)
    assert roles.block_view((20, 8), "Embedding", "embeddings") == ((20, 8), 1)


@pytest.mark.parametrize("equation, shape, reduced, view, axis, block, along", [
    ("abc,cd->abd", (6, 5), (0,), (6, 5), 1, None, 0),              # the output last
    ("abc,dc->abd", (5, 6), (1,), (5, 6), 0, None, 1),              # the output first
    ("abc,cde->abde", (6, 2, 4), (0,), (6, 8), 1, None, 0),         # attention's query: (dim, heads, head_dim)
    ("abcd,cde->abe", (2, 4, 6), (0, 1), (8, 6), 1, None, 0),       # attention's output
    ("abc,dce->abde", (5, 6, 3), (1,), (5, 6, 3), 1, 6, 1),         # the output split around the sum
    ("btf,tfd->btd", (8, 6, 4), (1,), (8, 6, 4), 1, 6, 1),          # t: one matrix per index
    ("abcd,cbe->ade", (3, 2, 4), (0, 1), (6, 4), 1, None, 0),       # two summed axes, one kept
])
def test_einsum_kernels_get_one_scale_per_combination_of_the_axes_they_keep(equation, shape, reduced, view, axis,
                                                                             block, along):
    config = {"class_name": "EinsumDense", "config": {"equation": equation}}
    assert roles.reduced_axes("EinsumDense", config, "e", len(shape)) == reduced
    assert roles.channel_view(shape, "EinsumDense", "kernel", reduced) == (view, axis, block)
    assert roles.block_view(shape, "EinsumDense", "kernel", reduced) == (view, along)
    kept = [n for a, n in enumerate(shape) if a not in reduced]
    assert roles.fan_in("EinsumDense", "kernel", shape, reduced) == np.prod(shape) // np.prod(kept)
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    w *= np.float32(10.0) ** (np.arange(w.size).reshape(shape) % 3)  # magnitudes far apart
    q = wqkernels.quantize(w.reshape(view), 4, axis=axis, block_size=block, method="minmax")
    assert q.scale.size == np.prod(kept)
    ratio = q.scale.ravel() / np.abs(w).max(axis=reduced).ravel()  # each its own channel's max, in C order
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)


def test_einsum_axes_without_an_equation():
    """MultiHeadAttention's sublayers have no config of their own: their names tell."""
    assert roles.reduced_axes("EinsumDense", None, "query_dense", 3) == (0,)
    assert roles.reduced_axes("EinsumDense", None, "_value_dense", 3) == (0,)
    assert roles.reduced_axes("EinsumDense", None, "output_dense", 3) == (0, 1)
    assert roles.reduced_axes("EinsumDense", None, "output_dense", 2) is None
    assert roles.reduced_axes("EinsumDense", None, "einsum_dense", 3) is None
    assert roles.reduced_axes("Dense", {"config": {"equation": "ab,bc->ac"}}, "d", 2) is None
    assert roles.reduced_axes("EinsumDense", {"config": {"equation": "abc,cd->abd"}}, "e", 3) is None  # not this kernel
    assert einsum_subscripts("...b,bc->...c") == ("...b", "bc", "...c")
    assert einsum_subscripts("ab->b") is None


def test_class_from_name():
    assert roles.class_from_name("depthwise_conv2d_3") == "DepthwiseConv2D"
    assert roles.class_from_name("conv2d_transpose") == "Conv2DTranspose"
    assert roles.class_from_name("my_thing") is None


def test_keras3_roles_from_group_names(keras3_zip):
    infos = {i.path: i for i in wqkernels.inspect(keras3_zip)}
    assert infos["layers/depthwise_conv2d/vars/0"].layer_class == "DepthwiseConv2D"
    assert [i.path for i in infos.values() if i.prunable] == [
        "layers/conv2d/vars/0", "layers/conv2d_transpose/vars/0", "layers/depthwise_conv2d/vars/0",
        "layers/embedding/vars/0"]
    assert infos["optimizer/vars/0"].role == "optimizer"


def test_bare_weights_unnamed_layers_by_shape(tmp_path, capsys):
    # no config and names that say nothing: float tensors of 2+ axes are kernels, channels last
    src, dst = tmp_path / "bare.weights.h5", tmp_path / "int8.weights.h5"
    rng = np.random.default_rng(5)
    with h5py.File(src, "w") as f:
        for name, shapes in {"dense_2": [(32, 10), (10,)], "my_projection": [(64, 32), (32,)],
                             "block": [(3, 3, 8, 16)], "scales": [(16,), (16,)]}.items():
            for i, shape in enumerate(shapes):
                f[f"layers/{name}/vars/{i}"] = rng.normal(size=shape).astype(np.float32)
        f["layers/my_projection/vars/2"] = np.arange(6, dtype=np.int32).reshape(2, 3)
    infos = {i.path: i for i in wqkernels.inspect(src)}
    assert [p for p, i in infos.items() if i.prunable] == [
        "layers/block/vars/0", "layers/dense_2/vars/0", "layers/my_projection/vars/0"]
    assert infos["layers/my_projection/vars/0"].role_source == "shape"
    assert infos["layers/dense_2/vars/0"].role_source == "names"
    code, out, err = run_cli(["rewrite", src, "-o", dst, "--bits", "8", "--exclude", "*/block/*"], capsys)
    assert code == 0, err
    assert "shapes where no name says" in out and "taken for kernels" in out
    before, after = wqkernels.load_weights(src), wqkernels.load_weights(dst)
    assert_bit_equal(after["layers/my_projection/vars/0"],
                     reference.fake_quantize(before["layers/my_projection/vars/0"], 8, axis=1,
                                             **default_grid(8)))
    for path in ("layers/block/vars/0", "layers/my_projection/vars/1", "layers/my_projection/vars/2",
                 "layers/scales/vars/0"):
        assert_bit_equal(after[path], before[path], path)
