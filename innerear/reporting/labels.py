"""Column names and missing values for the book's tables: what a reader sees, not a code name.

The package's functions return tables with code-friendly column names (``ci_low``, ``pvalue``,
``dice_cochlea``); the book's pages pass them through :func:`readable` before showing them, so
every header is words with its unit and no cell reads ``NaN`` or ``None``.
"""
from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

MISSING = "—"  # what an empty cell shows (a value that was not measured or does not exist)

HEADERS: dict[str, str] = {
    # comparisons and statistics (innerear.evaluation)
    "baseline_mean": "baseline: mean Dice",
    "cascade_mean": "cascade: mean Dice",
    "mean_diff": "difference (cascade − baseline)",
    "ci_low": "95% interval: low",
    "ci_high": "95% interval: high",
    "pvalue": "Wilcoxon p",
    "n_volumes": "held-out volumes",
    "n volumes": "held-out volumes",
    "n_pairs": "paired volumes",
    "n": "number",
    "dice": "Dice",
    "hausdorff_mm": "Hausdorff distance (mm)",
    "dice_mean": "mean Dice",
    "dice_std": "Dice SD",
    "hd_mean": "mean Hausdorff distance (mm)",
    "volumes": "held-out volumes",
    "folds": "folds",
    "stopped_by": "stopped by",
    "stages": "stages",
    "epochs_median": "epochs (median)",
    "epochs_max": "epochs (max)",
    "train_s_median": "training time per stage (s, median)",
    "fragmented_slices": "fragmented slices",
    "slices": "slices",
    "auc_reported": "AUC reported",
    "auc_from_mask": "(recall + specificity) / 2",
    "abs_diff": "absolute difference",
    "consistent": "consistent",
    "total_s": "total (s)",
    "load_s": "loading (s)",
    "segment_s": "segmenting (s)",
    "n train": "training specimens",
    "train mean": "training mean (z-score)",
    "train std": "training SD (z-score)",
    "train s": "training (s)",
    "predict s": "predicting (s)",
    "s / epoch": "seconds per epoch",
    # networks (innerear.nets.backbones.layer_table)
    "name": "layer",
    "type": "type",
    "output_shape": "output shape",
    "params": "parameters",
    "trainable_params": "trainable parameters",
    "inputs": "inputs",
    # benchmark records (benchmarks/results/*.json)
    "seconds_per_volume": "seconds per volume",
    "step_s": "training step (s)",
    "first_step_s": "first step, tracing (s)",
    "steps_per_epoch": "steps per epoch",
    "epoch_s": "epoch (s)",
    "epochs_assumed": "epochs assumed",
    "cascade_fold_s": "cascade fold (s)",
    "voxel_mm": "voxel (mm)",
    "truth.lateral_wall_length_mm": "true duct length (mm)",
    "truth.turns": "true turns",
    "duct_length_mm": "duct length (mm)",
    "duct_length_error_pct": "duct length error (%)",
    "turns_error": "turns error",
    "duct_length_error_pct.mean": "duct length error, mean (%)",
    "duct_length_error_pct.max_abs": "duct length error, largest (%)",
    "turns_error.mean": "turns error, mean",
    "turns_error.max_abs": "turns error, largest",
    "all_duct_length_error_pct.mean": "duct length error, mean (%)",
    "all_duct_length_error_pct.max_abs": "duct length error, largest (%)",
    "all_turns_error.mean": "turns error, mean",
    "all_turns_error.max_abs": "turns error, largest",
    "with_true_contacts": "turns touch (truth)",
    "touching": "turns touch (found)",
    "touching_turns": "turns touch",
    "true_contacts": "voxel pairs a turn apart",
    "contact_voxels": "contact voxels",
    "within_goal": "within goal",
    "median_seconds": "median time (s)",
    "median_scan_s": "median per scan (s)",
    "per_scan_s": "per scan (s)",
    "seconds": "seconds",
    "inner_ear_mm3": "inner ear (mm³)",
    "cochlea_mm3": "cochlea (mm³)",
    "vestibule_mm3": "vestibule (mm³)",
    "canals_mm3": "canals (mm³)",
    "qc_flags": "quality flags",
}

# pandas' describe() of distances in mm (pass as ``headers`` to :func:`readable`)
DESCRIBE_MM = {"count": "vertices", "mean": "mean (mm)", "std": "SD (mm)", "min": "min (mm)", "50%": "median (mm)",
               "95%": "95th percentile (mm)", "max": "max (mm)"}

_STRUCTURE = re.compile(r"^(dice|recall)_(\w+)$")


def header(name: Any) -> Any:
    """The reader's name of a column: ``"ci_low"`` → ``"95% interval: low"``,
    ``"dice_cochlea"`` → ``"Dice: cochlea"``; other names unchanged (underscores to spaces)."""
    if not isinstance(name, str):
        return name
    if name in HEADERS:
        return HEADERS[name]
    m = _STRUCTURE.match(name)
    if m:
        return f"{'Dice' if m[1] == 'dice' else 'recall'}: {m[2].replace('_', ' ')}"
    return name.replace("_", " ") if "_" in name and " " not in name else name


def cell(value: Any) -> Any:
    """A cell's value, with NaN and None shown as :data:`MISSING`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, str) and value.strip() in ("nan", "NaN", "None", "<NA>", "NaT"):
        return MISSING
    return value


def readable(table: pd.DataFrame, headers: dict[str, str] | None = None) -> pd.DataFrame:
    """The table with readers' column and index names (``headers`` first, then :data:`HEADERS`)."""
    names = {**HEADERS, **(headers or {})}

    def rename(name: Any) -> Any:
        return names.get(name, header(name)) if isinstance(name, str) else name

    out = table.rename(columns=rename)
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = pd.MultiIndex.from_tuples([tuple(rename(x) for x in t) for t in out.columns])
    out.index = out.index.set_names([rename(n) for n in out.index.names])
    out.columns = out.columns.set_names([rename(n) for n in out.columns.names])
    return out


def no_missing(table: pd.DataFrame) -> pd.DataFrame:
    """Every NaN or None cell as :data:`MISSING` (for tables shown without a number format)."""
    return table.astype(object).map(cell)
