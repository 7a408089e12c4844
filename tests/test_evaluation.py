"""innerear.evaluation: row names, the probabilities ROC AUC is computed on, failed volumes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from innerear import evaluation as E
from innerear import preprocess as pp
from innerear.cascade import largest_component, stage_dir
from innerear.config import get_profile
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
