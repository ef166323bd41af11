"""Keras 2-layout weight files written with h5py alone, as Keras 2.0 / tf.keras wrote them.

The test suite builds them in a fixture (no binary files in the repository); run this script to
write them into this directory for inspection::

    python tests/data/make_keras2_files.py

Layouts reproduced (see ../shared/KERAS_FORMATS.md sections 1-3): fixed-length byte-string
attributes, ``kernel:0`` weight names, Keras 2.0's inner group that is not the layer name
(``conv2d_1/conv2d_1_1/kernel:0``), weightless layers with an empty float64 ``weight_names``, a
Sequential ``model_config`` in the Keras 2.0 list form, ``optimizer_weights`` named
``Variable_N:0``, and ``layer_names`` split into ``layer_names0``/``layer_names1``.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

#: the model both files describe: Conv2D(4, 3) on (6, 6, 3), DepthwiseConv2D(3, same),
#: Flatten, Dense(5) -- and, in the weights-only file, the same layers with tf.keras names
LAYERS = [
    ("conv2d_1", "Conv2D", [("kernel", (3, 3, 3, 4)), ("bias", (4,))]),
    ("depthwise_conv2d_1", "DepthwiseConv2D", [("depthwise_kernel", (3, 3, 4, 1)), ("bias", (4,))]),
    ("flatten_1", "Flatten", []),
    ("dense_1", "Dense", [("kernel", (64, 5)), ("bias", (5,))]),
]


def weights(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random float32 weights per layer, in Keras weight order."""
    rng = np.random.default_rng(seed)
    return {name: [rng.standard_normal(shape).astype(np.float32) for _, shape in ws]
            for name, _, ws in LAYERS}


def _names(values) -> np.ndarray:
    """A list attribute as Keras 2 wrote it: fixed-length bytes."""
    return np.array([v.encode("utf8") for v in values], dtype="S")


def _layer_groups(root: h5py.Group, values: dict, inner: str) -> None:
    for name, _, ws in LAYERS:
        g = root.create_group(name)
        if not ws:
            g.attrs["weight_names"] = np.array([], dtype=np.float64)
            continue
        prefix = f"{name}_1" if inner == "keras20" else name  # Keras 2.0's odd inner group
        wnames = [f"{prefix}/{w}:0" for w, _ in ws]
        g.attrs["weight_names"] = _names(wnames)
        for wn, arr in zip(wnames, values[name]):
            g.create_dataset(wn, data=arr)


def keras20_config() -> str:
    layers = []
    for name, cls, _ in LAYERS:
        cfg = {"name": name, "trainable": True}
        if name == "conv2d_1":
            cfg.update(filters=4, kernel_size=[3, 3], batch_input_shape=[None, 6, 6, 3])
        layers.append({"class_name": cls, "config": cfg})
    return json.dumps({"class_name": "Sequential", "config": layers})


def write_keras20_full(path, seed: int = 0) -> dict:
    """A Keras 2.0-era full-model .h5 with an optimizer; returns the weights written."""
    values = weights(seed)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(b"2.0.5")
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        f.attrs["model_config"] = np.bytes_(keras20_config().encode())
        f.attrs["training_config"] = np.bytes_(json.dumps({"loss": "mse", "optimizer_config": {
            "class_name": "SGD", "config": {"lr": 0.01}}}).encode())
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = _names([n for n, _, _ in LAYERS])
        mw.attrs["backend"] = np.bytes_(b"tensorflow")
        mw.attrs["keras_version"] = np.bytes_(b"2.0.5")
        _layer_groups(mw, values, "keras20")
        opt = f.create_group("optimizer_weights")
        opt.attrs["weight_names"] = _names([f"Variable_{i}:0" for i in range(3)])
        for i in range(3):
            opt.create_dataset(f"Variable_{i}:0", data=np.full((4,), i, np.float32))
    return values


def write_tfkeras_weights(path, seed: int = 0) -> dict:
    """A tf.keras ``save_weights`` .h5 (weights only, at the root) with ``layer_names`` split."""
    values = weights(seed)
    with h5py.File(path, "w") as f:
        names = _names([n for n, _, _ in LAYERS])
        first, second = np.array_split(names, 2)  # as Keras does for lists over 64 KB
        f.attrs["layer_names0"] = first
        f.attrs["layer_names1"] = second
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        f.attrs["keras_version"] = np.bytes_(b"2.4.0")
        _layer_groups(f, values, "tfkeras")
    return values


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    write_keras20_full(os.path.join(here, "keras20_full.h5"))
    write_tfkeras_weights(os.path.join(here, "tfkeras_weights.h5"))
