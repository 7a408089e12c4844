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
  first-stage slice at full size), and at batch sizes 8 (default) and 32 (median of 3 runs each);
* ``network_floor``: each stage network's seconds per full-size slice at this machine's throughput
  (both cores), times the slice area the shipped cascade predicts: the network time no scheduling
  can go below without predicting fewer or smaller slices;
* ``turned``: the same block's specimen acquired turned a further :data:`TURN_DEG` degrees about its
  pose axis, which the engine realigns into the labyrinth's frame (extra passes, the image turned
  by a cubic spline, the probabilities turned back): ``innerear segment`` ``--turned-runs`` times
  (default 3) per configuration but ``--runtime keras``, interleaved, with the realigned passes and
  the Dice of each configuration's mask against the phantom's label.

Each configuration's mask is compared with the shipped one's (``same_mask_as_shipped``): a
speed-up that keeps the answers gives the same voxels.

The record (``benchmarks/results/bench_segment_profile.json``) holds the goal of issue 25
(5 s wall) beside the median, and is rendered on the book's Performance page.

    .venv/bin/python benchmarks/bench_segment_profile.py [--runs 5] [--turned-runs 3] [--workdir DIR]
        [--compare [LABEL=]CHECKOUT ...]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_S = 5.0  # issue 25: innerear segment of the 30 mm block in 5 s wall, start-up included
BLOCK_MM = 30.0
TURN_DEG = 45.0  # the turned block: acquired this much further turned about its pose axis
SPECIMEN, SEED = 0, 4242


def block_scan(folder: Path, voxel_mm: float, turn_deg: float = 0.0) -> tuple[Path, Path]:
    """The reference block (``tools/ship_robust.py``'s speed-check scan), or with ``turn_deg`` the same
    specimen acquired that much further turned, as compressed NIfTI: ``(image, label)``."""
    from innerear.data import phantom as ph
    from innerear.data.phantom.acquisition import Acquisition
    from innerear.settings.profiles import get_profile

    def specimen(pose_deg: float | None = None):
        acq = Acquisition(style="microct", voxel_mm=voxel_mm, fov_mm=BLOCK_MM, centre="labyrinth", units="uint16",
                          correlated_noise=0.3, rings=0.3, cupping=0.3, pose_deg=pose_deg)
        return ph.generate_specimen(SPECIMEN, SEED, get_profile("demo").phantoms, realism=ph.AnatomyRealism.full(),
                                    acquisition=acq)

    spec = specimen()
    if turn_deg:
        spec = specimen(float(spec.meta["pose_deg"]) + turn_deg)
    files = ph.write_specimen(spec, folder)
    return folder / files["image"], folder / files["label"]


def _env(root: Path = ROOT) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
                TF_CPP_MIN_LOG_LEVEL="3")


def _wall(cmd: list[str], root: Path = ROOT) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(root), cwd=root, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def segment_runs(scan: Path, folder: Path, runs: int, configs: dict[str, tuple[Path, list[str]]],
                 label: Path | None = None) -> dict:
    """``innerear segment`` in fresh processes, each configuration ``(checkout, extra arguments)`` in
    turn ``runs`` times: wall seconds and the report's steps, as medians per configuration; whether its
    mask is the shipped configuration's, voxel for voxel; its realigned passes (a turned scan); and with
    ``label`` the Dice of its mask against it."""
    from innerear.io.volumes import read_volume
    from innerear.metrics import dice

    walls: dict[str, list[float]] = {name: [] for name in configs}
    steps: dict[str, list[dict]] = {name: [] for name in configs}
    masks: dict[str, Path] = {}
    passes: dict[str, int] = {}
    for i in range(runs):
        for n, (name, (root, extra)) in enumerate(configs.items()):
            mask, report = folder / f"mask_{n}_{i}.nii.gz", folder / f"report_{n}_{i}.json"
            walls[name].append(_wall([sys.executable, "-m", "innerear", "segment", str(scan), "-o", str(mask),
                                      "--report", str(report), "--quiet", "--force", *extra], root))
            rep = json.loads(report.read_text())
            steps[name].append(dict(rep["timings_s"], total_inside=rep["total_s"]))
            masks[name] = mask
            alignment = (rep.get("prepared") or {}).get("alignment") or {}
            passes[name] = len(alignment.get("passes") or []) if alignment.get("realigned") else 0
            print(f"  {name} run {i + 1}/{runs}: {walls[name][-1]:.1f} s wall, steps {rep['timings_s']}", flush=True)
    shipped = read_volume(masks["shipped"])[0] != 0 if "shipped" in masks else None
    truth = read_volume(label)[0] != 0 if label is not None else None
    out = {}
    for name in configs:
        median_steps = {k: round(statistics.median(s.get(k, 0.0) for s in steps[name]), 3) for k in steps[name][0]}
        mask = read_volume(masks[name])[0] != 0
        out[name] = {"runs": runs, "wall_s": [round(w, 2) for w in walls[name]],
                     "median_wall_s": round(statistics.median(walls[name]), 2), "median_steps_s": median_steps,
                     "arguments": " ".join(configs[name][1]), "checkout": str(configs[name][0]),
                     "git": _git_head(configs[name][0]), "realigned_passes": passes[name],
                     "same_mask_as_shipped": None if shipped is None else bool(np.array_equal(mask, shipped))}
        if truth is not None:
            out[name]["dice"] = round(float(dice(mask, truth)), 4)
    return out


def startup(repeats: int = 3) -> dict:
    """Seconds a fresh interpreter needs to import the command line, and Keras with its backend."""
    out = {}
    for name, code in (("python + innerear.cli", "import innerear.cli"),
                       ("python + keras (tensorflow)", "import keras; keras.ops.zeros((1,))"),
                       ("python + onnxruntime", "import onnxruntime")):
        out[name] = round(statistics.median(_wall([sys.executable, "-c", code]) for _ in range(repeats)), 2)
    return out


def cascade_profile(scan: Path, repeats: int = 3) -> list[dict]:
    """The engine on the prepared block in this process, networks loaded and warmed up: seconds per
    stage with and without mirroring and stage 1's probe at batch 8, and as shipped at batch 32;
    each configuration run once to warm up, then ``repeats`` times: the run of median seconds (its
    stages' seconds with it), and every run's seconds."""
    from innerear.inference import segment as sg
    from innerear.inference.engine import PROBE_STEP, InferenceSettings

    cascade = sg.load_model_dir(None)
    prepared = sg.prepare(sg.read_scan(scan, None), cascade)
    rows = []
    for mirror, probe, batch in ((True, PROBE_STEP, 8), (True, 0, 8), (False, PROBE_STEP, 8), (False, 0, 8),
                                 (True, PROBE_STEP, 32)):
        run = InferenceSettings(mirror=mirror, align=cascade.settings.align, batch_size=batch, probe_step=probe)
        saved, cascade.settings = cascade.settings, run
        timed = []
        try:
            cascade.predict(prepared.volume)  # warm-up
            for _ in range(repeats):
                stats: dict = {}
                t0 = time.perf_counter()
                cascade.predict(prepared.volume, stats=stats)
                timed.append((time.perf_counter() - t0, stats))
        finally:
            cascade.settings = saved
        seconds, stats = sorted(timed, key=lambda t: t[0])[len(timed) // 2]
        rows.append({"mirror": mirror, "probe_step": probe, "batch": batch, "seconds": round(seconds, 2),
                     "all_seconds": [round(t, 2) for t, _ in timed],
                     "runtime": cascade.info.get("runtime"),
                     "prepared_shape": "x".join(map(str, prepared.volume.shape)),
                     "stages": [{"view": s["view"], "seconds": round(s["seconds"], 2), "passes": s["passes"],
                                 "pixel_fraction": round(s["pixel_fraction"], 3)} for s in stats["stages"]],
                     "realigned": bool((stats.get("alignment") or {}).get("realigned"))})
        per_stage = ", ".join(f"{s['view']} {s['seconds']:.1f}" for s in stats["stages"])
        print(f"  cascade mirror={mirror} probe={probe} batch={batch}: {seconds:.1f} s ({per_stage})", flush=True)
    return rows


def network_floor(scan: Path, shipped: dict, slices: int = 64, repeats: int = 3) -> dict:
    """A lower bound on the cascade's network time on this machine: each stage network's seconds per
    full-size slice of the prepared block (batches of 8 through the engine's own
    :func:`~innerear.inference.kernels.predict_slices`, so an ONNX export's sessions run side by side,
    one per core; median of ``repeats`` after a warm-up) times the slices' area the shipped cascade
    (``shipped``, a :func:`cascade_profile` row) predicts. Rectangles smaller than a slice cost more
    per pixel, so the real network time is above this."""
    from innerear.inference import segment as sg
    from innerear.inference.kernels import predict_slices
    from innerear.settings.views import to_slices

    cascade = sg.load_model_dir(None)
    volume = sg.prepare(sg.read_scan(scan, None), cascade).volume
    per_slice, floor = {}, 0.0
    for k, ((view, net), stage) in enumerate(zip(cascade.stages, shipped["stages"])):
        stack = to_slices(np.asarray(volume, np.float32), view, cascade.view_axes)[:slices]
        batch = np.ascontiguousarray(np.repeat(stack[..., None], k + 1, axis=-1))  # the image and k masks' channels
        predict_slices(net, batch, 8)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            predict_slices(net, batch, 8)
            times.append(time.perf_counter() - t0)
        per_slice[view] = statistics.median(times) / len(batch)
        floor += per_slice[view] * stage["pixel_fraction"] * to_slices(volume, view, cascade.view_axes).shape[0]
    shape = to_slices(volume, cascade.stages[0][0], cascade.view_axes).shape[1:3]
    print(f"  seconds per full slice {per_slice}; floor {floor:.2f} s of the cascade's {shipped['seconds']:.2f} s",
          flush=True)
    return {"slice_shape": "x".join(map(str, shape)), "per_slice_ms": {v: round(1e3 * t, 2) for v, t in per_slice.items()},
            "floor_s": round(floor, 2), "cascade_s": shipped["seconds"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--turned-runs", type=int, default=3, help="runs of the turned block per configuration (0: none)")
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
        scan, _ = block_scan(folder / "block", voxel)
        print("start-up ...", flush=True)
        start = startup()
        print(f"  {start}\nsegment ...", flush=True)
        runs = segment_runs(scan, folder, args.runs, configs)
        print("cascade ...", flush=True)
        casc = cascade_profile(scan)
        print("network floor ...", flush=True)
        floor = network_floor(scan, casc[0])  # the first row is the shipped setting
        turned = None
        if args.turned_runs > 0:
            print(f"turned {TURN_DEG:g} degrees ...", flush=True)
            turned_scan, label = block_scan(folder / "turned", voxel, TURN_DEG)
            turned_configs = {k: v for k, v in configs.items() if k != "keras runtime"}
            turned = {"turn_deg": TURN_DEG, "configurations": segment_runs(turned_scan, folder / "turned",
                                                                            args.turned_runs, turned_configs, label)}
    seg = runs["shipped"]
    shape = 3 * (int(round(BLOCK_MM / voxel)),)
    out = {"what": f"innerear segment on a {BLOCK_MM:.0f} mm block at the shipped model's voxel size ({voxel} mm, "
                   f"{'x'.join(map(str, shape))} voxels, uint16): wall time with start-up (fresh processes, "
                   "configurations interleaved), the report's steps, import costs, and the engine's stages in one "
                   "warm process",
           "goal_wall_s": GOAL_S, "segment": seg, "configurations": runs, "startup_s": start, "cascade": casc,
           "network_floor": floor, "goal_met": seg["median_wall_s"] <= GOAL_S}
    if turned is not None:
        out["turned"] = dict(turned, what=f"the block's specimen acquired {TURN_DEG:g} degrees further turned about "
                                          "its pose axis (same field, voxel size and artefacts), which the engine "
                                          "realigns; configurations as above but --runtime keras, interleaved")
    if args.compare:
        out["compare_note"] = "; ".join(f"'{name}' is the checkout {root} (git {runs[name]['git']}) run with this venv"
                                        for name, (root, _) in configs.items() if root != ROOT)
    for name, r in runs.items():
        print(f"{name}: median wall {r['median_wall_s']:.1f} s")
    for name, r in (turned or {}).get("configurations", {}).items():
        print(f"turned, {name}: median wall {r['median_wall_s']:.1f} s, Dice {r.get('dice')}, "
              f"same mask as shipped: {r['same_mask_as_shipped']}")
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
