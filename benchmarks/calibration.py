"""Calibrated compression benchmark: test accuracy of a digits CNN after each recipe, data-free
and with ``--calibration``, and Keras 3's own GPTQ on the models it can take.

Trains the CNN of :func:`build_cnn` (Conv2D, BatchNormalization, DepthwiseConv2D, a 1x1 Conv2D,
Dense; Keras 3, JAX backend) on scikit-learn's digits with three seeds, saves each as ``.keras``,
rewrites it through the ``wqkernels rewrite`` command line with each recipe of :data:`RECIPES`,
without and with ``--calibration`` on 512 training images, loads the result with
``keras.models.load_model`` and prints the test accuracy against the float model's (540 test
images: one image is 0.185 points).

``--keras-gptq`` also runs ``model.quantize("gptq")`` of Keras: it takes token sequences only, so
it is measured on :func:`build_token_mlp` (the digits' 0..16 pixel values as 64 tokens,
Embedding then Dense layers), next to the calibrated rewrite of the same model, and its saved
file is reloaded.

``--keras-native`` measures instead ``--storage keras`` on the attention model of the fidelity
benchmark (:func:`models.build_attention`: per-position EinsumDense embedding, MultiHeadAttention,
EinsumDense feed-forward, Dense head; digits as 8 rows of 8 pixels): the relative error of its
logits against the float model's, ``||y - y_float|| / ||y_float||`` over the test images, and the
accuracy, data-free and calibrated, per recipe of :data:`NATIVE_RECIPES`.

``--memory`` measures instead the peak resident memory of the command on a ~100 MB model (24
Dense layers of 1024 x 1024, float32), each run in a process of its own: Keras loading the
model, the plain rewrite, and the calibrated one.

Usage::

    python benchmarks/calibration.py [--seeds 3] [--samples 512] [--keras-gptq] [--cache DIR]
    python benchmarks/calibration.py --keras-native [--seeds 3] [--samples 512]
    python benchmarks/calibration.py --memory [--samples 512]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402 -- the fidelity benchmark's data and architectures

#: (label, recipe options of ``wqkernels rewrite``, calibrated target in points below float)
RECIPES = [
    ("int2", ["--bits", "2"], 2.0),
    ("int3", ["--bits", "3"], None),
    ("int4", ["--bits", "4"], None),
    ("sparsity 0.9", ["--sparsity", "0.9"], 1.5),
    ("2:4 on every kernel", ["--sparsity", "2:4", "--min-size", "0"], 1.0),
    ("sparsity 0.75 + int3", ["--sparsity", "0.75", "--bits", "3"], 1.0),
    ("sparsity 0.5 + int4", ["--sparsity", "0.5", "--bits", "4"], None),
]
#: (label, options of ``wqkernels rewrite --storage keras``) of the Keras-native benchmark
NATIVE_RECIPES = [
    ("int8 (W8A8)", ["--bits", "8"]),
    ("int8 weight-only", ["--bits", "8", "--activations", "float"]),
    ("int4 per channel", ["--bits", "4"]),
    ("int4 blocks of 16", ["--bits", "4", "--granularity", "block:16"]),
]
#: the float model must reach this for the targets to apply
TARGET_FLOAT = 98.0
DEFAULT_CACHE = os.environ.get("WQKERNELS_CALIBRATION_CACHE",
                               os.path.join(os.path.expanduser("~"), ".cache", "wqkernels-calibration"))


# ---- data and models ------------------------------------------------------------------------------

def digits():
    """scikit-learn's digits as (x_train, y_train, x_test, y_test): the fidelity benchmark's
    split (:func:`models.digits`, stratified 70 / 30, seed 0)."""
    (x_train, y_train), (x_test, y_test) = models.digits()
    return x_train, y_train, x_test, y_test


#: the fidelity benchmark's digits CNN with BatchNorm (Conv2D, DepthwiseConv2D, 1x1 Conv2D, Dense)
build_cnn = models.build_cnn_bn


def build_token_mlp():
    """The digits' pixel values (0..16) as 64 tokens: Embedding, two Dense layers per token, a
    Dense head: layers Keras's GPTQ quantizes (it takes token inputs only)."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((64,), dtype="int32"),
        layers.Embedding(17, 16, name="embedding"),
        layers.Dense(32, activation="relu", name="token_dense1"),
        layers.Dense(32, activation="relu", name="token_dense2"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, name="logits"),
    ], name="digits_tokens")


def tokens(images: np.ndarray) -> np.ndarray:
    return np.rint(images.reshape(len(images), 64) * 16).astype(np.int32)


def trained(kind: str, seed: int, cache: str, data, epochs: int = 30) -> str:
    """The path of the trained model (trained and saved once per cache directory)."""
    import keras

    path = os.path.join(cache, f"{kind}-seed{seed}.keras")
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    x_train, y_train = data[0], data[1]
    if kind == "tokens":
        x_train = tokens(x_train)
    keras.utils.set_random_seed(seed)
    model = build_cnn() if kind == "cnn" else build_token_mlp()
    steps = epochs * -(-len(x_train) // 32)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    model.save(path)
    return path


def accuracy(model, x, y) -> float:
    return 100.0 * float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), axis=-1) == y))


def load(path):
    import keras

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.models.load_model(path, compile=False)


# ---- the command line ---------------------------------------------------------------------------

def rewrite(src: str, dst: str, options: list, samples: str | None) -> float:
    """Run ``wqkernels rewrite`` in this process; returns the seconds it took."""
    from wqkernels.cli import main

    args = ["rewrite", src, "-o", dst, *options] + ([] if samples is None else ["--calibration", samples])
    start = time.perf_counter()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    if code != 0:
        raise RuntimeError(f"wqkernels {' '.join(args)} failed: {err.getvalue().strip()}")
    return time.perf_counter() - start


def cnn_table(seeds: int, samples: int, cache: str, work: str) -> tuple[list, dict]:
    data = digits()
    x_test, y_test = data[2], data[3]
    sample_path = os.path.join(work, "samples.npy")
    np.save(sample_path, data[0][:samples])
    floats, results = [], {label: ([], [], []) for label, _, _ in RECIPES}
    for seed in range(seeds):
        src = trained("cnn", seed, cache, data)
        base = accuracy(load(src), x_test, y_test)
        floats.append(base)
        for label, options, _ in RECIPES:
            free, calibrated, seconds = results[label]
            dst = os.path.join(work, "out.keras")
            rewrite(src, dst, options, None)
            free.append(accuracy(load(dst), x_test, y_test) - base)
            seconds.append(rewrite(src, dst, options, sample_path))
            calibrated.append(accuracy(load(dst), x_test, y_test) - base)
        print(f"seed {seed}: float {base:.2f} %", file=sys.stderr, flush=True)
    return floats, results


def keras_gptq_table(seeds: int, samples: int, cache: str, work: str) -> list:
    """Keras's model.quantize("gptq") and ``--calibration`` on the token model, 4/3/2 bits."""
    import keras
    from keras.quantizers import GPTQConfig

    data = digits()
    x_train, x_test, y_test = tokens(data[0]), tokens(data[2]), data[3]
    sample_path = os.path.join(work, "tokens.npy")
    np.save(sample_path, x_train[:samples])

    class Tokenizer:  # the samples are token ids already
        def tokenize(self, sample):
            return np.asarray(sample).reshape(-1)

    rows = []
    for bits in (4, 3, 2):
        ours, theirs, reloaded = [], [], []
        for seed in range(seeds):
            src = trained("tokens", seed, cache, data)
            base = accuracy(load(src), x_test, y_test)
            dst = os.path.join(work, "tokens-out.keras")
            rewrite(src, dst, ["--bits", str(bits), "--exclude", "*embedding*"], sample_path)
            ours.append(accuracy(load(dst), x_test, y_test) - base)
            model = load(src)
            config = GPTQConfig(dataset=list(x_train[:samples]), tokenizer=Tokenizer(), weight_bits=bits,
                                num_samples=samples, sequence_length=64, group_size=-1,
                                quantization_layer_structure={"pre_block_layers": [model.layers[0]],
                                                              "sequential_blocks": list(model.layers[1:])})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.quantize("gptq", config=config)
            theirs.append(accuracy(model, x_test, y_test) - base)
            saved = os.path.join(work, "keras-gptq.keras")
            model.save(saved)
            try:
                reloaded.append(f"{accuracy(load(saved), x_test, y_test) - base:+.2f}")
            except Exception as exc:  # what Keras says when it cannot load its own file
                reloaded.append(f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            del model
            keras.backend.clear_session()
        rows.append((bits, ours, theirs, reloaded))
    return rows


def keras_native_table(seeds: int, samples: int, work: str) -> str:
    """``--storage keras`` on the attention model, data-free and calibrated (see the module docstring)."""
    data = models.task("digit-rows")
    sample_path = os.path.join(work, "rows.npy")
    np.save(sample_path, data.x_train[:samples])
    results = {label: ([], [], [], []) for label, _ in NATIVE_RECIPES}
    floats = []
    for seed in range(seeds):
        src, _ = models.trained("attention", seed, log=sys.stderr)
        model = load(src)
        want = models.predict(model, data.x_test)
        base = models.accuracy(model, data.x_test, data.y_test)
        floats.append(base)
        for label, options in NATIVE_RECIPES:
            for calibrated in (False, True):
                dst = os.path.join(work, "native.keras")
                rewrite(src, dst, ["--storage", "keras", *options], sample_path if calibrated else None)
                loaded = load(dst)
                got = models.predict(loaded, data.x_test)
                error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
                accuracy_drop = models.accuracy(loaded, data.x_test, data.y_test) - base
                results[label][2 * calibrated].append(error)
                results[label][2 * calibrated + 1].append(accuracy_drop)
        print(f"seed {seed}: float {base:.2f} %", file=sys.stderr, flush=True)
    lines = [(f"Attention model (`models.build_attention`: EinsumDense embedding, MultiHeadAttention, EinsumDense "
              f"feed-forward, Dense head) on digit rows, float test accuracy {' / '.join(f'{f:.2f}' for f in floats)} "
              f"% ({seeds} seeds); `--storage keras`, the file loaded with `keras.saving.load_model`; relative error "
              f"of the logits against the float model's, mean (per seed), and Δ accuracy in points; calibration on "
              f"{samples} training sequences."), "",
             "| recipe | data-free error | calibrated error | data-free Δ | calibrated Δ |", "|---|---|---|---|---|"]
    for label, options in NATIVE_RECIPES:
        free, free_acc, cal, cal_acc = results[label]
        lines.append(f"| {label} (`{' '.join(options)}`) | {mean(free):.4f} ({', '.join(f'{v:.4f}' for v in free)}) | "
                     f"**{mean(cal):.4f}** ({', '.join(f'{v:.4f}' for v in cal)}) | {mean(free_acc):+.2f} | "
                     f"{mean(cal_acc):+.2f} |")
    return "\n".join(lines)


# ---- report ----------------------------------------------------------------------------------------

def mean(values) -> float:
    return statistics.fmean(values)


def markdown(floats: list, results: dict, samples: int, gptq_rows: list | None) -> str:
    lines = [f"Digits CNN (Conv2D, BatchNormalization, DepthwiseConv2D, 1x1 Conv2D, Dense), float test "
             f"accuracy {' / '.join(f'{f:.2f}' for f in floats)} % ({len(floats)} seeds); Δ in points, mean "
             f"(per seed); calibration on {samples} training images.", "",
             "| recipe | data-free Δ | calibrated Δ | target | calibrated rewrite |",
             "|---|---|---|---|---|"]
    for label, options, target in RECIPES:
        free, calibrated, seconds = results[label]
        met = "" if target is None else (" ✓" if -mean(calibrated) <= target else " ✗")
        lines.append(f"| `{' '.join(options)}` | {mean(free):+.2f} ({', '.join(f'{v:+.2f}' for v in free)}) | "
                     f"**{mean(calibrated):+.2f}** ({', '.join(f'{v:+.2f}' for v in calibrated)}) | "
                     f"{'' if target is None else f'within {target}'}{met} | {mean(seconds):.1f} s |")
    if gptq_rows:
        lines += ["", "Token model (Embedding, Dense per token, Dense head; the Embedding left float for both), "
                  "Keras 3's `model.quantize(\"gptq\")` (per channel, `group_size=-1`) against "
                  "`--calibration --exclude '*embedding*'`:", "",
                  "| bits | wqkernels calibrated Δ | Keras GPTQ Δ | Keras GPTQ file reloaded Δ |",
                  "|---|---|---|---|"]
        for bits, ours, theirs, reloaded in gptq_rows:
            lines.append(f"| {bits} | {mean(ours):+.2f} ({', '.join(f'{v:+.2f}' for v in ours)}) | "
                         f"{mean(theirs):+.2f} ({', '.join(f'{v:+.2f}' for v in theirs)}) | {'; '.join(reloaded)} |")
    return "\n".join(lines)


# ---- memory -----------------------------------------------------------------------------------

#: a child process that runs its arguments as a command and prints its peak resident memory (KiB)
_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_mib(command: list) -> float:
    out = subprocess.run([sys.executable, "-c", _PEAK, *command], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024


def memory_table(samples: int, work: str) -> str:
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.Input((1024,))] + [keras.layers.Dense(1024, activation="relu") for _ in range(24)]
    model = keras.Sequential(layers + [keras.layers.Dense(10)])
    src = os.path.join(work, "mlp.keras")
    model.save(src)
    params = model.count_params()
    sample_path = os.path.join(work, "samples.npy")
    np.save(sample_path, np.random.default_rng(0).standard_normal((samples, 1024)).astype(np.float32))
    dst = os.path.join(work, "out.keras")
    cli = [sys.executable, "-m", "wqkernels", "rewrite", src, "-o", dst]
    runs = [("Keras loads the model (`keras.models.load_model`)",
             [sys.executable, "-c", f"import keras; keras.models.load_model({src!r})"]),
            ("`rewrite --bits 4`", cli + ["--bits", "4"]),
            (f"`rewrite --bits 4 --calibration` ({samples} samples)",
             cli + ["--bits", "4", "--calibration", sample_path]),
            (f"`rewrite --sparsity 0.5 --calibration` ({samples} samples)",
             cli + ["--sparsity", "0.5", "--calibration", sample_path])]
    lines = [f"{params:,} parameters ({params * 4 / 1e6:.1f} MB of float32), 24 Dense layers of 1024 x 1024; "
             "peak resident memory of each command in a process of its own:", "", "| command | peak | time |",
             "|---|---|---|"]
    for label, command in runs:
        start = time.perf_counter()
        peak = peak_mib(command)
        lines.append(f"| {label} | {peak:.0f} MiB | {time.perf_counter() - start:.1f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--keras-gptq", action="store_true", help="also Keras's own GPTQ on the token model")
    parser.add_argument("--memory", action="store_true", help="peak memory on a ~100 MB model instead")
    parser.add_argument("--keras-native", action="store_true",
                        help="--storage keras on the attention model instead")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="where trained models are kept")
    args = parser.parse_args(argv)
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="wqkernels-calibration-") as work:
            print(memory_table(args.samples, work))
        return 0
    if args.keras_native:
        with tempfile.TemporaryDirectory(prefix="wqkernels-calibration-") as work:
            print(keras_native_table(args.seeds, args.samples, work))
        return 0
    with tempfile.TemporaryDirectory(prefix="wqkernels-calibration-") as work:
        floats, results = cnn_table(args.seeds, args.samples, args.cache, work)
        gptq_rows = keras_gptq_table(args.seeds, args.samples, args.cache, work) if args.keras_gptq else None
    print(markdown(floats, results, args.samples, gptq_rows))
    if min(floats) < TARGET_FLOAT:
        print(f"\nnote: a float model is under {TARGET_FLOAT} %: the targets do not apply to it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
