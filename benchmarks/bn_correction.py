"""Data-free corrections from a model's own BatchNorm statistics, measured on BatchNorm CNNs (a
NumPy prototype of what ``Recipe(bn_correction=True)`` does; FIDELITY.md has the tables).

A pruned or quantized kernel W + dW shifts each output channel's mean by dW . E[x].  When x comes
from a BatchNormalization layer (through ReLU, pooling, flatten, dropout), E[x] per channel follows
from that BN's beta and gamma: its output is taken as N(beta, gamma^2), after ReLU
E = b Phi(b/|g|) + |g| phi(b/|g|) (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.2).  The shift is taken off the layer's bias, or
added to the following BN's moving_mean when the layer has none.

Variants (each on top of the default recipe without the package's correction):

- ``mean``: the mean correction above, max pooling taken as mean-preserving;
- ``mean, max-pool iid``: max pooling's mean as that of the max of its k window values taken as
  independent rectified Gaussians;
- ``var``: the variance sum_j W_j^2 Var(x_j) (independent inputs) restored: the following BN's
  moving_variance scaled, or a biased layer's kernel scaled per output channel;
- ``mean+var``: both (what the package does), also restricted to BN-followed or biased layers;
- ``folded``: pruning ranked by the BN-folded magnitude |w| |gamma| / sqrt(var + eps) of the
  following BN (LAMP over the folded tensors, the mask applied to the kernels);
- ``input rms``: pruning ranked by |w| sqrt(E[x^2]) with the input's moments from the BN before;
- combinations, and other allocations (uniform, min size 0 or 1024) before the correction.

Besides ``cnn_bn``, two more architectures with BatchNorm (``vgg_bn``: a VGG-style network of
bias-free Conv-BN-ReLU blocks; ``resnet_bn``: a functional residual network with Add), trained
and cached like the benchmark's own::

    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/bn_correction.py --archs cnn_bn,vgg_bn,resnet_bn \
        --groups "sparsity 0.9,sparsity 0.75,int2,int3"
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import fidelity  # noqa: E402
import models  # noqa: E402
import wqkernels  # noqa: E402


# ---- two more architectures with BatchNorm ------------------------------------------------------

def build_vgg_bn():
    """VGG-style with bias-free Conv-BN-ReLU blocks, max pooling, a Dense-BN-ReLU head."""
    import keras
    from keras import layers

    def block(filters, name):
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name),
                layers.BatchNormalization(name=f"{name}_bn"), layers.ReLU(name=f"{name}_relu")]

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        *block(32, "block1_conv1"), *block(32, "block1_conv2"),
        layers.MaxPooling2D(2, name="block1_pool"),
        *block(64, "block2_conv1"), *block(64, "block2_conv2"),
        layers.MaxPooling2D(2, name="block2_pool"),
        layers.Flatten(name="flatten"),
        layers.Dense(128, use_bias=False, name="fc1"),
        layers.BatchNormalization(name="fc1_bn"), layers.ReLU(name="fc1_relu"),
        layers.Dense(10, name="logits"),
    ], name="vgg_bn")


def build_resnet_bn():
    """A functional residual CNN: stem Conv-BN-ReLU, two residual blocks (Conv-BN-ReLU-Conv-BN,
    Add, ReLU; the second with a strided 1x1 projection), global average pooling, Dense."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, name, strides=1, relu=True):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input((8, 8, 1))
    x = conv_bn(inputs, 32, 3, "stem")
    y = conv_bn(x, 32, 3, "res1_conv1")
    y = conv_bn(y, 32, 3, "res1_conv2", relu=False)
    x = layers.ReLU(name="res1_relu")(layers.Add(name="res1_add")([x, y]))
    y = conv_bn(x, 64, 3, "res2_conv1", strides=2)
    y = conv_bn(y, 64, 3, "res2_conv2", relu=False)
    shortcut = conv_bn(x, 64, 1, "res2_proj", strides=2, relu=False)
    x = layers.ReLU(name="res2_relu")(layers.Add(name="res2_add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="resnet_bn")


EXTRA = {
    "vgg_bn": models.Architecture(build_vgg_bn, "digits", 30, 2e-3),
    "resnet_bn": models.Architecture(build_resnet_bn, "digits", 30, 2e-3),
}
models.ARCHITECTURES.update(EXTRA)


# ---- the model graph, from the config -----------------------------------------------------------

def graph(config: dict) -> dict:
    """{layer name: (class name, layer config, [names of the layers it reads])} of a Sequential or
    functional model config (Keras 3's keras_history, or Keras 2's nested inbound lists)."""
    inner = config.get("config", {})
    layers = inner.get("layers", [])
    out, previous = {}, None
    for entry in layers:
        cfg = entry.get("config", {})
        name = entry.get("name", cfg.get("name"))
        if "inbound_nodes" in entry:
            sources = []

            def walk(node):
                if isinstance(node, dict):
                    history = node.get("config", {}).get("keras_history") if node.get("class_name") == "__keras_tensor__" else None
                    if history:
                        sources.append(history[0])
                        return
                    for v in node.values():
                        walk(v)
                elif isinstance(node, list):
                    if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
                        sources.append(node[0])  # Keras 2: [name, node index, tensor index, kwargs]
                        return
                    for v in node:
                        walk(v)

            walk(entry["inbound_nodes"])
        else:  # Sequential
            sources = [] if previous is None else [previous]
        out[name] = (entry.get("class_name"), cfg, sources)
        previous = name
    return out


def consumers(g: dict) -> dict:
    out = {name: [] for name in g}
    for name, (_, _, sources) in g.items():
        for s in sources:
            out.setdefault(s, []).append(name)
    return out


# ---- the statistics -----------------------------------------------------------------------------

def _phi(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z):
    from math import erf
    return 0.5 * (1.0 + np.vectorize(erf)(z / math.sqrt(2.0)))


def relu_moments(mean, std):
    """E[relu(z)] and E[relu(z)^2] of z ~ N(mean, std^2) (std 0: the point mass)."""
    mean, std = np.asarray(mean, np.float64), np.abs(np.asarray(std, np.float64))
    safe = np.where(std > 0, std, 1.0)
    z = mean / safe
    m1 = np.where(std > 0, mean * _Phi(z) + safe * _phi(z), np.maximum(mean, 0))
    m2 = np.where(std > 0, (mean ** 2 + safe ** 2) * _Phi(z) + mean * safe * _phi(z), np.maximum(mean, 0) ** 2)
    return m1, m2


class Stats:
    """Per-channel input moments of layers, from the BN statistics of a model's graph."""

    def __init__(self, g: dict, weights):
        self.g, self.weights = g, weights
        self.memo = {}

    def of(self, name):
        """(mean, second moment, gaussian: (mu, std) or None) per channel of layer `name`'s
        output, or None when not known."""
        if name not in self.memo:
            self.memo[name] = self._of(name)
        return self.memo[name]

    def _of(self, name):
        cls, cfg, sources = self.g[name]
        single = self.of(sources[0]) if len(sources) == 1 else None
        act = cfg.get("activation", "linear")
        if cls == "BatchNormalization":
            if cfg.get("axis", -1) not in (-1, 3, [3], [-1]):
                return None
            w = self.weights(name)
            beta = w.get("beta", 0.0) if cfg.get("center", True) else 0.0
            gamma = w.get("gamma", 1.0) if cfg.get("scale", True) else 1.0
            mu, std = np.asarray(beta, np.float64), np.abs(np.asarray(gamma, np.float64))
            mu, std = np.broadcast_arrays(mu, std)
            return mu, mu ** 2 + std ** 2, (mu, std)
        if single is None:
            if cls == "Add":
                parts = [self.of(s) for s in sources]
                if any(p is None for p in parts):
                    return None
                m = sum(p[0] for p in parts)
                # independent parts: variances add
                var = sum(p[1] - p[0] ** 2 for p in parts)
                gauss = None
                if all(p[2] is not None for p in parts):
                    gauss = (m, np.sqrt(var))
                return m, var + m ** 2, gauss
            return None
        m1, m2, gauss = single
        if cls in ("ReLU",) or (cls == "Activation" and act == "relu"):
            if cls == "ReLU" and (cfg.get("max_value") is not None or cfg.get("negative_slope", 0) or cfg.get("threshold", 0)):
                return None
            if gauss is None:
                return None
            r1, r2 = relu_moments(*gauss)
            return r1, r2, None
        if cls in ("Dropout", "SpatialDropout2D", "GaussianDropout") or (cls == "Activation" and act == "linear"):
            return single
        if cls in ("Flatten",):
            return m1, m2, gauss  # tiled by the consumer (channels last)
        if cls in ("AveragePooling2D", "GlobalAveragePooling2D", "AveragePooling1D", "GlobalAveragePooling1D"):
            return m1, m2, gauss  # the mean exactly (zero padding aside); the second moment as an upper bound
        if cls in ("MaxPooling2D", "MaxPooling1D"):
            return m1, m2, None  # mean-preserving approximation (an underestimate)
        return None


def _rectified_max_mean(mu, std, k):
    out = np.empty_like(mu)
    for i, (a, s) in enumerate(zip(mu, std)):
        if s <= 0:
            out[i] = max(a, 0.0)
            continue
        x = np.linspace(0, max(a, 0) + 8 * s, 2001)
        cdf = _Phi((x - a) / s)
        out[i] = np.trapezoid(1 - cdf ** k, x)
    return out


# ---- the shift of a kernel change ---------------------------------------------------------------

def output_mean(cls: str, kernel: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """The mean of a linear layer's output channels for inputs of per-channel mean `mean` (zero
    padding at the borders ignored), None for a layer it does not know."""
    k = np.asarray(kernel, np.float64)
    if cls in ("Dense",) and k.ndim == 2:
        m = _tiled(mean, k.shape[0])
        return None if m is None else m @ k
    if cls in ("Conv1D", "Conv2D", "Conv3D") and k.ndim >= 3:
        if mean.size != k.shape[-2]:
            return None
        return np.tensordot(k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0), mean, axes=([0], [0]))
    if cls == "DepthwiseConv2D" and k.ndim == 4:
        if mean.size != k.shape[2]:
            return None
        return (k.sum(axis=(0, 1)) * mean[:, None]).reshape(-1)
    return None


def _tiled(mean, fan_in):
    if mean.size == fan_in:
        return mean
    if fan_in % mean.size:
        return None
    return np.tile(mean, fan_in // mean.size)  # channels last: the channel is the fastest index


def output_var(cls, kernel, var):
    """sum_j W_jo^2 Var(x_j) per output channel (independent inputs)."""
    return output_mean(cls, np.square(np.asarray(kernel, np.float64)), var)


# ---- the prototype ------------------------------------------------------------------------------

class Model:
    """A case's graph, its BN weights and where each layer's variables sit in the model."""

    def __init__(self, case: fidelity.Case, maxpool_iid=False):
        with zipfile.ZipFile(case.path) as z:
            self.g = graph(json.loads(z.read("config.json")))
        self.case = case
        self.after = consumers(self.g)
        self.trainable = {id(v): i for i, v in enumerate(case.model.trainable_variables)}
        self.non_trainable = {id(v): i for i, v in enumerate(case.model.non_trainable_variables)}
        self.layer_of = {t.path: t.layer for t in case.tensors}
        self.role_of = {t.path: t.role for t in case.tensors}
        self.stats = Stats(self.g, self.layer_weights)
        self.maxpool_iid = maxpool_iid

    def layer_weights(self, name):
        layer = self.case.model.get_layer(name)
        return {v.path.split("/")[-1]: np.asarray(v.numpy(), np.float64) for v in layer.weights}

    def variable(self, layer, attr):
        v = getattr(self.case.model.get_layer(layer), attr)
        if id(v) in self.trainable:
            return 0, self.trainable[id(v)]
        return 1, self.non_trainable[id(v)]

    def input_stats(self, layer):
        sources = self.g[layer][2]
        return self.stats.of(sources[0]) if len(sources) == 1 else None

    def following_bn(self, layer):
        cls, cfg, _ = self.g[layer]
        after = self.after.get(layer, [])
        if cfg.get("activation", "linear") != "linear" or len(after) != 1:
            return None
        return after[0] if self.g[after[0]][0] == "BatchNormalization" else None

    def corrections(self, old: dict, new: dict, mean=True, variance=False, where=("bias", "bn")):
        """({(layer, attribute): new value}, {path: new kernel}, [what was corrected]) restoring
        each changed kernel's output mean (and with `variance` its output variance, inputs taken
        as independent) where the input statistics are known."""
        out, kernels, corrected = {}, {}, []
        for path, w in old.items():
            layer = self.layer_of[path]
            if self.role_of[path] != "kernel":
                continue
            cls, cfg, _ = self.g[layer]
            st = self.input_stats(layer)
            if st is None:
                continue
            m1, m2, _ = st
            if self.maxpool_iid:
                m1 = self._pooled_mean(layer, m1)
            w1 = new[path]
            if output_mean(cls, w, m1) is None:
                continue
            var = np.maximum(m2 - m1 ** 2, 0)
            v0, v1 = output_var(cls, w, var), output_var(cls, w1, var)
            ratio = np.divide(v1, v0, out=np.ones_like(v0), where=(v0 > 0) & (v1 > 0))
            lw = self.layer_weights(layer)
            bn = self.following_bn(layer)
            if "bias" in lw and "bias" in where:
                if variance:
                    f = 1 / np.sqrt(ratio)
                    if cls == "DepthwiseConv2D":
                        f = f.reshape(w.shape[2], w.shape[3])
                    w1 = (w1 * f).astype(np.float32)
                    kernels[path] = w1
                if mean:
                    shift = output_mean(cls, w1, m1) - output_mean(cls, w, m1)
                    out[(layer, "bias")] = (lw["bias"] - shift).astype(np.float32)
                corrected.append(f"{layer} bias")
            elif "bias" not in lw and bn is not None and "bn" in where:
                bw = self.layer_weights(bn)
                if mean:
                    shift = output_mean(cls, w1, m1) - output_mean(cls, w, m1)
                    out[(bn, "moving_mean")] = (bw["moving_mean"] + shift).astype(np.float32)
                if variance:
                    eps = self.g[bn][1].get("epsilon", 1e-3)
                    out[(bn, "moving_variance")] = ((bw["moving_variance"] + eps) * ratio - eps).astype(np.float32)
                corrected.append(f"{bn}")
        return out, kernels, corrected

    def _pooled_mean(self, layer, m1):
        """The input mean with max pooling's mean as that of k independent rectified Gaussians."""
        src = self.g[layer][2][0]
        chain = []
        while True:
            cls, cfg, sources = self.g[src]
            if cls in ("Flatten", "Dropout"):
                src = sources[0]
                continue
            break
        cls, cfg, sources = self.g[src]
        if cls != "MaxPooling2D":
            return m1
        relu = sources[0]
        if self.g[relu][0] not in ("ReLU",):
            return m1
        gauss = self.stats.of(self.g[relu][2][0])[2]
        if gauss is None:
            return m1
        k = int(np.prod(cfg.get("pool_size", 2)))
        return _rectified_max_mean(gauss[0], gauss[1], k)

    def factors(self, path, w, fold_out=True, input_rms=False):
        """Per-weight importance factors of kernel `path` (broadcast to its shape) or None."""
        layer = self.layer_of[path]
        cls, cfg, _ = self.g[layer]
        f = np.ones(w.shape)
        used = False
        if fold_out and self.role_of[path] == "kernel":
            bn = self.following_bn(layer)
            if bn is not None and "bias" not in self.layer_weights(layer):
                bw = self.layer_weights(bn)
                eps = self.g[bn][1].get("epsilon", 1e-3)
                s = np.abs(bw.get("gamma", np.ones_like(bw["moving_variance"]))) / np.sqrt(bw["moving_variance"] + eps)
                if cls == "DepthwiseConv2D":
                    s = s.reshape(w.shape[2], w.shape[3])
                f = f * s  # last axis = output channels (depthwise: (in, mult))
                used = True
        if input_rms:
            st = self.input_stats(layer)
            if st is not None:
                rms = np.sqrt(st[1])
                if cls == "Dense":
                    r = _tiled(rms, w.shape[0])
                    if r is not None:
                        f = f * r[:, None]
                        used = True
                elif cls in ("Conv2D", "Conv1D", "Conv3D") and rms.size == w.shape[-2]:
                    f = f * rms[:, None]
                    used = True
                elif cls == "DepthwiseConv2D" and rms.size == w.shape[2]:
                    f = f * rms[:, None]
                    used = True
        return f if used else None


def prune_weighted(model: Model, weights: dict, recipe, fold_out, input_rms) -> dict:
    """Prune as `recipe` (global LAMP) does, but rank by |w| times the factors."""
    from wqkernels.allocation import count_fraction, prune_counts

    scored = {}
    for p, w in weights.items():
        f = model.factors(p, w, fold_out, input_rms)
        scored[p] = (w.astype(np.float64) * (1.0 if f is None else f)).astype(np.float32)
    counts = prune_counts(scored, recipe.sparsity, allocation=recipe.allocation, min_size=recipe.min_size)
    out = {}
    for p, w in weights.items():
        if counts[p]:
            mask = wqkernels.prune(scored[p], sparsity=count_fraction(counts[p], w.size)) != 0
            out[p] = np.where(mask, w, np.float32(0)).astype(np.float32)
        else:
            out[p] = w
    return out


def evaluate(case, model, kernels, extra):
    trainable, non_trainable = list(case.variables[0]), list(case.variables[1])
    for path, value in kernels.items():
        trainable[case.slots[path]] = np.asarray(value, dtype=np.float32)
    for (layer, attr), value in extra.items():
        which, i = model.variable(layer, attr)
        (trainable if which == 0 else non_trainable)[i] = value
    out = np.asarray(case._run(trainable, non_trainable, case.task.x_test), dtype=np.float64)
    return fidelity.metrics(case.task, out, case.reference)


VARIANTS = {
    # label: (fold_out, input_rms, corrections options or None, maxpool_iid)
    "default": (False, False, None, False),
    "mean": (False, False, dict(mean=True), False),
    "mean, max-pool iid": (False, False, dict(mean=True), True),
    "var": (False, False, dict(mean=False, variance=True), False),
    "mean+var": (False, False, dict(mean=True, variance=True), False),
    "mean+var, BN only": (False, False, dict(mean=True, variance=True, where=("bn",)), False),
    "mean+var, bias only": (False, False, dict(mean=True, variance=True, where=("bias",)), False),
    "var, BN only": (False, False, dict(mean=False, variance=True, where=("bn",)), False),
    "folded": (True, False, None, False),
    "input rms": (False, True, None, False),
    "folded + input rms": (True, True, None, False),
    "folded + input rms + mean+var": (True, True, dict(mean=True, variance=True), False),
    "folded + input rms + var": (True, True, dict(mean=False, variance=True), False),
    "uniform + mean+var": (False, False, dict(mean=True, variance=True), False, dict(allocation="uniform")),
    "min size 1024 + mean+var": (False, False, dict(mean=True, variance=True), False, dict(min_size=1024)),
    "min size 0 + mean+var": (False, False, dict(mean=True, variance=True), False, dict(min_size=0)),
}


def run_case(case, groups, variants):
    rows = []
    floats = {t.path: case.weights[t.path] for t in case.tensors}
    models_ = {False: Model(case, False), True: Model(case, True)}
    for group, base in groups.items():
        for label in variants:
            fold_out, input_rms, options, iid, *change = VARIANTS[label]
            model, recipe = models_[iid], base
            if change:
                if recipe.bits is not None:
                    continue
                recipe = wqkernels.Recipe(sparsity=recipe.sparsity, **change[0])
            if recipe.bits is not None and (fold_out or input_rms):
                continue
            if fold_out or input_rms:
                new = prune_weighted(model, floats, recipe, fold_out, input_rms)
            else:
                new = fidelity.replica(recipe)(floats, case.tensors, case.context)
            extra, corrected = {}, []
            if options is not None:
                extra, kernels, corrected = model.corrections(floats, new, **options)
                new = {**new, **kernels}
            m = evaluate(case, model, new, extra)
            rows.append({"arch": case.arch, "seed": case.seed, "group": group, "label": label,
                         "score": m["score"], "rel_err": m["rel_err"], "corrected": corrected})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", default="cnn_bn,vgg_bn,resnet_bn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=";".join(VARIANTS))
    parser.add_argument("--groups", default="sparsity 0.9,sparsity 0.75,int2,int3")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    import keras

    all_groups = {"sparsity 0.9": wqkernels.Recipe(sparsity=0.9), "sparsity 0.75": wqkernels.Recipe(sparsity=0.75),
                  "sparsity 0.5": wqkernels.Recipe(sparsity=0.5),
                  "int2": wqkernels.Recipe(bits=2), "int3": wqkernels.Recipe(bits=3), "int4": wqkernels.Recipe(bits=4),
                  "0.75 + int3": wqkernels.Recipe(sparsity=0.75, bits=3)}
    groups = {g: all_groups[g] for g in args.groups.split(",")}
    variants = args.variants.split(";")
    archs = args.archs.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="wqkernels-bn-") as workdir:
        for arch in archs:
            for seed in map(int, args.seeds.split(",")):
                path, _ = models.trained(arch, seed, log=sys.stderr)
                case = fidelity.Case(arch, seed, path, workdir)
                score = fidelity.metrics(case.task, case.reference, case.reference)["score"]
                rows.append({"arch": arch, "seed": seed, "group": "float", "label": "float", "score": score, "rel_err": 0.0})
                rows += run_case(case, groups, variants)
                print(f"{arch} seed {seed} done", file=sys.stderr, flush=True)
                del case
                keras.backend.clear_session()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f)
    print(tables(rows, archs, groups, variants))


def tables(rows, archs, groups, variants):
    floats = {(r["arch"], r["seed"]): r["score"] for r in rows if r["group"] == "float"}
    by = {}
    for r in rows:
        if r["group"] != "float":
            by.setdefault((r["group"], r["label"], r["arch"]), []).append(r)
    text = []
    for g in groups:
        text.append(f"\n{g}: score loss (points) / relative output error, mean of the seeds; "
                    "last column: geometric mean of the error over the models / the default's\n")
        text.append("| recipe | " + " | ".join(archs) + " | error / default |")
        text.append("|---" * (len(archs) + 2) + "|")
        for label in variants:
            if (g, label, archs[0]) not in by:
                continue
            cells, ratios = [], []
            for a in archs:
                rs = by[(g, label, a)]
                base = by[(g, "default", a)]
                loss = statistics.mean(floats[(a, r["seed"])] - r["score"] for r in rs)
                err = statistics.mean(r["rel_err"] for r in rs)
                ratios.append(err / statistics.mean(r["rel_err"] for r in base))
                cells.append(f"{loss:+.2f} / {err:.3f}")
            text.append(f"| {label} | " + " | ".join(cells) + f" | {math.exp(statistics.mean(map(math.log, ratios))):.2f} |")
        per_seed = [(a, label) for a in archs for label in variants if (g, label, a) in by]
        seeds = {a: " / ".join(f"{floats[(a, r['seed'])] - r['score']:.2f}" for r in by[(g, 'default', a)]) for a in archs}
        text.append("")
        for a in archs:
            if "bn" in a:
                for label in variants:
                    if (g, label, a) in by:
                        text.append(f"- {a} {label}: per seed " + " / ".join(
                            f"{floats[(a, r['seed'])] - r['score']:.2f}" for r in by[(g, label, a)]))
    return "\n".join(text)


if __name__ == "__main__":
    main()
