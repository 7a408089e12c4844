"""Does a faster demo recipe keep the results? Two finished reproductions, paired by specimen (issue 25).

Issue 25 asks that a faster training path keep the results: the same phantoms and seeds must
give per-method mean Dice within ±0.01 of the slower path. This script compares two project
trees on which ``make reproduce`` (demo) has finished, one per recipe (``--before`` and
``--after``). For each, it reads:

* the evaluation chapter's per-volume table (``runs/demo/evaluation/per_volume.csv``, each
  method's held-out Dice per specimen);
* every stage's ``done.json`` (the stopping rule, epochs, and what stopped each stage);
* the run's own step times (``runs/demo/timings.json``).

It checks that both trees prepared the same specimens, voxel for voxel (a hash of the cached
prepared arrays), and trained with the same seed. It then pairs each method's Dice per specimen:

* the mean difference against the ±0.01 tolerance;
* the largest single-specimen change;
* the Wilcoxon signed-rank test's p.

The two trainings are separate runs on this machine, one tree each. The record names both
commits and both dates.

    .venv/bin/python benchmarks/bench_recipe.py --before OLD_TREE --after NEW_TREE

writes ``benchmarks/results/bench_recipe.json``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOLERANCE = 0.01  # issue 25: per-method mean Dice within ±0.01 of the slower path


def specimens_hash(tree: Path, profile: str, grid: int) -> str:
    """One hash of every prepared specimen's image and label arrays (``data/cache/<profile>-<grid>``)."""
    import numpy as np

    digest = hashlib.sha256()
    files = sorted((tree / "data" / "cache" / f"{profile}-{grid}").glob("*.npz"))
    if not files:
        raise SystemExit(f"{tree}: no prepared specimens in data/cache/{profile}-{grid}; run make reproduce there")
    for path in files:
        with np.load(path) as z:
            digest.update(path.name.encode())
            for key in ("image", "label"):
                digest.update(np.ascontiguousarray(z[key]).tobytes())
    return digest.hexdigest()[:16]


def read_tree(tree: Path, profile: str) -> dict:
    """What one finished reproduction recorded: Dice per method and specimen, its stopping rule,
    epochs, stages' stopping reasons, training time, seed, commit and date."""
    runs = tree / "runs" / profile
    table = runs / "evaluation" / "per_volume.csv"
    timings = runs / "timings.json"
    for needed in (table, timings):
        if not needed.exists():
            raise SystemExit(f"{needed}: missing; make reproduce has not finished in {tree}")
    dice: dict[str, dict[str, float]] = {}
    with table.open() as fh:
        for row in csv.DictReader(fh):
            dice.setdefault(row["method"], {})[row["volume_id"]] = float(row["dice"])
    done = [json.loads(p.read_text()) for p in sorted(runs.rglob("done.json"))]
    rules = {(d["min_delta"], d["patience"]) for d in done}
    if len(rules) != 1:
        raise SystemExit(f"{runs}: stages trained with different stopping rules {sorted(rules)}")
    (min_delta, patience), = rules
    record = json.loads(timings.read_text())
    steps = {s["step"]: float(s["seconds"]) for s in record["steps"]}
    git = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    stopped: dict[str, int] = {}
    for d in done:
        stopped[d["stopped_by"]] = stopped.get(d["stopped_by"], 0) + 1
    return {"tree": str(tree), "git": git or None, "date": record["context"]["date"], "seed": record["seed"],
            "cpu": record["context"]["machine"]["cpu"], "min_delta": min_delta, "patience": patience,
            "stages": len(done), "epochs": sum(d["epochs"] for d in done),
            "epochs_median": statistics.median(d["epochs"] for d in done), "stopped_by": stopped,
            "training_s": steps.get("training (all stages)"), "total_s": float(record["total_s"]), "dice": dice}


def paired(before: dict[str, float], after: dict[str, float]) -> dict:
    """One method's Dice paired by specimen: means, mean difference, largest change, Wilcoxon p."""
    from scipy.stats import wilcoxon

    ids = sorted(set(before) & set(after))
    if len(ids) != len(before) or len(ids) != len(after):
        raise SystemExit(f"the two trees scored different specimens: {sorted(set(before) ^ set(after))}")
    diffs = [after[i] - before[i] for i in ids]
    p = float(wilcoxon(diffs).pvalue) if any(diffs) else 1.0
    mean_before, mean_after = statistics.fmean(before[i] for i in ids), statistics.fmean(after[i] for i in ids)
    return {"n": len(ids), "mean_before": round(mean_before, 4), "mean_after": round(mean_after, 4),
            "difference": round(mean_after - mean_before, 4), "largest_change": round(max(diffs, key=abs), 4),
            "wilcoxon_p": round(p, 4), "within_tolerance": abs(mean_after - mean_before) <= TOLERANCE}


def compare(before: dict, after: dict) -> dict:
    """The record: both runs' settings and costs, and every method's paired Dice."""
    if set(before["dice"]) != set(after["dice"]):
        raise SystemExit(f"the two trees evaluated different methods: {sorted(set(before['dice']) ^ set(after['dice']))}")
    methods = [{"method": m, **paired(before["dice"][m], after["dice"][m])} for m in sorted(before["dice"])]
    runs = {name: {k: v for k, v in tree.items() if k != "dice"} for name, tree in (("before", before), ("after", after))}
    return {"tolerance": TOLERANCE, "runs": runs, "methods": methods,
            "passed": all(m["within_tolerance"] for m in methods),
            "worst_difference": min((m["difference"] for m in methods), key=lambda d: -abs(d)),
            "epoch_ratio": round(after["epochs"] / before["epochs"], 3),
            "training_ratio": (round(after["training_s"] / before["training_s"], 3)
                               if after["training_s"] and before["training_s"] else None)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="a tree on which make reproduce finished with the slower recipe")
    ap.add_argument("--after", required=True, help="a tree on which make reproduce finished with the faster recipe")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--json", default=None, help="record (default: benchmarks/results/bench_recipe.json)")
    args = ap.parse_args(argv)
    from innerear.reporting.performance import results_path, write_record
    from innerear.settings.profiles import get_profile

    grid = get_profile(args.profile).grid
    trees = [Path(t).resolve() for t in (args.before, args.after)]
    hashes = [specimens_hash(t, args.profile, grid) for t in trees]
    if hashes[0] != hashes[1]:
        raise SystemExit(f"{trees[0]} and {trees[1]} prepared different specimens (hash {hashes[0]} vs {hashes[1]})")
    before, after = (read_tree(t, args.profile) for t in trees)
    if before["seed"] != after["seed"]:
        raise SystemExit(f"the two runs used different seeds ({before['seed']} vs {after['seed']})")
    out = compare(before, after)
    out["specimens_hash"] = hashes[0]
    out["what"] = ("two make reproduce runs (profile demo) on the same prepared specimens and seed, one per stopping "
                   "rule; each method's held-out Dice paired by specimen")
    for m in out["methods"]:
        print(f"{m['method']:32s} {m['mean_before']:.4f} -> {m['mean_after']:.4f} ({m['difference']:+.4f}, "
              f"largest {m['largest_change']:+.4f}, Wilcoxon p {m['wilcoxon_p']:.3f})")
    print(f"epochs {before['epochs']} -> {after['epochs']} ({out['epoch_ratio']:.2f}); within ±{TOLERANCE}: {out['passed']}")
    print(f"wrote {write_record(args.json or results_path(ROOT, 'bench_recipe'), 'bench_recipe', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
