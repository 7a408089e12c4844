"""Where a demo training epoch's time goes on this CPU, and what the training options buy (issue 25).

One run, side by side, each configuration in a fresh process (the backend's threads are fixed
at start-up) on the same synthetic demo-sized data (the demo profile's U-Net, 64² slices,
batch 20, 29 steps per epoch as a fold of 9 phantoms × 64 slices gives):

* ``steps_per_execution`` 1 (one compiled call per batch, the old path) vs 64 (today's);
* 1 vs 2 backend threads (two training workers get one each);
* XLA (``jit_compile=True``) vs the default graph;
* forward pass only (``predict`` on the epoch's slices), to split forward from backward.

It also counts the U-Net's convolution FLOPs per training step (forward ≈ 2·H·W·k²·Cin·Cout per
slice and layer, backward ≈ twice that) and measures what these cores reach on a large fp32
matrix product (the practical peak), so the achieved rate of each configuration is a share of it:
a roofline-style figure for the Performance page.

    .venv/bin/python benchmarks/bench_train_speed.py            # ~3 minutes

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

CONFIGS = (
    {"name": "1 thread, 1 step per call (before)", "threads": 1, "spe": 1, "jit": False},
    {"name": "1 thread, 64 steps per call (today, per worker)", "threads": 1, "spe": 64, "jit": False},
    {"name": "1 thread, 64 steps per call, XLA", "threads": 1, "spe": 64, "jit": True},
    {"name": "2 threads, 1 step per call", "threads": 2, "spe": 1, "jit": False},
    {"name": "2 threads, 64 steps per call", "threads": 2, "spe": 64, "jit": False},
)

_CHILD = r"""
import json, os, statistics, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
cfg = json.loads(sys.argv[1])
import numpy as np, keras
from innerear.nets.backend import set_seed, set_threads
set_threads(cfg["threads"])
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


def run_child(code: str, arg: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code, arg], env=env, cwd=str(ROOT), capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.perf_counter()
    peak = {t: run_child(_PEAK, str(t))["gflops"] for t in (1, 2)}
    rows, flop = [], None
    for cfg in CONFIGS:
        r = run_child(_CHILD, json.dumps({**cfg, "repeats": args.repeats}))
        epoch = statistics.median(r["epoch_s"])
        fwd = statistics.median(r["forward_epoch_s"])
        flop = r["forward_flop_per_slice"]
        train_flop = 3.0 * flop * r["batch"] * r["steps"]  # forward + backward (about twice the forward)
        gflops = train_flop / epoch / 1e9
        rows.append({**cfg, "epoch_s": round(epoch, 3), "step_s": round(epoch / r["steps"], 4),
                     "forward_share": round(fwd / epoch, 3), "achieved_gflops": round(gflops, 2),
                     "peak_gflops": round(peak[cfg["threads"]], 1),
                     "share_of_peak": round(gflops / peak[cfg["threads"]], 3),
                     "all_epoch_s": [round(v, 3) for v in r["epoch_s"]]})
        print(f"{cfg['name']:48s} epoch {epoch:6.2f} s  step {epoch / r['steps']:.4f} s  forward share "
              f"{fwd / epoch:.2f}  {gflops:5.1f} GFLOP/s ({100 * gflops / peak[cfg['threads']]:.0f} % of "
              f"{peak[cfg['threads']]:.0f})", flush=True)
    base = rows[0]["epoch_s"]
    for r in rows:
        r["speed_vs_before"] = round(base / r["epoch_s"], 2)
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
