"""Fidelity of pruning while fine-tuning: test accuracy of digits CNNs fine-tuned with
``wqkernels.keras.PruningCallback`` to 90 % sparsity and to 2:4, beside one-shot pruning of the
same float weights (``wqkernels.prune_model`` / N:M, no fine-tuning).

Each model is trained in float (Adam, cosine schedule), then fine-tuned
for 10 epochs from those weights with the callback and its defaults (polynomial schedule over
the fit, global LAMP allocation, min_size 256; 2:4 along the input axis, tensors under 1024
weights dense), saved with ``model.save("x.keras")`` and checked with ``wqkernels.inspect``:
the saved file must hold exactly floor(0.9 * total) zeros, or the exact 2:4 pattern.

Usage::

    python benchmarks/fidelity_callback.py [--models cnn_dw,cnn_bn,cnn] [--seeds 0,1,2] [--epochs 10]
                                           [--learning-rate 1e-3]
"""
from __future__ import annotations

import argparse
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

#: (label, the callback's sparsity and schedule (None: its default), accuracy target in points below
#: float); "2:4 at once" is the constant schedule, every run in the pattern from the first step
TARGETS = [("0.9", 0.9, None, 1.0), ("2:4", "2:4", None, 0.5), ("2:4 at once", "2:4", "constant", 0.5)]
#: the fine-tuning's learning rate (Adam, cosine decay over the fine-tuning)
LEARNING_RATE = 1e-3
TARGET_FLOAT = 98.0


def build_cnn(seed: int = 0, width: int = 16):
    """Conv2D -> DepthwiseConv2D -> pointwise Conv2D -> pool -> Conv2D -> Dense -> Dense."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(width, 3, padding="same", activation="relu", name="conv1"),
        layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise"),
        layers.Conv2D(2 * width, 1, activation="relu", name="pointwise"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="conv2"),
        layers.Flatten(name="flatten"),
        layers.Dropout(0.3, name="dropout"),
        layers.Dense(64, activation="relu", name="dense1"),
        layers.Dense(10, activation="softmax", name="logits"),
    ], name="digits_cnn")


def build_cnn_bn(seed: int = 0, width: int = 16):
    """A second CNN with BatchNormalization, a SeparableConv2D and a flattening head."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv1"),
        layers.BatchNormalization(name="bn1"),
        layers.ReLU(name="relu1"),
        layers.SeparableConv2D(2 * width, 3, padding="same", activation="relu", name="separable"),
        layers.MaxPooling2D(2, name="pool"),
        layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise"),
        layers.Conv2D(2 * width, 1, use_bias=False, name="pointwise"),
        layers.BatchNormalization(name="bn2"),
        layers.ReLU(name="relu2"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, activation="softmax", name="logits"),
    ], name="digits_cnn_bn")


def build_cnn_dw(seed: int = 0, width: int = 32):
    """Conv2D + BN -> DepthwiseConv2D + BN -> 1x1 Conv2D + BN -> MaxPool -> DepthwiseConv2D + BN
    -> 1x1 Conv2D + BN -> Flatten -> Dropout -> Dense 64 -> Dense 10."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)

    def block(layer):
        return [layer, layers.BatchNormalization(), layers.ReLU()]
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        *block(layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv")),
        *block(layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise1")),
        *block(layers.Conv2D(2 * width, 1, use_bias=False, name="pointwise1")),
        layers.MaxPooling2D(2),
        *block(layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise2")),
        *block(layers.Conv2D(2 * width, 1, use_bias=False, name="pointwise2")),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(64, activation="relu", name="dense"),
        layers.Dense(10, activation="softmax", name="logits"),
    ], name="digits_cnn_dw")


BUILDERS = {"cnn_dw": build_cnn_dw, "cnn_bn": build_cnn_bn, "cnn": build_cnn}
EPOCHS = {"cnn_dw": 30, "cnn_bn": 30, "cnn": 40}


def compile_model(model, learning_rate: float, steps: int):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def train_float(name: str, data, seed: int):
    (x, y), _ = data
    model = BUILDERS[name](seed)
    epochs = EPOCHS[name]
    compile_model(model, 3e-3, epochs * -(-len(x) // 32))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model


def finetune(name: str, weights: list, sparsity, data, seed: int, epochs: int, workdir: str,
             learning_rate: float = LEARNING_RATE, schedule: str | None = None) -> dict:
    """Fine-tune a copy of the float model with the callback (None: without it, the reference);
    save it and measure the file."""
    import keras

    import wqkernels
    from wqkernels.keras import PruningCallback

    (x, y), (x_test, y_test) = data
    model = BUILDERS[name](seed)
    model.set_weights(weights)
    compile_model(model, learning_rate, epochs * -(-len(x) // 32))
    start = time.perf_counter()
    callbacks = [] if sparsity is None else [PruningCallback(sparsity, schedule=schedule)]
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    path = os.path.join(workdir, f"{name}-{seed}-{str(sparsity).replace(':', '_')}-{schedule}.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
        loaded = keras.models.load_model(path)
    prunable = [w for w in wqkernels.inspect(path) if w.prunable]
    arrays = wqkernels.load_weights(path)
    return {"accuracy": models.accuracy(loaded, x_test, y_test), "seconds": seconds,
            "exact": exact(sparsity, prunable, arrays),
            "sparsity": sum(np.count_nonzero(arrays[w.path] == 0) for w in prunable)
            / sum(math.prod(w.shape) for w in prunable)}


def exact(sparsity, prunable: list, arrays: dict) -> bool:
    """The file holds exactly floor(sparsity * total) zeros in its prunable weights, or every
    tensor of 1024 weights or more keeps at most N of every M along its input axis (and the
    others are dense)."""
    from wqkernels.files.roles import block_view

    if sparsity is None:
        return True
    if not isinstance(sparsity, str):
        zeros = sum(int(np.count_nonzero(arrays[w.path] == 0)) for w in prunable)
        return zeros == math.floor(sparsity * sum(math.prod(w.shape) for w in prunable))
    n, m = (int(v) for v in sparsity.split(":"))
    for w in prunable:
        x = arrays[w.path]
        if x.size < 1024:
            if np.count_nonzero(x == 0):
                return False
            continue
        view, axis = block_view(x.shape, w.layer_class, w.role)
        runs = np.moveaxis(x.reshape(view), axis, -1)
        length = runs.shape[-1] // m * m
        if (np.count_nonzero(runs[..., :length].reshape(*runs.shape[:-1], -1, m), axis=-1) != n).any():
            return False
    return True


def one_shot(model, sparsity, data) -> float:
    """Accuracy after pruning the float weights at once, as ``rewrite --sparsity`` does."""
    from wqkernels.keras.weights import keep_masks, prunable_weights

    _, (x_test, y_test) = data
    kernels = {k.path: k for k in prunable_weights(model)}
    values = {path: np.asarray(k.variable.numpy()) for path, k in kernels.items()}
    original = [w.copy() for w in model.get_weights()]
    if isinstance(sparsity, str):
        n, m = (int(v) for v in sparsity.split(":"))
        keep = keep_masks(values, kernels, None, (n, m))
        pruned = {path: np.where(keep[path], x, 0) if path in keep else x for path, x in values.items()}
    else:
        import wqkernels
        pruned = wqkernels.prune_model(values, sparsity)
    for path, k in kernels.items():
        k.variable.assign(pruned[path])
    accuracy = models.accuracy(model, x_test, y_test)
    model.set_weights(original)
    return accuracy


def run(names, seeds, epochs, learning_rate: float = LEARNING_RATE, log=sys.stderr) -> list[dict]:
    data = models.digits(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wqkernels-callback-") as workdir:
        for name in names:
            for seed in seeds:
                start = time.perf_counter()
                model = train_float(name, data, seed)
                base = models.accuracy(model, *data[1])
                weights = model.get_weights()
                row = {"model": name, "seed": seed, "float": base, "parameters": model.count_params(),
                       "fine-tuned dense": finetune(name, weights, None, data, seed, epochs, workdir,
                                                    learning_rate)["accuracy"]}
                shots = {}
                for label, sparsity, schedule, _ in TARGETS:
                    if sparsity not in shots:
                        shots[sparsity] = row[f"one-shot {label}"] = one_shot(model, sparsity, data)
                    result = finetune(name, weights, sparsity, data, seed, epochs, workdir, learning_rate,
                                      schedule)
                    row[f"fine-tuned {label}"] = result["accuracy"]
                    row[f"exact {label}"] = result["exact"]
                    row[f"sparsity {label}"] = result["sparsity"]
                    row[f"seconds {label}"] = result["seconds"]
                print(f"{name} seed {seed} ({time.perf_counter() - start:.0f} s): " + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                    if k not in ("model", "seed")), file=log, flush=True)
                rows.append(row)
    return rows


def markdown(rows: list[dict], epochs: int) -> str:
    targets = {f"fine-tuned {label}": target for label, _, _, target in TARGETS}
    labels = ["float", "fine-tuned dense"] + [f"{kind} {label}" for label, _, _, _ in TARGETS
                                               for kind in ("one-shot", "fine-tuned")
                                               if f"{kind} {label}" in rows[0]]
    lines = ["| model | seeds | " + " | ".join(labels) + " | saved sparsity (exact) |",
             "|---" * (len(labels) + 3) + "|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        base = statistics.mean(r["float"] for r in mine)
        cells = [f"{base:.2f}"]
        for label in labels[1:]:
            mean = statistics.mean(r[label] for r in mine)
            cell = f"{mean:.2f} ({mean - base:+.2f})"
            if label in targets:
                met = all(r[label] >= r["float"] - targets[label] for r in mine)
                cell += " ✓" if met and base >= TARGET_FLOAT else (" ✗" if base >= TARGET_FLOAT else "")
            cells.append(cell)
        saved = ", ".join(f"{statistics.mean(r[f'sparsity {lab}'] for r in mine):.4f} "
                          f"({'yes' if all(r[f'exact {lab}'] for r in mine) else 'NO'})" for lab, _, _, _ in TARGETS)
        lines.append(f"| `{name}` ({mine[0]['parameters']:,} parameters) | {len(mine)} | " + " | ".join(cells)
                     + f" | {saved} |")
    lines += ["", f"Accuracy in % on 540 test images, mean over seeds; Δ in points against the float model; "
              f"fine-tuned: {epochs} epochs with `PruningCallback` and its defaults (dense: the same "
              f"fine-tuning without the callback, for reference; 2:4 at once: `schedule=\"constant\"`); "
              f"✓: every seed within the target (0.9: 1 point, 2:4: 0.5 point).", "",
              "| model | seed | " + " | ".join(labels) + " |", "|---" * (len(labels) + 2) + "|"]
    for r in rows:
        lines.append(f"| `{r['model']}` | {r['seed']} | " + " | ".join(f"{r[label]:.2f}" for label in labels) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn_dw", help="comma-separated: " + ", ".join(BUILDERS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE, help="fine-tuning learning rate")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(BUILDERS)}")
    rows = run(names, [int(s) for s in args.seeds.split(",")], args.epochs, args.learning_rate)
    print(markdown(rows, args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
