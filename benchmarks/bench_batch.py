"""Seconds per scan of a batch (``innerear segment DIR -o OUTDIR``, the model loaded once) against
separate ``innerear segment SCAN -o MASK`` processes, one per scan.

Writes ``--n`` phantoms of the ``--profile`` (default smoke: 41 × 48 × 39 voxels; demo: about
122 × 143 × 116) as NIfTI into a temporary folder, then, each in a fresh process with the
shipped model:

* the batch: ``python -m innerear segment DIR -o OUT --quiet``; its wall time divided by the
  number of scans (process start and model loading included, once), and the median of the
  per-scan seconds its ``summary.csv`` records (segmentation and writing only);
* separately: ``python -m innerear segment SCAN -o MASK --quiet`` for every scan; the median of
  their wall times (each pays the interpreter, TensorFlow and the model load).

The record (medians, the ratio separate / batch, the machine) goes to ``--json`` (default
``benchmarks/results/bench_batch.json``) through :func:`innerear.reporting.performance.write_record`.

    .venv/bin/python benchmarks/bench_batch.py [--n 10] [--profile smoke|demo]
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def write_phantoms(folder: Path, n: int, profile: str, seed: int) -> list[Path]:
    """``n`` phantoms of ``profile`` as ``scanNN.nii.gz`` (images only: every file is a scan)."""
    from innerear.data.phantom import generate_specimen
    from innerear.io import write_volume
    from innerear.settings.profiles import get_profile

    paths = []
    for i in range(n):
        spec = generate_specimen(i, seed, get_profile(profile).phantoms)
        paths.append(write_volume(folder / f"scan{i:02d}.nii.gz", spec.image, spec.affine))
    return paths


def run(args: list[str]) -> float:
    """Wall seconds of ``python -m innerear ARGS`` in a fresh process (must succeed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "innerear", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"innerear {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="scans (default 10)")
    parser.add_argument("--profile", default="smoke", choices=("smoke", "demo"), help="phantom size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="record path (default benchmarks/results/bench_batch.json)")
    args = parser.parse_args(argv)
    import nibabel as nib

    from innerear.reporting.performance import results_path, write_record

    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        work = Path(tmp)
        (work / "scans").mkdir()
        scans = write_phantoms(work / "scans", args.n, args.profile, args.seed)
        shape = [int(v) for v in nib.load(scans[0]).shape]
        print(f"{len(scans)} {args.profile} phantoms of {shape} voxels written", flush=True)
        batch_s = run(["segment", str(work / "scans"), "-o", str(work / "batch"), "--quiet"])
        with open(work / "batch" / "summary.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        in_batch = [float(r["seconds"]) for r in rows if r["status"] == "ok"]
        print(f"batch: {batch_s:.1f} s for {len(scans)} scans", flush=True)
        (work / "separate").mkdir()
        separate = []
        for scan in scans:
            separate.append(run(["segment", str(scan), "-o", str(work / "separate" / scan.name), "--quiet"]))
            print(f"separate: {scan.name} {separate[-1]:.1f} s", flush=True)
    per_scan_batch = batch_s / len(scans)
    record = {
        "settings": {"n": len(scans), "profile": args.profile, "seed": args.seed, "model": "shipped (robust_cascade)",
                     "shape": shape, "threads": os.environ.get("INNEREAR_THREADS")},
        "rows": [{"route": "batch (one process, model loaded once)", "per_scan_s": per_scan_batch,
                  "median_scan_s": statistics.median(in_batch) if in_batch else None, "total_s": batch_s},
                 {"route": "separate processes", "per_scan_s": statistics.median(separate),
                  "median_scan_s": statistics.median(separate), "total_s": sum(separate)}],
        "median_separate_s": statistics.median(separate),
        "median_batch_scan_s": statistics.median(in_batch) if in_batch else None,
        "batch_wall_per_scan_s": per_scan_batch,
        "ratio_separate_to_batch": statistics.median(separate) / per_scan_batch,
        "note": "batch per-scan seconds = the batch process's wall time / n (start-up and model load once); "
                "median_batch_scan_s: summary.csv's per-scan seconds; separate: median wall time of one process per scan",
    }
    path = write_record(args.json or results_path(ROOT, "bench_batch"), "bench_batch", record)
    print(f"separate {record['median_separate_s']:.2f} s/scan, batch {per_scan_batch:.2f} s/scan "
          f"(x{record['ratio_separate_to_batch']:.1f}); {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
