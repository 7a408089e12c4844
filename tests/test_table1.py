"""innerear.evaluation.table1: summary, paired tests, formatting and the paper's table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from innerear.evaluation import table1 as T
from innerear.metrics import METRIC_KEYS

N_VOL = 8


def synthetic_per_volume(seed: int = 0) -> pd.DataFrame:
    """Known outcomes: AutoCas-U-Net beats U-Net on every volume; the ResU pair is mixed;
    the SEU pair is identical."""
    rng = np.random.default_rng(seed)
    rows = []
    base = {m: rng.uniform(0.6, 0.9, N_VOL) for m in METRIC_KEYS}
    base["hausdorff_mm"] = rng.uniform(0.5, 1.5, N_VOL)
    for method in T.METHODS:
        for v in range(N_VOL):
            row = {"method": method, "volume_id": f"vol{v:02d}", "fold": v % 4}
            for m in METRIC_KEYS:
                value = base[m][v]
                if method == "AutoCas-U-Net":
                    gain = 0.01 + 0.005 * v
                    value = value - gain if m in T.LOWER_IS_BETTER else value + gain
                elif method == "AutoCas-ResU-Net":
                    value = value + (0.01 if v % 2 else -0.011)
                row[m] = value
            row["auc_roc"] = None
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # order-free


def test_summarize_mean_std_and_order():
    pv = synthetic_per_volume()
    s = T.summarize(pv)
    assert list(s.index) == T.METHODS
    u = pv[pv["method"] == "U-Net"]["dice"].to_numpy()
    assert s.at["U-Net", "dice_mean"] == pytest.approx(u.mean())
    assert s.at["U-Net", "dice_std"] == pytest.approx(u.std(ddof=1))
    assert s.at["U-Net", "dice_n"] == N_VOL and s.at["U-Net", "dice_nonfinite"] == 0
    assert s.at["U-Net", "auc_roc_n"] == 0 and math.isnan(s.at["U-Net", "auc_roc_mean"])
    assert (s["n_volumes"] == N_VOL).all()


def test_summarize_skips_missing_and_appends_unknown_methods():
    pv = synthetic_per_volume()
    pv = pv[pv["method"].isin(["AutoCas-SEU-Net", "U-Net"])].copy()
    extra = pv[pv["method"] == "U-Net"].assign(method="My-Net")
    s = T.summarize(pd.concat([extra, pv]))
    assert list(s.index) == ["U-Net", "AutoCas-SEU-Net", "My-Net"]


def test_summarize_nonfinite_left_out_and_counted():
    pv = synthetic_per_volume()
    mask = (pv["method"] == "U-Net") & (pv["volume_id"] == "vol03")
    pv.loc[mask, "hausdorff_mm"] = math.inf
    pv.loc[mask, "precision"] = math.nan
    s = T.summarize(pv)
    finite = pv[(pv["method"] == "U-Net") & ~mask]["hausdorff_mm"]
    assert s.at["U-Net", "hausdorff_mm_mean"] == pytest.approx(finite.mean())
    assert s.at["U-Net", "hausdorff_mm_nonfinite"] == 1 and s.at["U-Net", "hausdorff_mm_n"] == 7
    assert s.at["U-Net", "precision_nonfinite"] == 1
    table = T.format_table1(s)
    assert table.at["U-Net", "hausdorff_mm"].endswith("(1 of 8 not finite, left out)")
    assert table.at["U-Net", "precision"].endswith("(1 of 8 not finite, left out)")
    assert "failed" not in table.columns  # no pred_voxels column: failures are not known
    assert T.unexplained_cells(table) == []


def test_wilcoxon_known_outcomes():
    w = T.wilcoxon_pairs(synthetic_per_volume()).set_index(["cascade", "metric"])
    better = w.loc[("AutoCas-U-Net", "dice")]
    assert better["n"] == N_VOL and better["pvalue"] < 0.05 and better["significant"]
    assert better["better"] == "cascade" and better["mean_diff"] > 0
    hd = w.loc[("AutoCas-U-Net", "hausdorff_mm")]
    assert hd["pvalue"] < 0.05 and hd["better"] == "cascade" and hd["mean_diff"] < 0
    assert w.loc[("AutoCas-ResU-Net", "dice")]["pvalue"] > 0.05
    same = w.loc[("AutoCas-SEU-Net", "dice")]
    assert same["pvalue"] == 1.0 and same["statistic"] == 0.0 and same["better"] == "tie"
    roc = w.loc[("AutoCas-U-Net", "auc_roc")]  # all None -> no pairs
    assert roc["n"] == 0 and math.isnan(roc["pvalue"]) and not roc["significant"]


def test_wilcoxon_exact_p_for_six_volumes():
    pv = synthetic_per_volume()
    pv = pv[pv["volume_id"].isin([f"vol{v:02d}" for v in range(6)])]
    w = T.wilcoxon_pairs(pv, metrics=["dice"]).set_index("cascade")
    assert w.at["AutoCas-U-Net", "pvalue"] == pytest.approx(2 / 2**6)  # exact two-sided


def test_wilcoxon_drops_nonfinite_and_handles_tiny_n():
    pv = synthetic_per_volume()
    bad = (pv["method"] == "AutoCas-U-Net") & pv["volume_id"].isin(["vol00", "vol01"])
    pv.loc[bad, "hausdorff_mm"] = math.inf
    w = T.wilcoxon_pairs(pv, metrics=["hausdorff_mm"]).set_index("cascade")
    assert w.at["AutoCas-U-Net", "n"] == N_VOL - 2 and w.at["AutoCas-U-Net", "n_dropped"] == 2
    assert np.isfinite(w.at["AutoCas-U-Net", "pvalue"])
    one = pv[pv["volume_id"] == "vol05"]
    w1 = T.wilcoxon_pairs(one, metrics=["dice"])
    assert (w1["n"] == 1).all() and w1["pvalue"].isna().all()


def test_wilcoxon_matches_by_volume_id_and_rejects_duplicates():
    pv = synthetic_per_volume()
    # drop one baseline volume: only the 7 common volumes are paired
    pv2 = pv[~((pv["method"] == "U-Net") & (pv["volume_id"] == "vol07"))]
    w = T.wilcoxon_pairs(pv2, metrics=["dice"]).set_index("cascade")
    assert w.at["AutoCas-U-Net", "n"] == N_VOL - 1
    with pytest.raises(ValueError):
        T.wilcoxon_pairs(pd.concat([pv, pv.iloc[:1]]))
    with pytest.raises(ValueError):
        T.summarize(pv.drop(columns=["volume_id"]))


def test_format_table1_bold_and_stars():
    pv = synthetic_per_volume()
    table = T.format_table1(T.summarize(pv), T.wilcoxon_pairs(pv))
    assert list(table.columns) == list(T.PAPER_METRICS)
    assert list(table.index) == T.METHODS
    cas, base = table.at["AutoCas-U-Net", "dice"], table.at["U-Net", "dice"]
    assert cas.startswith("**") and cas.endswith("** *")
    assert not base.startswith("**") and not base.endswith("*")
    # lower is better for the Hausdorff distance
    assert table.at["AutoCas-U-Net", "hausdorff_mm"].startswith("**")
    assert not table.at["U-Net", "hausdorff_mm"].startswith("**")
    # identical pair: both bold, no star
    assert table.at["SEU-Net", "dice"].startswith("**")
    assert table.at["AutoCas-SEU-Net", "dice"] == table.at["SEU-Net", "dice"]
    # "auc" comes from auc_paper by default, from auc_roc on request (all None -> n/a)
    s = T.summarize(pv)
    m, sd = s.at["U-Net", "auc_paper_mean"], s.at["U-Net", "auc_paper_std"]
    assert table.at["U-Net", "auc"].strip("*") == f"{m:.3f} ± {sd:.3f}"
    assert (T.format_table1(s, which_auc="auc_roc")["auc"] == "n/a (8 of 8 not finite)").all()


def test_paper_table_loads():
    paper = T.load_paper_table1()
    assert len(paper) == 6 and list(paper.index) == T.METHODS
    for m in T.PAPER_METRICS:
        assert f"{m}_mean" in paper.columns and f"{m}_std" in paper.columns
    assert paper.at["AutoCas-U-Net", "dice_mean"] == pytest.approx(0.900)
    assert paper.at["SEU-Net", "hausdorff_mm_mean"] == pytest.approx(1.003)


def test_paper_auc_consistency():
    c = T.paper_auc_consistency()
    assert c["consistent"].to_dict() == {
        "U-Net": True, "AutoCas-U-Net": True, "ResU-Net": False,
        "AutoCas-ResU-Net": False, "SEU-Net": True, "AutoCas-SEU-Net": True,
    }
    assert c.at["ResU-Net", "auc_from_mask"] == pytest.approx(0.9235)


def test_format_paper_and_side_by_side():
    paper = T.format_paper_table1()
    assert paper.at["AutoCas-U-Net", "dice"] == "**0.900 ± 0.070** *"
    assert paper.at["AutoCas-U-Net", "recall"] == "0.863 ± 0.108"
    assert paper.at["U-Net", "recall"] == "**0.867 ± 0.102**"
    assert paper.at["U-Net", "auc"] == "**0.931 ± 0.052**"  # tie: both bold
    assert paper.at["AutoCas-U-Net", "hausdorff_mm"] == "**0.738 ± 0.289** *"
    ours = T.format_table1(T.summarize(synthetic_per_volume().query("method != 'SEU-Net'")))
    sbs = T.side_by_side(ours, ours_label="ours")
    assert len(sbs) == 11  # 5 of ours + 6 of the paper
    assert list(sbs.index[:2]) == [("U-Net", "ours"), ("U-Net", T.PAPER_LABEL)]
    assert ("SEU-Net", T.PAPER_LABEL) in sbs.index and ("SEU-Net", "ours") not in sbs.index
    assert T.side_by_side(ours, T.load_paper_table1(), ours_label="ours").equals(sbs)
    with pytest.raises(ValueError, match="data_dir"):
        T.side_by_side(ours)


def test_renderers():
    table = T.side_by_side(T.format_paper_table1(), ours_label="ours")
    html = T.to_html(table)
    assert "<b>0.900 ± 0.070</b> *" in html and "**" not in html and "HD (mm)" in html
    odd = pd.DataFrame({"dice": ["<x> **1**"]}, index=pd.Index(["a|b"], name="method"))
    assert "&lt;x&gt; <b>1</b>" in T.to_html(odd)
    md = T.to_markdown(table).splitlines()
    assert len(md) == 2 + len(table)
    assert md[0].startswith("| method | source | Dice |")
    assert "a\\|b" in T.to_markdown(odd)


# ----------------------------------------------------------------------------- issue 15
def test_source_label_follows_the_data(tmp_path):
    """Our rows are "ours (synthetic)" only on the generated phantoms (their manifest says
    so); real scans, with or without a manifest, give "ours (real)"."""
    import json

    phantoms, real, other = tmp_path / "phantoms", tmp_path / "hear-eu", tmp_path / "own"
    for folder in (phantoms, real, other):
        folder.mkdir()
    (phantoms / "manifest.json").write_text(json.dumps({"synthetic": True}))
    (other / "manifest.json").write_text(json.dumps({"synthetic": False}))
    assert T.source_label(phantoms) == "ours (synthetic)"
    assert T.source_label(real) == "ours (real)" and T.source_label(other) == "ours (real)"
    ours = T.format_table1(T.summarize(synthetic_per_volume()))
    assert {s for _, s in T.side_by_side(ours, data_dir=real).index} == {"ours (real)", T.PAPER_LABEL}
    assert ("U-Net", "ours (synthetic)") in T.side_by_side(ours, data_dir=phantoms).index


def test_variant_rows_pair_with_their_own_baseline_and_the_papers_row():
    pv = synthetic_per_volume()
    pv["method"] = pv["method"].replace({"SEU-Net": "SEU-Net (standard SE)",
                                         "AutoCas-SEU-Net": "AutoCas-SEU-Net (standard SE)"})
    assert T.paper_method("AutoCas-SEU-Net (standard SE)") == "AutoCas-SEU-Net"
    assert T.method_pairs(pv["method"])[-1] == ("AutoCas-SEU-Net (standard SE)", "SEU-Net (standard SE)")
    s = T.summarize(pv)
    assert list(s.index)[-2:] == ["SEU-Net (standard SE)", "AutoCas-SEU-Net (standard SE)"]
    w = T.wilcoxon_pairs(pv, metrics=["dice"])
    assert "AutoCas-SEU-Net (standard SE)" in set(w["cascade"])
    table = T.format_table1(s, w)
    assert table.at["SEU-Net (standard SE)", "dice"].startswith("**")  # identical pair: both bold
    sbs = T.side_by_side(table, ours_label="ours")
    keys = list(sbs.index)
    i = keys.index(("SEU-Net (standard SE)", "ours"))
    assert keys[i + 1] == ("SEU-Net", T.PAPER_LABEL)  # ours next to the paper's row it reproduces
    assert keys[i + 2] == ("AutoCas-SEU-Net (standard SE)", "ours")
    assert keys[i + 3] == ("AutoCas-SEU-Net", T.PAPER_LABEL)
    from innerear.evaluation.compare import cascade_comparison

    comparison = cascade_comparison(pv, n_boot=200)
    assert ("AutoCas-SEU-Net (standard SE)", "SEU-Net (standard SE)") in set(
        zip(comparison["cascade"], comparison["baseline"]))


def _evaluated_per_volume() -> pd.DataFrame:
    """Per-volume rows computed by innerear.metrics on small masks: U-Net fails (empty
    prediction) on one of four volumes, AutoCas-U-Net on none, SEU-Net on all four."""
    from innerear.metrics import evaluate

    rng = np.random.default_rng(5)
    rows = []
    for v in range(4):
        truth = np.zeros((12, 12, 12), np.uint8)
        truth[3:9, 3:9, 2 + v % 2:10] = 1
        prob = np.clip(truth * 0.8 + rng.uniform(0, 0.3, truth.shape), 0, 1).astype(np.float32)
        good = (prob >= 0.5).astype(np.uint8)
        empty = np.zeros_like(truth)
        for method, mask in (("U-Net", empty if v == 0 else good), ("AutoCas-U-Net", good),
                             ("SEU-Net", empty), ("AutoCas-SEU-Net", good)):
            row = {"method": method, "volume_id": f"v{v}", "pred_voxels": int(mask.sum())}
            row.update(evaluate(mask, truth, (0.1, 0.1, 0.1), probabilities=prob * (mask > 0)))
            rows.append(row)
    return pd.DataFrame(rows)


def test_failed_volumes_are_counted_beside_the_means():
    pv = _evaluated_per_volume()
    s = T.summarize(pv, list(T.PAPER_METRICS[:-2]) + ["hausdorff_mm"])
    assert s.at["U-Net", "n_failed"] == 1 and s.at["AutoCas-U-Net", "n_failed"] == 0
    assert s.at["SEU-Net", "n_failed"] == 4
    table = T.format_table1(s)
    assert list(table["failed"]) == ["1 of 4", "0 of 4", "4 of 4", "0 of 4"]
    assert table.at["U-Net", "precision"].endswith("(1 failed, left out)")
    assert table.at["U-Net", "hausdorff_mm"].endswith("(1 failed, left out)")
    assert "failed" not in table.at["U-Net", "dice"]  # Dice 0 counts in the mean
    assert table.at["SEU-Net", "precision"] == "n/a (all 4 failed)"
    assert table.at["U-Net", "auc"] == "n/a (not computed)"  # no auc_paper column asked for
    assert T.unexplained_cells(table) == []


@pytest.mark.parametrize("metrics", [T.PAPER_METRICS, T.EXTRA_METRICS], ids=["paper", "extra"])
def test_our_tables_have_no_unexplained_cells(metrics):
    """The evaluation chapter's two tables, formatted as notebook 04 does, from per-volume
    results of innerear.metrics: every n/a or non-finite cell states its reason, and the
    table beyond the paper shows numbers, not n/a, for the methods that predicted something."""
    pv = _evaluated_per_volume().rename(columns={"auc_paper": "auc"})
    s = T.summarize(pv, list(metrics))
    table = T.format_table1(s, T.wilcoxon_pairs(pv, metrics=list(metrics)), which_auc="auc", metrics=metrics)
    assert list(table.columns) == list(metrics) + ["failed"]
    T.check_explained(table)
    for method in ("U-Net", "AutoCas-U-Net", "AutoCas-SEU-Net"):
        for metric in metrics:
            assert not table.at[method, metric].startswith("n/a"), (method, metric)
    # the check catches what the old formatter printed: bare n/a, nan or inf
    for bad in ("n/a", "nan ± nan", "inf", "0.5 ± nan"):
        broken = table.copy()
        broken.iloc[0, 0] = bad
        with pytest.raises(ValueError, match="without a stated reason"):
            T.check_explained(broken)
