"""Training speed of the three backbones at the demo and paper sizes, on this machine.

For each profile (``demo``, ``paper``) and backbone (U-Net, ResU-Net, SE-U-Net) the network
is built exactly as the pipeline builds a stage-1 network, compiled with Adam and binary
cross-entropy, its first step (tracing) is timed separately, and then ``--steps`` training
steps of one batch of 20 slices are timed. From the median step time it prints seconds
per epoch and per fold for the profile's data: a fold's training set is 3/4 of the
specimens (9 of 12 demo phantoms, 13 of 17 Hear-EU specimens), each contributing ``grid``
slices per view; a cascade trains three stages.

    .venv/bin/python benchmarks/bench_training.py                  # both profiles
    .venv/bin/python benchmarks/bench_training.py --profiles demo --steps 20

The paper profile's per-fold figure assumes the epoch count given by ``--paper-epochs``
(default 50: early stopping ended the authors' runs well before the 200-epoch limit; the
paper does not say when), so read it as an order of magnitude.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def time_backbone(backbone: str, profile_name: str, steps: int, threads: int | None) -> dict:
    """Median seconds per training step (batch of the profile's size) for one backbone."""
    import numpy as np

    from innerear.nets.backbones import build_for_profile
    from innerear.settings.profiles import get_profile
    from innerear.training.fit import compile_for_training
    from innerear.nets.backend import set_seed, set_threads

    if threads:
        set_threads(threads)
    profile = get_profile(profile_name)
    set_seed(0)
    model = build_for_profile(backbone, 1, profile)  # the network the profile trains
    compile_for_training(model, profile.learning_rate, profile.loss)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(profile.batch_size, profile.grid, profile.grid, 1)).astype("float32")
    y = (rng.random(x.shape) < 0.05).astype("float32")
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    return {"backbone": backbone, "profile": profile_name, "grid": profile.grid,
            "base_filters": profile.base_filters, "params": int(model.count_params()),
            "batch": profile.batch_size, "first_step_s": first, "step_s": statistics.median(times),
            "steps_timed": steps, "all_steps_s": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", default="demo,paper")
    ap.add_argument("--backbones", default="unet,res_unet,se_unet")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 demo, 3 paper)")
    ap.add_argument("--threads", type=int, default=None, help="backend threads (default: all cores)")
    ap.add_argument("--paper-epochs", type=int, default=50)
    ap.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/bench_training.json)")
    args = ap.parse_args()

    from innerear.settings.profiles import get_profile

    rows = []
    for profile_name in args.profiles.split(","):
        profile = get_profile(profile_name)
        n_train = math.ceil(profile.phantoms.n_specimens * (profile.n_folds - 1) / profile.n_folds)
        steps_per_epoch = math.ceil(n_train * profile.grid / profile.batch_size)
        epochs = profile.max_epochs if profile_name != "paper" else args.paper_epochs
        for backbone in args.backbones.split(","):
            steps = args.steps or (20 if profile.grid <= 64 else 3)
            r = time_backbone(backbone, profile_name, steps, args.threads)
            r.update(train_volumes=n_train, steps_per_epoch=steps_per_epoch, epoch_s=r["step_s"] * steps_per_epoch,
                     epochs_assumed=epochs, cascade_fold_s=3 * (r["step_s"] * steps_per_epoch * epochs + r["first_step_s"]))
            rows.append(r)
            print(f"  {profile_name:5s} {backbone:8s} step {r['step_s']:.3f} s (first {r['first_step_s']:.1f} s)",
                  flush=True)

    print(f"\nTraining speed on this machine ({os.cpu_count()} CPU cores), batch of 20 slices, Adam, BCE")
    head = ("profile", "backbone", "slice", "params", "s/step", "first step s", "steps/epoch", "s/epoch",
            "epochs", "cascade per fold")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for r in rows:
        fold = r["cascade_fold_s"]
        fold_txt = f"{fold / 60:.1f} min" if fold < 7200 else f"{fold / 3600:.1f} h"
        print(f"| {r['profile']} | {r['backbone']} | {r['grid']}² | {r['params']:,} | {r['step_s']:.3f} | "
              f"{r['first_step_s']:.1f} | {r['steps_per_epoch']} | {r['epoch_s']:.1f} | {r['epochs_assumed']} | "
              f"{fold_txt} |")
    print("\ncascade per fold = 3 stages x (epochs x s/epoch + first step); prediction not included")
    from pathlib import Path

    from innerear.reporting.performance import results_path, write_record

    path = write_record(args.json or results_path(Path(__file__).resolve().parents[1], "bench_training"), "bench_training",
                        {"rows": rows, "settings": {"paper_epochs_assumed": args.paper_epochs,
                                                    "threads": args.threads or "backend default"}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
