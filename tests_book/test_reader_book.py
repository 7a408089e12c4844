"""The book as a reader meets it (issue 26): pages titled by what they are, chapters listing
their runs, plumbing hidden, tables with words for headers and no NaN, results on the landing page.

Run after a book build: ``INNEREAR_SITE=_build/test-site pytest tests_book`` (``make test`` does).
Reads the built HTML only (no browser).
"""
import json
import os
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("INNEREAR_SITE", ROOT / "_build" / "test-site"))
SITE = SITE if SITE.is_absolute() else ROOT / SITE
HTML = SITE / "_build" / "html"
EXECUTED = HTML / "book" / "executed"
BACKBONE_LABELS = {"unet": "U-Net", "res_unet": "ResU-Net", "se_unet": "SEU-Net"}
MISSING_WORDS = {"nan", "NaN", "None", "NaT", "<NA>", "null"}
RAW_HEADERS = {"pvalue", "n volumes", "count", "std", "n", "mean_diff"}


class _Page(HTMLParser):
    """A page's tables (rows of cells: tag, text, links, in <thead>), its H1s and its links."""

    def __init__(self):
        super().__init__()
        self.tables, self.h1, self.links = [], [], []
        self._cell = self._h1 = self._a = None
        self._thead = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "thead":
            self._thead = True
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("th", "td") and self.tables and self.tables[-1]:
            self._cell = {"tag": tag, "text": "", "links": [], "head": self._thead}
        elif tag == "h1":
            self._h1 = ""
        elif tag == "a":
            self._a = [attrs.get("href", ""), "", attrs.get("class", "")]
            if self._cell is not None:
                self._cell["links"].append(attrs.get("href", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._h1 is not None and self._a is None:
            self._h1 += data
        if self._a is not None:
            self._a[1] += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self._cell["text"] = " ".join(self._cell["text"].split())
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "thead":
            self._thead = False
        elif tag == "h1" and self._h1 is not None:
            self.h1.append(" ".join(self._h1.split()))
            self._h1 = None
        elif tag == "a" and self._a is not None:
            self.links.append((self._a[0], " ".join(self._a[1].split()), self._a[2]))
            self._a = None


def _page(path: Path) -> _Page:
    parser = _Page()
    parser.feed(path.read_text(errors="ignore"))
    return parser


def _content_pages() -> list[Path]:
    pages = [p for p in HTML.rglob("*.html") if "_static" not in p.parts and p.name not in ("genindex.html", "search.html")
             and p != HTML / "index.html"]
    assert pages, f"no built book at {HTML}"
    return sorted(pages)


def _fold_pages(chapter: str) -> list[Path]:
    pages = sorted((EXECUTED / chapter).glob("*.html"))
    assert pages, f"no executed pages under {EXECUTED / chapter}"
    return pages


def _landing() -> Path:
    m = re.search(r'url=([^"]+)"', (HTML / "index.html").read_text())
    assert m, "index.html redirects nowhere"
    return HTML / m.group(1)


# --------------------------------------------------------------------- 1. titles and run tables
@pytest.mark.parametrize("chapter", ["02_backbones", "03_cascade"])
def test_fold_pages_are_titled_by_network_and_fold(chapter):
    titles = {}
    for page in _fold_pages(chapter):
        backbone, fold = re.fullmatch(r"(\w+?)_fold(\d+)", page.stem).groups()
        h1 = _page(page).h1[0]
        label = BACKBONE_LABELS[backbone]
        assert f"fold {fold}" in h1, f"{page.name}: title {h1!r} does not name fold {fold}"
        if chapter == "03_cascade":
            assert h1.startswith(f"AutoCas-{label}"), f"{page.name}: title {h1!r}, expected AutoCas-{label}, fold {fold}"
        else:
            assert h1.startswith(f"{label} baseline"), f"{page.name}: title {h1!r}, expected {label} baseline (...)"
        titles[page.name] = h1
    assert len(set(titles.values())) == len(titles), f"titles repeat: {titles}"


def test_sidebar_names_each_fold_page_by_its_title():
    sidebar = [(href.split("#")[0], text) for href, text, cls in _page(_landing()).links if "reference internal" in cls]
    for chapter in ("02_backbones", "03_cascade"):
        for page in _fold_pages(chapter):
            h1 = _page(page).h1[0]
            entries = sorted({text for href, text in sidebar if href.endswith(f"{chapter}/{page.name}")})
            fold = page.stem.rsplit("fold", 1)[1]
            assert entries == [h1] and h1.endswith(f"fold {fold}"), \
                f"sidebar entry of {chapter}/{page.name}: {entries}, its title {h1!r} (fold {fold} expected)"


@pytest.mark.parametrize("chapter,page", [("02_backbones", "backbones.html"), ("03_cascade", "cascade.html")])
def test_chapter_page_tables_every_run_with_its_dice_and_a_link(chapter, page):
    path = HTML / "book" / page
    rows = [row for table in _page(path).tables for row in table]
    for fold_page in _fold_pages(chapter):
        row = next((r for r in rows if any(link.split("#")[0].endswith(f"{chapter}/{fold_page.name}")
                                           for c in r for link in c["links"])), None)
        assert row is not None, f"{page}: no table row links to {chapter}/{fold_page.name}"
        numbers = [float(c["text"]) for c in row if re.fullmatch(r"0\.\d+|1\.0+", c["text"])]
        assert numbers, f"{page}: the row of {fold_page.name} holds no Dice: {[c['text'] for c in row]}"
        stem = fold_page.stem
        backbone, fold = re.fullmatch(r"(\w+?)_fold(\d+)", stem).groups()
        views = ("coronal", "sagittal", "axial") if chapter == "03_cascade" else ("axial",)
        stage = json.loads((_runs() / backbone / f"fold{fold}" / Path(*views) / "stage.json").read_text())
        assert round(stage["mean_test_dice"], 3) in [round(x, 3) for x in numbers], \
            f"{page}: {fold_page.name}: the row {numbers} lacks the run's held-out Dice {stage['mean_test_dice']:.3f}"


def _runs() -> Path:
    profile = os.environ.get("INNEREAR_PROFILE", "smoke")
    return ROOT / "runs" / profile


# --------------------------------------------------------------------- 2. plumbing hidden
def test_no_papermill_parameter_cell_or_nbval_marker_is_rendered():
    bad = []
    for page in _content_pages():
        text = page.read_text(errors="ignore")
        for marker in ("tag_injected-parameters", "tag_parameters", "NBVAL_CHECK_OUTPUT", "# Parameters"):
            if marker in text:
                bad.append(f"{page.relative_to(HTML)}: {marker}")
    assert not bad, "plumbing shown to readers:\n" + "\n".join(bad)


def test_executed_pages_mark_checked_cells_by_tag_and_hide_formatting_code():
    notebooks = sorted((SITE / "book" / "executed").rglob("*.ipynb"))
    assert notebooks
    tagged = 0
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            assert "NBVAL_CHECK_OUTPUT" not in src, f"{nb_path.name}: a checked cell marked by comment, not by tag"
            tagged += "nbval-check-output" in cell.get("metadata", {}).get("tags", [])
    assert tagged >= 30, f"only {tagged} cells tagged nbval-check-output"
    hidden = (EXECUTED / "04_evaluation.html").read_text()
    assert "tag_hide-input" in hidden, "04_evaluation: no cell's code is folded away"


def test_no_page_shows_a_library_warning_to_readers():
    """Library noise in a cell's output (a TensorFlow retracing note under ``seg.segment``, tqdm's
    "IProgress not found" under the imports) reads as a fault to a reader; our own warnings are
    printed as prose, not through a logger."""
    noise = ("WARNING:tensorflow", "triggered tf.function retracing", "TqdmWarning", "IProgress not found",
             "Traceback (most recent call last)")
    bad = []
    for page in _content_pages():
        text = page.read_text(errors="ignore")
        bad += [f"{page.relative_to(HTML)}: {word}" for word in noise if word in text]
    assert not bad, "library warnings shown to readers:\n" + "\n".join(bad)


# --------------------------------------------------------------------- 3. tables for people
def test_table_headers_are_words_not_code_names():
    bad = []
    for page in _content_pages():
        for k, table in enumerate(_page(page).tables):
            for cell in (c for row in table for c in row if c["head"] and c["tag"] == "th"):
                text = unescape(cell["text"])
                if "_" in text or text in RAW_HEADERS:
                    bad.append(f"{page.relative_to(HTML)} table {k + 1}: {text!r}")
    assert not bad, "tables headed by code names:\n" + "\n".join(bad)


def test_no_table_cell_reads_nan_or_none():
    bad = []
    for page in _content_pages():
        for k, table in enumerate(_page(page).tables):
            for cell in (c for row in table for c in row):
                # a whole cell, a number that is NaN ("nan ± nan"), or None in a tuple ("(None, 32, 1)");
                # None in a sentence about code ("lr_plateau=None") is prose
                text = cell["text"]
                if text in MISSING_WORDS or re.search(r"\b(nan|NaN)\b", text) or re.search(r"[(\[,]\s*None\b", text):
                    bad.append(f"{page.relative_to(HTML)} table {k + 1}: {cell['text']!r}")
    assert not bad, "tables with NaN/None cells:\n" + "\n".join(bad[:40])


# --------------------------------------------------------------------- 4. results first
def test_landing_page_opens_with_the_results():
    page = _landing()
    text = page.read_text(errors="ignore")
    assert "executed/" in str(page.relative_to(HTML)), f"the landing page {page} is not computed (not an executed page)"
    parsed = _page(page)
    table = next((t for t in parsed.tables if any("paper" in c["text"] for r in t for c in r)), None)
    assert table is not None, f"{page.name}: no table beside the paper's values"
    methods = [r[0]["text"] for r in table if r and r[0]["tag"] == "th" and not r[0]["head"]]
    assert len(methods) == 6, f"{page.name}: Table 1 at a glance has rows {methods}, six expected"
    assert any(re.match(r"0\.\d{3}", c["text"]) for r in table for c in r if c["tag"] == "td"), "no Dice of ours"
    about = text.find('id="about-this-reproduction"')
    for what, needle in (("a figure", "<img"), ("the verdicts", "paired volumes"), ("the machine", "CPU(s)"),
                         ("a link to Table 1", "04_evaluation.html"), ("a link to the 3D view", "05_3d_visualization.html")):
        at = text.find(needle)
        assert 0 <= at, f"{page.name}: no {what} ({needle!r})"
        assert about < 0 or at < about, f"{page.name}: {what} comes after the introduction"
