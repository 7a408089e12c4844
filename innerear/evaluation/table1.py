"""Table 1 of Hussain et al. (2021): summary of per-volume metrics, Wilcoxon tests, rendering.

Input of :func:`summarize` and :func:`wilcoxon_pairs` is a tidy per-volume DataFrame: one row
per (method, volume) with columns ``method``, ``volume_id`` (``fold`` optional) and metric
columns named as the keys of :func:`innerear.metrics.evaluate`.

Conventions
-----------
- Method names: the paper's six (:data:`METHODS`), or one of them followed by a variant in
  parentheses, e.g. "SEU-Net (standard SE)" for a network that is not the authors'; such a
  row is paired with the paper's row of the same name without the parentheses
  (:func:`paper_method`) and with its own cascade/baseline (:func:`method_pairs`).
- mean and standard deviation (``ddof=1``, the sample standard deviation) are taken over the
  volumes whose value is finite; the number of non-finite values (NaN = undefined, ``inf`` =
  distance to an empty mask, see :mod:`innerear.metrics`) is kept in ``{metric}_nonfinite``.
  A volume whose prediction is empty (``pred_voxels == 0``) has *failed*: its precision is
  undefined and its distances infinite, so it is left out of those means. ``n_failed``
  counts the failed volumes of each method and the formatted table says so twice: in a
  column "failed" ("1 of 17") and beside every mean that leaves values out, e.g.
  ``0.812 ± 0.101 (1 failed, left out)``; a cell with no finite value reads
  ``n/a (all 4 failed)``. No cell is "n/a" without a reason in parentheses
  (:func:`unexplained_cells`).
- Wilcoxon signed-rank test, two-sided, ``scipy.stats.wilcoxon`` with its defaults, on the
  volumes present for both methods (matched by ``volume_id``). Pairs where either value is
  non-finite are dropped (the test cannot rank ``inf - inf`` or NaN); ``n`` is the number of
  pairs used, ``n_dropped`` the number dropped. All differences zero: statistic 0, p = 1.
  Fewer than two pairs: statistic and p are NaN.
- Formatting: ``mean ± std`` with three decimals; in each cascade/baseline pair the better
  mean (at the printed precision) is bold, ``**…**`` (both if equal; higher is better except
  for distances); `` *`` follows the cascade's cell where the test gives p < 0.05.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from innerear.metrics import METRIC_KEYS
from innerear.settings.profiles import is_synthetic

METHODS: list[str] = [
    "U-Net", "AutoCas-U-Net", "ResU-Net", "AutoCas-ResU-Net", "SEU-Net", "AutoCas-SEU-Net",
]
# (cascade, its baseline)
PAIRS: tuple[tuple[str, str], ...] = (
    ("AutoCas-U-Net", "U-Net"),
    ("AutoCas-ResU-Net", "ResU-Net"),
    ("AutoCas-SEU-Net", "SEU-Net"),
)
PAPER_METRICS: tuple[str, ...] = (
    "dice", "jaccard", "accuracy", "precision", "recall", "specificity", "auc", "hausdorff_mm",
)
PAPER_HEADERS: dict[str, str] = {
    "dice": "Dice", "jaccard": "Jaccard", "accuracy": "Accuracy", "precision": "Precision",
    "recall": "Recall", "specificity": "Specificity", "auc": "AUC", "hausdorff_mm": "HD (mm)",
    "failed": "failed",
}
LOWER_IS_BETTER: frozenset[str] = frozenset({"hausdorff_mm", "hd95_mm", "assd_mm"})
# Cells the paper marks with * (p < 0.05, Wilcoxon signed-rank, cascade vs. its baseline).
PAPER_SIGNIFICANT: dict[str, frozenset[str]] = {
    "AutoCas-U-Net": frozenset(PAPER_METRICS) - {"recall"},
    "AutoCas-ResU-Net": frozenset({"accuracy", "precision", "specificity", "hausdorff_mm"}),
    "AutoCas-SEU-Net": frozenset({"dice", "jaccard", "accuracy", "precision", "specificity"}),
}
# Metrics the paper does not report, in the second table of the evaluation chapter.
EXTRA_METRICS: tuple[str, ...] = ("auc_roc", "hd95_mm", "assd_mm")
EXTRA_HEADERS: dict[str, str] = {"auc_roc": "ROC AUC", "hd95_mm": "HD95 (mm)", "assd_mm": "ASSD (mm)",
                                 "failed": "failed"}
PAPER_TABLE1_CSV: Path = Path(__file__).resolve().parent / "paper" / "table1_paper.csv"
PAPER_LABEL = "paper (Hear-EU)"


def source_label(data_dir: str | Path) -> str:
    """Source label of our rows, from the data actually used: "ours (synthetic)" for the
    generated phantoms, "ours (real)" for anything else (Hear-EU or one's own scans)."""

    return "ours (synthetic)" if is_synthetic(Path(data_dir)) else "ours (real)"


# ----------------------------------------------------------------------------- paper table
def load_paper_table1(path: str | Path | None = None) -> pd.DataFrame:
    """The paper's Table 1 (mean, std over 17 volumes), indexed by method.

    Columns ``{metric}_mean`` and ``{metric}_std`` for the metrics of :data:`PAPER_METRICS`.
    """
    table = pd.read_csv(PAPER_TABLE1_CSV if path is None else Path(path))
    return table.rename(columns={"model": "method"}).set_index("method")


def paper_auc_consistency(paper: pd.DataFrame | None = None, tol: float = 0.0005) -> pd.DataFrame:
    """Does the paper's AUC equal (recall + specificity) / 2 (the thresholded-mask AUC)?

    ``consistent`` is True where |AUC − (recall+specificity)/2| ≤ ``tol`` (rounding of the
    three-decimal table). True for four rows, False for the two ResU-Net rows.
    """
    paper = load_paper_table1() if paper is None else paper
    out = pd.DataFrame({
        "auc_reported": paper["auc_mean"],
        "recall": paper["recall_mean"],
        "specificity": paper["specificity_mean"],
    })
    out["auc_from_mask"] = (out["recall"] + out["specificity"]) / 2
    out["abs_diff"] = (out["auc_reported"] - out["auc_from_mask"]).abs()
    out["consistent"] = out["abs_diff"] <= tol + 1e-9  # 1e-9: binary floating point slack
    return out


# ----------------------------------------------------------------------------- helpers
_VARIANT = re.compile(r"^(?P<base>.+?) \((?P<variant>[^()]+)\)$")


def paper_method(method: str) -> str:
    """The paper's row a method corresponds to: its name without a trailing "(variant)"."""
    match = _VARIANT.match(method)
    return match.group("base") if match else method


def order_methods(methods: Iterable[str]) -> list[str]:
    """Methods in the paper's row order (a variant right after the paper's name), then others."""
    present = list(dict.fromkeys(methods))
    known = [m for m in present if paper_method(m) in METHODS]
    known.sort(key=lambda m: (METHODS.index(paper_method(m)), m != paper_method(m)))
    return known + [m for m in present if m not in known]


def method_pairs(methods: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """(cascade, its baseline) for every "AutoCas-X" whose "X" is among ``methods``."""
    present = order_methods(methods)
    return tuple((m, m[len("AutoCas-"):]) for m in present
                 if m.startswith("AutoCas-") and m[len("AutoCas-"):] in present)


def _metric_columns(per_volume: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        candidates = list(METRIC_KEYS) + ["auc"]
        return [m for m in candidates if m in per_volume.columns]
    missing = [m for m in metrics if m not in per_volume.columns]
    if missing:
        raise ValueError(f"per-volume table lacks metric columns {missing}")
    return list(metrics)


def _check_per_volume(per_volume: pd.DataFrame) -> None:
    missing = {"method", "volume_id"} - set(per_volume.columns)
    if missing:
        raise ValueError(f"per-volume table lacks columns {sorted(missing)}")


def _numeric(series: pd.Series) -> pd.Series:
    """Metric values as float (``None`` -> NaN)."""
    return pd.to_numeric(series).astype(float)


# ----------------------------------------------------------------------------- summary
def summarize(per_volume: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean ± std (ddof=1) per method and metric over the volumes with a finite value.

    Returns one row per method (:func:`order_methods`; missing methods are skipped) with
    columns ``n_volumes`` and, per metric, ``{m}_mean``, ``{m}_std``, ``{m}_n`` (finite
    values used) and ``{m}_nonfinite`` (NaN or ±inf values left out). With a
    ``pred_voxels`` column also ``n_failed`` (volumes with an empty prediction) and, per
    metric, ``{m}_nonfinite_failed`` (the non-finite values that belong to failed volumes).
    """
    _check_per_volume(per_volume)
    cols = _metric_columns(per_volume, metrics)
    has_failed = "pred_voxels" in per_volume.columns
    rows = {}
    for method in order_methods(per_volume["method"]):
        part = per_volume[per_volume["method"] == method]
        row: dict[str, float] = {"n_volumes": len(part)}
        failed = (_numeric(part["pred_voxels"]).to_numpy() == 0) if has_failed else None
        if failed is not None:
            row["n_failed"] = int(failed.sum())
        for m in cols:
            values = _numeric(part[m]).to_numpy()
            ok = np.isfinite(values)
            finite = values[ok]
            row[f"{m}_mean"] = float(finite.mean()) if finite.size else math.nan
            row[f"{m}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            row[f"{m}_n"] = int(finite.size)
            row[f"{m}_nonfinite"] = int(values.size - finite.size)
            if failed is not None:
                row[f"{m}_nonfinite_failed"] = int((~ok & failed).sum())
        rows[method] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    return out


# ----------------------------------------------------------------------------- Wilcoxon
def paired_wilcoxon(diff: np.ndarray) -> tuple[float, float]:
    if diff.size < 2:
        return math.nan, math.nan
    if np.all(diff == 0):
        return 0.0, 1.0
    try:
        res = stats.wilcoxon(diff, alternative="two-sided")
    except ValueError:
        return math.nan, math.nan
    return float(res.statistic), float(res.pvalue)


def wilcoxon_pairs(
    per_volume: pd.DataFrame,
    pairs: Sequence[tuple[str, str]] | None = None,
    metrics: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired two-sided Wilcoxon signed-rank test, cascade vs. baseline, for every metric.

    ``pairs`` default: :func:`method_pairs` of the methods present.
    One row per (pair, metric) for the pairs whose both methods are present: ``cascade``,
    ``baseline``, ``metric``, ``n`` (finite pairs used), ``n_dropped`` (pairs with a
    non-finite value), ``statistic``, ``pvalue``, ``mean_diff`` and ``median_diff``
    (cascade − baseline), ``better`` ("cascade", "baseline" or "tie", by mean difference and
    the metric's direction) and ``significant`` (p < ``alpha``). A volume listed twice for
    one method raises ValueError (the pairing would be ambiguous).
    """
    _check_per_volume(per_volume)
    cols = _metric_columns(per_volume, metrics)
    dup = per_volume.duplicated(["method", "volume_id"])
    if dup.any():
        first = per_volume.loc[dup, ["method", "volume_id"]].iloc[0].tolist()
        raise ValueError(f"(method, volume_id) {first} occurs more than once")
    present = set(per_volume["method"])
    records = []
    for cascade, baseline in (method_pairs(present) if pairs is None else pairs):
        if cascade not in present or baseline not in present:
            continue
        c = per_volume[per_volume["method"] == cascade].set_index("volume_id")
        b = per_volume[per_volume["method"] == baseline].set_index("volume_id")
        common = c.index.intersection(b.index)
        for m in cols:
            cv = _numeric(c.loc[common, m]).to_numpy()
            bv = _numeric(b.loc[common, m]).to_numpy()
            ok = np.isfinite(cv) & np.isfinite(bv)
            diff = cv[ok] - bv[ok]
            statistic, pvalue = paired_wilcoxon(diff)
            mean_diff = float(diff.mean()) if diff.size else math.nan
            signed = -mean_diff if m in LOWER_IS_BETTER else mean_diff
            better = ("cascade" if signed > 0 else "baseline" if signed < 0
                      else "tie" if signed == 0 else "n/a")
            records.append({
                "cascade": cascade, "baseline": baseline, "metric": m,
                "n": int(ok.sum()), "n_dropped": int((~ok).sum()),
                "statistic": statistic, "pvalue": pvalue,
                "mean_diff": mean_diff,
                "median_diff": float(np.median(diff)) if diff.size else math.nan,
                "better": better,
                "significant": bool(pvalue < alpha),  # False when p is NaN
            })
    columns = ["cascade", "baseline", "metric", "n", "n_dropped", "statistic", "pvalue",
               "mean_diff", "median_diff", "better", "significant"]
    return pd.DataFrame.from_records(records, columns=columns)


# ----------------------------------------------------------------------------- formatting
def _format_cells(
    means: pd.DataFrame, stds: pd.DataFrame, notes: pd.DataFrame | None,
    starred: set[tuple[str, str]], pairs: Sequence[tuple[str, str]], decimals: int,
) -> pd.DataFrame:
    """Strings ``mean ± std``, the better of each pair in bold, `` *`` where starred."""
    bold: set[tuple[str, str]] = set()
    for cascade, baseline in pairs:
        if cascade not in means.index or baseline not in means.index:
            continue
        for metric in means.columns:
            a = round(float(means.at[cascade, metric]), decimals)
            b = round(float(means.at[baseline, metric]), decimals)
            if math.isnan(a) or math.isnan(b):
                continue
            if metric in LOWER_IS_BETTER:
                a, b = -a, -b
            if a >= b:
                bold.add((cascade, metric))
            if b >= a:
                bold.add((baseline, metric))
    out = pd.DataFrame(index=means.index, columns=means.columns, dtype=object)
    for method in means.index:
        for metric in means.columns:
            mean, std = float(means.at[method, metric]), float(stds.at[method, metric])
            if math.isnan(mean):
                text = "n/a"  # the reason follows in the note
            else:
                text = f"{mean:.{decimals}f}"
                if not math.isnan(std):
                    text += f" ± {std:.{decimals}f}"
                if (method, metric) in bold:
                    text = f"**{text}**"
            if (method, metric) in starred:
                text += " *"
            note = "" if notes is None else notes.at[method, metric]
            if note:
                text += f" {note}"
            out.at[method, metric] = text
    out.index.name = "method"
    return out


def _cell_note(summary: pd.DataFrame, method: str, col: str) -> str:
    """Why a cell leaves values out or reads n/a (empty when it does neither)."""
    if f"{col}_mean" not in summary.columns:
        return "(not computed)"
    k = int(summary.at[method, f"{col}_nonfinite"])
    total = k + int(summary.at[method, f"{col}_n"])
    if total == 0:
        return "(no volumes)"
    if k == 0:
        return ""
    failed = int(summary.at[method, f"{col}_nonfinite_failed"]) if f"{col}_nonfinite_failed" in summary.columns else 0
    if k == total:
        return f"(all {k} failed)" if failed == k else f"({k} of {k} not finite)"
    if failed == k:
        return f"({k} failed, left out)"
    return f"({k} of {total} not finite, left out)"


def format_table1(
    summary: pd.DataFrame,
    wilcoxon: pd.DataFrame | None = None,
    which_auc: str = "auc_paper",
    decimals: int = 3,
    alpha: float = 0.05,
    pairs: Sequence[tuple[str, str]] | None = None,
    metrics: Sequence[str] = PAPER_METRICS,
) -> pd.DataFrame:
    """Table 1 as strings: rows = methods of ``summary``, columns = ``metrics`` (default the
    paper's eight, :data:`PAPER_METRICS`; :data:`EXTRA_METRICS` for the others) and, when
    ``summary`` counts them, "failed" (volumes with an empty prediction, "1 of 17").

    A "auc" column is filled from ``which_auc`` (``"auc_paper"``, the thresholded mask's AUC
    as in the paper, or ``"auc_roc"``). A cell that leaves values out, or has none, says why
    in parentheses (module docstring). ``wilcoxon`` (from :func:`wilcoxon_pairs`) adds `` *``
    where p < ``alpha``; ``pairs`` default: :func:`method_pairs` of the rows.
    """
    metrics = list(metrics)
    pairs = method_pairs(summary.index) if pairs is None else pairs
    source = {m: (which_auc if m == "auc" else m) for m in metrics}
    means = pd.DataFrame(index=summary.index, columns=metrics, dtype=float)
    stds = means.copy()
    notes = pd.DataFrame("", index=summary.index, columns=metrics, dtype=object)
    for metric, col in source.items():
        for method in summary.index:
            notes.at[method, metric] = _cell_note(summary, method, col)
        if f"{col}_mean" not in summary.columns:
            continue
        means[metric] = summary[f"{col}_mean"].astype(float)
        stds[metric] = summary[f"{col}_std"].astype(float)
    starred: set[tuple[str, str]] = set()
    if wilcoxon is not None and len(wilcoxon):
        for metric, col in source.items():
            rows = wilcoxon[(wilcoxon["metric"] == col) & (wilcoxon["pvalue"] < alpha)]
            starred.update((c, metric) for c in rows["cascade"] if c in summary.index)
    table = _format_cells(means, stds, notes, starred, pairs, decimals)
    if "n_failed" in summary.columns:
        table["failed"] = [f"{int(summary.at[m, 'n_failed'])} of {int(summary.at[m, 'n_volumes'])}"
                           for m in summary.index]
    return table


_UNDEFINED = re.compile(r"\b(n/a|nan|inf)\b", re.IGNORECASE)
_REASON = re.compile(r"\([^()]*[a-z][^()]*\)")


def unexplained_cells(table: pd.DataFrame) -> list[tuple[object, str, str]]:
    """Cells (row, column, text) that read n/a, NaN or inf without a reason in parentheses."""
    bad = []
    for row, values in table.iterrows():
        for column, value in values.items():
            text = str(value)
            if _UNDEFINED.search(text) and not _REASON.search(text):
                bad.append((row, str(column), text))
    return bad


def check_explained(table: pd.DataFrame, what: str = "table") -> pd.DataFrame:
    """``table`` itself, or ValueError naming every cell that is n/a or non-finite unexplained."""
    bad = unexplained_cells(table)
    if bad:
        listed = "; ".join(f"{r} / {c}: {t!r}" for r, c, t in bad[:10])
        raise ValueError(f"{what}: {len(bad)} cell(s) n/a or non-finite without a stated reason: {listed}")
    return table


def format_paper_table1(paper: pd.DataFrame | None = None, decimals: int = 3) -> pd.DataFrame:
    """The paper's Table 1 in the same string format, with the paper's own * marks."""
    paper = load_paper_table1() if paper is None else paper
    metrics = [m for m in PAPER_METRICS if f"{m}_mean" in paper.columns]
    means = pd.DataFrame({m: paper[f"{m}_mean"].astype(float) for m in metrics})
    stds = pd.DataFrame({m: paper[f"{m}_std"].astype(float) for m in metrics})
    starred = {(method, m) for method, ms in PAPER_SIGNIFICANT.items() for m in ms
               if method in paper.index and m in metrics}
    return _format_cells(means, stds, None, starred, PAIRS, decimals)


def side_by_side(
    ours: pd.DataFrame,
    paper: pd.DataFrame | None = None,
    *,
    data_dir: str | Path | None = None,
    ours_label: str | None = None,
    paper_label: str = PAPER_LABEL,
) -> pd.DataFrame:
    """Interleave our formatted rows with the paper's: index (method, source).

    ``ours`` comes from :func:`format_table1`. ``paper``: ``None`` (load and format the
    shipped table), the numeric table of :func:`load_paper_table1`, or an already formatted
    one. Our rows are labelled from the data they were computed on (``data_dir``, see
    :func:`source_label`) unless ``ours_label`` is given; one of the two is required. Every
    paper row is kept, right after our rows of the same paper method (a variant such as
    "SEU-Net (standard SE)" pairs with "SEU-Net"). Cells missing on one side are empty.
    """
    if ours_label is None:
        if data_dir is None:
            raise ValueError("side_by_side needs data_dir (the data our rows were computed on) or ours_label")
        ours_label = source_label(data_dir)
    if paper is None:
        paper = format_paper_table1()
    elif any(str(c).endswith("_mean") for c in paper.columns):
        paper = format_paper_table1(paper)
    columns = [c for c in PAPER_METRICS if c in ours.columns or c in paper.columns]
    columns += [c for c in ours.columns if c not in columns]
    rows, index = [], []
    ordered = order_methods(list(ours.index) + list(paper.index))
    for group in dict.fromkeys(paper_method(m) for m in ordered):
        members = [m for m in ordered if paper_method(m) == group]
        for label, table in ((ours_label, ours), (paper_label, paper)):
            for method in members:
                if method in table.index:
                    rows.append([table.at[method, c] if c in table.columns else "" for c in columns])
                    index.append((method, label))
    return pd.DataFrame(rows, columns=columns,
                        index=pd.MultiIndex.from_tuples(index, names=["method", "source"]))


# ----------------------------------------------------------------------------- rendering
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def to_html(table: pd.DataFrame, headers: dict[str, str] | None = PAPER_HEADERS) -> str:
    """HTML table; ``**…**`` becomes ``<b>…</b>``, everything else is escaped."""
    def cell(value: object) -> str:
        return _BOLD.sub(r"<b>\1</b>", html.escape(str(value)))

    shown = table.map(cell)
    shown.index = shown.index.map(
        lambda i: tuple(html.escape(str(p)) for p in i) if isinstance(i, tuple)
        else html.escape(str(i)))
    if isinstance(table.index, pd.MultiIndex):
        shown.index = pd.MultiIndex.from_tuples(list(shown.index), names=table.index.names)
    else:
        shown.index.name = table.index.name
    shown.columns = [html.escape((headers or {}).get(c, str(c))) for c in table.columns]
    return shown.to_html(escape=False)


def to_markdown(table: pd.DataFrame, headers: dict[str, str] | None = PAPER_HEADERS) -> str:
    """GitHub-flavoured Markdown table (no ``tabulate`` needed); bold stays ``**…**``."""
    names = [n if n is not None else "" for n in (table.index.names or [table.index.name])]

    def esc(value: object) -> str:
        return str(value).replace("|", "\\|")

    head = [esc(n) for n in names] + [esc((headers or {}).get(c, c)) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for key, row in zip(table.index, table.itertuples(index=False)):
        keys = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([esc(k) for k in keys] + [esc(v) for v in row]) + " |")
    return "\n".join(lines)
