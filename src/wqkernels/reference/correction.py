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


def output_moments(kernel, mean, var, kind, cov=None):
    mean, var = np.ravel(np.asarray(mean, np.float64)), np.ravel(np.asarray(var, np.float64))
    means, variances = [], []
    for weights in _channels(kernel, kind):
        means.append(sum(w * mean[i % mean.size] for w, i in weights))
        if cov is None:
            variances.append(sum(w * w * var[i % var.size] for w, i in weights))
        else:  # a Dense kernel's inputs correlated: every pair of weights
            variances.append(sum(w * v * cov[i][j] for w, i in weights for v, j in weights))
    return np.array(means), np.array(variances)


def correct_layer(kernel, pruned, mean, var, kind, *, bias=None, moving_mean=None, moving_variance=None,
                  epsilon=1e-3, cov=None):
    """(scale, bias, moving_mean, moving_variance) as wqkernels.correction.correct_layer."""
    mean0, var0 = output_moments(kernel, mean, var, kind, cov)
    mean1, var1 = output_moments(pruned, mean, var, kind, cov)
    ratio = np.array([v1 / v0 if v0 > 0 and v1 > 0 else 1.0 for v0, v1 in zip(var0, var1)])
    if bias is not None:
        k = np.asarray(kernel)
        scale = (1 / np.sqrt(ratio)).astype(np.float32).reshape(k.shape[-2:] if kind == "depthwise" else k.shape[-1:])
        mean2, _ = output_moments(np.asarray(pruned, np.float64) * scale, mean, var, kind)
        return scale, (np.asarray(bias, np.float64).ravel() - (mean2 - mean0)).astype(np.float32), None, None
    mm = np.asarray(moving_mean, np.float64).ravel() + (mean1 - mean0)
    mv = (np.asarray(moving_variance, np.float64).ravel() + epsilon) * ratio - epsilon
    return None, None, mm.astype(np.float32), mv.astype(np.float32)


def relu_covariance(mean, std, corr, points=8001):
    """Cov(relu(y_i), relu(y_j)) pair by pair: y_j given the standardised y_i = z is
    N(mean_j + std_j r z, std_j^2 (1 - r^2)), whose rectified mean is closed; integrated over z on
    a grid of the normal density (trapezoid rule)."""
    mean, std = np.ravel(np.asarray(mean, np.float64)), np.ravel(np.abs(np.asarray(std, np.float64)))
    corr = np.asarray(corr, np.float64)
    z = np.linspace(-10.0, 10.0, points)
    density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    m1, m2 = relu_moments(mean, std)
    n = mean.size
    cov = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                cov[i, i] = max(m2[i] - m1[i] ** 2, 0.0)
                continue
            if std[i] == 0 or std[j] == 0:
                continue
            r = min(max(corr[i, j], -1.0), 1.0)
            mu = mean[j] + std[j] * r * z
            s = std[j] * math.sqrt(1 - r * r)
            if s > 0:
                inner = np.array([m * 0.5 * math.erfc(-m / s / math.sqrt(2)) + s * math.exp(-0.5 * (m / s) ** 2)
                                  / math.sqrt(2 * math.pi) for m in mu])
            else:
                inner = np.maximum(mu, 0.0)
            joint = np.trapezoid(np.maximum(mean[i] + std[i] * z, 0.0) * inner * density, z)
            cov[i, j] = joint - m1[i] * m1[j]
    return cov


def conv_covariance(kernel, var, shape, padding="same"):
    """Cov of two outputs (position p, channel o) and (q, d) of a stride-1 convolution of
    independent inputs: the sum over input positions x and channels c of
    var_c k[x - p + lead, c, o] k[x - q + lead, c, d], over the taps that reach x."""
    k = np.asarray(kernel, np.float64)
    var = np.ravel(np.asarray(var, np.float64))
    taps = k.shape[:-2]
    lead = [(t - 1) // 2 if padding == "same" else 0 for t in taps]
    out = tuple(shape) if padding == "same" else tuple(n - t + 1 for n, t in zip(shape, taps))
    outputs = [(p, o) for p in np.ndindex(*out) for o in range(k.shape[-1])]

    def weight(x, p, c, o):
        t = tuple(i - j + s for i, j, s in zip(x, p, lead))
        return k[t + (c, o)] if all(0 <= i < n for i, n in zip(t, taps)) else 0.0

    cov = np.zeros((len(outputs), len(outputs)))
    for a, (p, o) in enumerate(outputs):
        for b, (q, d) in enumerate(outputs):
            cov[a, b] = sum(var[c] * weight(x, p, c, o) * weight(x, q, c, d)
                            for x in np.ndindex(*tuple(shape)) for c in range(var.size))
    return cov
