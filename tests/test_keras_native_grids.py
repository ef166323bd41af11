"""storage="keras" with a grid given in Keras's own layout (a calibration's): the file stores the
given scales and zero points and the codes of the values on them; Keras's own grid given back
writes Keras's own file; GPTQ on Keras's grid gives values whose codes the file keeps."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wqkernels
from wqkernels import Recipe, keras_schemes
from wqkernels.calibration import Hessian, KernelView, einsum_view, gptq_on_grid
from wqkernels.files import Grid, KerasFileError
from wqkernels.files.keras_native import (NativeKernel, einsum_layout, grid_values, native_grid, native_kernels,
                                          on_native_grid)
from wqkernels.files.source import Source
from wqkernels.reference import keras_schemes as reference

from .helpers import assert_bit_equal
from .keras_env import KERAS_MARKS
from .test_keras_native import EQUATIONS, MODES, _datasets, zoo_model

pytestmark = [*KERAS_MARKS, pytest.mark.filterwarnings("ignore::UserWarning")]


# ---- Keras's quantizers on given scales ------------------------------------------------------------

@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([((40, 6), (0,)), ((5, 7, 3), (1,)), ((4, 3, 5), (0, 2)),
                                                     ((2, 3, 2, 3, 2, 2), (0, 2, 4))]),
       st.sampled_from([keras_schemes.INT8, keras_schemes.INT4]))
def test_absmax_on_given_multipliers_is_its_numpy_twin(seed, case, code_range):
    shape, axes = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    keep = tuple(1 if a in axes else n for a, n in enumerate(shape))
    scale = rng.uniform(0.5, 200.0, keep).astype(np.float32)
    fast_values, slow_values = np.empty_like(x), np.empty_like(x)
    codes, got = keras_schemes.absmax_quantize(x, axes, code_range, values=fast_values, scale=scale)
    want, _ = reference.absmax_quantize(x, axes, code_range, values=slow_values, scale=scale)
    assert_bit_equal(codes, want, "codes")
    assert_bit_equal(got, scale, "scales")
    np.testing.assert_array_equal(fast_values, slow_values)  # (the kernel rounds -0.4 to +0, NumPy to -0)


def test_keras_own_scales_given_back_give_keras_own_codes():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((130, 24)) * rng.uniform(1e-3, 3, 24)).astype(np.float32)
    x[:, 0] = 0
    codes, scale = keras_schemes.absmax_quantize(x, (0,), keras_schemes.INT4)
    again, _ = keras_schemes.absmax_quantize(x, (0,), keras_schemes.INT4, scale=scale)
    assert_bit_equal(again, codes)
    for axis in (0, 1):
        codes, scale, zero = keras_schemes.grouped_quantize(x, 32, axis)
        values = np.empty_like(x)
        again = keras_schemes.grouped_quantize(x, 32, axis, values=values, scale=scale, zero=zero)
        for a, b in zip(again, (codes, scale, zero)):
            assert_bit_equal(a, b)
        assert_bit_equal(values, keras_schemes.grouped_dequantize(codes, scale, zero, 32, axis))


def test_given_scales_and_zero_points_are_checked():
    x = np.ones((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"scale must be of shape \(1, 4\), got \(4,\)"):
        keras_schemes.absmax_quantize(x, (0,), scale=np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"scale must be positive and finite, got 0.0 at index \(0, 2\)"):
        keras_schemes.absmax_quantize(x, (0,), scale=np.array([[1, 1, 0, 1]], np.float32))
    _, scale, zero = keras_schemes.grouped_quantize(x, 4, 0)
    with pytest.raises(ValueError, match=r"zero must be integers in \[-8, 7\], got 9"):
        keras_schemes.grouped_quantize(x, 4, 0, scale=scale, zero=np.full(zero.shape, 9))
    with pytest.raises(ValueError, match="scale and zero are given together"):
        keras_schemes.grouped_quantize(x, 4, 0, scale=scale)
    bad = x.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"measure has 1 NaN or infinite value; the first is nan at index \(1, 1\)"):
        keras_schemes.absmax_quantize(x, (0,), measure=bad)


# ---- EinsumDense scales --------------------------------------------------------------------------

@pytest.mark.parametrize("equation", EQUATIONS)
def test_stored_scale_comes_back_in_the_kernels_axes(equation):
    layout = einsum_layout(equation)
    kernel = equation.split(",")[1].split("->")[0]
    shape = tuple(range(2, 2 + len(kernel)))
    keep = tuple(1 if a in layout.reduced else n for a, n in enumerate(shape))
    scale = np.random.default_rng(len(equation)).random(keep).astype(np.float32)
    assert_bit_equal(layout.kept_scale(layout.stored_scale(scale), keep), scale)


# ---- GPTQ on Keras's grid --------------------------------------------------------------------------

#: (layer class, equation or None, kernel shape, bits, block): Dense, EinsumDense contracting an
#: axis that is not the first (the int4 layout flattens it in C order), and one with groups
LAYOUTS = [("Dense", None, (48, 20), 8, None), ("Dense", None, (48, 21), 4, None), ("Dense", None, (50, 20), 4, 16),
           ("EinsumDense", "abc,dce->abde", (5, 12, 6), 8, None), ("EinsumDense", "btf,tfd->btd", (4, 12, 6), 4, None),
           ("EinsumDense", "btf,tfd->btd", (4, 12, 6), 4, 5), ("EinsumDense", "abc,cde->abde", (12, 3, 5), 4, 8)]


def _native(layer_class, equation):
    return NativeKernel(layer_class, "layer", None, True, None if equation is None else einsum_layout(equation))


def _layer_inputs(layer_class, equation, shape, rng, rows=300):
    """Correlated inputs of the layer as rows of its view, the view, and their Hessian."""
    if equation is None:
        view = KernelView.linear(shape)
    else:
        ndim = len(equation.split(",")[0])
        view = einsum_view(equation, ndim, shape)[0]
    groups, inputs, _ = view.matrix_shape
    x = np.maximum(rng.standard_normal((rows, groups, inputs)) @ rng.standard_normal((inputs, inputs)) * 0.3 + 0.2, 0)
    h = Hessian(inputs, groups)
    h.add(x)
    return x, view, h


def _output_error(x, view, change) -> float:
    return float(np.square(np.einsum("ngk,gkc->ngc", x, view.matrix(change))).mean())


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_gptq_on_keras_grid_keeps_its_codes_and_lowers_the_output_error(layout):
    layer_class, equation, shape, bits, block = layout
    native = _native(layer_class, equation)
    gains = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        x, view, h = _layer_inputs(layer_class, equation, shape, rng)
        grid = native_grid(native, w, bits, block, "minmax", False)
        scale, zero_point, low, high = grid_values(native, shape, grid, block)
        rounded = gptq_on_grid(w, h, scale, zero_point, low, high, view=view)
        on_grid = np.clip(np.rint(rounded / scale) + zero_point, low, high)
        np.testing.assert_allclose((on_grid - zero_point) * scale, rounded, rtol=1e-6, atol=0)
        arrays, values = on_native_grid(native, rounded, grid, block, False, np.empty_like(rounded))
        arrays = dict(arrays)
        assert_bit_equal(arrays["scale"], grid.scale, "scales as given")
        np.testing.assert_allclose(values, rounded, rtol=1e-6, atol=0)
        plain, plain_values = on_native_grid(native, w, grid, block, False, np.empty_like(w))
        for kind in ("zero", "g_idx"):
            if kind in arrays:
                assert_bit_equal(arrays[kind], dict(plain)[kind], kind)
        gains.append(_output_error(x, view, plain_values - w) / _output_error(x, view, values - w))
    assert min(gains) > 1.0, gains


def test_bfloat16_scales_are_the_stored_ones():
    native = _native("Dense", None)
    w = np.random.default_rng(1).standard_normal((40, 10)).astype(np.float32)
    w = keras_schemes.round_bfloat16(w)
    grid = native_grid(native, w, 8, None, "minmax", True)
    assert_bit_equal(keras_schemes.round_bfloat16(grid.scale), grid.scale)
    arrays, values = on_native_grid(native, w, grid, None, True, np.empty_like(w))
    assert_bit_equal(values, dict(arrays)["codes"] / grid.scale)


# ---- the file --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode_name", list(MODES))
def test_keras_own_grid_given_back_writes_keras_own_file(tmp_path, mode_name):
    src, plain, ours = tmp_path / "float.keras", tmp_path / "plain.keras", tmp_path / "given.keras"
    zoo_model().save(src)
    recipe = Recipe(storage="keras", **MODES[mode_name][2])
    wqkernels.rewrite(src, plain, recipe)
    with Source(src) as source:
        native, _ = native_kernels(source, recipe)
        entries = {e.path: e for e in source.entries}
        grids = {path: native_grid(n, source.read(entries[path]), recipe.bits, recipe.block_size, "minmax", False)
                 for path, n in native.items()}
    assert {n.layer_class for n in native.values()} == {"Embedding", "EinsumDense", "Dense"}
    wqkernels.rewrite(src, ours, recipe, grids=grids)
    assert _datasets(ours) == _datasets(plain)


def _dense_file(path, rows=64, cols=32):
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        f.create_group("vars")
        g = f.create_group("layers/dense/vars")
        g.attrs["name"] = "dense"
        g.create_dataset("0", data=rng.standard_normal((rows, cols)).astype(np.float32))
        g.create_dataset("1", data=rng.standard_normal(cols).astype(np.float32))
    return path


@pytest.mark.parametrize("bits,granularity", [(8, "channel"), (4, "channel"), (4, "block:16")])
def test_a_given_grid_is_stored_as_given(tmp_path, bits, granularity):
    """A grid wider than the values need (no channel reaches the top code: Keras's quantizer would
    choose finer scales) is stored as given, with the codes of the values on it."""
    src, dst = _dense_file(tmp_path / "m.weights.h5"), tmp_path / "out.weights.h5"
    recipe = Recipe(bits=bits, storage="keras", granularity=granularity)
    kernel = np.random.default_rng(9).standard_normal((64, 32)).astype(np.float32)
    native = _native("Dense", None)
    wide = native_grid(native, kernel * 1.3, bits, recipe.block_size, "minmax", False)
    values = np.empty_like(kernel)
    arrays = dict(on_native_grid(native, kernel, wide, recipe.block_size, False, values)[0])
    assert not np.array_equal(native_grid(native, values, bits, recipe.block_size, "minmax", False).scale, wide.scale)
    wqkernels.rewrite(src, dst, recipe, weights={"layers/dense/vars/0": values}, grids={"layers/dense/vars/0": wide})
    with h5py.File(dst, "r") as f:
        stored = {k: f[f"layers/dense/vars/{k}"][()] for k in f["layers/dense/vars"]}
    assert_bit_equal(stored["0"], arrays["codes"], "codes")
    assert_bit_equal(stored["2"], wide.scale, "scale")
    if recipe.block_size:
        assert_bit_equal(stored["3"], wide.zero_point, "zero")
    assert_bit_equal(wqkernels.load_weights(dst)["layers/dense/vars/0"], values)


def test_a_given_grid_that_does_not_fit_is_one_line(tmp_path):
    src, dst = _dense_file(tmp_path / "m.weights.h5"), tmp_path / "out.weights.h5"
    grid = Grid(8, np.ones(16, np.float32), np.zeros(16, np.int8))
    with pytest.raises(KerasFileError, match=r"m.weights.h5: weight 'layers/dense/vars/0': the given grid's scale "
                                             r"must be of shape \(32,\) \(dense's kernel_scale\), got \(16,\)$"):
        wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"), grids={"layers/dense/vars/0": grid})
    grid = Grid(8, np.ones(32, np.float32), np.ones(32, np.int8))
    with pytest.raises(KerasFileError, match="symmetric .Keras's absmax.: its zero points must be 0"):
        wqkernels.rewrite(src, dst, Recipe(bits=8, storage="keras"), grids={"layers/dense/vars/0": grid})
    assert not dst.exists()
