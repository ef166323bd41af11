"""What the tests that run Keras share: Keras 3 on JAX (the module is skipped without them),
their marks, and random weights that reach every corner of the quantized layouts.

    from .keras_env import KERAS_MARKS, keras
    pytestmark = [*KERAS_MARKS, ...]
"""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
pytest.importorskip("jax", reason="keras tests need jax (the CPU backend)")
keras = pytest.importorskip("keras", reason="keras tests need keras 3")

#: the keras marker, and keras 3.15's np.array(variable) calls, which numpy 2 deprecates
KERAS_MARKS = [
    pytest.mark.keras,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]


def randomize(model, seed: int):
    """Random weights over a wide range of magnitudes, with an all-zero channel and a channel of
    tiny values in each kernel."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        w = rng.standard_normal(v.shape).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 2))
        if len(v.shape) >= 2:
            w[..., 0] = 0
            w[..., 1 % v.shape[-1]] *= np.float32(1e-7)
        v.assign(w)
    return model


def strip_ids(config):
    """A config without Keras's shared-object bookkeeping."""
    if isinstance(config, dict):
        return {k: strip_ids(v) for k, v in config.items() if k != "shared_object_id"}
    return config
