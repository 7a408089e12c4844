"""Train, export and describe the segmenter shipped in ``innerear/models/robust_cascade``.

Every figure in its model card comes from this script or from the domain-shift benchmark:

    .venv/bin/python tools/ship_robust.py train --work WORK     # innerear train --recipe robust (resumable)
    .venv/bin/python tools/ship_robust.py export --work WORK    # into the package, + the speed check
    .venv/bin/python tools/ship_robust.py speed --work WORK     # the speed check again, into the card
    .venv/bin/python benchmarks/bench_domain_shift.py           # the matrix (benchmarks/results/domain_shift.json)
    .venv/bin/python benchmarks/bench_clinical.py --part matrix # the clinical CBCT matrix (clinical_matrix.json)
    .venv/bin/python benchmarks/bench_clinical.py --part ablation --v1-tree V1 \
        --model before=OLD_MODEL --model shipped=innerear/models/robust_cascade   # clinical_ablation.json
    .venv/bin/python tools/ship_robust.py card                  # the matrices, ablation and limits into the card
    .venv/bin/python tools/update_readme.py                     # the matrix into README.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from weights_license import WEIGHTS_LICENSE  # tools/weights_license.py (this script's folder)

MODEL_DIR = ROOT / "innerear" / "models" / "robust_cascade"
MATRIX = ROOT / "benchmarks" / "results" / "domain_shift.json"
CLINICAL = {part: ROOT / "benchmarks" / "results" / f"clinical_{part}.json" for part in ("matrix", "ablation")}


def innerear(*args: str) -> float:
    """Run the ``innerear`` command (this interpreter's); return its wall time."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "innerear", *args], check=True)
    return time.perf_counter() - t0


def cmd_train(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    wall = innerear("train", "--recipe", "robust", "--out", str(work / "robust"))
    (work / "train_wall.json").write_text(json.dumps({"wall_s": round(wall, 1)}))


def speed_check(model: Path, work: Path, runs: int = 3) -> dict:
    """``innerear segment`` on a 30 mm block at the model's voxel size: wall time with start-up."""
    from innerear.data import phantom as ph
    from innerear.settings.profiles import get_profile

    from innerear.data.phantom.acquisition import Acquisition
    from innerear.inference.modelfolder import read_model_folder

    voxel = read_model_folder(model).spec.voxel_mm

    acq = Acquisition(style="microct", voxel_mm=voxel, fov_mm=30.0, centre="labyrinth", units="uint16",
                      correlated_noise=0.3, rings=0.3, cupping=0.3)
    folder = work / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    spec = ph.generate_specimen(0, 4242, get_profile("demo").phantoms, realism=ph.AnatomyRealism.full(),
                                acquisition=acq)
    scan = folder / ph.write_specimen(spec, folder)["image"]
    walls, inside = [], []
    for i in range(runs):
        out, report = folder / f"mask{i}.nii.gz", folder / f"report{i}.json"
        for stale in (out, report):
            stale.unlink(missing_ok=True)
        walls.append(innerear("segment", str(scan), "-o", str(out), "--model", str(model), "--report", str(report),
                              "--quiet"))
        inside.append(json.loads(report.read_text())["total_s"])
    from innerear.reporting.performance import run_context

    ctx = run_context()
    return {"measured": f"{ctx['date'][:10]} on {ctx['machine']['cpu_count']} CPU(s) ({ctx['machine']['cpu']})",
            "what": f"innerear segment on a 30 mm block at the model's voxel size ({voxel} mm, "
                    f"{'x'.join(map(str, spec.image.shape))} voxels, uint16), wall time including start-up",
            "runs": runs, "median_wall_s": round(statistics.median(walls), 1),
            "median_inside_command_s": round(statistics.median(inside), 2), "wall_s": [round(w, 1) for w in walls]}


def cmd_export(work: Path) -> None:
    from innerear.training.robust import get_recipe
    from innerear.inference.modelfolder import export_model

    recipe = get_recipe("robust")
    last = work / "robust" / "run" / Path(*recipe.order)
    train_wall = json.loads((work / "train_wall.json").read_text())["wall_s"] if (work / "train_wall.json").exists() \
        else None
    card = {
        "name": "robust_cascade",
        "WARNING": "Trained on SYNTHETIC phantoms only (innerear.data.phantom), never on real scans. Check every mask.",
        "license": WEIGHTS_LICENSE,
        "description": "AutoCas-U-Net cascade (coronal -> sagittal -> axial, 2D U-Nets) in physical units: "
                       f"scans are resampled to {recipe.voxel_mm} mm voxels and normalised per scan by their "
                       f"{recipe.normalizer[0]}th/{recipe.normalizer[1]}th percentiles; the networks output "
                       "background, cochlea, vestibule and semicircular canals.",
        "date": datetime.date.today().isoformat(),
        "data": {"kind": "SYNTHETIC phantoms", "generator": "innerear.phantom", "seed": recipe.seed,
                 "n_specimens": recipe.n_phantoms, "anatomy_realism": "AnatomyRealism.full()",
                 "acquisitions": "drawn from the recipe's mixture (see recipe.mixture)"},
        "training": {"command": "innerear train --recipe robust --out WORK/robust", "wall_s": train_wall},
        "reproduce": "see tools/ship_robust.py",
    }
    staging = work / "model"
    export_model(last, staging, card)
    card["speed"] = speed_check(staging, work)
    export_model(last, MODEL_DIR, card)
    print(json.dumps(card["speed"], indent=2))
    print(f"exported to {MODEL_DIR}")


def cmd_speed(work: Path) -> None:
    """The speed check of the shipped model again (after a change to the engine), into its card."""
    from innerear.io import write_json

    card_path = MODEL_DIR / "model_card.json"  # provenance only: the loader never reads it
    card = json.loads(card_path.read_text())
    card["speed"] = speed_check(MODEL_DIR, work)
    write_json(card_path, card)
    print(json.dumps(card["speed"], indent=2))


def limits(record: dict) -> list[str]:
    """The model's limits in plain words; the ones that depend on results are computed."""
    goal = record.get("goal_dice", 0.85)
    out = [
        "Trained only on synthetic phantoms; real anatomy varies in ways the generator does not draw "
        "(malformations, implants, otosclerosis, fractures, post-operative changes).",
        "One inner ear per scan: a scan holding both ears or a whole head gives the larger labyrinth only.",
        "The scan must show the labyrinth as dark lumen in bright bone (CT-like contrast); MRI is out of scope.",
    ]
    for e in record["cells"]:
        if not e["cell"].get("held_out", True):
            continue
        s = e["models"]["robust"]["summary"]
        if s["dice"]["mean"] < goal:
            out.append(f"Below the goal (Dice {goal}) on {e['cell']['name']}: mean Dice {s['dice']['mean']:.3f}.")
        weak = {k[5:]: v["mean"] for k, v in s.items() if k.startswith("dice_") and v and v["mean"] < goal}
        if weak:
            out.append(f"{e['cell']['name']}: the whole-ear mask reaches Dice {s['dice']['mean']:.3f}, but per "
                       "structure " + ", ".join(f"{k} only {v:.3f}" for k, v in weak.items())
                       + "; the predicted structure is incomplete there, so its volume (and, for the cochlea, the duct "
                       "length and turns) must not be trusted: per-scan errors in benchmarks/results/domain_shift.json.")
    return out


def clinical_limits(matrix: dict | None, model: str = "shipped") -> list[str]:
    """The clinical CBCT matrix's cells below its goal, in plain words (computed)."""
    if matrix is None:
        return ["Not measured on the clinical CBCT matrix (benchmarks/results/clinical_matrix.json is absent)."]
    out = []
    for e in matrix["cells"]:
        s = e["models"][model]["summary"]
        coch = (s.get("dice_cochlea") or {"mean": 0.0})["mean"]
        if s["dice"]["mean"] < 0.85 or coch < 0.80:
            out.append(f"Clinical CBCT, {e['cell']['name']}: mean Dice {s['dice']['mean']:.3f}, cochlea {coch:.3f} "
                       "(goal 0.85 / 0.80); treat the cochlea's volume, duct length and turns there with care.")
    out.append("Never checked on a real scan by this project: a real clinical CBCT cochlea defeated the model shipped "
               "before this one (Dice 0.04 as stored, 0.26 mirrored); the maintainers measure real scans with "
               "benchmarks/bench_real.py.")
    return out


def _summary_means(record: dict) -> list[dict]:
    return [{"cell": e["cell"]["name"], "n": e.get("n"),
             **{m: {k: (v["mean"] if v else None) for k, v in r["summary"].items() if k.startswith("dice")}
                for m, r in e.get("models", {}).items()}} for e in record["cells"]]


def cmd_card() -> None:
    from innerear.reporting.performance import read_record

    record = read_record(MATRIX)
    if record is None:
        raise SystemExit(f"{MATRIX} missing: run benchmarks/bench_domain_shift.py first")
    card_path = MODEL_DIR / "model_card.json"  # provenance only: the loader never reads it
    card = json.loads(card_path.read_text())
    card["domain_shift"] = {
        "what": record["what"], "goal": record["goal"], "goal_met": record["goal_met"], "seed": record["seed"],
        "cells": [{"cell": e["cell"]["name"], "n": e["n"],
                   **{m: {k: (v["mean"] if v else None) for k, v in r["summary"].items() if k.startswith("dice")}
                      for m, r in e["models"].items()}} for e in record["cells"]],
        "source": "benchmarks/results/domain_shift.json",
    }
    clinical = {part: read_record(path) for part, path in CLINICAL.items()}
    for part, rec in clinical.items():
        if rec is not None:
            card[f"clinical_{part}"] = {"goal": rec.get("goal"), "goal_met": rec.get("goal_met"), "seed": rec["seed"],
                                        "cells": _summary_means(rec), "source": f"benchmarks/results/clinical_{part}.json"}
    card["limits"] = limits(record) + clinical_limits(clinical["matrix"])
    from innerear.io import write_json

    write_json(card_path, card)
    print(f"updated {card_path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("train", "export", "speed", "card"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/ship_robust"))
    args = ap.parse_args()
    if args.step == "train":
        cmd_train(args.work)
    elif args.step == "export":
        cmd_export(args.work)
    elif args.step == "speed":
        cmd_speed(args.work)
    else:
        cmd_card()


if __name__ == "__main__":
    main()
