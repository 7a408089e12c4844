"""Per-structure results and the cascade-against-baseline comparison, from the tidy table.

Reads only the per-volume table that :mod:`innerear.evaluation.results` writes (no deep-learning
import). Three jobs:

* :func:`structure_summary`: mean Dice and recall per method for cochlea, vestibule and
  canals, so that a segmentation of the vestibule alone cannot pass for a good one;
* :func:`cascade_comparison`: each AutoCas-X against its axial baseline X on the same
  held-out volumes: mean difference, a paired Wilcoxon signed-rank test and a percentile
  bootstrap 95 % interval of the mean difference (volumes resampled with replacement);
* :func:`comparison_sentences`: the chapter's conclusion about the cascade, written from
  those numbers, so that a rerun that changes them changes the text.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from innerear.evaluation.table1 import method_pairs, paired_wilcoxon, summarize
from innerear.settings.structures import STRUCTURE_NAMES


def structure_columns(per_volume: pd.DataFrame, kind: str = "dice") -> list[str]:
    """The per-structure columns of ``kind`` ("dice" or "recall") present in the table."""
    return [f"{kind}_{name}" for name in STRUCTURE_NAMES.values() if f"{kind}_{name}" in per_volume.columns]


def structure_summary(per_volume: pd.DataFrame) -> pd.DataFrame:
    """Mean overall and per-structure Dice and recall per method (rows in Table 1's order).

    Columns: ``n_volumes``, ``dice``, then ``dice_<structure>`` and ``recall_<structure>``
    means. Empty when the table has no per-structure columns (data without a structure map).
    """
    cols = ["dice"] + structure_columns(per_volume, "dice") + structure_columns(per_volume, "recall")
    if len(cols) == 1:
        return pd.DataFrame()
    summary = summarize(per_volume, cols)
    out = summary[["n_volumes"]].copy()
    for c in cols:
        out[c] = summary[f"{c}_mean"]
    return out


def bootstrap_mean_ci(diff: np.ndarray, n_boot: int = 10_000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diff`` (NaN with fewer than 2 values)."""
    diff = np.asarray(diff, float)
    if diff.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def cascade_comparison(per_volume: pd.DataFrame, metric: str = "dice",
                       pairs: Sequence[tuple[str, str]] | None = None, n_boot: int = 10_000,
                       seed: int = 0) -> pd.DataFrame:
    """Each cascade against its baseline on the volumes both evaluated (paired).

    One row per pair present: ``cascade``, ``baseline``, ``n``, ``baseline_mean``,
    ``cascade_mean``, ``mean_diff`` (cascade − baseline), ``ci_low``/``ci_high`` (bootstrap
    95 % interval of the mean difference) and ``pvalue`` (two-sided Wilcoxon signed-rank).
    ``pairs`` default: every AutoCas-X with its X (:func:`innerear.evaluation.table1.method_pairs`), so
    that variants such as "SEU-Net (standard SE)" are compared too.
    """
    rows = []
    present = set(per_volume["method"])
    for cascade, baseline in (method_pairs(present) if pairs is None else pairs):
        if cascade not in present or baseline not in present:
            continue
        c = per_volume[per_volume["method"] == cascade].set_index("volume_id")[metric].astype(float)
        b = per_volume[per_volume["method"] == baseline].set_index("volume_id")[metric].astype(float)
        common = c.index.intersection(b.index)
        cv, bv = c.loc[common].to_numpy(), b.loc[common].to_numpy()
        ok = np.isfinite(cv) & np.isfinite(bv)
        diff = cv[ok] - bv[ok]
        lo, hi = bootstrap_mean_ci(diff, n_boot=n_boot, seed=seed)
        rows.append({"cascade": cascade, "baseline": baseline, "n": int(ok.sum()),
                     "baseline_mean": float(bv[ok].mean()) if ok.any() else math.nan,
                     "cascade_mean": float(cv[ok].mean()) if ok.any() else math.nan,
                     "mean_diff": float(diff.mean()) if diff.size else math.nan,
                     "ci_low": lo, "ci_high": hi, "pvalue": paired_wilcoxon(diff)[1]})
    return pd.DataFrame(rows, columns=["cascade", "baseline", "n", "baseline_mean", "cascade_mean",
                                       "mean_diff", "ci_low", "ci_high", "pvalue"])


def _verdict(row: pd.Series, alpha: float) -> str:
    if not np.isfinite(row["pvalue"]) or not np.isfinite(row["ci_low"]):
        return "too few paired volumes to test"
    if row["pvalue"] < alpha and row["ci_low"] > 0:
        return "the cascade is better"
    if row["pvalue"] < alpha and row["ci_high"] < 0:
        return "the cascade is worse"
    return "no significant difference"


def comparison_sentences(comparison: pd.DataFrame, metric: str = "Dice", alpha: float = 0.05) -> list[str]:
    """One sentence per pair, generated from :func:`cascade_comparison`'s numbers.

    A pair counts as a difference only when the Wilcoxon test gives p < ``alpha`` *and* the
    bootstrap interval excludes zero.
    """
    out = []
    for _, r in comparison.iterrows():
        out.append(
            f"{r['cascade']} vs {r['baseline']} ({r['n']} paired volumes): mean {metric} "
            f"{r['cascade_mean']:.3f} vs {r['baseline_mean']:.3f}, difference {r['mean_diff']:+.3f} "
            f"(95% bootstrap interval {r['ci_low']:+.3f} to {r['ci_high']:+.3f}; Wilcoxon p = "
            f"{r['pvalue']:.3g}): {_verdict(r, alpha)}.")
    return out


def comparison_summary(comparison: pd.DataFrame, alpha: float = 0.05) -> str:
    """One sentence counting how many backbones the cascade helped, hurt or left unchanged."""
    if comparison.empty:
        return "No cascade and baseline pair has been evaluated yet."
    verdicts = [_verdict(r, alpha) for _, r in comparison.iterrows()]
    better = verdicts.count("the cascade is better")
    worse = verdicts.count("the cascade is worse")
    n = len(verdicts)
    return (f"Of {n} backbone{'s' if n != 1 else ''}, the cascade was significantly better than its "
            f"equally trained axial baseline for {better}, significantly worse for {worse}, and not "
            f"distinguishable for {n - better - worse} (Wilcoxon p < {alpha} and a bootstrap interval "
            f"excluding zero both required).")
