"""The README's domain-shift matrix is the benchmark's record, not typed figures."""
from __future__ import annotations

from pathlib import Path

import pytest

from innerear.reporting.performance import (README_MARKERS, domain_shift_markdown, domain_shift_sentence,
                                            readme_block, replace_readme_block)

ROOT = Path(__file__).resolve().parents[1]


def _record(dices):
    cells = []
    for i, d in enumerate(dices):
        cell = {"name": f"cell {i}", "style": "cbct", "voxel_mm": 0.2, "fov_mm": 9.0, "centre": "cochlea", "units": "hu",
                "held_out": True}
        summary = {"dice": {"mean": d, "min": d - 0.01, "n": 2}, "dice_cochlea": {"mean": d, "min": d, "n": 2},
                   "dice_vestibule": None, "dice_canals": {"mean": 0.5, "min": 0.4, "n": 1}}
        cells.append({"cell": cell, "n": 2, "voxel_mm": [0.2, 0.2], "fov_mm": [9.0, 9.4],
                      "models": {"robust": {"summary": summary},
                                                         "paper recipe": {"summary": summary}}})
    return {"kind": "domain_shift", "goal_dice": 0.85, "cells": cells,
            "context": {"date": "2026-11-28", "machine": {"cpu_count": 2, "cpu": "x"}, "versions": {}}}


def test_sentence_names_the_cells_that_miss_the_goal():
    assert "every cell meets" in domain_shift_sentence(_record([0.9, 0.95]))
    reference = _record([0.9, 0.3])
    reference["cells"][1]["cell"]["held_out"] = False  # a reference row is not part of the goal
    assert "every cell meets" in domain_shift_sentence(reference) and "over 1 held-out" in domain_shift_sentence(reference)
    text = domain_shift_sentence(_record([0.9, 0.5]))
    assert "1 of 2 miss" in text and "cell 1 (0.500)" in text
    assert "canals in 2 of 2 cells (lowest 0.500)" in text and "cochlea in 1 of 2 cells" in text


def test_block_replacement_keeps_the_rest_and_refuses_a_readme_without_markers():
    start, end = README_MARKERS
    text = f"before\n{start}\nold\n{end}\nafter\n"
    out = replace_readme_block(text, domain_shift_markdown(_record([0.9])))
    assert out.startswith("before\n") and out.endswith("after\n") and "old" not in out and "0.900" in out
    assert "n/a (not in the field of view)" in out
    with pytest.raises(ValueError, match="block"):
        replace_readme_block("no markers", "x")


def test_readme_matrix_matches_the_benchmark_record():
    block = readme_block(ROOT)
    if block is None:
        pytest.skip("benchmarks/results/domain_shift.json not written yet")
    readme = (ROOT / "README.md").read_text()
    assert replace_readme_block(readme, block) == readme, \
        "README's domain-shift block is stale: run tools/update_readme.py"
