"""Small Keras models trained on data that ships with scikit-learn, for the fidelity benchmark.

Eight architectures over four tasks (Keras 3, JAX backend, fixed seeds), the BatchNorm digits CNN
at three widths (``cnn_bn_8``, ``cnn_bn``, ``cnn_bn_32``); each trains in about a minute or less on
2 CPU cores.  Every model outputs raw scores (logits, or the regression value), so the
benchmark can compare outputs before any softmax or sigmoid hides their error.

Tasks (:func:`task`):

- ``digits``: scikit-learn's 8x8 digits, (N, 8, 8, 1) in [0, 1], 1257 train / 540 test
  (stratified, seed 0); ``digit-rows`` is the same split as sequences of 8 rows of 8 pixels.
- ``edges``: 16x16 RGB patches of scikit-learn's two sample images, target the edge map (the
  gradient magnitude of the blurred grey image above its 80th percentile); train on the left
  three quarters of each image, test on the right quarter.
- ``diabetes``: scikit-learn's diabetes regression, 10 standardised features, standardised target,
  70 / 30 split (seed 0).

Trained models are cached as ``.keras`` files (:func:`trained`) so reruns skip training; the cache
key holds a hash of the architecture's code and training settings, so editing a builder retrains.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
import time
from dataclasses import dataclass

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

#: Keras weight names that are pruned and quantized (KERAS_FORMATS.md section 7)
PRUNABLE = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings", "recurrent_kernel")

#: where trained models are kept unless told otherwise
DEFAULT_CACHE = os.environ.get("WQKERNELS_FIDELITY_CACHE",
                               os.path.join(os.path.expanduser("~"), ".cache", "wqkernels-fidelity"))


@dataclass(frozen=True)
class Task:
    """A data set split for training and testing, and what the model's output means."""

    name: str
    kind: str  # "classification" (logits), "map" (per-pixel logits) or "regression"
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# ---- tasks --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def task(name: str) -> Task:
    """The task `name`: "digits", "digit-rows", "edges" or "diabetes" (see the module docstring)."""
    if name in ("digits", "digit-rows"):
        (x_train, y_train), (x_test, y_test) = digits(0)
        if name == "digit-rows":
            x_train, x_test = x_train[..., 0], x_test[..., 0]
        return Task(name, "classification", x_train, y_train, x_test, y_test)
    if name == "edges":
        return Task(name, "map", *_edges())
    if name == "diabetes":
        return Task(name, "regression", *_diabetes())
    raise ValueError(f"unknown task {name!r}")


def digits(seed: int = 0, test_fraction: float = 0.3):
    """sklearn digits as ((x_train, y_train), (x_test, y_test)): float32 images in [0, 1], (N, 8, 8, 1)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


def _edges(patch: int = 16, stride: int = 16):
    """Patches of the two sample images and their edge maps, split by image column."""
    from scipy import ndimage
    from sklearn.datasets import load_sample_images

    parts = {"train": ([], []), "test": ([], [])}
    for image in load_sample_images().images:
        rgb = image.astype(np.float32) / 255.0
        grey = ndimage.gaussian_filter(rgb.mean(axis=2), 1.5)
        magnitude = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
        edges = (magnitude > np.percentile(magnitude, 80)).astype(np.float32)
        height, width = grey.shape
        split = (3 * width) // 4
        for top in range(0, height - patch + 1, stride):
            for left in range(0, width - patch + 1, stride):
                side = "train" if left + patch <= split else "test" if left >= split else None
                if side is not None:
                    parts[side][0].append(rgb[top:top + patch, left:left + patch])
                    parts[side][1].append(edges[top:top + patch, left:left + patch, None])
    return tuple(np.stack(a) for side in ("train", "test") for a in parts[side])


def _diabetes():
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.3, random_state=0)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = y_train.mean(), y_train.std()
    return ((x_train - mean) / std).astype(np.float32), ((y_train - y_mean) / y_std).astype(np.float32)[:, None], \
        ((x_test - mean) / std).astype(np.float32), ((y_test - y_mean) / y_std).astype(np.float32)[:, None]


# ---- architectures ------------------------------------------------------------------------------

def build_cnn_bn(width: int = 16):
    """Conv2D + BN -> DepthwiseConv2D + BN -> 1x1 Conv2D + BN -> pool -> Conv2D + BN -> Dense -> Dense."""
    import keras
    from keras import layers

    def conv_bn(layer, name):
        return [layer, layers.BatchNormalization(name=f"{name}_bn"), layers.ReLU(name=f"{name}_relu")]

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        *conv_bn(layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv1"), "conv1"),
        *conv_bn(layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise"), "depthwise"),
        *conv_bn(layers.Conv2D(2 * width, 1, use_bias=False, name="pointwise"), "pointwise"),
        layers.MaxPooling2D(2, name="pool"),
        *conv_bn(layers.Conv2D(2 * width, 3, padding="same", use_bias=False, name="conv2"), "conv2"),
        layers.Flatten(name="flatten"),
        layers.Dropout(0.3, name="dropout"),
        layers.Dense(64, activation="relu", name="dense"),
        layers.Dense(10, name="logits"),
    ], name="cnn_bn")


def build_cnn_bn_8():
    """:func:`build_cnn_bn` at width 8 (11k parameters)."""
    return build_cnn_bn(8)


def build_cnn_bn_32():
    """:func:`build_cnn_bn` at width 32 (121k parameters), as wide as the callback benchmark's CNN."""
    return build_cnn_bn(32)


def build_vgg():
    """VGG-style: two 3x3 ReLU convolutions per stage, max pooling, two dense layers; no BN."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="block1_conv1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="block1_conv2"),
        layers.MaxPooling2D(2, name="block1_pool"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="block2_conv1"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="block2_conv2"),
        layers.MaxPooling2D(2, name="block2_pool"),
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="fc1"),
        layers.Dense(10, name="logits"),
    ], name="vgg")


def build_vgg_map():
    """A fully convolutional VGG-style edge detector without BN: 3x3 ReLU convolutions, a pooling
    stage and its upsampling, per-pixel logits."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((16, 16, 3)),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="block1_conv1"),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="block1_conv2"),
        layers.MaxPooling2D(2, name="block1_pool"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="block2_conv1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="block2_conv2"),
        layers.UpSampling2D(2, name="upsample"),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="decode_conv"),
        layers.Conv2D(1, 1, name="map"),
    ], name="vgg_map")


def build_separable():
    """MobileNet-style: SeparableConv2D, DepthwiseConv2D with a 1x1 convolution, no BN."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="stem"),
        layers.SeparableConv2D(32, 3, padding="same", activation="relu", name="separable1"),
        layers.MaxPooling2D(2, name="pool"),
        layers.SeparableConv2D(64, 3, padding="same", activation="relu", name="separable2"),
        layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise"),
        layers.Conv2D(64, 1, activation="relu", name="pointwise"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, name="logits"),
    ], name="separable")


def build_mlp(hidden: int = 128):
    """Flatten -> Dense -> Dense -> Dense."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Flatten(name="flatten"),
        layers.Dense(hidden, activation="relu", name="dense1"),
        layers.Dense(hidden // 2, activation="relu", name="dense2"),
        layers.Dense(10, name="logits"),
    ], name="mlp")


def build_rnn():
    """LSTM then GRU over the 8 rows of a digit, Dense classifier."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((8, 8)),
        layers.LSTM(64, return_sequences=True, name="lstm"),
        layers.GRU(64, name="gru"),
        layers.Dense(10, name="logits"),
    ], name="rnn")


def build_attention(dim: int = 32):
    """One transformer block over the 8 rows of a digit: a per-position EinsumDense embedding,
    MultiHeadAttention, LayerNormalization, an EinsumDense feed-forward, pooling, Dense."""
    import keras
    from keras import layers

    rows = keras.Input((8, 8))
    x = layers.EinsumDense("btf,tfd->btd", (8, dim), bias_axes="td", name="embed")(rows)
    a = layers.MultiHeadAttention(4, dim // 4, name="attention")(x, x)
    x = layers.LayerNormalization(name="norm1")(layers.Add(name="add1")([x, a]))
    f = layers.EinsumDense("btd,df->btf", (None, 2 * dim), bias_axes="f", activation="relu", name="ffn1")(x)
    f = layers.EinsumDense("btf,fd->btd", (None, dim), bias_axes="d", name="ffn2")(f)
    x = layers.LayerNormalization(name="norm2")(layers.Add(name="add2")([x, f]))
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(rows, layers.Dense(10, name="logits")(x), name="attention")


def build_regression():
    """Dense -> Dense -> Dense(1) on the diabetes features."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((10,)),
        layers.Dense(64, activation="relu", name="dense1"),
        layers.Dense(64, activation="relu", name="dense2"),
        layers.Dense(1, name="value"),
    ], name="regression")


@dataclass(frozen=True)
class Architecture:
    build: callable
    task: str
    epochs: int
    learning_rate: float = 3e-3
    batch_size: int = 32
    uses: tuple = ()  # the builders `build` calls, whose code is part of the fingerprint too


ARCHITECTURES = {
    "cnn_bn": Architecture(build_cnn_bn, "digits", 40),
    "cnn_bn_8": Architecture(build_cnn_bn_8, "digits", 40, uses=(build_cnn_bn,)),
    "cnn_bn_32": Architecture(build_cnn_bn_32, "digits", 40, uses=(build_cnn_bn,)),
    "vgg": Architecture(build_vgg, "digits", 30, 2e-3),
    "vgg_map": Architecture(build_vgg_map, "edges", 20, 3e-3),
    "separable": Architecture(build_separable, "digits", 30, 2e-3),
    "mlp": Architecture(build_mlp, "digits", 40),
    "rnn": Architecture(build_rnn, "digit-rows", 30),
    "attention": Architecture(build_attention, "digit-rows", 40, 2e-3),
    "regression": Architecture(build_regression, "diabetes", 30, 1e-3),
}


# ---- training, caching, evaluation --------------------------------------------------------------

def train(name: str, seed: int = 0, verbose: int = 0):
    """Build and train the architecture `name` (a key of ARCHITECTURES) with `seed`; returns the model."""
    import keras

    arch = ARCHITECTURES[name]
    data = task(arch.task)
    keras.utils.set_random_seed(seed)
    model = arch.build()
    steps = arch.epochs * -(-len(data.x_train) // arch.batch_size)
    optimizer = keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(arch.learning_rate, steps),
                                       weight_decay=1e-4)
    loss = {"classification": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "map": keras.losses.BinaryCrossentropy(from_logits=True),
            "regression": keras.losses.MeanSquaredError()}[data.kind]
    model.compile(optimizer=optimizer, loss=loss)
    model.fit(data.x_train, data.y_train, batch_size=arch.batch_size, epochs=arch.epochs, shuffle=True,
              verbose=verbose)
    return model


def fingerprint(name: str) -> str:
    """A short hash of what makes the trained model: the builder's code, the settings, Keras's version."""
    import keras

    arch = ARCHITECTURES[name]
    text = inspect.getsource(arch.build) + repr((arch.task, arch.epochs, arch.learning_rate, arch.batch_size))
    text += "".join(inspect.getsource(f) for f in arch.uses)
    text += inspect.getsource(train) + keras.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def trained(name: str, seed: int, cache: str = DEFAULT_CACHE, log=None) -> tuple[str, float | None]:
    """The path of the trained model's ``.keras`` file in `cache`, training it when it is not there;
    with the training time in seconds (None when it came from the cache)."""
    path = os.path.join(cache, f"{name}-s{seed}-{fingerprint(name)}.keras")
    if os.path.exists(path):
        return path, None
    import keras

    os.makedirs(cache, exist_ok=True)
    start = time.perf_counter()
    model = train(name, seed)
    seconds = time.perf_counter() - start
    tmp = path[:-len(".keras")] + f".tmp{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)
    if log is not None:
        print(f"trained {name} seed {seed} in {seconds:.0f} s", file=log, flush=True)
    del model
    keras.backend.clear_session()
    return path, seconds


def predict(model, x) -> np.ndarray:
    """The model's raw outputs as float64."""
    return np.asarray(model.predict(x, batch_size=1024, verbose=0), dtype=np.float64)


def accuracy(model, x, y) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float(np.mean(np.argmax(predict(model, x), axis=-1) == y))


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
