"""The prunable weights of a live Keras model, and the masks that prune them.

The weights are found as the file layer finds them in a saved Keras 3 file: the role of each
variable comes from its layer's class and its index among the layer's own variables
(:func:`wqkernels.files.roles.var_role`), and the kernels (:data:`~wqkernels.files.roles.KERNEL_ROLES`
of Dense, EinsumDense, Conv*, DepthwiseConv, SeparableConv, RNN cells, Embedding) with two or
more axes and a float dtype are prunable; biases, normalisation and quantized layers are not.
The masks are computed on NumPy copies with the package's exact kernels, as ``rewrite`` prunes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..allocation import count_fraction, default_min_size, prune_counts
from ..files.roles import KERNEL_ROLES, block_view, reduced_axes, var_role
from ..pruning import prune, prune_n_m

__all__ = ["Kernel", "prunable_weights", "keep_masks"]

#: dtypes the kernels prune directly; other floats (bfloat16) are widened to float32 for the masks
NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Kernel:
    """One prunable variable of a model: its path, the variable, and what it is (`reduced`: an
    EinsumDense kernel's summed axes, :func:`wqkernels.files.roles.reduced_axes`)."""

    path: str
    variable: object
    layer_class: str
    role: str
    reduced: tuple | None = None

    @property
    def shape(self) -> tuple:
        return tuple(self.variable.shape)


def prunable_weights(model) -> list[Kernel]:
    """The prunable variables of `model` in the order of ``model.weights``.

    A layer's own variables (those it saves, ``vars/<i>`` in a ``.weights.h5``) are its
    trainable then its non-trainable variables; sublayers (nested models, RNN cells,
    Bidirectional halves, the projections of MultiHeadAttention) are visited as layers of
    their own.  A layer used twice holds its kernel once.
    """
    import keras

    owners = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        own = list(layer._trainable_variables) + list(layer._non_trainable_variables)
        for index, variable in enumerate(own):
            owners.setdefault(id(variable), (layer, index))
    kernels, seen = [], set()
    for variable in model.weights:
        if id(variable) in seen or id(variable) not in owners:
            continue
        seen.add(id(variable))
        layer, index = owners[id(variable)]
        layer_class = type(layer).__name__
        role = var_role(layer_class, index, in_cell=False)
        if role in KERNEL_ROLES and len(variable.shape) >= 2 and keras.backend.is_float_dtype(variable.dtype) \
                and getattr(layer, "quantization_mode", None) is None:
            equation = {"config": {"equation": getattr(layer, "equation", "")}}
            reduced = reduced_axes(layer_class, equation, layer.name, len(variable.shape))
            kernels.append(Kernel(variable.path, variable, layer_class, role, reduced))
    return kernels


def keep_masks(values: dict, kernels: dict, sparsity: float | None, n_m: tuple | None, *,
               runs: float = 1.0, allocation: str = "global", min_size: int | None = None) -> dict:
    """Which weights stay (True) in each tensor that pruning touches, as ``rewrite`` prunes.

    Parameters
    ----------
    values : dict of str to ndarray
        Every prunable tensor of the model (by path), previously pruned weights already zero.
    kernels : dict of str to Kernel
        What each tensor is (for the input axis of N:M patterns).
    sparsity : float, optional
        Fraction of all the weights of `values` that are zero afterwards: exactly
        ``floor(sparsity * total)`` (:func:`wqkernels.allocation.prune_counts`, then
        :func:`wqkernels.prune` per tensor), zeros already present counted.
    n_m : (int, int), optional
        Instead of `sparsity`: keep the N largest magnitudes of every M along the input axis
        (:func:`wqkernels.prune_n_m` on the view of :func:`wqkernels.files.roles.block_view`).
    runs : float
        With `n_m`: the fraction of each tensor's runs of M that take the pattern, in [0, 1]:
        the ``floor(runs * count)`` runs whose dropped weights weigh least (the sum of their
        magnitudes; ties: the run first in C order), the others stay dense.  A run already in
        the pattern drops nothing more and goes first, so raising `runs` only adds runs.
    allocation, min_size
        As for :func:`wqkernels.allocation.prune_counts`; tensors under `min_size` stay dense
        (default: :func:`wqkernels.allocation.default_min_size` of the allocation, or of "n:m").

    Returns
    -------
    dict of str to ndarray of bool
        Only for the tensors that lose weights; a weight that is zero stays zero (its mask is
        False), so masks recomputed on masked weights never bring a pruned weight back.
    """
    values = {path: _prunable_array(x) for path, x in values.items()}
    if n_m is not None:
        least = default_min_size("n:m") if min_size is None else min_size
        pruned = {}
        for path, x in values.items():
            if x.size >= least:
                kernel = kernels[path]
                view, axis = block_view(x.shape, kernel.layer_class, kernel.role, kernel.reduced)
                full = prune_n_m(x.reshape(view), n=n_m[0], m=n_m[1], axis=axis)
                pruned[path] = _some_runs(x.reshape(view), full, axis, n_m[1], runs).reshape(x.shape)
    else:
        counts = prune_counts(values, sparsity, allocation=allocation, min_size=min_size)
        pruned = {path: prune(values[path], sparsity=count_fraction(k, values[path].size))
                  for path, k in counts.items() if k}
    return {path: p != 0 for path, p in pruned.items()}


def _some_runs(x: np.ndarray, full: np.ndarray, axis: int, m: int, fraction: float) -> np.ndarray:
    """`full` (x in the N:M pattern along `axis`) in the ``floor(fraction * runs)`` runs of m
    whose dropped weights have the smallest sum of magnitudes, x itself in the others."""
    if fraction >= 1.0:
        return full
    moved_x, moved_full = np.moveaxis(x, axis, -1), np.moveaxis(full, axis, -1)
    length = moved_x.shape[-1]
    count = -(-length // m)
    dropped = np.abs(np.where(moved_full == 0, moved_x, 0).astype(np.float64))
    dropped = np.pad(dropped, [(0, 0)] * (dropped.ndim - 1) + [(0, count * m - length)])
    weight = dropped.reshape(*dropped.shape[:-1], count, m).sum(axis=-1)
    chosen = np.zeros(weight.size, dtype=bool)
    chosen[np.argsort(weight, axis=None, kind="stable")[:math.floor(fraction * weight.size)]] = True
    chosen = np.repeat(chosen.reshape(weight.shape), m, axis=-1)[..., :length]
    return np.moveaxis(np.where(chosen, moved_full, moved_x), -1, axis)


def _prunable_array(x) -> np.ndarray:
    """x as an array of a dtype the kernels prune (bfloat16 widened exactly to float32)."""
    x = np.asarray(x)
    return x if x.dtype in NUMPY_FLOATS else x.astype(np.float32)
