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

import numpy as np
import pytest

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
