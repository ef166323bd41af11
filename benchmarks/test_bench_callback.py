"""Overhead of ``wqkernels.keras.PruningCallback`` on fit time: the digits CNN of
``fidelity_callback.py`` (Conv2D, BatchNorm, DepthwiseConv2D, 1x1 Conv2D, Dense), fine-tuned for
10 epochs with and without the callback; goal at most 10 %.

Run: ``python -m pytest benchmarks/test_bench_callback.py -s`` (prints the table), or run this
file (``--rounds``, ``--epochs``).  The fits are timed in the same process, interleaved (one of
each per round, after a warm-up fit of each that compiles everything), on the same compiled
model; the overhead is the ratio of the median times (and of the best).

Besides the callback at 90 % (polynomial schedule, masks recomputed every 100 steps) and 2:4,
a callback whose ``on_train_batch_end`` does nothing shows what Keras itself charges for a hook
there (it then waits for every step's logs instead of dispatching callbacks asynchronously),
the reason the masks are applied where a batch begins.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def variants(keras) -> dict:
    """Label -> a function returning the callbacks of one timed fit."""
    from wqkernels.keras import PruningCallback

    class BatchEndHook(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass
    return {"fit": lambda: [], "PruningCallback(0.9)": lambda: [PruningCallback(0.9)],
            "PruningCallback('2:4')": lambda: [PruningCallback("2:4")],
            "an empty on_train_batch_end (reference)": lambda: [BatchEndHook()]}


def measure(rounds: int = 5, epochs: int = 10) -> dict:
    """Wall and CPU (all threads of the process) seconds of each fit, by label."""
    import keras

    import fidelity_callback
    import models

    (x, y), _ = models.digits(0)
    model = fidelity_callback.compile_model(fidelity_callback.build_cnn_dw(0), 1e-3, 10_000)
    start = [v.numpy() for v in model.variables]
    found = variants(keras)
    times = {label: {"wall": [], "cpu": []} for label in found}
    for r in range(rounds + 1):  # round 0 warms up: compiles the step and the masking
        for label, callbacks in found.items():
            for v, value in zip(model.variables, start):
                v.assign(value)
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(x, y, batch_size=32, epochs=1 if r == 0 else epochs, verbose=0, callbacks=callbacks())
            if r:
                times[label]["wall"].append(time.perf_counter() - wall)
                times[label]["cpu"].append(time.process_time() - cpu)
    return {"steps": epochs * -(-len(x) // 32), "rounds": rounds, "times": times}


def report(result: dict) -> str:
    times = result["times"]
    base = {kind: (statistics.median(t), min(t)) for kind, t in times["fit"].items()}
    lines = [f"{result['steps']} steps of the digits CNN, {result['rounds']} interleaved rounds; overhead "
             "against the plain fit, of the medians (and of the best)", "",
             "| fit | wall s, median | wall overhead | CPU s, median | CPU overhead |", "|---|---|---|---|---|"]
    for label, kinds in times.items():
        cells = []
        for kind in ("wall", "cpu"):
            median, best = statistics.median(kinds[kind]), min(kinds[kind])
            cells += [f"{median:.3f}", f"{median / base[kind][0] - 1:+.1%} ({best / base[kind][1] - 1:+.1%})"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.filterwarnings("ignore")
def test_callback_overhead():
    pytest.importorskip("jax", reason="the benchmark uses the JAX backend")
    pytest.importorskip("keras", reason="the benchmark trains a Keras model")
    pytest.importorskip("sklearn", reason="the benchmark trains on sklearn's digits")
    print("\n" + report(measure()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    print(report(measure(args.rounds, args.epochs)))
