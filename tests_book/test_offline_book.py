"""The built book renders with no network: pages, figures and the interactive 3D view.

Run after a book build (``make test`` does it on the smoke book):
``INNEREAR_SITE=_build/test-site pytest tests_book``. Needs Debian's ``chromium``, which the
Makefile installs when it is missing. Screenshots are written under ``book/`` (not committed).
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import base64
import json
from html.parser import HTMLParser

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("INNEREAR_SITE", ROOT / "_build" / "test-site"))
HTML = (SITE if SITE.is_absolute() else ROOT / SITE) / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# every host resolves to nothing and every connection goes to a closed local port
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
         "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", "--virtual-time-budget=15000"]


def _chromium(args, tmp_path):
    assert CHROMIUM, "chromium is not installed (make test installs Debian's chromium)"
    cmd = [CHROMIUM, *FLAGS, *OFFLINE, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_book_was_built():
    assert (HTML / "index.html").exists(), f"no built book at {HTML}"


def test_pages_reference_no_remote_assets():
    bad = []
    for page in HTML.rglob("*.html"):
        text = page.read_text(errors="ignore")
        for m in re.finditer(r"<(?:script|link|img)[^>]+(?:src|href)=[\"'](https?:)?//[^\"']+", text):
            bad.append(f"{page.relative_to(HTML)}: {m.group(0)[:120]}")
    assert not bad, "pages load assets from the network:\n" + "\n".join(bad[:20])


def _dom(page: Path, tmp_path) -> str:
    """The page's DOM after its scripts ran, without the (huge) inline script sources."""
    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path).stdout
    return re.sub(r"<script.*?</script>", "", dom, flags=re.S)


def _colour_blocks(img: np.ndarray, min_rows: int = 150) -> list[tuple[int, int]]:
    """Vertical runs of rows holding many saturated pixels (rendered meshes; text is grey)."""
    sat = img.max(axis=2).astype(int) - img.min(axis=2).astype(int)
    rows = (sat > 60).sum(axis=1) > 40
    blocks, start = [], None
    for y, on in enumerate(np.r_[rows, False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            if y - start >= min_rows:
                blocks.append((start, y))
            start = None
    return blocks


def test_3d_view_renders_offline(tmp_path):
    from PIL import Image

    page = HTML / "book" / "executed" / "05_3d_visualization.html"
    assert page.exists(), page
    dom = _dom(page, tmp_path)
    assert "innerear-3d-view" in dom
    assert "WebGL is not supported" not in dom, "plotly could not get a WebGL context"
    scenes = re.findall(r'<div class="gl-container">.*?<canvas', dom, flags=re.S)
    assert len(scenes) >= 2, "the 3D views did not render (no plotly WebGL canvas)"
    full = tmp_path / "page.png"
    _chromium(["--window-size=1280,9000", f"--screenshot={full}", page.as_uri()], tmp_path)
    img = np.asarray(Image.open(full).convert("RGB"))
    blocks = _colour_blocks(img)
    assert blocks, "no rendered surface visible in the screenshot"
    top, bottom = blocks[-1]  # the last coloured block is the interactive view
    Image.fromarray(img[max(0, top - 60): bottom + 60]).save(ROOT / "book" / "screenshot_3d_view.png")


def test_table1_page_renders_offline(tmp_path):
    page = HTML / "book" / "executed" / "04_evaluation.html"
    assert page.exists(), page
    dom = _dom(page, tmp_path)
    assert "AutoCas-U-Net" in dom and "paper (Hear-EU)" in dom
    shot = ROOT / "book" / "screenshot_table1.png"
    _chromium(["--window-size=1280,2600", f"--screenshot={shot}", page.as_uri()], tmp_path)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), float)
    assert img.std() > 10, "the Table 1 page rendered blank"


# ------------------------------------------------------------------ what the pages hold
class _Tables(HTMLParser):
    """Every <table> of a page as rows of (tag, text) cells (tag: "th" or "td")."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("th", "td") and self.tables and self.tables[-1]:
            self._cell = [tag, ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self.tables[-1][-1].append((self._cell[0], " ".join(self._cell[1].split())))
            self._cell = None


def _tables(page: Path) -> list[list[list[tuple[str, str]]]]:
    parser = _Tables()
    parser.feed(page.read_text(errors="ignore"))
    return parser.tables


MISSING = {"n/a", "nan", "NaN", "None", "", "—", "-"}
NUMBER = re.compile(r"^\*{0,2}(-?\d+(?:[.,]\d+)*)(?:\s*±\s*(-?\d+(?:\.\d+)?))?")


def _executed_pages() -> list[Path]:
    pages = sorted((HTML / "book" / "executed").rglob("*.html"))
    assert pages, f"no executed pages under {HTML / 'book' / 'executed'}"
    return pages


def test_table1_our_rows_hold_finite_numbers():
    from innerear.evaluation.table1 import METHODS, PAPER_LABEL

    page = HTML / "book" / "executed" / "04_evaluation.html"
    table = next((t for t in _tables(page) if any(c[1] == PAPER_LABEL for row in t for c in row)), None)
    assert table is not None, f"{page}: no Table 1 (no row labelled {PAPER_LABEL!r})"
    ours = [row for row in table if any(tag == "td" for tag, _ in row) and all(c[1] != PAPER_LABEL for c in row)]
    methods = {c[1] for row in ours for c in row if c[0] == "th" and c[1] in METHODS}
    assert ours and methods, f"{page}: Table 1 has no rows of ours, only the paper's"
    for row in ours:
        cells = [text for tag, text in row if tag == "td"]
        bad = [text for text in cells if not NUMBER.match(text) or not np.isfinite(float(NUMBER.match(text)[1]))]
        assert not bad, f"{page}: our Table 1 row {row} holds non-numbers {bad}"


def test_no_table_of_ours_is_all_missing():
    empty = []
    for page in _executed_pages():
        for k, table in enumerate(_tables(page)):
            cells = [text for row in table for tag, text in row if tag == "td"]
            if cells and all(text in MISSING or text.startswith("n/a") for text in cells):
                empty.append(f"{page.relative_to(HTML)} table {k + 1}: {len(cells)} cells, all missing")
    assert not empty, "tables without a single value:\n" + "\n".join(empty)


def _plotly_figures(page: Path, after: str = "") -> list[list[dict]]:
    """The trace lists of the ``Plotly.newPlot`` calls in a page (after the marker ``after``)."""
    text = page.read_text(errors="ignore")
    text = text[text.index(after):] if after else text
    decoder, figures = json.JSONDecoder(), []
    for m in re.finditer(r"Plotly\.newPlot\(\s*", text):
        _, end = decoder.raw_decode(text, m.end())  # the div id
        data, _ = decoder.raw_decode(text, text.index("[", end))
        figures.append(data)
    return figures


def _array(value) -> np.ndarray:
    """A plotly array: a JSON list or a typed array ``{"dtype": "f4", "bdata": base64}``."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def test_3d_page_shows_a_predicted_surface_over_the_truth():
    page = HTML / "book" / "executed" / "05_3d_visualization.html"
    figures = _plotly_figures(page, after='id="innerear-3d-view"')
    assert figures, f"{page}: no plotly figure in the interactive view"
    meshes = [t for t in figures[0] if t.get("type") == "mesh3d"]
    truth = [t for t in meshes if str(t.get("name", "")).startswith("truth")]
    predicted = [t for t in meshes if t not in truth]
    assert truth and predicted, f"{page}: surfaces {[t.get('name') for t in meshes]}: a truth and a prediction expected"
    tv = np.concatenate([np.c_[_array(t["x"]), _array(t["y"]), _array(t["z"])] for t in truth])
    lo, hi = tv.min(0), tv.max(0)
    margin = 0.1 * (hi - lo)
    for t in predicted:
        v = np.c_[_array(t["x"]), _array(t["y"]), _array(t["z"])]
        assert len(v) >= 100 and len(_array(t["i"])) >= 100, f"{page}: {t.get('name')}: {len(v)} vertices, no surface"
        inside = np.all((v >= lo - margin) & (v <= hi + margin), axis=1).mean()
        assert inside >= 0.5, f"{page}: {t.get('name')}: only {inside:.0%} of its surface lies around the truth"
