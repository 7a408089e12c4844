"""Collect saved out-of-fold predictions from ``runs/`` and evaluate them per volume.

Nothing here trains or predicts, and nothing here imports Keras or TensorFlow: every
function reads the held-out probabilities and masks that
:func:`innerear.training.cascade.train_cascade` saved (paths: :mod:`innerear.settings.layout`), and the
prepared ground truth. Timing the engine lives in :mod:`innerear.reporting.timing`.

Every metric is computed on the post-processed mask (threshold 0.5, largest component).
``auc_roc`` too: it is computed on the saved (float16) probabilities with the voxels that the
largest-component step removed set to 0 (:func:`postprocessed_probabilities`), so that this
probability map thresholded at 0.5 is exactly the evaluated mask.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from innerear.data.preprocess import PreparedCase
from innerear.io import atomic_path
from innerear.metrics import evaluate, fragmentation, per_structure
from innerear.settings.layout import read_stage_predictions, stage_dir
from innerear.settings.profiles import BACKBONE_LABELS, Profile, backbone_label
from innerear.settings.views import PAPER_ORDER, orientation_axis


def table1_methods(order: Sequence[str] = PAPER_ORDER, se_mode: str = "authors") -> dict[str, tuple[str, tuple[str, ...]]]:
    """Table 1's six rows: name → (backbone, views). Baselines are single axial views.

    The SEU-Net rows carry the paper's names only with the authors' SE block
    (``se_mode="authors"``); with the standard block they read "SEU-Net (standard SE)"."""
    out = {}
    for backbone in BACKBONE_LABELS:
        label = backbone_label(backbone, se_mode)
        out[label] = (backbone, ("axial",))
        out[f"AutoCas-{label}"] = (backbone, tuple(order))
    return out


def available_folds(runs_root: str | os.PathLike, profile: Profile, backbone: str, views: Sequence[str]) -> list[int]:
    """Folds for which the run ``views`` of ``backbone`` has finished."""
    return [k for k in range(profile.n_folds)
            if (stage_dir(runs_root, profile, backbone, k, views) / "stage.json").exists()]


def postprocessed_probabilities(prob: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Probabilities in [0, 1] with the voxels the post-processing removed (at or above
    ``threshold`` but outside the kept ``mask``) set to 0; thresholding the result at
    ``threshold`` gives ``mask`` again."""
    prob = np.clip(np.asarray(prob, np.float32), 0, 1)
    removed = (prob >= threshold) & (np.asarray(mask) == 0)
    return np.where(removed, np.float32(0), prob)


def evaluate_run(cases: dict[str, PreparedCase], runs_root: str | os.PathLike, profile: Profile, backbone: str,
                 views: Sequence[str], method: str, fragmentation_axis: str = "axial") -> list[dict]:
    """Per-volume metrics of one method over all folds it has finished.

    Besides the metrics: ``pred_voxels`` (0: the prediction is empty, a failed volume, whose
    precision is undefined and distances infinite) and the fragmentation counts."""
    rows = []
    for fold in available_folds(runs_root, profile, backbone, views):
        folder = stage_dir(runs_root, profile, backbone, fold, views)
        info = json.loads((folder / "stage.json").read_text())
        for cid in info["test_ids"]:
            prob, mask = read_stage_predictions(folder, cid)
            truth = cases[cid].label
            row = {"method": method, "volume_id": cid, "fold": fold, "backbone": backbone, "order": "-".join(views)}
            row.update(evaluate(mask, truth, cases[cid].spacing, probabilities=postprocessed_probabilities(prob, mask)))
            row["pred_voxels"] = int(np.count_nonzero(mask))
            frag = fragmentation(mask, truth, orientation_axis(fragmentation_axis))
            row.update(fragmented_slices=frag["n_fragmented"], slices=frag["n_slices"])
            if cases[cid].structures is not None:
                row.update(per_structure(mask, cases[cid].structures, cases[cid].spacing))
            rows.append(row)
    return rows


def per_volume_table(cases: Sequence[PreparedCase], runs_root: str | os.PathLike, profile: Profile,
                     methods: dict[str, tuple[str, tuple[str, ...]]] | None = None) -> pd.DataFrame:
    """Tidy per-volume results (one row per method and held-out volume)."""
    by_id = {c.case_id: c for c in cases}
    rows: list[dict] = []
    for method, (backbone, views) in (methods or table1_methods(se_mode=profile.se_mode)).items():
        rows += evaluate_run(by_id, runs_root, profile, backbone, views, method)
    return pd.DataFrame(rows)


def save_tidy(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a per-volume table as CSV atomically."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def stage_records(runs_root: str | os.PathLike, profile: Profile) -> pd.DataFrame:
    """One row per trained stage of a profile: how long it trained and why it stopped.

    Columns: ``backbone``, ``fold``, ``order`` (views up to this stage, joined by "-"),
    ``stage``, ``epochs``, ``best_epoch`` (1-based), ``stopped_by`` ("patience",
    "max_epochs", or "unknown" for runs written before it was recorded), ``max_epochs``,
    ``train_seconds`` and ``mean_test_dice``.
    """
    base = Path(runs_root) / profile.name
    rows = []
    for path in sorted(base.glob("*/fold*/**/stage.json")):
        info = json.loads(path.read_text())
        rows.append({"backbone": info["backbone"], "fold": info["fold"], "order": "-".join(info["order"]),
                     "stage": info["stage"], "epochs": info["epochs"], "best_epoch": info["best_epoch"] + 1,
                     "stopped_by": info.get("stopped_by", "unknown"),
                     "max_epochs": info.get("max_epochs", profile.max_epochs),
                     "train_seconds": info["train_seconds"], "mean_test_dice": info["mean_test_dice"]})
    return pd.DataFrame(rows, columns=["backbone", "fold", "order", "stage", "epochs", "best_epoch", "stopped_by",
                                       "max_epochs", "train_seconds", "mean_test_dice"])
