"""NumPy reference of the calibrated compression: the Optimal Brain Surgeon step one input at a
time with the explicit inverse Hessian (no Cholesky factor, no lazy blocks), one group at a time,
and convolution patches gathered position by position."""
from __future__ import annotations

import itertools
import math

import numpy as np

from .._schemes import groups, scheme
from ..calibration.views import KernelView
from .quantization import _broadcast, quantize

f32 = np.float32


def _damped(h, damping):
    h = np.array(h, dtype=np.float64)
    d = np.diag(h).copy()
    d[d <= 0] = 1.0
    np.fill_diagonal(h, d)
    return h + max(damping, 1e-10) * d.mean() * np.eye(len(d))


def _surgeon(w, h, fix):
    """Fix the rows of w (K, C) in order: row t becomes fix(t, row); its error, over the pivot
    Hinv[t, t] of the inverse Hessian of the rows not yet fixed, updates the later rows, and
    the inverse drops row t."""
    hinv = np.linalg.inv(h)
    for t in range(w.shape[0]):
        q = fix(t, w[t].copy())
        e = (w[t] - q) / hinv[t, t]
        w[t + 1:] -= np.outer(hinv[t + 1:, t], e)
        w[t] = q
        hinv = hinv - np.outer(hinv[:, t], hinv[t, :]) / hinv[t, t]
    return w


def _pivots(hinv):
    """hinv[t, t] at the moment row t is fixed."""
    out = []
    for t in range(hinv.shape[0]):
        out.append(hinv[t, t])
        hinv = hinv - np.outer(hinv[:, t], hinv[t, :]) / hinv[t, t]
    return np.array(out)


def _matrices(w, hessian, view):
    w = np.asarray(w, dtype=f32)
    view = KernelView.linear(w.shape) if view is None else view
    h = np.asarray(hessian.matrix() if hasattr(hessian, "matrix") else hessian, dtype=np.float64)
    return w, view, h.reshape(view.matrix_shape[0], view.matrix_shape[1], view.matrix_shape[1])


def gptq(w, hessian, bits=4, *, view=None, symmetric=True, axis=-1, block_size=None, method="minmax",
         damping=0.01, act_order=False, block=128):
    w = np.asarray(w, dtype=f32)
    grid = quantize(w, bits, symmetric=symmetric, axis=axis, block_size=block_size, method=method)
    g = groups(w.shape, grid.axis, grid.block_size)
    sch = scheme(bits, symmetric)
    shape = (g.outer, g.n, g.inner)
    scale = (_broadcast(grid.scale.reshape(-1), g) * np.ones(shape, f32)).reshape(w.shape)
    zero_point = (_broadcast(grid.zero_point.astype(f32).reshape(-1), g) * np.ones(shape, f32)).reshape(w.shape)
    values = gptq_on_grid(w, hessian, scale, zero_point, sch.qmin, sch.qmax, view=view, damping=damping,
                          act_order=act_order)
    return quantize(values, bits, symmetric=symmetric, axis=grid.axis, block_size=grid.block_size,
                    scale=grid.scale, zero_point=grid.zero_point)


def gptq_on_grid(w, hessian, scale, zero_point, qmin, qmax, *, view=None, damping=0.01, act_order=False,
                 block=128):
    w, view, h = _matrices(w, hessian, view)
    scale = view.matrix(np.broadcast_to(np.asarray(scale, f32), w.shape), f32)
    zero_point = view.matrix(np.broadcast_to(np.asarray(zero_point, f32), w.shape), f32)
    m = view.matrix(w)
    for k in range(m.shape[0]):
        order = np.argsort(-np.diag(h[k]), kind="stable") if act_order else np.arange(m.shape[1])
        zero = m[k][order] == 0

        def fix(t, row, k=k, order=order, zero=zero):
            r = order[t]
            q = np.clip(np.rint(row.astype(f32) / scale[k, r]) + zero_point[k, r], f32(qmin), f32(qmax))
            q = ((q - zero_point[k, r]) * scale[k, r]).astype(np.float64)
            q[zero[t]] = 0.0
            return q

        fixed = _surgeon(m[k][order].copy(), _damped(h[k], damping)[np.ix_(order, order)], fix)
        m[k][order] = fixed
    return view.kernel(m, w.shape)


def sparsegpt(w, hessian, sparsity=None, *, n=None, m=None, view=None, damping=0.01, block=128):
    w, view, h = _matrices(w, hessian, view)
    mat = view.matrix(w)
    zero = mat == 0
    inputs = mat.shape[1]
    segment = view.segment or inputs
    if sparsity is not None:  # each block of `block` inputs takes its share of the zeros to choose
        picks = max(math.floor(sparsity * w.size) - int(zero.sum()), 0)
        starts = list(range(0, inputs, block))
        shares = []
        for j, start in enumerate(starts):
            stop = min(start + block, inputs)
            free_here = int((~zero[:, start:stop]).sum())
            free_rest = int((~zero[:, start:]).sum())
            share = picks if j == len(starts) - 1 else int(round(picks * free_here / max(free_rest, 1)))
            share = max(min(share, free_here), 0)
            shares.append(share)
            picks -= share
    # the groups are independent but share each block's choice: run them in step
    hinvs = [np.linalg.inv(_damped(h[k], damping)) for k in range(mat.shape[0])]
    pivots = np.stack([_pivots(hv) for hv in hinvs])
    mask = zero.copy()
    for t in range(inputs):
        if sparsity is not None and t % block == 0:
            share = shares[t // block]
            stop = min(t + block, inputs)
            saliency = (mat[:, t:stop] ** 2 / pivots[:, t:stop, None])
            saliency[mask[:, t:stop]] = np.inf
            flat = np.argsort(saliency.reshape(-1), kind="stable")[:share]
            chosen = np.zeros(saliency.size, dtype=bool)
            chosen[flat] = True
            mask[:, t:stop] |= chosen.reshape(saliency.shape)
        if sparsity is None and t % segment % m == 0:
            stop = min(t + m, (t // segment + 1) * segment)
            drop = (stop - t) - min(n, stop - t)
            if drop > 0:
                saliency = mat[:, t:stop] ** 2 / pivots[:, t:stop, None]
                saliency[mask[:, t:stop]] = -1.0
                order = np.argsort(saliency, axis=1, kind="stable")[:, :drop]
                run = mask[:, t:stop]
                np.put_along_axis(run, order, True, axis=1)
                mask[:, t:stop] = run
        for k in range(mat.shape[0]):
            hv = hinvs[k]
            q = mat[k, t].copy()
            q[mask[k, t]] = 0.0
            e = (mat[k, t] - q) / hv[t, t]
            mat[k, t + 1:] -= np.outer(hv[t + 1:, t], e)
            mat[k, t] = q
            hinvs[k] = hv - np.outer(hv[:, t], hv[t, :]) / hv[t, t]
    return view.kernel(mat, w.shape)


def refit(w, hessian, *, view=None, damping=0.01):
    w = np.asarray(w, dtype=f32)
    view = KernelView.linear(w.shape) if view is None else view
    h, cross = hessian.matrix(), hessian.cross()
    m = view.matrix(w)
    out = np.empty_like(m)
    for g in range(m.shape[0]):  # argmin |X v - X_f w|^2 + lam |v - w|^2, dead inputs kept
        d = np.diag(h[g])
        lam = damping * d.mean()
        a = h[g] + lam * np.eye(len(d)) + np.diag((d <= 0).astype(float))
        out[g] = np.linalg.inv(a) @ (cross[g] @ m[g] + (lam + (d <= 0))[:, None] * m[g])
    return view.kernel(out, w.shape)


def mean_output_error(hessian, before, after, view=None):
    view = KernelView.linear(np.shape(before)) if view is None else view
    g, k, c = view.matrix_shape
    if hasattr(hessian, "target_mean"):
        mean = hessian.mean.reshape(g, k)
        target = mean if hessian.target_mean is None else hessian.target_mean.reshape(g, k)
    else:
        mean = target = np.asarray(hessian, dtype=np.float64).reshape(g, k)
    b, a = view.matrix(before), view.matrix(after)
    return np.array([[sum(target[i, j] * b[i, j, o] - mean[i, j] * a[i, j, o] for j in range(k)) for o in range(c)]
                     for i in range(g)])


def patches(x, kernel_size, strides=1, padding="valid", dilation=1, input_dilation=1, groups=1):
    x = np.asarray(x, dtype=f32)
    n, *spatial, channels = x.shape
    d = len(spatial)

    def per_axis(v):
        return (v,) * d if isinstance(v, int) else tuple(v)

    kernel_size, strides, dilation, input_dilation = map(per_axis, (kernel_size, strides, dilation, input_dilation))
    # the (possibly dilated) input as a function of position: zero outside and between samples
    length = [(s - 1) * r + 1 for s, r in zip(spatial, input_dilation)]
    spans = [(k - 1) * r + 1 for k, r in zip(kernel_size, dilation)]
    if padding == "valid":
        pads = [(0, 0)] * d
    elif padding == "causal":
        pads = [(sp - 1, 0) for sp in spans]
    elif padding == "same":
        pads = []
        for L, sp, s in zip(length, spans, strides):
            total = max((math.ceil(L / s) - 1) * s + sp - L, 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = [tuple(p) for p in padding]
    out_sizes = [(L + lo + hi - sp) // s + 1 for L, (lo, hi), sp, s in zip(length, pads, spans, strides)]

    def value(b, pos, c):
        index = []
        for p, r, L in zip(pos, input_dilation, length):
            if p < 0 or p >= L or p % r:
                return 0.0
            index.append(p // r)
        return x[(b, *index, c)]

    per_group = channels // groups
    rows = []
    for b in range(n):
        for out in itertools.product(*[range(o) for o in out_sizes]):
            row = np.zeros((groups, math.prod(kernel_size) * per_group), f32)
            for t, tap in enumerate(itertools.product(*[range(k) for k in kernel_size])):
                pos = [o * s + k * r - lo for o, s, k, r, (lo, _) in zip(out, strides, tap, dilation, pads)]
                for c in range(channels):
                    row[c // per_group, t * per_group + c % per_group] = value(b, pos, c)
            rows.append(row)
    return np.array(rows, dtype=f32).reshape(-1, groups, math.prod(kernel_size) * per_group)
