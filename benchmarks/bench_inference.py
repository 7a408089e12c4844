"""Seconds and peak memory to segment one 256³ volume with the engine, in each of its modes.

The volume is phantom specimen 0 (demo phantom settings at binning 4, prepared to 256³ with
the pipeline's resampling); the three stages are the paper-size U-Net (base 32, depth 3;
1, 2 and 3 input channels, coronal → sagittal → axial) with quick-fit weights (see
``benchmarks/_common.py``: a few hundred Adam steps on 64² crops of phantom specimen 1,
cached in ``benchmarks/.cache/``), so that every stage produces a realistic mask.

Variants, run in the same process, interleaved (the order rotates every repeat), all through
the product's own engine, :meth:`innerear.inference.engine.Cascade.predict` (what ``innerear segment``,
training and evaluation call):

* ``full`` — ``mode="full"``, the authors' way: every slice of every stage at full size,
  eager ``model(x)`` calls, batch 32;
* ``full-compiled`` — ``mode="compiled"``: every slice at full size through the compiled
  ``predict_on_batch`` (isolates that gain);
* ``fast`` — ``mode="fast"``, the default: compiled prediction, stages 2 and 3 only within
  ``margin`` voxels of the earlier masks (not exact at crop edges: the Dice between its
  masks and ``full``'s is reported and written to the JSON).

Reported: median seconds per volume, every run, peak resident memory during the call
(``VmHWM`` after resetting it; the models and the volume are loaded before), the speed-up
against ``full``, the Dice of every variant's mask against ``full``'s (and against the
phantom's label). Written to ``--json`` (default ``benchmarks/results/bench_inference.json``)
with the machine, date and versions. ``--sweep 8,24`` adds one ``fast`` run per margin; ``--tune`` measures
slices per second by batch size and thread setting instead. The resampling benchmark
(``bench_resample.py``, case (a)) follows unless ``--skip-resample``.

    .venv/bin/python benchmarks/bench_inference.py                 # make bench
    .venv/bin/python benchmarks/bench_inference.py --repeats 5 --sweep 8,24
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402


def _threads_from_env() -> None:
    """``INNEREAR_BENCH_THREADS=intra,inter`` sets TensorFlow's thread pools (before any op)."""
    spec = os.environ.get("INNEREAR_BENCH_THREADS")
    if not spec:
        return
    import keras

    intra, inter = (int(v) for v in spec.split(","))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def machine() -> dict:
    import keras

    from innerear.reporting.performance import cpu_model

    info = {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(), "keras": keras.__version__,
            "backend": keras.backend.backend(), "load_avg_start": os.getloadavg()}
    if info["backend"] == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["tf_threads"] = [tf.config.threading.get_intra_op_parallelism_threads(),
                              tf.config.threading.get_inter_op_parallelism_threads()]
    return info


def _warm_up(casc, batch: int) -> None:
    """Trace the compiled predict step once per model (not timed), and touch the eager path."""
    from innerear.inference.kernels import predict_slices  # the engine's kernel, to trace each network once

    for k, (_, model) in enumerate(casc.stages, 1):
        x = np.zeros((batch, casc.grid, casc.grid, k), np.float32)
        predict_slices(model, x, batch, compiled=True)
        predict_slices(model, x[:1], 1, compiled=False)


def run_variants(image, label, casc, args) -> tuple[dict, np.ndarray]:
    """Time the variants interleaved; returns the table and the full-size path's final mask."""
    fast_kw = dict(batch_size=args.batch, bucket=args.bucket, full_fraction=args.full_fraction)
    variants = {"full": lambda st: casc.predict(image, "full", batch_size=32, return_stages=True, stats=st)}
    if not args.no_compiled_full:
        variants["full-compiled"] = lambda st: casc.predict(image, "compiled", return_stages=True, stats=st, **fast_kw)
    variants["fast"] = lambda st: casc.predict(image, "fast", margin=args.margin, return_stages=True, stats=st,
                                               **fast_kw)
    names = list(variants)
    runs = {n: [] for n in names}
    results = {}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            stats: dict = {}
            with C.PeakRSS() as mem:
                t = time.perf_counter()
                mask, prob, stages = variants[name](stats)
                sec = time.perf_counter() - t
            runs[name].append({"seconds": sec, "peak_mib": mem.peak_mib, "delta_mib": mem.delta_mib,
                               "stats": stats.get("stages")})
            print(f"  run {r + 1} {name:13s} {sec:7.1f} s  peak RSS {mem.peak_mib:6.0f} MiB "
                  f"(+{mem.delta_mib:.0f})  load {os.getloadavg()[0]:.1f}", flush=True)
            if name not in results:
                results[name] = [np.asarray(m) for _, m in stages]
            del mask, prob, stages
    ref = results["full"]
    table = {}
    for name in names:
        secs = [x["seconds"] for x in runs[name]]
        table[name] = {
            "median_s": float(np.median(secs)), "runs_s": secs,
            "peak_mib": float(np.median([x["peak_mib"] for x in runs[name]])),
            "delta_mib": float(np.median([x["delta_mib"] for x in runs[name]])),
            "dice_vs_full": C.dice(results[name][-1], ref[-1]),
            "stage_dice_vs_full": [C.dice(a, b) for a, b in zip(results[name], ref)],
            "dice_vs_label": C.dice(results[name][-1], label),
            "stage_dice_vs_label": [C.dice(a, label) for a in results[name]],
            "pixel_fraction": [s["pixel_fraction"] for s in runs[name][-1]["stats"]] if runs[name][-1]["stats"] else [1.0] * 3,
        }
    full_median = table["full"]["median_s"]
    for name in names:
        table[name]["speedup"] = full_median / table[name]["median_s"]
    # the ratio of medians, and the median of the per-repeat ratios (same repeat = similar load)
    for name in names:
        per_repeat = [f["seconds"] / x["seconds"] for f, x in zip(runs["full"], runs[name])]
        table[name]["speedup_per_repeat_median"] = float(np.median(per_repeat))
    return table, ref[-1]


def print_table(table: dict, args, info: dict) -> None:
    print()
    print(f"one {args.grid}^3 volume, paper-size 3-stage U-Net cascade, {info['cpus']} CPU(s) ({info['cpu']}), "
          f"{info['backend']} {info.get('tensorflow', '')}, {args.repeats} interleaved repeats; "
          f"load average {info['load_avg_start'][0]:.1f} -> {info['load_avg_end'][0]:.1f}")
    head = f"{'variant':14s} {'median s':>9s} {'speed-up':>9s} {'peak RSS MiB':>13s} {'(+ during)':>11s} " \
           f"{'Dice vs full':>12s} {'Dice vs label':>13s}  pixels computed (stages 1/2/3)   runs (s)"
    print(head)
    for name, r in table.items():
        print(f"{name:14s} {r['median_s']:9.1f} {r['speedup']:8.2f}x {r['peak_mib']:13.0f} {r['delta_mib']:+11.0f} "
              f"{r['dice_vs_full']:12.4f} {r['dice_vs_label']:13.3f}  "
              f"{' / '.join(f'{p:.2f}' for p in r['pixel_fraction']):31s}  "
              f"{', '.join(f'{s:.1f}' for s in r['runs_s'])}")
    print("speed-up = median(full) / median(variant); median of per-repeat ratios: "
          + ", ".join(f"{n} {r['speedup_per_repeat_median']:.2f}x" for n, r in table.items()))
    print("stage masks, Dice vs full: " + "; ".join(
        f"{n} " + "/".join(f"{d:.4f}" for d in r["stage_dice_vs_full"]) for n, r in table.items() if n != "full"))


def sweep(image, casc, ref_mask, margins, args) -> list[dict]:
    rows = []
    for m in margins:
        stats: dict = {}
        t = time.perf_counter()
        mask, _ = casc.predict(image, "fast", margin=m, batch_size=args.batch, bucket=args.bucket,
                               full_fraction=args.full_fraction, stats=stats)
        sec = time.perf_counter() - t
        rows.append({"margin": m, "seconds": sec, "dice_vs_full": C.dice(mask, ref_mask),
                     "pixel_fraction": [s["pixel_fraction"] for s in stats["stages"]]})
        print(f"  margin {m:3d}: {sec:6.1f} s, Dice vs full {rows[-1]['dice_vs_full']:.4f}, pixels "
              + " / ".join(f"{p:.2f}" for p in rows[-1]["pixel_fraction"]), flush=True)
    return rows


def tune_worker(args) -> dict:
    """Slices per second of the paper-size U-Net at 256², by batch size (compiled) and eager."""
    import keras

    from innerear.nets.backbones import unet
    from innerear.inference.kernels import predict_slices

    keras.utils.set_random_seed(0)
    model = unet(channels=1)
    n = args.tune_slices
    x = np.random.default_rng(0).normal(size=(n, 256, 256, 1)).astype(np.float32)
    modes = [(f"compiled b{b}", b, True) for b in (1, 4, 8, 16, 32)] + [("eager b32", 32, False), ("eager b8", 8, False)]
    for _, b, comp in modes:
        predict_slices(model, x[:b], b, comp)
    times = {name: [] for name, _, _ in modes}
    for r in range(args.tune_rounds):
        for name, b, comp in (modes if r % 2 == 0 else modes[::-1]):
            t = time.perf_counter()
            predict_slices(model, x, b, comp)
            times[name].append(time.perf_counter() - t)
    return {name: {"slices_per_s": n / float(np.median(v)), "runs_s": v} for name, v in times.items()}


def tune(args) -> None:
    """Batch sizes in this process; thread settings in subprocesses (they are fixed at start-up)."""
    settings = [None, "2,1", "1,1"]
    print(f"slices per second, paper-size U-Net, 256 x 256, {args.tune_slices} slices x {args.tune_rounds} rounds")
    for spec in settings:
        env = dict(os.environ)
        env.pop("INNEREAR_BENCH_THREADS", None)
        if spec:
            env["INNEREAR_BENCH_THREADS"] = spec
        out = subprocess.run([sys.executable, __file__, "--tune-worker", "--tune-slices", str(args.tune_slices),
                              "--tune-rounds", str(args.tune_rounds)], env=env, capture_output=True, text=True)
        try:
            res = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            print(f"  threads {spec or 'default'}: failed: {out.stderr[-500:]}")
            continue
        label = f"threads intra,inter = {spec}" if spec else "threads: TensorFlow default"
        print(f"  {label}: " + ", ".join(f"{k} {v['slices_per_s']:.2f}/s" for k, v in res.items()), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="full-size vs fast cascade inference on one volume")
    ap.add_argument("--grid", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--margin", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="slices per call on the fast path")
    ap.add_argument("--bucket", type=int, default=None, help="rectangle sides rounded to this (default: fastinfer's)")
    ap.add_argument("--full-fraction", type=float, default=0.75)
    ap.add_argument("--no-compiled-full", action="store_true", help="skip the full-compiled variant")
    ap.add_argument("--sweep", default="", help="comma-separated margins for one extra fast run each")
    ap.add_argument("--refit", action="store_true", help="fit the benchmark weights again")
    ap.add_argument("--tune", action="store_true", help="measure batch sizes and thread settings instead")
    ap.add_argument("--tune-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tune-slices", type=int, default=32)
    ap.add_argument("--tune-rounds", type=int, default=3)
    ap.add_argument("--skip-resample", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/bench_inference.json)")
    args = ap.parse_args(argv)
    _threads_from_env()
    if args.tune_worker:
        print(json.dumps(tune_worker(args)))
        return 0
    if args.tune:
        tune(args)
        return 0

    info = machine()
    print(f"machine: {info}", flush=True)
    image, label = C.prepare_phantom(0, args.grid)
    models, meta = C.bench_weights(args.grid, refit=args.refit)
    casc = C.bench_cascade(models, meta)
    _warm_up(casc, args.batch)
    print(f"volume {image.shape}, label {int(label.sum())} voxels ({label.mean():.2%}); weights: {meta.get('cached')}",
          flush=True)
    table, ref_mask = run_variants(image, label, casc, args)
    info["load_avg_end"] = os.getloadavg()
    print_table(table, args, info)
    out = {"machine": info, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
           "variants": table, "dice_fast_vs_full": table["fast"]["dice_vs_full"],
           "weights": {k: v for k, v in meta.items() if k != "fit"}}
    if args.sweep:
        print("margin sweep (one run each):", flush=True)
        out["sweep"] = sweep(image, casc, ref_mask, [int(m) for m in args.sweep.split(",")], args)
    from innerear.reporting.performance import results_path, write_record

    print(f"wrote {write_record(args.json or results_path(C.ROOT, 'bench_inference'), 'bench_inference', out)}")
    if not args.skip_resample:
        print("\nresampling benchmark (benchmarks/bench_resample.py; --large adds the 1500^3 case):", flush=True)
        subprocess.run([sys.executable, str(HERE / "bench_resample.py")], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
