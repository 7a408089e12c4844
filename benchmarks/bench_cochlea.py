"""Accuracy and speed of :func:`innerear.metrics.cochlea.measure_cochlea` on phantoms.

For ``--n`` phantoms (seed ``--seed``) at each ``--binnings`` (voxels 16.3 / 19.5 um x
binning), the cochlea label (``structures == 1``) is measured and compared with the
generator's own spiral (``meta["cochlea_truth"]``): duct length along the lateral wall and
centreline length (relative error, %), number of turns (difference), and the seconds one
measurement takes. Prints a table and writes ``benchmarks/results/bench_cochlea.json``.

Usage::

    .venv/bin/python benchmarks/bench_cochlea.py [--n 8] [--binnings 5,15] [--seed 11]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from innerear.data import phantom as ph  # noqa: E402
from innerear.metrics.cochlea import METHOD, measure_cochlea  # noqa: E402
from innerear.settings.profiles import PhantomSettings  # noqa: E402
from innerear.settings.structures import COCHLEA


def measure_one(index: int, seed: int, binning: int) -> dict:
    """One phantom at one binning: truth, measures, errors and seconds."""
    sp = ph.generate_specimen(index, seed, PhantomSettings(n_specimens=index + 1, binning=binning))
    truth = sp.meta["cochlea_truth"]
    t0 = time.perf_counter()
    base = {"index": index, "binning": binning, "voxel_mm": sp.meta["voxel_mm"], "side": sp.meta["side"],
            "truth": truth}
    try:
        m = measure_cochlea(sp.structures == COCHLEA, sp.affine)
    except ValueError as err:  # a cochlea whose turns merged into one blob is refused: say so
        return {**base, "refused": str(err), "tunnels": None, "duct_length_mm": None, "turns": None,
                "centreline_length_mm": None, "seconds": time.perf_counter() - t0,
                "duct_length_error_pct": None, "centreline_error_pct": None, "turns_error": None}
    seconds = time.perf_counter() - t0
    return {**base, "refused": None, "tunnels": m.tunnels, "duct_length_mm": m.duct_length_mm, "turns": m.turns,
            "centreline_length_mm": m.centreline_length_mm, "seconds": seconds,
            "duct_length_error_pct": 100 * (m.duct_length_mm / truth["lateral_wall_length_mm"] - 1),
            "centreline_error_pct": 100 * (m.centreline_length_mm / truth["centreline_length_mm"] - 1),
            "turns_error": m.turns - truth["turns"]}


def summary(rows: list[dict]) -> dict:
    """Per binning: how many cochleae were measured cleanly, flagged (turns touching:
    ``tunnels`` > 0) or refused (not a spiral), and the worst and mean errors and median
    seconds of the clean ones (a flagged length is known to be doubtful and says so)."""
    out = {}
    for b in sorted({r["binning"] for r in rows}):
        sel = [r for r in rows if r["binning"] == b]
        clean = [r for r in sel if r["refused"] is None and r["tunnels"] == 0]
        vox = [r["voxel_mm"] for r in sel]
        out[str(b)] = {"voxel_mm": [min(vox), max(vox)], "n": len(sel), "clean": len(clean),
                       "flagged": sum(1 for r in sel if r["refused"] is None and r["tunnels"] > 0),
                       "refused": sum(1 for r in sel if r["refused"] is not None)}
        for k in ("duct_length_error_pct", "centreline_error_pct", "turns_error"):
            v = np.array([r[k] for r in clean], float)
            out[str(b)][k] = ({"max_abs": float(np.abs(v).max()), "mean": float(v.mean())} if len(v)
                              else {"max_abs": None, "mean": None})
        out[str(b)]["median_seconds"] = float(np.median([r["seconds"] for r in sel]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--binnings", default="5,15")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_cochlea.json")
    args = ap.parse_args(argv)
    rows = []
    print("| binning | voxel (mm) | specimen | side | CDL_LW truth (mm) | measured | error % | turns truth | measured "
          "| error | centreline error % | tunnels | seconds |")
    print("| --- " * 13 + "|")
    for b in (int(x) for x in args.binnings.split(",")):
        for i in range(args.n):
            r = measure_one(i, args.seed, b)
            rows.append(r)
            t = r["truth"]
            if r["refused"] is not None:
                print(f"| {b} | {r['voxel_mm']:.3f} | {i} | {r['side']} | {t['lateral_wall_length_mm']:.2f} | "
                      f"refused: {r['refused']} |", flush=True)
                continue
            print(f"| {b} | {r['voxel_mm']:.3f} | {i} | {r['side']} | {t['lateral_wall_length_mm']:.2f} | "
                  f"{r['duct_length_mm']:.2f} | {r['duct_length_error_pct']:+.1f} | {t['turns']:.3f} | {r['turns']:.3f} | "
                  f"{r['turns_error']:+.3f} | {r['centreline_error_pct']:+.1f} | {r['tunnels']} | {r['seconds']:.2f} |",
                  flush=True)
    from innerear.reporting.performance import write_record

    record = {"method": METHOD, "seed": args.seed, "summary": summary(rows), "rows": rows}
    write_record(args.json, "bench_cochlea", record)  # with the machine and versions (run_context)
    print(json.dumps(record["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
