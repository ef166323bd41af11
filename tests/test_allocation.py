"""prune_model, lamp_scores, bits_for_sqnr and default_method against the NumPy reference."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import wqkernels
from wqkernels import allocation, reference
from wqkernels.reference import allocation as ref_allocation

from helpers import assert_bit_equal


def _model(seed=0, dtype=np.float32):
    """Tensors shaped like a small CNN's: tiny first conv and depthwise, bigger conv and dense."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1": (3, 3, 1, 16), "depthwise": (3, 3, 16, 1), "pointwise": (1, 1, 16, 32),
              "conv2": (3, 3, 32, 32), "dense": (512, 64), "logits": (64, 10)}
    return {name: (rng.normal(size=shape) / math.sqrt(np.prod(shape[:-1]))).astype(dtype)
            for name, shape in shapes.items()}


def _zeros(tensors) -> int:
    return sum(int(np.count_nonzero(np.asarray(x) == 0)) for x in tensors.values())


def _total(tensors) -> int:
    return sum(np.asarray(x).size for x in tensors.values())


def _assert_same(out, expected):
    assert list(out) == list(expected)
    for name in expected:
        assert out[name].dtype == expected[name].dtype, name
        assert out[name].shape == expected[name].shape, name
        assert np.array_equal(out[name], expected[name]), name


# ---- prune_model ----------------------------------------------------------------------------

@pytest.mark.parametrize("allocation_", ["global", "uniform"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.75, 0.9, 0.95])
def test_exact_count_and_reference(allocation_, sparsity):
    w = _model()
    out = wqkernels.prune_model(w, sparsity, allocation=allocation_)
    assert _zeros(out) == math.floor(sparsity * _total(w))
    _assert_same(out, ref_allocation.prune_model(w, sparsity, allocation=allocation_))


@st.composite
def _tensor_dicts(draw):
    count = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    grid = st.integers(-8, 8).map(lambda k: k / 4)  # ties and zeros
    values = st.one_of(st.floats(-100, 100, width=16), grid, st.sampled_from([0.0, -0.0]))
    return {f"t{i}": draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7),
                                     elements=values)) for i in range(count)}


@given(_tensor_dicts(), st.floats(0, 1), st.sampled_from(["global", "uniform"]), st.integers(0, 60))
def test_matches_reference(tensors, sparsity, allocation_, min_size):
    before = {k: v.copy() for k, v in tensors.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wqkernels.SparsityWarning)
        out = wqkernels.prune_model(tensors, sparsity, allocation=allocation_, min_size=min_size)
    _assert_same(out, ref_allocation.prune_model(tensors, sparsity, allocation=allocation_, min_size=min_size))
    for name in tensors:  # inputs untouched
        assert_bit_equal(tensors[name], before[name], name)
        assert out[name] is not tensors[name]
    eligible = [k for k, v in tensors.items() if v.size >= max(min_size, 1)]
    zeros_in_dense = _zeros({k: v for k, v in tensors.items() if k not in eligible})
    reachable = zeros_in_dense + sum(tensors[k].size for k in eligible)
    target = math.floor(sparsity * _total(tensors))
    zeros_before = _zeros(tensors)
    if zeros_before <= target <= reachable and allocation_ == "global":
        assert _zeros(out) == target
    for name in tensors:  # pruning only zeroes: every other value is kept bit for bit
        kept = out[name] != 0
        assert_bit_equal(out[name][kept], tensors[name][kept], name)


def test_min_size_keeps_small_tensors_dense():
    w = _model()
    out = wqkernels.prune_model(w, 0.8, min_size=600)
    for name in ("conv1", "depthwise", "pointwise"):  # 144, 144, 512 elements
        assert_bit_equal(out[name], w[name], name)
    assert _zeros(out) == math.floor(0.8 * _total(w))
    out = wqkernels.prune_model(w, 0.8, min_size=0)
    assert all(np.count_nonzero(out[name] == 0) for name in w)
    assert allocation.DEFAULT_MIN_SIZE > 144  # the default leaves a 3x3x16 kernel dense
    out = wqkernels.prune_model(w, 0.8)
    assert_bit_equal(out["depthwise"], w["depthwise"], "depthwise")


def test_default_min_size_depends_on_the_allocation():
    assert wqkernels.default_min_size() == allocation.DEFAULT_MIN_SIZE == 256
    assert wqkernels.default_min_size("uniform") == wqkernels.default_min_size("n:m") == 1024
    with pytest.raises(ValueError, match="allocation"):
        wqkernels.default_min_size("layer")
    w = _model()
    out = wqkernels.prune_model(w, 0.5, allocation="uniform")  # pointwise (512), logits (640) dense
    for name in ("conv1", "depthwise", "pointwise", "logits"):
        assert_bit_equal(out[name], w[name], name)
    out = wqkernels.prune_model(w, 0.5)  # global: 512 and 640 are pruned
    assert np.count_nonzero(out["pointwise"] == 0) and np.count_nonzero(out["logits"] == 0)
    assert_bit_equal(out["depthwise"], w["depthwise"], "depthwise")


def test_uniform_spreads_the_sparsity_evenly_and_global_does_not():
    w = _model()
    w["dense"] *= 0.1  # a tensor of small weights: a raw magnitude threshold would empty it
    uniform = wqkernels.prune_model(w, 0.5, allocation="uniform", min_size=0)
    fractions = [np.mean(uniform[k] == 0) for k in w]
    assert max(fractions) - min(fractions) < 0.01
    scaled = wqkernels.prune_model(w, 0.5, min_size=0)
    fractions = {k: float(np.mean(scaled[k] == 0)) for k in w}
    assert max(fractions.values()) - min(fractions.values()) > 0.2
    # LAMP scores do not depend on a tensor's scale: the same selection as without the 0.1
    plain = wqkernels.prune_model(_model(), 0.5, min_size=0)
    for k in w:
        assert np.array_equal(plain[k] == 0, scaled[k] == 0), k


def test_global_keeps_more_of_small_tensors():
    w = _model()
    out = wqkernels.prune_model(w, 0.9, min_size=0)
    small = np.mean(out["conv1"] == 0)
    large = np.mean(out["dense"] == 0)
    assert small < 0.5 < 0.9 < large


def test_unreachable_sparsity_warns_and_prunes_all_eligible():
    w = _model()
    with pytest.warns(wqkernels.SparsityWarning, match="sparsity"):
        out = wqkernels.prune_model(w, 1.0, min_size=1000)
    assert all(not out[k].any() for k in ("conv2", "dense"))
    assert all(np.count_nonzero(out[k]) == w[k].size for k in ("conv1", "depthwise", "pointwise", "logits"))


def test_existing_zeros_count():
    w = _model()
    w["dense"][:100] = 0  # 6400 zeros, more than a 10 % target of 43424
    with pytest.warns(wqkernels.SparsityWarning):
        out = wqkernels.prune_model(w, 0.1)
    assert _zeros(out) == 6400
    out = wqkernels.prune_model(w, 0.5)
    assert _zeros(out) == math.floor(0.5 * _total(w))


def test_empty_and_degenerate_inputs():
    assert wqkernels.prune_model({}, 0.5) == {}
    out = wqkernels.prune_model({"a": np.zeros((0, 3), np.float32)}, 0.5)
    assert out["a"].shape == (0, 3)
    out = wqkernels.prune_model({"a": np.ones(300)}, 0.5, allocation="uniform", min_size=0)
    assert_bit_equal(out["a"], np.where(np.arange(300) < 150, 0.0, 1.0), "all-equal magnitudes")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sparsity": 1.5}, ValueError, "sparsity"),
    ({"sparsity": -0.1}, ValueError, "sparsity"),
    ({"sparsity": "0.5"}, TypeError, "sparsity"),
    ({"sparsity": 0.5, "allocation": "layer"}, ValueError, "allocation"),
    ({"sparsity": 0.5, "min_size": -1}, ValueError, "min_size"),
    ({"sparsity": 0.5, "min_size": 1.5}, TypeError, "min_size"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        wqkernels.prune_model(_model(), **kwargs)


def test_bad_tensors():
    with pytest.raises(TypeError, match="tensors"):
        wqkernels.prune_model([np.ones(3)], 0.5)
    with pytest.raises(TypeError, match=r"tensors\['a'\]"):
        wqkernels.prune_model({"a": np.ones(3, dtype=np.int32)}, 0.5)
    with pytest.raises(ValueError, match=r"tensors\['a'\]"):
        wqkernels.prune_model({"a": np.array([1.0, np.nan])}, 0.5)
    for bad in (np.nan, np.inf, -np.inf):  # eligible tensors, checked as they are ranked
        big = np.ones(300, np.float32)
        big[7] = bad
        for allocation_ in ("global", "uniform"):
            with pytest.raises(ValueError, match=r"tensors\['b'\] has NaN or infinite"):
                wqkernels.prune_model({"a": np.ones(300), "b": big}, 0.5, allocation=allocation_, min_size=0)


def test_lamp_scores():
    x = np.array([[3.0, -1.0], [0.0, 2.0], [1.0, -0.0]])
    s = allocation.lamp_scores(x)
    assert s.dtype == np.float32 and s.shape == x.shape
    assert_bit_equal(s, ref_allocation.lamp_scores(x), "scores")
    assert s[0, 0] == 1 and s[1, 0] == 0 and s[2, 1] == 0
    assert s[0, 1] == s[2, 0] == np.float32(1 / 15)  # equal magnitudes score alike: 1 / (9 + 4 + 1 + 1)
    rng = np.random.default_rng(1)
    y = rng.normal(size=(40, 30))
    assert_bit_equal(allocation.lamp_scores(y), ref_allocation.lamp_scores(y), "random")
    order = np.argsort(np.abs(y).ravel(), kind="stable")  # same order as the magnitudes
    assert np.all(np.diff(allocation.lamp_scores(y).ravel()[order].astype(np.float64)) >= 0)


# ---- bits_for_sqnr and default_method ---------------------------------------------------------

def _sqnr(x, x_hat):
    x = np.asarray(x, np.float64)
    return 10 * np.log10(np.sum(x ** 2) / np.sum((x - x_hat) ** 2))


@pytest.mark.parametrize("options", [{}, {"axis": 1}, {"axis": 0, "block_size": 32}, {"method": "minmax"}])
def test_bits_for_sqnr_is_the_fewest(options):
    x = np.random.default_rng(2).standard_t(4, size=(96, 24)).astype(np.float32)
    for target in (5.0, 12.0, 18.0, 25.0, 33.0, 40.0):
        bits = wqkernels.bits_for_sqnr(x, target, **options)
        assert bits == ref_allocation.bits_for_sqnr(x, target, **options)
        def sqnr(b):
            opts = {"method": allocation.default_method(b, options.get("symmetric", True)), **options}
            return _sqnr(x, wqkernels.fake_quantize(x, b, **opts))
        if bits < 8 or sqnr(8) >= target:
            assert sqnr(bits) >= target
        if bits > 2:
            assert sqnr(bits - 1) < target


@given(hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(-10, 10, width=32)),
       st.floats(-10, 60), st.floats(0, 30))
def test_bits_for_sqnr_monotonic_in_target(x, target, more):
    before = x.copy()
    low = wqkernels.bits_for_sqnr(x, target)
    high = wqkernels.bits_for_sqnr(x, target + more)
    assert 2 <= low <= high <= 8
    assert_bit_equal(x, before, "x")


def test_bits_for_sqnr_edge_cases():
    assert wqkernels.bits_for_sqnr(np.zeros(10), 40.0) == 2  # no error at all
    assert wqkernels.bits_for_sqnr(np.array([1.0, -1.0, 0.0]), 1000.0) == 2  # exact on the grid
    assert wqkernels.bits_for_sqnr(np.random.default_rng(0).normal(size=500), 200.0) == 8
    assert wqkernels.bits_for_sqnr(np.random.default_rng(0).normal(size=500), -math.inf) == 2
    with pytest.raises(TypeError, match="target_db"):
        wqkernels.bits_for_sqnr(np.ones(3), "20")
    with pytest.raises(ValueError, match="target_db"):
        wqkernels.bits_for_sqnr(np.ones(3), math.nan)
    with pytest.raises(TypeError, match="bits"):
        wqkernels.bits_for_sqnr(np.ones(3), 20.0, bits=4)
    with pytest.raises(TypeError, match="x"):
        wqkernels.bits_for_sqnr(np.ones(3, np.int64), 20.0)
    with pytest.raises(ValueError, match="axis"):
        wqkernels.bits_for_sqnr(np.ones(3), 20.0, axis=2)


def test_default_method():
    assert [wqkernels.default_method(b) for b in range(2, 9)] == ["minmax"] * 7
    assert [wqkernels.default_method(b, symmetric=True) for b in range(2, 9)] == ["mse"] * 2 + ["minmax"] * 5
    with pytest.raises(ValueError, match="bits"):
        wqkernels.default_method(9)
    with pytest.raises(TypeError, match="bits"):
        wqkernels.default_method(4.0)


def test_reference_exports():
    assert reference.prune_model is ref_allocation.prune_model
    assert reference.bits_for_sqnr is ref_allocation.bits_for_sqnr


def test_global_ties():
    # equal scores: the earlier tensor first, then the smaller magnitude, then the lower index
    w = {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)}
    out = wqkernels.prune_model(w, 0.25, min_size=0)
    assert_bit_equal(out["a"], np.array([0, 0, 1, 1], np.float32), "a")
    assert_bit_equal(out["b"], w["b"], "b")
    w = {"a": np.array([2.0, -1.0, 1.0, 0.5]), "b": np.array([3.0, 1.0])}
    out = wqkernels.prune_model(w, 0.5, min_size=0)  # scores a: 1, 1/6.25, 1/5.25, 0.04; b: 1, 0.1
    assert_bit_equal(out["a"], np.array([2.0, 0.0, 1.0, 0.0]), "a")
    assert_bit_equal(out["b"], np.array([3.0, 0.0]), "b")
    _assert_same(out, ref_allocation.prune_model(w, 0.5, min_size=0))


def test_large_model_is_fast_enough_to_use():
    # 50 tensors, 2^21 weights: sorting once per tensor, no per-element Python work
    rng = np.random.default_rng(3)
    w = {f"t{i}": rng.normal(size=(2 ** 15 + i,)).astype(np.float32) for i in range(50)}
    out = wqkernels.prune_model(w, 0.6)
    assert _zeros(out) == math.floor(0.6 * _total(w))


class _OnDisk:
    """A tensor read only when converted, like an h5py Dataset; checks that no earlier read is
    still alive when the next one is made."""

    live = []

    def __init__(self, data, log):
        self.data, self.log, self.shape = data, log, data.shape

    def __array__(self, dtype=None, copy=None):
        import gc
        import weakref
        gc.collect()
        assert all(ref() is None for ref in _OnDisk.live), "an earlier tensor is still held"
        out = self.data.copy()
        _OnDisk.live.append(weakref.ref(out))
        self.log.append(id(self))
        return out


@pytest.mark.parametrize("allocation_", ["global", "uniform"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_prune_counts_reads_one_tensor_at_a_time(allocation_, sparsity):
    w = _model(4)
    log = []
    lazy = {name: _OnDisk(x, log) for name, x in w.items()}
    counts = allocation.prune_counts(lazy, sparsity, allocation=allocation_)
    expected = ref_allocation.prune_model(w, sparsity, allocation=allocation_)
    assert list(counts) == list(w)
    for name, x in w.items():  # (the model has no zeros of its own)
        assert counts[name] == np.count_nonzero(expected[name] == 0)
        pruned = wqkernels.prune(x, sparsity=allocation.count_fraction(counts[name], x.size))
        assert_bit_equal(pruned if counts[name] else x, expected[name], name)
    dense = [name for name, x in w.items() if x.size < allocation.default_min_size(allocation_)]
    reads = 2 if allocation_ == "global" and sparsity else 1
    assert len(log) == len(dense) + reads * (len(w) - len(dense))
    _OnDisk.live.clear()


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.4, 0.6])
def test_scores_that_underflow_go_first(sparsity):
    # squares below float64's range score 0 like zeros and are pruned whatever the count
    w = {"a": np.array([1e-200, -3e-190, 1.0, 2.0, 0.5, 0.25]), "b": np.array([5e-170, 1.0, 0.0, 3.0, 1e-300])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wqkernels.SparsityWarning)  # more zeros than asked for
        out = wqkernels.prune_model(w, sparsity, min_size=0)
    _assert_same(out, ref_allocation.prune_model(w, sparsity, min_size=0))
    assert np.count_nonzero(out["a"][:2]) == 0 and out["b"][0] == 0 and out["b"][4] == 0


# ---- channel_bits and Recipe.narrow_bits --------------------------------------------------------

def test_channel_bits():
    limit = allocation.NARROW_FAN_IN
    assert [allocation.channel_bits(b, limit) for b in range(2, 9)] == [4, 5, 6, 7, 8, 8, 8]
    assert [allocation.channel_bits(b, limit + 1) for b in range(2, 9)] == list(range(2, 9))
    assert allocation.channel_bits(3, 1, extra=0) == 3 and allocation.channel_bits(2, 9, extra=6) == 8
    with pytest.raises(ValueError, match="bits"):
        allocation.channel_bits(1, 9)
    with pytest.raises(TypeError, match="fan_in"):
        allocation.channel_bits(2, 9.0)
    with pytest.raises(ValueError, match="extra"):
        allocation.channel_bits(2, 9, extra=-1)


def _levels(x, axis) -> int:
    """The most distinct values in one channel of x along `axis`."""
    moved = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    return max(np.unique(moved[:, j]).size for j in range(moved.shape[1]))


def test_narrow_kernels_get_more_bits_in_a_rewrite(keras3_zip, tmp_path):
    """A 3x3 depthwise kernel (9 weights per channel) gets two more bits, at most 8; the 3x3x2
    convolution (18 per channel) and the embedding table (looked up, not summed) keep the
    recipe's; with narrow_bits=0, and at 8 bits, every kernel has the recipe's bits."""
    from wqkernels.files.source import Source

    floats = wqkernels.load_weights(keras3_zip)
    with Source(keras3_zip) as source:
        entries = {e.path: e for e in source.entries if e.prunable}
    for recipe, narrow in ((wqkernels.Recipe(bits=2), 4), (wqkernels.Recipe(bits=2, narrow_bits=0), 2),
                           (wqkernels.Recipe(bits=4), 6), (wqkernels.Recipe(bits=7), 8), (wqkernels.Recipe(bits=8), 8),
                           (wqkernels.Recipe(bits=3, granularity="block:4"), 5)):
        dst = tmp_path / f"{recipe.bits}-{recipe.narrow_bits}-{recipe.granularity}.keras"
        report = wqkernels.rewrite(keras3_zip, dst, recipe)
        written = wqkernels.load_weights(dst)
        bits = {r.path: r.bits for r in report.rows if r.path in entries}
        assert bits == {p: recipe.bits if e.layer in ("conv2d", "conv2d_transpose", "embedding") else narrow
                        for p, e in entries.items()}
        for path, e in entries.items():
            view, options = recipe.layout_for(e)
            expected = wqkernels.fake_quantize(floats[path].reshape(view), bits[path], method=recipe.method,
                                               **options).reshape(e.shape)
            assert_bit_equal(written[path], expected, path)
            if recipe.granularity == "channel":
                assert _levels(written[path], e.channel_axis) <= 2 ** bits[path]
    keras = wqkernels.Recipe(bits=4, storage="keras")
    assert keras.narrow_bits == 0 and all(keras.bits_for(e) == 4 for e in entries.values())
    assert {wqkernels.Recipe(bits=2).bits_for(e) for e in entries.values()} == {2, 4}


@pytest.mark.parametrize("value, error", [(-1, ValueError), (7, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_narrow_bits(value, error):
    with pytest.raises(error, match="narrow_bits"):
        wqkernels.Recipe(bits=2, narrow_bits=value)


def test_narrow_bits_with_keras_storage():
    """Keras's int4 layers hold 4-bit codes only: more bits for narrow kernels is refused there,
    and at 8 bits (where no kernel gets more) allowed."""
    with pytest.raises(ValueError, match="narrow_bits=2 .*storage='keras'"):
        wqkernels.Recipe(bits=4, storage="keras", narrow_bits=2)
    assert wqkernels.Recipe(bits=8, storage="keras", narrow_bits=2).narrow_bits == 2
