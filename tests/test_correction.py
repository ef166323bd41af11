"""The data-free BatchNorm correction: its math against the NumPy reference and against
integrals, and the graph and input statistics read from configs (real Keras models:
test_correction_keras.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wqkernels import correction
from wqkernels.files.graph import graph, input_moments
from wqkernels.reference import correction as ref


finite = st.floats(-4, 4, allow_nan=False, width=32)


@given(st.lists(st.tuples(finite, st.floats(0, 4, width=32)), min_size=1, max_size=8))
def test_relu_moments_match_the_reference_and_the_integral(pairs):
    mean, std = np.array(pairs, np.float64).T
    m1, m2 = correction.relu_moments(mean, std)
    r1, r2 = ref.relu_moments(mean, std)
    np.testing.assert_allclose(m1, r1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(m2, r2, rtol=1e-12, atol=1e-15)
    for mu, s, e1, e2 in zip(mean, std, m1, m2):
        if s > 0.05:
            x = np.linspace(0, abs(mu) + 12 * s, 200001)
            density = np.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))
            assert e1 == pytest.approx(np.trapezoid(x * density, x), rel=1e-5, abs=1e-9)
            assert e2 == pytest.approx(np.trapezoid(x * x * density, x), rel=1e-5, abs=1e-9)
    assert np.all(m2 >= m1 * m1 - 1e-12)


@given(st.lists(st.tuples(finite, st.floats(0, 4, width=32)), min_size=1, max_size=8), st.floats(0.25, 8))
def test_capped_relu_moments_match_the_reference_and_the_integral(pairs, cap):
    """ReLU6 and other capped ReLUs: the output clipped to [0, cap]."""
    mean, std = np.array(pairs, np.float64).T
    m1, m2 = correction.relu_moments(mean, std, cap)
    r1, r2 = ref.relu_moments(mean, std, cap)
    np.testing.assert_allclose(m1, r1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m2, r2, rtol=1e-9, atol=1e-12)
    for mu, s, e1, e2 in zip(mean, std, m1, m2):
        if s > 0.05:
            x = np.linspace(mu - 12 * s, mu + 12 * s, 400001)
            density = np.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))
            y = np.clip(x, 0, cap)
            assert e1 == pytest.approx(np.trapezoid(y * density, x), rel=1e-5, abs=1e-8)
            assert e2 == pytest.approx(np.trapezoid(y * y * density, x), rel=1e-5, abs=1e-8)
        else:
            assert e1 == pytest.approx(min(max(mu, 0), cap), abs=0.05)
    assert np.all(m1 <= cap + 1e-12) and np.all(m2 <= cap * cap + 1e-12)
    assert np.all(m2 >= m1 * m1 - 1e-12)
    with pytest.raises(ValueError, match="cap must be positive"):
        correction.relu_moments(mean, std, 0.0)


def test_an_uncapped_relu_is_a_cap_at_infinity():
    mean, std = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 0.0])
    for got, want in zip(correction.relu_moments(mean, std, 1e30), correction.relu_moments(mean, std)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.7, 0.95])
@pytest.mark.parametrize("window", [2, 4, 9])
def test_max_relu_moments_match_the_reference_and_sampling(window, rho):
    mean, std = np.array([0.0, -0.5, 1.0, -2.0, 0.3]), np.array([1.0, 1.3, 0.5, 0.7, 0.0])
    m1, m2 = correction.max_relu_moments(mean, std, window, rho)
    r1, r2 = ref.max_relu_moments(mean, std, window, rho)
    # two quadratures of a kinked integrand: they agree to 0.2 % (near rho 1, Gauss-Hermite
    # nodes in the common part meet the ReLU's kink)
    np.testing.assert_allclose(m1, r1, rtol=2e-3, atol=5e-5)
    np.testing.assert_allclose(m2, r2, rtol=2e-3, atol=5e-5)
    rng = np.random.default_rng(window)
    z = mean[:, None, None] + std[:, None, None] * (math.sqrt(rho) * rng.standard_normal((1, 200_000, 1))
                                                    + math.sqrt(1 - rho) * rng.standard_normal((1, 200_000, window)))
    r = np.maximum(z.max(axis=2), 0.0)
    np.testing.assert_allclose(m1, r.mean(axis=1), rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(m2, np.square(r).mean(axis=1), rtol=1e-2, atol=1e-3)
    assert np.all(m1 >= correction.relu_moments(mean, std)[0] - 1e-12)  # the max of a window: no less


def test_max_relu_moments_of_one_value_or_identical_values_are_the_relu_moments():
    mean, std = np.array([0.5, -1.0, 0.0]), np.array([2.0, 0.5, 0.0])
    want = correction.relu_moments(mean, std)
    for got in (correction.max_relu_moments(mean, std, 1), correction.max_relu_moments(mean, std, 4, rho=1.0)):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="window"):
        correction.max_relu_moments(mean, std, 0)
    with pytest.raises(ValueError, match="rho"):
        correction.max_relu_moments(mean, std, 4, rho=1.5)


KERNELS = {"dense": (6, 3), "conv": (3, 3, 4, 5), "depthwise": (3, 3, 4, 2)}


@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("target", ["bias", "bn"])
@pytest.mark.parametrize("seed", range(4))
def test_correct_layer_matches_the_reference_and_restores_the_moments(kind, target, seed):
    rng = np.random.default_rng(seed)
    shape = KERNELS[kind]
    kernel = rng.standard_normal(shape).astype(np.float32)
    pruned = np.where(rng.random(shape) < 0.6, np.float32(0), kernel)
    pruned[..., 0] = 0  # a channel pruned whole keeps its scale and variance
    channels = shape[-2]
    fan = channels // 2 if kind == "dense" else channels  # a Dense kernel reads a flattened map
    mean, var = rng.random(fan) + 0.1, rng.random(fan) + 0.1
    outputs = shape[-1] * (shape[-2] if kind == "depthwise" else 1)
    if target == "bias":
        options = {"bias": rng.standard_normal(outputs)}
    else:
        options = {"moving_mean": rng.standard_normal(outputs), "moving_variance": rng.random(outputs) + 0.5,
                   "epsilon": 1e-3}
    got = correction.correct_layer(kernel, pruned, mean, var, kind, **options)
    want = ref.correct_layer(kernel, pruned, mean, var, kind, **options)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6)
    mean0, var0 = correction.output_moments(kernel, mean, var, kind)
    if target == "bias":
        mean2, var2 = correction.output_moments(pruned * got.scale, mean, var, kind)
        np.testing.assert_allclose(mean2 + got.bias, mean0 + options["bias"], rtol=1e-5, atol=1e-5)
        kept = var2 > 0
        np.testing.assert_allclose(var2[kept], var0[kept], rtol=1e-5)
    else:
        mean1, var1 = correction.output_moments(pruned, mean, var, kind)
        np.testing.assert_allclose(got.moving_mean - options["moving_mean"], mean1 - mean0, rtol=1e-5, atol=1e-5)
        normalised = var1 / (got.moving_variance + 1e-3)
        kept = var1 > 0
        np.testing.assert_allclose(normalised[kept], (var0 / (options["moving_variance"] + 1e-3))[kept], rtol=1e-4)
        assert np.all(got.moving_variance[~kept] == np.float32(options["moving_variance"][~kept]))


def test_correct_layer_says_what_is_wrong():
    k = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="kind must be one of"):
        correction.correct_layer(k, k, np.ones(4), np.ones(4), "einsum", bias=np.zeros(2))
    with pytest.raises(ValueError, match="give bias, or moving_mean and moving_variance"):
        correction.correct_layer(k, k, np.ones(4), np.ones(4), "dense")
    with pytest.raises(ValueError, match="mean has 3 channels, the kernel 4 inputs"):
        correction.correct_layer(k, k, np.ones(3), np.ones(3), "dense", bias=np.zeros(2))
    with pytest.raises(ValueError, match="bias has 3 values, the layer 2 output channels"):
        correction.correct_layer(k, k, np.ones(4), np.ones(4), "dense", bias=np.zeros(3))
    with pytest.raises(ValueError, match="pruned has shape"):
        correction.correct_layer(k, k[:2], np.ones(4), np.ones(4), "dense", bias=np.zeros(2))
    with pytest.raises(TypeError, match="mean must be an array of float"):
        correction.correct_layer(k, k, np.ones(4, int), np.ones(4), "dense", bias=np.zeros(2))


def test_graph_of_keras2_inbound_lists_and_sequential_configs():
    functional = {"class_name": "Model", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"name": "in"}, "inbound_nodes": []},
        {"class_name": "Conv2D", "config": {"name": "c"}, "inbound_nodes": [[["in", 0, 0, {}]]]},
        {"class_name": "Add", "config": {"name": "a"}, "inbound_nodes": [[["c", 0, 0, {}], ["in", 0, 0, {}]]]},
    ]}}
    assert {n: v.inputs for n, v in graph(functional).items()} == {"in": (), "c": ("in",), "a": ("c", "in")}
    sequential = {"class_name": "Sequential", "config": [{"class_name": "Dense", "config": {"name": "d1"}},
                                                         {"class_name": "Dense", "config": {"name": "d2"}}]}
    assert {n: v.inputs for n, v in graph(sequential).items()} == {"d1": (), "d2": ("d1",)}
    assert graph(None) == {}


def test_graph_of_hostile_inbound_nodes():
    """Inbound nodes nested as deep as JSON allows, or with configs of the wrong type: read
    without recursion, what names no layer is ignored."""
    deep = [["c", 0, 0, {}]]
    for _ in range(5000):
        deep = [deep]
    config = {"class_name": "Model", "config": {"layers": [
        {"class_name": "Conv2D", "config": {"name": "c"}, "inbound_nodes": []},
        {"class_name": "Dense", "config": {"name": "d"}, "inbound_nodes": deep},
        {"class_name": "Dense", "config": {"name": "e"},
         "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": 5}]}]},
        {"class_name": "Dense", "config": {"name": "f"},
         "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": [7]}}]}]},
    ]}}
    assert {n: v.inputs for n, v in graph(config).items()} == {"c": (), "d": ("c",), "e": (), "f": ()}


def test_input_moments_of_long_chains_in_any_order():
    """Thousands of chained layers, asked from the last: no recursion error; what a chain of
    pass-through layers longer than any real path hides is taken as unknown."""
    from wqkernels.files.graph import Node

    def chain(cls, count):
        nodes = {f"l{i}": Node(cls, {}, (f"l{i - 1}",) if i else ()) for i in range(1, count)}
        nodes["l0"] = Node("BatchNormalization", {"axis": -1}, ())
        return nodes
    bn = {"l0": {"gamma": np.ones(2), "beta": np.zeros(2), "moving_mean": np.zeros(2), "moving_variance": np.ones(2)}}
    assert input_moments(chain("Dense", 20_000), "l19999", bn.get) is None
    assert input_moments(chain("Dropout", 20_000), "l19999", bn.get) is None
    near = input_moments(chain("Dropout", 10), "l9", bn.get)
    np.testing.assert_array_equal(near.mean, np.zeros(2))
    np.testing.assert_array_equal(near.var, np.ones(2))


def test_input_moments_follow_bn_relu_pooling_flatten_and_add():
    def layer(cls, name, inputs, **config):
        return {"class_name": cls, "config": {"name": name, **config},
                "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": [s, 0, 0]}}
                                            for s in inputs], "kwargs": {}}] if inputs else []}
    config = {"class_name": "Functional", "config": {"layers": [
        layer("InputLayer", "x", []), layer("Conv2D", "c", ["x"]),
        layer("BatchNormalization", "bn", ["c"], axis=-1), layer("BatchNormalization", "bn2", ["c"], axis=-1),
        layer("Add", "add", ["bn", "bn2"]), layer("ReLU", "relu", ["add"]),
        layer("MaxPooling2D", "pool", ["relu"]), layer("Flatten", "flat", ["pool"]), layer("Dense", "d", ["flat"]),
        layer("Dense", "d0", ["c"]), layer("Activation", "sig", ["bn"], activation="sigmoid"),
        layer("Dense", "d1", ["sig"]),
    ]}}
    bn = {"bn": {"gamma": np.array([1.0, -2.0]), "beta": np.array([0.5, 0.0]), "moving_mean": np.zeros(2),
                 "moving_variance": np.ones(2)},
          "bn2": {"gamma": np.array([0.0, 1.0]), "beta": np.array([1.0, -1.0]), "moving_mean": np.zeros(2),
                  "moving_variance": np.ones(2)}}
    nodes = graph(config)
    got = input_moments(nodes, "d", bn.get)
    # max pooling (2x2 by default) of the ReLU of the Add's Gaussian: its window's rectified max
    m1, m2 = correction.max_relu_moments(np.array([1.5, -1.0]), np.sqrt([1.0, 5.0]), 4)
    np.testing.assert_allclose(got.mean, m1)
    np.testing.assert_allclose(got.var, m2 - m1 * m1)
    r1, _ = correction.relu_moments(np.array([1.5, -1.0]), np.sqrt([1.0, 5.0]))
    assert np.all(got.mean > r1)  # more than the mean of the window's values
    assert input_moments(nodes, "d0", bn.get) is None  # the conv's output: not known
    assert input_moments(nodes, "d1", bn.get) is None  # a sigmoid: not followed


def test_input_moments_of_capped_relus():
    def layer(cls, name, inputs, **config):
        return {"class_name": cls, "config": {"name": name, **config},
                "inbound_nodes": [[[s, 0, 0, {}] for s in inputs]] if inputs else []}
    config = {"class_name": "Model", "config": {"layers": [
        layer("InputLayer", "x", []), layer("BatchNormalization", "bn", ["x"], axis=-1),
        layer("ReLU", "r6", ["bn"], max_value=6.0, negative_slope=0.0, threshold=0.0), layer("Dense", "d6", ["r6"]),
        layer("Activation", "a6", ["bn"], activation="relu6"), layer("Dense", "e6", ["a6"]),
        layer("ReLU", "r", ["bn"], max_value=None), layer("Dense", "d", ["r"]),
        layer("ReLU", "leaky", ["bn"], negative_slope=0.1), layer("Dense", "dl", ["leaky"]),
        layer("ReLU", "odd", ["bn"], max_value="6"), layer("Dense", "do", ["odd"]),
    ]}}
    bn = {"bn": {"gamma": np.array([3.0, 1.0]), "beta": np.array([5.0, -1.0]), "moving_mean": np.zeros(2),
                 "moving_variance": np.ones(2)}}
    nodes = graph(config)
    m1, m2 = correction.relu_moments(np.array([5.0, -1.0]), np.array([3.0, 1.0]), 6.0)
    for name in ("d6", "e6"):
        got = input_moments(nodes, name, bn.get)
        np.testing.assert_array_equal(got.mean, m1)
        np.testing.assert_array_equal(got.var, np.maximum(m2 - m1 * m1, 0.0))
    plain = correction.relu_moments(np.array([5.0, -1.0]), np.array([3.0, 1.0]))[0]
    np.testing.assert_array_equal(input_moments(nodes, "d", bn.get).mean, plain)
    assert plain[0] > m1[0]  # the cap lowers the mean of a channel reaching past it
    assert input_moments(nodes, "dl", bn.get) is None and input_moments(nodes, "do", bn.get) is None


def test_graph_of_nested_models():
    """A nested model's layers are nodes of their own, its name stands for its output; a nested
    model whose names repeat outer ones stays one node."""
    def keras3(cls, name, inputs, **config):
        return {"class_name": cls, "config": {"name": name, **config},
                "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": [s, 0, 0]}}
                                            for s in inputs], "kwargs": {}}] if inputs else []}
    backbone = {"class_name": "Sequential", "config": {"name": "backbone", "layers": [
        {"class_name": "InputLayer", "config": {"name": "bin"}}, {"class_name": "BatchNormalization", "config": {"name": "bn"}},
        {"class_name": "ReLU", "config": {"name": "relu"}}]}}
    head = {"class_name": "Functional", "name": "head", "config": {"name": "head", "layers": [
        keras3("InputLayer", "hin", []), keras3("Flatten", "flat", ["hin"]), keras3("Dense", "d", ["flat"])],
        "input_layers": ["hin", 0, 0], "output_layers": [["d", 0, 0]]}}
    top = {"class_name": "Sequential", "config": {"name": "top", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in"}}, backbone, head, {"class_name": "Dense", "config": {"name": "out"}}]}}
    nodes = graph(top)
    assert {n: (v.inputs, v.through) for n, v in nodes.items()} == {
        "in": ((), False), "bin": (("in",), False), "bn": (("bin",), False), "relu": (("bn",), False),
        "backbone": (("relu",), True), "hin": (("backbone",), False), "flat": (("hin",), False),
        "d": (("flat",), False), "head": (("d",), True), "out": (("head",), False)}
    stats = {"bn": {"gamma": np.array([1.0]), "beta": np.array([0.5]), "moving_mean": np.zeros(1),
                    "moving_variance": np.ones(1)}}
    want = correction.relu_moments(np.array([0.5]), np.array([1.0]))[0]
    np.testing.assert_array_equal(input_moments(nodes, "d", stats.get).mean, want)  # through both models
    assert input_moments(nodes, "bn", stats.get) is None  # the top model's input: not known
    clash = {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"name": "bn"}}, backbone]}}
    assert {n: v.through for n, v in graph(clash).items()} == {"bn": False, "backbone": False}


def test_input_moments_through_concatenation_and_zero_padding():
    def layer(cls, name, inputs, **config):
        return {"class_name": cls, "config": {"name": name, **config},
                "inbound_nodes": [[[s, 0, 0, {}] for s in inputs]] if inputs else []}
    config = {"class_name": "Model", "config": {"layers": [
        layer("InputLayer", "x", []), layer("BatchNormalization", "a", ["x"]), layer("BatchNormalization", "b", ["x"]),
        layer("Concatenate", "cat", ["a", "b"], axis=-1), layer("ZeroPadding2D", "pad", ["cat"]),
        layer("Conv2D", "c", ["pad"]),
        layer("Concatenate", "rows", ["a", "b"], axis=1), layer("Dense", "d", ["rows"]),
        layer("ZeroPadding2D", "first", ["a"], data_format="channels_first"), layer("Dense", "e", ["first"]),
    ]}}
    bn = {"a": {"gamma": np.array([2.0]), "beta": np.array([1.0]), "moving_mean": np.zeros(1), "moving_variance": np.ones(1)},
          "b": {"gamma": np.array([1.0, 3.0]), "beta": np.array([0.0, -1.0]), "moving_mean": np.zeros(2),
                "moving_variance": np.ones(2)}}
    nodes = graph(config)
    got = input_moments(nodes, "c", bn.get)
    np.testing.assert_array_equal(got.mean, [1.0, 0.0, -1.0])
    np.testing.assert_array_equal(got.var, [4.0, 1.0, 9.0])
    assert got.gaussian
    assert input_moments(nodes, "d", bn.get) is None  # not the channel axis
    assert input_moments(nodes, "e", bn.get) is None  # channels first


def _correlation(rng, n, rank=2):
    """A random correlation matrix of n variables sharing `rank` factors."""
    f = rng.standard_normal((n, rank))
    c = f @ f.T + np.diag(rng.random(n) * 0.5 + 0.1)
    d = np.sqrt(np.diag(c))
    return c / np.outer(d, d)


@pytest.mark.parametrize("seed", range(3))
def test_relu_covariance_matches_the_reference_and_sampling(seed):
    rng = np.random.default_rng(seed)
    n = 5
    mean, std = rng.normal(0, 1.5, n), rng.uniform(0.2, 2.0, n)
    std[-1] = 0.0  # a constant: no covariance
    corr = _correlation(rng, n)
    assert corr.min() < 0  # (negative correlations among them)
    got = correction.relu_covariance(mean, std, corr)
    want = ref.relu_covariance(mean, std, corr)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    m1, m2 = correction.relu_moments(mean, std)
    np.testing.assert_array_equal(np.diag(got), np.maximum(m2 - m1 * m1, 0.0))
    assert np.all(got[-1, :-1] == 0) and np.all(got[:-1, -1] == 0)
    y = mean[:-1] + std[:-1] * (rng.standard_normal((400_000, n - 1)) @ np.linalg.cholesky(
        corr[:-1, :-1] + 1e-9 * np.eye(n - 1)).T)
    np.testing.assert_allclose(got[:-1, :-1], np.cov(np.maximum(y, 0.0).T), atol=0.02)


def test_relu_covariance_of_uncorrelated_and_identical_values():
    mean, std = np.array([0.3, -0.2]), np.array([1.0, 0.5])
    assert correction.relu_covariance(mean, std, np.eye(2))[0, 1] == 0.0
    same = correction.relu_covariance([0.3, 0.3], [1.0, 1.0], np.ones((2, 2)))
    assert same[0, 1] == pytest.approx(same[0, 0], rel=0.01)  # Mehler's tail at correlation 1
    with pytest.raises(ValueError, match="corr has shape"):
        correction.relu_covariance(mean, std, np.eye(3))


@pytest.mark.parametrize("shape, taps, padding", [((4, 4), (3, 3), "same"), ((3, 5), (3, 2), "same"),
                                                  ((4, 3), (2, 2), "valid"), ((6,), (3,), "same")])
def test_conv_covariance_matches_the_reference(shape, taps, padding):
    rng = np.random.default_rng(len(shape) + taps[0])
    kernel = rng.standard_normal((*taps, 2, 3))
    var = rng.random(2) + 0.1
    got = correction.conv_covariance(kernel, var, shape, padding)
    np.testing.assert_allclose(got, ref.conv_covariance(kernel, var, shape, padding), rtol=1e-12, atol=1e-12)
    out = shape if padding == "same" else tuple(n - t + 1 for n, t in zip(shape, taps))
    assert got.shape == (math.prod(out) * 3,) * 2


def test_conv_covariance_limits_and_mistakes():
    limit = correction.COVARIANCE_LIMIT
    assert correction.conv_covariance(np.ones((3, 3, 1, limit // 64)), [1.0], (8, 8)) is not None
    assert correction.conv_covariance(np.ones((3, 3, 1, limit // 64)), [1.0], (8, 9)) is None  # outputs
    assert correction.conv_covariance(np.ones((1, 1, limit // 4, 1)), np.ones(limit // 4), (2, 3)) is None  # inputs
    with pytest.raises(ValueError, match="does not convolve"):
        correction.conv_covariance(np.ones((3, 3, 1, 2)), [1.0], (4,))
    with pytest.raises(ValueError, match="does not convolve"):
        correction.conv_covariance(np.ones((3, 3, 1, 2)), [1.0], (2, 2), "valid")
    with pytest.raises(ValueError, match="channels"):
        correction.conv_covariance(np.ones((3, 3, 2, 2)), [1.0], (4, 4))


@pytest.mark.parametrize("target", ["bias", "bn"])
def test_correct_layer_under_a_covariance(target):
    rng = np.random.default_rng(7)
    kernel = rng.standard_normal((8, 3)).astype(np.float32)
    pruned = np.where(rng.random(kernel.shape) < 0.6, np.float32(0), kernel)
    mean, var = rng.random(4) + 0.1, rng.random(4) + 0.1
    options = {"bias": rng.standard_normal(3)} if target == "bias" else {
        "moving_mean": rng.standard_normal(3), "moving_variance": rng.random(3) + 0.5, "epsilon": 1e-3}
    sd = np.sqrt(np.tile(var, 2))
    cov = _correlation(rng, 8) * np.outer(sd, sd)
    got = correction.correct_layer(kernel, pruned, mean, var, "dense", cov=cov, **options)
    want = ref.correct_layer(kernel, pruned, mean, var, "dense", cov=cov, **options)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6)
    independent = correction.correct_layer(kernel, pruned, mean, var, "dense", **options)
    diagonal = correction.correct_layer(kernel, pruned, mean, var, "dense", cov=np.diag(np.tile(var, 2)), **options)
    for b, c in zip(independent, diagonal):  # a diagonal covariance is independence
        if b is not None:
            np.testing.assert_allclose(c, b, rtol=1e-6, atol=1e-7)
    # the correlations move the variances (and the bias, through the scale), not the mean shift
    moved = got.scale if target == "bias" else got.moving_variance
    assert not np.allclose(moved, independent.scale if target == "bias" else independent.moving_variance)
    if target == "bn":
        np.testing.assert_array_equal(got.moving_mean, independent.moving_mean)
    with pytest.raises(ValueError, match="cov has shape"):
        correction.correct_layer(kernel, pruned, mean, var, "dense", cov=np.eye(4), **options)


def test_input_covariance_of_a_dense_layer_reading_a_flattened_bn_relu_map():
    from wqkernels.files.graph import input_covariance

    def layer(cls, name, shape=None, **config):
        out = {"class_name": cls, "config": {"name": name, **config}}
        if shape is not None:
            out["build_config"] = {"input_shape": [None, *shape]}
        return out

    def sequential(*layers):
        return {"class_name": "Sequential", "config": {"layers": [layer("InputLayer", "x"), *layers]}}

    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((3, 3, 2, 3))
    weights = {"bn0": {"gamma": np.array([1.0, 0.5]), "beta": np.array([0.2, -0.1]), "moving_mean": np.zeros(2),
                       "moving_variance": np.ones(2)},
               "bn": {"gamma": np.array([1.0, -0.7, 1.3]), "beta": np.array([0.1, 0.4, -0.3]),
                      "moving_mean": np.zeros(3), "moving_variance": np.ones(3)}}
    head = [layer("Conv2D", "c0", (3, 4, 1)), layer("BatchNormalization", "bn0", axis=-1), layer("ReLU", "r0")]
    chain = [layer("Conv2D", "c", (3, 4, 2), padding="same"), layer("BatchNormalization", "bn", axis=-1),
             layer("ReLU", "r"), layer("Flatten", "flat"), layer("Dropout", "drop"), layer("Dense", "d", (36,))]
    nodes = graph(sequential(*head, *chain))
    got = input_covariance(nodes, "d", weights.get, {"c": kernel}.get, {})
    m1, m2 = correction.relu_moments(weights["bn0"]["beta"], weights["bn0"]["gamma"])
    z = correction.conv_covariance(kernel, m2 - m1 * m1, (3, 4), "same")
    sd = np.sqrt(np.diag(z))
    sign = np.tile(np.sign(weights["bn"]["gamma"]), 12)
    want = correction.relu_covariance(np.tile(weights["bn"]["beta"], 12), np.tile(np.abs(weights["bn"]["gamma"]), 12),
                                      z / np.outer(sd, sd) * np.outer(sign, sign))
    np.testing.assert_array_equal(got, want)
    assert got.shape == (36, 36) and np.count_nonzero(got - np.diag(np.diag(got))) > 0
    # what breaks the chain: no recorded shape, a stride, a pooling, a conv reading the image
    for changed in ([layer("Conv2D", "c", None, padding="same"), *chain[1:]],
                    [layer("Conv2D", "c", (3, 4, 2), padding="same", strides=[2, 2]), *chain[1:]],
                    [*chain[:3], layer("MaxPooling2D", "pool"), *chain[3:]]):
        assert input_covariance(graph(sequential(*head, *changed)), "d", weights.get, {"c": kernel}.get, {}) is None
    assert input_covariance(graph(sequential(*chain)), "d", weights.get, {"c": kernel}.get, {}) is None
    # a recorded shape smaller than the kernel's window (valid padding): independent, not an error
    small = [layer("Conv2D", "c", (2, 2, 2), padding="valid"), *chain[1:]]
    assert input_covariance(graph(sequential(*head, *small)), "d", weights.get, {"c": kernel}.get, {}) is None
