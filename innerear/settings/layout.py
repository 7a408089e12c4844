"""Where things live on disk: the run tree, the prepared-data cache, saved predictions.

One home for every path the pipeline, the command line, the notebooks and the tools build::

    data/cache/<profile>-<grid>/<case>.npz                       prepared volumes (cache_dir)
    runs/<profile>/<backbone>/fold<k>/                            fold.json (fold_dir)
    runs/<profile>/<backbone>/fold<k>/<view1>/[<view2>/[<view3>/]]  one stage each (stage_dir):
        best.keras, stage.json, history.csv, pred/<case>.npz
        cascade.json                                              in a run's deepest stage
    runs/<profile>/evaluation/                                    per-volume CSVs, STL files

A single-view baseline is the first level of the stage tree (``fold0/axial``); cascades that
share their first views share those stages. Nothing here imports the deep-learning stack.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _name(profile) -> str:
    return profile if isinstance(profile, str) else profile.name


def cache_dir(root: str | os.PathLike, profile, grid: int | None = None, under: str = "data/cache") -> Path:
    """``<root>/data/cache/<profile>-<grid>``: the prepared volumes of a profile (``grid``
    defaults to the profile's; ``innerear train --out DIR`` keeps its own under ``DIR/cache``)."""
    grid = profile.grid if grid is None else int(grid)
    return Path(root).joinpath(*under.split("/")) / f"{_name(profile)}-{grid}"


def runs_root(root: str | os.PathLike) -> Path:
    """``<root>/runs``: every profile's run tree."""
    return Path(root) / "runs"


def profile_runs(runs_root: str | os.PathLike, profile) -> Path:
    """``runs/<profile>``."""
    return Path(runs_root) / _name(profile)


def fold_dir(runs_root: str | os.PathLike, profile, backbone: str, fold: int) -> Path:
    """``runs/<profile>/<backbone>/fold<k>``."""
    return profile_runs(runs_root, profile) / backbone / f"fold{fold}"


def stage_dir(runs_root: str | os.PathLike, profile, backbone: str, fold: int, order: Sequence[str]) -> Path:
    """The folder of the last stage of ``order`` in the prefix tree."""
    return fold_dir(runs_root, profile, backbone, fold).joinpath(*order)


def evaluation_dir(runs_root: str | os.PathLike, profile) -> Path:
    """``runs/<profile>/evaluation``: per-volume tables and exported surfaces."""
    return profile_runs(runs_root, profile) / "evaluation"


def prediction_path(stage_folder: str | os.PathLike, case_id: str) -> Path:
    """``<stage>/pred/<case>.npz``: a stage's saved prediction for one case."""
    return Path(stage_folder) / "pred" / f"{case_id}.npz"


def read_stage_predictions(folder: str | os.PathLike, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Saved ``(probabilities, mask)`` of one stage for one held-out case."""
    with np.load(prediction_path(folder, case_id)) as z:
        if "prob" not in z:
            raise KeyError(f"{folder}: {case_id} is a training volume of this fold (no held-out prediction)")
        return z["prob"].astype(np.float32), z["mask"]


def read_stage_masks(folder: str | os.PathLike, case_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Saved masks of one stage for every case (training and held-out)."""
    out = {}
    for cid in case_ids:
        with np.load(prediction_path(folder, cid)) as z:
            out[cid] = z["mask"]
    return out
