"""Fidelity benchmark: test accuracy of small trained Keras models after each compression recipe.

Trains the models of ``models.py`` on scikit-learn's digits (Keras 3, JAX backend, fixed seeds),
saves each as a legacy full-model ``.h5``, rewrites it with every recipe of RECIPES through the
``wqkernels rewrite`` command, loads the result with ``keras.models.load_model`` and prints its
test accuracy next to the float model's, as a markdown table, with the accuracy targets.

Usage::

    python benchmarks/fidelity.py [--quick] [--markdown] [--backend auto|cli|memory]
                                  [--models cnn,cnn_wide,mlp] [--seeds 3]

``--backend memory`` applies the same recipes to the weights in memory with the package's
functions (``prune_model``, ``prune_n_m``, ``fake_quantize`` with the CLI's defaults) instead of
going through files; ``auto`` (the default) uses the CLI when the package has ``rewrite``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import models  # noqa: E402

#: (label, CLI arguments of ``wqkernels rewrite``, accuracy target in points below float or None)
RECIPES = [
    ("int8 per-channel", ["--bits", "8"], 0.3),
    ("int4 per-channel", ["--bits", "4"], 0.3),
    ("int3 per-channel", ["--bits", "3"], 1.0),
    ("int2 per-channel", ["--bits", "2"], 15.0),
    ("int4 block 32", ["--bits", "4", "--granularity", "block:32"], None),
    ("sparsity 0.5", ["--sparsity", "0.5"], 0.5),
    ("sparsity 0.75", ["--sparsity", "0.75"], 1.0),
    ("sparsity 0.9", ["--sparsity", "0.9"], 4.0),
    ("sparsity 0.5 uniform", ["--sparsity", "0.5", "--allocation", "uniform"], None),
    ("sparsity 0.75 uniform", ["--sparsity", "0.75", "--allocation", "uniform"], None),
    ("sparsity 0.9 uniform", ["--sparsity", "0.9", "--allocation", "uniform"], None),
    ("2:4", ["--sparsity", "2:4"], None),
    ("2:4, min-size 1024", ["--sparsity", "2:4", "--min-size", "1024"], None),
    ("sparsity 0.5 + int8", ["--sparsity", "0.5", "--bits", "8"], 0.5),
    ("target SQNR 20 dB", ["--target-sqnr", "20"], None),
]
#: models whose float accuracy must reach this for the targets to apply
TARGET_FLOAT = 98.0
TARGET_MODELS = ("cnn", "cnn_wide")


# ---- the two ways of applying a recipe --------------------------------------------------------

def parse_recipe(args: list[str]) -> dict:
    """The recipe's CLI arguments as a dict (``--target-sqnr 20`` -> ``{"target_sqnr": "20"}``)."""
    return {key.lstrip("-").replace("-", "_"): value for key, value in zip(args[::2], args[1::2])}


def apply_in_memory(model, recipe: dict) -> dict:
    """Compress the prunable kernels of `model` in place as the CLI would; returns a summary."""
    import wqkernels

    weights = models.prunable_weights(model)
    arrays = {path: np.asarray(var.numpy()) for path, (var, _) in weights.items()}
    sparsity = recipe.get("sparsity")
    min_size = int(recipe.get("min_size", 0))
    if sparsity is not None and ":" in sparsity:  # N:M along the input axis of every kernel
        n, m = (int(v) for v in sparsity.split(":"))
        arrays = {path: _prune_n_m(_reduction_view(x, weights[path][1]), n, m).reshape(x.shape)
                  if x.size >= min_size else x for path, x in arrays.items()}
    elif sparsity is not None:
        arrays = wqkernels.prune_model(arrays, float(sparsity), allocation=recipe.get("allocation", "global"))
    bits_used = {}
    if "bits" in recipe or "target_sqnr" in recipe:
        block = recipe.get("granularity", "channel")
        for path, x in arrays.items():
            view, options = x, {"axis": weights[path][1]}
            if block.startswith("block:"):
                view = _reduction_view(x, weights[path][1])
                options = {"axis": 0, "block_size": int(block.split(":")[1])}
            if "target_sqnr" in recipe:
                bits = wqkernels.bits_for_sqnr(view, float(recipe["target_sqnr"]), **options)
            else:
                bits = int(recipe["bits"])
            bits_used[path] = bits
            method = recipe.get("method", wqkernels.default_method(bits))
            arrays[path] = wqkernels.fake_quantize(view, bits, method=method, **options).reshape(x.shape)
    for path, (var, _) in weights.items():
        var.assign(arrays[path])
    return _summary(arrays, bits_used)


def apply_with_cli(model, args: list[str], workdir: str) -> tuple:
    """Save `model` as .h5, rewrite it with ``wqkernels rewrite``, load the result.

    Returns (the loaded model, a summary), or (None, the error) when the CLI refuses the recipe.
    """
    import keras

    from wqkernels import cli

    src = os.path.join(workdir, f"{model.name}.h5")
    if not os.path.exists(src):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(src)
    dst = os.path.join(workdir, f"{model.name}.out.h5")
    report = os.path.join(workdir, "report.json")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = cli.main(["rewrite", src, "-o", dst, "--report", report, *args])
        except SystemExit as exc:  # argparse: an unknown option
            status = exc.code
    if status:
        lines = (stderr.getvalue().strip() or stdout.getvalue().strip() or f"exit status {status}").splitlines()
        return None, lines[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = keras.models.load_model(dst, compile=False)
    weights = models.prunable_weights(loaded)
    arrays = {path: np.asarray(var.numpy()) for path, (var, _) in weights.items()}
    summary = _summary(arrays, {})
    with open(report) as f:
        totals = json.load(f).get("totals", {})
    if ("--bits" in args or "--target-sqnr" in args) and "bits_per_weight" in totals:
        summary["bits"] = totals["bits_per_weight"]
    return loaded, summary


def _reduction_view(x: np.ndarray, channel_axis: int) -> np.ndarray:
    """x as (reduction, channels): the axes before the channel axis flattened, as the file layer
    does for blocks and N:M groups (``(kh, kw, in, out)`` -> ``(kh*kw*in, out)``; a depthwise
    ``(kh, kw, in, 1)`` -> ``(kh*kw, in)``), which then run along axis 0."""
    lead = int(np.prod(x.shape[:channel_axis]))
    return np.ascontiguousarray(x).reshape(lead, -1)


def _prune_n_m(x, n, m, axis=0):
    """N:M pruning with the package's kernel."""
    import wqkernels

    return wqkernels.prune_n_m(x, n=n, m=m, axis=axis)


def _summary(arrays: dict, bits_used: dict) -> dict:
    total = sum(x.size for x in arrays.values())
    zeros = sum(int(np.count_nonzero(x == 0)) for x in arrays.values())
    summary = {"sparsity": zeros / total}
    if bits_used:
        summary["bits"] = sum(bits_used[p] * arrays[p].size for p in bits_used) / total
    return summary


# ---- the benchmark ----------------------------------------------------------------------------

def run(names, seeds, backend, out=sys.stdout, log=sys.stderr) -> list[dict]:
    """Train, compress and evaluate; returns one row per (model, seed, recipe)."""
    import keras

    data = models.digits(0)
    x_test, y_test = data[1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="wqkernels-fidelity-") as workdir:
        for name in names:
            for seed in seeds:
                start = time.perf_counter()
                model = models.train(name, data, seed=seed)
                model.name = f"{name}_{seed}"  # noqa: the file names in workdir
                trained = time.perf_counter() - start
                base = models.accuracy(model, x_test, y_test)
                print(f"{name} seed {seed}: {model.count_params()} parameters, trained in {trained:.0f} s, "
                      f"float accuracy {base:.2f} %", file=log, flush=True)
                rows.append({"model": name, "seed": seed, "recipe": "float", "accuracy": base,
                             "sparsity": 0.0, "via": "-"})
                original = [w.copy() for w in model.get_weights()]
                for label, args, _ in RECIPES:
                    row = {"model": name, "seed": seed, "recipe": label}
                    if backend == "cli":
                        loaded, summary = apply_with_cli(model, args, workdir)
                        if loaded is None:
                            row.update(accuracy=math.nan, error=summary, via="cli")
                        else:
                            row.update(accuracy=models.accuracy(loaded, x_test, y_test), via="cli", **summary)
                            del loaded
                    else:
                        summary = apply_in_memory(model, parse_recipe(args))
                        row.update(accuracy=models.accuracy(model, x_test, y_test), via="memory", **summary)
                        model.set_weights(original)
                    rows.append(row)
                del model
                keras.backend.clear_session()
    return rows


def table(rows: list[dict], names) -> str:
    """Markdown: one line per recipe, per model the mean accuracy over seeds and its change."""
    seeds = sorted({r["seed"] for r in rows})
    labels = ["float"] + [label for label, _, _ in RECIPES]
    targets = {label: target for label, _, target in RECIPES}
    head = ["recipe", "target"] + [f"{n} (Δ)" for n in names] + ["zeros", "bits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    floats = {n: [r["accuracy"] for r in rows if r["model"] == n and r["recipe"] == "float"] for n in names}
    for label in labels:
        cells = [label, "" if label == "float" or targets[label] is None else f"≥ −{targets[label]:g}"]
        sparsities, bits, errors = [], [], set()
        for n in names:
            accs = [r["accuracy"] for r in rows if r["model"] == n and r["recipe"] == label]
            errors.update(r["error"] for r in rows if r["model"] == n and r["recipe"] == label and "error" in r)
            sparsities += [r["sparsity"] for r in rows if r["model"] == n and r["recipe"] == label and "sparsity" in r]
            bits += [r["bits"] for r in rows if r["model"] == n and r["recipe"] == label and "bits" in r]
            if not accs or any(math.isnan(a) for a in accs):
                cells.append("n/a")
                continue
            mean = statistics.fmean(accs)
            if label == "float":
                cells.append(f"{mean:.2f}")
                continue
            delta = mean - statistics.fmean(floats[n])
            mark = ""
            target = targets[label]
            if target is not None and n in TARGET_MODELS:
                mark = " ✓" if delta >= -target - 1e-9 else " ✗"
            cells.append(f"{mean:.2f} ({delta:+.2f}){mark}")
        cells.append(f"{statistics.fmean(sparsities):.3f}" if sparsities and label != "float" else "")
        cells.append(f"{statistics.fmean(bits):.2f}" if bits else "")
        lines.append("| " + " | ".join(cells) + " |")
        if errors:
            lines[-1] += "  ← " + "; ".join(sorted(errors))
    via = sorted({r["via"] for r in rows if r["via"] != "-"})
    lines.append("")
    lines.append(f"Accuracy in % on {len(models.digits(0)[1][1])} test images, mean over seeds {seeds}; "
                 f"Δ in points against the float model; recipes applied via {', '.join(via)}; ✓/✗: target "
                 f"on the CNNs (float ≥ {TARGET_FLOAT:g} %); zeros: fraction of the prunable "
                 "weights that are zero (pruned, or rounded to 0); bits: average bits per prunable weight.")
    return "\n".join(lines)


def per_seed(rows: list[dict], names) -> str:
    """Markdown: the accuracy of every seed, for the spread."""
    seeds = sorted({r["seed"] for r in rows})
    head = ["recipe"] + [f"{n} s{s}" for n in names for s in seeds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in ["float"] + [label for label, _, _ in RECIPES]:
        cells = [label]
        for n in names:
            for s in seeds:
                acc = [r["accuracy"] for r in rows if r["model"] == n and r["seed"] == s and r["recipe"] == label]
                cells.append(f"{acc[0]:.2f}" if acc and not math.isnan(acc[0]) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, the CNN and the MLP only")
    parser.add_argument("--markdown", action="store_true", help="also print the per-seed table")
    parser.add_argument("--backend", choices=("auto", "cli", "memory"), default="auto")
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(models.BUILDERS)}")
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds per model (default 3)")
    args = parser.parse_args(argv)
    names = (args.models.split(",") if args.models else
             ["cnn", "mlp"] if args.quick else ["cnn", "cnn_wide", "mlp"])
    unknown = [n for n in names if n not in models.BUILDERS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(models.BUILDERS)}")
    seeds = range(args.seeds if args.seeds else 1 if args.quick else 3)
    backend = args.backend
    if backend == "auto":
        from wqkernels import cli

        backend = "cli" if "rewrite" in cli.COMMANDS else "memory"
    print(f"backend: {backend}", file=sys.stderr)
    rows = run(names, seeds, backend)
    print(table(rows, names))
    if args.markdown:
        print()
        print(per_seed(rows, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
