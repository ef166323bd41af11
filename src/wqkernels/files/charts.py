"""The pictures of the HTML pages, drawn with matplotlib (the optional extra ``wqkernels[report]``).

matplotlib is imported when the first picture is drawn, never by ``import wqkernels``; without
it, :func:`require` raises :class:`MissingExtra`, one line naming the extra.  Pictures are PNG
bytes (palette PNGs: a few flat colours compress to a fraction of full colour), drawn on
matplotlib's own Agg canvas (no pyplot, no global state).

- :func:`bar_panels`: a few measures per weight side by side (SQNR, error, bytes, sparsity, bits);
  labelled horizontal bars for up to :data:`LABELLED` weights, numbered vertical bars beyond.
- :class:`HistogramPainter`: one small picture per weight of its values before and after, on log
  counts, so that the levels of a low bit width show as spikes.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from .._text import printable
from .report import Histogram

__all__ = ["MissingExtra", "require", "Panel", "bar_panels", "HistogramPainter", "LABELLED"]

#: up to this many weights a chart labels each bar with the weight's name
LABELLED = 48
#: colours: the values before (light), after (dark), and lines
BEFORE, AFTER, INK = "#b4bfcc", "#c2410c", "#1f2933"
#: the size of the text in the charts, in points
FONT_SIZE = 8
#: the charts' width in inches, at DPI dots per inch (shown at DPI / 2 CSS pixels per inch)
WIDTH, DPI = 10.0, 144


class MissingExtra(ImportError):
    """The pages need matplotlib, which is not installed."""


def require() -> None:
    """Raise MissingExtra unless matplotlib can be imported (before any work is done)."""
    _canvas()


def _canvas():
    """matplotlib's Figure and Agg canvas classes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtra("HTML pages need matplotlib: pip install 'wqkernels[report]'") from None
    return Figure, FigureCanvasAgg


def _style():
    import matplotlib

    return matplotlib.rc_context({
        "font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1, "axes.titleweight": "bold",
        "axes.titlelocation": "left", "axes.spines.top": False, "axes.spines.right": False,
        "axes.edgecolor": "#7b8794", "axes.labelcolor": INK, "xtick.color": INK, "ytick.color": INK,
        "axes.grid": True, "grid.color": "#e4e7eb", "grid.linewidth": 0.6, "axes.axisbelow": True,
        "legend.frameon": False, "svg.fonttype": "none",
    })


def _png(canvas, colors: int = 64) -> bytes:
    """The canvas as a palette PNG of at most `colors` colours."""
    from PIL import Image

    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3])).quantize(colors, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="png")
    return out.getvalue()


@dataclass(frozen=True)
class Panel:
    """One measure per weight: `series` are (label, values) pairs, NaN where a weight has none;
    the first is drawn wide and light, a second narrow and dark on top of it."""

    title: str
    series: tuple
    log: bool = False
    limits: tuple | None = None


def bar_panels(labels: list, panels: list, numbers=None) -> bytes:
    """The panels side by side, one labelled row per weight (or, beyond LABELLED weights, one
    above the other with the weights' `numbers` (default: from 1) along the bottom), as PNG bytes."""
    Figure, Canvas = _canvas()
    n = len(labels)
    with _style():
        if n <= LABELLED:
            fig = Figure(figsize=(WIDTH, 0.85 + 0.19 * max(n, 2)), dpi=DPI, layout="constrained")
            axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        else:
            fig = Figure(figsize=(WIDTH, 0.35 + 1.45 * len(panels)), dpi=DPI, layout="constrained")
            axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        Canvas(fig)
        numbers = np.arange(1, n + 1) if numbers is None else np.asarray(numbers, dtype=np.float64)
        position = np.arange(n) if n <= LABELLED else numbers
        for ax, panel in zip(axes, panels):
            _draw_panel(ax, panel, position, horizontal=n <= LABELLED)
        if n <= LABELLED:
            axes[0].set_yticks(position, [_short(label) for label in labels])
            axes[0].set_ylim(n - 0.5, -0.5)
            for ax in axes:
                ax.tick_params(axis="y", length=0)
        else:
            axes[-1].set_xlim(numbers.min() - 0.5, numbers.max() + 0.5)
            axes[-1].set_xlabel("weight number (as in the table)")
        return _png(fig.canvas)


def _draw_panel(ax, panel: Panel, position: np.ndarray, horizontal: bool) -> None:
    """One panel: labelled horizontal bars, or (many weights) vertical lines, one per weight: a
    line collection draws a thousand of them in the time matplotlib takes for a few dozen bars."""
    from matplotlib.ticker import NullFormatter

    limits = panel.limits
    if panel.log:
        (ax.set_xscale if horizontal else ax.set_yscale)("log")
        (ax.xaxis if horizontal else ax.yaxis).set_minor_formatter(NullFormatter())
        limits = limits or _decades(np.concatenate([np.asarray(v, dtype=np.float64) for _, v in panel.series]))
    two = len(panel.series) > 1
    looks = ((0.8, BEFORE), (0.42, AFTER)) if two else ((0.7, AFTER),)
    # a weight's slot, in points, for the vertical lines
    span = float(position.max() - position.min()) + 1.0 if len(position) else 1.0
    slot = 72.0 * ax.get_position().width * ax.figure.get_figwidth() / span
    for (label, values), (width, color) in zip(panel.series, looks):
        values = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(values) & ((values > 0) if panel.log else True)
        if horizontal:
            ax.barh(position[keep], values[keep], width, color=color, linewidth=0)
        else:
            base = limits[0] if panel.log and limits else 0.0
            ax.vlines(position[keep], base, values[keep], color=color,
                      linewidth=max(slot * (width if two else 1.0), 0.3))
    if limits is not None:
        (ax.set_xlim if horizontal else ax.set_ylim)(*limits)
    ax.grid(axis="y" if horizontal else "x", visible=False)
    ax.set_title(panel.title)
    if two:  # beside the title, clear of the bars
        from matplotlib.patches import Patch

        handles = [Patch(color=color, label=label) for (label, _), (_, color) in zip(panel.series, looks)]
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, fontsize=FONT_SIZE - 1,
                  handlelength=0.8, handletextpad=0.3, columnspacing=0.8, borderaxespad=0.1, borderpad=0)


def _decades(values: np.ndarray) -> tuple | None:
    """Limits of a log axis on whole decades around the positive finite values, so that at least
    two decades are labelled (None when there are no such values)."""
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return None
    low = math.floor(math.log10(values.min()))
    return 10.0 ** low, 10.0 ** max(math.ceil(math.log10(values.max())), low + 1)


def _short(label: str, limit: int = 38) -> str:
    """A label cut to `limit` characters, keeping its end (where weight names differ), its
    control characters escaped (no font draws them)."""
    label = printable(label)
    return label if len(label) <= limit else "…" + label[-(limit - 1):]


class HistogramPainter:
    """Small PNG pictures of histograms, all drawn on one reused figure: making a figure and its
    axes for each picture costs ten times more than drawing the picture.

    The picture is the data alone (no axes: the page writes the range beside it): the values
    before as a light area, after as a dark one over it, counts on a log scale, a thin line at zero.
    `scale` renders that many pixels per CSS pixel (2: sharp on high-density screens).
    """

    def __init__(self, width: int = 300, height: int = 76, scale: int = 2):
        Figure, Canvas = _canvas()
        self.width, self.height, self.scale = width, height, scale
        self.figure = Figure(figsize=(width / 100, height / 100), dpi=100 * scale)
        Canvas(self.figure)
        self.axes = self.figure.add_axes((0.0, 0.0, 1.0, 1.0))
        self.axes.set_axis_off()
        self.axes.set_yscale("log")
        edges, counts = np.arange(2.0), np.ones(1)
        self.before = self.axes.stairs(counts, edges, fill=True, color=BEFORE, baseline=0.5, linewidth=0)
        self.after = self.axes.stairs(counts, edges, fill=True, color=AFTER, alpha=0.7, baseline=0.5,
                                      linewidth=0)
        self.zero = self.axes.axvline(0.0, color=INK, linewidth=0.35 * scale)

    def png(self, histogram: Histogram) -> bytes:
        """The picture of `histogram` as PNG bytes (adjacent bins summed for small weights)."""
        factor = _merged_bins(len(histogram.before), int(histogram.before.sum()))
        edges = histogram.edges[::factor]
        before = np.maximum(_merge(histogram.before, factor), 0.5)  # empty bins sit on the baseline, out of sight
        self.before.set_data(before, edges)
        self.before.set_facecolor(BEFORE if histogram.after is not None else "#7b8794")
        top = float(before.max())
        if histogram.after is not None:
            after = np.maximum(_merge(histogram.after, factor), 0.5)
            self.after.set_data(after, edges)
            top = max(top, float(after.max()))
        self.after.set_visible(histogram.after is not None)
        self.zero.set_visible(histogram.low < 0 < histogram.high)
        self.axes.set_xlim(histogram.low, histogram.high)
        self.axes.set_ylim(0.7, top * 1.6)
        return _png(self.figure.canvas, colors=16)


#: a small weight's histogram is drawn with adjacent bins summed, down to this many bins, until
#: they hold this many values on average (128 bins of a 3x3x1x16 kernel are mostly empty)
MIN_BINS, MIN_AVERAGE = 32, 4


def _merged_bins(bins: int, values: int) -> int:
    """How many adjacent bins of `bins` to draw as one, for a histogram of `values` values."""
    factor = 1
    while bins % (2 * factor) == 0 and bins // (2 * factor) >= MIN_BINS and values < MIN_AVERAGE * bins / factor:
        factor *= 2
    return factor


def _merge(counts: np.ndarray, factor: int) -> np.ndarray:
    return counts.reshape(-1, factor).sum(axis=1) if factor > 1 else counts
