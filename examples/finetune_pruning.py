"""Fine-tune a digits CNN to 90 % sparsity and to 2:4 with PruningCallback, then store it as int8.

    cd examples && python finetune_pruning.py

Trains a CNN (Conv2D, BatchNorm, DepthwiseConv2D, 1x1 Conv2D, Dense) on scikit-learn's 8x8
digits, fine-tunes a copy of it for 10 epochs with ``PruningCallback(sparsity=0.9)`` and another
with ``PruningCallback(sparsity="2:4")``, saves each as a plain ``.keras`` model, then stores
each with int8 codes through the command line:

    wqkernels rewrite pruned-0.9.keras -o pruned-0.9.int8.keras --bits 8 --storage packed --strip-optimizer
    wqkernels restore pruned-0.9.int8.keras -o pruned-0.9.restored.keras   # a file stock Keras loads
    wqkernels rewrite pruned-0.9.keras -o pruned-0.9.native.keras --bits 8 --storage keras --strip-optimizer
    wqkernels rewrite pruned-0.9.keras -o pruned-0.9.float32.keras --bits 8 --strip-optimizer

The packed file is the smallest (only wqkernels reads it; ``restore`` turns it back), the native one
holds Keras's own int8 Dense layers (stock Keras loads and runs them as int8; the zeros stay zero
codes), the float32 one keeps every weight float32 on the int8 grid.  Needs keras, jax and
scikit-learn; about two minutes on 2 CPU cores.
"""
import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from make_model import digits  # noqa: E402

import wqkernels  # noqa: E402
from wqkernels.keras import PruningCallback  # noqa: E402

EPOCHS, FINE_TUNE_EPOCHS, BATCH = 30, 10, 32


def model():
    keras.utils.set_random_seed(0)
    layers = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(32, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.DepthwiseConv2D(3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.Conv2D(64, 1, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])


def compile_model(m, learning_rate, epochs, samples):
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * -(-samples // BATCH))
    m.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def accuracy(path, xt, yt) -> float:
    m = keras.models.load_model(path, compile=False)
    return float((m.predict(xt, verbose=0).argmax(axis=1) == yt).mean())


def prunable_sparsity(path) -> str:
    """Zeros among the kernels of a saved file (Keras-native int8 ones read back as floats)."""
    kernels = [w.path for w in wqkernels.inspect(path) if w.role == "kernel" and len(w.shape) >= 2]
    values = wqkernels.load_weights(path)
    total = sum(values[p].size for p in kernels)
    zeros = sum(int(np.count_nonzero(values[p] == 0)) for p in kernels)
    return f"{zeros}/{total} prunable weights zero ({zeros / total:.4f})"


def wqkernels_cli(*args):
    subprocess.run([sys.executable, "-m", "wqkernels", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def main():
    x, y, xt, yt = digits()
    float_model = compile_model(model(), 3e-3, EPOCHS, len(x))
    float_model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0)
    float_model.save("float.keras")
    print(f"float.keras: test accuracy {accuracy('float.keras', xt, yt):.4f}")

    for sparsity in (0.9, "2:4"):
        name = f"pruned-{sparsity}".replace(":", "_")
        m = compile_model(model(), 1e-3, FINE_TUNE_EPOCHS, len(x))
        m.set_weights(float_model.get_weights())
        m.fit(x, y, epochs=FINE_TUNE_EPOCHS, batch_size=BATCH, verbose=0, callbacks=[PruningCallback(sparsity)])
        m.save(f"{name}.keras")  # a plain Keras model: nothing to strip
        print(f"{name}.keras: test accuracy {accuracy(f'{name}.keras', xt, yt):.4f}, "
              f"{prunable_sparsity(f'{name}.keras')}")

        # int8 codes, bit-packed (only wqkernels reads them; restore gives stock Keras a file) ...
        wqkernels_cli("rewrite", f"{name}.keras", "-o", f"{name}.int8.keras", "--bits", 8, "--storage", "packed",
                      "--strip-optimizer")
        wqkernels_cli("restore", f"{name}.int8.keras", "-o", f"{name}.restored.keras")
        # ... or Keras's own int8 layers, which stock Keras loads and runs as int8 ...
        wqkernels_cli("rewrite", f"{name}.keras", "-o", f"{name}.native.keras", "--bits", 8, "--storage", "keras",
                      "--strip-optimizer")
        # ... or the same values as float32, which every Keras loads as it is
        wqkernels_cli("rewrite", f"{name}.keras", "-o", f"{name}.float32.keras", "--bits", 8, "--strip-optimizer")
        for suffix in ("int8", "restored", "native", "float32"):
            path = f"{name}.{suffix}.keras"
            loaded = "" if suffix == "int8" else f", test accuracy {accuracy(path, xt, yt):.4f}"
            print(f"  {path}: {os.path.getsize(path):,} bytes{loaded}, {prunable_sparsity(path)}")


if __name__ == "__main__":
    main()
