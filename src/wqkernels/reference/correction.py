"""NumPy reference of the data-free BatchNorm correction: each output channel's moments summed
weight by weight, the Gaussian integrals with math.erf, one channel at a time."""
from __future__ import annotations

import math

import numpy as np


def relu_moments(mean, std, cap=None):
    """Each value's moments by integrating the density piece by piece: 0 below 0, z between
    0 and `cap`, `cap` above it."""
    m1, m2 = [], []
    top = math.inf if cap is None else float(cap)
    for mu, s in zip(np.ravel(np.asarray(mean, np.float64)), np.ravel(np.abs(np.asarray(std, np.float64)))):
        if s == 0:
            m1.append(min(max(mu, 0.0), top))
            m2.append(min(max(mu, 0.0), top) ** 2)
            continue
        a, b = -mu / s, (top - mu) / s
        mass = 0.5 * (math.erfc(a / math.sqrt(2)) - math.erfc(b / math.sqrt(2)))  # P(0 < z < cap)
        pa = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
        pb = 0.0 if b == math.inf else math.exp(-b * b / 2) / math.sqrt(2 * math.pi)
        bpb = 0.0 if b == math.inf else b * pb
        above = 0.0 if b == math.inf else 0.5 * math.erfc(b / math.sqrt(2))
        m1.append(mu * mass + s * (pa - pb) + (0.0 if cap is None else top * above))
        m2.append(mu * mu * mass + 2 * mu * s * (pa - pb) + s * s * (mass + a * pa - bpb)
                  + (0.0 if cap is None else top * top * above))
    shape = np.broadcast(np.asarray(mean), np.asarray(std)).shape
    return np.array(m1).reshape(shape), np.array(m2).reshape(shape)


def max_relu_moments(mean, std, window, rho, points=4001, nodes=60):
    """E[r], E[r^2] of the rectified max of `window` N(mean, std^2) of pairwise correlation rho,
    from the max's distribution function: P(max <= t) = E_u[Phi((t - mean - std sqrt(rho) u)
    / (std sqrt(1 - rho)))^window], integrated over t >= 0 (E[r] = int 1 - F, E[r^2] = int 2t (1 - F))."""
    u, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    m1, m2 = [], []
    for mu, s in zip(np.ravel(np.asarray(mean, np.float64)), np.ravel(np.abs(np.asarray(std, np.float64)))):
        if s == 0 or window == 1 or rho == 1:
            a, b = relu_moments([mu], [s])
            m1.append(float(a[0]))
            m2.append(float(b[0]))
            continue
        t = np.linspace(0.0, max(mu, 0.0) + 10 * s, points)
        cdf = np.zeros_like(t)
        for node, weight in zip(u, w):
            z = (t - mu - s * math.sqrt(rho) * node) / (s * math.sqrt(1 - rho))
            cdf += weight * np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z]) ** window
        tail = 1 - cdf
        m1.append(float(np.trapezoid(tail, t)))
        m2.append(float(np.trapezoid(2 * t * tail, t)))
    shape = np.broadcast(np.asarray(mean), np.asarray(std)).shape
    return np.array(m1).reshape(shape), np.array(m2).reshape(shape)


def _channels(kernel, kind):
    """[(output channel, [(weight, input channel)...])] of a kernel."""
    k = np.asarray(kernel, np.float64)
    out = []
    if kind == "dense":
        for o in range(k.shape[1]):
            out.append([(k[i, o], i) for i in range(k.shape[0])])
    elif kind == "conv":
        flat = k.reshape(-1, k.shape[-2], k.shape[-1])
        for o in range(k.shape[-1]):
            out.append([(flat[p, i, o], i) for p in range(flat.shape[0]) for i in range(k.shape[-2])])
    else:
        flat = k.reshape(-1, k.shape[-2], k.shape[-1])
        for i in range(k.shape[-2]):
            for m in range(k.shape[-1]):
                out.append([(flat[p, i, m], i) for p in range(flat.shape[0])])
    return out


def output_moments(kernel, mean, var, kind):
    mean, var = np.ravel(np.asarray(mean, np.float64)), np.ravel(np.asarray(var, np.float64))
    means, variances = [], []
    for weights in _channels(kernel, kind):
        means.append(sum(w * mean[i % mean.size] for w, i in weights))
        variances.append(sum(w * w * var[i % var.size] for w, i in weights))
    return np.array(means), np.array(variances)


def correct_layer(kernel, pruned, mean, var, kind, *, bias=None, moving_mean=None, moving_variance=None,
                  epsilon=1e-3):
    """(scale, bias, moving_mean, moving_variance) as wqkernels.correction.correct_layer."""
    mean0, var0 = output_moments(kernel, mean, var, kind)
    mean1, var1 = output_moments(pruned, mean, var, kind)
    ratio = np.array([v1 / v0 if v0 > 0 and v1 > 0 else 1.0 for v0, v1 in zip(var0, var1)])
    if bias is not None:
        k = np.asarray(kernel)
        scale = (1 / np.sqrt(ratio)).astype(np.float32).reshape(k.shape[-2:] if kind == "depthwise" else k.shape[-1:])
        mean2, _ = output_moments(np.asarray(pruned, np.float64) * scale, mean, var, kind)
        return scale, (np.asarray(bias, np.float64).ravel() - (mean2 - mean0)).astype(np.float32), None, None
    mm = np.asarray(moving_mean, np.float64).ravel() + (mean1 - mean0)
    mv = (np.asarray(moving_variance, np.float64).ravel() + epsilon) * ratio - epsilon
    return None, None, mm.astype(np.float32), mv.astype(np.float32)
