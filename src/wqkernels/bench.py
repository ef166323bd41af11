"""Speed of the kernels against their memory-bandwidth floors, with NumPy and torch for information.

Each case builds its inputs once (fixed seed) and times every implementation in the same process,
interleaved (A B A B ...), best of `repeat`.  A case's measure is its time over the time of its
floor, measured in the same run: the least memory traffic that any implementation needs
(``codes`` = ``x.max()`` + ``x.astype(np.int8)``: one read for the scale, one read and a byte
write for the codes; ``values`` = ``x.max()`` + ``x.copy()``; ``copy`` = ``x.copy()``), or, for
the scale search and global pruning, the simpler operation they are measured against.  Ratios
to floors hold from machine to machine where ratios to NumPy do not.  ``wqkernels bench``
prints the table; the pytest-benchmark suite in ``benchmarks/`` times the same cases.
"""
from __future__ import annotations

import fnmatch
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import reference as ref
from .packing import pack_bits
from .quantization import dequantize, fake_quantize, quantize, quantize_packed
from .threads import set_max_threads

LARGE = 16 * 2**20  # elements: 64 MiB of float32
SIZES = (10**3, 10**5, LARGE)
OURS = "wqkernels"


@dataclass
class Case:
    """One operation at one size: a function per implementation, all on the same inputs.

    `floor` names the implementation the case is measured against and `goal` the ratio
    (wqkernels' time / the floor's) it should stay within; the other implementations are peers.
    """

    name: str
    size: int
    impls: dict[str, Callable[[], object]] = field(default_factory=dict)
    floor: str | None = None
    goal: float | None = None

    def add_floor(self, name: str, fn: Callable[[], object], goal: float | None = None) -> None:
        self.impls[name] = fn
        self.floor, self.goal = name, goal


def _weights(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(size, dtype=np.float32)


def _matrix(size: int) -> np.ndarray:
    side = max(32, int(round(size**0.5)) // 32 * 32)  # whole blocks of 32 along both axes
    return _weights(side * side).reshape(side, side)


def codes_floor(x: np.ndarray) -> Callable[[], object]:
    """One read for a scale, one read and a byte per element written: int8 codes' traffic."""
    return lambda: (x.max(), x.astype(np.int8))


def values_floor(x: np.ndarray) -> Callable[[], object]:
    """One read for a scale, one read and a float per element written: fake-quantize's traffic."""
    return lambda: (x.max(), x.copy())


CODES = "floor: x.max() + x.astype(int8)"
VALUES = "floor: x.max() + x.copy()"
COPY = "floor: x.copy()"


def _torch():
    try:
        import warnings

        import torch
    except ImportError:
        return None
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    return torch


def _onnx_quantize():
    try:
        from onnxruntime.quantization.quant_utils import quantize_data
    except ImportError:
        return None
    return quantize_data


AXES = {"axis 0": 0, "last axis": -1}


def quantization_cases(size: int) -> list[Case]:
    """The quantization cases at `size` elements."""
    x = _weights(size)
    m = _matrix(size)
    torch = _torch()
    cases = []

    c = Case("quantize int8 per-tensor", size)
    c.impls[OURS] = lambda: quantize(x, 8)
    c.add_floor(CODES, codes_floor(x), 1.15)
    c.impls["numpy"] = lambda: np.clip(np.rint(x / (np.abs(x).max() / np.float32(127))), -127, 127).astype(np.int8)
    if torch is not None:
        t = torch.from_numpy(x)
        c.impls["torch"] = lambda: torch.quantize_per_tensor(t, float(t.abs().max()) / 127, 0, torch.qint8)
    quantize_data = _onnx_quantize()
    if quantize_data is not None:
        from onnx import TensorProto

        c.impls["onnxruntime"] = lambda: quantize_data(x, TensorProto.INT8, True)
    cases.append(c)

    for where, axis in AXES.items():
        c = Case(f"quantize int8 per-channel {where} {m.shape}", m.size)
        c.impls[OURS] = lambda axis=axis: quantize(m, 8, axis=axis)
        c.add_floor(CODES, codes_floor(m), 1.25)
        c.impls["numpy"] = lambda axis=axis: _numpy_per_axis(m, axis)
        if torch is not None:
            tm = torch.from_numpy(m)
            c.impls["torch"] = lambda axis=axis: _torch_per_axis(torch, tm, axis % 2)
        cases.append(c)

    for where, axis in AXES.items():
        c = Case(f"quantize_packed int4 block 32 {where} {m.shape}", m.size)
        c.impls[OURS] = lambda axis=axis: quantize_packed(m, 4, axis=axis, block_size=32)
        c.add_floor(CODES, codes_floor(m), 1.25)
        c.impls["quantize + pack_bits"] = lambda axis=axis: pack_bits(quantize(m, 4, axis=axis, block_size=32).values, 4)
        c.impls["numpy"] = lambda axis=axis: _numpy_nibbles(_numpy_blocked(m, 4, 32, axis))
        cases.append(c)

    qa = quantize(x, 8)
    c = Case("dequantize int8 per-tensor", size)
    c.impls[OURS] = lambda: dequantize(qa)
    c.add_floor(COPY, x.copy)
    c.impls["numpy"] = lambda: qa.values.astype(np.float32) * qa.scale
    cases.append(c)

    c = Case("fake_quantize int8 per-tensor", size)
    c.impls[OURS] = lambda: fake_quantize(x, 8)
    c.add_floor(VALUES, values_floor(x))
    c.impls["numpy"] = lambda: _numpy_fake(x)
    if torch is not None:
        t = torch.from_numpy(x)
        c.impls["torch"] = lambda: torch.fake_quantize_per_tensor_affine(t, float(t.abs().max()) / 127, 0, -127, 127)
    cases.append(c)

    for where, axis in AXES.items():
        c = Case(f"fake_quantize int8 per-channel {where} {m.shape}", m.size)
        c.impls[OURS] = lambda axis=axis: fake_quantize(m, 8, axis=axis)
        c.add_floor(VALUES, values_floor(m), 1.25)
        cases.append(c)

    c = Case(f"quantize int4 asymmetric per-channel last axis rounding='sum' {m.shape}", m.size)
    c.impls[OURS] = lambda: quantize(m, 4, symmetric=False, axis=-1, rounding="sum")
    c.add_floor("floor: the same with rounding='nearest'", lambda: quantize(m, 4, symmetric=False, axis=-1))
    cases.append(c)

    c = Case(f"quantize int4 per-channel last axis mse {m.shape}", m.size)
    c.impls[OURS] = lambda: quantize(m, 4, axis=-1, method="mse")
    c.add_floor("floor: the same with method='minmax'", lambda: quantize(m, 4, axis=-1), 5.0)
    if m.size <= 10**5:
        c.impls["numpy"] = lambda: ref.quantize(m, 4, axis=-1, method="mse")
    cases.append(c)
    return cases


def _numpy_per_axis(m, axis):
    amax = np.abs(m).max(axis=1 - axis % 2, keepdims=True)
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1))
    return np.clip(np.rint(m / s), -127, 127).astype(np.int8)


def _numpy_blocked(m, bits, block, axis):
    qmax = np.float32((1 << (bits - 1)) - 1)
    rows, cols = m.shape
    b = m.reshape(rows // block, block, cols) if axis == 0 else m.reshape(rows, cols // block, block)
    amax = np.abs(b).max(axis=1 if axis == 0 else 2, keepdims=True)
    s = np.where(amax > 0, amax / qmax, np.float32(1))
    return np.clip(np.rint(b / s), -qmax, qmax).astype(np.int8).reshape(m.shape)


def _numpy_nibbles(q):
    """NumPy's fastest int4 packing: two codes a byte, the even one in the low nibble."""
    flat = q.reshape(-1).view(np.uint8)
    return (flat[0::2] & 15) | (flat[1::2] << 4)


def _numpy_fake(x):
    s = np.abs(x).max() / np.float32(127)
    return np.clip(np.rint(x / s), -127, 127) * s


def _torch_per_axis(torch, tm, axis):
    amax = tm.abs().amax(dim=1 - axis)
    s = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    return torch.quantize_per_channel(tm, s.double(), torch.zeros_like(s, dtype=torch.long), axis, torch.qint8)


#: case builders; other modules append theirs (pruning, files)
CASE_BUILDERS: list[Callable[[int], list[Case]]] = [quantization_cases]


def time_case(case: Case, repeat: int = 7) -> dict[str, float]:
    """Best time in seconds of each implementation, interleaved, after one warm-up call each."""
    best = {name: float("inf") for name in case.impls}
    for fn in case.impls.values():
        fn()
    for _ in range(repeat):
        for name, fn in case.impls.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def set_threads(threads: int) -> None:
    """Threads for our kernels (OpenMP) and for torch, if installed."""
    set_max_threads(threads)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)


def matches(name: str, pattern: str) -> bool:
    """Whether a case name matches a glob, or contains the pattern when it has no glob characters."""
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatch(name, pattern)
    return pattern in name


def run(sizes=SIZES, pattern: str = "*", threads=(1,), repeat: int = 7, out=None) -> list[dict]:
    """Time every case matching `pattern` at each thread count and print one line per case.

    Each line gives wqkernels' time, its ratio to the case's floor (with the goal, when the case
    has one) and the peers' times as information (their time / wqkernels' time); with several
    thread counts, each later count's line also says how much faster it is than the first.
    """
    threads = (threads,) if isinstance(threads, int) else tuple(threads)
    out = sys.stdout if out is None else out  # (the stdout of the call, not of the import)
    names = sorted({case.name for builder in CASE_BUILDERS for case in builder(min(sizes))})
    if not any(matches(name, pattern) for name in names):
        raise ValueError(f"no benchmark case matches {pattern!r}; the cases: {', '.join(names)}")
    rows = []
    print(f"wqkernels bench: threads {', '.join(map(str, threads))}, best of {repeat}; "
          "measure = wqkernels' time / its floor's (goal in brackets); "
          "peers as information: their time / wqkernels' time", file=out)
    for size in sizes:
        for builder in CASE_BUILDERS:
            for case in builder(size):
                if not matches(case.name, pattern):
                    continue
                first = None
                for count in threads:
                    set_threads(count)
                    times = time_case(case, repeat)
                    row = _row(case, count, times, first)
                    first = first or row
                    rows.append(row)
                    print(_line(case, row), file=out)
    set_threads(threads[0])
    return rows


def _row(case: Case, threads: int, times: dict, first: dict | None) -> dict:
    ours = times[OURS]
    row = {"case": case.name, "size": case.size, "threads": threads, "seconds": times,
           "peers": {k: v / ours for k, v in times.items() if k not in (OURS, case.floor)}}
    if case.floor is not None:
        row.update(floor=case.floor, floor_ratio=ours / times[case.floor], goal=case.goal)
    if first is not None:
        row["speedup"] = first["seconds"][OURS] / ours
    return row


def _line(case: Case, row: dict) -> str:
    times = row["seconds"]
    text = f"{case.name:<52} n={case.size:<9} t={row['threads']} {OURS} {times[OURS] * 1e3:9.3f} ms"
    if case.floor is not None:
        goal = f" [<= {case.goal:.2f}]" if case.goal is not None else ""
        text += f"  {row['floor_ratio']:5.2f}x{goal} {case.floor} {times[case.floor] * 1e3:.3f} ms"
    if "speedup" in row:
        text += f"  {row['speedup']:.2f}x the first thread count"
    peers = "  ".join(f"{k} {times[k] * 1e3:.3f} ms ({v:.2f}x)" for k, v in row["peers"].items())
    return text + ("  | " + peers if peers else "")


def pruning_cases(size: int) -> list[Case]:
    """The pruning cases at `size` elements (names start with "prune")."""
    from .pruning import clip, prune, prune_channels, prune_global, prune_n_m, shrink
    from .statistics import error

    x = _weights(size)
    m = _matrix(size)
    layers = _layers(size, 40)
    torch = _torch()
    t = torch.from_numpy(x) if torch is not None else None
    k = int(0.7 * size)
    cases = []

    c = Case("prune sparsity 0.7", size)
    c.impls[OURS] = lambda: prune(x, 0.7)
    c.add_floor(COPY, x.copy, 1.5)
    c.impls["numpy"] = lambda: _numpy_prune(x, k)
    if torch is not None:
        c.impls["torch"] = lambda: _torch_prune(torch, t, k)
    cases.append(c)

    threshold = 0.6745  # about the median of |x|
    c = Case("prune threshold", size)
    c.impls[OURS] = lambda: prune(x, threshold=threshold)
    c.add_floor(COPY, x.copy)
    c.impls["numpy"] = lambda: np.where(np.abs(x) < np.float32(threshold), np.float32(0), x)
    if torch is not None:
        c.impls["torch"] = lambda: torch.where(t.abs() < threshold, 0.0, t)
    cases.append(c)

    c = Case("prune: clip [-1, 1]", size)
    c.impls[OURS] = lambda: clip(x, -1.0, 1.0)
    c.add_floor(COPY, x.copy)
    c.impls["numpy"] = lambda: np.clip(x, -1.0, 1.0)
    if torch is not None:
        c.impls["torch"] = lambda: torch.clamp(t, -1.0, 1.0)
    cases.append(c)

    c = Case("prune: shrink 0.1", size)
    c.impls[OURS] = lambda: shrink(x, 0.1)
    c.add_floor(COPY, x.copy)
    c.impls["numpy"] = lambda: np.sign(x) * np.maximum(np.abs(x) - np.float32(0.1), np.float32(0))
    if torch is not None:
        c.impls["torch"] = lambda: torch.nn.functional.softshrink(t, 0.1)
    cases.append(c)

    for axis in (-1, 0):
        c = Case(f"prune_n_m 2:4 {m.shape} axis {axis}", m.size)
        c.impls[OURS] = lambda axis=axis: prune_n_m(m, 2, 4, axis)
        c.add_floor(COPY, m.copy)
        c.impls["numpy"] = lambda axis=axis: _numpy_n_m(m, 2, 4, axis)
        if torch is not None:
            tm = torch.from_numpy(m)
            c.impls["torch"] = lambda axis=axis: _torch_n_m(torch, tm, 2, 4, axis)
        cases.append(c)

    whole = np.concatenate([a.reshape(-1) for a in layers.values()])
    c = Case(f"prune_global 0.7 over {len(layers)} arrays", size)
    c.impls[OURS] = lambda: prune_global(layers, 0.7)
    c.add_floor("floor: prune of one array of the same size", lambda: prune(whole, 0.7), 1.3)
    c.impls["numpy"] = lambda: _numpy_global(layers, 0.7)
    if torch is not None:
        tl = {name: torch.from_numpy(a) for name, a in layers.items()}
        c.impls["torch"] = lambda: _torch_global(torch, tl, 0.7)
    cases.append(c)

    c = Case(f"prune_channels 0.5 L2 {m.shape} axis 0", m.size)
    c.impls[OURS] = lambda: prune_channels(m, 0.5, axis=0)
    c.add_floor(COPY, m.copy)
    c.impls["numpy"] = lambda: _numpy_channels(m, 0.5)
    cases.append(c)

    y = prune(x, 0.5)
    c = Case("prune: error statistics", size)
    c.impls[OURS] = lambda: error(x, y)
    c.add_floor("floor: x.max() + y.max()", lambda: (x.max(), y.max()))
    c.impls["numpy"] = lambda: ref.error(x, y)
    cases.append(c)
    return cases


def _layers(size: int, count: int) -> dict[str, np.ndarray]:
    """`count` weight arrays of uneven sizes totalling `size` elements."""
    share = np.random.default_rng(1).uniform(0.2, 1.0, count)
    sizes = np.floor(share / share.sum() * size).astype(int)
    sizes[-1] += size - sizes.sum()
    x = _weights(size, seed=2)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return {f"layer{i}": x[bounds[i]:bounds[i + 1]].copy() for i in range(count)}


def _numpy_prune(x, k):
    a = np.abs(x)
    t = np.partition(a, k)[k]
    return np.where(a < t, np.float32(0), x)


def _torch_prune(torch, t, k):
    a = t.abs()
    return torch.where(a < a.reshape(-1).kthvalue(k + 1).values, 0.0, t)


def _numpy_n_m(m, n, group, axis):
    moved = np.moveaxis(m, axis, -1)
    runs = moved.reshape(-1, group)
    order = np.argsort(np.abs(runs), axis=1, kind="stable")
    y = runs.copy()
    np.put_along_axis(y, order[:, : group - n], 0, axis=1)
    return np.moveaxis(y.reshape(moved.shape), -1, axis)


def _torch_n_m(torch, tm, n, group, axis):
    moved = tm.movedim(axis, -1).contiguous()
    runs = moved.reshape(-1, group)
    keep = runs.abs().topk(n, dim=1).indices
    y = torch.zeros_like(runs).scatter_(1, keep, runs.gather(1, keep))
    return y.reshape(moved.shape).movedim(-1, axis)


def _numpy_global(layers, sparsity):
    flat = np.concatenate([np.abs(a).reshape(-1) for a in layers.values()])
    k = int(sparsity * flat.size)
    t = np.partition(flat, k)[k]
    return {name: np.where(np.abs(a) < t, np.float32(0), a) for name, a in layers.items()}


def _torch_global(torch, layers, sparsity):
    flat = torch.cat([a.abs().reshape(-1) for a in layers.values()])
    t = flat.kthvalue(int(sparsity * flat.numel()) + 1).values
    return {name: torch.where(a.abs() < t, 0.0, a) for name, a in layers.items()}


def _numpy_channels(m, sparsity):
    norms = np.sqrt((m.astype(np.float64) ** 2).sum(axis=1))
    drop = np.argsort(norms, kind="stable")[: int(sparsity * m.shape[0])]
    y = m.copy()
    y[drop] = 0
    return y


CASE_BUILDERS.append(pruning_cases)
