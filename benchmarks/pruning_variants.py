"""Pruning variants measured against the default and rejected (FIDELITY.md, "Tried and rejected").

NumPy prototypes over the benchmark's architectures and three seeds, printing markdown tables of
score loss / relative output error.  Every variant but the last two is followed by the package's
BatchNorm correction, applied to whatever kernels the variant pruned:

- ``floor k``: the default's count per tensor, but no output channel keeps fewer than k weights;
- ``erk``: Erdos-Renyi-kernel allocation, density proportional to the sum of a kernel's
  dimensions over their product (tensors under 256 weights dense, as the default);
- ``channel lamp``: LAMP scores normalised per output channel instead of per tensor;
- ``size^a``: LAMP scores times (tensor size / mean eligible size) ** a, one threshold;
- ``energy^p``: w^2 / (the tensor's sum of w^2) ** p, one threshold;
- ``scale cap c``: the correction's kernel scale at most c;
- ``independent inputs``: the correction with a Dense layer's inputs taken as independent even
  where they are a flattened BN-ReLU map of a convolution (the default before it modelled their
  covariance);
- ``iid max pooling``: the correction with max pooling's output moments those of the max of its
  window's values taken as independent rectified Gaussians (the package takes it as
  mean-preserving);
- ``L2 kept``, ``L1 kept``: each output channel's kept weights scaled to the channel's float
  norm (no BatchNorm correction);
- ``obs <mask> <rho> [chan] [manhattan] [uniform] [raw]``: SparseGPT's column loop with a
  *modelled* input Hessian on every kernel whose input statistics the correction knows, from the
  BN moments: ``H_ij = m_i m_j + [same channel] s_i s_j rho^d(i, j)`` (d: distance of the two
  patch positions, Euclidean or Manhattan; a Dense fed by Flatten of a square map as a conv over
  it; rho "kernel": the correlation of the kernel's neighbouring taps); ``chan``: channels
  correlated as the linear layer before the BN makes them (:func:`channel_covariance`).
  <mask> "mask": the default's mask, only the reconstruction; "pick": the default's LAMP counts,
  SparseGPT's saliency choosing within each tensor; ``uniform``: one sparsity for every eligible
  tensor; ``raw``: without the BatchNorm correction after it;
- ``covcorr <rho> [chan] [pool <r>]``: the default's masks, the correction with each output
  channel's variance ``wᵀ Σ w`` under the modelled input covariance Σ of ``obs`` instead of
  independent inputs (``pool``: with ``correlated max pooling <r>``);
- ``correlated max pooling <r>``: the correction with max pooling's output moments those of the
  max of its window's values taken as Gaussians of pairwise correlation r before the ReLU;
- ``true statistics`` (``--oracle``): what the correction would reach with the statistics it
  estimates measured instead, on the training set: every BN's moving mean and variance re-estimated
  through the pruned model, and the biased layer fed by a BN (``dense``) scaled and shifted to its
  float output's measured mean and variance (data: a diagnostic, not a data-free recipe);
- ``--diagnose``: per layer the correction touches, the input moments, mean shift and variance
  ratio it estimates against those measured on the training set (through the float model and
  through the compressed one), then the score with one layer's statistic measured at a time;
- ``--hessians``: per layer, the correlations of its inputs measured on the training set, and the
  layer's output error under the measured covariance after OBS with the modelled Hessians and with
  parts of the measured one (a diagnostic).

::

    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/pruning_variants.py --archs cnn_bn_8,cnn_bn,cnn_bn_32
    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/pruning_variants.py --oracle --archs cnn_bn_8,cnn_bn
    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/pruning_variants.py --diagnose --sparsity 0.9 --archs cnn_bn_8,cnn_bn
    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/pruning_variants.py --hessians --sparsity 0.9 \
        --archs cnn_bn_8,cnn_bn,cnn_bn_32,vgg_bn
    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/pruning_variants.py --compare --sparsity 0.9 \
        --archs cnn_bn_8,cnn_bn,cnn_bn_32,vgg_bn,resnet_bn --variants "default;obs mask 0.3;obs pick 0.3"
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import fidelity  # noqa: E402
import models  # noqa: E402
import wqkernels  # noqa: E402
from wqkernels.allocation import count_fraction, lamp_scores, prune_counts  # noqa: E402

MIN_SIZE = 256


# ---- the BatchNorm correction of any pruned kernels ---------------------------------------------

def corrected(path, sparsity, kernels, scale_cap=None) -> dict:
    """The package's BatchNorm correction ({path: values}) of the given pruned kernels: the file
    layer's ``corrections`` with its pruning replaced by a look-up of `kernels`."""
    import wqkernels.files.graph as graph
    from wqkernels.files.buffers import Buffers
    from wqkernels.files.source import Source

    def given(x, e, recipe, counts):
        return x if e.path not in kernels else np.array(kernels[e.path], np.float32)

    real = graph.correct_layer

    def capped(*args, **kwargs):
        out = real(*args, **kwargs)
        return out if out.scale is None or scale_cap is None else out._replace(scale=np.minimum(out.scale, scale_cap))

    recipe = wqkernels.Recipe(sparsity=sparsity)
    with mock.patch.object(graph, "pruned", given), mock.patch.object(graph, "correct_layer", capped), \
            Source(path) as source:
        fixes, _ = graph.corrections(source, recipe, dict.fromkeys(kernels, 1),
                                     [e for e in source.entries if recipe.selects(e)], Buffers())
        return {p: np.asarray(v, np.float32) for p, v in fixes.items()}


def channels(x, axis):
    """x as (weights per output channel, output channels); a depthwise kernel's outputs are its
    (input, multiplier) pairs."""
    if x.ndim >= 3 and axis == x.ndim - 2:
        return x.reshape(-1, x.shape[-2] * x.shape[-1])
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def unchannels(m, like, axis):
    if like.ndim >= 3 and axis == like.ndim - 2:
        return m.reshape(like.shape)
    return np.moveaxis(m.reshape(np.moveaxis(like, axis, -1).shape), -1, axis)


def by_magnitude(x, count):
    return wqkernels.prune(x, sparsity=count_fraction(count, x.size)) if count else x


def threshold_counts(scores: dict, total: int, sparsity: float) -> dict:
    """How many weights each tensor loses to one threshold on the scores of all eligible tensors."""
    count = math.floor(sparsity * total)
    cut = np.sort(np.concatenate([s.ravel() for s in scores.values()]))[count - 1]
    return {p: int(np.count_nonzero(s <= cut)) for p, s in scores.items()}


# ---- the variants -------------------------------------------------------------------------------

def _floor(x, count, axis, floor):
    """`count` zeros by magnitude, but each output channel keeps its `floor` largest weights."""
    c = np.abs(channels(x, axis))
    keep = np.zeros(c.shape, bool)
    np.put_along_axis(keep, np.argsort(-c, axis=0, kind="stable")[:min(floor, c.shape[0])], True, axis=0)
    drop = np.argsort(np.where(keep, np.inf, c).ravel(), kind="stable")[:min(count, c.size - int(keep.sum()))]
    mask = np.ones(c.size, bool)
    mask[drop] = False
    return np.where(unchannels(mask.reshape(c.shape), x, axis), x, np.float32(0))


def _erk_counts(w: dict, sparsity: float) -> dict:
    total = sum(x.size for x in w.values())
    eligible = {p: sum(x.shape) / x.size for p, x in w.items() if x.size >= MIN_SIZE}
    kept = total - math.floor(sparsity * total) - sum(x.size for p, x in w.items() if p not in eligible)
    dense = set()
    while True:  # tensors whose density would exceed 1 stay dense, the others share the rest
        eps = (kept - sum(w[p].size for p in dense)) / sum(r * w[p].size for p, r in eligible.items()
                                                          if p not in dense)
        over = {p for p, r in eligible.items() if p not in dense and eps * r >= 1}
        if not over:
            break
        dense |= over
    return {p: 0 if p not in eligible or p in dense else x.size - round(eps * eligible[p] * x.size)
            for p, x in w.items()}


def _channel_lamp(w: dict, tensors, sparsity: float) -> dict:
    scores = {t.path: unchannels(np.stack([lamp_scores(col) for col in channels(w[t.path], t.channel_axis).T],
                                          axis=1), w[t.path], t.channel_axis)
              for t in tensors if w[t.path].size >= MIN_SIZE}
    cut = np.sort(np.concatenate([s.ravel() for s in scores.values()]))[math.floor(sparsity * sum(
        x.size for x in w.values())) - 1]
    return {p: np.where(scores[p] <= cut, np.float32(0), x) if p in scores else x for p, x in w.items()}


def pruned(name: str, w: dict, tensors, sparsity: float) -> dict:
    """The kernels pruned by variant `name` (before any correction)."""
    eligible = [p for p, x in w.items() if x.size >= MIN_SIZE]
    total = sum(x.size for x in w.values())
    if name.startswith("floor"):
        counts = prune_counts(w, sparsity)
        return {t.path: _floor(w[t.path], counts[t.path], t.channel_axis, int(name.split()[1]))
                if counts[t.path] else w[t.path] for t in tensors}
    if name == "channel lamp":
        return _channel_lamp(w, tensors, sparsity)
    if name == "erk":
        counts = _erk_counts(w, sparsity)
    elif name.startswith("size^"):
        a, mean = float(name[len("size^"):]), statistics.fmean(w[p].size for p in eligible)
        counts = threshold_counts({p: lamp_scores(w[p]).astype(np.float64) * (w[p].size / mean) ** a
                                   for p in eligible}, total, sparsity)
    elif name.startswith("energy^"):
        power = float(name[len("energy^"):])
        counts = threshold_counts({p: np.square(w[p], dtype=np.float64) / np.sum(np.square(w[p], dtype=np.float64))
                                   ** power for p in eligible}, total, sparsity)
    else:  # the default's
        counts = prune_counts(w, sparsity)
    return {p: by_magnitude(x, counts.get(p, 0)) for p, x in w.items()}


def variant(name: str, sparsity: float) -> fidelity.Transform:
    def transform(weights, tensors, context):
        w = {t.path: np.ascontiguousarray(weights[t.path], np.float32) for t in tensors}
        if name in ("L2 kept", "L1 kept"):
            return _norm_kept(w, pruned("default", w, tensors, sparsity), tensors, int(name[1]))
        if name.startswith("covcorr "):
            words = name.split()
            new = pruned("default", w, tensors, sparsity)
            pool = max_pooling_iid(float(words[words.index("pool") + 1])) if "pool" in words else contextlib.nullcontext()
            with covariance_correction(modelled_covariances(context.path, tensors, w, float(words[1]),
                                                            "chan" in words)), pool:
                return {**new, **corrected(context.path, sparsity, new)}
        if name.startswith("obs "):
            new = obs_pruned(name, w, tensors, sparsity, context.path)
            return new if "raw" in name.split() else {**new, **corrected(context.path, sparsity, new)}
        if name == "independent inputs":
            import wqkernels.files.graph as graph

            new = pruned("default", w, tensors, sparsity)
            with mock.patch.object(graph, "input_covariance", lambda *args: None):
                return {**new, **corrected(context.path, sparsity, new)}
        new = pruned(name, w, tensors, sparsity)
        cap = float(name.split()[-1]) if name.startswith("scale cap") else None
        pooling = max_pooling_iid() if name == "iid max pooling" else max_pooling_iid(float(name.split()[-1])) \
            if name.startswith("correlated max pooling") else contextlib.nullcontext()
        with pooling:
            return {**new, **corrected(context.path, sparsity, new, cap)}

    return transform


def _norm_kept(w, new, tensors, order):
    """Each output channel's kept weights scaled to the channel's float L`order` norm."""
    out = {}
    for t in tensors:
        x, p = w[t.path].astype(np.float64), new[t.path].astype(np.float64)
        axes = tuple(i for i in range(x.ndim) if i != t.channel_axis)
        before = np.sum(np.abs(x) ** order, axis=axes, keepdims=True) ** (1 / order)
        after = np.sum(np.abs(p) ** order, axis=axes, keepdims=True) ** (1 / order)
        out[t.path] = (p * np.divide(before, after, out=np.ones_like(before), where=after > 0)).astype(np.float32)
    return out


def rectified_max_moments(mean, std, k, points=513):
    """Mean and variance of relu(max of k independent N(mean, std^2)), per channel (quadrature)."""
    from scipy.special import ndtr

    mean, std = np.asarray(mean, np.float64), np.abs(np.asarray(std, np.float64))
    t = np.linspace(0, 1, points)[:, None] * (np.maximum(mean, 0) + 8 * np.maximum(std, 1e-12))[None, :]
    cdf = np.where(std > 0, ndtr((t - mean) / np.where(std > 0, std, 1.0)), (t >= mean).astype(float))
    tail = 1 - cdf ** k
    m1, m2 = np.trapezoid(tail, t, axis=0), np.trapezoid(2 * t * tail, t, axis=0)
    return m1, np.maximum(m2 - m1 * m1, 0.0)


def rectified_max_moments_corr(mean, std, k, rho, points=513, nodes=32):
    """Mean and variance of relu(max of k N(mean, std^2) with pairwise correlation rho), per
    channel: given the common part sqrt(rho) z0, the values are independent (Gauss-Hermite over z0)."""
    from scipy.special import ndtr

    if rho <= 0:
        return rectified_max_moments(mean, std, k, points)
    mean, std = np.asarray(mean, np.float64), np.maximum(np.abs(np.asarray(std, np.float64)), 1e-12)
    z0, wz = np.polynomial.hermite_e.hermegauss(nodes)
    wz = wz / wz.sum()
    t = np.linspace(0, 1, points)[:, None] * (np.maximum(mean, 0) + 8 * std)[None, :]
    spread = std * math.sqrt(max(1 - rho, 1e-12))
    cdf = sum(wi * ndtr((t - mean - std * math.sqrt(rho) * zi) / spread) ** k for zi, wi in zip(z0, wz))
    tail = 1 - cdf
    m1, m2 = np.trapezoid(tail, t, axis=0), np.trapezoid(2 * t * tail, t, axis=0)
    return m1, np.maximum(m2 - m1 * m1, 0.0)


@contextlib.contextmanager
def max_pooling_iid(rho: float = 0.0):
    """The layer graph's moments with max pooling of a ReLU of a Gaussian as the max of its
    window's values taken as pairwise correlated `rho` (0: independent)."""
    import wqkernels.files.graph as graph

    real = graph._moments_of

    def patched(nodes, name, bn_weights, memo, depth=0):
        node = nodes.get(name)
        relu = nodes.get(node.inputs[0]) if node is not None and len(node.inputs) == 1 else None
        if node is not None and node.cls == "MaxPooling2D" and relu is not None and relu.cls == "ReLU":
            pre = graph._moments(nodes, relu.inputs[0], bn_weights, memo, depth + 2)
            if pre is not None and pre.gaussian:
                size = node.config.get("pool_size", 2)
                k = math.prod(size) if isinstance(size, (list, tuple)) else size * size
                return graph.Moments(*rectified_max_moments_corr(pre.mean, np.sqrt(pre.var), k, rho), False)
        return real(nodes, name, bn_weights, memo, depth)

    with mock.patch.object(graph, "_moments_of", patched):
        yield


# ---- OBS reconstruction with a modelled Hessian ---------------------------------------------------

def layer_inputs(path, everything: bool = False):
    """{layer name: (mean, var) of its input per channel} for the layers whose input statistics
    the file layer knows (the BatchNorm correction's ``input_moments``); with `everything`,
    also the layer graph and {(layer, role): values} of every layer's weights."""
    import wqkernels.files.graph as graph
    from wqkernels.files.buffers import Buffers
    from wqkernels.files.source import Source

    with Source(path) as source:
        nodes = graph.graph(source.config)
        entries, buffers, memo = graph._layer_entries(source, nodes), Buffers(), {}

        def bn_weights(name):
            roles = entries.get(name, {})
            if not {"moving_mean", "moving_variance"} <= roles.keys():
                return None
            return {r: np.asarray(source.read(e, buffers), np.float64) for r, e in roles.items() if r in graph._BN_VARS}

        out = {}
        for name in nodes:
            m = graph.input_moments(nodes, name, bn_weights, memo)
            if m is not None:
                out[name] = (np.asarray(m.mean, np.float64), np.asarray(m.var, np.float64))
        if not everything:
            return out
        weights = {(layer, role): np.asarray(source.read(e, buffers), np.float64)
                   for layer, roles in entries.items() for role, e in roles.items()}
        return out, nodes, weights


def spatial_correlation(grid: tuple, rho, metric: str = "euclid") -> np.ndarray:
    """rho ** d(p, q) over the positions of `grid` (C order), (P, P); rho 0 is the identity."""
    pos = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), -1).reshape(-1, len(grid))
    diff = np.abs(pos[:, None, :] - pos[None, :, :]).astype(np.float64)
    d = np.sqrt((diff ** 2).sum(-1)) if metric == "euclid" else diff.sum(-1)
    return np.where(d == 0, 1.0, float(rho) ** d) if float(rho) > 0 else np.eye(len(pos))


def modelled_hessian(mean, var, grid: tuple, rho, depthwise: bool = False, metric: str = "euclid",
                     corr=None) -> np.ndarray:
    """E[x xᵀ] of a layer's input rows laid out (positions of `grid`, channels) in C order:
    ``m_i m_j + [same channel] s_i s_j rho^d(i, j)``; one (P, P) matrix per channel when
    `depthwise` (groups, inputs, inputs).  With `corr` (channels x channels), channels c and d
    are correlated ``corr[c, d] rho^d(i, j)`` instead of independent."""
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    r = spatial_correlation(grid, rho, metric)
    if depthwise:
        return mean[:, None, None] ** 2 + var[:, None, None] * r[None]
    p, c = r.shape[0], mean.size
    m = np.tile(mean, p)
    h = np.outer(m, m)
    sd = np.sqrt(var)
    h += np.kron(r, np.diag(var) if corr is None else corr * np.outer(sd, sd))
    return h[None]


def kernel_rho(x, grid: tuple, channels_axis_last: int) -> float:
    """How alike neighbouring taps of a kernel are: the correlation of the weights of adjacent
    positions (along every spatial axis), over channels and outputs, clipped to [0, 0.95]."""
    k = np.asarray(x, np.float64).reshape(*grid, -1)
    a, b = [], []
    for axis in range(len(grid)):
        if grid[axis] > 1:
            a.append(np.take(k, range(grid[axis] - 1), axis=axis).ravel())
            b.append(np.take(k, range(1, grid[axis]), axis=axis).ravel())
    if not a:
        return 0.0
    a, b = np.concatenate(a), np.concatenate(b)
    return float(np.clip(np.corrcoef(a, b)[0, 1], 0.0, 0.95))


def layer_layout(t, x, mean):
    """(spatial grid of the layer's input rows, depthwise?, KernelView) or None for a kernel the
    modelled Hessian does not describe."""
    from wqkernels.calibration import KernelView

    if t.layer_class in ("Conv1D", "Conv2D", "Conv3D") and x.shape[-2] == mean.size:
        return tuple(x.shape[:-2]), False, KernelView.linear(x.shape)
    if t.layer_class in ("DepthwiseConv1D", "DepthwiseConv2D") and x.shape[-2] == mean.size:
        return tuple(x.shape[:-2]), True, KernelView.depthwise(x.shape)
    if t.layer_class == "Dense" and x.ndim == 2 and x.shape[0] % mean.size == 0:
        positions = x.shape[0] // mean.size
        side = math.isqrt(positions)
        grid = (side, side) if side * side == positions else (positions,)
        return grid, False, KernelView.linear(x.shape)
    return None


def obs_pruned(name: str, w: dict, tensors, sparsity: float, path) -> dict:
    """Variants "obs <mask> <rho>": the default's LAMP counts (or "uniform": one sparsity over the
    eligible tensors), then SparseGPT's column loop with the modelled Hessian on every kernel
    whose input statistics are known; <mask> "mask" keeps the default's magnitude mask and only
    reconstructs, "pick" lets the OBS saliency choose within the tensor. <rho> a number or
    "kernel" (from the kernel's neighbouring taps); with "chan", channels correlated as
    :func:`channel_covariance` models them. Other kernels: the default's."""
    from wqkernels.calibration.solve import inverse_cholesky, reconstruct

    words = name.split()
    mode, rho_word = words[1], words[2]
    inputs, nodes, weights = layer_inputs(path, everything=True)
    metric = "manhattan" if "manhattan" in words else "euclid"
    counts = prune_counts(w, sparsity)
    if "uniform" in words:
        eligible = [p for p, x in w.items() if x.size >= MIN_SIZE]
        total, fixed = sum(x.size for x in w.values()), sum(x.size for p, x in w.items() if p not in eligible)
        rate = math.floor(sparsity * total) / sum(w[p].size for p in eligible)
        counts = {p: math.floor(rate * x.size) if p in eligible else 0 for p, x in w.items()}
    out = {}
    for t in tensors:
        x, count = w[t.path], counts.get(t.path, 0)
        stats = inputs.get(t.layer) if t.role == "kernel" else None
        layout = None if stats is None or not count else layer_layout(t, x, stats[0])
        if layout is None:
            out[t.path] = by_magnitude(x, count)
            continue
        grid, depthwise, view = layout
        rho = kernel_rho(x, grid, -2) if rho_word == "kernel" else float(rho_word)
        corr = None
        if "chan" in words and not depthwise:
            cov = channel_covariance(nodes, t.layer, inputs, weights)
            if cov is not None and cov.shape[0] == stats[0].size:
                sd = np.sqrt(np.maximum(np.diag(cov), 1e-12))
                corr = cov / np.outer(sd, sd)
        h = modelled_hessian(*stats, grid, rho, depthwise, metric, corr)
        matrix = view.matrix(x)
        u = inverse_cholesky(h.copy(), 0.01)
        if mode == "mask":
            zero = view.matrix(by_magnitude(x, count)) == 0
            reconstruct(matrix, u, zero=zero)
        else:
            reconstruct(matrix, u, zero=matrix == 0, count=count)
        out[t.path] = view.kernel(matrix, x.shape)
    return out


def relu_covariance(mean, std, corr, points: int = 24) -> np.ndarray:
    """Cov(relu(y_c), relu(y_d)) of y ~ N(mean, diag(std) corr diag(std)), pair by pair
    (Gauss-Hermite quadrature over the two standardised coordinates)."""
    z, wts = np.polynomial.hermite_e.hermegauss(points)
    wts = wts / wts.sum()
    mean, std = np.asarray(mean, np.float64), np.abs(np.asarray(std, np.float64))
    r = np.clip(np.asarray(corr, np.float64), -1.0, 1.0)
    a = np.maximum(mean[:, None] + std[:, None] * z[None, :], 0.0)  # relu(y_c) at z1, (C, n)
    e1 = a @ wts
    # y_d = mean_d + std_d (r z1 + sqrt(1 - r^2) z2)
    zz = r[:, :, None, None] * z[None, None, :, None] + np.sqrt(1 - r * r)[:, :, None, None] * z[None, None, None, :]
    b = np.maximum(mean[None, :, None, None] + std[None, :, None, None] * zz, 0.0)  # (C, D, n1, n2)
    eb = b @ wts  # (C, D, n1): E over z2
    joint = np.einsum("cn,cdn,n->cd", a, eb, wts)
    cov = joint - np.outer(e1, e1)
    return (cov + cov.T) / 2


def channel_covariance(nodes, name, inputs, weights, depth=0):
    """The modelled covariance of layer `name`'s input channels, or None: followed back through
    Dropout, Flatten and pooling (taken as keeping it) and a ReLU to a BatchNormalization
    whose input is a Dense or convolution with known input statistics, the linear layer's
    output channels taken as N(., W^T diag(var) W) (its inputs independent), then the BN's
    affine map, then the ReLU."""
    node = nodes.get(name)
    if node is None or len(node.inputs) != 1 or depth > 16:
        return None
    src = nodes.get(node.inputs[0])
    prev = node.inputs[0]
    while src is not None and (src.cls in ("Dropout", "Flatten") or "Pooling" in (src.cls or "")):
        prev = src.inputs[0] if len(src.inputs) == 1 else None
        src = nodes.get(prev)
    if src is None or src.cls != "ReLU" or len(src.inputs) != 1:
        return None
    bn_name = src.inputs[0]
    bn = nodes.get(bn_name)
    if bn is None or bn.cls != "BatchNormalization" or len(bn.inputs) != 1:
        return None
    lin = bn.inputs[0]
    if lin not in inputs or (lin, "kernel") not in weights or nodes[lin].cls not in ("Conv2D", "Dense", "Conv1D"):
        return None
    k = weights[(lin, "kernel")]
    _, var = inputs[lin]
    flat = k.reshape(-1, k.shape[-2], k.shape[-1])  # (taps, in, out)
    if flat.shape[1] != var.size:
        if nodes[lin].cls == "Dense" and k.shape[0] % var.size == 0:
            flat = k.reshape(-1, var.size, k.shape[-1])
        else:
            return None
    cov = np.einsum("tio,ti,tip->op", flat, np.broadcast_to(var, flat.shape[:2]), flat)
    sd = np.sqrt(np.maximum(np.diag(cov), 1e-12))
    corr = cov / np.outer(sd, sd)
    gamma, beta = weights[(bn_name, "gamma")], weights[(bn_name, "beta")]
    corr = corr * np.outer(np.sign(gamma), np.sign(gamma))
    np.fill_diagonal(corr, 1.0)
    return relu_covariance(beta, gamma, corr)


def modelled_covariances(path, tensors, w, rho: float, chan: bool) -> dict:
    """{kernel shape: the modelled covariance of its layer's input rows} (Dense and
    convolutions with known input statistics; shapes that repeat in the model are left out)."""
    inputs, nodes, weights = layer_inputs(path, everything=True)
    out, seen = {}, set()
    for t in tensors:
        x = w[t.path]
        stats = inputs.get(t.layer) if t.role == "kernel" else None
        layout = None if stats is None else layer_layout(t, x, stats[0])
        if x.shape in seen:
            out.pop(x.shape, None)
        seen.add(x.shape)
        if layout is None or layout[1]:
            continue
        corr = None
        if chan:
            cov = channel_covariance(nodes, t.layer, inputs, weights)
            if cov is not None and cov.shape[0] == stats[0].size:
                sd = np.sqrt(np.maximum(np.diag(cov), 1e-12))
                corr = cov / np.outer(sd, sd)
        h = modelled_hessian(*stats, layout[0], rho, False, "euclid", corr)[0]
        m = np.tile(stats[0], h.shape[0] // stats[0].size)
        out[x.shape] = h - np.outer(m, m)
    return out


@contextlib.contextmanager
def covariance_correction(sigmas: dict):
    """The BatchNorm correction with each output channel's variance ``wᵀ Σ w`` under the modelled
    covariance Σ of the layer's input rows (instead of independent inputs), where one is given."""
    import wqkernels.files.graph as graph
    from wqkernels.correction import Corrected, output_moments

    real = graph.correct_layer

    def patched(kernel, pruned, mean, var, kind, *, bias=None, moving_mean=None, moving_variance=None,
                epsilon=1e-3):
        k, p = np.asarray(kernel, np.float64), np.asarray(pruned, np.float64)
        sigma = sigmas.get(k.shape)
        if sigma is None or kind == "depthwise":
            return real(kernel, pruned, mean, var, kind, bias=bias, moving_mean=moving_mean,
                        moving_variance=moving_variance, epsilon=epsilon)
        km, pm = k.reshape(-1, k.shape[-1]), p.reshape(-1, p.shape[-1])
        var0 = np.einsum("io,ij,jo->o", km, sigma, km)
        var1 = np.einsum("io,ij,jo->o", pm, sigma, pm)
        ratio = np.ones_like(var0)
        np.divide(var1, var0, out=ratio, where=(var0 > 0) & (var1 > 0))
        mean0, mean1 = output_moments(k, mean, var, kind)[0], output_moments(p, mean, var, kind)[0]
        if bias is not None:
            scale = 1.0 / np.sqrt(ratio)
            return Corrected(scale.astype(np.float32), (np.asarray(bias, np.float64) - (scale * mean1 - mean0))
                             .astype(np.float32), None, None)
        mv = np.asarray(moving_variance, np.float64)
        return Corrected(None, None, (np.asarray(moving_mean, np.float64) + mean1 - mean0).astype(np.float32),
                         ((mv + epsilon) * ratio - epsilon).astype(np.float32))

    with mock.patch.object(graph, "correct_layer", patched):
        yield


# ---- measured statistics instead of estimated ones (a diagnostic) -------------------------------

def true_statistics(case: fidelity.Case, kernels: dict, x=None) -> dict:
    """Score and error of the model with `kernels` after a correction from statistics measured
    on `x` (default: the training set)."""
    import keras

    model, reference = case.model, keras.models.load_model(case.path, compile=False)
    for path, value in kernels.items():
        kind, j = case.slots[path]
        (model.trainable_variables if kind == 0 else model.non_trainable_variables)[j].assign(value)
    x = case.task.x_train if x is None else x

    def inputs(m, layer):
        return np.asarray(keras.Model(m.inputs, m.get_layer(layer).input).predict(x, verbose=0), np.float64)

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            h = inputs(model, layer.name).reshape(-1, layer.input.shape[-1])
            h0 = inputs(reference, layer.name).reshape(h.shape[0], -1)
            s = np.sqrt(np.maximum(h.var(0), 1e-12) / np.maximum(h0.var(0), 1e-12))
            mm, mv = (np.asarray(v.numpy(), np.float64) for v in (layer.moving_mean, layer.moving_variance))
            layer.moving_mean.assign((h.mean(0) - (h0.mean(0) - mm) * s).astype(np.float32))
            layer.moving_variance.assign(np.maximum((mv + layer.epsilon) * s * s - layer.epsilon, 0).astype(np.float32))
        elif isinstance(layer, keras.layers.Dense) and layer.name == "dense":
            k, b = layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64)
            y, y0 = inputs(model, layer.name) @ k + b, inputs(reference, layer.name) @ \
                reference.get_layer(layer.name).kernel.numpy() + b
            s = np.where(y.var(0) > 1e-12, np.sqrt(y0.var(0) / np.maximum(y.var(0), 1e-12)), 1.0)
            layer.kernel.assign((k * s).astype(np.float32))
            layer.bias.assign((b - ((y.mean(0) - b) * s + b - y0.mean(0))).astype(np.float32))
    out = models.predict(model, case.task.x_test)
    model.load_weights(case.path)
    return fidelity.metrics(case.task, out, case.reference)


def oracle(archs, seeds, sparsity):
    print(f"\nsparsity {sparsity}: points lost per seed (relative output error)")
    print("| model | default | with the true statistics |\n|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="wqkernels-oracle-") as workdir:
        for arch in archs:
            cells = [[], []]
            for seed in seeds:
                case = fidelity.Case(arch, seed, models.trained(arch, seed)[0], workdir)
                score = fidelity.metrics(case.task, case.reference, case.reference)["score"]
                w = {t.path: case.weights[t.path] for t in case.tensors}
                default = variant("default", sparsity)(w, case.tensors, case.context)
                plain = pruned("default", {p: np.asarray(x, np.float32) for p, x in w.items()}, case.tensors,
                               sparsity)
                for cell, m in zip(cells, (fidelity.metrics(case.task, case.predict(default), case.reference),
                                           true_statistics(case, plain))):
                    cell.append((score - m["score"], m["rel_err"]))
            print(f"| `{arch}` | " + " | ".join(" / ".join(f"{loss:.2f}" for loss, _ in c)
                                                 + f" ({statistics.fmean(e for _, e in c):.3f})" for c in cells) + " |")


# ---- which estimate costs the accuracy (a diagnostic) --------------------------------------------

#: the layers of the BN CNNs the correction touches, and their kernels' kinds
DIAGNOSED = {"depthwise": "depthwise", "pointwise": "conv", "conv2": "conv", "dense": "dense"}


def _linear(layer, kernel, a):
    """The layer's linear map (no bias) of its inputs `a` with `kernel`, as (samples x positions, channels)."""
    import keras

    k = np.asarray(kernel, np.float32)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        y = keras.ops.depthwise_conv(a.astype(np.float32), k, 1, padding=layer.padding)
    elif isinstance(layer, keras.layers.Conv2D):
        y = keras.ops.conv(a.astype(np.float32), k, 1, padding=layer.padding)
    else:
        y = a.reshape(a.shape[0], -1).astype(np.float32) @ k
    y = np.asarray(y, np.float64)
    return y.reshape(-1, y.shape[-1])


def _rel(est, meas) -> float:
    est, meas = np.ravel(np.asarray(est, float)), np.ravel(np.asarray(meas, float))
    return float(np.linalg.norm(est - meas) / max(np.linalg.norm(meas), 1e-12))


def _geo(x) -> float:
    return float(np.exp(np.mean(np.log(np.maximum(x, 1e-12)))))


def diagnose_case(case: fidelity.Case, sparsity: float) -> dict:
    """Per corrected layer: the estimated input moments and output quantities the correction uses
    against those measured on the training set through the float model and through the
    default-compressed one; then the score with one layer's statistic measured (its mean shift,
    its variance ratio, or both; the rest estimated), and with all of them (:func:`true_statistics`)."""
    import keras

    from wqkernels.correction import output_moments

    model, ref, x = case.model, keras.models.load_model(case.path, compile=False), case.task.x_train
    w = {t.path: np.asarray(case.weights[t.path], np.float32) for t in case.tensors}
    plain = pruned("default", w, case.tensors, sparsity)
    default = variant("default", sparsity)(w, case.tensors, case.context)
    estimated = layer_inputs(case.path)
    kernel = {t.layer: t.path for t in case.tensors if t.role == "kernel"}
    variable = {id(v): path for path, (kind, j) in case.slots.items()
                for v in [(model.trainable_variables if kind == 0 else model.non_trainable_variables)[j]]}

    def inputs(m, layer):
        return np.asarray(keras.Model(m.inputs, m.get_layer(layer).input).predict(x, verbose=0), np.float64)

    def load(kernels):
        model.load_weights(case.path)
        for path, value in kernels.items():
            kind, j = case.slots[path]
            (model.trainable_variables if kind == 0 else model.non_trainable_variables)[j].assign(
                np.asarray(value, np.float32))

    float_score = fidelity.metrics(case.task, case.reference, case.reference)["score"]

    def lost(kernels):
        m = fidelity.metrics(case.task, case.predict(kernels), case.reference)
        return float_score - m["score"], m["rel_err"]

    rows, swaps = {}, {"default": lost(default)}
    for name, kind in DIAGNOSED.items():
        load(default)
        layer, k, p = model.get_layer(name), w[kernel[name]], plain[kernel[name]]
        mean, var = estimated[name]
        a0, a1 = inputs(ref, name), inputs(model, name)  # the float model's inputs, the compressed one's
        f0, f1 = a0.reshape(-1, mean.size), a1.reshape(-1, mean.size)
        mean0, var0 = output_moments(k, mean, var, kind)
        mean1, var1 = output_moments(p, mean, var, kind)
        y00, y10, y11 = _linear(layer, k, a0), _linear(layer, p, a0), _linear(layer, p, a1)
        rows[name] = {"mean": (mean.mean(), f0.mean(0).mean(), f1.mean(0).mean(), _rel(mean, f0.mean(0)),
                               _rel(mean, f1.mean(0))),
                      "var": (var.mean(), f0.var(0).mean(), f1.var(0).mean(), _rel(var, f0.var(0)), _rel(var, f1.var(0))),
                      "shift": (_rel(mean1 - mean0, y10.mean(0) - y00.mean(0)), _rel(mean1 - mean0, y11.mean(0) - y00.mean(0))),
                      "var0": _geo(var0 / y00.var(0)),
                      "ratio": (_geo(np.where(var0 > 0, var1 / np.maximum(var0, 1e-12), 1.0)), _geo(y10.var(0) / y00.var(0)),
                                _geo(y11.var(0) / y00.var(0)))}
        bn = next((b for b in model.layers[model.layers.index(layer) + 1:][:1]
                   if isinstance(b, keras.layers.BatchNormalization)), None)
        h, h0 = y11, y00  # what the corrected layer outputs in the compressed model, and in the float one
        for what in ("mean", "var", "both"):
            new = dict(default)
            if bn is not None:  # the BN's moving statistics, as true_statistics sets them, for one of the two
                bn0 = ref.get_layer(bn.name)
                mm0, mv0 = (np.asarray(v.numpy(), np.float64) for v in (bn0.moving_mean, bn0.moving_variance))
                mm_path, mv_path = variable[id(bn.moving_mean)], variable[id(bn.moving_variance)]
                s = np.sqrt(np.maximum(h.var(0), 1e-12) / np.maximum(h0.var(0), 1e-12))
                mv = np.maximum((mv0 + bn.epsilon) * s * s - bn.epsilon, 0) if what != "mean" \
                    else np.asarray(default[mv_path], np.float64)
                mm = h.mean(0) - (h0.mean(0) - mm0) * np.sqrt((mv + bn.epsilon) / (mv0 + bn.epsilon)) \
                    if what != "var" else np.asarray(default[mm_path], np.float64)
                new[mm_path], new[mv_path] = mm.astype(np.float32), mv.astype(np.float32)
            else:  # the biased layer: its kernel scale and bias
                b = np.asarray(ref.get_layer(name).bias.numpy(), np.float64)
                scaled = np.asarray(default[kernel[name]], np.float64)
                estimate = np.abs(scaled).sum(0) / np.maximum(np.abs(p).sum(0), 1e-30)
                measured = np.where(h.var(0) > 1e-12, np.sqrt(h0.var(0) / np.maximum(h.var(0), 1e-12)), 1.0)
                scale = measured if what != "mean" else estimate
                bias = b - (h.mean(0) * scale - h0.mean(0)) if what != "var" else \
                    b - (output_moments(p * scale, mean, var, kind)[0] - mean0)
                new[kernel[name]], new[variable[id(layer.bias)]] = (p * scale).astype(np.float32), bias.astype(np.float32)
            swaps[f"{name} {what}"] = lost(new)
    model.load_weights(case.path)
    true = true_statistics(case, plain)
    swaps["all measured"] = (float_score - true["score"], true["rel_err"])
    return {"rows": rows, "swaps": swaps}


def diagnose(archs, seeds, sparsity):
    results = {}
    with tempfile.TemporaryDirectory(prefix="wqkernels-diagnose-") as workdir:
        for arch in archs:
            for seed in seeds:
                import keras

                results[arch, seed] = diagnose_case(fidelity.Case(arch, seed, models.trained(arch, seed)[0], workdir),
                                                    sparsity)
                keras.backend.clear_session()
    for arch in archs:
        cases = [results[arch, s] for s in seeds]

        def cell(layer, key, i=None):
            return statistics.fmean(float(c["rows"][layer][key] if i is None else c["rows"][layer][key][i]) for c in cases)

        print(f"\n`{arch}`, sparsity {sparsity}: estimated / measured through the float model / through the "
              "compressed one (relative error against each), means over seeds")
        print("| layer | input mean | input variance | mean shift: rel. error | independent output variance / "
              "measured | variance kept (pruned / float) |\n|---|---|---|---|---|---|")
        for layer in DIAGNOSED:
            print(f"| {layer} | " + " | ".join(
                f"{cell(layer, key, 0):.3f} / {cell(layer, key, 1):.3f} / {cell(layer, key, 2):.3f} "
                f"({cell(layer, key, 3):.2f}, {cell(layer, key, 4):.2f})" for key in ("mean", "var"))
                + f" | {cell(layer, 'shift', 0):.2f}, {cell(layer, 'shift', 1):.2f} | {cell(layer, 'var0'):.2f} | "
                + " / ".join(f"{cell(layer, 'ratio', i):.4f}" for i in range(3)) + " |")
        print(f"\n`{arch}`: points lost per seed (relative output error) with one statistic measured")
        print("| measured | points lost | error |\n|---|---|---|")
        for label in cases[0]["swaps"]:
            values = [c["swaps"][label] for c in cases]
            print(f"| {label} | {statistics.fmean(v[0] for v in values):.2f} ("
                  + " / ".join(f"{v[0]:.2f}" for v in values) + f") | {statistics.fmean(v[1] for v in values):.3f} |")


# ---- the modelled Hessian against the measured one (a diagnostic) --------------------------------

def _obs(view, x, h, base, count, mode):
    from wqkernels.calibration.solve import inverse_cholesky, reconstruct

    matrix = view.matrix(x)
    u = inverse_cholesky(np.array(h, np.float64), 0.01)
    if mode == "mask":
        reconstruct(matrix, u, zero=view.matrix(base) == 0)
    else:
        reconstruct(matrix, u, zero=matrix == 0, count=count)
    return view.kernel(matrix, x.shape)


def hessians(archs, seeds, sparsity):
    """Per layer with known input statistics: the measured correlations of its input rows (training
    set), and the relative output error ``tr(dWᵀ C dW) / tr(Wᵀ C W)`` under the measured input
    covariance C of the default's magnitude pruning and of OBS with modelled and measured Hessians."""
    import keras

    from wqkernels.calibration import patches

    cols = ("magnitude", "ρ 0", "ρ 0.3", "ρ 0.7", "ρ kernel", "ρ 0.3 chan", "measured: diagonal",
            "spatial blocks", "channel blocks", "full")
    facts, errs = {}, {}
    with tempfile.TemporaryDirectory(prefix="wqkernels-hessians-") as workdir:
        for arch in archs:
            for seed in seeds:
                case = fidelity.Case(arch, seed, models.trained(arch, seed)[0], workdir)
                inputs, nodes, weights = layer_inputs(case.path, everything=True)
                w = {t.path: np.asarray(case.weights[t.path], np.float32) for t in case.tensors}
                counts = prune_counts(w, sparsity)
                for t in case.tensors:
                    x, count = w[t.path], counts[t.path]
                    stats = inputs.get(t.layer) if t.role == "kernel" else None
                    layout = None if stats is None or not count else layer_layout(t, x, stats[0])
                    if layout is None:
                        continue
                    grid, depthwise, view = layout
                    layer = case.model.get_layer(t.layer)
                    a = np.asarray(keras.Model(case.model.inputs, layer.input).predict(case.task.x_train, verbose=0),
                                   np.float64)
                    c = stats[0].size
                    rows = a.reshape(a.shape[0], 1, -1) if t.layer_class == "Dense" else patches(
                        a, x.shape[:-2], padding=layer.padding, groups=c if depthwise else 1).astype(np.float64)
                    h_true = np.einsum("ngi,ngj->gij", rows, rows) / rows.shape[0]
                    mu = rows.mean(0)
                    mm = np.einsum("gi,gj->gij", mu, mu)
                    cov = h_true - mm
                    p = int(np.prod(grid))
                    pos = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), -1).reshape(p, -1)
                    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
                    sd = np.sqrt(np.maximum(np.einsum("gii->gi", cov), 1e-12))
                    corr = cov / (sd[:, :, None] * sd[:, None, :])
                    key = (arch, t.layer)
                    if depthwise:
                        within, across = corr[:, dist == 1].mean(), float("nan")
                    else:
                        r4 = corr[0].reshape(p, c, p, c)
                        within = np.einsum("pcqc->pqc", r4)[dist == 1].mean()
                        across = r4.transpose(0, 2, 1, 3)[np.eye(p, dtype=bool)][:, ~np.eye(c, dtype=bool)].mean()
                    facts.setdefault(key, []).append((within, across, kernel_rho(x, grid, -2), count / x.size))
                    base = by_magnitude(x, count)
                    hs = {}
                    for rho in ("0", "0.3", "0.7", "kernel"):
                        hs[f"ρ {rho}"] = modelled_hessian(*stats, grid, kernel_rho(x, grid, -2) if rho == "kernel"
                                                          else float(rho), depthwise)
                    modelled = channel_covariance(nodes, t.layer, inputs, weights) if not depthwise else None
                    if modelled is not None:
                        msd = np.sqrt(np.maximum(np.diag(modelled), 1e-12))
                        hs["ρ 0.3 chan"] = modelled_hessian(*stats, grid, 0.3, False, corr=modelled / np.outer(msd, msd))
                    diag = np.einsum("gi,ij->gij", np.einsum("gii->gi", cov), np.eye(cov.shape[-1]))
                    hs["measured: diagonal"] = mm + diag
                    if not depthwise:
                        c4 = cov[0].reshape(p, c, p, c)
                        same_channel = np.einsum("pqc,cd->pcqd", np.einsum("pcqc->pqc", c4), np.eye(c))
                        same_position = np.einsum("pcd,pq->pcqd", np.einsum("pcpd->pcd", c4), np.eye(p))
                        hs["spatial blocks"] = mm + same_channel.reshape(1, p * c, p * c)
                        hs["channel blocks"] = mm + same_position.reshape(1, p * c, p * c)
                    else:
                        hs["spatial blocks"] = h_true
                    hs["full"] = h_true
                    wm = view.matrix(x)

                    def err(new):
                        d = view.matrix(new) - wm
                        return float(np.einsum("gio,gij,gjo->", d, cov, d) / np.einsum("gio,gij,gjo->", wm, cov, wm))

                    for mode in ("mask", "pick"):
                        row = errs.setdefault((mode, key), {})
                        row.setdefault("magnitude", []).append(err(base))
                        for label, h in hs.items():
                            row.setdefault(label, []).append(err(_obs(view, x, h, base, count, mode)))
                del case
                keras.backend.clear_session()
    print(f"\nsparsity {sparsity}: the inputs' measured correlation (training set), means over seeds")
    print("| model | layer | sparsity | same channel, neighbouring positions | same position, two channels | "
          "kernel's neighbouring taps |\n|---|---|---|---|---|---|")
    for (arch, layer), f in facts.items():
        m = np.nanmean(np.array(f, float), axis=0)
        print(f"| `{arch}` | {layer} | {m[3]:.2f} | " + " | ".join("–" if np.isnan(v) else f"{v:+.3f}" for v in m[:3])
              + " |")
    for mode in ("mask", "pick"):
        print(f"\n{'the default mask, reconstructed' if mode == 'mask' else 'the mask chosen by OBS saliency'}: "
              "relative output error under the measured covariance, means over seeds")
        print("| model | layer | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 2) + "|")
        for (m_, key), row in errs.items():
            if m_ == mode:
                print(f"| `{key[0]}` | {key[1]} | " + " | ".join(f"{statistics.fmean(row[c_]):.3f}" if c_ in row else "–"
                                                           for c_ in cols) + " |")


# ---- tables -------------------------------------------------------------------------------------

VARIANTS = ("default", "floor 2", "floor 4", "floor 8", "erk", "channel lamp", "size^-0.5", "size^-0.25",
            "energy^1", "energy^0.5", "scale cap 3", "scale cap 2", "iid max pooling", "L2 kept", "L1 kept")


def table(rows, archs) -> str:
    """Per group and variant: mean score loss / relative error per model, and the geometric mean
    over the models of the error against the default's."""
    c, text = fidelity.cells(rows), []
    for group in dict.fromkeys(r["group"] for r in rows if r["group"] != "float"):
        text += [f"\n{group}\n", "| recipe | " + " | ".join(f"`{a}`" for a in archs) + " | error / default |",
                 "|---" * (len(archs) + 2) + "|"]
        for label in dict.fromkeys(r["label"] for r in rows if r["group"] == group):
            ratios = [max(c[(group, label, a)].mean_err, 1e-12) / c[(group, "default", a)].mean_err for a in archs]
            text.append(f"| {label} | " + " | ".join(f"{c[(group, label, a)].mean_loss:+.2f} / "
                                                     f"{c[(group, label, a)].mean_err:.3f}" for a in archs)
                        + f" | {math.exp(statistics.fmean(map(math.log, ratios))):.2f} |")
    return "\n".join(text)


def comparison(rows, archs) -> str:
    """Per group and variant, per model: score loss per seed, and the variant against the default
    (mean loss difference and error ratio over seeds, with their seed-to-seed spreads)."""
    text = []
    for group in dict.fromkeys(r["group"] for r in rows if r["group"] != "float"):
        text += [f"\n{group}: loss per seed; against the default, loss difference (spread), error ratio (spread)\n",
                 "| recipe | " + " | ".join(f"`{a}`" for a in archs) + " |", "|---" * (len(archs) + 1) + "|"]
        c = fidelity.cells(rows)
        for label in dict.fromkeys(r["label"] for r in rows if r["group"] == group):
            d = fidelity.compare(rows, group, label, "default", archs)
            text.append(f"| {label} | " + " | ".join(
                " / ".join(f"{x:.2f}" for x in c[(group, label, a)].loss)
                + ("" if label == "default" else f": {d[a]['loss_diff']:+.2f} ({d[a]['loss_spread']:.2f}), "
                   f"x{math.exp(d[a]['log_ratio']):.2f} (x{math.exp(d[a]['log_spread']):.2f})") for a in archs) + " |")
    return "\n".join(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(models.ARCHITECTURES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsity", default="0.9,0.75")
    parser.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated")
    parser.add_argument("--oracle", action="store_true", help="the default against the true statistics")
    parser.add_argument("--compare", action="store_true",
                        help="also each variant against the default, seed by seed (fidelity.compare)")
    parser.add_argument("--diagnose", action="store_true",
                        help="estimated against measured statistics per corrected layer, and one measured at a time")
    parser.add_argument("--hessians", action="store_true",
                        help="the modelled input Hessian against the measured one, layer by layer")
    args = parser.parse_args(argv)
    archs, seeds = args.archs.split(","), range(args.seeds)
    if {"vgg_bn", "resnet_bn"} & set(archs):
        import bn_correction  # noqa: F401  (registers its BatchNorm architectures)
    if args.hessians:
        for sparsity in map(float, args.sparsity.split(",")):
            hessians(archs, seeds, sparsity)
        return
    if args.diagnose:
        for sparsity in map(float, args.sparsity.split(",")):
            diagnose(archs, seeds, sparsity)
        return
    if args.oracle:
        for sparsity in map(float, args.sparsity.split(",")):
            oracle(archs, seeds, sparsity)
        return
    candidates = [fidelity.Candidate(name, f"sparsity {s}", transform=variant(name, float(s)))
                  for s in args.sparsity.split(",") for name in args.variants.split(";")]
    rows = fidelity.run(archs, seeds, candidates, via="memory")
    print(table(rows, archs))
    if args.compare:
        print(comparison(rows, archs))


if __name__ == "__main__":
    main()
