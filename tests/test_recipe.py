"""What a Recipe accepts, and what its pruning, bits and selection do to a file's weights."""
from __future__ import annotations

import json
import pickle

import h5py
import make_keras2_files as k2  # noqa: E402 -- tests/data is on sys.path (conftest)
import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference

from .helpers import assert_bit_equal, default_grid, kernels_of, run_cli


@pytest.mark.parametrize("kwargs", [{"bits": 1}, {"bits": 9}, {"sparsity": 1.5}, {"sparsity": -0.1},
                                    {"granularity": "block:0"}, {"granularity": "block:x"},
                                    {"granularity": "row"}, {"storage": "int8"}, {"compress": "zstd"},
                                    {"storage": "packed"}, {"method": "best", "bits": 4},
                                    {"sparsity": "3:2"}, {"bits": 4, "target_sqnr": 30},
                                    {"min_size": -1}, {"allocation": "spread"},
                                    {"bits": 4, "rounding": "up"}, {"bits": 4, "rounding": 1}])
def test_recipe_refuses_impossible(kwargs):
    with pytest.raises(ValueError):
        Recipe(**kwargs)


def test_recipe_defaults():
    assert not Recipe(bits=4).symmetric
    assert Recipe(bits=2).method == Recipe(bits=8).method == "minmax"
    assert Recipe(bits=3, symmetric=True).method == "mse"
    assert Recipe(bits=4, symmetric=True).method == "minmax"
    assert Recipe(bits=8, storage="keras").symmetric  # Keras's own layers are symmetric
    assert Recipe(bits=4).rounding is None  # each weight rounds as default_rounding(role) says
    assert Recipe(bits=8, method="mse").method == "mse"
    assert Recipe().granularity == "channel"
    assert Recipe(bits=4, granularity="block:32").block_size == 32
    assert Recipe(sparsity="2:4").n_m == (2, 4)
    assert pickle.loads(pickle.dumps(Recipe(bits=4))) == Recipe(bits=4)


def test_include_exclude_min_size(keras20, tmp_path):
    src, values = keras20
    report = wqkernels.rewrite(src, tmp_path / "o.h5", Recipe(bits=4, exclude=("*dense*",), min_size=50))
    done = {r.path for r in report.rows if r.rewritten}
    assert done == {"model_weights/conv2d_1/conv2d_1_1/kernel:0"}  # depthwise: 36 < 50 elements
    report = wqkernels.rewrite(src, tmp_path / "o2.h5", Recipe(bits=4, include=("*depthwise*",)))
    assert {r.path for r in report.rows if r.rewritten} == \
        {"model_weights/depthwise_conv2d_1/depthwise_conv2d_1_1/depthwise_kernel:0"}


def _allocation():
    return pytest.importorskip("wqkernels.allocation", reason="needs wqkernels.allocation")


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_sparsity_goes_through_prune_model(allocation, keras20, tmp_path):
    alloc = _allocation()
    src = keras20[0]
    dst = tmp_path / "o.h5"
    report = wqkernels.rewrite(src, dst, Recipe(sparsity=0.5, allocation=allocation, min_size=0))
    before, after = kernels_of(src), kernels_of(dst)
    expected = alloc.prune_model(before, 0.5, allocation=allocation, min_size=0)
    for k in before:
        assert_bit_equal(after[k], expected[k], k)
    total = sum(v.size for v in before.values())
    assert report.sparsity == pytest.approx(int(0.5 * total) / total)


def test_sparsity_then_bits(keras20, tmp_path):
    alloc = _allocation()
    src = keras20[0]
    dst = tmp_path / "o.h5"
    wqkernels.rewrite(src, dst, Recipe(sparsity=0.5, bits=4, narrow_bits=0))
    before, after = kernels_of(src), kernels_of(dst)
    pruned = alloc.prune_model(before, 0.5)
    axes = {"conv2d_1": 3, "depthwise_conv2d_1": 2, "dense_1": 1}
    for k in before:
        axis = axes[k.split("/")[1]]
        assert_bit_equal(after[k], reference.fake_quantize(pruned[k], 4, axis=axis, **default_grid(4)), k)


def test_target_sqnr_chooses_bits_per_tensor(keras20, tmp_path, capsys):
    alloc = _allocation()
    src = keras20[0]
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "o.h5", "--target-sqnr", "25",
                              "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "r.json").read_text())["weights"]
    before = kernels_of(src)
    axes = {"conv2d_1": 3, "depthwise_conv2d_1": 2, "dense_1": 1}
    for row in rows:
        axis = axes[row["path"].split("/")[1]]
        assert row["bits"] == alloc.bits_for_sqnr(before[row["path"]], 25, axis=axis, symmetric=Recipe().symmetric,
                                                  rounding="sum")
        assert row["sqnr_db"] >= 25 or row["bits"] == 8


def test_nonfinite_weight_named(tmp_path, capsys):
    src = tmp_path / "nan.h5"
    k2.write_tfkeras_weights(src)
    with h5py.File(src, "a") as f:
        f["dense_1/dense_1/kernel:0"][0, 0] = np.nan
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "o.h5", "--bits", "8"], capsys)
    assert code != 0 and "dense_1/dense_1/kernel:0" in err and "NaN" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.h5").exists()


def test_n_m_sparsity_along_the_input_axis(keras20, tmp_path, capsys):
    src = keras20[0]
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "d.h5", "--sparsity", "2:4"], capsys)
    assert code == 0, err
    before = kernels_of(src)
    for k, v in kernels_of(tmp_path / "d.h5").items():  # all under 1024 weights: dense by default
        assert_bit_equal(v, before[k], k)
    code, out, err = run_cli(["rewrite", src, "-o", tmp_path / "o.h5", "--sparsity", "2:4", "--min-size", "0"], capsys)
    assert code == 0, err
    after = kernels_of(tmp_path / "o.h5")
    views = {"conv2d_1": ((27, 4), 0), "depthwise_conv2d_1": ((9, 4), 0), "dense_1": ((64, 5), 0)}
    for k in before:
        view, axis = views[k.split("/")[1]]
        expected = reference.prune_n_m(before[k].reshape(view), n=2, m=4, axis=axis).reshape(before[k].shape)
        assert_bit_equal(after[k], expected, k)


def test_sparsity_counts_all_prunable_weights_when_min_size_is_given(keras20, tmp_path):
    src = keras20[0]
    wqkernels.rewrite(src, tmp_path / "o.h5", wqkernels.Recipe(sparsity=0.5, min_size=100))
    before, after = kernels_of(src), kernels_of(tmp_path / "o.h5")
    total = sum(v.size for v in before.values())
    assert sum(int((v == 0).sum()) for v in after.values()) == total // 2
    small = [k for k, v in before.items() if v.size < 100]
    assert small and all(np.array_equal(after[k], before[k]) for k in small)
