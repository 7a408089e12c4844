"""Train, export and check the model shipped in ``innerear/models/phantom_cascade``.

Every figure in the model card comes from this script's own run:

1. write ``--n`` synthetic phantoms (demo phantom settings, seed 0);
2. train an AutoCas-U-Net (coronal -> sagittal -> axial) on fold 0 with ``innerear train``
   at ``--grid``, ``--epochs`` and ``--patience`` (the rest is the demo profile);
3. export the cascade into the package with its model card;
4. segment four *new* phantoms (seed 99) with ``innerear segment`` as a user would: two
   written as NRRD, two as folders of 2D TIFF slices (voxel size given with ``--spacing``),
   and record the Dice of each mask, on the scan's own grid, against the phantom's label,
   plus the command's wall time.

    .venv/bin/python tools/ship_model.py --work /tmp/ship          # about 15 min on 2 cores
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from innerear import io
from innerear.settings.profiles import get_profile
from innerear.settings.layout import stage_dir
from innerear.metrics import dice
from innerear.data.phantom import write_phantom_set
from innerear.inference.modelfolder import export_model
from innerear.settings.views import PAPER_ORDER

MODEL_DIR = Path(__file__).resolve().parents[1] / "innerear" / "models" / "phantom_cascade"


def innerear(*args: str) -> float:
    """Run the ``innerear`` command (this interpreter's); return its wall time."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "innerear", *args], check=True)
    return time.perf_counter() - t0


def check_on_new_phantoms(model: Path, work: Path, seed: int = 99, n: int = 4) -> dict:
    """Segment ``n`` unseen phantoms written as NRRD / TIFF folders; Dice on each scan's grid."""
    ph = work / f"new_phantoms_seed{seed}"
    write_phantom_set(ph, get_profile("demo").phantoms, seed=seed, n=n)
    results, commands = {}, []
    for i in range(n):
        image, spacing, affine = io.read_volume(ph / f"phantom_{i:03d}_image.nii.gz")
        label, _, _ = io.read_volume(ph / f"phantom_{i:03d}_label.nii.gz")
        out = work / f"mask{i}.nii.gz"
        for stale in (out, work / f"report{i}.json"):
            stale.unlink(missing_ok=True)
        if i % 2 == 0:
            scan = work / f"scan{i}.nrrd"
            io.write_volume(scan, image, affine)
            args = [str(scan), "-o", str(out), "--model", str(model), "--report", str(work / f"report{i}.json"),
                    "--quiet"]
            kind = "NRRD"
        else:
            scan = work / f"scan{i}_tiff"
            io.write_tiff_stack(scan, image)  # no voxel size in the files: given on the command line
            args = [str(scan), "--spacing", *(f"{s:g}" for s in spacing), "-o", str(out), "--model", str(model),
                    "--report", str(work / f"report{i}.json"), "--quiet"]
            kind = "TIFF folder"
        wall = innerear("segment", *args)
        mask, _, _ = io.read_volume(out)
        report = json.loads((work / f"report{i}.json").read_text())
        name = f"phantom_{i:03d} ({kind}, {'x'.join(map(str, image.shape))}, {spacing[0]:.4g} mm)"
        results[name] = {"dice": round(dice(mask, label), 3), "wall_s": round(wall, 1),
                         "inside_command_s": round(report["total_s"], 2)}
        commands.append("innerear segment " + " ".join(a if str(work) not in a else a.replace(str(work), "WORK")
                                                         for a in args))
        print(f"{name}: Dice {results[name]['dice']:.3f}, {wall:.1f} s", flush=True)
    return {"what": f"innerear segment on {n} phantoms it never saw (seed {seed}), NRRD and folders of TIFF "
                    "slices; Dice of the mask on each scan's own grid against its label",
            "commands": commands, "results": results,
            "mean_dice": round(float(np.mean([r["dice"] for r in results.values()])), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="scratch folder (phantoms, runs, test scans)")
    ap.add_argument("--n", type=int, default=20, help="phantoms to train and test on (fold 0 holds out 1/4)")
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--check-only", action="store_true", help="only segment the new phantoms with the shipped model")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.check_only:
        print(json.dumps(check_on_new_phantoms(MODEL_DIR, work), indent=2))
        return
    ph = work / "phantoms"
    write_phantom_set(ph, get_profile("demo").phantoms, seed=0, n=args.n, progress=True)
    train = ["train", str(ph), "--out", str(work / "run"), "--profile", "demo", "--fold", "0", "--backbone", "unet",
             "--order", ",".join(PAPER_ORDER), "--grid", str(args.grid), "--epochs", str(args.epochs),
             "--patience", str(args.patience)]
    train_s = innerear(*train)
    cascade = stage_dir(work / "run", "demo", "unet", 0, PAPER_ORDER)
    profile = get_profile("demo", grid=args.grid, max_epochs=args.epochs, patience=args.patience).to_dict()
    profile["phantoms"]["n_specimens"] = args.n  # the phantoms written above, not the demo book's count
    overrides = {"grid": args.grid, "max_epochs": args.epochs, "patience": args.patience}
    card = {
        "name": "phantom_cascade",
        "WARNING": "Trained on SYNTHETIC phantoms only (innerear.data.phantom), not on real micro-CT. Its output on "
                   "real scans is untested and must not be trusted without checking.",
        "description": "AutoCas-U-Net cascade (coronal -> sagittal -> axial, 2D U-Net backbone) for binary "
                       "inner-ear segmentation, trained with innerear's own pipeline.",
        "date": datetime.date.today().isoformat(),
        "data": {"kind": "SYNTHETIC phantoms", "generator": "innerear.phantom", "seed": 0, "n_specimens": args.n,
                 "settings": "demo profile phantoms (binning 8: 0.130 / 0.156 mm voxels)"},
        "exported_from": str(cascade).replace(str(work), "WORK"),  # no machine-specific path
        # the demo profile's settings with these overrides (not the demo book's own model)
        "training": {"profile": profile, "overrides_of_demo": overrides,
                     "fold": 0, "command": "innerear " + " ".join(train).replace(str(work), "WORK"),
                     "wall_s": round(train_s, 1)},
        "reproduce": f".venv/bin/python tools/ship_model.py --work WORK --n {args.n} --grid {args.grid} "
                     f"--epochs {args.epochs} --patience {args.patience}",
        "held_out_dice_note": f"Dice of each stage's post-processed mask against the label, both on the "
                              f"{args.grid}^3 prepared grid, mean over fold 0's held-out phantoms.",
    }
    staging = work / "model"
    export_model(cascade, staging, card)
    card["evaluation_new_phantoms"] = check_on_new_phantoms(staging, work)
    export_model(cascade, MODEL_DIR, card)
    print(f"exported to {MODEL_DIR}")


if __name__ == "__main__":
    main()
