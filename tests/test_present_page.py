"""Executed pages read as book pages: TensorFlow's start-up lines on stderr are hidden
(``remove-stderr``), any other stderr is left for the reader."""
from __future__ import annotations

import nbformat

from innerear.reporting.pipeline import present_page

NOISE = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
         "I0000 00:00:1796307993.582464   22840 port.cc:153] oneDNN custom operations are on. You may see "
         "slightly different numerical results.\n")


def _page(tmp_path, stderr: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("import keras")]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stderr", text=stderr)]
    path = tmp_path / "page.ipynb"
    nbformat.write(nb, str(path))
    present_page(path, "A fold page")
    return nbformat.read(str(path), as_version=4)


def test_tensorflow_start_up_lines_are_hidden_not_deleted(tmp_path):
    nb = _page(tmp_path, NOISE)
    assert "remove-stderr" in nb.cells[1].metadata["tags"]
    assert nb.cells[1].outputs[0]["text"] == NOISE
    assert nb.cells[0].source.startswith("# A fold page")


def test_other_warnings_stay_visible(tmp_path):
    nb = _page(tmp_path, NOISE + "UserWarning: the label map has 3 components\n")
    assert "remove-stderr" not in nb.cells[1].metadata.get("tags", [])
