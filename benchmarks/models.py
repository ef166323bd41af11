"""Small Keras models trained on scikit-learn's digits, for the fidelity benchmark and experiments.

Keras 3 on the JAX backend, fixed seeds, each model trains in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

#: Keras weight names that are pruned and quantized (KERAS_FORMATS.md section 7)
PRUNABLE = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings", "recurrent_kernel")


def digits(seed: int = 0, test_fraction: float = 0.3):
    """sklearn digits as ((x_train, y_train), (x_test, y_test)): float32 images in [0, 1], (N, 8, 8, 1).

    A stratified split, the same for a given seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


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


def build_mlp(seed: int = 0, hidden: int = 128):
    """Flatten -> Dense -> Dense -> Dense."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Flatten(name="flatten"),
        layers.Dense(hidden, activation="relu", name="dense1"),
        layers.Dense(hidden // 2, activation="relu", name="dense2"),
        layers.Dense(10, activation="softmax", name="logits"),
    ], name="digits_mlp")


def build_cnn_wide(seed: int = 0):
    """The CNN of :func:`build_cnn` at twice the width (106k parameters instead of 44k)."""
    return build_cnn(seed, width=32)


BUILDERS = {"cnn": build_cnn, "cnn_wide": build_cnn_wide, "mlp": build_mlp, "cnn_bn": build_cnn_bn}
EPOCHS = {"cnn": 40, "cnn_wide": 30, "mlp": 40, "cnn_bn": 30}


def train(name: str, data, seed: int = 0, epochs: int | None = None, verbose: int = 0):
    """Build and train the model `name` (a key of BUILDERS) on `data`; returns the model."""
    import keras

    (x_train, y_train), _ = data
    model = BUILDERS[name](seed)
    epochs = EPOCHS[name] if epochs is None else epochs
    steps = epochs * -(-len(x_train) // 32)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs,
              shuffle=True, verbose=verbose)
    return model


def accuracy(model, x, y) -> float:
    """Top-1 accuracy in percent."""
    pred = model.predict(x, batch_size=512, verbose=0)
    return 100.0 * float(np.mean(np.argmax(pred, axis=-1) == y))


def prunable_weights(model) -> dict:
    """{path: (variable, channel_axis)} for the model's prunable kernels, in model order.

    Channel axis: last for Dense and Conv kernels, 2 (input channels) for depthwise kernels
    (a DepthwiseConv2D's weight is called ``kernel`` in Keras 3).
    """
    import keras

    out = {}
    for layer in model.layers:
        for var in layer.weights:
            name = var.path.split("/")[-1]
            if name in PRUNABLE:
                depthwise = name == "depthwise_kernel" or isinstance(layer, keras.layers.DepthwiseConv2D)
                axis = 2 if depthwise else var.ndim - 1
                out[var.path] = (var, axis)
    return out
