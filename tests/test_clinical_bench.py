"""benchmarks/bench_clinical.py (issue 22): its cells, its lumen measure, and how the page renders it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from innerear.io import write_volume
from innerear.reporting.performance import clinical_markdown, clinical_sentence, clinical_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_clinical as bc  # noqa: E402


def test_cells_alternate_sides_and_the_v1_cell_asks_nothing_the_old_generator_lacks():
    cell = bc.MATRIX[1]
    assert [cell.acquisition(i)["side"] for i in range(4)] == ["left", "right", "left", "right"]
    assert cell.acquisition(0)["lumen_hu"] == 150.0 and cell.acquisition(0)["cnr"] == 5.0
    old = next(c for c in bc.ABLATION if c.anatomy == "v1")
    assert set(old.acquisition(0)) == {"style", "voxel_mm", "fov_mm", "centre", "units"}
    assert {c.factor for c in bc.ABLATION} >= {"base", "side", "noise", "resolution", "field of view", "all"}
    for c in bc.MATRIX:  # the kind of scan: 0.1-0.3 mm voxels, 0.2-0.4 mm FWHM, CNR 3-8
        assert 0.1 <= c.voxel_mm <= 0.3 and 0.2 <= c.psf_fwhm_mm <= 0.4 and 3 <= c.cnr <= 8


def test_lumen_position_is_where_the_lumen_sits_between_the_percentiles(tmp_path):
    image = np.zeros((40, 40, 40), np.float32)
    image[:20] = 1000.0
    label = np.zeros(image.shape, np.uint8)
    label[25:35, 10:30, 10:30] = 1
    image[label > 0] = 400.0
    path = tmp_path / "scan.nii.gz"
    write_volume(path, image, np.eye(4))
    assert abs(bc.lumen_position(path, label) - 0.4) < 1e-6


def _record(part, dices, cochleae):
    cells = []
    for i, (d, c) in enumerate(zip(dices, cochleae)):
        summary = {"dice": {"mean": d, "min": d - 0.05, "n": 4}, "dice_cochlea": {"mean": c, "min": c, "n": 4}}
        factor = ["base", "noise", "all"][i] if part == "ablation" else ""
        cells.append({"cell": {"name": f"cell {i}", "factor": factor}, "n": 4, "lumen_position": [0.3, 0.45],
                      "models": {"shipped": {"summary": summary}}})
    cells.append({"cell": {"name": "old", "factor": "cochlea size: old"}, "skipped": "needs --v1-tree"})
    return {"kind": f"clinical_{part}", "part": part, "models": {"shipped": "x"}, "cells": cells,
            "context": {"date": "2026-12-03", "machine": {"cpu_count": 2, "cpu": "x"}, "versions": {}}}


def test_page_says_which_cells_miss_the_goal_and_which_factor_costs_most():
    good = clinical_sentence(_record("matrix", [0.9, 0.88], [0.85, 0.82]))
    assert "every cell meets the goal" in good
    bad = clinical_sentence(_record("matrix", [0.9, 0.8], [0.85, 0.82]))
    assert "1 of 2 cells miss" in bad and "cell 1" in bad
    ablation = clinical_sentence(_record("ablation", [0.93, 0.75, 0.6], [0.9, 0.5, 0.3]))
    assert "base cell Dice 0.930" in ablation and "noise" in ablation and "-0.180" in ablation
    table = clinical_table(_record("ablation", [0.93, 0.75, 0.6], [0.9, 0.5, 0.3]))
    assert list(table.columns[:2]) == ["factor", "cell"] and "not run" in table.iloc[-1]["scans"]
    assert "0.30–0.45" in table.iloc[0]["lumen after normalisation"]
    assert "Not yet measured" in clinical_markdown(None, "matrix")


def test_reliability_section_renders_the_committed_fault_and_load_records():
    from innerear.reporting.performance import fault_injection_markdown, load_markdown, read_record

    faults = read_record(ROOT / "benchmarks" / "results" / "fault_injection.json")
    load = read_record(ROOT / "benchmarks" / "results" / "bench_load.json")
    text = fault_injection_markdown(faults)
    assert f"killed {faults['reproduce']['kills_done']} times" in text and "reruns failed" in text
    assert "| training: checkpoint write |" in text
    text = load_markdown(load)
    assert f"{load['good_with_mask_and_report']} of {load['good']} good scans" in text and "| 50 |" in text
    assert "Not yet measured" in fault_injection_markdown(None) and "Not yet measured" in load_markdown(None)


def test_turns_section_renders_the_committed_record_and_counts_within_the_goal():
    """``benchmarks/bench_turns.py``'s summary (change from the same phantom as acquired) and its
    rendering on the Performance page."""
    import importlib.util

    from innerear.reporting.performance import read_record, turns_markdown

    spec = importlib.util.spec_from_file_location("bench_turns", ROOT / "benchmarks" / "bench_turns.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_indices("0-2,7") == [0, 1, 2, 7]
    rows = [{"phantom": p, "turn": t, "context_gap_mm": g, "dice": d}
            for p, t, g, d in ((0, "as acquired", 0.0, 0.95), (0, "45 deg further", 0.0, 0.90),
                               (1, "as acquired", 0.0, 0.93), (1, "45 deg further", 0.0, 0.925))]
    summary = bench.summarise(rows, [0.0])
    turned = [s for s in summary if s["turn"] == "45 deg further"][0]
    assert turned["within_goal"] == 1 and turned["largest_drop"] == 0.05 and turned["n"] == 2
    record = read_record(ROOT / "benchmarks" / "results" / "bench_turns.json")
    text = turns_markdown(record)
    shipped = [s for s in record["summary"] if s["context_gap_mm"] == record["shipped_context_gap_mm"]
               and "median_change" in s]
    within = sum(s["within_goal"] for s in shipped)
    assert f"{within} of {sum(s['n'] for s in shipped)} turned scans stay within" in text
    assert "largest component only (the paper)" in text and "(shipped)" in text
    assert "Not yet measured" in turns_markdown(None)
