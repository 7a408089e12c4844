"""The "How to cite" page shows CITATION.cff and the paper's BibTeX as they are in the repository.

Run after a book build, like test_offline_book.py (``INNEREAR_SITE=_build/test-site``).
"""
import html
import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("INNEREAR_SITE", ROOT / "_build" / "test-site"))
HTML = (SITE if SITE.is_absolute() else ROOT / SITE) / "_build" / "html"


def _code_blocks(page: Path) -> list[str]:
    text = page.read_text()
    return [html.unescape(re.sub(r"<[^>]+>", "", b)) for b in re.findall(r"<pre>(.*?)</pre>", text, flags=re.S)]


def test_citing_page_shows_the_citation_files():
    page = HTML / "book" / "citing.html"
    assert page.exists(), f"no How to cite page at {page}"
    blocks = _code_blocks(page)
    cff = next((b for b in blocks if b.startswith("cff-version:")), None)
    assert cff is not None, "the page does not show CITATION.cff"
    assert yaml.safe_load(cff) == yaml.safe_load((ROOT / "CITATION.cff").read_text())
    bib = (ROOT / "references.bib").read_text()
    entry = bib[bib.index("@article{hussain2021autocasnet,"): bib.index("@article{heareu2017,")].strip()
    assert any(b.strip() == entry for b in blocks), "the page does not show the paper's entry of references.bib"
