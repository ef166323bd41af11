"""Train a small CNN on scikit-learn's digits (or, without scikit-learn, on random data) and save it.

    python examples/make_model.py model.keras        # also .h5 (legacy) or .weights.h5
    wqkernels rewrite model.keras -o model.int4.keras --bits 4 --sparsity 0.5
    python examples/compare.py model.keras model.int4.keras

Keras 3 on the JAX backend (``pip install keras jax``); about 20 s on 2 CPU cores.
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def digits():
    """(x_train, y_train, x_test, y_test): 8x8 digits, or random images with a learnable label."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        rng = np.random.default_rng(0)
        x = rng.random((1797, 8, 8, 1), dtype=np.float32)
        y = (x[:, :4].sum(axis=(1, 2, 3)) * 10 / 32).astype(int) % 10
    else:
        data = load_digits()
        x = (data.images / 16.0).astype(np.float32)[..., None]
        y = data.target
    order = np.random.default_rng(1).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 1, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def main(path):
    x, y, xt, yt = digits()
    m = model()
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=15, batch_size=64, verbose=0)
    _, accuracy = m.evaluate(xt, yt, verbose=0)
    if path.endswith(".weights.h5"):
        m.save_weights(path)
    else:
        m.save(path)
    print(f"saved {path}: {m.count_params()} parameters, test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "model.keras")
