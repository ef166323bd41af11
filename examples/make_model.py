"""Train a small CNN on scikit-learn's digits and save it.

    python examples/make_model.py model.keras        # also .h5 (legacy) or .weights.h5
    wqkernels rewrite model.keras -o model.int4.keras --bits 4 --sparsity 0.5
    python examples/compare.py model.keras model.int4.keras

Needs keras, jax and scikit-learn; about 20 s on 2 CPU cores.
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def digits():
    """(x_train, y_train, x_test, y_test): scikit-learn's 8x8 digits, shuffled with a fixed seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    order = np.random.default_rng(1).permutation(len(x))
    x, y = x[order], data.target[order]
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
