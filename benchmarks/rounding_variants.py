"""Rounding variants that were measured against sum-preserving rounding per scale group and lost
(FIDELITY.md): sums kept in sub-blocks of each channel, error diffusion along the reduction axis,
and a per-channel choice between the min/max grid and clipped ones by a data-free output-error
proxy.  NumPy prototypes, run with ``python benchmarks/fidelity.py --groups variants``.
"""
from __future__ import annotations

import numpy as np

import wqkernels
from fidelity import Candidate, Transform, block_view, layout
from pruning_variants import channels, unchannels


def variants(bits: int) -> list:
    """Per-channel asymmetric min/max scales; sums kept in blocks of 4, 8, 32; error diffusion."""
    base = wqkernels.Recipe(bits=bits, symmetric=False, method="minmax", rounding="nearest")
    out = [Candidate(f"asym minmax channel sum in blocks of {block}", f"int{bits}",
                     transform=_sum_preserving(base, sum_block=block)) for block in (4, 8, 32)]
    out.append(Candidate("asym minmax channel error diffusion", f"int{bits}",
                         transform=_sum_preserving(base, diffuse=True)))
    out.append(Candidate("asym minmax channel sum (prototype)", f"int{bits}", transform=_sum_preserving(base)))
    default = wqkernels.Recipe(bits=bits, narrow_bits=0)
    out.append(Candidate("default, grid per channel by the BN proxy", f"int{bits}", transform=_grid_choice(default)))
    return out


#: the clipped ranges a channel may choose: its min and max times these
CLIPS = (1.0, 0.9, 0.8, 0.7)


def _grid_choice(recipe: wqkernels.Recipe) -> Transform:
    """Quantize as `recipe` does, but give each output channel of a kernel whose inputs come
    from a BatchNormalization (the package's ``input_moments``) the grid among its min/max range
    times :data:`CLIPS` that minimises ``E[(dW . x)^2] = sum dW^2 Var(x) + (dW . E[x])^2``, inputs
    independent with the BN's moments (sum-preserving rounding on every grid)."""

    def transform(weights, tensors, context):
        moments = _input_moments(context.path, tensors)
        out = {}
        for t in tensors:
            view, options = layout(recipe, t)
            x = np.ascontiguousarray(weights[t.path], np.float32).reshape(view)
            quantized = wqkernels.fake_quantize(x, recipe.bits, method="minmax", **options)
            if t.path not in moments or options.get("axis") is None:
                out[t.path] = quantized.reshape(t.shape)
                continue
            kind, mean, var = moments[t.path]
            other = tuple(i for i in range(x.ndim) if i != options["axis"])
            tries, errors = [], []
            for clip in CLIPS:
                if clip != 1.0:
                    lo, hi = x.min(axis=other, keepdims=True) * clip, x.max(axis=other, keepdims=True) * clip
                    grid = wqkernels.quantize(np.clip(x, lo, hi), recipe.bits, method="minmax",
                                              **dict(options, rounding="nearest"))
                    quantized = wqkernels.fake_quantize(x, recipe.bits, method="minmax", scale=grid.scale,
                                                        zero_point=grid.zero_point, **options)
                tries.append(quantized.reshape(t.shape))
                errors.append(_proxy((tries[-1] - weights[t.path]).astype(np.float64), kind, mean, var))
            best = np.argmin(np.stack(errors), axis=0)  # per output channel
            stacked = np.stack([channels(q, t.channel_axis) for q in tries])  # (tries, fan-in, channels)
            out[t.path] = unchannels(stacked[best, :, np.arange(best.size)].T, tries[0], t.channel_axis)
        return out

    return transform


def _input_moments(path: str, tensors) -> dict:
    """{kernel path: (kind, input mean, input variance)} where the layer graph knows them."""
    import wqkernels.files.graph as graph
    from wqkernels.files.source import Source

    out = {}
    with Source(path) as source:
        nodes = graph.graph(source.config)
        entries = graph._layer_entries(source, nodes)

        def bn_weights(name):
            stats = entries.get(name, {})
            if nodes[name].cls != "BatchNormalization" or not {"moving_mean", "moving_variance"} <= stats.keys():
                return None
            return {role: np.asarray(source.read(e), np.float64) for role, e in stats.items()}

        memo = {}
        for t in tensors:
            kind = graph._KINDS.get(nodes[t.layer].cls) if t.layer in nodes else None
            moments = graph.input_moments(nodes, t.layer, bn_weights, memo) if kind and t.role == "kernel" else None
            if moments is not None:
                out[t.path] = (kind, moments.mean, moments.var)
    return out


def _proxy(dw: np.ndarray, kind: str, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Per output channel E[(dw . x)^2] for independent inputs of the given moments."""
    if kind == "dense":
        m, v = np.tile(mean, dw.shape[0] // mean.size), np.tile(var, dw.shape[0] // var.size)
        return (dw * dw).T @ v + (dw.T @ m) ** 2
    flat = dw.reshape(-1, *dw.shape[-2:])
    if kind == "depthwise":  # outputs (input, multiplier)
        return ((flat * flat).sum(axis=0) * var[:, None] + (flat.sum(axis=0) * mean[:, None]) ** 2).reshape(-1)
    return np.einsum("pio,i->o", flat * flat, var) + np.einsum("pio,i->o", flat, mean) ** 2


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
