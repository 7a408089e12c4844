"""Collect saved out-of-fold predictions from ``runs/`` and evaluate them per volume.

Nothing here trains: every function reads the held-out probabilities and masks that
:func:`innerear.cascade.train_cascade` saved, and the prepared ground truth.

Every metric is computed on the post-processed mask (threshold 0.5, largest component).
``auc_roc`` too: it is computed on the saved (float16) probabilities with the voxels that the
largest-component step removed set to 0 (:func:`postprocessed_probabilities`), so that this
probability map thresholded at 0.5 is exactly the evaluated mask.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .backbones import BACKBONE_LABELS, backbone_label
from .cascade import read_stage_predictions, stage_dir
from .config import PAPER_ORDER, Profile
from .metrics import evaluate, fragmentation, per_structure
from .preprocess import PreparedCase, orientation_axis


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


def time_segmentation(cascade_dir: str | os.PathLike, cache_file: str | os.PathLike, repeats: int = 1) -> dict:
    """Seconds to segment one volume, counting the loading of the prepared volume and models."""
    from .cascade import load_cascade, segment

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with np.load(cache_file) as z:
            volume = z["image"]
        models = load_cascade(cascade_dir)
        t1 = time.perf_counter()
        segment(volume, models)
        t2 = time.perf_counter()
        times.append((t2 - t0, t1 - t0, t2 - t1))
    total, load, seg = (float(np.median([t[i] for t in times])) for i in range(3))
    return {"total_s": total, "load_s": load, "segment_s": seg, "shape": tuple(volume.shape), "repeats": repeats}


def save_tidy(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a per-volume table as CSV atomically."""
    from .io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def time_paper_size(grid: int = 256, seed: int = 0, backbone: str = "unet", slices: int | None = None) -> dict:
    """Seconds to segment a ``grid``³ volume with a paper-size cascade (untrained weights).

    The three paper-size networks (base 32 filters, three pooling levels; 1, 2 and 3 input
    channels) are saved and loaded like trained ones; the weights do not change the time.
    Counts the loading of the models and of a prepared volume, as in the paper.

    With ``slices`` (fewer than ``grid``) each stage predicts only that many of its ``grid``
    slices, through the same slice-by-slice path, and the network time is scaled up to the
    whole volume (it is linear in the number of slices); the 3D post-processing is always
    timed on the whole volume. ``"method"`` in the result says which was done.
    """
    import tempfile

    from .backbones import build
    from .cascade import Cascade, postprocess, segment
    from .io import save_npz
    from .preprocess import Normalizer, orientation_axis
    from .train import load_model, predict_volume, set_seed

    set_seed(seed, deterministic=False)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(3):
            path = Path(tmp) / f"stage{k + 1}.keras"
            build(backbone, channels=k + 1, size=None, base_filters=32, depth=3).save(path)
            paths.append(path)
        vol_path = save_npz(Path(tmp) / "volume.npz", image=rng.normal(size=(grid,) * 3).astype(np.float32))
        t0 = time.perf_counter()
        with np.load(vol_path) as z:
            volume = z["image"]
        models = Cascade([(v, load_model(p)) for v, p in zip(PAPER_ORDER, paths)], Normalizer(0.0, 1.0), grid)
        t1 = time.perf_counter()
        if slices is None or slices >= grid:
            segment(volume, models)
            seg, method = time.perf_counter() - t1, f"all {grid} slices of each stage"
        else:
            seg = 0.0
            for k, (view, model) in enumerate(models.stages):
                shape = [grid] * 3
                shape[orientation_axis(view)] = slices
                part = np.ascontiguousarray(volume[: shape[0], : shape[1], : shape[2], None].repeat(k + 1, axis=-1))
                t = time.perf_counter()  # the first call of a network costs extra once: counted once
                predict_volume(model, part, view)
                seg += time.perf_counter() - t
                t = time.perf_counter()
                prob = predict_volume(model, part, view)
                seg += (time.perf_counter() - t) * (grid / slices - 1)
                whole = np.zeros(volume.shape, np.float32)  # the slab's output, zero elsewhere
                whole[: shape[0], : shape[1], : shape[2]] = prob
                t = time.perf_counter()
                postprocess(whole)
                seg += time.perf_counter() - t
            method = f"{slices} of {grid} slices per stage run, network time scaled to {grid}"
    return {"total_s": (t1 - t0) + seg, "load_s": t1 - t0, "segment_s": seg, "shape": (grid,) * 3, "repeats": 1,
            "method": method}


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
