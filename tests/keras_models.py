"""Tiny Keras 3 models (JAX backend) covering the layer kinds the file layer must handle, and the
independent expectation of what a rewrite does to them, computed with ``wqkernels.reference``.

Sets ``KERAS_BACKEND=jax`` unless set; skips (under pytest) where keras or jax cannot be imported.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
pytest.importorskip("jax", reason="keras tests need jax (the CPU backend)")
keras = pytest.importorskip("keras", reason="keras tests need keras 3")
layers = keras.layers

from wqkernels import reference

#: Keras variable names that are kernels (pruned/quantized); everything else is kept
KERNEL_NAMES = ("kernel", "recurrent_kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")


def randomize(model: keras.Model, seed: int, optimizer_variables=()) -> keras.Model:
    """Random normal weights everywhere (biases and BN statistics included; variances positive),
    then random moments for the given optimizer variables (velocities positive) from the same
    stream, so that no weight or moment is all zeros or ones."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        w = rng.standard_normal(v.shape).astype(np.float32) * 0.5
        if "variance" in v.path:
            w = np.abs(w) + 0.5
        v.assign(w)
    for v in optimizer_variables:
        if v.dtype == "float32" and len(v.shape) > 0:
            w = rng.standard_normal(v.shape).astype(np.float32) * 0.01
            v.assign(np.abs(w) if "velocity" in v.path else w)
    return model


def conv_model(seed: int = 0) -> keras.Model:
    """Conv2D, BatchNormalization, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, a nested
    Sequential of Dense layers and a shared Dense layer."""
    inp = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = layers.Conv2DTranspose(6, 3, padding="same", name="convt")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    sub = keras.Sequential([keras.Input((6,)), layers.Dense(12, name="inner_a"),
                            layers.Dense(8, name="inner_b")], name="sub")
    x = sub(x)
    shared = layers.Dense(8, name="shared")
    x = shared(shared(x))
    return randomize(keras.Model(inp, x, name="convnet"), seed)


def rnn_model(seed: int = 1) -> keras.Model:
    """Embedding, LSTM and GRU."""
    inp = keras.Input((5,), dtype="int32", name="tokens")
    y = layers.Embedding(20, 8, name="emb")(inp)
    y = layers.LSTM(6, return_sequences=True, name="lstm")(y)
    y = layers.GRU(4, name="gru")(y)
    return randomize(keras.Model(inp, y, name="rnn"), seed)


MODELS = {"conv": conv_model, "rnn": rnn_model}


def sample_input(model: keras.Model, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (2,) + tuple(model.inputs[0].shape[1:])
    if model.inputs[0].dtype.startswith("int"):
        return rng.integers(0, 20, size=shape).astype(np.int32)
    return rng.standard_normal(shape).astype(np.float32)


def _owner(model: keras.Model, variable) -> str:
    """The class of the layer owning `variable` (descending into nested models)."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if any(v is variable for v in layer._trainable_variables + layer._non_trainable_variables):
            return type(layer).__name__
        cell = getattr(layer, "cell", None)
        if cell is not None and any(v is variable for v in cell.weights):
            return type(layer).__name__
    raise LookupError(variable.path)


def channel_axis(layer_class: str, name: str, ndim: int) -> int:
    """The spec's channel axes (KERAS_FORMATS.md section 7), written out independently."""
    if name == "embeddings":
        return 0
    if name == "depthwise_kernel" or (name == "kernel" and layer_class.startswith("DepthwiseConv")):
        return 2 if ndim == 4 else ndim - 2
    if name == "kernel" and layer_class.endswith("Transpose"):
        return ndim - 2
    return ndim - 1


def expected_weights(model: keras.Model, bits: int, method: str, storage: str = "float32",
                     symmetric: bool = True, rounding: str | None = None, narrow_bits: int = 0) -> list:
    """The model's weights with every kernel fake-quantized per channel by the NumPy reference
    (rounding None: each kernel's ``default_rounding`` of its role, as a rewrite does; narrow
    kernels at ``channel_bits(bits, fan_in, narrow_bits)``)."""
    from wqkernels.allocation import channel_bits, default_rounding
    from wqkernels.files.roles import fan_in

    out = []
    for v in model.weights:
        w = np.asarray(v.numpy())
        name = v.path.rsplit("/", 1)[-1]
        if name in KERNEL_NAMES and w.ndim >= 2:
            owner = _owner(model, v)
            axis = channel_axis(owner, name, w.ndim)
            fan = fan_in(owner, name, w.shape)
            width = bits if fan is None else channel_bits(bits, fan, narrow_bits)
            w = reference.fake_quantize(w, width, axis=axis, method=method, symmetric=symmetric,
                                        rounding=default_rounding(name) if rounding is None else rounding)
            if storage == "float16":
                w = w.astype(np.float16).astype(np.float32)
        out.append(w)
    return out
