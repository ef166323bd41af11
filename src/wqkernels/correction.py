"""Data-free correction of what pruning shifts in a layer's outputs, from BatchNorm statistics.

A pruned kernel ``W'`` of a Dense or convolution layer changes each output channel's mean by
``(W' - W) . E[x]`` and its variance, roughly, from ``sum_j W_j^2 Var(x_j)`` to
``sum_j W'_j^2 Var(x_j)`` (inputs taken as independent).  Where the layer's inputs come from a
BatchNormalization layer (through ReLU, pooling, flatten, dropout), their per-channel moments are
known without data: a BN's output is taken as ``N(beta, gamma^2)``, after ReLU
``E = b Phi(b/|g|) + |g| phi(b/|g|)`` (:func:`relu_moments`; the data-free bias correction of
Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", 2019,
section 4.2, extended to the variance).  :func:`correct_layer` restores both:

* a layer followed by a BatchNormalization (no bias of its own): the BN's ``moving_mean`` takes
  the shift and its ``moving_variance`` the variance's ratio, so the BN normalises the pruned
  outputs as it did the float ones;
* a layer with a bias: each output channel's kept weights are scaled to the float variance, then
  the bias takes back the mean shift.

A Dense layer's inputs may be given a covariance instead (``w^T cov w``): a flattened map of a
BN-ReLU after a convolution is correlated where the convolution's windows overlap
(:func:`conv_covariance`, then :func:`relu_covariance`; the file layer builds it).

Measured on BN CNNs of ``benchmarks/bn_correction.py`` (FIDELITY.md): at sparsity 0.75 the
digits CNN's output error falls from 0.418 to 0.224 and a VGG-style BN network's score loss from
59.7 to 4.3 points; it is applied where pruning happens only, since quantization noise adds
variance rather than removing it (at 2 bits the variance correction raised the output error).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._checks import float_array

__all__ = ["KINDS", "POOL_CORRELATION", "COVARIANCE_LIMIT", "Corrected", "relu_moments", "max_relu_moments",
           "relu_covariance", "conv_covariance", "output_moments", "correct_layer"]

#: how a kernel's axes map onto input and output channels: "dense" (inputs, outputs), "conv"
#: (..., inputs, outputs) and "depthwise" (..., inputs, multiplier; output i*multiplier + k)
KINDS = ("dense", "conv", "depthwise")


class Corrected(NamedTuple):
    """What :func:`correct_layer` changes; None for what it leaves alone.

    scale: factors (float32) of the pruned kernel, broadcasting over its shape; bias,
    moving_mean, moving_variance: the new float32 vectors.
    """

    scale: np.ndarray | None
    bias: np.ndarray | None
    moving_mean: np.ndarray | None
    moving_variance: np.ndarray | None


def relu_moments(mean, std, cap: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``E[relu(z)]`` and ``E[relu(z)^2]`` of ``z ~ N(mean, std^2)``, elementwise (float64).

    A standard deviation of 0 is the point mass at `mean`; its sign is ignored (a BN's gamma).
    `cap`, when given, clips the output at ``cap > 0`` as well (Keras's ``ReLU(max_value=6)``,
    ``relu6``): ``E[min(relu(z), cap)]`` and its square's.

    Examples
    --------
    >>> from wqkernels.correction import relu_moments
    >>> m1, m2 = relu_moments([0.0, 1.0], [1.0, 0.0])
    >>> [round(float(v), 4) for v in m1], [round(float(v), 4) for v in m2]
    ([0.3989, 1.0], [0.5, 1.0])
    """
    mean = np.asarray(float_array(mean, "mean"), np.float64)
    std = np.abs(np.asarray(float_array(std, "std"), np.float64))
    mean, std = np.broadcast_arrays(mean, std)
    safe = np.where(std > 0, std, 1.0)
    z = mean / safe
    cdf = 0.5 * (1.0 + _elementwise(math.erf, z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    point = np.maximum(mean, 0.0)
    m1 = mean * cdf + safe * pdf
    m2 = (mean * mean + safe * safe) * cdf + mean * safe * pdf
    if cap is not None:  # less what lies above the cap, plus the cap times its probability
        cap = float(cap)
        if not cap > 0:
            raise ValueError(f"cap must be positive, got {cap}")
        b = (cap - mean) / safe
        tail = 0.5 * _elementwise(math.erfc, b / math.sqrt(2.0))
        pdf_b = np.exp(-0.5 * b * b) / math.sqrt(2.0 * math.pi)
        m1 = m1 - mean * tail - safe * pdf_b + cap * tail
        m2 = m2 - (mean * mean + safe * safe) * tail - 2.0 * mean * safe * pdf_b - safe * safe * b * pdf_b \
            + cap * cap * tail
        point = np.minimum(point, cap)
    return np.where(std > 0, m1, point), np.where(std > 0, m2, point * point)


#: the correlation taken between the values of one max pooling window before their ReLU.  Measured
#: on the benchmark's BN CNNs, the rectified values of a 2x2 window correlate 0.16-0.27, and 0.3
#: reproduces their pooled mean; 0.7 pools less and the pruned models lose least (FIDELITY.md:
#: 2-3 points fewer at sparsity 0.9 than 0.3 or mean-preserving pooling, over six seeds)
POOL_CORRELATION = 0.7

#: the max of `window` standard normals, sampled on this grid (trapezoid weights of its density)
_MAX_GRID = np.linspace(-8.0, 8.0, 1025)
#: Gauss-Hermite nodes over the part the window's values share
_COMMON_NODES = 40


def max_relu_moments(mean, std, window: int, rho: float = POOL_CORRELATION) -> tuple[np.ndarray, np.ndarray]:
    """``E[r]`` and ``E[r^2]`` of ``r = max(relu(z_1), ..., relu(z_window))``: the values of one
    max pooling window after a ReLU, ``z_i ~ N(mean, std^2)`` with pairwise correlation `rho`,
    elementwise (float64).

    Written ``z_i = mean + std (sqrt(rho) u + sqrt(1 - rho) v_i)`` with u and the v_i independent
    standard normals, ``r = relu(mean + std y)`` where ``y = sqrt(rho) u + sqrt(1 - rho) max v_i``
    does not depend on the channel: its distribution is sampled once (Gauss-Hermite nodes in u,
    a grid of the max's density in v) and each channel's moments are sums over it.  A window
    of one value, ``rho`` 1 or a standard deviation of 0 gives :func:`relu_moments`.

    Examples
    --------
    >>> from wqkernels.correction import max_relu_moments, relu_moments
    >>> m1, m2 = max_relu_moments([0.0], [1.0], 4, rho=0.0)   # four independent standard normals
    >>> round(float(m1[0]), 3), round(float(max_relu_moments([0.0], [1.0], 4, rho=0.7)[0][0]), 3)
    (1.046, 0.715)
    >>> [float(v[0]) for v in max_relu_moments([0.5], [2.0], 1)] == [float(v[0]) for v in relu_moments([0.5], [2.0])]
    True
    """
    mean = np.asarray(float_array(mean, "mean"), np.float64)
    std = np.abs(np.asarray(float_array(std, "std"), np.float64))
    mean, std = np.broadcast_arrays(mean, std)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    rho = float(rho)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")
    m1, m2 = relu_moments(mean, std)
    if window == 1 or rho == 1.0:
        return m1, m2
    v = _MAX_GRID
    cdf = 0.5 * (1.0 + _elementwise(math.erf, v / math.sqrt(2.0)))
    density = window * np.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi) * cdf ** (window - 1)
    weights = density * np.gradient(v)  # (the trapezoid rule: the density vanishes at both ends)
    weights /= weights.sum()
    u, u_weights = np.polynomial.hermite_e.hermegauss(_COMMON_NODES)
    u_weights = u_weights / u_weights.sum()
    flat_mean, flat_std = mean.reshape(-1, 1), std.reshape(-1, 1)
    e1 = np.zeros(flat_mean.shape[0])
    e2 = np.zeros(flat_mean.shape[0])
    for node, weight in zip(u, u_weights):
        r = np.maximum(flat_mean + flat_std * (math.sqrt(rho) * node + math.sqrt(1.0 - rho) * v), 0.0)
        e1 += weight * (r @ weights)
        e2 += weight * ((r * r) @ weights)
    positive = std > 0
    return np.where(positive, e1.reshape(mean.shape), m1), np.where(positive, e2.reshape(mean.shape), m2)


#: the terms of Mehler's expansion summed by :func:`relu_covariance`
_MEHLER_TERMS = 40


def relu_covariance(mean, std, corr) -> np.ndarray:
    """``Cov(relu(y_i), relu(y_j))`` (float64, n x n) of ``y ~ N(mean, diag(std) corr diag(std))``.

    Mehler's expansion of the bivariate normal density: with ``y_i = mean_i + std_i z_i``,
    ``Cov = sum_{n >= 1} d_in d_jn corr_ij^n``, where ``d_n = E[f^(n)(z)] / sqrt(n!)`` of
    ``f(z) = relu(mean + std z)``: ``d_1 = std Phi(mean / std)`` and, for n >= 2,
    ``std phi(a) He_{n-2}(a) / sqrt(n!)`` at ``a = -mean / std`` (f'' is a point mass at a).
    :data:`_MEHLER_TERMS` terms (the tail is below 1 % of the variance at correlation 1 and
    vanishes geometrically below it); the diagonal is exact (:func:`relu_moments`).  A standard
    deviation of 0 is a constant: no covariance.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.correction import relu_covariance
    >>> c = relu_covariance([0.0, 0.0], [1.0, 1.0], np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> c.round(4)   # independent: no covariance; the diagonal is Var(relu(z)) = 1/2 - 1/(2 pi)
    array([[0.3408, 0.    ],
           [0.    , 0.3408]])
    """
    mean = np.asarray(float_array(mean, "mean"), np.float64).reshape(-1)
    std = np.abs(np.asarray(float_array(std, "std"), np.float64)).reshape(-1)
    corr = np.asarray(float_array(corr, "corr"), np.float64)
    if mean.shape != std.shape or corr.shape != (mean.size, mean.size):
        raise ValueError(f"corr has shape {corr.shape}, mean {mean.size} values and std {std.size}")
    positive = std > 0
    safe = np.where(positive, std, 1.0)
    a = -mean / safe
    cdf = 0.5 * _elementwise(math.erfc, a / math.sqrt(2.0))
    pdf = np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    r = np.clip(corr, -1.0, 1.0)
    power = r.copy()
    d = np.where(positive, std * cdf, 0.0)
    cov = np.outer(d, d) * power
    h_prev, h = np.zeros_like(a), np.ones_like(a)  # He_k(a) / sqrt(k!) at k = n - 3 and n - 2, from n = 2
    for n in range(2, _MEHLER_TERMS + 1):
        if n > 2:  # He_k = a He_{k-1} - (k - 1) He_{k-2}, scaled by 1 / sqrt(k!)
            k = n - 2
            h_prev, h = h, (a * h - math.sqrt(k - 1) * h_prev) / math.sqrt(k)
        d = np.where(positive, std * pdf * h / math.sqrt(n * (n - 1)), 0.0)
        power *= r
        cov += np.outer(d, d) * power
    m1, m2 = relu_moments(mean, std)
    cov[np.diag_indices(mean.size)] = np.maximum(m2 - m1 * m1, 0.0)
    return cov


#: the most outputs (positions times channels) :func:`conv_covariance` describes, and the most
#: inputs: a float64 matrix of that side is 32 MiB, and the product that makes it some 10^10 flops
COVARIANCE_LIMIT = 2048


def conv_covariance(kernel, var, shape, padding: str = "same") -> np.ndarray | None:
    """The covariance (float64) of a convolution's outputs over its whole output map, flattened
    channels last (as Flatten lays it out), or None beyond :data:`COVARIANCE_LIMIT` outputs or
    inputs.

    The inputs, on a map of spatial `shape` (its channels those of `kernel`), are taken as
    independent with per-channel variance `var`; stride and dilation 1; "same" pads with zeros
    (what falls outside the map adds nothing), "valid" does not.  Output positions whose windows
    overlap share inputs: ``Cov = A^T diag(var) A`` for the convolution as a matrix ``A``.
    """
    k = np.asarray(float_array(kernel, "kernel"), np.float64)
    shape = tuple(int(n) for n in shape)
    if k.ndim != len(shape) + 2 or padding not in ("same", "valid"):
        raise ValueError(f"a kernel of shape {k.shape} does not convolve a map of shape {shape} ({padding!r})")
    var = np.asarray(float_array(var, "var"), np.float64).reshape(-1)
    if var.size != k.shape[-2]:
        raise ValueError(f"var has {var.size} channels, the kernel {k.shape[-2]} inputs")
    taps = k.shape[:-2]
    lead = [(t - 1) // 2 if padding == "same" else 0 for t in taps]
    out = shape if padding == "same" else tuple(n - t + 1 for n, t in zip(shape, taps))
    if min(out, default=1) < 1:
        raise ValueError(f"a kernel of shape {k.shape} does not convolve a map of shape {shape} ({padding!r})")
    channels, outputs = k.shape[-2], k.shape[-1]
    if max(math.prod(out) * outputs, math.prod(shape) * channels) > COVARIANCE_LIMIT:
        return None
    a = np.zeros((math.prod(shape), channels, math.prod(out), outputs))
    for p in np.ndindex(*out):
        for t in np.ndindex(*taps):
            source = tuple(i + j - s for i, j, s in zip(p, t, lead))
            if all(0 <= i < n for i, n in zip(source, shape)):
                a[np.ravel_multi_index(source, shape), :, np.ravel_multi_index(p, out)] += k[t]
    a = a.reshape(math.prod(shape) * channels, -1)
    return a.T @ (np.tile(var, math.prod(shape))[:, None] * a)


def _elementwise(f, x: np.ndarray) -> np.ndarray:
    """math function `f` (erf, erfc: NumPy has neither) of each element, as float64."""
    return np.frompyfunc(f, 1, 1)(x).astype(np.float64)


def output_moments(kernel, mean, var, kind: str, cov=None) -> tuple[np.ndarray, np.ndarray]:
    """Each output channel's mean and variance (float64) for inputs of per-channel `mean` and
    `var`, taken as independent unless a Dense kernel's `cov` is given; zero padding at the
    borders of a convolution is ignored.

    Parameters
    ----------
    kernel : array_like of float
        A Dense, convolution or depthwise kernel, laid out as `kind` says (:data:`KINDS`).
    mean, var : array_like of float, 1-d
        Per input channel.  A Dense kernel whose inputs are a flattened channels-last map has a
        multiple of their length as its fan-in: the channel is the fastest-varying index.
    kind : {"dense", "conv", "depthwise"}
    cov : array_like of float, optional
        A Dense kernel's inputs' covariance (fan-in x fan-in): the variance is then ``w^T cov w``
        (the mean still from `mean`).

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.correction import output_moments
    >>> output_moments(np.array([[1.0], [2.0]]), [1.0, 1.0], [1.0, 0.5], "dense")
    (array([3.]), array([3.]))
    """
    k = np.asarray(float_array(kernel, "kernel"), np.float64)
    mean, var = _per_channel(k, mean, var, kind)
    if cov is not None:
        c = np.asarray(float_array(cov, "cov"), np.float64)
        if kind != "dense" or c.shape != (k.shape[0], k.shape[0]):
            raise ValueError(f"cov has shape {c.shape}: a covariance of a Dense kernel's {k.shape[0]} inputs is needed")
        return mean @ k, np.einsum("io,io->o", k, c @ k)
    if kind == "dense":
        return mean @ k, var @ (k * k)
    if kind == "conv":
        k2 = (k * k).reshape(-1, *k.shape[-2:]).sum(axis=0)
        return mean @ k.reshape(-1, *k.shape[-2:]).sum(axis=0), var @ k2
    flat = k.reshape(-1, *k.shape[-2:])
    return ((flat.sum(axis=0) * mean[:, None]).reshape(-1),
            ((flat * flat).sum(axis=0) * var[:, None]).reshape(-1))


def _per_channel(k: np.ndarray, mean, var, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The input moments as float64 vectors of the kernel's fan-in (Dense: tiled)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if k.ndim < 2 or (kind == "dense" and k.ndim != 2) or (kind == "depthwise" and k.ndim < 3):
        raise ValueError(f"kernel has shape {k.shape}, not a {kind} kernel")
    mean = np.asarray(float_array(mean, "mean"), np.float64).reshape(-1)
    var = np.asarray(float_array(var, "var"), np.float64).reshape(-1)
    if mean.shape != var.shape:
        raise ValueError(f"mean and var differ in length: {mean.size} and {var.size}")
    fan_in = k.shape[0] if kind == "dense" else k.shape[-2]
    if kind == "dense" and mean.size and fan_in % mean.size == 0:
        mean, var = np.tile(mean, fan_in // mean.size), np.tile(var, fan_in // mean.size)
    if mean.size != fan_in:
        raise ValueError(f"mean has {mean.size} channels, the kernel {fan_in} inputs")
    return mean, var


def correct_layer(kernel, pruned, mean, var, kind: str, *, bias=None, moving_mean=None,
                  moving_variance=None, epsilon: float = 1e-3, cov=None) -> Corrected:
    """Restore each output channel's mean and variance after `kernel` became `pruned`.

    Give `bias` for a layer with one (then the pruned kernel is scaled per output channel to
    the float variance, and the bias takes back the mean shift of the scaled kernel), or the
    following BatchNormalization's `moving_mean`, `moving_variance` and `epsilon` (they take
    the mean shift and the variance ratio).  Channels whose float or pruned variance is 0 keep
    their scale and variance.

    Parameters
    ----------
    kernel, pruned : array_like of float
        The float kernel and the pruned one (same shape).
    mean, var : array_like of float, 1-d
        The inputs' per-channel mean and variance (see :func:`output_moments`).
    kind : {"dense", "conv", "depthwise"}
    bias, moving_mean, moving_variance : array_like of float, optional
        One value per output channel.
    epsilon : float
        The BatchNormalization's epsilon.
    cov : array_like of float, optional
        A Dense kernel's inputs' covariance: the variances are ``w^T cov w``
        (:func:`output_moments`).

    Returns
    -------
    Corrected

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.correction import correct_layer
    >>> w = np.array([[1.0], [0.5]]); p = np.array([[1.0], [0.0]])
    >>> c = correct_layer(w, p, [2.0, 2.0], [1.0, 1.0], "dense", bias=[0.0])
    >>> c.scale.ravel().round(4), c.bias.round(4)
    (array([1.118], dtype=float32), array([0.7639], dtype=float32))
    """
    k = np.asarray(float_array(kernel, "kernel"), np.float64)
    p = np.asarray(float_array(pruned, "pruned"), np.float64)
    if k.shape != p.shape:
        raise ValueError(f"pruned has shape {p.shape}, kernel {k.shape}")
    if (bias is None) == (moving_mean is None or moving_variance is None):
        raise ValueError("give bias, or moving_mean and moving_variance")
    mean0, var0 = output_moments(k, mean, var, kind, cov)
    mean1, var1 = output_moments(p, mean, var, kind, cov)
    ratio = np.ones_like(var0)
    np.divide(var1, var0, out=ratio, where=(var0 > 0) & (var1 > 0))
    if bias is not None:
        b = _vector(bias, "bias", mean0.size)
        scale = (1.0 / np.sqrt(ratio)).astype(np.float32).reshape(k.shape[-2:] if kind == "depthwise" else k.shape[-1:])
        shift = output_moments(p * scale, mean, var, kind)[0] - mean0
        return Corrected(scale, (b - shift).astype(np.float32), None, None)
    mm = _vector(moving_mean, "moving_mean", mean0.size)
    mv = _vector(moving_variance, "moving_variance", mean0.size)
    eps = float(epsilon)
    if not eps >= 0:
        raise ValueError(f"epsilon must be a non-negative number, got {epsilon!r}")
    return Corrected(None, None, (mm + (mean1 - mean0)).astype(np.float32),
                     ((mv + eps) * ratio - eps).astype(np.float32))


def _vector(value, name: str, size: int) -> np.ndarray:
    x = np.asarray(float_array(value, name), np.float64).reshape(-1)
    if x.size != size:
        raise ValueError(f"{name} has {x.size} values, the layer {size} output channels")
    return x
