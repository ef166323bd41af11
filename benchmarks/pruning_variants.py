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
- ``iid max pooling``: the correction with max pooling's output moments those of the max of its
  window's values taken as independent rectified Gaussians (the package takes it as
  mean-preserving);
- ``L2 kept``, ``L1 kept``: each output channel's kept weights scaled to the channel's float
  norm (no BatchNorm correction);
- ``true statistics`` (``--oracle``): what the correction would reach with the statistics it
  estimates measured instead, on the training set: every BN's moving mean and variance re-estimated
  through the pruned model, and the biased layer fed by a BN (``dense``) scaled and shifted to its
  float output's measured mean and variance (data: a diagnostic, not a data-free recipe).

::

    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/pruning_variants.py --archs cnn_bn_8,cnn_bn,cnn_bn_32
    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/pruning_variants.py --oracle --archs cnn_bn_8,cnn_bn
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
        new = pruned(name, w, tensors, sparsity)
        cap = float(name.split()[-1]) if name.startswith("scale cap") else None
        with max_pooling_iid() if name == "iid max pooling" else contextlib.nullcontext():
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


@contextlib.contextmanager
def max_pooling_iid():
    """The layer graph's moments with max pooling of a ReLU of a Gaussian as the max of its
    window's values taken as independent."""
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
                return graph.Moments(*rectified_max_moments(pre.mean, np.sqrt(pre.var), k), False)
        return real(nodes, name, bn_weights, memo, depth)

    with mock.patch.object(graph, "_moments_of", patched):
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(models.ARCHITECTURES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsity", default="0.9,0.75")
    parser.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated")
    parser.add_argument("--oracle", action="store_true", help="the default against the true statistics")
    args = parser.parse_args(argv)
    archs, seeds = args.archs.split(","), range(args.seeds)
    if args.oracle:
        for sparsity in map(float, args.sparsity.split(",")):
            oracle(archs, seeds, sparsity)
        return
    candidates = [fidelity.Candidate(name, f"sparsity {s}", transform=variant(name, float(s)))
                  for s in args.sparsity.split(",") for name in args.variants.split(";")]
    print(table(fidelity.run(archs, seeds, candidates, via="memory"), archs))


if __name__ == "__main__":
    main()
