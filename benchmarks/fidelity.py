"""Fidelity benchmark: how close the outputs of compressed models stay to the float model's.

Trains the architectures of ``models.py`` (several seeds each, cached), then applies every recipe
of the grid to each trained model and compares the compressed model's outputs on the test set with
the float model's: the task score (accuracy, F1 of the edge map against the float model's map,
R² of the regression) and the relative error of the raw outputs (logits), which separates recipes
where the score cannot.  Weight error is never used.

A recipe is either a :class:`wqkernels.Recipe`, applied with ``wqkernels.rewrite`` to the saved
``.keras`` file exactly as users run it, or a function from the float weights (and the float model
and some training samples, for calibrated methods) to new weights, written into a copy of the
model's weights file.  Either way the model loads the resulting file with ``load_weights``.

Usage::

    python benchmarks/fidelity.py [--models cnn_bn,vgg,...] [--seeds 3] [--bits 2,3,4]
                                  [--groups quant,prune] [--out results.json] [--markdown]
    python benchmarks/fidelity.py --from results.json --markdown     # tables from saved results

``--quick``: one seed, bits 2..4, the CNN with BN and the VGG-style net.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import models  # noqa: E402
import wqkernels  # noqa: E402

BITS = tuple(range(2, 9))
SEEDS = 3
#: bits of one group's scale (float32) and zero point (8-bit) in packed storage
SCALE_BITS = 40


# ---- recipes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tensor:
    """A prunable weight of the model file and how the file layer lays it out."""

    path: str
    layer: str
    layer_class: str | None
    role: str
    shape: tuple
    channel_axis: int
    reduced: tuple | None = None  # an EinsumDense kernel's summed axes (``Entry.reduced``)


@dataclass
class Context:
    """What a weights function may use besides the weights: the float model (its float weights
    loaded) and a batch of training inputs, for calibrated methods."""

    model: object
    samples: np.ndarray
    path: str | None = None  # the model's .keras file


#: a weights function: (float weights by path, the prunable tensors, context) -> new weights by path
Transform = Callable[[dict, list, Context], dict]


@dataclass(frozen=True)
class Candidate:
    """One recipe of the benchmark.  `group` names the recipes compared with each other (a bit
    width, a sparsity); `recipe` is applied with ``wqkernels.rewrite``, `transform` to the
    weights."""

    label: str
    group: str
    recipe: wqkernels.Recipe | None = None
    transform: Transform | None = None
    tags: tuple = ()

    def __post_init__(self):
        if (self.recipe is None) == (self.transform is None):
            raise ValueError("a Candidate has a recipe or a transform")

    def apply(self, weights: dict, tensors: list, context: Context) -> dict:
        """The new prunable tensors by path, and any other weight a recipe changes (biases and
        BatchNorm statistics of the BN correction)."""
        new = (replica(self.recipe) if self.transform is None else self.transform)(weights, tensors, context)
        return {**new, **{t.path: new.get(t.path, weights[t.path]) for t in tensors}}


def quantization_label(symmetric: bool, method: str, granularity: str) -> str:
    return f"{'sym' if symmetric else 'asym'} {method} {granularity}"


def quantization_grid(bits: int) -> list[Candidate]:
    """Every data-free quantization recipe at `bits`: the CLI default and the same without its
    extra bits for narrow kernels, then symmetric/asymmetric x min/max, mse, percentile x per
    channel, blocks of 32 and 128, per tensor, rounded to nearest (every kernel at `bits`)."""
    group = f"int{bits}"
    out = [Candidate("default", group, wqkernels.Recipe(bits=bits), tags=("default",)),
           Candidate(NO_NARROW, group, wqkernels.Recipe(bits=bits, narrow_bits=0)),
           Candidate("default, rounding to nearest", group, wqkernels.Recipe(bits=bits, rounding="nearest",
                                                                             narrow_bits=0))]
    for symmetric in (True, False):
        for method in ("minmax", "mse", "percentile"):
            for granularity in ("channel", "block:32", "block:128", "tensor"):
                out.append(Candidate(quantization_label(symmetric, method, granularity), group,
                                     wqkernels.Recipe(bits=bits, symmetric=symmetric, method=method,
                                                      granularity=granularity, rounding="nearest", narrow_bits=0)))
    return out + [dataclasses.replace(c, group=group) for c in improvements(bits)]


def improvements(bits: int) -> list[Candidate]:
    """Data-free improvements measured against the grid: sum-preserving rounding
    (``rounding="sum"`` of :func:`wqkernels.quantize`) on the grid's main recipes, and on all
    kernels but the recurrent ones (``default_rounding`` of each role); blocks of 32 with the
    default's extra bits for narrow kernels (``Recipe.narrow_bits``)."""
    out = []
    for symmetric in (True, False):
        for method in ("minmax", "mse"):
            for granularity in ("channel", "block:32"):
                out.append(Candidate(quantization_label(symmetric, method, granularity) + " sum", f"int{bits}",
                                     wqkernels.Recipe(bits=bits, symmetric=symmetric, method=method,
                                                      granularity=granularity, rounding="sum", narrow_bits=0)))
    for granularity in ("channel", "block:32"):
        out.append(Candidate(quantization_label(False, "minmax", granularity) + " sum, recurrent nearest",
                             f"int{bits}", wqkernels.Recipe(bits=bits, symmetric=False, method="minmax",
                                                            granularity=granularity, narrow_bits=0)))
    out.append(Candidate(quantization_label(False, "minmax", "block:32") + " sum, narrow kernels +2 bits",
                         f"int{bits}", wqkernels.Recipe(bits=bits, granularity="block:32")))
    return out


BASELINE = quantization_label(False, "minmax", "channel")
#: the default without its extra bits for narrow kernels (``Recipe(narrow_bits=0)``)
NO_NARROW = "default, narrow kernels at the same bits"


def pruning_grid() -> list[Candidate]:
    """Magnitude pruning at 50 / 75 / 90 % (global LAMP and uniform allocation) and 2:4."""
    out = []
    for sparsity in (0.5, 0.75, 0.9):
        group = f"sparsity {sparsity:g}"
        out.append(Candidate("default (global)", group, wqkernels.Recipe(sparsity=sparsity), tags=("default",)))
        out.append(Candidate("no BN correction", group, wqkernels.Recipe(sparsity=sparsity, bn_correction=False)))
        out.append(Candidate("uniform", group, wqkernels.Recipe(sparsity=sparsity, allocation="uniform")))
    out.append(Candidate("default (min size 1024)", "2:4", wqkernels.Recipe(sparsity="2:4"), tags=("default",)))
    out.append(Candidate("default, no BN correction", "2:4", wqkernels.Recipe(sparsity="2:4", bn_correction=False)))
    out.append(Candidate("every kernel (min size 0)", "2:4", wqkernels.Recipe(sparsity="2:4", min_size=0)))
    for c in list(out):
        if c.recipe.allocation == "global" and c.recipe.bn_correction:
            out.append(Candidate(c.label + " sum-preserving", c.group, transform=_sum_preserving_pruning(c.recipe)))
    for sparsity in (0.5, 0.75, 0.9):
        for min_size in (256, 1024):
            out.append(Candidate(f"raw global magnitude (min size {min_size})", f"sparsity {sparsity:g}",
                                 transform=_magnitude_pruning(sparsity, min_size)))
    return out


def _magnitude_pruning(sparsity: float, min_size: int) -> Transform:
    """One |w| threshold across the tensors of at least `min_size` weights (ties: the earlier
    tensor, then the lower index), floor(sparsity * all weights) zeros in all."""

    def transform(weights, tensors, context):
        arrays = {t.path: np.asarray(weights[t.path], np.float32) for t in tensors}
        eligible = [p for p, x in arrays.items() if x.size >= min_size]
        total = sum(x.size for x in arrays.values())
        count = min(math.floor(sparsity * total), sum(arrays[p].size for p in eligible))
        scores = np.concatenate([np.abs(arrays[p]).ravel() for p in eligible])
        mask = np.zeros(scores.size, bool)
        mask[np.argsort(scores, kind="stable")[:count]] = True
        out, start = {}, 0
        for p in eligible:
            x = arrays[p]
            out[p] = np.where(mask[start:start + x.size].reshape(x.shape), np.float32(0), x)
            start += x.size
        return out

    return transform


def _sum_preserving_pruning(recipe: wqkernels.Recipe) -> Transform:
    """Prune as `recipe` does, then give each output channel's kept weights an equal share of the
    sum its pruned weights had, so that the channel keeps the float sum (a NumPy prototype; without
    the BN correction)."""
    prune = replica(dataclasses.replace(recipe, bn_correction=False))

    def transform(weights, tensors, context):
        pruned = prune(weights, tensors, context)
        out = {}
        for t in tensors:
            w, p = weights[t.path].astype(np.float64), pruned[t.path]
            axes = tuple(i for i in range(w.ndim) if i != t.channel_axis)
            kept = p != 0
            removed = np.sum(np.where(kept, 0.0, w), axis=axes, keepdims=True)
            count = np.sum(kept, axis=axes, keepdims=True)
            share = np.divide(removed, count, out=np.zeros_like(removed), where=count > 0)
            out[t.path] = np.where(kept, p + share, 0.0).astype(np.float32)
        return out

    return transform


def grid(bits=BITS, groups=("quant", "prune")) -> list[Candidate]:
    """The recipes of `groups`: "quant" (quantization_grid of each of `bits`), "prune"
    (pruning_grid), "variants" (the rounding variants of ``rounding_variants.py``)."""
    out = []
    if "quant" in groups:
        for b in bits:
            out += quantization_grid(b)
    if "variants" in groups:
        import rounding_variants

        for b in bits:
            out += rounding_variants.variants(b)
    if "prune" in groups:
        out += pruning_grid()
    return out


# ---- applying recipes to one trained model ------------------------------------------------------

class Case:
    """One trained model: its file, the loaded model, its float outputs on the test set.

    Compressed weights go straight into the model's variables (which variable holds which dataset
    of the file is found once, by loading a file of marker values); the model runs as one jitted
    function of its variables.
    """

    def __init__(self, arch: str, seed: int, path: str, workdir: str):
        import keras

        self.arch, self.seed, self.workdir = arch, seed, workdir
        self.task = models.task(models.ARCHITECTURES[arch].task)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = keras.models.load_model(path, compile=False)
        self.path = os.path.join(workdir, f"{arch}-s{seed}.keras")  # without the optimizer state
        self.model.save(self.path)
        self.weights = wqkernels.load_weights(self.path)
        self.tensors = _tensors(self.path)
        self.slots = self._find_variables()
        self.variables = [v.value for v in self.model.trainable_variables], \
            [v.value for v in self.model.non_trainable_variables]
        self._run = _compiled(self.model)
        self.reference = self.predict({})
        self.context = Context(self.model, self.task.x_train[:256], self.path)

    def _find_variables(self) -> dict:
        """{path of a float weight of the file: (0 trainable or 1 not, index in those variables)}."""
        import h5py

        marked = os.path.join(self.workdir, "marked.weights.h5")
        with zipfile.ZipFile(self.path) as z, open(marked, "wb") as f:
            f.write(z.read("model.weights.h5"))
        paths = [p for p, w in self.weights.items() if w.dtype.kind == "f" and w.size and not p.startswith("optimizer")]
        shapes = {p: self.weights[p].shape for p in paths}
        with h5py.File(marked, "r+") as f:
            for i, p in enumerate(paths):
                f[p][...] = np.float32(i + 1)
        self.model.load_weights(marked)
        found = {}
        for kind, variables in enumerate((self.model.trainable_variables, self.model.non_trainable_variables)):
            for j, v in enumerate(variables):
                value = np.asarray(v.numpy())
                if value.size and np.all(value == value.flat[0]) and float(value.flat[0]).is_integer():
                    i = int(value.flat[0]) - 1
                    if 0 <= i < len(paths) and shapes[paths[i]] == value.shape:
                        found[paths[i]] = (kind, j)
        self.model.load_weights(self.path)
        missing = [t.path for t in self.tensors if t.path not in found]
        if missing:
            raise RuntimeError(f"{self.arch}: no variable found for {missing}")
        return found

    def predict(self, kernels: dict) -> np.ndarray:
        """The test outputs with the weights of `kernels` (by path) replacing the float ones."""
        variables = list(self.variables[0]), list(self.variables[1])
        for path, value in kernels.items():
            kind, j = self.slots[path]
            variables[kind][j] = np.asarray(value, dtype=np.float32)
        return np.asarray(self._run(*variables, self.task.x_test), dtype=np.float64)

    def compress(self, candidate: Candidate, via: str = "memory") -> dict:
        """The prunable tensors after `candidate`: computed in memory as the file layer does, or
        (`via` "rewrite", or "check" for the default recipes) also by ``wqkernels.rewrite`` of the
        ``.keras`` file, which must give the same bits."""
        floats = {t.path: self.weights[t.path] for t in self.tensors}
        new = candidate.apply(floats, self.tensors, self.context)
        if candidate.recipe is not None and (via == "rewrite" or (via == "check" and "default" in candidate.tags)):
            dst = os.path.join(self.workdir, "rewritten.keras")
            wqkernels.rewrite(self.path, dst, candidate.recipe)
            written = wqkernels.load_weights(dst)
            for path in new:
                if not np.array_equal(written[path], new[path]):
                    raise AssertionError(f"{self.arch} {candidate.group} {candidate.label}: {path} differs "
                                         "between wqkernels.rewrite and the benchmark's replica")
        return new

    def outputs(self, candidate: Candidate, via: str = "memory") -> tuple[np.ndarray, dict]:
        """The test outputs of the model compressed by `candidate`, and facts about the weights."""
        new = self.compress(candidate, via)
        out = self.predict(new)
        kernels = [new[t.path] for t in self.tensors]
        total = sum(k.size for k in kernels)
        facts = {"zeros": sum(int(np.count_nonzero(k == 0)) for k in kernels) / total}
        if candidate.recipe is not None and candidate.recipe.bits is not None:
            facts["bits"] = _stored_bits(self.tensors, candidate.recipe)
        return out, facts


def _compiled(model):
    """model(x) as a jitted function of (trainable values, non-trainable values, x)."""
    import jax

    @jax.jit
    def run(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    return run


def replica(recipe: wqkernels.Recipe) -> Transform:
    """What ``wqkernels.rewrite`` does to the prunable tensors under `recipe` (pruning, then
    quantization), with the package's public functions and the file layer's layouts."""
    from wqkernels.allocation import count_fraction, default_min_size, prune_counts

    def transform(weights, tensors, context):
        out = {t.path: np.ascontiguousarray(weights[t.path], dtype=np.float32) for t in tensors}
        if recipe.n_m is not None:
            least = default_min_size("n:m") if recipe.min_size is None else recipe.min_size
            for t in tensors:
                if math.prod(t.shape) >= least:
                    view, axis = block_view(t)
                    out[t.path] = wqkernels.prune_n_m(out[t.path].reshape(view), n=recipe.n_m[0], m=recipe.n_m[1],
                                                      axis=axis).reshape(t.shape)
        elif recipe.prunes:
            counts = prune_counts(out, recipe.sparsity, allocation=recipe.allocation, min_size=recipe.min_size)
            out = {p: wqkernels.prune(x, sparsity=count_fraction(counts[p], x.size)) if counts[p] else x
                   for p, x in out.items()}
        if recipe.prunes and recipe.bn_correction and context.path is not None:
            out.update(bn_corrections(context.path, recipe, counts if recipe.n_m is None else {}))
        if recipe.bits is not None:
            for t in tensors:
                if recipe.min_size is not None and math.prod(t.shape) < recipe.min_size:
                    continue
                view, options = layout(recipe, t)
                bits = recipe.bits_for(t)
                out[t.path] = wqkernels.fake_quantize(out[t.path].reshape(view), bits, method=recipe.method_for(bits),
                                                      **options).reshape(t.shape)
        return out

    return transform


def bn_corrections(path: str, recipe: wqkernels.Recipe, counts: dict) -> dict:
    """The BatchNorm correction of a pruning recipe (``Recipe.bn_correction``), as the file layer
    computes it: {path: new values} of the scaled kernels, biases and BN statistics."""
    from wqkernels.files.buffers import Buffers
    from wqkernels.files.graph import corrections
    from wqkernels.files.source import Source

    with Source(path) as source:
        fixes, _ = corrections(source, recipe, counts, [e for e in source.entries if recipe.selects(e)], Buffers())
        return {p: np.asarray(v, dtype=np.float32) for p, v in fixes.items()}


def block_view(tensor: Tensor) -> tuple[tuple, int]:
    from wqkernels.files.roles import block_view as view

    return view(tensor.shape, tensor.layer_class, tensor.role, tensor.reduced)


def _tensors(path: str) -> list[Tensor]:
    """The prunable weights of a model file, with the file layer's channel axes."""
    from wqkernels.files.roles import channel_axis
    from wqkernels.files.source import Source

    with Source(path) as source:
        return [Tensor(e.path, e.layer, e.layer_class, e.role, tuple(e.shape),
                       channel_axis(e.layer_class, e.role, len(e.shape)), e.reduced)
                for e in source.entries if e.prunable]


def layout(recipe: wqkernels.Recipe, tensor: Tensor) -> tuple[tuple, dict]:
    """(shape to quantize, quantize options) of `tensor` under `recipe`, as the file layer has it."""
    return recipe.layout_for(tensor)


def _stored_bits(tensors: list[Tensor], recipe: wqkernels.Recipe) -> float:
    """Bits per prunable weight in packed storage: the codes plus each group's scale and zero point."""
    from wqkernels._schemes import groups

    total = bits = 0
    for t in tensors:
        view, options = layout(recipe, t)
        axis = options.get("axis")
        g = groups(view, None if axis is None else axis % len(view), options.get("block_size"))
        size = math.prod(t.shape)
        total += size
        bits += recipe.bits_for(t) * size + (SCALE_BITS if not recipe.symmetric else 32) * g.count
    return bits / total


# ---- metrics ------------------------------------------------------------------------------------

def metrics(task: models.Task, out: np.ndarray, reference: np.ndarray) -> dict:
    """Score (in points) and relative output error of `out` against the float model's `reference`.

    classification: accuracy (%), predictions changed against the float model, relative error of
    the logits centred per sample (softmax ignores a common shift); map: F1 (%) of the thresholded
    map against the float model's, PSNR (dB) of the sigmoid maps; regression: R² (in points) and
    the error relative to the spread of the float model's outputs.
    """
    if task.kind == "classification":
        centred = out - out.mean(axis=-1, keepdims=True)
        ref = reference - reference.mean(axis=-1, keepdims=True)
        pred = out.argmax(axis=-1)
        return {"score": 100.0 * float(np.mean(pred == task.y_test)),
                "flips": int(np.count_nonzero(pred != reference.argmax(axis=-1))),
                "rel_err": float(np.linalg.norm(centred - ref) / np.linalg.norm(ref))}
    if task.kind == "map":
        p, r = out > 0, reference > 0
        f1 = 2.0 * np.count_nonzero(p & r) / max(np.count_nonzero(p) + np.count_nonzero(r), 1)
        mse = float(np.mean((_sigmoid(out) - _sigmoid(reference)) ** 2))
        return {"score": 100.0 * f1, "psnr": 10 * math.log10(1 / mse) if mse else math.inf,
                "rel_err": float(np.linalg.norm(out - reference) / np.linalg.norm(reference))}
    r2 = 1.0 - float(np.mean((out - task.y_test) ** 2) / np.var(task.y_test))
    return {"score": 100.0 * r2,
            "rel_err": float(np.linalg.norm(out - reference) / np.linalg.norm(reference - reference.mean()))}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---- the benchmark ------------------------------------------------------------------------------

def run(archs, seeds, candidates, cache=models.DEFAULT_CACHE, via="check", log=sys.stderr) -> list[dict]:
    """Train (or load from `cache`), compress and evaluate; one row per (arch, seed, candidate).

    `via`: "memory" computes every recipe as the file layer does, "check" also rewrites the file
    for the CLI defaults and checks the same bits came out, "rewrite" does that for every recipe.
    """
    import keras

    rows = []
    with tempfile.TemporaryDirectory(prefix="wqkernels-fidelity-") as workdir:
        for arch in archs:
            for seed in seeds:
                path, seconds = models.trained(arch, seed, cache, log=log)
                case = Case(arch, seed, path, workdir)
                score = metrics(case.task, case.reference, case.reference)["score"]
                rows.append({"arch": arch, "seed": seed, "group": "float", "label": "float", "score": score,
                             "rel_err": 0.0, "train_seconds": seconds,
                             "params": int(case.model.count_params()),
                             "kernels": [[t.layer, t.layer_class, t.role, list(t.shape)] for t in case.tensors]})
                start = time.perf_counter()
                for c in candidates:
                    out, facts = case.outputs(c, via)
                    rows.append({"arch": arch, "seed": seed, "group": c.group, "label": c.label,
                                 "tags": list(c.tags), **metrics(case.task, out, case.reference), **facts})
                print(f"{arch} seed {seed}: float score {score:.2f}, {len(candidates)} recipes in "
                      f"{time.perf_counter() - start:.0f} s", file=log, flush=True)
                del case
                keras.backend.clear_session()
    return rows


# ---- analysis -----------------------------------------------------------------------------------

def _by(rows, *keys):
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


@dataclass
class Cell:
    """One recipe on one architecture, over the seeds: score loss (points) and relative error."""

    loss: list = field(default_factory=list)
    rel_err: list = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        return statistics.fmean(self.loss)

    @property
    def mean_err(self) -> float:
        return statistics.fmean(self.rel_err)


def cells(rows) -> dict:
    """{(group, label, arch): Cell} with seeds paired against each seed's float model."""
    floats = {(r["arch"], r["seed"]): r["score"] for r in rows if r["group"] == "float"}
    out = {}
    for r in rows:
        if r["group"] == "float":
            continue
        cell = out.setdefault((r["group"], r["label"], r["arch"]), Cell())
        cell.loss.append(floats[(r["arch"], r["seed"])] - r["score"])
        cell.rel_err.append(r["rel_err"])
    return out


def paired_log_ratio(rows, group, label, other, arch) -> list:
    """Per seed: log(rel_err of label / rel_err of other) on arch."""
    err = {(r["label"], r["seed"]): r["rel_err"] for r in rows if r["group"] == group and r["arch"] == arch}
    seeds = sorted({s for (lab, s) in err if lab == label} & {s for (lab, s) in err if lab == other})
    return [math.log(max(err[(label, s)], 1e-12) / max(err[(other, s)], 1e-12)) for s in seeds]


def compare(rows, group, label, other, archs) -> dict:
    """`label` against `other` in `group`, per architecture: the mean log error ratio over seeds,
    its seed-to-seed spread (standard deviation), the mean score difference and its spread."""
    c = cells(rows)
    out = {}
    for arch in archs:
        ratios = paired_log_ratio(rows, group, label, other, arch)
        a, b = c[(group, label, arch)], c[(group, other, arch)]
        diffs = [x - y for x, y in zip(a.loss, b.loss)]
        out[arch] = {"log_ratio": statistics.fmean(ratios),
                     "log_spread": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
                     "loss_diff": statistics.fmean(diffs),
                     "loss_spread": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}
    return out


def ranking(rows, group, archs) -> list[tuple[str, float]]:
    """Labels of `group` by the geometric mean over architectures of their error relative to
    the baseline (asymmetric min/max per channel), best first."""
    labels = sorted({r["label"] for r in rows if r["group"] == group})
    if BASELINE not in labels:
        return []
    scored = []
    for label in labels:
        ratios = [statistics.fmean(paired_log_ratio(rows, group, label, BASELINE, a)) for a in archs]
        scored.append((label, math.exp(statistics.fmean(ratios))))
    return sorted(scored, key=lambda t: t[1])


def group_table(rows, group, archs) -> str:
    """Markdown: per recipe of `group`, per architecture the mean score loss and relative error."""
    c = cells(rows)
    labels = [lab for lab, _ in ranking(rows, group, archs)] or sorted({r["label"] for r in rows
                                                                         if r["group"] == group})
    order = {lab: i for i, lab in enumerate(labels)}
    geo = dict(ranking(rows, group, archs))
    head = ["recipe"] + archs + (["error vs baseline"] if geo else []) + ["bits/weight packed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    bits = {r["label"]: r.get("bits") for r in rows if r["group"] == group}
    for label in sorted(labels, key=lambda lab: order[lab]):
        cells_ = [f"**{label}**" if label in ("default", BASELINE) else label]
        for arch in archs:
            cell = c.get((group, label, arch))
            cells_.append("" if cell is None else f"{cell.mean_loss:+.2f} / {cell.mean_err:.3f}")
        if geo:
            cells_.append(f"{geo[label]:.2f}")
        cells_.append("" if bits.get(label) is None else f"{bits[label]:.2f}")
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def summary_table(rows, archs, labels) -> str:
    """Markdown: per group (bit width, sparsity), the given recipes' score loss / relative error
    per architecture (means over seeds)."""
    c = cells(rows)
    head = ["group", "recipe"] + archs
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = [g for g in dict.fromkeys(r["group"] for r in rows) if g != "float"]
    for group in groups:
        for label in labels:
            if (group, label, archs[0]) not in c:
                continue
            line = [group, label] + [f"{c[(group, label, a)].mean_loss:+.2f} / {c[(group, label, a)].mean_err:.3f}"
                                     for a in archs]
            lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def verdict(rows, group, label, other, archs) -> dict:
    """Per architecture, whether `label` is worse than `other` beyond the seed-to-seed noise: its
    mean log error ratio exceeds the ratios' spread over seeds, or its mean extra score loss
    exceeds that loss difference's spread (and one test sample).  Returns {arch: (worse, text)}."""
    out = {}
    task_sizes = {a: len(models.task(models.ARCHITECTURES[a].task).y_test) for a in archs}
    for arch, d in compare(rows, group, label, other, archs).items():
        sample = 100.0 / task_sizes[arch]
        worse_err = d["log_ratio"] > max(d["log_spread"], 0.0) and d["log_ratio"] > 0.05
        worse_loss = d["loss_diff"] > max(d["loss_spread"], sample) * 1.01
        text = (f"error x{math.exp(d['log_ratio']):.2f} (spread x{math.exp(d['log_spread']):.2f}), "
                f"loss {d['loss_diff']:+.2f} (spread {d['loss_spread']:.2f})")
        out[arch] = (worse_err or worse_loss, text)
    return out


def models_table(rows, archs) -> str:
    floats = _by([r for r in rows if r["group"] == "float"], "arch")
    head = ["model", "task", "parameters", "prunable kernels", "float score per seed", "training s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arch in archs:
        rs = sorted(floats[(arch,)], key=lambda r: r["seed"])
        kernels = ", ".join(f"{k[0]} {'x'.join(map(str, k[3]))}" for k in rs[0]["kernels"])
        secs = [r["train_seconds"] for r in rs if r.get("train_seconds")]
        lines.append(f"| `{arch}` | {models.ARCHITECTURES[arch].task} | {rs[0]['params']:,} | {kernels} | "
                     f"{' / '.join(format(r['score'], '.2f') for r in rs)} | "
                     f"{'/'.join(f'{s:.0f}' for s in secs) if secs else 'cached'} |")
    return "\n".join(lines)


#: the recipes of the summary: the default (and without its narrow kernels' extra bits), the
#: baseline, blocks of 32, the former default
SUMMARY = ("default", NO_NARROW, "default, rounding to nearest", BASELINE,
           "asym minmax block:32", "asym minmax block:32 sum", "asym minmax block:32 sum, narrow kernels +2 bits",
           "sym mse channel")


def verdicts(rows, archs) -> str:
    """Markdown: per bit width, where the default is worse than the baseline, blocks of 32 or the
    default without its extra bits for narrow kernels beyond the seed-to-seed noise (see
    :func:`verdict`)."""
    lines = []
    groups = [g for g in dict.fromkeys(r["group"] for r in rows) if g.startswith("int")]
    for group in groups:
        present = {r["label"] for r in rows if r["group"] == group}
        for other in [o for o in (BASELINE, "asym minmax block:32", NO_NARROW) if o in present]:
            worse = {a: t for a, (w, t) in verdict(rows, group, "default", other, archs).items() if w}
            lines.append(f"- {group}, default against {other}: "
                         + ("not worse beyond noise on any model" if not worse else
                            "worse on " + "; ".join(f"{a} ({t})" for a, t in worse.items())))
    return "\n".join(lines)


def report(rows, archs) -> str:
    groups = []
    for r in rows:
        if r["group"] != "float" and r["group"] not in groups:
            groups.append(r["group"])
    parts = [models_table(rows, archs), "", "## Summary", "",
             "Score loss in points / relative output error, means over seeds.", "",
             summary_table(rows, archs, SUMMARY), "", verdicts(rows, archs), ""]
    for group in groups:
        parts += [f"### {group}", "", group_table(rows, group, archs), ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.ARCHITECTURES),
                        help=f"comma-separated, of {', '.join(models.ARCHITECTURES)}")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--bits", default=",".join(map(str, BITS)))
    parser.add_argument("--groups", default="quant,prune", help="quant, prune or both")
    parser.add_argument("--cache", default=models.DEFAULT_CACHE, help="where trained models are kept")
    parser.add_argument("--out", help="write the rows as JSON")
    parser.add_argument("--from", dest="source", help="read rows from this JSON instead of running")
    parser.add_argument("--quick", action="store_true", help="one seed, bits 2..4, cnn_bn and vgg")
    parser.add_argument("--summary", action="store_true", help="only the recipes of the summary table")
    parser.add_argument("--via", choices=("memory", "check", "rewrite"), default="check",
                        help="compute recipes in memory as the file layer does; check: also rewrite "
                             "the file for the CLI defaults and compare (default); rewrite: for all")
    args = parser.parse_args(argv)
    archs = args.models.split(",")
    unknown = [a for a in archs if a not in models.ARCHITECTURES]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(models.ARCHITECTURES)}")
    if args.source:
        with open(args.source) as f:
            rows = json.load(f)
        present = {r["arch"] for r in rows}
        archs = [a for a in archs if a in present]
    else:
        bits = [int(b) for b in args.bits.split(",")]
        seeds = range(args.seeds)
        if args.quick:
            archs, seeds, bits = ["cnn_bn", "vgg"], range(1), [2, 3, 4]
        start = time.perf_counter()
        candidates = grid(bits, args.groups.split(","))
        if args.summary:
            candidates = [c for c in candidates if c.label in SUMMARY or c.group.startswith(("sparsity", "2:4"))]
        rows = run(archs, seeds, candidates, args.cache, args.via)
        print(f"{len(rows)} rows in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f)
    print(report(rows, archs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
