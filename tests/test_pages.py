"""The HTML pages (report, batch, inspect, compare), the histograms reports carry, the report
command, --html and --quiet, and the progress bar of one file.  The pages in a real browser:
test_html.py."""
from __future__ import annotations

import base64
import builtins
import html.parser
import importlib
import io
import json
import re

import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe, reference
from wqkernels.files import pages
from wqkernels.files.compare import compare
from wqkernels.files.report import HISTOGRAM_BINS, Histogram

from .helpers import listing, run_cli, sha256_of

pytest.importorskip("matplotlib", reason="the pages need matplotlib (wqkernels[report])")


class _Structure(html.parser.HTMLParser):
    """Tags, the images' sources and every link or resource a page would load."""

    VOID = {"meta", "img", "br", "wbr", "input", "link", "hr"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.external, self.ids, self.links = [], [], [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("link", "iframe", "object", "embed") or (tag == "script" and "src" in attrs):
            self.external.append(tag)
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def check_page(text: str) -> _Structure:
    """A well-formed, self-contained page: every picture a PNG inside it, nothing to fetch."""
    parser = _Structure()
    parser.feed(text)
    parser.close()
    assert parser.stack == [], parser.stack
    assert text.startswith("<!DOCTYPE html>") and "<title>" in text
    assert not parser.external
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text), "a resource outside the page"
    assert "url(" not in text and "@import" not in text
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for href in parser.links:
        assert href.startswith("#") and href[1:] in parser.ids, href
    return parser


@pytest.fixture
def rewritten(keras20, tmp_path):
    dst = tmp_path / "int4.h5"
    report = wqkernels.rewrite(keras20[0], dst, Recipe(bits=4, sparsity=0.5), histograms=True)
    return keras20[0], dst, report


# ---- what reports carry --------------------------------------------------------------------------

def test_rows_carry_histograms_of_the_values_before_and_after(rewritten):
    src, dst, report = rewritten
    before, after = wqkernels.load_weights(src), wqkernels.load_weights(dst)
    infos = {i.path: i for i in wqkernels.inspect(src)}
    for row in report.rows:
        assert (row.layer, row.layer_class, row.dtype) == (infos[row.path].layer, infos[row.path].layer_class,
                                                            "float32")
        expected = reference.statistics.compare(before[row.path], after[row.path], HISTOGRAM_BINS)
        np.testing.assert_array_equal(row.histogram.before, expected[3][0])
        np.testing.assert_array_equal(row.histogram.after, expected[3][1])
        np.testing.assert_array_equal(row.histogram.edges, expected[4])
        assert row.histogram.before.sum() == row.histogram.after.sum() == before[row.path].size
    d = json.loads(json.dumps(report.to_dict()))
    assert Histogram.from_dict(d["weights"][0]["histogram"]).before.tolist() == report.rows[0].histogram.before.tolist()


def test_histograms_only_when_asked(keras20, tmp_path):
    report = wqkernels.rewrite(keras20[0], tmp_path / "o.h5", Recipe(bits=8))
    assert all(r.histogram is None for r in report.rows)
    assert report.to_dict()["weights"][0]["histogram"] is None


def test_inspect_histograms(keras20):
    infos = wqkernels.inspect(keras20[0], histograms=True)
    values = wqkernels.load_weights(keras20[0])
    for info in infos:
        if info.role == "optimizer" or values[info.path].dtype.kind != "f":
            assert info.histogram is None
        else:
            counts, edges = reference.statistics.histogram(values[info.path], HISTOGRAM_BINS)
            np.testing.assert_array_equal(info.histogram.before, counts)
            assert info.histogram.after is None and (info.histogram.low, info.histogram.high) == (edges[0], edges[-1])
    assert all(i.histogram is None for i in wqkernels.inspect(keras20[0]))


# ---- the pages --------------------------------------------------------------------------------

def test_report_page(rewritten):
    src, dst, report = rewritten
    text = pages.report_page(report)
    parser = check_page(text)
    assert len(parser.images) == 1 + sum(r.rewritten for r in report.rows)  # the chart, a histogram per weight
    for row in report.rows:
        assert row.path in text and row.layer in text and row.layer_class in text
    assert "ratio" in text and "bits per weight" in text and "sparsity 0.5" in text
    assert text.count('class="sortable"') == 1 and "<script>" in text


def test_report_page_from_json_and_from_older_reports(rewritten):
    """A saved report renders the same; one without layer names or histograms renders too."""
    _, _, report = rewritten
    document = json.loads(json.dumps(report.to_dict()))
    check_page(pages.page(document))
    for row in document["weights"]:
        for key in ("layer", "layer_class", "dtype", "histogram"):
            del row[key]
    document["weights"][0]["sqnr_db"] = "inf"  # JSON has no infinity: reports write it as a string
    text = pages.page(document)
    parser = check_page(text)
    assert len(parser.images) == 1 and "∞" in text


def test_bits_chart_when_bits_are_chosen_per_weight(rewritten):
    document = rewritten[2].to_dict()
    for row in document["weights"]:
        row["bits"] = 4 if row["bits"] else row["bits"]
    assert "bits of the quantization" not in pages.page(document)  # the same bits everywhere: the summary says
    document["weights"][0]["bits"] = 6
    assert "bits of the quantization" in pages.page(document)


def test_batch_page(keras20, tfkeras, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("not a model")
    with pytest.raises(wqkernels.BatchError) as failed:
        wqkernels.rewrite_many([keras20[0], tfkeras[0], bad], tmp_path / "out", Recipe(bits=4), workers=1,
                               progress=False, histograms=True)
    result = failed.value.result
    text = pages.page(json.loads(json.dumps(result.to_dict())))
    parser = check_page(text)
    assert parser.links.count("#file-1") == 1 and parser.links.count("#file-2") == 1
    assert {"file-1", "file-2", "files"} <= parser.ids and "file-3" not in parser.ids
    assert "failed" in text and "bad.h5" in text
    assert len(parser.images) == 1 + 2 * (1 + 3)  # the batch's chart, each file's chart and 3 histograms


def test_inspect_page(keras20):
    infos = wqkernels.inspect(keras20[0], histograms=True)
    text = pages.inspect_page(keras20[0], infos)
    parser = check_page(text)
    model = [i for i in infos if i.role != "optimizer"]
    assert len(parser.images) == 1 + len(model)
    assert "Optimizer state" in text and "<details>" in text


def test_compare_page(rewritten):
    src, dst, _ = rewritten
    comparison = compare(src, dst)
    for document in (comparison, json.loads(json.dumps(comparison.to_dict()))):
        text = pages.compare_page(document)
        parser = check_page(text)
        assert len(parser.images) == 1 + len(comparison.rows)
        assert "identical" in text
    identical = compare(src, src)
    assert "Every compared weight is identical" in pages.compare_page(identical)


def test_page_refuses_other_documents():
    for document in ({}, {"a": 1}, [], "text", {"weights": "no"}):
        with pytest.raises(ValueError, match="not a wqkernels report"):
            pages.page(document)


def test_chart_labels_escape_control_characters():
    """A layer name holding ESC is drawn escaped (a font has no glyph for it: matplotlib warns,
    which the tests turn into an error)."""
    pytest.importorskip("matplotlib")
    from wqkernels.files.charts import Panel, bar_panels
    png = bar_panels(["layers/\x1b[31mred/vars/0", "b"], [Panel("error", (("e", np.array([1.0, 2.0])),))])
    assert png.startswith(b"\x89PNG")


def test_histogram_pictures_merge_bins_of_small_weights():
    from wqkernels.files.charts import _merged_bins
    assert _merged_bins(128, 144) == 4 and _merged_bins(128, 16) == 4 and _merged_bins(128, 10**6) == 1
    assert _merged_bins(100, 10) == 2 and _merged_bins(99, 10) == 1  # only halves that divide the bins


@pytest.mark.slow
def test_a_thousand_weights_make_a_page_under_5_mb(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(1000):
        x = rng.standard_normal(int(rng.integers(500, 5000))).astype(np.float32)
        y = wqkernels.fake_quantize(wqkernels.prune(x, 0.5), 4)
        stats, before, after, counts, edges = wqkernels.statistics.compare(x, y, bins=HISTOGRAM_BINS)
        rows.append({"path": f"layers/dense_{k}/vars/0", "layer": f"dense_{k}", "layer_class": "Dense",
                     "role": "kernel", "shape": [x.size], "dtype": "float32", "rewritten": True,
                     "sparsity_before": before, "sparsity_after": after, "bits": 4, "mse": stats.mse,
                     "sqnr_db": stats.sqnr_db, "bytes_before": 4 * x.size, "bytes_after": 4 * x.size,
                     "histogram": Histogram.of(counts, edges).to_dict()})
    document = {"source": "a.h5", "destination": "b.h5", "layout": "keras3", "recipe": {"bits": 4},
                "weights": rows, "totals": {"size_before": 1, "size_after": 1}}
    text = pages.page(document)
    check_page(text)
    assert len(text.encode()) < 5e6


# ---- the command line ---------------------------------------------------------------------------

def test_rewrite_html_and_report_command(keras20, tmp_path, capsys):
    src, dst, page, saved = keras20[0], tmp_path / "o.h5", tmp_path / "page.html", tmp_path / "r.json"
    code, out, err = run_cli(["rewrite", src, "-o", dst, "--bits", "4", "--html", page, "--report", saved], capsys)
    assert code == 0 and err == ""
    check_page(page.read_text())
    assert json.loads(saved.read_text())["weights"][0]["histogram"]["before"]
    again = tmp_path / "again.html"
    code, out, err = run_cli(["report", saved, "-o", again], capsys)
    assert code == 0 and err == "" and out == ""
    check_page(again.read_text())
    code, out, err = run_cli(["inspect", src, "--html", tmp_path / "i.html"], capsys)
    assert code == 0 and "weight" in out
    check_page((tmp_path / "i.html").read_text())
    code, out, err = run_cli(["compare", src, dst, "--html", tmp_path / "c.html", "--quiet"], capsys)
    assert code == 0
    check_page((tmp_path / "c.html").read_text())
    assert not [n for n in listing(tmp_path) if n.endswith(".tmp")]


def test_batch_html(keras20, tfkeras, tmp_path, capsys):
    page = tmp_path / "batch.html"
    code, out, err = run_cli(["rewrite", keras20[0], tfkeras[0], "--out-dir", tmp_path / "out", "--bits", "8",
                              "--html", page], capsys)
    assert code == 0, err
    assert len(check_page(page.read_text()).images) == 1 + 2 * (1 + 3)


@pytest.mark.parametrize("content,message", [
    (None, "cannot read"), (b"\x89HDF\r\n", "not JSON"), (b"[1, 2", "not JSON"),
    (b'{"a": 1}', "not a wqkernels report")])
def test_report_command_refuses_what_is_not_a_report(content, message, tmp_path, capsys):
    saved, page = tmp_path / "r.json", tmp_path / "p.html"
    if content is not None:
        saved.write_bytes(content)
    code, out, err = run_cli(["report", saved, "-o", page], capsys)
    assert code == 1 and out == "" and message in err and err.count("\n") == 1
    assert not page.exists() and not [n for n in listing(tmp_path) if n.endswith(".tmp")]


def test_page_never_replaces_an_input(keras20, tmp_path, capsys):
    src = keras20[0]
    before = sha256_of(src)
    for args in (["rewrite", src, "-o", tmp_path / "o.h5", "--bits", "8", "--html", src],
                 ["inspect", src, "--html", src], ["compare", src, src, "--html", src]):
        code, out, err = run_cli(args, capsys)
        assert code == 2 and "is also a file of this command" in err
    assert sha256_of(src) == before and not (tmp_path / "o.h5").exists()


def test_unwritable_page_is_one_line(keras20, tmp_path, capsys):
    code, out, err = run_cli(["inspect", keras20[0], "--html", tmp_path / "no" / "such" / "dir.html"], capsys)
    assert code == 1 and err.count("\n") == 1 and "dir.html" in err and "Traceback" not in err


def test_without_matplotlib_one_line_names_the_extra(keras20, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    dst = tmp_path / "o.h5"
    code, out, err = run_cli(["rewrite", keras20[0], "-o", dst, "--bits", "8", "--html", tmp_path / "p.html"], capsys)
    assert code == 2 and out == ""
    assert err == "wqkernels rewrite: error: HTML pages need matplotlib: pip install 'wqkernels[report]'\n"
    assert not dst.exists() and not (tmp_path / "p.html").exists()  # refused before any work
    code, out, err = run_cli(["rewrite", keras20[0], "-o", dst, "--bits", "8"], capsys)
    assert code == 0  # nothing else needs it


# ---- --quiet and the progress bar on one file --------------------------------------------------

@pytest.fixture
def terminal(monkeypatch):
    """stderr taken for a terminal, so that progress bars are drawn into it."""
    monkeypatch.setattr("wqkernels.progress._isatty", lambda stream: True)


def test_progress_bar_on_one_file(keras20, tmp_path, capsys, terminal):
    src = keras20[0]
    packed, restored = tmp_path / "p.h5", tmp_path / "r.h5"
    for args in (["rewrite", src, "-o", packed, "--bits", "4", "--sparsity", "0.5", "--storage", "packed"],
                 ["restore", packed, "-o", restored], ["compare", src, restored]):
        code, out, err = run_cli(args, capsys)
        assert code == 0 and "\r" in err and "B/s" in err, (args, err)
        code, out, err = run_cli(args + ["--quiet", "--in-place"] if args[0] != "compare" else args + ["--quiet"],
                                 capsys)
        assert code == 0 and err == "", (args, err)
        assert "SQNR dB" not in out.splitlines()[0]  # the totals only, no table of weights


def test_progress_counts_every_byte_it_promises(keras20, keras3_zip, tmp_path, monkeypatch):
    """The bar of a rewrite ends at its total: the plan's reads, each weight, archive members."""
    module = importlib.import_module("wqkernels.files.rewrite")

    seen = []

    class Bar:
        def __init__(self, total_files, total_bytes, **kwargs):
            assert total_files is None
            seen.append([total_bytes, 0])

        def advance(self, nbytes):
            seen[-1][1] += nbytes

        def close(self):
            pass
    monkeypatch.setattr(module, "progress_bar", Bar)
    out = tmp_path / "out"
    out.mkdir()
    for src in (keras20[0], keras3_zip):
        for recipe in (Recipe(bits=4), Recipe(sparsity=0.5), Recipe(sparsity=0.5, min_size=0),
                       Recipe(sparsity=0.5, allocation="uniform"), Recipe(bits=4, strip_optimizer=True),
                       Recipe(bits=4, storage="packed")):
            wqkernels.rewrite(src, out / src.name, recipe, progress=True)
            assert seen[-1][0] == seen[-1][1] > 0, (src.name, recipe)


def test_quiet_alone_is_not_a_batch(keras20, tmp_path, capsys):
    code, out, err = run_cli(["rewrite", keras20[0], "-o", tmp_path / "o.h5", "--bits", "8", "--quiet"], capsys)
    assert code == 0 and err == "" and len(out.splitlines()) == 2 and "ratio" in out


def test_line_progress_of_one_file():
    from wqkernels.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    stream = Terminal()
    bar = progress_bar(None, 3_000_000, stream=stream, use_tqdm=False, label="model.h5")
    bar.advance(1_000_000)
    bar.advance(2_000_000)
    bar.close()
    text = stream.getvalue()
    assert "model.h5  3.0/3.0 MB" in text and "files" not in text and text.endswith("\r")


def test_large_batches_leave_out_each_file_s_chart(rewritten):
    """Past CHARTED_FILES files, the batch's chart alone (a file's chart costs ~20 kB)."""
    report = rewritten[2].to_dict()
    histograms = sum(1 for r in report["weights"] if r.get("histogram"))
    for files in (pages.CHARTED_FILES, pages.CHARTED_FILES + 1):
        document = {"totals": {"files": files, "ok": files}, "notes": [],
                    "files": [{"source": f"{k}.h5", "destination": f"out/{k}.h5", "status": "ok", "error": None,
                               "size_before": 10, "size_after": 5, "report": report} for k in range(files)]}
        charts = 1 + (files if files <= pages.CHARTED_FILES else 0)
        assert len(check_page(pages.page(document)).images) == charts + files * histograms
