"""How long ``make reproduce`` takes from a clean tree on this machine, and where the time goes.

Issue 25's goal: the README's ``make reproduce`` (the demo profile) in 30 minutes wall on a 2-core
machine, from a clean tree with the virtual environment present, every stage still stopped by
patience. The script clones this repository's committed HEAD into ``--workdir`` (a fresh clone: no
phantoms, cache, runs or built book), runs ``make setup`` there (not timed: the goal counts from a tree
whose venv exists), then times ``make reproduce`` and reads what the run recorded itself:
``runs/<profile>/timings.json`` (seconds per step and per page, the run's own total) and every
stage's ``done.json`` (epochs, seconds, and whether patience or the epoch cap ended it).

``--tree DIR`` only reads a tree on which ``make reproduce`` has already run from a clean clone (the
same procedure by hand, e.g. in the background while other work waits); the record then has the
run's own total but no wall time of ``make`` around it.

    .venv/bin/python benchmarks/bench_reproduce.py [--profile demo] [--workdir DIR | --tree DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL_S = 30 * 60.0  # issue 25: make reproduce in 30 minutes wall on a 2-core machine
FROM_SCRATCH = ("phantoms", "prepare", "training (all stages)")  # steps a clean tree cannot skip


def clean_clone(dest: Path) -> Path:
    """A fresh clone of this repository's committed HEAD at ``dest``, its venv set up (untimed)."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    subprocess.run(["make", "setup"], cwd=dest, check=True, stdout=subprocess.DEVNULL)
    return dest


def timed_reproduce(tree: Path, profile: str, log: Path) -> float:
    """Wall seconds of ``make reproduce PROFILE=profile`` in ``tree``; its output goes to ``log``."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(["make", "reproduce", f"PROFILE={profile}"], cwd=tree, check=True, stdout=out,
                       stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def stage_rows(tree: Path, profile: str) -> list[dict]:
    """Every trained stage of the run: folder, epochs, seconds, what stopped it (its ``done.json``)."""
    runs = tree / "runs" / profile
    rows = []
    for done in sorted(runs.rglob("done.json")):
        info = json.loads(done.read_text())
        rows.append({"stage": str(done.parent.relative_to(runs)), "epochs": int(info["epochs"]),
                     "best_epoch": int(info["best_epoch"]), "seconds": round(float(info["seconds"]), 1),
                     "stopped_by": info.get("stopped_by", "unknown")})
    return rows


def summary(tree: Path, profile: str, make_wall_s: float | None) -> dict:
    """The record's figures from a finished run in ``tree``."""
    timings_file = tree / "runs" / profile / "timings.json"
    if not timings_file.exists():
        raise SystemExit(f"{timings_file}: no timings record; has `make reproduce PROFILE={profile}` run there?")
    timings = json.loads(timings_file.read_text())
    if not timings.get("complete"):
        raise SystemExit(f"{timings_file}: the run did not finish (complete is false)")
    stages = stage_rows(tree, profile)
    if not stages:
        raise SystemExit(f"{tree / 'runs' / profile}: no trained stage (done.json) found")
    stopped: dict[str, int] = {}
    for row in stages:
        stopped[row["stopped_by"]] = stopped.get(row["stopped_by"], 0) + 1
    steps = [{"step": s["step"], "seconds": round(float(s["seconds"]), 1)} for s in timings["steps"]]  # in order
    # a resumed run skips what is complete: a run from a clean tree spends time on every step
    skipped = [s["step"] for s in steps if s["step"] in FROM_SCRATCH and s["seconds"] < 0.5]
    total = float(timings["total_s"])
    git = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "profile": profile, "git": git.stdout.strip() or None, "goal_s": GOAL_S,
        "total_s": round(total, 1), "make_wall_s": None if make_wall_s is None else round(make_wall_s, 1),
        "from_clean": not skipped, "skipped_steps": skipped,
        "goal_met": not skipped and total <= GOAL_S and stopped.get("patience", 0) == len(stages),
        "steps": steps, "pages_s": {k: round(float(v), 1) for k, v in timings["pages"].items()},
        "workers": timings.get("workers"), "run_context": timings.get("context"),
        "stages": {"n": len(stages), "stopped_by": stopped, "epochs_total": sum(r["epochs"] for r in stages),
                   "epochs_median": statistics.median(r["epochs"] for r in stages),
                   "training_seconds_total": round(sum(r["seconds"] for r in stages), 1),
                   "rows": stages},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--workdir", default=None, help="where the clean clone goes (default: a temporary folder)")
    group.add_argument("--tree", default=None, help="a clean clone on which make reproduce has already run")
    ap.add_argument("--json", default=None, help="record (default: benchmarks/results/bench_reproduce.json)")
    args = ap.parse_args(argv)
    if args.tree:
        tree, wall = Path(args.tree).resolve(), None
        out = summary(tree, args.profile, wall)
        out["how"] = ("make reproduce run by hand on a clean clone (its venv set up beforehand); the record read "
                      "from that tree, so no wall time of make around the run")
    else:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            tree = clean_clone(Path(tmp) / "tree")
            print(f"clean clone in {tree}; make reproduce PROFILE={args.profile} ...", flush=True)
            wall = timed_reproduce(tree, args.profile, Path(tmp) / "reproduce.log")
            out = summary(tree, args.profile, wall)
        out["how"] = "a fresh git clone of HEAD, make setup (untimed), then make reproduce timed by this script"
    out["what"] = (f"make reproduce (profile {args.profile}) from a clean clone on this machine: the run's own total "
                   "and steps (runs/<profile>/timings.json) and every stage's epochs and what stopped it")
    s = out["stages"]
    print(f"total {out['total_s'] / 60:.1f} min; {s['n']} stages, stopped by {s['stopped_by']}; "
          f"steps {out['steps']}; from a clean tree: {out['from_clean']}; goal {GOAL_S / 60:.0f} min: {'met' if out['goal_met'] else 'not met'}")
    from innerear.reporting.performance import results_path, write_record

    print(f"wrote {write_record(args.json or results_path(ROOT, 'bench_reproduce'), 'bench_reproduce', out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
