"""Where an ``innerear segment`` run's time goes, on the issue's reference scan.

The scan: a 30 mm block of a calibrated demo phantom at the shipped model's voxel size (0.15 mm,
200³ voxels, uint16 micro-CT with correlated noise, rings and cupping), the block the model card's
speed check uses. Measured, each in a fresh process unless said otherwise:

* ``segment``: ``python -m innerear segment SCAN -o MASK --report R`` ``--runs`` times (default 5):
  wall time including start-up (median), and the report's own steps (read, load model, prepare,
  cascade, map back, largest component, measure) as medians;
* ``configurations``: the same command side by side, runs interleaved: this checkout as shipped
  (ONNX Runtime), this checkout with ``--runtime keras``, and with ``--compare CHECKOUT`` an
  earlier checkout of the project (the code before a change, run with this venv);
* ``start-up``: the interpreter importing ``innerear.cli`` (what every command pays before it
  reads an argument), importing Keras with its backend (TensorFlow), and importing ONNX Runtime,
  median of three;
* ``cascade``: in one process with the networks loaded and warmed up, the engine on the prepared
  volume per stage (seconds, share of the slice area computed), with test-time mirroring (the
  shipped setting) and without, with stage 1's probe (the shipped setting) and without (every
  first-stage slice at full size), and at batch sizes 8 (default) and 32.

The record (``benchmarks/results/bench_segment_profile.json``) holds the goal of issue 25
(5 s wall) beside the median, and is rendered on the book's Performance page.

    .venv/bin/python benchmarks/bench_segment_profile.py [--runs 5] [--workdir DIR] [--compare CHECKOUT]
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


def _env(root: Path = ROOT) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
                TF_CPP_MIN_LOG_LEVEL="3")


def _wall(cmd: list[str], root: Path = ROOT) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(root), cwd=root, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def segment_runs(scan: Path, folder: Path, runs: int, configs: dict[str, tuple[Path, list[str]]]) -> dict:
    """``innerear segment`` in fresh processes, each configuration ``(checkout, extra arguments)`` in
    turn ``runs`` times: wall seconds and the report's steps, as medians per configuration."""
    walls: dict[str, list[float]] = {name: [] for name in configs}
    steps: dict[str, list[dict]] = {name: [] for name in configs}
    for i in range(runs):
        for name, (root, extra) in configs.items():
            mask, report = folder / f"mask_{i}.nii.gz", folder / f"report_{i}.json"
            walls[name].append(_wall([sys.executable, "-m", "innerear", "segment", str(scan), "-o", str(mask),
                                      "--report", str(report), "--quiet", "--force", *extra], root))
            rep = json.loads(report.read_text())
            steps[name].append(dict(rep["timings_s"], total_inside=rep["total_s"]))
            print(f"  {name} run {i + 1}/{runs}: {walls[name][-1]:.1f} s wall, steps {rep['timings_s']}", flush=True)
    out = {}
    for name in configs:
        median_steps = {k: round(statistics.median(s.get(k, 0.0) for s in steps[name]), 3) for k in steps[name][0]}
        out[name] = {"runs": runs, "wall_s": [round(w, 2) for w in walls[name]],
                     "median_wall_s": round(statistics.median(walls[name]), 2), "median_steps_s": median_steps,
                     "arguments": " ".join(configs[name][1]), "checkout": str(configs[name][0]),
                     "git": _git_head(configs[name][0])}
    return out


def startup(repeats: int = 3) -> dict:
    """Seconds a fresh interpreter needs to import the command line, and Keras with its backend."""
    out = {}
    for name, code in (("python + innerear.cli", "import innerear.cli"),
                       ("python + keras (tensorflow)", "import keras; keras.ops.zeros((1,))"),
                       ("python + onnxruntime", "import onnxruntime")):
        out[name] = round(statistics.median(_wall([sys.executable, "-c", code]) for _ in range(repeats)), 2)
    return out


def cascade_profile(scan: Path) -> list[dict]:
    """The engine on the prepared block in this process, networks loaded and warmed up: seconds per
    stage with and without mirroring and stage 1's probe at batch 8, and as shipped at batch 32;
    each configuration run twice, the second timed."""
    from innerear.inference import segment as sg
    from innerear.inference.engine import PROBE_STEP, InferenceSettings

    cascade = sg.load_model_dir(None)
    prepared = sg.prepare(sg.read_scan(scan, None), cascade)
    rows = []
    for mirror, probe, batch in ((True, PROBE_STEP, 8), (True, 0, 8), (False, PROBE_STEP, 8), (False, 0, 8),
                                 (True, PROBE_STEP, 32)):
        run = InferenceSettings(mirror=mirror, align=cascade.settings.align, batch_size=batch, probe_step=probe)
        saved, cascade.settings = cascade.settings, run
        try:
            cascade.predict(prepared.volume)  # warm-up
            stats: dict = {}
            t0 = time.perf_counter()
            cascade.predict(prepared.volume, stats=stats)
            seconds = time.perf_counter() - t0
        finally:
            cascade.settings = saved
        rows.append({"mirror": mirror, "probe_step": probe, "batch": batch, "seconds": round(seconds, 2),
                     "runtime": cascade.info.get("runtime"),
                     "prepared_shape": "x".join(map(str, prepared.volume.shape)),
                     "stages": [{"view": s["view"], "seconds": round(s["seconds"], 2), "passes": s["passes"],
                                 "pixel_fraction": round(s["pixel_fraction"], 3)} for s in stats["stages"]],
                     "realigned": bool((stats.get("alignment") or {}).get("realigned"))})
        per_stage = ", ".join(f"{s['view']} {s['seconds']:.1f}" for s in stats["stages"])
        print(f"  cascade mirror={mirror} probe={probe} batch={batch}: {seconds:.1f} s ({per_stage})", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--compare", action="append", default=[], metavar="[LABEL=]CHECKOUT",
                    help="an earlier checkout of the project, timed side by side as LABEL (default 'before'); "
                         "may be given more than once")
    ap.add_argument("--json", default=None, help="record (default: benchmarks/results/bench_segment_profile.json)")
    args = ap.parse_args(argv)
    from innerear.inference.modelfolder import read_model_folder

    voxel = float(read_model_folder(None).spec.voxel_mm)
    configs: dict[str, tuple[Path, list[str]]] = {}
    for item in args.compare:
        label, _, path = item.rpartition("=")
        configs[label or "before"] = (Path(path).resolve(), [])
    configs["shipped"] = (ROOT, [])
    configs["keras runtime"] = (ROOT, ["--runtime", "keras"])
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        scan = block_scan(folder, voxel)
        print("start-up ...", flush=True)
        start = startup()
        print(f"  {start}\nsegment ...", flush=True)
        runs = segment_runs(scan, folder, args.runs, configs)
        print("cascade ...", flush=True)
        casc = cascade_profile(scan)
    seg = runs["shipped"]
    shape = 3 * (int(round(BLOCK_MM / voxel)),)
    out = {"what": f"innerear segment on a {BLOCK_MM:.0f} mm block at the shipped model's voxel size ({voxel} mm, "
                   f"{'x'.join(map(str, shape))} voxels, uint16): wall time with start-up (fresh processes, "
                   "configurations interleaved), the report's steps, import costs, and the engine's stages in one "
                   "warm process",
           "goal_wall_s": GOAL_S, "segment": seg, "configurations": runs, "startup_s": start, "cascade": casc,
           "goal_met": seg["median_wall_s"] <= GOAL_S}
    if args.compare:
        out["compare_note"] = "; ".join(f"'{name}' is the checkout {root} (git {runs[name]['git']}) run with this venv"
                                        for name, (root, _) in configs.items() if root != ROOT)
    for name, r in runs.items():
        print(f"{name}: median wall {r['median_wall_s']:.1f} s")
    print(f"goal {GOAL_S:.0f} s: {'met' if out['goal_met'] else 'not met'}")
    from innerear.reporting.performance import results_path, write_record

    print(f"wrote {write_record(args.json or results_path(ROOT, 'bench_segment_profile'), 'bench_segment_profile', out)}")
    return 0


def _git_head(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
