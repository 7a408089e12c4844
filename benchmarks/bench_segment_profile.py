"""Where an ``innerear segment`` run's time goes, on the issue's reference scan.

The scan: a 30 mm block of a calibrated demo phantom at the shipped model's voxel size (0.15 mm,
200³ voxels, uint16 micro-CT with correlated noise, rings and cupping), the block the model card's
speed check uses. Measured, each in a fresh process unless said otherwise:

* ``segment``: ``python -m innerear segment SCAN -o MASK --report R`` ``--runs`` times (default 5):
  wall time including start-up (median), and the report's own steps (read, load model, prepare,
  cascade, map back, largest component, measure) as medians;
* ``start-up``: the interpreter importing ``innerear.cli`` (what every command pays before it
  reads an argument) and importing Keras with its backend (TensorFlow), median of three;
* ``cascade``: in one process with the networks loaded and warmed up, the engine on the prepared
  volume per stage (seconds, share of the slice area computed), with test-time mirroring (the
  shipped setting) and without, and at batch sizes 8 (default) and 32.

The record (``benchmarks/results/bench_segment_profile.json``) holds the goal of issue 25
(5 s wall) beside the median, and is rendered on the book's Performance page.

    .venv/bin/python benchmarks/bench_segment_profile.py [--runs 5] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_S = 5.0  # issue 25: innerear segment of the 30 mm block in 5 s wall, start-up included
BLOCK_MM = 30.0


def block_scan(folder: Path, voxel_mm: float) -> Path:
    """The reference block (``tools/ship_robust.py``'s speed-check scan) as a compressed NIfTI."""
    from innerear.data import phantom as ph
    from innerear.data.phantom.acquisition import Acquisition
    from innerear.settings.profiles import get_profile

    acq = Acquisition(style="microct", voxel_mm=voxel_mm, fov_mm=BLOCK_MM, centre="labyrinth", units="uint16",
                      correlated_noise=0.3, rings=0.3, cupping=0.3)
    spec = ph.generate_specimen(0, 4242, get_profile("demo").phantoms, realism=ph.AnatomyRealism.full(),
                                acquisition=acq)
    return folder / ph.write_specimen(spec, folder)["image"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                TF_CPP_MIN_LOG_LEVEL="3")


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def segment_runs(scan: Path, folder: Path, runs: int) -> dict:
    """``innerear segment`` in fresh processes: wall seconds and the report's steps, as medians."""
    walls, steps = [], []
    for i in range(runs):
        mask, report = folder / f"mask{i}.nii.gz", folder / f"report{i}.json"
        walls.append(_wall([sys.executable, "-m", "innerear", "segment", str(scan), "-o", str(mask), "--report",
                            str(report), "--quiet", "--force"]))
        rep = json.loads(report.read_text())
        steps.append(dict(rep["timings_s"], total_inside=rep["total_s"]))
        print(f"  segment run {i + 1}/{runs}: {walls[-1]:.1f} s wall, steps {rep['timings_s']}", flush=True)
    median_steps = {k: round(statistics.median(s[k] for s in steps), 3) for k in steps[0]}
    return {"runs": runs, "wall_s": [round(w, 2) for w in walls], "median_wall_s": round(statistics.median(walls), 2),
            "median_steps_s": median_steps}


def startup(repeats: int = 3) -> dict:
    """Seconds a fresh interpreter needs to import the command line, and Keras with its backend."""
    out = {}
    for name, code in (("python + innerear.cli", "import innerear.cli"),
                       ("python + keras (tensorflow)", "import keras; keras.ops.zeros((1,))")):
        out[name] = round(statistics.median(_wall([sys.executable, "-c", code]) for _ in range(repeats)), 2)
    return out


def cascade_profile(scan: Path) -> list[dict]:
    """The engine on the prepared block in this process, networks loaded and warmed up: seconds per
    stage for mirroring on/off and batch 8/32 (each configuration run twice, the second timed)."""
    from innerear.inference import segment as sg
    from innerear.inference.engine import InferenceSettings

    cascade = sg.load_model_dir(None)
    prepared = sg.prepare(sg.read_scan(scan, None), cascade)
    rows = []
    for mirror in (True, False):
        for batch in (8, 32):
            run = InferenceSettings(mirror=mirror, align=cascade.settings.align, batch_size=batch)
            saved, cascade.settings = cascade.settings, run
            try:
                cascade.predict(prepared.volume)  # warm-up: traces the predict steps for these shapes
                stats: dict = {}
                t0 = time.perf_counter()
                cascade.predict(prepared.volume, stats=stats)
                seconds = time.perf_counter() - t0
            finally:
                cascade.settings = saved
            rows.append({"mirror": mirror, "batch": batch, "seconds": round(seconds, 2),
                         "prepared_shape": "x".join(map(str, prepared.volume.shape)),
                         "stages": [{"view": s["view"], "seconds": round(s["seconds"], 2),
                                     "pixel_fraction": round(s["pixel_fraction"], 3)} for s in stats["stages"]],
                         "realigned": bool((stats.get("alignment") or {}).get("realigned"))})
            per_stage = ", ".join(f"{s['view']} {s['seconds']:.1f}" for s in stats["stages"])
            print(f"  cascade mirror={mirror} batch={batch}: {seconds:.1f} s ({per_stage})", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="record (default: benchmarks/results/bench_segment_profile.json)")
    args = ap.parse_args(argv)
    from innerear.inference.modelfolder import read_model_folder

    voxel = float(read_model_folder(None).spec.voxel_mm)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        scan = block_scan(folder, voxel)
        print("start-up ...", flush=True)
        start = startup()
        print(f"  {start}\nsegment ...", flush=True)
        seg = segment_runs(scan, folder, args.runs)
        print("cascade ...", flush=True)
        casc = cascade_profile(scan)
    shape = 3 * (int(round(BLOCK_MM / voxel)),)
    out = {"what": f"innerear segment on a {BLOCK_MM:.0f} mm block at the shipped model's voxel size ({voxel} mm, "
                   f"{'x'.join(map(str, shape))} voxels, uint16): wall time with start-up (fresh processes), the "
                   "report's steps, import costs, and the engine's stages in one warm process",
           "goal_wall_s": GOAL_S, "segment": seg, "startup_s": start, "cascade": casc,
           "goal_met": seg["median_wall_s"] <= GOAL_S}
    print(f"median wall {seg['median_wall_s']:.1f} s (goal {GOAL_S:.0f} s)")
    from innerear.reporting.performance import results_path, write_record

    print(f"wrote {write_record(args.json or results_path(ROOT, 'bench_segment_profile'), 'bench_segment_profile', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
