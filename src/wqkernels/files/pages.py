"""Self-contained HTML pages: a rewrite's report, a batch's, a file's weights, two files compared.

Each page is one file with its pictures inside (PNG data URIs, drawn by :mod:`.charts` with
matplotlib, the extra ``wqkernels[report]``), no network access and nothing outside it.  It reads
with JavaScript off: a few lines of inline script only make the tables sortable by a click on a
column's header.

The pages are built from the JSON-ready documents (``Report.to_dict()``, ``BatchResult.to_dict()``,
``Comparison.to_dict()``), so a report saved with ``--report`` renders later, and so does one
written before reports carried histograms and layer names: what a document lacks is left out of
the page.
"""
from __future__ import annotations

import base64
import html
import math
import os
from datetime import datetime, timezone

from .._text import listing
from .._version import __version__
from . import charts
from .atomic import written
from .report import Histogram

__all__ = ["report_page", "inspect_page", "compare_page", "page", "write_page"]

#: above this many histograms in a page they are drawn at one pixel per CSS pixel instead of two
SHARP_HISTOGRAMS = 400
#: a batch's page draws each file's own chart up to this many files (each costs ~20 kB; the
#: batch's chart shows every file)
CHARTED_FILES = 20


# ---- the public functions ---------------------------------------------------------------------

def report_page(report) -> str:
    """The page of a rewrite's report: a :class:`~.report.Report`, its ``to_dict()``, or a
    batch's ``BatchResult.to_dict()`` (one row per file, then a section per file)."""
    document = report.to_dict() if hasattr(report, "to_dict") else report
    if _kind(document) == "batch":
        return _batch_page(document)
    if _kind(document) != "report":
        raise ValueError("not the report of a rewrite (no 'weights' list)")
    painter = _painter(len(document.get("weights") or []))
    body = _report_body(document, painter, level=2)
    title = f"{_name(document.get('source'))} → {_name(document.get('destination'))}"
    return _document(f"wqkernels report: {title}", title, body)


def inspect_page(path, infos) -> str:
    """The page of a file's weights as they are: ``inspect(path, histograms=True)`` (a list of
    :class:`~.report.WeightInfo`, or of their ``to_dict()``)."""
    rows = [i.to_dict() if hasattr(i, "to_dict") else dict(i) for i in infos]
    path = os.fspath(path)
    model = [r for r in rows if r.get("role") != "optimizer"]
    state = [r for r in rows if r.get("role") == "optimizer"]
    prunable = [r for r in model if r.get("prunable")]
    painter = _painter(sum(1 for r in model if r.get("histogram")))
    sources = sorted({str(r.get("role_source")) for r in model if r.get("role_source")})
    summary = [
        ("file", _code(path)),
        ("size on disk", _bytes(_file_size(path))),
        ("weights", f"{len(model)} tensors, {_count(sum(_size(r) for r in model))} values, "
                    f"{_bytes(sum(r.get('nbytes', 0) for r in model))} stored"),
        ("prunable kernels", f"{len(prunable)} tensors, {_count(sum(_size(r) for r in prunable))} values, "
                             f"sparsity {_pct(_weighted(prunable, 'sparsity'))}"),
        ("optimizer state", f"{len(state)} tensors, {_bytes(sum(r.get('nbytes', 0) for r in state))}"
                            if state else "none"),
        ("roles from", html.escape(", ".join(sources) or "-")),
    ]
    parts = [_section("Summary", _dl(summary), 2, "summary")]
    if model:
        panels = [charts.Panel("bytes stored (log)", (("bytes", [r.get("nbytes") for r in model]),), log=True)]
        extremes = [_largest(r.get("histogram")) for r in model]
        if any(v is not None for v in extremes):
            panels.append(charts.Panel("largest |value| (log)", (("largest", extremes),), log=True))
        if any(r.get("sparsity") for r in model):
            panels.append(charts.Panel("sparsity", (("sparsity", [r.get("sparsity") for r in model]),),
                                       limits=(0, 1)))
        chart = charts.bar_panels([_label(r) for r in model], panels)
        parts.append(_section("Charts", _figure(chart, "Per weight (optimizer state left out): bytes stored, the "
                                                       "largest magnitude of its values and, when any weight has "
                                                       "zeros, the fraction of them that are zero.",
                                                "bytes, largest value and sparsity per weight"), 2, "charts"))
    head = ("#", "weight", "layer: class, role", "prunable", "shape, dtype", "bytes", "sparsity", "values")
    table = _table(head, [[
        _cell(k + 1, k + 1), _path_cell(r.get("path")), _layer_cell(r),
        _cell("yes" if r.get("prunable") else "no"), _shape_cell(r.get("shape"), _storage(r)),
        _bytes_cell(r.get("nbytes")), _fraction_cell(r.get("sparsity")),
        _histogram_cell(r.get("histogram"), painter, r.get("path"))] for k, r in enumerate(model)])
    parts.append(_section("Weights", _note("Histograms: the values of each weight from its smallest to its "
                                           "largest (the range under it), counts on a log scale; the thin "
                                           "line is zero.") + table, 2, "weights"))
    if state:
        state_table = _table(("#", "weight", "shape, dtype", "bytes"), [[
            _cell(k + 1, k + 1), _path_cell(r.get("path")), _shape_cell(r.get("shape"), _storage(r)),
            _bytes_cell(r.get("nbytes"))] for k, r in enumerate(state)])
        parts.append(_section("Optimizer state", f"<details><summary>{len(state)} tensors</summary>"
                                                 f"{state_table}</details>", 2, "optimizer"))
    return _document(f"wqkernels inspect: {_name(path)}", _name(path), "\n".join(parts))


def compare_page(comparison) -> str:
    """The page of two files compared: a :class:`~.compare.Comparison` or its ``to_dict()``."""
    d = comparison.to_dict() if hasattr(comparison, "to_dict") else comparison
    if _kind(d) != "compare":
        raise ValueError("not a comparison of two files (no 'only_in_a')")
    rows = list(d.get("weights") or [])
    totals = d.get("totals") or {}
    painter = _painter(sum(1 for r in rows if r.get("histogram")))
    a, b = d.get("a"), d.get("b")
    summary = [
        ("first", f"{_code(a)} ({html.escape(str(d.get('layout_a', '?')))}), {_bytes(totals.get('size_a'))}"),
        ("second", f"{_code(b)} ({html.escape(str(d.get('layout_b', '?')))}), {_bytes(totals.get('size_b'))}"),
        ("weights compared", f"{len(rows)}, of which {totals.get('identical', 0)} identical"),
        ("only in one file", f"first: {len(d.get('only_in_a') or [])}, second: {len(d.get('only_in_b') or [])}"),
        ("difference, all weights", f"mse {_num(totals.get('mse'), '.3g')}, max |diff| "
                                    f"{_num(totals.get('max_abs'), '.3g')}, SQNR {_db(totals.get('sqnr_db'))}"),
        ("time", _seconds(totals.get("seconds"))),
    ]
    summary += [("note", html.escape(str(n))) for n in d.get("notes") or []]
    parts = [_section("Summary", _dl(summary), 2, "summary")]
    numbers = [k + 1 for k, r in enumerate(rows) if not r.get("identical")]
    differing = [rows[k - 1] for k in numbers]
    if differing:
        labels = [_label(r) for r in differing]
        panels = [
            charts.Panel("SQNR (dB)", (("SQNR", [_float(r.get("sqnr_db")) for r in differing]),)),
            charts.Panel("mse (log)", (("mse", [_float(r.get("mse")) for r in differing]),), log=True),
            charts.Panel("max |diff| (log)", (("max |diff|", [_float(r.get("max_abs")) for r in differing]),),
                         log=True),
            charts.Panel("sparsity", (("first", [r.get("sparsity_a") for r in differing]),
                                      ("second", [r.get("sparsity_b") for r in differing])), limits=(0, 1)),
        ]
        if len({(r.get("bits_a"), r.get("bits_b")) for r in differing} - {(None, None)}) > 1:
            panels.append(charts.Panel("bits", (("first", [r.get("bits_a") for r in differing]),
                                                ("second", [r.get("bits_b") for r in differing])),
                                       limits=(0, 8.5)))
        chart = charts.bar_panels(labels, panels, numbers)
        parts.append(_section("Charts", _figure(chart, f"The {len(differing)} weights that differ: SQNR of the "
                                                       "second file against the first, mean squared and largest "
                                                       "difference, sparsity of each.",
                                                "difference per weight"), 2, "charts"))
    else:
        parts.append(_section("Charts", _note("Every compared weight is identical in the two files."), 2, "charts"))
    head = ("#", "weight", "layer: class, role", "shape, dtype", "sparsity", "bits", "mse", "max |diff|",
            "SQNR dB", "bytes", "values: first, second")
    table = _table(head, [[
        _cell(k + 1, k + 1), _path_cell(r.get("path"), r.get("path_b")), _layer_cell(r),
        _shape_cell(r.get("shape"), _pair(r.get("dtype_a"), r.get("dtype_b"))),
        _change_cell(r.get("sparsity_a"), r.get("sparsity_b")),
        _cell(html.escape(_pair(r.get("bits_a") or "-", r.get("bits_b") or "-"))),
        _number_cell(r.get("mse"), ".3g"), _number_cell(r.get("max_abs"), ".3g"),
        _cell("identical", math.inf) if r.get("identical") else _number_cell(r.get("sqnr_db"), ".1f"),
        _bytes_change_cell(r.get("bytes_a"), r.get("bytes_b")),
        _histogram_cell(r.get("histogram"), painter, r.get("path"))] for k, r in enumerate(rows)])
    parts.append(_section("Weights", _note("Histograms: the first file's values as a light area, the "
                                           "second's as a dark area over it, over the range under them, counts "
                                           "on a log scale; the thin line is zero.") + table, 2, "weights"))
    for key, which in (("only_in_a", "first"), ("only_in_b", "second")):
        only = d.get(key) or []
        if only:
            items = "".join(f"<li>{_code(p)}</li>" for p in only)
            parts.append(_section(f"Only in the {which} file", f"<ul>{items}</ul>", 2, key.replace("_", "-")))
    title = f"{_name(a)} vs {_name(b)}"
    return _document(f"wqkernels compare: {title}", title, "\n".join(parts))


def page(document) -> str:
    """The page of any JSON document wqkernels writes: a report, a batch's, a comparison."""
    kind = _kind(document)
    if kind in ("report", "batch"):
        return report_page(document)
    if kind == "compare":
        return compare_page(document)
    raise ValueError("not a wqkernels report: neither a rewrite's (weights), a batch's (files) nor a "
                     "comparison's (only_in_a)")


def write_page(path, text: str) -> None:
    """Write a page to `path` atomically (OSError or KerasFileError when it cannot)."""
    path = os.fspath(path)
    with written(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


# ---- the documents ----------------------------------------------------------------------------

def _kind(document) -> str | None:
    if not isinstance(document, dict):
        return None
    if isinstance(document.get("files"), list) and isinstance(document.get("totals"), dict):
        return "batch"
    if "only_in_a" in document and isinstance(document.get("weights"), list):
        return "compare"
    if isinstance(document.get("weights"), list):
        return "report"
    return None


def _report_body(d: dict, painter, level: int, anchor: str = "", chart: bool = True) -> str:
    """Summary, charts (unless not `chart`) and weights of one file's report, headed at `level`."""
    rows = [r for r in d.get("weights") or [] if isinstance(r, dict)]
    totals = d.get("totals") or {}
    recipe = d.get("recipe") or {}
    rewritten = [r for r in rows if r.get("rewritten")]
    kept = [r for r in rows if not r.get("rewritten")]
    summary = [
        ("source", f"{_code(d.get('source'))} ({html.escape(str(d.get('layout', '?')))})"),
        ("destination", _code(d.get("destination"))),
        ("size", f"{_bytes(totals.get('size_before'))} → {_bytes(totals.get('size_after'))}, "
                 f"ratio {_num(totals.get('ratio'), '.2f')}"),
        ("bits per weight", _num(totals.get("bits_per_weight"), ".2f")),
        ("sparsity", _pct(totals.get("sparsity"))),
        ("time", _seconds(totals.get("seconds"))),
        ("recipe", _recipe(recipe)),
        ("storage", html.escape(f"{recipe.get('storage', 'float32')}" + (
            f", {recipe['compress']} compression" if recipe.get("compress") not in (None, "none") else ""))),
        ("weights rewritten", f"{len(rewritten)} of {len(rows)} prunable kernels"),
        ("kept as they were", _kept(kept)),
        ("roles from", html.escape(str(d.get("role_source", "?")))),
    ]
    summary += [("note", html.escape(str(n))) for n in d.get("notes") or []]
    parts = [_section("Summary", _dl(summary), level, anchor + "summary")]
    if rows and chart:
        parts.append(_section("Charts", _report_chart(rows), level, anchor + "charts"))
    head = ("#", "weight", "layer: class, role", "shape, dtype", "bits", "sparsity", "mse", "SQNR dB",
            "bytes", "values: before, after")
    table = _table(head, [[
        _cell(k + 1, k + 1), _path_cell(r.get("path")), _layer_cell(r),
        _shape_cell(r.get("shape"), r.get("dtype") or "?"),
        _number_cell(r.get("bits"), "d"), _change_cell(r.get("sparsity_before"), r.get("sparsity_after")),
        _number_cell(r.get("mse"), ".3g"), _number_cell(r.get("sqnr_db"), ".1f"),
        _bytes_change_cell(r.get("bytes_before"), r.get("bytes_after")),
        _histogram_cell(r.get("histogram"), painter, r.get("path")) if r.get("rewritten")
        else _cell('<span class="muted">kept as it was</span>')] for k, r in enumerate(rows)])
    note = _note("Histograms: each weight's values before the rewrite as a light area, after it as a dark "
                 "area over it, over the range under them, counts on a log scale; the thin line is zero.  With "
                 "one scale per tensor the levels of a low bit width show as spikes; per channel or per block "
                 "the levels of all the scales lie over each other.")
    parts.append(_section("Weights", note + table, level, anchor + "weights"))
    return "\n".join(parts)


def _report_chart(rows: list) -> str:
    labels = [_label(r) for r in rows]
    panels = [
        charts.Panel("SQNR (dB)", (("SQNR", [_float(r.get("sqnr_db")) for r in rows]),)),
        charts.Panel("mse (log)", (("mse", [_float(r.get("mse")) for r in rows]),), log=True),
        charts.Panel("bytes (log)", (("before", [r.get("bytes_before") for r in rows]),
                                     ("after", [r.get("bytes_after") for r in rows])), log=True),
        charts.Panel("sparsity", (("before", [r.get("sparsity_before") for r in rows]),
                                  ("after", [r.get("sparsity_after") for r in rows])), limits=(0, 1)),
    ]
    if len({r.get("bits") for r in rows if r.get("bits")}) > 1:  # chosen per weight (a target SQNR)
        panels.append(charts.Panel("bits", (("bits", [r.get("bits") for r in rows]),), limits=(0, 8.5)))
    caption = ("Per prunable kernel: SQNR of the rewritten values against the original (higher is closer; "
               "unchanged weights have none), mean squared error, bytes stored before and after, sparsity "
               "before and after" + (", bits of the quantization." if len(panels) == 5 else "."))
    return _figure(charts.bar_panels(labels, panels), caption, "error, bytes, sparsity and bits per weight")


def _batch_page(d: dict) -> str:
    totals = d.get("totals") or {}
    files = [f for f in d.get("files") or [] if isinstance(f, dict)]
    reports = [f.get("report") for f in files if isinstance(f.get("report"), dict)]
    painter = _painter(sum(len(r.get("weights") or []) for r in reports))
    summary = [
        ("files", f"{totals.get('files', len(files))}: {totals.get('ok', 0)} ok, {totals.get('failed', 0)} failed, "
                  f"{totals.get('skipped', 0)} skipped" + (f", {totals.get('not_done')} not done (interrupted)"
                                                            if totals.get("interrupted") else "")),
        ("size", f"{_bytes(totals.get('bytes_in'))} → {_bytes(totals.get('bytes_out'))}, "
                 f"ratio {_num(totals.get('ratio'), '.2f')}"),
        ("time", _seconds(totals.get("seconds"))),
    ]
    if reports:
        summary.insert(2, ("recipe", _recipe(reports[0].get("recipe") or {})))
    summary += [("note", html.escape(str(n))) for n in d.get("notes") or []]
    parts = [_section("Summary", _dl(summary), 2, "summary")]
    done = [(k, f) for k, f in enumerate(files) if isinstance(f.get("report"), dict)]
    if done:
        labels = [_name(f.get("source")) for _, f in done]
        panels = [
            charts.Panel("bytes (log)", (("before", [f.get("size_before") for _, f in done]),
                                         ("after", [f.get("size_after") for _, f in done])), log=True),
            charts.Panel("ratio", (("ratio", [_float((f["report"].get("totals") or {}).get("ratio"))
                                              for _, f in done]),)),
            charts.Panel("bits per weight", (("bits", [(f["report"].get("totals") or {}).get("bits_per_weight")
                                                       for _, f in done]),)),
            charts.Panel("sparsity", (("sparsity", [(f["report"].get("totals") or {}).get("sparsity")
                                                    for _, f in done]),), limits=(0, 1)),
        ]
        parts.append(_section("Charts", _figure(charts.bar_panels(labels, panels),
                                                "Per file rewritten: size before and after, ratio, bits per "
                                                "prunable weight and their sparsity.", "size, ratio, bits and "
                                                "sparsity per file"), 2, "charts"))
    head = ("#", "status", "source", "destination", "before", "after", "ratio", "bits/weight", "sparsity",
            "seconds", "error")
    rows = []
    for k, f in enumerate(files):
        t = (f.get("report") or {}).get("totals") or {}
        source = _code(f.get("source"))
        if isinstance(f.get("report"), dict):
            source = f'<a href="#file-{k + 1}">{source}</a>'
        rows.append([_cell(k + 1, k + 1), _cell(html.escape(str(f.get("status", "?")))), _cell(source),
                     _cell(_code(f.get("destination"))), _bytes_cell(f.get("size_before")),
                     _bytes_cell(f.get("size_after") if f.get("status") == "ok" else None),
                     _number_cell(t.get("ratio"), ".2f"), _number_cell(t.get("bits_per_weight"), ".2f"),
                     _fraction_cell(t.get("sparsity")), _number_cell(t.get("seconds"), ".2f"),
                     _cell(html.escape(str(f.get("error") or "")))])
    parts.append(_section("Files", _table(head, rows), 2, "files"))
    for k, f in done:
        report = f["report"]
        body = _report_body(report, painter, level=3, anchor=f"file-{k + 1}-", chart=len(done) <= CHARTED_FILES)
        heading = f"{k + 1}. {_code(f.get('source'))} → {_code(f.get('destination'))}"
        parts.append(f'<section class="file" id="file-{k + 1}"><h2>{heading}</h2>\n{body}\n'
                     f'<p><a href="#files">back to the files</a></p></section>')
    title = f"{totals.get('files', len(files))} files"
    return _document(f"wqkernels batch report: {title}", f"Batch rewrite: {title}", "\n".join(parts))


# ---- pieces of HTML ---------------------------------------------------------------------------

def _painter(count: int):
    return charts.HistogramPainter(width=256, height=72, scale=2 if count <= SHARP_HISTOGRAMS else 1)


def _document(title: str, heading: str, body: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n'
            f'<header><h1>{html.escape(heading)}</h1><p class="muted">wqkernels {__version__}, {stamp}</p></header>\n'
            f'<main>\n{body}\n</main>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n')


def _section(title: str, content: str, level: int, anchor: str) -> str:
    return f'<section id="{anchor}"><h{level}>{html.escape(title)}</h{level}>\n{content}\n</section>'


def _dl(pairs: list) -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _note(text: str) -> str:
    return f'<p class="muted">{html.escape(text)}</p>'


def _figure(png: bytes, caption: str, alt: str) -> str:
    return (f'<figure><img class="chart" alt="{html.escape(alt)}" src="{_data_uri(png)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(head: tuple, rows: list) -> str:
    """A sortable table: `rows` of cells made by :func:`_cell` (HTML and a sort key)."""
    th = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in head)
    body = "\n".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return (f'<div class="scroll"><table class="sortable">\n<thead><tr>{th}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _cell(content, key=None) -> str:
    """A table cell of `content` (HTML), sorted by the number `key` when given, else by its text."""
    if key is None:
        return f"<td>{content}</td>"
    return f'<td class="num" data-v="{float(key)!r}">{content}</td>'


def _number_cell(value, fmt: str) -> str:
    v = _float(value)
    if v is None:
        return '<td class="num" data-v="">-</td>'
    if math.isinf(v):
        return f'<td class="num" data-v="{v!r}">{"∞" if v > 0 else "−∞"}</td>'
    return _cell(format(int(v) if fmt == "d" else v, fmt), v)


def _fraction_cell(value) -> str:
    v = _float(value)
    return '<td class="num" data-v="">-</td>' if v is None else _cell(_pct(v), v)


def _change_cell(before, after) -> str:
    a, b = _float(before), _float(after)
    if b is None:
        return _fraction_cell(a)
    return _cell(f"{_pct(a)[:-2]} → {_pct(b)}" if a is not None else f"- → {_pct(b)}", b)


def _bytes_cell(value) -> str:
    v = _float(value)
    return '<td class="num" data-v="">-</td>' if v is None else _cell(_bytes(v), v)


def _bytes_change_cell(before, after) -> str:
    a, b = _float(before), _float(after)
    if b is None:
        return _bytes_cell(a)
    return _cell(f"{_bytes(a)} → {_bytes(b)}", b)


def _shape_cell(shape, dtype: str) -> str:
    """The shape, the dtype under it; sorted by the number of values."""
    shape = list(shape or [])
    under = f'<div class="muted small">{html.escape(str(dtype))}</div>'
    return _cell(html.escape("×".join(map(str, shape)) or "scalar") + under, math.prod(int(n) for n in shape))


def _histogram_cell(d, painter, name) -> str:
    h = Histogram.from_dict(d) if isinstance(d, dict) else None
    if h is None:
        return '<td class="muted">-</td>'
    alt = f"histogram of {name}"
    img = (f'<img class="hist" width="{painter.width}" height="{painter.height}" alt="{html.escape(str(alt))}" '
           f'src="{_data_uri(painter.png(h))}">')
    ends = f"<span>{_tick(h.low)}</span><span>{_tick(h.high)}</span>"
    return f'<td class="histogram">{img}<div class="range">{ends}</div></td>'


def _path_cell(path, other=None) -> str:
    """A weight's path (and its pair's when it differs), breakable after each slash."""
    text = _code(path, breaks=True)
    if other is not None and other != path:
        text += f'<br><span class="muted">~ </span>{_code(other, breaks=True)}'
    return f'<td class="path">{text}</td>'


def _layer_cell(row: dict) -> str:
    what = ", ".join(html.escape(str(v)) for v in (row.get("layer_class") or "?", row.get("role")) if v)
    return f'<td class="layer">{html.escape(str(row.get("layer") or ""))}<div class="muted small">{what}</div></td>'


def _pair(a, b) -> str:
    return str(a) if a == b else f"{a} / {b}"


def _code(text, breaks: bool = False) -> str:
    """`text` as code; with `breaks`, lines may break after its slashes."""
    text = html.escape(str(text if text is not None else "?"))
    return f"<code>{text.replace('/', '/<wbr>') if breaks else text}</code>"


def _recipe(recipe: dict) -> str:
    """The recipe's settings that do something (not None, not off, not empty)."""
    shown = [(k, v) for k, v in recipe.items() if v not in (None, False, "none", "", (), [])]
    return ", ".join(f"{html.escape(str(k))} {html.escape(_value(v))}" if v is not True else html.escape(str(k))
                     for k, v in shown) or "copy"


def _value(v) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _kept(rows: list) -> str:
    if not rows:
        return "none of the prunable kernels (every other weight is copied as it was)"
    names = listing(_code(r.get("path")) for r in rows)
    return f"{len(rows)} prunable kernels: {names} (and every weight that is not a kernel)"


# ---- values -----------------------------------------------------------------------------------

def _float(value) -> float | None:
    """A number of a document (JSON writes infinity as the string "inf"), or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _num(value, fmt: str) -> str:
    v = _float(value)
    if v is None:
        return "-"
    return ("∞" if v > 0 else "−∞") if math.isinf(v) else format(v, fmt)


def _db(value) -> str:
    v = _float(value)
    return "-" if v is None else f"{_num(v, '.1f')} dB"


def _pct(value) -> str:
    v = _float(value)
    return "-" if v is None else f"{100 * v:.1f} %"


def _bytes(value) -> str:
    v = _float(value)
    if v is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{int(v)} B"


def _count(n: int) -> str:
    return f"{n:,}"


def _seconds(value) -> str:
    v = _float(value)
    return "-" if v is None else f"{v:.2f} s"


def _tick(v: float) -> str:
    return html.escape(f"{v:.3g}".replace("-", "−"))


def _size(row: dict) -> int:
    return math.prod(int(n) for n in row.get("shape") or [])


def _weighted(rows: list, key: str) -> float | None:
    total = sum(_size(r) for r in rows)
    return sum(_size(r) * (r.get(key) or 0.0) for r in rows) / total if total else None


def _largest(histogram) -> float | None:
    """The largest magnitude of a weight's values: the larger end of its histogram's range."""
    h = Histogram.from_dict(histogram) if isinstance(histogram, dict) else None
    return None if h is None else max(abs(h.low), abs(h.high))


def _label(row: dict) -> str:
    layer, role = row.get("layer"), row.get("role")
    return f"{layer}/{role}" if layer and role else str(row.get("path", "?"))


def _storage(row: dict) -> str:
    storage = row.get("storage") or "dataset"
    return str(row.get("dtype", "?")) if storage == "dataset" else f"{row.get('dtype', '?')} ({storage})"


def _name(path) -> str:
    return os.path.basename(str(path)) if path else "?"


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


_STYLE = """
:root { color-scheme: light; --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --band: #f5f7fa; --accent: #c2410c; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: #fff; }
header, main { max-width: 1500px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 18px; border-bottom: 2px solid var(--accent); }
h1 { font-size: 22px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
.muted { color: var(--muted); }
code { font: 12.5px/1.3 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; overflow-wrap: break-word; }
td.path { min-width: 12em; max-width: 20em; }
td.path code { overflow-wrap: anywhere; }
td.layer { max-width: 13em; overflow-wrap: anywhere; }
.small { font-size: 12px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; }
figure { margin: 8px 0; }
img.chart { display: block; max-width: 100%; height: auto; width: 1000px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 12px; }
th, td { padding: 3px 6px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { position: sticky; top: 0; background: #fff; border-bottom: 2px solid var(--line); white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--band); }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.histogram { padding: 2px 6px; }
img.hist { display: block; background: #fff; border: 1px solid var(--line); }
.range { display: flex; justify-content: space-between; font-size: 11px; color: var(--muted); }
th.sortable-head { cursor: pointer; }
th.sortable-head:hover, th.sortable-head:focus { color: var(--accent); outline: none; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
section.file { border-top: 1px solid var(--line); margin-top: 28px; }
details summary { cursor: pointer; }
"""

#: sorts a table by the column whose header is clicked (numbers by data-v, text otherwise;
#: cells without a value last)
_SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    if (!cell) { return null; }
    if (cell.hasAttribute("data-v")) {
      var v = cell.getAttribute("data-v");
      return v === "" ? null : parseFloat(v);
    }
    return cell.textContent.trim();
  }
  function order(a, b) {
    if (a === b) { return 0; }
    if (a === null) { return 1; }
    if (b === null) { return -1; }
    if (typeof a === "number" && typeof b === "number") { return a < b ? -1 : 1; }
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, column) {
      th.classList.add("sortable-head");
      th.tabIndex = 0;
      th.title = "sort by " + th.textContent;
      function sort() {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var up = th.getAttribute("aria-sort") !== "ascending";
        rows.sort(function (r, s) {
          var a = key(r.cells[column]), b = key(s.cells[column]);
          if (a === null || b === null) { return order(a, b); }
          return up ? order(a, b) : order(b, a);
        });
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
      });
    });
  });
}());
"""
