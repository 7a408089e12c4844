"""innerear.evaluation.results: row names, the probabilities ROC AUC is computed on, failed volumes, planted predictions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from innerear.evaluation import results as E
from innerear.data import preprocess as pp
from innerear.evaluation import table1
from innerear.metrics import largest_component
from innerear.settings.layout import stage_dir
from innerear.settings.profiles import get_profile
from innerear.io import save_npz
from innerear.metrics import roc_auc


def test_table1_row_names_follow_the_se_block():
    authors = E.table1_methods(se_mode="authors")
    assert list(authors) == ["U-Net", "AutoCas-U-Net", "ResU-Net", "AutoCas-ResU-Net", "SEU-Net", "AutoCas-SEU-Net"]
    standard = E.table1_methods(se_mode="standard")
    assert "SEU-Net (standard SE)" in standard and "AutoCas-SEU-Net (standard SE)" in standard
    assert "SEU-Net" not in standard and standard["SEU-Net (standard SE)"] == ("se_unet", ("axial",))


def test_postprocessed_probabilities_threshold_back_to_the_mask():
    rng = np.random.default_rng(0)
    prob = (rng.uniform(0, 1, (12, 12, 12)) ** 10).astype(np.float16)  # 7 % above 0.5: many pieces
    mask = largest_component(prob >= 0.5)
    p = E.postprocessed_probabilities(prob, mask)
    np.testing.assert_array_equal(p >= 0.5, mask.astype(bool))
    kept = (prob < 0.5) | (mask > 0)
    np.testing.assert_array_equal(p[kept], prob[kept].astype(np.float32))  # everything else unchanged
    assert (p[~kept] == 0).all() and (~kept).any()


def _case(cid: str, shape=(12, 12, 12)) -> pp.PreparedCase:
    label = np.zeros(shape, np.uint8)
    label[3:9, 3:9, 3:9] = 1
    return pp.PreparedCase(cid, np.zeros(shape, np.float32), label, None, (0.1, 0.1, 0.1),
                           np.diag([0.1, 0.1, 0.1, 1]), shape, np.eye(4))


def test_evaluate_run_auc_on_the_postprocessed_map_and_failed_volumes(tmp_path):
    profile = get_profile("smoke")
    cases = {c: _case(c) for c in ("a", "b")}
    folder = stage_dir(tmp_path, profile, "unet", 0, ("axial",))
    (folder / "pred").mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"test_ids": ["a", "b"]}))
    truth = cases["a"].label
    prob = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    prob[0, 0, 0:2] = 0.95  # a false positive that the largest-component step removes
    prob[4, 4, 4] = 0.2     # a weak voxel inside the structure
    mask = largest_component(prob >= 0.5)
    save_npz(folder / "pred" / "a.npz", prob=prob.astype(np.float16), mask=mask)
    save_npz(folder / "pred" / "b.npz", prob=np.full(truth.shape, 0.1, np.float16), mask=np.zeros_like(truth))
    rows = {r["volume_id"]: r for r in E.evaluate_run(cases, tmp_path, profile, "unet", ("axial",), "U-Net")}
    assert rows["a"]["pred_voxels"] == int(mask.sum()) and rows["b"]["pred_voxels"] == 0
    # the removed false positives count as 0, not 0.95: AUC of the post-processed map
    expected = roc_auc(E.postprocessed_probabilities(prob.astype(np.float16), mask), truth)
    assert rows["a"]["auc_roc"] == pytest.approx(expected)
    assert rows["a"]["auc_roc"] > roc_auc(prob.astype(np.float16), truth)
    assert np.isnan(rows["b"]["precision"]) and rows["b"]["hausdorff_mm"] == np.inf


# ------------------------------------------------------------------ planted predictions
G = 20


def _planted_case(cid: str, seed: int) -> pp.PreparedCase:
    rng = np.random.default_rng(seed)
    label = np.zeros((G,) * 3, np.uint8)
    c = rng.integers(7, 13, size=3)
    label[c[0] - 4:c[0] + 4, c[1] - 3:c[1] + 3, c[2] - 5:c[2] + 5] = 1
    return pp.PreparedCase(cid, rng.normal(size=label.shape).astype(np.float32), label, None, (0.1, 0.1, 0.1),
                        np.diag([0.1, 0.1, 0.1, 1.0]), label.shape, np.eye(4))


def _plant(runs, profile, backbone, views, fold, predictions: dict[str, np.ndarray]) -> None:
    """A finished stage folder as training leaves it: stage.json and pred/<id>.npz."""
    folder = stage_dir(runs, profile, backbone, fold, views)
    (folder / "pred").mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"test_ids": list(predictions), "view": views[-1]}))
    for cid, mask in predictions.items():
        np.savez(folder / "pred" / f"{cid}.npz", prob=mask.astype(np.float32), mask=mask.astype(np.uint8))


@pytest.fixture
def planted(tmp_path):
    profile = get_profile("smoke")
    cases = [_planted_case(f"v{i}", i) for i in range(4)]
    runs = tmp_path / "runs"
    # the cascade predicts every held-out volume perfectly; the baseline misses a slab of each
    for fold, ids in enumerate((("v0", "v1"), ("v2", "v3"))):
        truth = {c.case_id: c.label for c in cases if c.case_id in ids}
        _plant(runs, profile, "unet", ("coronal", "sagittal", "axial"), fold, truth)
        worse = {cid: np.where(np.arange(G)[:, None, None] % 3 == 0, 0, m) for cid, m in truth.items()}
        _plant(runs, profile, "unet", ("axial",), fold, worse)
    methods = {"U-Net": ("unet", ("axial",)), "AutoCas-U-Net": ("unet", ("coronal", "sagittal", "axial"))}
    return cases, runs, profile, methods


def test_perfect_prediction_gives_dice_1_and_hd_0_in_the_csv(planted, tmp_path):
    cases, runs, profile, methods = planted
    df = E.per_volume_table(cases, runs, profile, methods)
    assert len(df) == 8 and set(df["fold"]) == {0, 1}
    csv = pd.read_csv(E.save_tidy(df, tmp_path / "out" / "per_volume.csv"))
    perfect = csv[csv["method"] == "AutoCas-U-Net"]
    assert sorted(perfect["volume_id"]) == ["v0", "v1", "v2", "v3"]
    np.testing.assert_array_equal(perfect["dice"], 1.0)
    np.testing.assert_array_equal(perfect["hausdorff_mm"], 0.0)
    np.testing.assert_array_equal(perfect["fragmented_slices"], 0)
    worse = csv[csv["method"] == "U-Net"]
    assert (worse["dice"] < 1).all() and (worse["hausdorff_mm"] > 0).all() and (worse["recall"] < 1).all()
    assert (worse["precision"] == 1).all()  # it only removed voxels


def test_perfect_prediction_reads_1_and_0_in_table1(planted):
    cases, runs, profile, methods = planted
    summary = table1.summarize(E.per_volume_table(cases, runs, profile, methods))
    assert summary.at["AutoCas-U-Net", "dice_mean"] == 1.0 and summary.at["AutoCas-U-Net", "dice_std"] == 0.0
    assert summary.at["AutoCas-U-Net", "hausdorff_mm_mean"] == 0.0 and summary.at["AutoCas-U-Net", "n_volumes"] == 4
    table = table1.format_table1(summary)
    assert table.at["AutoCas-U-Net", "dice"] == "**1.000 ± 0.000**"
    assert table.at["AutoCas-U-Net", "hausdorff_mm"] == "**0.000 ± 0.000**"
    assert not table.at["U-Net", "dice"].startswith("**") and "n/a" not in table.loc["AutoCas-U-Net"].to_list()


def test_unfinished_folds_are_left_out(planted):
    cases, runs, profile, methods = planted
    (stage_dir(runs, profile, "unet", 1, ("axial",)) / "stage.json").unlink()
    df = E.per_volume_table(cases, runs, profile, methods)
    assert sorted(df[df["method"] == "U-Net"]["volume_id"]) == ["v0", "v1"]
