"""Per-structure scores, the cascade-vs-baseline comparison and relative early stopping."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from innerear.evaluation import compare, results as evaluation
from innerear.settings.profiles import get_profile
from innerear.metrics import per_structure, structure_regions


def _structures():
    s = np.zeros((24, 24, 24), np.uint8)
    s[2:8, 2:8, 2:8] = 1  # cochlea
    s[10:14, 10:14, 10:14] = 2  # vestibule
    s[16:20, 16:22, 16:20] = 3  # canals
    return s


def test_vestibule_only_prediction_scores_zero_on_cochlea_and_canals():
    s = _structures()
    scores = per_structure(s == 2, s, (0.1, 0.1, 0.1))
    assert scores["dice_vestibule"] == 1.0 and scores["recall_vestibule"] == 1.0
    assert scores["dice_cochlea"] == 0.0 and scores["recall_cochlea"] == 0.0
    assert scores["dice_canals"] == 0.0 and scores["recall_canals"] == 0.0


def test_false_positives_count_against_the_nearest_structure():
    s = _structures()
    pred = s > 0
    pred[8, 2:8, 2:8] = True  # 36 false voxels next to the cochlea (216 true voxels)
    scores = per_structure(pred, s, (1.0, 1.0, 1.0))
    assert scores["dice_cochlea"] == pytest.approx(2 * 216 / (216 + 36 + 216))
    assert scores["recall_cochlea"] == 1.0
    assert scores["dice_vestibule"] == 1.0 and scores["dice_canals"] == 1.0


def test_regions_follow_physical_distance_and_absent_structures_are_nan():
    s = np.zeros((5, 1, 5), np.uint8)
    s[0, 0, 0] = 1  # cochlea voxel
    s[4, 0, 4] = 2  # vestibule voxel
    # voxel (0, 0, 4) is 4 voxels from each; in mm the larger spacing decides
    assert structure_regions(s, (1.0, 1.0, 0.5))[0, 0, 4] == 1  # 2 mm vs 4 mm
    assert structure_regions(s, (0.5, 1.0, 1.0))[0, 0, 4] == 2  # 4 mm vs 2 mm
    scores = per_structure(s > 0, s, (1.0, 1.0, 1.0))
    assert math.isnan(scores["dice_canals"]) and math.isnan(scores["recall_canals"])


def _per_volume(diffs, base=0.8):
    rows = []
    for i, d in enumerate(diffs):
        rows.append({"method": "U-Net", "volume_id": f"v{i}", "dice": base})
        rows.append({"method": "AutoCas-U-Net", "volume_id": f"v{i}", "dice": base + d})
    return pd.DataFrame(rows)


def test_comparison_detects_a_consistent_gain_and_the_sentence_says_so():
    pv = _per_volume([0.02, 0.03, 0.025, 0.04, 0.01, 0.03, 0.02, 0.035, 0.015, 0.03, 0.02, 0.025])
    comp = compare.cascade_comparison(pv, seed=0)
    row = comp.iloc[0]
    assert row["n"] == 12 and row["mean_diff"] == pytest.approx(0.025)
    assert 0 < row["ci_low"] < 0.025 < row["ci_high"]
    assert row["pvalue"] < 0.01
    sentence = compare.comparison_sentences(comp)[0]
    assert "the cascade is better" in sentence and "+0.025" in sentence
    assert "significantly better than its equally trained axial baseline for 1" in compare.comparison_summary(comp)


def test_comparison_calls_noise_no_difference():
    rng = np.random.default_rng(1)
    pv = _per_volume(rng.normal(0, 0.02, size=12))
    comp = compare.cascade_comparison(pv, seed=0)
    assert comp.iloc[0]["ci_low"] < 0 < comp.iloc[0]["ci_high"]
    assert "no significant difference" in compare.comparison_sentences(comp)[0]


def test_bootstrap_interval_needs_two_values():
    assert all(math.isnan(v) for v in compare.bootstrap_mean_ci(np.array([0.1])))


def test_structure_summary_means_per_method():
    pv = pd.DataFrame([
        {"method": "U-Net", "volume_id": "a", "dice": 0.9, "dice_cochlea": 0.8, "recall_cochlea": 0.7},
        {"method": "U-Net", "volume_id": "b", "dice": 0.7, "dice_cochlea": 0.6, "recall_cochlea": 0.5},
    ])
    out = compare.structure_summary(pv)
    assert out.loc["U-Net", "dice_cochlea"] == pytest.approx(0.7)
    assert out.loc["U-Net", "recall_cochlea"] == pytest.approx(0.6)
    assert compare.structure_summary(pv[["method", "volume_id", "dice"]]).empty


def test_stage_records_report_why_each_stage_stopped(tmp_path):
    profile = get_profile("smoke")
    for order, why in ((["axial"], "patience"), (["coronal"], "max_epochs")):
        folder = tmp_path / "smoke" / "unet" / "fold0" / order[0]
        folder.mkdir(parents=True)
        (folder / "stage.json").write_text(json.dumps({
            "backbone": "unet", "fold": 0, "order": order, "stage": 1, "epochs": 5, "best_epoch": 3,
            "stopped_by": why, "max_epochs": 9, "train_seconds": 1.0, "mean_test_dice": 0.5}))
    rec = evaluation.stage_records(tmp_path, profile)
    assert sorted(rec["stopped_by"]) == ["max_epochs", "patience"]
    assert set(rec["best_epoch"]) == {4}
