"""Calibration without data: samples synthesized from the model's BatchNorm statistics.

For each trained model of the fidelity benchmark (3 seeds), :func:`wqkernels.keras.synthetic.synthesize`
makes inputs whose batch moments at every BatchNormalization's input match its moving ones, and
each recipe is measured on the test set, points lost against the float model (relative output
error in brackets):

- ``data-free``: ``wqkernels.rewrite`` with the recipe (the CLI default, the BatchNorm correction);
- ``synthetic statistics``: the default masks, then every BN's moving statistics and the Dense
  layer fed by a BN re-estimated through the pruned model on the synthetic samples (the
  ``--oracle`` correction of ``pruning_variants.py`` with synthetic inputs instead of real);
- ``synthetic calibration``: :func:`wqkernels.keras.calibrate` (SparseGPT / GPTQ, bias
  correction) on the synthetic samples;
- ``real calibration``: the same on as many training images (what data would give);
- ``true statistics`` (pruning only): the oracle correction on the training set.

::

    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/synthetic_calibration.py --archs cnn_bn_8,cnn_bn,cnn_bn_32
    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/synthetic_calibration.py --recipes bits=2,bits=3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import fidelity  # noqa: E402
import models  # noqa: E402
import pruning_variants  # noqa: E402
import wqkernels  # noqa: E402

METHODS = ("data-free", "synthetic statistics", "synthetic calibration", "real calibration", "true statistics")


def recipe_of(text: str) -> wqkernels.Recipe:
    """``sparsity=0.9`` or ``bits=2`` or ``sparsity=0.75,bits=3`` (with ``+``) as a Recipe."""
    options = {}
    for part in text.split("+"):
        key, value = part.split("=")
        options[key] = float(value) if key == "sparsity" else int(value)
    return wqkernels.Recipe(**options)


def calibrated(case: fidelity.Case, recipe: wqkernels.Recipe, samples) -> dict:
    from wqkernels.keras import calibrate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {p: np.asarray(v, np.float32) for p, v in calibrate(case.path, samples, recipe).weights.items()}


def data_free(case: fidelity.Case, recipe: wqkernels.Recipe) -> dict:
    dst = os.path.join(case.workdir, "data-free.keras")
    wqkernels.rewrite(case.path, dst, recipe)
    written = wqkernels.load_weights(dst)
    return {p: written[p] for p in case.slots}


def measure(case, recipe, method, samples) -> dict:
    start = time.perf_counter()
    if method == "data-free":
        m = fidelity.metrics(case.task, case.predict(data_free(case, recipe)), case.reference)
    elif method in ("synthetic statistics", "true statistics"):
        w = {t.path: np.asarray(case.weights[t.path], np.float32) for t in case.tensors}
        plain = pruning_variants.pruned("default", w, case.tensors, recipe.sparsity)
        m = pruning_variants.true_statistics(case, plain, samples if method.startswith("synthetic") else None)
        case.variables = [np.asarray(v.numpy()) for v in case.model.trainable_variables], \
            [np.asarray(v.numpy()) for v in case.model.non_trainable_variables]  # (it reassigned them)
    else:
        m = fidelity.metrics(case.task, case.predict(calibrated(case, recipe, samples)), case.reference)
    return {**m, "seconds": time.perf_counter() - start}


def main(argv=None):
    from wqkernels.keras.synthetic import Synthetic, synthesize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cnn_bn_8,cnn_bn,cnn_bn_32")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recipes", default="sparsity=0.9", help="','-separated, options joined by '+'")
    parser.add_argument("--methods", default=";".join(METHODS), help="';'-separated")
    defaults = Synthetic()
    parser.add_argument("--count", type=int, default=defaults.count)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--tv", type=float, default=defaults.total_variation)
    parser.add_argument("--l2", type=float, default=defaults.l2)
    parser.add_argument("--labels", type=float, default=defaults.labels, help="weight of a class loss on the logits")
    args = parser.parse_args(argv)
    import keras

    recipes, methods = args.recipes.split(","), args.methods.split(";")
    results = {}  # (arch, recipe, method) -> [metrics per seed]
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="wqkernels-synthetic-") as workdir:
        for arch in args.archs.split(","):
            for seed in range(args.seeds):
                case = fidelity.Case(arch, seed, models.trained(arch, seed)[0], workdir)
                float_score = fidelity.metrics(case.task, case.reference, case.reference)["score"]
                settings = Synthetic(count=args.count, steps=args.steps, learning_rate=args.learning_rate,
                                     l2=args.l2, total_variation=args.tv, labels=args.labels, seed=seed)
                synthetic, facts = None, {}
                if any(m.startswith("synthetic") for m in methods):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        float_model = keras.models.load_model(case.path, compile=False)
                        try:
                            synthetic, facts = synthesize(float_model, settings)
                        except ValueError as exc:
                            print(f"{arch} seed {seed}: {exc}", file=sys.stderr)
                    seconds.setdefault(arch, []).append(facts.get("seconds", float("nan")))
                real = [case.task.x_train[:args.count]]
                for text in recipes:
                    recipe = recipe_of(text)
                    for method in methods:
                        if method.endswith("statistics") and (recipe.sparsity is None or recipe.bits is not None):
                            continue
                        if method.startswith("synthetic") and synthetic is None:
                            continue
                        m = measure(case, recipe, method, synthetic[0] if method == "synthetic statistics"
                                    else synthetic if method.startswith("synthetic") else real)
                        results.setdefault((arch, text, method), []).append({**m, "loss": float_score - m["score"]})
                print(f"{arch} seed {seed}: float {float_score:.2f}, synthesis {facts.get('seconds', 0):.1f} s "
                      f"(loss {facts.get('first_loss')} -> {facts.get('loss')})", file=sys.stderr, flush=True)
                del case
                keras.backend.clear_session()
    archs = args.archs.split(",")
    for text in recipes:
        print(f"\n{text}: points lost, mean (per seed) [relative output error]; seconds per seed\n")
        print("| method | " + " | ".join(f"`{a}`" for a in archs) + " |\n" + "|---" * (len(archs) + 1) + "|")
        for method in methods:
            cells = []
            for a in archs:
                r = results.get((a, text, method))
                cells.append("" if not r else f"{statistics.fmean(x['loss'] for x in r):.2f} ("
                             + " / ".join(f"{x['loss']:.2f}" for x in r)
                             + f") [{statistics.fmean(x['rel_err'] for x in r):.3f}] "
                             f"{statistics.fmean(x['seconds'] for x in r):.1f} s")
            if any(cells):
                print(f"| {method} | " + " | ".join(cells) + " |")
    if seconds:
        print("\nsynthesis seconds per model: " + ", ".join(
            f"{a} {statistics.fmean(s):.1f}" for a, s in seconds.items()))


if __name__ == "__main__":
    main()
