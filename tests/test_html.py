"""Each kind of page in a real browser: headless Chromium renders it to a PNG, which must not be
blank, with no message on the console (an error of the sorting script would show there), the
script having run; and with JavaScript off the page still shows its tables.

Needs Chromium (Debian: ``apt-get install chromium-headless-shell``, or ``chromium``); skipped
without one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import wqkernels
from wqkernels import Recipe
from wqkernels.files import pages
from wqkernels.files.compare import compare

pytest.importorskip("matplotlib", reason="the pages need matplotlib (wqkernels[report])")
Image = pytest.importorskip("PIL.Image", reason="reading the screenshots needs Pillow")

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install "
                                                        "chromium-headless-shell)")


def _chromium(page, *options, timeout: float = 120) -> subprocess.CompletedProcess:
    args = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            "--enable-logging=stderr", "--v=0", *options, page.as_uri()]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=page.parent)


def _render(page, tmp_path) -> tuple:
    """(the screenshot as an RGB array, the console messages, the DOM after the scripts ran)."""
    shot = tmp_path / f"{page.stem}.png"
    proc = _chromium(page, "--window-size=1400,1600", f"--screenshot={shot}")
    assert shot.exists(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    dom = _chromium(page, "--dump-dom").stdout
    with Image.open(shot) as image:
        return np.asarray(image.convert("RGB")), console, dom


def _assert_shows_a_page(pixels: np.ndarray) -> None:
    """Not blank: a good part of the screen is drawn, in many colours (text, charts, histograms)."""
    drawn = np.any(pixels < 240, axis=-1).mean()
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert drawn > 0.01 and colours > 50, (drawn, colours)


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """One page of each kind, of the same small model and its 4-bit rewrite."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
    import make_keras2_files as k2

    base = tmp_path_factory.mktemp("pages")
    src, weights_only = base / "model.h5", base / "weights.h5"
    k2.write_keras20_full(src)
    k2.write_tfkeras_weights(weights_only)
    out = {}
    report = wqkernels.rewrite(src, base / "int4.h5", Recipe(bits=4, sparsity=0.5), histograms=True)
    out["report"] = pages.report_page(report)
    batch = wqkernels.rewrite_many([src, weights_only], base / "batch", Recipe(bits=3), workers=1,
                                   progress=False, histograms=True)
    out["batch"] = pages.page(json.loads(json.dumps(batch.to_dict())))
    out["inspect"] = pages.inspect_page(src, wqkernels.inspect(src, histograms=True))
    out["compare"] = pages.compare_page(compare(src, base / "int4.h5"))
    paths = {}
    for kind, text in out.items():
        paths[kind] = base / f"{kind}.html"
        paths[kind].write_text(text, encoding="utf-8")
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["report", "batch", "inspect", "compare"])
def test_page_renders_in_chromium(kind, documents, tmp_path):
    pixels, console, dom = _render(documents[kind], tmp_path)
    _assert_shows_a_page(pixels)
    assert console == [], console
    assert 'class="sortable-head"' in dom  # the sorting script ran to its end


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["report", "compare"])
def test_page_reads_without_javascript(kind, documents, tmp_path):
    """What a browser with scripts off shows: the page without its script (Chromium's headless
    screenshot itself needs scripts on)."""
    text = documents[kind].read_text(encoding="utf-8")
    start, end = text.index("<script>"), text.index("</script>") + len("</script>")
    page = tmp_path / f"{kind}-noscript.html"
    page.write_text(text[:start] + text[end:], encoding="utf-8")
    pixels, console, dom = _render(page, tmp_path)
    _assert_shows_a_page(pixels)
    assert console == [] and "<table" in dom and "<script" not in dom


@pytest.mark.slow
def test_the_blank_check_can_fail(tmp_path):
    page = tmp_path / "blank.html"
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    pixels, console, _ = _render(page, tmp_path)
    with pytest.raises(AssertionError):
        _assert_shows_a_page(pixels)
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    assert _render(broken, tmp_path)[1]  # an error of a script reaches the console lines
