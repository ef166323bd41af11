"""The experiments that chose the defaults of ``wqkernels.allocation`` (see FIDELITY.md).

Trains the digits models of ``models.py`` over several seeds, then, in memory, measures test
accuracy after one-shot magnitude pruning with several allocation criteria and ``min_size``
values, and after quantization with min/max or MSE scales per tensor or per channel.

    python benchmarks/allocation_experiments.py [--cache DIR] [--models cnn:3,cnn_wide:2,...]

Trained models are kept in ``--cache`` (``.keras`` files) so reruns skip training.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import models  # noqa: E402

SPARSITIES = (0.5, 0.75, 0.9)
#: (criterion, min_size) pairs compared
PRUNING = [("uniform", 0), ("uniform", 256), ("uniform", 1024),
           ("magnitude", 0), ("magnitude", 256), ("magnitude", 1024),
           ("rms", 0), ("rms", 1024),
           ("lamp", 0), ("lamp", 256), ("lamp", 512), ("lamp", 1024), ("lamp", 2048)]
#: min_size values compared for 2:4 pruning (along the input axis of every kernel)
N_M_MIN_SIZES = (0, 256, 1024)
QUANT = [(bits, gran, method) for bits in (8, 5, 4, 3, 2) for gran in ("channel", "tensor")
         for method in ("minmax", "mse")]


def _k_smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k smallest scores, ties to the lower index (as wqkernels.prune_global)."""
    mask = np.zeros(scores.size, dtype=bool)
    mask[np.argsort(scores, kind="stable")[:k]] = True
    return mask


def prune(arrays: dict, sparsity: float, criterion: str, min_size: int) -> dict:
    """One-shot pruning of floor(sparsity * total) weights; tensors below min_size stay dense."""
    import wqkernels

    if criterion == "lamp":
        return wqkernels.prune_model(arrays, sparsity, min_size=min_size)
    if criterion == "uniform":
        return wqkernels.prune_model(arrays, sparsity, allocation="uniform", min_size=min_size)
    eligible = [k for k, x in arrays.items() if x.size >= min_size]
    total = sum(x.size for x in arrays.values())
    count = min(int(np.floor(sparsity * total)), sum(arrays[k].size for k in eligible))
    if criterion == "magnitude":  # one raw |w| threshold
        scores = [np.abs(arrays[k]).ravel() for k in eligible]
    elif criterion == "rms":  # |w| / rms of its tensor
        scores = [np.abs(arrays[k]).ravel() / np.sqrt(np.mean(np.square(arrays[k], dtype=np.float64)))
                  for k in eligible]
    else:
        raise ValueError(criterion)
    mask = _k_smallest(np.concatenate(scores), count)
    out, start = dict(arrays), 0
    for k in eligible:
        x = arrays[k]
        out[k] = np.where(mask[start:start + x.size].reshape(x.shape), 0, x).astype(x.dtype)
        start += x.size
    return out


def prune_2_4(arrays: dict, axes: dict, min_size: int) -> dict:
    """2:4 along the flattened reduction axis, as the fidelity benchmark and the CLI do."""
    from fidelity import _prune_n_m, _reduction_view

    return {k: _prune_n_m(_reduction_view(x, axes[k]), 2, 4).reshape(x.shape) if x.size >= min_size else x
            for k, x in arrays.items()}


def quantize(arrays: dict, axes: dict, bits: int, granularity: str, method: str) -> dict:
    import wqkernels

    return {k: wqkernels.fake_quantize(x, bits, axis=axes[k] if granularity == "channel" else None,
                                       method=method) for k, x in arrays.items()}


class Evaluator:
    """Swap compressed kernels into a trained model and measure it."""

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model, x, y
        self.weights = models.prunable_weights(model)
        self.arrays = {k: np.asarray(v.numpy()) for k, (v, _) in self.weights.items()}
        self.axes = {k: a for k, (_, a) in self.weights.items()}
        self.float_pred = self.predict(self.arrays)

    def predict(self, arrays):
        for k, (v, _) in self.weights.items():
            v.assign(arrays[k])
        pred = np.argmax(self.model.predict(self.x, batch_size=2048, verbose=0), axis=-1)
        for k, (v, _) in self.weights.items():
            v.assign(self.arrays[k])
        return pred

    def accuracy(self, arrays) -> float:
        return 100.0 * float(np.mean(self.predict(arrays) == self.y))


def trained(name: str, seed: int, data, cache: str):
    import keras

    path = os.path.join(cache, f"{name}_{seed}.keras")
    if os.path.exists(path):
        return keras.models.load_model(path, compile=False)
    model = models.train(name, data, seed=seed)
    model.save(path)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "wqkernels-fidelity"))
    parser.add_argument("--models", default="cnn:3,cnn_wide:2,mlp:2,cnn_bn:2", help="name:seeds,...")
    args = parser.parse_args(argv)
    os.makedirs(args.cache, exist_ok=True)
    data = models.digits(0)
    x_test, y_test = data[1]
    prune_acc, quant_acc, n_m_acc, floats = {}, {}, {}, {}
    for spec in args.models.split(","):
        name, seeds = spec.split(":")
        for seed in range(int(seeds)):
            ev = Evaluator(trained(name, seed, data, args.cache), x_test, y_test)
            floats.setdefault(name, []).append(ev.accuracy(ev.arrays))
            print(f"{name} seed {seed}: float {floats[name][-1]:.2f}; sizes "
                  f"{[x.size for x in ev.arrays.values()]}", file=sys.stderr, flush=True)
            for s in SPARSITIES:
                for crit, min_size in PRUNING:
                    acc = ev.accuracy(prune(ev.arrays, s, crit, min_size))
                    prune_acc.setdefault((name, s, crit, min_size), []).append(acc)
            for min_size in N_M_MIN_SIZES:
                n_m_acc.setdefault((name, min_size), []).append(ev.accuracy(prune_2_4(ev.arrays, ev.axes, min_size)))
            for bits, gran, method in QUANT:
                acc = ev.accuracy(quantize(ev.arrays, ev.axes, bits, gran, method))
                quant_acc.setdefault((name, bits, gran, method), []).append(acc)
    names = list(floats)
    print("## Pruning: mean test accuracy (%) over seeds\n")
    print("| criterion | min_size | sparsity | " + " | ".join(f"{n} ({statistics.fmean(floats[n]):.2f})"
                                                       for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for s in SPARSITIES:
        for crit, min_size in PRUNING:
            cells = [f"{statistics.fmean(prune_acc[(n, s, crit, min_size)]):.1f}" for n in names]
            print(f"| {crit} | {min_size} | {s} | " + " | ".join(cells) + " |")
    print("\n## 2:4 pruning: mean test accuracy (%) over seeds\n")
    print("| min_size | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for min_size in N_M_MIN_SIZES:
        print(f"| {min_size} | " + " | ".join(f"{statistics.fmean(n_m_acc[(n, min_size)]):.1f}" for n in names) + " |")
    print("\n## Quantization: mean test accuracy (%) over seeds\n")
    print("| bits | granularity | method | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for bits, gran, method in QUANT:
        cells = [f"{statistics.fmean(quant_acc[(n, bits, gran, method)]):.1f}" for n in names]
        print(f"| {bits} | {gran} | {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
