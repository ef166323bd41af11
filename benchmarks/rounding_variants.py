"""Rounding variants that were measured against sum-preserving rounding per scale group and lost
(FIDELITY.md): sums kept in sub-blocks of each channel, and error diffusion along the reduction
axis.  NumPy prototypes, run with ``python benchmarks/fidelity.py --groups variants``.
"""
from __future__ import annotations

import numpy as np

import wqkernels
from fidelity import Candidate, Transform, block_view, layout


def variants(bits: int) -> list:
    """Per-channel asymmetric min/max scales; sums kept in blocks of 4, 8, 32; error diffusion."""
    base = wqkernels.Recipe(bits=bits, symmetric=False, method="minmax", rounding="nearest")
    out = [Candidate(f"asym minmax channel sum in blocks of {block}", f"int{bits}",
                     transform=_sum_preserving(base, sum_block=block)) for block in (4, 8, 32)]
    out.append(Candidate("asym minmax channel error diffusion", f"int{bits}",
                         transform=_sum_preserving(base, diffuse=True)))
    out.append(Candidate("asym minmax channel sum (prototype)", f"int{bits}", transform=_sum_preserving(base)))
    return out


def _sum_preserving(recipe: wqkernels.Recipe, sum_block: int | None = None, diffuse: bool = False) -> Transform:
    """Quantize as `recipe` does, then move the fewest codes one step (those nearest a rounding
    boundary) so that each group's codes sum to the nearest integer of their unrounded sum: the
    group's dequantized weights then keep the float sum, up to half a step.  Groups are the
    recipe's scale groups, or with `sum_block` blocks of that many along the reduction axis
    inside them; `diffuse` carries each rounding error to the next weight along the reduction
    axis instead (every run of consecutive weights keeps its sum)."""

    def transform(weights, tensors, context):
        from wqkernels._schemes import groups

        out = {}
        for t in tensors:
            view, options = layout(recipe, t)
            x = weights[t.path].reshape(view).astype(np.float32)
            qa = wqkernels.quantize(x, recipe.bits, method=recipe.method, **options)
            g = groups(x.shape, qa.axis, qa.block_size)
            scale = np.broadcast_to(_expand(qa.scale, g), x.shape).reshape(-1)
            zero = np.broadcast_to(_expand(qa.zero_point.astype(np.float32), g), x.shape).reshape(-1)
            if sum_block is not None or diffuse:
                bview, baxis = block_view(t)
                index = np.arange(x.size).reshape(bview)
                if diffuse:  # one sequence along the reduction axis per channel
                    members = np.moveaxis(index, baxis, -1).reshape(-1, bview[baxis])
                else:
                    members = _group_members(index, groups(bview, baxis, sum_block))
            else:
                members = _group_members(np.arange(x.size).reshape(x.shape), g)
            out[t.path] = _balanced(x, scale, zero, qa.bits, qa.values.dtype == np.int8, members,
                                    diffuse).reshape(t.shape)
        return out

    return transform


def _balanced(x, scale, zero, bits, symmetric, members, diffuse=False) -> np.ndarray:
    """Dequantized x with sum-preserving rounding on the given scales (a NumPy prototype)."""
    from wqkernels._schemes import scheme

    sch = scheme(bits, symmetric)
    t = x.reshape(-1).astype(np.float64) / scale + zero
    q = np.clip(np.rint(t), sch.qmin, sch.qmax)
    for row in members:
        row = row[row >= 0]
        if diffuse:
            carry = 0.0
            for i in row:
                q[i] = min(max(np.rint(t[i] + carry), sch.qmin), sch.qmax)
                carry += t[i] - q[i]
            continue
        k = int(np.rint(t[row].sum() - q[row].sum()))
        if k == 0:
            continue
        step = 1 if k > 0 else -1
        movable = row[(q[row] + step >= sch.qmin) & (q[row] + step <= sch.qmax)]
        cost = 1 - 2 * step * (t[movable] - q[movable])  # added squared error, in steps
        chosen = movable[np.argsort(cost, kind="stable")[:abs(k)]]
        q[chosen] += step
    return ((q - zero) * scale).astype(np.float32).reshape(x.shape)


def _group_members(index: np.ndarray, g) -> np.ndarray:
    """Flat indices of each group's elements as rows (padded with -1)."""
    x3 = index.reshape(g.outer, g.n, g.inner)
    if g.axis is None:
        return x3.reshape(1, -1)
    if g.block is None:
        return np.moveaxis(x3, 1, 0).reshape(g.n, -1)
    nb = -(-g.n // g.block)
    padded = np.full((g.outer, nb * g.block, g.inner), -1)
    padded[:, :g.n] = x3
    return padded.reshape(g.outer, nb, g.block, g.inner).transpose(0, 1, 3, 2).reshape(-1, g.block)


def _expand(values: np.ndarray, g) -> np.ndarray:
    """Per-group values broadcastable to the grouped array's shape."""
    if g.axis is None:
        return values.reshape(())
    if g.block is None:
        shape = [1] * len(g.shape)
        shape[g.axis] = g.n
        return values.reshape(shape)
    return np.repeat(values, g.block, axis=g.axis)[tuple(slice(None) if i != g.axis else slice(0, g.n)
                                                         for i in range(len(g.shape)))]
