"""Pruning variants measured against the default and rejected (FIDELITY.md): after magnitude
pruning (global LAMP, the default), the kept weights of each output channel rescaled so that the
channel keeps its float L2 or L1 norm.  A NumPy prototype over the benchmark's eight architectures
and three seeds, at sparsity 0.75 and 0.9, printing markdown tables::

    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/pruning_variants.py
"""
import dataclasses
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import fidelity  # noqa: E402
import models  # noqa: E402
import wqkernels  # noqa: E402


def rescaled(recipe, order):
    """Prune as `recipe` does, then scale each channel's kept weights to its float L`order` norm."""
    prune = fidelity.replica(dataclasses.replace(recipe, bn_correction=False))

    def transform(weights, tensors, context):
        pruned = prune(weights, tensors, context)
        out = {}
        for t in tensors:
            w, p = weights[t.path].astype(np.float64), pruned[t.path].astype(np.float64)
            axes = tuple(i for i in range(w.ndim) if i != t.channel_axis)
            nw = np.sum(np.abs(w) ** order, axis=axes, keepdims=True) ** (1 / order)
            np_ = np.sum(np.abs(p) ** order, axis=axes, keepdims=True) ** (1 / order)
            f = np.divide(nw, np_, out=np.ones_like(nw), where=np_ > 0)
            out[t.path] = (p * f).astype(np.float32)
        return out

    return transform


def main():
    cands = []
    for sp in (0.75, 0.9):
        r = wqkernels.Recipe(sparsity=sp)
        g = f"sparsity {sp}"
        cands += [fidelity.Candidate("default", g, r),
                  fidelity.Candidate("L2 kept", g, transform=rescaled(r, 2)),
                  fidelity.Candidate("L1 kept", g, transform=rescaled(r, 1))]
    archs = list(models.ARCHITECTURES)
    rows = fidelity.run(archs, range(3), cands, via="memory")
    by = {}
    for row in rows:
        if row["group"] == "float": continue
        by.setdefault((row["group"], row["label"], row["arch"]), []).append(row)
    for g in ("sparsity 0.75", "sparsity 0.9"):
        print(f"\n{g}: score loss (points) / relative output error, mean of 3 seeds")
        print("| recipe | " + " | ".join(archs) + " | geo-mean error / default |")
        base = {a: statistics.mean(r["rel_err"] for r in by[(g, "default", a)]) for a in archs}
        for label in ("default", "L2 kept", "L1 kept"):
            cells, ratios = [], []
            for a in archs:
                rs = by[(g, label, a)]
                floats = {r["seed"]: r2["score"] for r2 in rows if r2["arch"] == a and r2["group"] == "float" for r in rs if r2["seed"] == r["seed"]}
                loss = statistics.mean(floats[r["seed"]] - r["score"] for r in rs)
                err = statistics.mean(r["rel_err"] for r in rs)
                ratios.append(err / base[a])
                cells.append(f"{loss:+.2f} / {err:.3f}")
            print(f"| {label} | " + " | ".join(cells) + f" | {math.exp(statistics.mean(map(math.log, ratios))):.2f} |")


if __name__ == "__main__":
    main()
