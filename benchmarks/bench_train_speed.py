"""Where a demo training epoch's time goes on this CPU, and what the training options buy (issue 25).

One run, side by side, each configuration in a fresh process (the backend's threads are fixed
at start-up) on the same synthetic demo-sized data (the demo profile's U-Net, 64² slices,
batch 20, 29 steps per epoch as a fold of 9 phantoms × 64 slices gives):

* ``steps_per_execution`` 1 (one compiled call per batch, the old path) vs 64 (today's);
* 1 vs 2 backend threads (two training workers get one each);
* XLA (``jit_compile=True``) vs the default graph;
* forward pass only (``predict`` on the epoch's slices), to split forward from backward;
* two single-thread workers side by side, as ``innerear reproduce`` runs them (what one core's
  epoch costs when the other core trains too);
* with ``--backend-python PY`` (an interpreter with keras, jax and torch installed), the same
  epoch on Keras' JAX and PyTorch backends, as an alternative to TensorFlow on this CPU.

The record's context names the CPU's vector extensions (AVX2, FMA, AVX-512): the same 2-core
machine kind has come with and without AVX-512, and the epoch times depend on it.

It also counts the U-Net's convolution FLOPs per training step (forward ≈ 2·H·W·k²·Cin·Cout per
slice and layer, backward ≈ twice that) and measures what these cores reach on a large fp32
matrix product (the practical peak), so the achieved rate of each configuration is a share of it:
a roofline-style figure for the Performance page.

    .venv/bin/python benchmarks/bench_train_speed.py            # ~3-10 minutes, by the CPU
    .venv/bin/python benchmarks/bench_train_speed.py --backend-python /tmp/bk/bin/python

writes ``benchmarks/results/bench_train_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "bench_train_speed.json"

TF = "tensorflow"
CONFIGS = (
    {"name": "1 thread, 1 step per call (before)", "threads": 1, "spe": 1, "jit": False},
    {"name": "1 thread, 64 steps per call (today, per worker)", "threads": 1, "spe": 64, "jit": False},
    {"name": "1 thread, 64 steps per call, XLA", "threads": 1, "spe": 64, "jit": True},
    {"name": "2 threads, 1 step per call", "threads": 2, "spe": 1, "jit": False},
    {"name": "2 threads, 64 steps per call", "threads": 2, "spe": 64, "jit": False},
    {"name": "2 workers × 1 thread side by side (as reproduce)", "threads": 1, "spe": 64, "jit": False,
     "workers": 2},
)
OTHER_BACKENDS = (  # run with --backend-python; PyTorch's Keras backend takes one step per call
    {"name": "JAX, 1 thread (pinned to one core)", "backend": "jax", "threads": 1, "spe": 64, "jit": True,
     "pin": True},
    {"name": "JAX, 2 threads", "backend": "jax", "threads": 2, "spe": 64, "jit": True},
    {"name": "PyTorch, 1 thread", "backend": "torch", "threads": 1, "spe": 1, "jit": False},
    {"name": "PyTorch, 2 threads", "backend": "torch", "threads": 2, "spe": 1, "jit": False},
)

_CHILD = r"""
import json, os, statistics, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
cfg = json.loads(sys.argv[1])
if cfg.get("pin"):  # JAX's CPU client sizes its thread pool by the cores it may use
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import numpy as np, keras
from innerear.nets.backend import set_seed, set_threads
set_threads(cfg["threads"])
import importlib.metadata as md
version = md.version({"jax": "jax", "torch": "torch"}.get(keras.backend.backend(), "tensorflow-cpu"))
from innerear.nets.backbones import build_for_profile
from innerear.nets.losses import make_loss
from innerear.settings.profiles import get_profile
p = get_profile("demo")
set_seed(0)
model = build_for_profile("unet", 1, p)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("bce"), steps_per_execution=cfg["spe"],
              jit_compile=cfg["jit"])
rng = np.random.default_rng(0)
n = p.batch_size * 29
x = rng.normal(size=(n, p.grid, p.grid, 1)).astype("float32")
y = (rng.random(x.shape) < 0.05).astype("float32")
model.fit(x[: 2 * p.batch_size], y[: 2 * p.batch_size], batch_size=p.batch_size, epochs=1, verbose=0)
epochs = []
for _ in range(cfg["repeats"]):
    t = time.perf_counter()
    model.fit(x, y, batch_size=p.batch_size, epochs=1, verbose=0, shuffle=True)
    epochs.append(time.perf_counter() - t)
model.predict_on_batch(x[: p.batch_size])
fwd = []
for _ in range(cfg["repeats"]):
    t = time.perf_counter()
    for i in range(0, n, p.batch_size):
        model.predict_on_batch(x[i:i + p.batch_size])
    fwd.append(time.perf_counter() - t)
convs = []
probe = keras.models.clone_model(model, input_tensors=keras.Input((p.grid, p.grid, 1)))  # fixed size: shapes known
for layer in probe.layers:
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
        out = layer.output.shape
        k = int(np.prod(layer.kernel_size))
        cin = int(layer.kernel.shape[-1] if isinstance(layer, keras.layers.Conv2DTranspose) else layer.kernel.shape[-2])
        cout = int(layer.filters)
        convs.append(2.0 * int(out[1]) * int(out[2]) * k * cin * cout)
print(json.dumps({"epoch_s": epochs, "forward_epoch_s": fwd, "steps": 29, "batch": p.batch_size,
                  "backend": keras.backend.backend(), "backend_version": version,
                  "forward_flop_per_slice": float(sum(convs)), "params": int(model.count_params())}))
"""

_PEAK = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
threads = int(sys.argv[1])
from innerear.nets.backend import set_threads
set_threads(threads)
import keras, numpy as np
a = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2048, 2048)).astype("float32"))
keras.ops.matmul(a, a)
times = []
for _ in range(5):
    t = time.perf_counter(); float(keras.ops.sum(keras.ops.matmul(a, a))); times.append(time.perf_counter() - t)
print(json.dumps({"gflops": 2 * 2048 ** 3 / min(times) / 1e9}))
"""


def _env(backend: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)


def run_child(code: str, arg: str, python: str = sys.executable, backend: str = TF) -> dict:
    out = subprocess.run([python, "-c", code, arg], env=_env(backend), cwd=str(ROOT), capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_side_by_side(code: str, arg: str, n: int) -> list[dict]:
    """``n`` children started together (each its own process), as training workers run."""
    procs = [subprocess.Popen([sys.executable, "-c", code, arg], env=_env(TF), cwd=str(ROOT), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"side-by-side child failed: {err.strip().splitlines()[-1:]}")
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


def measure(cfg: dict, repeats: int, backend_python: str | None) -> dict:
    """One configuration's child output(s), merged: all workers' epochs, first worker's counts."""
    arg = json.dumps({**cfg, "repeats": repeats})
    if cfg.get("workers", 1) > 1:
        outs = run_side_by_side(_CHILD, arg, cfg["workers"])
        merged = dict(outs[0])
        merged["epoch_s"] = [e for o in outs for e in o["epoch_s"]]
        merged["forward_epoch_s"] = [e for o in outs for e in o["forward_epoch_s"]]
        return merged
    backend = cfg.get("backend", TF)
    return run_child(_CHILD, arg, backend_python if backend != TF else sys.executable, backend)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--backend-python", default=None,
                    help="an interpreter with keras, jax and torch: also time the JAX and PyTorch backends")
    args = ap.parse_args()
    t0 = time.perf_counter()
    peak = {t: run_child(_PEAK, str(t))["gflops"] for t in (1, 2)}
    configs = list(CONFIGS) + (list(OTHER_BACKENDS) if args.backend_python else [])
    rows, flop = [], None
    for cfg in configs:
        r = measure(cfg, args.repeats, args.backend_python)
        workers = cfg.get("workers", 1)
        epoch = statistics.median(r["epoch_s"])
        fwd = statistics.median(r["forward_epoch_s"])
        flop = r["forward_flop_per_slice"]
        train_flop = 3.0 * flop * r["batch"] * r["steps"]  # forward + backward (about twice the forward)
        gflops = workers * train_flop / epoch / 1e9  # side by side: what the workers reach together
        cores = min(2, cfg["threads"] * workers)
        rows.append({**cfg, "workers": workers, "backend": r.get("backend", TF),
                     "backend_version": r.get("backend_version"), "epoch_s": round(epoch, 3),
                     "effective_epoch_s": round(epoch / workers, 3), "step_s": round(epoch / r["steps"], 4),
                     "forward_share": round(fwd / epoch, 3), "achieved_gflops": round(gflops, 2),
                     "peak_gflops": round(peak[cores], 1), "share_of_peak": round(gflops / peak[cores], 3),
                     "all_epoch_s": [round(v, 3) for v in r["epoch_s"]]})
        print(f"{cfg['name']:52s} epoch {epoch:6.2f} s  step {epoch / r['steps']:.4f} s  forward share "
              f"{fwd / epoch:.2f}  {gflops:5.1f} GFLOP/s ({100 * gflops / peak[cores]:.0f} % of "
              f"{peak[cores]:.0f})", flush=True)
    base = rows[0]["epoch_s"]
    for r in rows:
        r["speed_vs_before"] = round(base / r["effective_epoch_s"], 2)
    doc = {"what": "one demo training epoch (U-Net base 8, 64² slices, batch 20, 29 steps) per configuration, "
                   "each in a fresh process, median of --repeats epochs; FLOPs are the convolutions' only",
           "forward_flop_per_slice": flop,
           "matmul_peak_gflops": {str(k): round(v, 1) for k, v in peak.items()},
           "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    sys.path.insert(0, str(ROOT))
    from innerear.reporting.performance import write_record

    write_record(args.out, "bench_train_speed", doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
