"""GPU figures for the book's Performance page (notebooks/06_performance.ipynb): one short run on a JAX machine (no TensorFlow).

Prints, and writes to ``$OUT/gpu_results.json`` when ``$OUT`` is set:

* the device, JAX and Keras versions;
* seconds per 256³ volume through the paper-size three-stage cascade (U-Net, 1/2/3 input
  channels), through the engine (:meth:`innerear.inference.engine.Cascade.predict`) in its ``"full"``
  mode and its default ``"fast"`` mode, in float32 and in mixed precision
  (``mixed_float16``), with the Dice between the float32 and mixed-precision masks and
  between the two paths;
* training throughput: slices per second at 256 × 256, batch 20, Adam, float32 (and mixed).

Only numpy, scipy (a JAX dependency), keras, jax and innerear are imported; nibabel is
stubbed when missing (it is only needed to read NIfTI files). The stage weights are the
benchmark's quick-fit weights from ``benchmarks/.cache/bench_unet_weights_v1_g256.npz`` when
that file was carried along (random weights otherwise; the region-of-interest path then has
little to restrict to, which the JSON says). Every part runs under a time budget
(``--budget`` seconds, default 260) and records its own failure; a watchdog ends the process
40 s after the budget whatever happens.

Run (repository root, Keras and its pure-Python dependencies from ``.wheels``)::

    pip install --no-deps --no-index --find-links .wheels keras optree absl-py rich packaging \\
        typing_extensions markdown-it-py mdurl pygments namex
    KERAS_BACKEND=jax python benchmarks/gpu_check.py
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

T0 = time.perf_counter()
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

RESULTS: dict = {"script": "benchmarks/gpu_check.py", "parts": {}}
STATE: dict = {}


def elapsed() -> float:
    return time.perf_counter() - T0


def save() -> None:
    RESULTS["elapsed_s"] = round(elapsed(), 1)
    if "context" not in RESULTS:  # date, machine, versions: the Performance page reads them
        from innerear.reporting.performance import run_context

        RESULTS["context"] = dict(run_context(), command="KERAS_BACKEND=jax python benchmarks/gpu_check.py")
    out = os.environ.get("OUT")
    if out:
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            tmp = Path(out) / "gpu_results.json.tmp"
            tmp.write_text(json.dumps(RESULTS, indent=2, default=str))
            os.replace(tmp, Path(out) / "gpu_results.json")
        except OSError as exc:  # never let reporting break the run
            print(f"[gpu_check] could not write $OUT/gpu_results.json: {exc}", flush=True)


def part(name: str, fn, budget: float, needs_s: float = 0.0, requires: tuple[str, ...] = ()) -> None:
    """Run one part; record its result, its failure, or why it was skipped."""
    left = budget - elapsed()
    missing = [r for r in requires if r not in STATE]
    if missing:
        RESULTS["parts"][name] = {"skipped": f"needs {missing}"}
    elif left < needs_s:
        RESULTS["parts"][name] = {"skipped": f"time budget: {left:.0f} s left, needs ~{needs_s:.0f} s"}
    else:
        t = time.perf_counter()
        print(f"[gpu_check {elapsed():5.0f} s] {name} ...", flush=True)
        try:
            res = fn()
            RESULTS["parts"][name] = dict(res or {}, seconds_part=round(time.perf_counter() - t, 1))
        except Exception as exc:  # noqa: BLE001 - report and go on
            RESULTS["parts"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()[-3000:],
                                      "seconds_part": round(time.perf_counter() - t, 1)}
    print(f"[gpu_check {elapsed():5.0f} s] {name}: {json.dumps(RESULTS['parts'][name], default=str)[:600]}",
          flush=True)
    save()


def sync(x):
    """Block until a backend array is computed; numpy comes back."""
    import keras

    return keras.ops.convert_to_numpy(x)


# --------------------------------------------------------------------------- parts
def p_env(args) -> dict:
    import jax
    import keras

    devs = jax.devices()
    info = {"python": platform.python_version(), "jax": jax.__version__, "keras": keras.__version__,
            "backend": keras.backend.backend(), "devices": [str(d) for d in devs],
            "device_kind": getattr(devs[0], "device_kind", str(devs[0])), "platform": devs[0].platform,
            "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
            "host_cpus": os.cpu_count()}
    try:
        stats = devs[0].memory_stats() or {}
        info["device_memory_gib"] = round(stats.get("bytes_limit", 0) / 2**30, 1)
    except Exception:  # noqa: BLE001
        pass
    RESULTS["device"] = info["device_kind"]
    if info["platform"] != "gpu" and not args.allow_cpu:
        raise RuntimeError(f"no GPU visible to JAX ({info['devices']}); pass --allow-cpu to run anyway")
    STATE["env"] = info
    return info


def _tube_volume(grid: int):
    """numpy-only fallback test volume: a dark bent tube in bright, noisy 'bone'."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.arange(grid, dtype=np.float32)] * 3, indexing="ij")
    cx = grid / 2 + grid / 6 * np.sin(z / grid * 2 * np.pi)
    label = ((x - cx) ** 2 + (y - grid / 2) ** 2 <= (grid / 40) ** 2).astype(np.uint8)
    image = 26000 - 20000 * label + rng.normal(0, 800, label.shape)
    return image.astype(np.float32), label


def p_setup(args) -> dict:
    import _common as C

    stub = C.install_nibabel_stub()
    import innerear.nets.backbones  # noqa: F401
    import innerear.inference.engine  # noqa: F401
    import innerear.inference.kernels  # noqa: F401
    import innerear.data.preprocess  # noqa: F401

    info = {"nibabel_stub": stub}
    t = time.perf_counter()
    try:
        image, label = C.prepare_phantom(0, args.grid, use_cache=False)
        info["volume"] = f"phantom 0 (demo settings, binning {C.FIT['binning']}) prepared to {args.grid}^3"
    except Exception as exc:  # noqa: BLE001
        image, label = _tube_volume(args.grid)
        info["volume"] = f"numpy tube ({type(exc).__name__}: {exc})"
    info["volume_s"] = round(time.perf_counter() - t, 1)
    models = C.paper_unets()
    STATE["models_fp32"] = models
    wpath = C.weights_path()
    if wpath.exists():
        meta = C.load_weights(wpath, models)
        info["weights"] = f"quick-fit benchmark weights ({wpath.name})"
    else:
        from innerear.data.normalize import fit_normalizer

        meta = {"normalizer": fit_normalizer([image]).to_dict(), "grid": args.grid}
        info["weights"] = "random (benchmarks/.cache weights not carried): the ROI has little to restrict to"
    meta["grid"] = args.grid
    STATE.update(image=image, label=label, weights=[m.get_weights() for m in models], meta=meta)
    return info


def _cascade(batch_size: int, policy: str):
    """The cascade with the benchmark weights, built under the current dtype policy (once each)."""
    import _common as C

    key = f"models_{policy}"
    if key not in STATE:
        models = C.paper_unets()
        for m, w in zip(models, STATE["weights"]):
            m.set_weights(w)
        STATE[key] = models
    return C.bench_cascade(STATE[key], STATE["meta"], batch_size=batch_size)


def _time_paths(tag: str, args) -> dict:
    """Full-size and fast paths, one warm-up run each (compilation), then ``args.repeats`` timed."""
    import _common as C

    casc = _cascade(args.batch, tag)
    image = STATE["image"]
    fast_kw = dict(margin=args.margin, batch_size=args.batch, bucket=args.bucket, fixed_batch=True)
    paths = {"full": lambda: casc.predict(image, "full", batch_size=args.batch),
             "fast": lambda: casc.predict(image, "fast", **fast_kw)}
    out: dict = {"batch": args.batch, "margin": args.margin, "bucket": args.bucket}
    masks = {}
    for name, fn in paths.items():
        t = time.perf_counter()
        mask, _ = fn()
        out[f"{name}_first_run_s"] = round(time.perf_counter() - t, 2)  # includes compilation
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            mask, _ = fn()
            times.append(time.perf_counter() - t)
        out[f"{name}_s"] = [round(x, 3) for x in times]
        out[f"{name}_median_s"] = round(float(np.median(times)), 3)
        masks[name] = np.asarray(mask)
        out[f"{name}_dice_vs_label"] = round(C.dice(mask, STATE["label"]), 4)
        save()
    out["speedup_fast_vs_full"] = round(out["full_median_s"] / out["fast_median_s"], 2)
    out["dice_fast_vs_full"] = round(C.dice(masks["fast"], masks["full"]), 5)
    stats: dict = {}
    casc.predict(image, "fast", stats=stats, **fast_kw)
    out["fast_pixel_fraction"] = [round(s["pixel_fraction"], 3) for s in stats["stages"]]
    STATE[f"masks_{tag}"] = masks
    return out


def p_infer_fp32(args) -> dict:
    import keras

    keras.mixed_precision.set_global_policy("float32")
    return _time_paths("fp32", args)


def p_infer_mixed(args) -> dict:
    import _common as C
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        out = _time_paths("mixed", args)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    ref = STATE.get("masks_fp32")
    if ref:
        for name in ("full", "fast"):
            out[f"dice_mixed_vs_fp32_{name}"] = round(C.dice(STATE["masks_mixed"][name], ref[name]), 5)
    return out


def _train(policy: str, args) -> dict:
    import keras

    from innerear.nets.backbones import unet

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = unet(channels=1)  # the paper's network, Keras' default BN momentum
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(20, 256, 256, 1)).astype(np.float32)
        y = (rng.random((20, 256, 256, 1)) < 0.05).astype(np.float32)
        t = time.perf_counter()
        model.train_on_batch(x, y)
        first = time.perf_counter() - t
        model.train_on_batch(x, y)
        steps, t = 0, time.perf_counter()
        while steps < args.train_steps and time.perf_counter() - t < 20:
            loss = model.train_on_batch(x, y)
            steps += 1
        sync(loss)
        sec = time.perf_counter() - t
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"policy": policy, "batch": 20, "size": 256, "steps": steps, "seconds": round(sec, 3),
            "slices_per_s": round(20 * steps / sec, 1), "first_step_s": round(first, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="GPU figures for the performance page")
    ap.add_argument("--budget", type=float, default=260.0, help="seconds for all parts")
    ap.add_argument("--grid", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--margin", type=int, default=16)
    ap.add_argument("--bucket", type=int, default=128, help="crop sides rounded to this (few shapes = few compilations)")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--allow-cpu", action="store_true", help="run even without a GPU (for testing this script)")
    args = ap.parse_args(argv)
    faulthandler.dump_traceback_later(args.budget + 40, exit=True)  # never hang
    RESULTS["args"] = vars(args)
    b = args.budget
    part("env", lambda: p_env(args), b)
    part("setup", lambda: p_setup(args), b, requires=("env",))
    part("inference_fp32", lambda: p_infer_fp32(args), b, needs_s=30, requires=("image",))
    part("train_fp32", lambda: _train("float32", args), b, needs_s=30, requires=("env",))
    part("inference_mixed_float16", lambda: p_infer_mixed(args), b, needs_s=40, requires=("image",))
    part("train_mixed_float16", lambda: _train("mixed_float16", args), b, needs_s=30, requires=("env",))
    faulthandler.cancel_dump_traceback_later()
    print("\n=== gpu_check summary ===")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "traceback"} for k, v in RESULTS["parts"].items()},
                     indent=1, default=str))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
