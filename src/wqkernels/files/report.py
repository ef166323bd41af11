"""What a rewrite did: one row per weight and totals, as a text table or a JSON-ready dict."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .._text import note_lines, printable, table

#: equal bins of the histograms a report keeps of each weight's values (before and after)
HISTOGRAM_BINS = 128


@dataclass(frozen=True)
class Histogram:
    """Counts of a weight's values in equal bins from `low` to `high`: `before` a rewrite and
    `after` it (of two files compared: the first and the second; of one file: `before` only)."""

    low: float
    high: float
    before: np.ndarray
    after: np.ndarray | None = None

    @classmethod
    def of(cls, counts: np.ndarray, edges: np.ndarray) -> Histogram:
        """From the counts and edges :func:`wqkernels.statistics.compare` (two rows: before and
        after) or :func:`~wqkernels.statistics.histogram` (one) returns."""
        counts = np.asarray(counts)
        low, high = float(edges[0]), float(edges[-1])
        return cls(low, high, counts) if counts.ndim == 1 else cls(low, high, counts[0], counts[1])

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high, len(self.before) + 1)

    def to_dict(self) -> dict:
        d = {"range": [self.low, self.high], "before": [int(c) for c in self.before]}
        if self.after is not None:
            d["after"] = [int(c) for c in self.after]
        return d

    @classmethod
    def from_dict(cls, d) -> Histogram | None:
        """The histogram of a report's JSON (None when it has none, or not a usable one)."""
        try:
            low, high = (float(v) for v in d["range"])
            before = np.asarray(d["before"], dtype=np.int64)
            after = np.asarray(d["after"], dtype=np.int64) if d.get("after") is not None else None
        except (KeyError, TypeError, ValueError):
            return None
        if before.ndim != 1 or not before.size or (after is not None and after.shape != before.shape):
            return None
        return cls(low, high, before, after)


@dataclass(frozen=True)
class WeightInfo:
    """One weight dataset of a Keras file, as :func:`wqkernels.inspect` lists it."""

    path: str
    layer: str
    layer_class: str | None
    role: str
    prunable: bool
    shape: tuple
    dtype: str
    nbytes: int
    sparsity: float
    role_source: str = "config"
    storage: str = "dataset"
    histogram: Histogram | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["histogram"] = None if self.histogram is None else self.histogram.to_dict()
        return d


@dataclass
class WeightRow:
    """The fate of one weight in a rewrite."""

    path: str
    role: str
    shape: tuple
    rewritten: bool
    sparsity_before: float
    sparsity_after: float
    bits: int | None
    mse: float | None
    sqnr_db: float | None
    bytes_before: int
    bytes_after: int
    dtype: str | None = None      # "float32", or what it became: "bfloat16->int8"
    layer: str | None = None
    layer_class: str | None = None
    histogram: Histogram | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["histogram"] = None if self.histogram is None else self.histogram.to_dict()
        for k in ("mse", "sqnr_db"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = str(d[k])  # JSON has no inf
        return d


@dataclass
class Report:
    """Per-weight rows and totals of one rewrite; picklable, ``to_dict()`` is JSON-ready."""

    source: str
    destination: str
    layout: str
    recipe: dict
    rows: list = field(default_factory=list)
    size_before: int = 0
    size_after: int = 0
    seconds: float = 0.0
    role_source: str = "config"
    notes: list = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Size before / size after."""
        return self.size_before / self.size_after if self.size_after else float("inf")

    @property
    def sparsity(self) -> float:
        """Achieved fraction of zeros over all prunable weights."""
        total = sum(math.prod(r.shape) for r in self.rows)
        return sum(r.sparsity_after * math.prod(r.shape) for r in self.rows) / total if total else 0.0

    @property
    def bits_per_weight(self) -> float:
        """Average stored bits per prunable weight (quantized at their bits, others at 8 * itemsize)."""
        total = sum(math.prod(r.shape) for r in self.rows)
        if not total:
            return 0.0
        stored = sum(math.prod(r.shape) * (r.bits if r.bits else 8 * r.bytes_after / max(math.prod(r.shape), 1))
                     for r in self.rows)
        return stored / total

    def to_dict(self) -> dict:
        return {
            "source": self.source, "destination": self.destination, "layout": self.layout,
            "recipe": self.recipe, "role_source": self.role_source, "notes": list(self.notes),
            "weights": [r.to_dict() for r in self.rows],
            "totals": {"size_before": self.size_before, "size_after": self.size_after,
                       "ratio": self.ratio, "seconds": self.seconds, "sparsity": self.sparsity,
                       "bits_per_weight": self.bits_per_weight,
                       "weights_rewritten": sum(r.rewritten for r in self.rows)},
        }

    def table(self, weights: bool = True) -> str:
        """The report as a fixed-width text table (without `weights`: its last lines only)."""
        head = ("weight", "role", "shape", "dtype", "sparsity", "bits", "mse", "SQNR dB", "bytes")
        lines = []
        for r in self.rows if weights else ():
            sp = f"{r.sparsity_before:.2f}->{r.sparsity_after:.2f}"
            lines.append((r.path, r.role, "x".join(map(str, r.shape)), r.dtype or "-", sp, str(r.bits or "-"),
                          "-" if r.mse is None else f"{r.mse:.3g}",
                          "-" if r.sqnr_db is None else f"{r.sqnr_db:.1f}",
                          f"{r.bytes_before}->{r.bytes_after}"))
        out = table(head, lines) if weights else []
        # (file names and notes naming layers escaped like the table's cells: one line each)
        out.append(printable(f"{self.source} -> {self.destination} ({self.layout}; roles from {self.role_source})"))
        out.append(f"size {self.size_before} -> {self.size_after} bytes, ratio {self.ratio:.2f}, "
                   f"sparsity {self.sparsity:.3f}, {self.bits_per_weight:.2f} bits/weight, "
                   f"{self.seconds:.2f} s")
        out.extend(note_lines(self.notes))
        return "\n".join(out)
