"""Stage 1's probe (issue 25): does predicting only around what a sparse probe found change the answers?

``innerear segment``'s engine, in fast mode, lets a physical model's first stage predict every 4th
slice first and then only the rectangles around the probe's major components
(:func:`innerear.inference.engine.probe_region`), instead of every slice at full size; on the 30 mm
reference block that halves the cascade's time. The region is a heuristic, so this benchmark
measures what it costs in accuracy where the segmenter is hardest pressed: every cell of the
domain-shift matrix (``bench_domain_shift.py``'s scans: CBCT crops in HU, micro-CT from 16 to
40 µm, strong artefacts) and the turned scans of ``bench_turns.py`` (demo phantoms turned a quarter
about two axes and 45 degrees about an oblique one). Each scan is segmented twice in one process,
side by side, by the shipped model with the probe (``probe_step`` 4, the default) and without
(every first-stage slice at full size), and both masks are scored against the phantom's clean
label on the scan's grid; the record holds per-scan and per-cell Dice of both, their paired
difference, the Dice between the two masks and the cascade's seconds.

    .venv/bin/python benchmarks/bench_probe.py [--n 2] [--turns 4] [--work DIR]

writes ``benchmarks/results/bench_probe.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

OUT = ROOT / "benchmarks" / "results" / "bench_probe.json"
#: the probe must not cost more than this in any cell's mean Dice (issue 25's tolerance for speed-ups)
TOLERANCE = 0.01


def _segment(cascade, path: Path, probe_step: int) -> tuple[np.ndarray, np.ndarray | None, dict, float]:
    from innerear.inference import segment as sg

    saved = cascade.settings
    cascade.settings = dataclasses.replace(saved, probe_step=probe_step)
    try:
        labels_out: dict = {}
        mask, _, report = sg.segment_scan(path, cascade=cascade, labels_out=labels_out)
    finally:
        cascade.settings = saved
    return mask, labels_out.get("labels"), report, float(report["timings_s"]["cascade"])


def compare(cascade, scans: list[tuple[str, Path, Path]], read_truth, score) -> list[dict]:
    """Each scan with and without the probe: Dice against the truth, between the masks, seconds."""
    from innerear.inference.engine import PROBE_STEP
    from innerear.metrics import dice

    rows = []
    for group, path, record in scans:
        truth = read_truth(record)
        row: dict = {"group": group, "scan": path.name}
        masks = {}
        for name, step in (("probe", PROBE_STEP), ("full", 0)):
            mask, labels, report, seconds = _segment(cascade, path, step)
            s = score(mask, labels, truth, report["input"]["spacing_mm"], report)
            row[name] = {"dice": s["dice"], "cascade_s": round(seconds, 2),
                         **{k: s[k] for k in s if k.startswith("label_dice_")}}
            masks[name] = mask
        row["dice_between"] = dice(masks["probe"], masks["full"])
        row["difference"] = row["probe"]["dice"] - row["full"]["dice"]
        print(f"  {group:<55} {path.name:<28} probe {row['probe']['dice']:.3f} ({row['probe']['cascade_s']:.1f} s)"
              f"  full {row['full']['dice']:.3f} ({row['full']['cascade_s']:.1f} s)  between {row['dice_between']:.3f}",
              flush=True)
        rows.append(row)
    return rows


def turned_scans(n: int, folder: Path) -> list[tuple[str, Path, Path]]:
    """Demo phantoms 0..n-1 as acquired and turned (``bench_turns.scans``), written as NIfTI scans with
    their truth in ``bench_domain_shift.make_scan``'s record format (reused when present)."""
    import bench_turns as bt
    from innerear.io import write_json, write_volume

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index in range(n):
        names = [f"turn{index:02d}_{k}" for k in range(len(bt.TURNS))]
        if not all((folder / f"{name}.json").exists() for name in names):
            for name, (turn, image, affine, label, structures) in zip(names, bt.scans(index)):
                files = {}
                for kind, array in (("image", image), ("label", label), ("structures", structures)):
                    files[kind] = f"{name}_{kind}.nii.gz"
                    write_volume(folder / files[kind], np.asarray(array), affine)
                write_json(folder / f"{name}.json", {**files, "shape": list(np.shape(image)), "meta": {},
                                                       "turn": turn})
        out += [(f"turned demo phantoms: {turn}", folder / f"{name}_image.nii.gz", folder / f"{name}.json")
                for name, turn in zip(names, bt.TURNS)]
    return out


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        sel = [r for r in rows if r["group"] == group]
        out.append({"group": group, "n": len(sel),
                    "probe_dice": float(np.mean([r["probe"]["dice"] for r in sel])),
                    "full_dice": float(np.mean([r["full"]["dice"] for r in sel])),
                    "difference": float(np.mean([r["difference"] for r in sel])),
                    "worst_difference": float(min(r["difference"] for r in sel)),
                    "dice_between": float(np.mean([r["dice_between"] for r in sel])),
                    "probe_cascade_s": float(np.median([r["probe"]["cascade_s"] for r in sel])),
                    "full_cascade_s": float(np.median([r["full"]["cascade_s"] for r in sel]))})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2, help="phantoms per domain-shift cell")
    ap.add_argument("--seed", type=int, default=7001, help="domain-shift phantom seed (bench_domain_shift's)")
    ap.add_argument("--turns", type=int, default=4, help="demo phantoms for the turned scans (0: none)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "probe")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import bench_domain_shift as ds
    from innerear.inference import segment as sg
    from innerear.reporting.performance import write_record

    t0 = time.perf_counter()
    scans = []
    for k, cell in enumerate(ds.CELLS):
        folder = args.work / f"cell{k}"
        folder.mkdir(parents=True, exist_ok=True)
        scans += [(cell.name, *ds.make_scan(cell, i, args.seed, folder)) for i in range(args.n)]
    if args.turns:
        scans += turned_scans(args.turns, args.work / "turns")
    cascade = sg.load_model_dir(None, reuse=False)
    rows = compare(cascade, scans, ds.read_truth, ds.score)
    groups = summary(rows)
    worst = min(g["difference"] for g in groups)
    out = {"what": "the shipped model with and without stage 1's probe (fast mode's region for the first stage), "
                   "side by side on the domain-shift cells and turned demo phantoms; Dice against the clean label",
           "tolerance": TOLERANCE, "worst_group_difference": worst, "passed": worst >= -TOLERANCE,
           "runtime": cascade.info.get("runtime"), "groups": groups, "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    for g in groups:
        print(f"{g['group']:<55} n={g['n']}  probe {g['probe_dice']:.3f}  full {g['full_dice']:.3f}  "
              f"diff {g['difference']:+.3f} (worst {g['worst_difference']:+.3f})  cascade "
              f"{g['probe_cascade_s']:.1f} vs {g['full_cascade_s']:.1f} s")
    print(f"worst cell difference {worst:+.4f} (tolerance {TOLERANCE}); wrote "
          f"{write_record(args.out, 'bench_probe', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
