"""Calibrated compression: GPTQ, SparseGPT, refitting and bias correction against their NumPy
twins and their invariants; rewrite(weights=, grids=); and (keras marker) the Keras walk over every
calibrated layer type, every storage, and the command line."""
from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
import zipfile

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wqkernels
from wqkernels import Recipe, fake_quantize, prune, quantize
from wqkernels.cli import main
from wqkernels.calibration import (Hessian, KernelView, einsum_view, gptq, gptq_on_grid, mean_output_error, patches,
                                   refit, sparsegpt)
from wqkernels.files import Grid, KerasFileError
from wqkernels.reference import calibration as reference

from .helpers import assert_bit_equal, run_cli, sha256_of

os.environ.setdefault("KERAS_BACKEND", "jax")

#: keras 3.15 calls np.array(variable) in ways numpy 2 deprecates, and warns about legacy .h5 saves
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]


def _problem(inputs: int, outputs: int, groups: int = 1, rows: int = 400, seed: int = 0):
    """Correlated, offset inputs (as after a ReLU layer), their Hessian and a kernel."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((inputs, inputs))
    x = np.maximum(rng.standard_normal((rows, groups, inputs)) @ mix * 0.3 + 0.2, 0)
    h = Hessian(inputs, groups)
    h.add(x)
    w = rng.standard_normal((groups, inputs, outputs)).astype(np.float32)
    return x, h, w, KernelView((groups, inputs, outputs), (0,), (1,), (2,))


# ---- the algorithms against their twins ---------------------------------------------------------

GRIDS = [dict(bits=3), dict(bits=2, symmetric=False), dict(bits=4, act_order=True),
         dict(bits=3, axis=1, block_size=8), dict(bits=2, axis=None, method="mse"),
         dict(bits=8, symmetric=False, act_order=True, axis=1, block_size=5)]


@pytest.mark.parametrize("options", GRIDS, ids=str)
@pytest.mark.parametrize("groups", [1, 3])
def test_gptq_matches_the_plain_surgeon(options, groups):
    _, h, w, view = _problem(37, 6, groups)
    options = dict(options)
    bits = options.pop("bits")
    options.setdefault("axis", -1)
    fast = gptq(w, h, bits, view=view, block=16, **options)
    slow = reference.gptq(w, h, bits, view=view, **options)
    assert_bit_equal(fast.values, slow.values, "codes")
    assert_bit_equal(fast.scale, slow.scale, "scales")
    assert_bit_equal(fast.zero_point, slow.zero_point, "zero points")


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("groups", [1, 3])
def test_gptq_on_a_grid_of_each_weight_matches_the_plain_surgeon(groups, act_order):
    _, h, w, view = _problem(29, 7, groups, seed=4)
    rng = np.random.default_rng(5)
    scale = rng.uniform(0.05, 0.5, w.shape).astype(np.float32)  # a grid of its own for every weight
    zero_point = rng.integers(-3, 4, w.shape[:2] + (1,)).astype(np.float32)
    w[0, :4, 1] = 0
    fast = gptq_on_grid(w, h, scale, zero_point, -8, 7, view=view, act_order=act_order, block=8)
    slow = reference.gptq_on_grid(w, h, scale, zero_point, -8, 7, view=view, act_order=act_order)
    assert_bit_equal(fast, slow)
    assert (fast[0, :4, 1] == 0).all()
    codes = np.rint(fast / scale) + zero_point
    assert codes.min() >= -8 and codes.max() <= 7
    assert_bit_equal((codes - zero_point) * scale, fast)


def test_gptq_on_a_grid_checks_the_grid():
    _, h, w, view = _problem(6, 2)
    with pytest.raises(ValueError, match=r"scale of shape \(3,\) does not broadcast against w of shape \(1, 6, 2\)"):
        gptq_on_grid(w, h, np.ones(3), 0, -8, 7, view=view)
    with pytest.raises(ValueError, match="scale must be positive and finite"):
        gptq_on_grid(w, h, np.zeros(2), 0, -8, 7, view=view)
    with pytest.raises(ValueError, match=r"zero_point must be in \[-8, 7\]"):
        gptq_on_grid(w, h, 1, 8, -8, 7, view=view)
    with pytest.raises(ValueError, match="qmin must be below qmax, got 7.0 and 7.0"):
        gptq_on_grid(w, h, 1, 0, 7, 7, view=view)
    with pytest.raises(TypeError, match="zero_point must be an array of numbers"):
        gptq_on_grid(w, h, 1, "0", -8, 7, view=view)


@pytest.mark.parametrize("options", [dict(sparsity=0.6), dict(sparsity=0.25), dict(n=2, m=4), dict(n=1, m=3)],
                         ids=str)
@pytest.mark.parametrize("groups", [1, 2])
def test_sparsegpt_matches_the_plain_surgeon(options, groups):
    _, h, w, view = _problem(36, 5, groups, seed=1)
    w[0, :3, 0] = 0  # zeros already there count and stay
    assert_bit_equal(sparsegpt(w, h, view=view, block=12, **options),
                     reference.sparsegpt(w, h, view=view, block=12, **options))


def test_refit_and_mean_output_error_match_their_twins():
    rng = np.random.default_rng(2)
    x, _, w, view = _problem(12, 4, 2)
    h = Hessian(12, 2)
    h.add(x * rng.uniform(0.5, 1.5, 12), targets=x)
    assert np.allclose(refit(w, h, view=view), reference.refit(w, h, view=view), rtol=1e-5, atol=1e-6)
    after = w * 0.9
    assert np.allclose(mean_output_error(h, w, after, view), reference.mean_output_error(h, w, after, view))
    assert np.allclose(mean_output_error(h.mean, w, after, view), reference.mean_output_error(h.mean, w, after, view))


@given(st.data())
def test_patches_match_positions_gathered_one_by_one(data):
    d = data.draw(st.integers(1, 2))
    spatial = data.draw(st.lists(st.integers(1, 5), min_size=d, max_size=d))
    groups = data.draw(st.sampled_from([1, 2]))
    channels = groups * data.draw(st.integers(1, 2))
    kernel = data.draw(st.lists(st.integers(1, 3), min_size=d, max_size=d))
    options = dict(strides=data.draw(st.integers(1, 2)), dilation=data.draw(st.integers(1, 2)),
                   input_dilation=data.draw(st.integers(1, 2)), groups=groups)
    padding = data.draw(st.sampled_from(["same", "causal", "pairs"] + (["valid"] if d else [])))
    spans = [(k - 1) * options["dilation"] + 1 for k in kernel]
    lengths = [(s - 1) * options["input_dilation"] + 1 for s in spatial]
    if padding == "pairs":
        padding = [(data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(d)]
    elif padding == "valid" and any(sp > n for sp, n in zip(spans, lengths)):
        padding = "same"
    x = np.random.default_rng(0).standard_normal((2, *spatial, channels)).astype(np.float32)
    pads = padding if isinstance(padding, list) else [(sp, sp) for sp in spans]
    if any(n + lo + hi < sp for n, (lo, hi), sp in zip(lengths, pads, spans)):
        return  # no output position
    assert_bit_equal(patches(x, kernel, padding=padding, **options),
                     reference.patches(x, kernel, padding=padding, **options))


# ---- invariants ---------------------------------------------------------------------------------

@given(bits=st.integers(2, 8), symmetric=st.booleans(), granularity=st.sampled_from(["channel", "tensor", "block"]),
       seed=st.integers(0, 2**16))
def test_gptq_codes_are_on_the_grid_of_quantize(bits, symmetric, granularity, seed):
    rng = np.random.default_rng(seed)
    _, h, _, _ = _problem(20, 7, seed=seed)
    w = rng.standard_normal((20, 7)).astype(np.float32)
    w[rng.random(w.shape) < 0.2] = 0
    options = {"channel": dict(axis=-1), "tensor": dict(axis=None), "block": dict(axis=0, block_size=6)}[granularity]
    q = gptq(w, h, bits, symmetric=symmetric, **options)
    grid = quantize(w, bits, symmetric=symmetric, **options)
    assert_bit_equal(q.scale, grid.scale, "scales")
    assert_bit_equal(q.zero_point, grid.zero_point, "zero points")
    low, high = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    assert q.values.min() >= low and q.values.max() <= high
    values = q.dequantize()
    again = quantize(values, bits, symmetric=symmetric, scale=q.scale, zero_point=q.zero_point, **options)
    assert_bit_equal(again.values, q.values, "codes of the values")
    assert (values[w == 0] == 0).all()


def test_gptq_rounds_to_nearest_when_the_inputs_are_uncorrelated():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 5)).astype(np.float32)
    h = np.diag(rng.uniform(0.5, 2.0, 16))
    for symmetric in (True, False):
        q = gptq(w, h, 3, symmetric=symmetric, method="mse")
        assert_bit_equal(q.dequantize(), fake_quantize(w, 3, axis=-1, symmetric=symmetric, method="mse"))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_lowers_the_output_error_on_held_out_inputs(bits):
    x, _, w, _ = _problem(48, 16, rows=2000, seed=4)
    x, w = x[:, 0], w[0]
    h = Hessian(48)
    h.add(x[:1000])
    held_out = x[1000:]

    def error(v):
        return float(np.square(held_out @ (v - w)).mean())

    assert error(gptq(w, h, bits).dequantize()) < 0.8 * error(fake_quantize(w, bits, axis=-1))


def test_sparsegpt_lowers_the_output_error_on_held_out_inputs():
    x, _, w, _ = _problem(48, 16, rows=2000, seed=5)
    x, w = x[:, 0], w[0]
    h = Hessian(48)
    h.add(x[:1000])

    def error(v):
        return float(np.square(x[1000:] @ (v - w)).mean())

    assert error(sparsegpt(w, h, 0.5)) < 0.8 * error(prune(w, 0.5))
    assert error(sparsegpt(w, h, n=2, m=4)) < 0.8 * error(wqkernels.prune_n_m(w, 2, 4, axis=0))


@given(sparsity=st.floats(0, 1), existing=st.floats(0, 0.6), seed=st.integers(0, 2**16))
def test_sparsegpt_zeroes_exactly_as_many_as_prune(sparsity, existing, seed):
    rng = np.random.default_rng(seed)
    _, h, _, _ = _problem(24, 6, seed=seed)
    w = rng.standard_normal((24, 6)).astype(np.float32)
    w[rng.random(w.shape) < existing] = 0
    y = sparsegpt(w, h, sparsity, block=7)
    assert np.count_nonzero(y == 0) == max(math.floor(sparsity * w.size), np.count_nonzero(w == 0))
    assert (y[w == 0] == 0).all()


@given(n=st.integers(0, 4), m=st.integers(1, 5), seed=st.integers(0, 2**16), transposed=st.booleans())
def test_sparsegpt_keeps_n_of_every_m_inputs(n, m, seed, transposed):
    n = min(n, m)
    rng = np.random.default_rng(seed)
    if transposed:  # (kh, kw, out, in): runs along `in`, restarting at every tap
        shape = (2, 2, 3, 7)
        view = KernelView.transposed(shape)
    else:
        shape = (22, 3)
        view = KernelView.linear(shape)
    g, k, _ = view.matrix_shape
    x = rng.standard_normal((300, k)) @ rng.standard_normal((k, k))
    h = Hessian(k)
    h.add(x)
    w = rng.standard_normal(shape).astype(np.float32)
    matrix = view.matrix(sparsegpt(w, h, n=n, m=m, view=view))[0]
    segment = view.segment or k
    for start in range(0, k, segment):
        for run in range(start, start + segment, m):
            stop = min(run + m, start + segment)
            assert ((matrix[run:stop] != 0).sum(axis=0) == min(n, stop - run)).all()


def test_the_hessian_is_the_same_in_batches():
    x, _, _, _ = _problem(9, 1, groups=2, rows=1000)
    whole, parts = Hessian(9, 2), Hessian(9, 2)
    whole.add(x, targets=x * 2)
    for i in range(0, 1000, 300):
        parts.add(x[i:i + 300], targets=x[i:i + 300] * 2)
    assert np.allclose(whole.matrix(), parts.matrix()) and np.allclose(whole.cross(), parts.cross())
    assert np.allclose(whole.matrix(), np.einsum("ngk,ngl->gkl", x, x) / 1000)
    assert np.allclose(whole.target_mean, 2 * whole.mean)


@pytest.mark.parametrize("equation,x_shape,kernel_shape", [
    ("ab,bc->ac", (5, 4), (4, 3)), ("abc,cd->abd", (2, 5, 4), (4, 3)),
    ("abc,cde->abde", (2, 5, 4), (4, 2, 3)), ("abcd,cde->abe", (2, 5, 2, 3), (2, 3, 4)),
    ("...b,bc->...c", (2, 3, 4), (4, 5)), ("abc,bcd->abd", (2, 3, 4), (3, 4, 5)),
    ("abc,cd->ad", (2, 3, 4), (4, 5))])
def test_einsum_rows_times_the_matrices_is_the_einsum(equation, x_shape, kernel_shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(x_shape)
    kernel = rng.standard_normal(kernel_shape)
    view, order, summed = einsum_view(equation, len(x_shape), kernel_shape)
    g, k, c = view.matrix_shape
    rows = (x.sum(axis=summed) if summed else x).transpose(order).reshape(-1, g, k)
    got = np.einsum("ngk,gkc->ngc", rows, view.matrix(kernel))
    want = np.einsum(equation, x, kernel)
    assert np.allclose(np.sort(got.ravel()), np.sort(want.ravel()))


@pytest.mark.parametrize("view", [KernelView.linear((3, 3, 4, 5)), KernelView.grouped((3, 2, 6), 3),
                                  KernelView.depthwise((3, 3, 4, 2)), KernelView.transposed((2, 3, 4, 5))],
                         ids=lambda v: str(v.split))
def test_views_go_both_ways(view):
    k = np.arange(view.size, dtype=np.float32).reshape(view.split)
    assert_bit_equal(view.kernel(view.matrix(k)), k)


def test_bad_arguments_say_which():
    _, h, w, _ = _problem(8, 3)
    with pytest.raises(ValueError, match="w must be a 2-D"):
        gptq(np.zeros((2, 3, 4), np.float32), h)
    with pytest.raises(ValueError, match=r"hessian must be of shape \(1, 4, 4\)"):
        gptq(np.zeros((4, 3), np.float32), h)
    with pytest.raises(ValueError, match="bits must be from 2 to 8, got 9"):
        gptq(w[0], h, 9)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        sparsegpt(w[0], h, 0.5, damping=-1)
    with pytest.raises(ValueError, match="not both"):
        sparsegpt(w[0], h, 0.5, n=2, m=4)
    with pytest.raises(ValueError, match="w has 3 NaN"):
        gptq(np.where(np.eye(8, 3) > 0, np.nan, 1).astype(np.float32), h)
    with pytest.raises(TypeError, match="filled with targets"):
        refit(w[0], h)
    with pytest.raises(ValueError, match="rows must be of shape"):
        h.add(np.zeros((3, 9)))
    with pytest.raises(ValueError, match="equation must be"):
        einsum_view("ab->b", 2, (2,))
    with pytest.raises(ValueError, match="padding must be one of"):
        patches(np.zeros((1, 4, 1)), 2, padding="full")


def test_inputs_are_not_modified():
    _, h, w, view = _problem(10, 3)
    before, hessian = w.copy(), h.matrix().copy()
    gptq(w, h, 3, view=view)
    sparsegpt(w, h, 0.5, view=view)
    assert_bit_equal(w, before)
    assert_bit_equal(h.matrix(), hessian)


# ---- rewrite with given weights and grids -------------------------------------------------------

def _weights_file(path):
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        f.create_group("vars")
        g = f.create_group("layers/dense/vars")
        g.attrs["name"] = "dense"
        g.create_dataset("0", data=rng.standard_normal((64, 32)).astype(np.float32))
        g.create_dataset("1", data=rng.standard_normal(32).astype(np.float32))
    return path


@pytest.mark.parametrize("storage", ["float32", "float16", "packed"])
def test_rewrite_stores_given_values_on_given_grids(tmp_path, storage):
    src = _weights_file(tmp_path / "m.weights.h5")
    rng = np.random.default_rng(8)
    kernel = rng.standard_normal((64, 32)).astype(np.float32)
    grid = quantize(kernel * 1.3, 3, axis=1)  # another weight's grid: the values must follow it
    values = fake_quantize(kernel, 3, axis=1, scale=grid.scale)
    bias = rng.standard_normal(32).astype(np.float32)
    recipe = Recipe(bits=3, storage=storage, symmetric=True)  # the grid's scheme
    weights = {"layers/dense/vars/0": values, "layers/dense/vars/1": bias}
    grids = {"layers/dense/vars/0": Grid(3, grid.scale, grid.zero_point)}
    wqkernels.rewrite(src, tmp_path / "out.weights.h5", recipe, weights=weights, grids=grids)
    out = tmp_path / "out.weights.h5"
    if storage == "packed":
        wqkernels.restore(out, tmp_path / "restored.weights.h5")
        out = tmp_path / "restored.weights.h5"
    stored = wqkernels.load_weights(out)
    want = values.astype(np.float16).astype(np.float32) if storage == "float16" else values
    assert_bit_equal(stored["layers/dense/vars/0"].astype(np.float32), want)
    assert_bit_equal(stored["layers/dense/vars/1"], bias)


def test_rewrite_refuses_given_weights_that_do_not_fit(tmp_path):
    src = _weights_file(tmp_path / "m.weights.h5")
    dst = tmp_path / "out.weights.h5"
    grid = Grid(3, np.ones(32, np.float32), np.zeros(32, np.int8))
    with pytest.raises(ValueError, match="weights: 'layers/x' is not a float weight"):
        wqkernels.rewrite(src, dst, Recipe(bits=3), weights={"layers/x": np.zeros(3)})
    with pytest.raises(ValueError, match="grids: 'layers/dense/vars/1' is not a weight the recipe quantizes"):
        wqkernels.rewrite(src, dst, Recipe(bits=3), grids={"layers/dense/vars/1": grid})
    with pytest.raises(TypeError, match="weights must be a mapping"):
        wqkernels.rewrite(src, dst, Recipe(bits=3), weights=[1])
    with pytest.raises(KerasFileError, match=r"has shape \(3,\), the file's weight \(64, 32\)"):
        wqkernels.rewrite(src, dst, Recipe(bits=3), weights={"layers/dense/vars/0": np.zeros(3)})
    assert not dst.exists()


# ---- Keras ---------------------------------------------------------------------------------------

def _keras():
    pytest.importorskip("jax", reason="keras tests need jax (the CPU backend)")
    return pytest.importorskip("keras", reason="keras tests need keras 3")


def _linear_output(layer, x):
    """The layer's output without bias and activation."""
    keras = _keras()
    layer.activation = keras.activations.linear
    if getattr(layer, "bias", None) is not None:
        layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    return np.asarray(layer(x))


def _rows_times_matrices(h, kernel_index, x):
    k = h.kernels[kernel_index]
    g, n, _ = k.view.matrix_shape
    rows = np.concatenate([r.reshape(len(r), g, n) for r in k.rows((x,), {}, lambda v: np.asarray(v.numpy()))])
    matrix = k.view.matrix(np.asarray(k.variable.numpy()))
    return np.einsum("ngk,gkc->ngc", rows, matrix).reshape(len(rows), -1)


LAYERS = {
    "dense": lambda L: L.Dense(5), "conv1d_causal": lambda L: L.Conv1D(4, 3, padding="causal", dilation_rate=2),
    "conv2d_same_stride": lambda L: L.Conv2D(4, 3, strides=2, padding="same"),
    "conv2d_groups": lambda L: L.Conv2D(6, (2, 3), groups=2), "conv3d": lambda L: L.Conv3D(3, 2, padding="same"),
    "depthwise1d": lambda L: L.DepthwiseConv1D(3, depth_multiplier=2, padding="same"),
    "depthwise2d": lambda L: L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same"),
    "conv1d_transpose": lambda L: L.Conv1DTranspose(3, 3, strides=2, padding="same"),
    "conv2d_transpose": lambda L: L.Conv2DTranspose(3, 3, strides=2, padding="valid"),
    "conv2d_transpose_padding": lambda L: L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1),
    "conv3d_transpose": lambda L: L.Conv3DTranspose(2, 2, strides=(1, 2, 1)),
    "einsum": lambda L: L.EinsumDense("abc,cde->abde", (3, 4, 2), bias_axes="de"),
}
SHAPES = {"dense": (4, 3, 6), "conv1d_causal": (3, 9, 4), "conv3d": (2, 4, 4, 3, 2), "depthwise1d": (2, 7, 3),
          "conv1d_transpose": (2, 5, 3), "conv3d_transpose": (2, 3, 3, 3, 2), "einsum": (2, 3, 6)}


@pytest.mark.keras
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_rows_times_matrices_is_the_layer(name):
    keras = _keras()
    from wqkernels.keras.calibration import _handler

    layer = LAYERS[name](keras.layers)
    x = np.random.default_rng(9).standard_normal(SHAPES.get(name, (2, 7, 6, 4))).astype(np.float32)
    want = _linear_output(layer, x)
    h = _handler(layer)
    got = _rows_times_matrices(h, 0, x)
    assert np.allclose(got.ravel() if name == "einsum" else got, want.reshape(got.shape) if name != "einsum"
                       else want.ravel(), atol=1e-4)


@pytest.mark.keras
def test_separable_rows_are_the_depthwise_outputs():
    keras = _keras()
    from wqkernels.keras.calibration import _handler

    layer = keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, padding="same", strides=2)
    x = np.random.default_rng(10).standard_normal((2, 6, 6, 3)).astype(np.float32)
    want = _linear_output(layer, x)
    got = _rows_times_matrices(_handler(layer), 1, x)
    assert np.allclose(got, want.reshape(got.shape), atol=1e-4)


def _every_layer_model(keras):
    """Every calibrated layer type, BatchNormalization after a layer without bias, attention,
    recurrent layers, wrappers and an Embedding (left to the data-free rewrite)."""
    L = keras.layers
    image = keras.Input((8, 8, 2), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(image)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(x)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same", name="convt")(x)
    x = L.Conv2D(16, 4, strides=4, groups=2, name="grouped")(x)
    seq = L.Reshape((16, 16))(x)
    seq = L.Conv1D(16, 3, padding="causal", name="conv1d")(seq)
    seq = L.MultiHeadAttention(2, 8, name="mha")(seq, seq)
    seq = L.TimeDistributed(L.Dense(12, name="td_dense"), name="td")(seq)
    seq = L.Bidirectional(L.LSTM(6, return_sequences=True, name="lstm"), name="bi")(seq)
    seq = L.GRU(6, return_sequences=True, name="gru")(seq)
    tokens = keras.Input((16,), dtype="int32", name="tokens")
    embedded = L.Embedding(50, 6, name="embedding")(tokens)
    seq = L.Concatenate()([seq, embedded])
    seq = L.SimpleRNN(8, name="rnn")(seq)
    head = keras.Sequential([keras.Input((8,)), L.Dense(32, activation="relu", name="hidden"),
                             L.Dense(4, name="logits")], name="head")
    return keras.Model([image, tokens], head(seq), name="every_layer")


@pytest.fixture(scope="module")
def every_layer(tmp_path_factory):
    keras = _keras()
    keras.utils.set_random_seed(0)
    model = _every_layer_model(keras)
    rng = np.random.default_rng(11)
    samples = {"image": rng.random((32, 8, 8, 2)).astype(np.float32),
               "tokens": rng.integers(0, 50, (32, 16)).astype(np.int32)}
    base = tmp_path_factory.mktemp("every")
    model.save(base / "m.keras")
    np.savez(base / "samples.npz", **samples)
    return model, base, samples


@pytest.mark.keras
@pytest.mark.slow
def test_every_layer_type_is_calibrated_and_reloads(every_layer, tmp_path):
    """(One batch: JAX compiles each eager call of a recurrent layer anew.)"""
    keras = _keras()
    from wqkernels.keras import calibrate

    model, base, samples = every_layer
    src = base / "m.keras"
    before = sha256_of(src)
    recipe = Recipe(bits=3, sparsity=0.5, min_size=0)
    result = calibrate(src, base / "samples.npz", recipe, batch_size=32)
    note = result.notes[0]
    for cls in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Conv1D", "EinsumDense",
                "Dense", "LSTM", "GRU", "SimpleRNN"):
        assert re.search(rf"\b\d+ {cls} kernels? calibrated", note), note
    assert "1 kernel left to the data-free rewrite" in note and "biases corrected" in note
    dst = tmp_path / "out.keras"
    wqkernels.rewrite(src, dst, recipe, weights=result.weights, grids=result.grids)
    assert sha256_of(src) == before
    stored = wqkernels.load_weights(dst)
    for path, value in result.weights.items():
        assert_bit_equal(stored[path], np.asarray(value), path)
    for path, grid in result.grids.items():  # the codes come back from the values with the grid
        view, options = recipe.layout_for(_entry(src, path))
        codes = quantize(stored[path].reshape(view), grid.bits, scale=grid.scale, zero_point=grid.zero_point, **options)
        assert_bit_equal(codes.dequantize().reshape(stored[path].shape), stored[path], path)
    loaded = keras.models.load_model(dst, compile=False)
    assert np.isfinite(np.asarray(loaded(samples))).all()


def _entry(src, path):
    from wqkernels.files.source import Source

    with Source(src) as source:
        return next(e for e in source.entries if e.path == path)


def _small_cnn(keras, seed=0):
    L = keras.layers
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
                              L.BatchNormalization(name="bn"), L.ReLU(), L.Conv2D(16, 3, strides=2, activation="relu",
                                                                                   name="conv2"),
                              L.Flatten(), L.Dense(32, activation="relu", name="dense"), L.Dense(4, name="logits")])
    rng = np.random.default_rng(seed)
    x = rng.random((256, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))) + 2 * (x[:, 0, 0, 0] > 0.5)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y.astype(np.int32), epochs=3, batch_size=32, verbose=0)
    return model, x


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    keras = _keras()
    model, x = _small_cnn(keras)
    base = tmp_path_factory.mktemp("cnn")
    model.save(base / "m.keras")
    model.save(base / "m.h5")
    np.save(base / "samples.npy", x[:128])
    return model, base, x[128:]


@pytest.mark.keras
def test_calibrated_outputs_are_closer_than_data_free(small_cnn, tmp_path):
    keras = _keras()
    from wqkernels.keras import rewrite_calibrated

    model, base, held_out = small_cnn
    want = np.asarray(model(held_out))
    for recipe in (Recipe(bits=2), Recipe(sparsity=0.8), Recipe(sparsity="2:4", min_size=0)):
        wqkernels.rewrite(base / "m.keras", tmp_path / "free.keras", recipe)
        rewrite_calibrated(base / "m.keras", tmp_path / "cal.keras", recipe, base / "samples.npy")
        errors = [float(np.square(np.asarray(keras.models.load_model(tmp_path / f"{n}.keras", compile=False)(held_out))
                                  - want).mean()) for n in ("free", "cal")]
        assert errors[1] < errors[0], (recipe, errors)


@pytest.mark.keras
def test_calibrated_narrow_kernels_get_the_extra_bits_of_the_data_free_rule(small_cnn):
    """The first 3x3 convolution over one channel (9 weights per output channel) is rounded at
    bits + narrow_bits, as a data-free rewrite would store it; the second (72) at bits."""
    from wqkernels.keras import calibrate

    _, base, _ = small_cnn
    for recipe, narrow in ((Recipe(bits=2), 4), (Recipe(bits=2, narrow_bits=0), 2)):
        grids = calibrate(base / "m.keras", base / "samples.npy", recipe).grids
        bits = {path.split("/")[1]: grid.bits for path, grid in grids.items()}
        assert bits == {"conv2d": narrow, "conv2d_1": 2, "dense": 2, "dense_1": 2}, bits


@pytest.mark.keras
def test_bias_correction_moves_the_batch_norm_after_a_layer_without_bias(small_cnn, tmp_path):
    from wqkernels.keras import calibrate

    _, base, _ = small_cnn
    result = calibrate(base / "m.keras", base / "samples.npy", Recipe(bits=2))
    corrected = [p for p in result.weights if p not in result.grids]
    assert "layers/batch_normalization/vars/2" in corrected  # its moving mean
    plain = calibrate(base / "m.keras", base / "samples.npy", Recipe(bits=2), bias_correction=False)
    assert set(plain.weights) == set(plain.grids)


@pytest.mark.keras
@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("storage", ["float32", "float16", "packed"])
def test_every_storage_writes_what_keras_loads(small_cnn, tmp_path, storage, fmt, capsys):
    keras = _keras()
    _, base, held_out = small_cnn
    dst = tmp_path / f"out.{fmt}"
    code, out, err = run_cli(["rewrite", base / f"m.{fmt}", "-o", dst, "--bits", "3", "--sparsity", "0.5",
                              "--storage", storage, "--calibration", base / "samples.npy"], capsys)
    assert code == 0, err
    assert "calibrated on 128 samples" in out
    if storage == "packed":
        reference_float = tmp_path / f"float.{fmt}"
        assert run_cli(["rewrite", base / f"m.{fmt}", "-o", reference_float, "--bits", "3", "--sparsity", "0.5",
                        "--calibration", base / "samples.npy"], capsys)[0] == 0
        assert run_cli(["restore", dst, "-o", tmp_path / f"restored.{fmt}"], capsys)[0] == 0
        a, b = wqkernels.load_weights(tmp_path / f"restored.{fmt}"), wqkernels.load_weights(reference_float)
        for path in a:
            assert_bit_equal(a[path], b[path], path)
        dst = tmp_path / f"restored.{fmt}"
    loaded = keras.models.load_model(dst, compile=False)
    assert np.isfinite(np.asarray(loaded(held_out))).all()


@pytest.mark.keras
@pytest.mark.parametrize("bits", [4, 8])
def test_keras_storage_of_a_calibrated_model_loads_in_keras(small_cnn, tmp_path, capsys, bits):
    keras = _keras()
    model, base, held_out = small_cnn
    dst = tmp_path / "out.keras"
    code, out, err = run_cli(["rewrite", base / "m.keras", "-o", dst, "--bits", str(bits), "--storage", "keras",
                              "--calibration", base / "samples.npy"], capsys)
    assert code == 0, err
    assert f"Keras-native int{bits}" in out and "calibrated on 128 samples" in out
    loaded = keras.models.load_model(dst, compile=False)
    assert loaded.get_layer("dense").quantization_mode == f"int{bits}"
    want, got = np.asarray(model(held_out)), np.asarray(loaded(held_out))
    assert np.isfinite(got).all() and np.mean(np.argmax(got, -1) == np.argmax(want, -1)) > 0.9


def _attention_model(keras, dim=16):
    """A transformer block over the 8 rows of a digit-like image: EinsumDense embedding (contracting
    an axis that is not the kernel's first), MultiHeadAttention, an EinsumDense feed-forward, Dense."""
    L = keras.layers
    rows = keras.Input((8, 8), name="rows")
    x = L.EinsumDense("btf,tfd->btd", (8, dim), bias_axes="td", name="embed")(rows)
    x = L.LayerNormalization(name="norm")(x + L.MultiHeadAttention(2, dim // 2, name="attention")(x, x))
    x = L.EinsumDense("btd,df->btf", (None, 2 * dim), bias_axes="f", activation="relu", name="ffn")(x)
    return keras.Model(rows, L.Dense(10, name="head")(L.GlobalAveragePooling1D()(x)))


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    keras = _keras()
    keras.utils.set_random_seed(1)
    model = _attention_model(keras)
    x = np.random.default_rng(12).random((320, 8, 8)).astype(np.float32)
    base = tmp_path_factory.mktemp("attention")
    model.save(base / "m.keras")
    np.save(base / "samples.npy", x[:256])
    return model, base, x[256:]


@pytest.mark.keras
@pytest.mark.parametrize("bits,granularity", [(8, "channel"), (4, "channel"), (4, "block:8")])
def test_keras_native_layers_hold_what_the_calibration_chose(attention, tmp_path, bits, granularity):
    """Dense and EinsumDense kernels are rounded onto Keras's own grid: the loaded file predicts
    what a float model holding the calibrated values predicts, better than the data-free file."""
    keras = _keras()
    from wqkernels.keras import calibrate

    model, base, held_out = attention
    recipe = Recipe(bits=bits, granularity=granularity, storage="keras", activations="float")
    result = calibrate(base / "m.keras", base / "samples.npy", recipe)
    native, chosen, free = tmp_path / "native.keras", tmp_path / "chosen.keras", tmp_path / "free.keras"
    wqkernels.rewrite(base / "m.keras", native, recipe, weights=result.weights, grids=result.grids)
    wqkernels.rewrite(base / "m.keras", chosen, Recipe(), weights={p: np.asarray(v) for p, v in result.weights.items()})
    wqkernels.rewrite(base / "m.keras", free, recipe)
    loaded = keras.saving.load_model(native)
    modes = {layer.name: layer.quantization_mode for layer in loaded.layers if layer.quantization_mode}
    assert modes == dict.fromkeys(("embed", "ffn", "head"), f"int{bits}")
    stored = wqkernels.load_weights(native)
    for path in result.grids:
        np.testing.assert_allclose(stored[path], np.asarray(result.weights[path]), rtol=1e-6, atol=0, err_msg=path)
    want = np.asarray(keras.saving.load_model(chosen)(held_out))
    got = np.asarray(loaded(held_out))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    floats = np.asarray(model(held_out))
    errors = [float(np.square(y - floats).mean()) for y in (got, np.asarray(keras.saving.load_model(free)(held_out)))]
    assert errors[0] < errors[1], errors


@pytest.mark.keras
@pytest.mark.parametrize("bits,granularity", [(8, "channel"), (4, "block:8")])
def test_bfloat16_kernels_are_calibrated_on_keras_grid(tmp_path, bits, granularity):
    """bfloat16 Dense kernels: calibrated (their biases corrected in bfloat16), the codes those of
    the calibrated values on the grid of the scales as stored, the outputs closer than data-free."""
    keras = _keras()
    from wqkernels import keras_schemes as ks
    from wqkernels.keras import calibrate

    L = keras.layers
    keras.utils.set_random_seed(2)
    inp = keras.Input((16,))
    model = keras.Model(inp, L.Dense(8, dtype="bfloat16", name="b")(L.Dense(32, activation="relu", dtype="bfloat16",
                                                                            name="a")(inp)))
    x = np.random.default_rng(3).standard_normal((320, 16)).astype(np.float32)
    src, dst, free = tmp_path / "m.keras", tmp_path / "out.keras", tmp_path / "free.keras"
    model.save(src)
    recipe = Recipe(bits=bits, granularity=granularity, storage="keras", activations="float")
    result = calibrate(src, x[:256], recipe)
    assert "2 Dense kernels calibrated" in result.notes[0] and "2 biases corrected" in result.notes[0]
    wqkernels.rewrite(src, dst, recipe, weights=result.weights, grids=result.grids)
    wqkernels.rewrite(src, free, recipe)
    stored = wqkernels.load_weights(dst)
    for path, grid in result.grids.items():
        assert_bit_equal(ks.round_bfloat16(grid.scale), np.asarray(grid.scale, np.float32), path)
        chosen = np.asarray(result.weights[path], np.float32)  # the calibration's values, rounded to bfloat16
        np.testing.assert_allclose(stored[path], chosen, rtol=2 ** -8, atol=0, err_msg=path)
    floats = np.asarray(model(x[256:]), np.float32)
    errors = [float(np.square(np.asarray(keras.saving.load_model(p)(x[256:]), np.float32) - floats).mean())
              for p in (dst, free)]
    assert errors[0] < errors[1], errors


#: bad samples for the small CNN (inputs (None, 8, 8, 1)): what is saved, what the one line says
BAD_SAMPLES = {
    "missing": (None, "none.npy: no such file"),
    "shape": (lambda: np.zeros((4, 8, 8), np.float32), "samples of shape (4, 8, 8) do not fit input"),
    "width": (lambda: np.zeros((4, 8, 7, 1), np.float32), "samples of shape (4, 8, 7, 1) do not fit input"),
    "objects": (lambda: np.array([{}], dtype=object), "arrays of Python objects are not read"),
    "strings": (lambda: np.full((4, 8, 8, 1), "a"), "must be numbers, got dtype <U1"),
    "complex": (lambda: np.zeros((4, 8, 8, 1), np.complex64), "must be numbers, got dtype complex64"),
    "none": (lambda: np.zeros((0, 8, 8, 1), np.float32), "no samples"),
    "nan": (lambda: np.full((4, 8, 8, 1), np.nan, np.float32), "hold NaN or infinity"),
    "overflow": (lambda: np.full((4, 8, 8, 1), 1e300), "hold NaN or infinity"),
    "two arrays": (lambda: {"a": np.zeros((4, 8, 8, 1)), "b": np.zeros((4, 8, 8, 1))},
                   "holds 2 arrays (a, b) but the model has 1 input"),
    "no arrays": (lambda: {}, "holds 0 arrays () but the model has 1 input"),
    "not numpy": (lambda: b"not a numpy file", "not a .npy or .npz file of numbers"),
}


def _save_samples(path_stem, made):
    """`made` saved as .npy (an array), .npz (a dict) or raw bytes as .npy; the path."""
    if isinstance(made, dict):
        np.savez(f"{path_stem}.npz", **made)
        return f"{path_stem}.npz"
    if isinstance(made, bytes):
        with open(f"{path_stem}.npy", "wb") as f:
            f.write(made)
    else:
        np.save(f"{path_stem}.npy", made, allow_pickle=made.dtype == object)
    return f"{path_stem}.npy"


@pytest.mark.keras
@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_samples_are_one_line_and_nothing_is_written(small_cnn, tmp_path, capsys, case):
    _, base, _ = small_cnn
    make, message = BAD_SAMPLES[case]
    samples = tmp_path / "none.npy" if make is None else _save_samples(tmp_path / "samples", make())
    before = sorted(os.listdir(tmp_path))
    dst = tmp_path / "out.keras"
    code, out, err = run_cli(["rewrite", base / "m.keras", "-o", dst, "--bits", "3", "--calibration", samples],
                             capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("wqkernels rewrite: ") and "Traceback" not in err + out
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no scratch left


@pytest.mark.keras
@pytest.mark.parametrize("case", ["missing", "objects", "strings", "complex", "none", "nan", "not numpy"])
def test_samples_are_checked_before_the_model_loads(small_cnn, tmp_path, monkeypatch, case):
    """What the samples alone show to be unusable fails before Keras loads the model (seconds)."""
    from wqkernels.keras import calibration
    _, base, _ = small_cnn
    make, message = BAD_SAMPLES[case]
    samples = tmp_path / "none.npy" if make is None else _save_samples(tmp_path / "samples", make())

    def no_model(*args):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(calibration, "_load_model", no_model)
    with pytest.raises(ValueError, match=re.escape(message)):
        calibration.calibrate(base / "m.keras", samples, wqkernels.Recipe(bits=3))


@pytest.mark.keras
def test_samples_of_each_input_of_a_two_input_model(tmp_path, capsys):
    keras = _keras()
    L = keras.layers
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    out = L.Dense(3, name="head")(L.Concatenate()([L.Dense(8, name="da")(a), L.Dense(8, name="db")(b)]))
    keras.Model([a, b], out).save(tmp_path / "m.keras")
    rng = np.random.default_rng(3)
    xa, xb = rng.standard_normal((64, 6)), rng.standard_normal((64, 4))
    np.savez(tmp_path / "by_name.npz", b=xb, a=xa)
    code, out, err = run_cli(["rewrite", tmp_path / "m.keras", "-o", tmp_path / "o.keras", "--bits", "3",
                              "--min-size", "0", "--calibration", tmp_path / "by_name.npz"], capsys)
    assert code == 0 and "calibrated on 64 samples" in out, err
    np.savez(tmp_path / "one.npz", xa)
    np.savez(tmp_path / "counts.npz", a=xa, b=xb[:10])
    np.savez(tmp_path / "three.npz", a=xa, b=xb, c=xb)
    for name, message in [("one.npz", "holds 1 arrays (arr_0) but the model has 2 inputs (a, b)"),
                          ("counts.npz", "the inputs have different numbers of samples: [64, 10]"),
                          ("three.npz", "holds 3 arrays (a, b, c) but the model has 2 inputs (a, b)")]:
        dst = tmp_path / f"bad-{name}.keras"
        code, _, err = run_cli(["rewrite", tmp_path / "m.keras", "-o", dst, "--bits", "3", "--calibration",
                                tmp_path / name], capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
        assert not dst.exists()


@pytest.mark.keras
def test_the_command_line_says_what_is_wrong_in_one_line(small_cnn, tmp_path, capsys, monkeypatch):
    _, base, _ = small_cnn
    dst = tmp_path / "out.keras"
    code, _, err = run_cli(["rewrite", base / "m.keras", "--out-dir", tmp_path / "d", "--bits", "3",
                            "--calibration", base / "samples.npy"], capsys)
    assert code == 2 and "--calibration rewrites one model" in err
    assert not (tmp_path / "d").exists()
    weights_only = tmp_path / "m.weights.h5"
    _small_cnn(_keras())[0].save_weights(weights_only)
    before = sorted(os.listdir(tmp_path))
    code, _, err = run_cli(["rewrite", weights_only, "-o", tmp_path / "o.weights.h5", "--bits", "3",
                            "--calibration", base / "samples.npy"], capsys)
    assert code == 1 and "no model config" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == before
    code, _, err = run_cli(["rewrite", base / "m.keras", "-o", dst, "--calibration", base / "samples.npy"], capsys)
    assert code == 1 and "calibration needs a recipe that prunes or quantizes" in err, err
    monkeypatch.delitem(sys.modules, "wqkernels.keras.calibration", raising=False)
    monkeypatch.delitem(sys.modules, "wqkernels.keras", raising=False)
    monkeypatch.setitem(sys.modules, "keras", None)
    code, _, err = run_cli(["rewrite", base / "m.keras", "-o", dst, "--bits", "3", "--calibration",
                            base / "samples.npy"], capsys)
    assert code == 1 and "pip install 'wqkernels[keras]'" in err and len(err.strip().splitlines()) == 1, err
    assert err.count("wqkernels[keras]") == 1, err
    assert not dst.exists()


@pytest.mark.keras
def test_a_subclassed_model_is_calibrated_through_its_calls(tmp_path):
    keras = _keras()
    from wqkernels.keras import calibrate

    @keras.saving.register_keras_serializable(package="wqkernels_test")
    class TwoLayers(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.first = keras.layers.Dense(16, activation="relu")
            self.second = keras.layers.Dense(3)

        def call(self, x):
            return self.second(self.first(x))

    model = TwoLayers()
    x = np.random.default_rng(12).standard_normal((64, 10)).astype(np.float32)
    model(x)
    model.save(tmp_path / "m.keras")
    result = calibrate(tmp_path / "m.keras", x, Recipe(bits=2))
    assert "2 Dense kernels calibrated" in result.notes[0]


def test_keras_subpackage_exports_the_callback_and_the_calibration():
    pytest.importorskip("jax", reason="keras tests need jax (the CPU backend)")
    pytest.importorskip("keras", reason="keras tests need keras 3")
    import wqkernels.keras as wk
    assert {"PruningCallback", "PruningSchedule", "calibrate", "rewrite_calibrated", "Calibration",
            "load_samples"} <= set(wk.__all__) <= set(dir(wk))
    from wqkernels.keras.calibration import rewrite_calibrated
    assert wk.rewrite_calibrated is rewrite_calibrated and wk.PruningCallback.__name__ == "PruningCallback"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        wk.nothing


def _edited_archive(src, dst, edit) -> None:
    """A copy of the .keras archive `src` with `edit(config)` applied to its config.json."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as z:
        for info in a.infolist():
            data = a.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            z.writestr(info, data)


def _widen_last_dense(config) -> None:
    dense = [layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense"]
    dense[-1]["config"]["units"] += 1


@pytest.mark.keras
@pytest.mark.parametrize("edit, reason", [
    (_widen_last_dense, "could not be loaded. Example error message for object <Dense"),
    (lambda config: config["config"]["layers"][-1].__setitem__("class_name", "NoSuchLayer"),
     "Could not deserialize 'keras.layers.NoSuchLayer'"),
])
def test_model_keras_cannot_load_is_our_one_line_only(small_cnn, tmp_path, capfd, monkeypatch, edit, reason):
    """Keras's own warnings and log lines while it failed to load a damaged model were printed
    before our error line: now only the line, naming the file, with Keras's reason on it."""
    from wqkernels.keras import calibration
    _, base, _ = small_cnn
    load = calibration.keras.models.load_model

    def noisy_load(*args, **kwargs):  # as Keras's log lines and the backend's C++ code write
        os.write(2, b"WARNING:absl:a log line written to the descriptor\n")
        warnings.warn("Skipping nested container", UserWarning)
        return load(*args, **kwargs)
    monkeypatch.setattr(calibration.keras.models, "load_model", noisy_load)
    src = tmp_path / "damaged.keras"
    _edited_archive(base / "m.keras", src, edit)
    capfd.readouterr()
    code = main(["rewrite", str(src), "-o", str(tmp_path / "o.keras"), "--bits", "4",
                 "--calibration", str(base / "samples.npy")])
    out, err = capfd.readouterr()
    assert code == 1 and out == "", out
    (line,) = err.splitlines()
    assert line.startswith(f"wqkernels rewrite: error: {src}: Keras cannot load the model (") and reason in line
    assert not (tmp_path / "o.keras").exists()


@pytest.mark.keras
def test_loading_prints_nothing_of_keras_and_notes_what_it_warned(small_cnn, tmp_path, capfd, monkeypatch):
    """A model that loads: Keras's noise (its warning of a Functional model's own container on
    every load) is dropped, and a warning that matters is a note of the report, not Keras's text."""
    from wqkernels.keras import calibration
    _, base, _ = small_cnn
    load = calibration.keras.models.load_model

    def warning_load(*args, **kwargs):
        warnings.warn("Skipping variable loading for optimizer 'adam', because it has 12 variables whereas "
                      "the saved optimizer has 0 variables.", UserWarning)
        print("WARNING:absl:a log line", file=sys.stderr)
        return load(*args, **kwargs)
    monkeypatch.setattr(calibration.keras.models, "load_model", warning_load)
    capfd.readouterr()
    code = main(["rewrite", str(base / "m.keras"), "-o", str(tmp_path / "o.keras"), "--bits", "4", "--quiet",
                 "--calibration", str(base / "samples.npy")])
    out, err = capfd.readouterr()
    assert code == 0
    assert "Warning" not in err + out and "absl" not in err + out and "_operations_by_depth" not in err + out
    assert ("note: Keras, loading the model: Skipping variable loading for optimizer 'adam', because it has "
            "12 variables whereas the saved optimizer has 0 variables.") in out.splitlines()


@pytest.mark.keras
def test_loads_in_threads_leave_the_process_output_alone():
    """The standard descriptors belong to the whole process: two loads overlapping in threads
    pointed them for good at the first one's deleted temporary file.  Only the main thread
    redirects them."""
    import threading

    from wqkernels.keras.calibration import _keras_output

    def where():
        return [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]

    before = where()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with _keras_output():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with _keras_output():
            second_in.set()
            first_out.wait(10)
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert where() == before
    with _keras_output():  # the main thread's load does redirect them, and puts them back
        assert where() != before
    assert where() == before
