"""Calibration samples made from a model's own BatchNormalization statistics, without data.

Every BatchNormalization layer holds the mean and variance of its inputs over the training set
(its moving statistics).  :func:`synthesize` optimises a batch of inputs, with Adam, so that
the per-channel mean and standard deviation of each BatchNormalization's inputs over the batch
match those statistics (ZeroQ, Cai et al. 2020; "The Knowledge Within", Haroush et al. 2020),
under a small L2 and total-variation prior on the inputs and, for a classifier, a class loss
that spreads the samples over its classes.  The result serves as the samples of
:func:`wqkernels.keras.calibrate`.

Keras only runs the model: the inputs are the one trainable weight of a Keras model that calls
the frozen float model (in inference mode) and whose loss is the mismatch of the moments, fitted
with ``model.fit``; it runs on any Keras backend.

>>> from wqkernels import Recipe
>>> from wqkernels.keras import Synthetic, rewrite_calibrated
>>> report = rewrite_calibrated("model.keras", "sparse.keras", Recipe(sparsity=0.9), Synthetic())  # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from ..files import KerasFileError
from ..progress import progress_bar
from .calls import intercepted, sublayers

__all__ = ["Synthetic", "synthesize", "batch_normalizations"]


@dataclass(frozen=True)
class Synthetic:
    """How :func:`synthesize` makes samples.

    Attributes
    ----------
    count : int
        How many samples (on the digits CNNs at sparsity 0.9, 512 lost 2.22 points on
        ``cnn_bn_8`` where 256 lost 3.52, mean of 3 seeds).
    steps, learning_rate : int, float
        Adam steps, all on the whole batch, and their rate.
    l2, total_variation : float
        Weights of the priors: the mean square of the inputs, and of the differences of
        neighbours along each spatial axis (inputs of 3 or more dimensions).
    labels : float
        Weight of a cross-entropy that gives sample i the class i mod k, when the model has one
        output of shape (batch, k > 1): class probabilities where the outputs of the initial
        samples are non-negative and sum to 1 (a softmax), logits otherwise; it spreads the
        samples over the classes as real data is.
    seed : int
        Seed of the initial Gaussian noise.
    """

    count: int = 512
    steps: int = 500
    learning_rate: float = 0.1
    l2: float = 1e-4
    total_variation: float = 1e-4
    labels: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("count", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("learning_rate", "l2", "total_variation", "labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def batch_normalizations(model) -> list:
    """The BatchNormalization layers of `model`, those of nested models and wrappers included."""
    return [layer for layer in sublayers(model) if isinstance(layer, keras.layers.BatchNormalization)]


class _Moments(keras.layers.Layer):
    """The mismatch of a tensor's per-channel batch mean and standard deviation with a
    BatchNormalization's moving ones, each channel's in units of its moving standard deviation."""

    def __init__(self, bn, **kwargs):
        super().__init__(**kwargs)
        axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
        self.channel_axes = tuple(int(a) for a in axis)
        mean = np.asarray(keras.ops.convert_to_numpy(bn.moving_mean), np.float32)
        var = np.asarray(keras.ops.convert_to_numpy(bn.moving_variance), np.float32) + np.float32(bn.epsilon)
        self.mean, self.std = mean, np.sqrt(var)

    def call(self, x):
        axes = [i for i in range(len(x.shape)) if i not in [a % len(x.shape) for a in self.channel_axes]]
        mean = ops.mean(x, axis=axes)
        std = ops.sqrt(ops.mean(ops.square(x - ops.mean(x, axis=axes, keepdims=True)), axis=axes) + 1e-8)
        return ops.mean(ops.square((mean - self.mean) / self.std)) + ops.mean(ops.square((std - self.std) / self.std))


class _Inversion(keras.Model):
    """A model whose one trainable weight is the batch of inputs; its loss is the moments'
    mismatch at every call of a BatchNormalization, seen as the float model runs, plus the priors."""

    def __init__(self, model, bns, shapes, settings: Synthetic):
        super().__init__()
        self.float_model, self.settings, self.bns = model, settings, list(bns)
        self.moments = [_Moments(bn) for bn in self.bns]
        self.targets, self.probabilities = None, False  # a classifier's, set by `classify`
        self.inputs_ = [self.add_weight(shape=(settings.count,) + tuple(shape), name=f"input_{i}",
                                        initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=settings.seed + i))
                        for i, shape in enumerate(shapes)]

    def build(self, input_shape=None):
        """Nothing to build: the inputs are made in the constructor, the float model is built."""

    def call(self, x, training=False):
        """The moments' mismatch, averaged over the calls of the BatchNormalizations, and the
        model's output."""
        values = [ops.convert_to_tensor(v) for v in self.inputs_]
        moments = {id(bn): m for bn, m in zip(self.bns, self.moments)}
        mismatches = []
        with intercepted(self.bns, lambda bn, args, kwargs: mismatches.append(moments[id(bn)](
                args[0] if args else kwargs["inputs"]))):
            y = self.float_model(values[0] if len(values) == 1 else values, training=False)
        return sum(mismatches) / max(1, len(mismatches)), y

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, output = y_pred
        if self.targets is not None:  # each sample a class of its own (the output's last axis)
            loss = loss + self.settings.labels * ops.mean(keras.losses.sparse_categorical_crossentropy(
                self.targets, output, from_logits=not self.probabilities))
        for v in self.inputs_:
            v = ops.convert_to_tensor(v)
            loss = loss + self.settings.l2 * ops.mean(ops.square(v))
            if len(v.shape) >= 3 and self.settings.total_variation:  # (count, spatial..., channels)
                for axis in range(1, len(v.shape) - 1):
                    n = v.shape[axis]
                    diff = ops.take(v, np.arange(1, n), axis=axis) - ops.take(v, np.arange(n - 1), axis=axis)
                    loss = loss + self.settings.total_variation * ops.mean(ops.square(diff))
        return loss

    def classify(self) -> None:
        """Give sample i the class i mod k when the model's one output has the shape (batch, k > 1)
        on the initial samples: scores that are non-negative and sum to 1 over each sample are a
        softmax's probabilities, others are taken as logits."""
        _, output = self(None)
        if isinstance(output, (list, tuple, dict)):
            return
        y = np.asarray(keras.ops.convert_to_numpy(output), np.float64)
        if y.ndim == 2 and y.shape[1] > 1:
            self.targets = np.arange(self.settings.count) % y.shape[1]
            self.probabilities = bool((y >= 0).all() and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def synthesize(model, settings: Synthetic = Synthetic(), *, where: str = "the model",
               progress: bool = False) -> tuple[list, dict]:
    """Inputs of `model` whose batch moments at each BatchNormalization match its moving ones.

    Parameters
    ----------
    model : keras.Model
        A model with BatchNormalization layers (nested models' count) and inputs of known
        shapes; it is not changed.
    settings : Synthetic
        How many samples and how they are fitted.
    where : str
        Names the model in errors.
    progress : bool
        Show a progress bar of the fit's steps on a terminal.

    Returns
    -------
    (list of ndarray, dict)
        One float32 array of ``settings.count`` samples per model input, and facts: the layers
        matched, the loss before and after, the classes the samples are spread over (0 when
        none) and whether the model's scores were taken as probabilities or logits, the seconds
        taken.

    Raises
    ------
    ValueError (KerasFileError)
        The model has no BatchNormalization, or inputs that are not float tensors of known shape.
    """
    bns = batch_normalizations(model)
    if not bns:
        raise KerasFileError(f"{where}: no BatchNormalization layer, whose statistics synthetic samples are "
                             "made from; give sample inputs instead")
    shapes = []
    for t in getattr(model, "inputs", None) or []:
        shape = tuple(t.shape[1:])
        if any(s is None for s in shape) or not str(t.dtype).startswith(("float", "bfloat")):
            raise KerasFileError(f"{where}: input {t.name!r} of shape {tuple(t.shape)} and dtype {t.dtype}: "
                                 "synthetic samples need float inputs of known shape")
        shapes.append(shape)
    if not shapes:
        raise KerasFileError(f"{where}: synthetic samples need a model whose inputs have known shapes "
                             "(a Functional or Sequential model)")
    start = time.perf_counter()
    inversion = _Inversion(model, bns, shapes, settings)
    if settings.labels:
        inversion.classify()
    before = _loss(inversion)
    flags = [(layer, layer.trainable) for layer in [model] + sublayers(model)]
    model.trainable = False  # the model's weights stay, and BatchNormalization runs in inference mode
    # the steps run in executions of `chunk` (one compiled loop each), the bar advanced after each
    chunk = max(1, settings.steps // 50) if progress else settings.steps
    bar = progress_bar(None, settings.steps, enabled=progress, label="synthesizing samples", unit="step")
    advance = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: bar.advance(chunk))
    try:
        inversion.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), steps_per_execution=chunk)
        inversion.fit(np.zeros((settings.steps, 1), np.float32), batch_size=1, epochs=1, shuffle=False, verbose=0,
                      callbacks=[advance])
    finally:
        bar.close()
        for layer, flag in flags:
            layer.trainable = flag
    values = [np.asarray(keras.ops.convert_to_numpy(v), np.float32) for v in inversion.inputs_]
    facts = {"layers": [bn.name for bn in bns], "first_loss": before, "loss": _loss(inversion),
             "classes": 0 if inversion.targets is None else int(inversion.targets.max()) + 1,
             "scores": "probabilities" if inversion.probabilities else "logits",
             "seconds": time.perf_counter() - start}
    return values, facts


def _loss(inversion: _Inversion) -> float:
    return float(keras.ops.convert_to_numpy(inversion.compute_loss(y_pred=inversion(None), training=False)))
