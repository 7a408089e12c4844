"""Domain shift: how the segmenter does on scans unlike its training phantoms.

The shipped model (robust recipe, :mod:`innerear.training.robust`) is trained on one mixture of
acquisitions (:class:`innerear.training.robust.TrainingMixture`: 0.06-0.3 mm voxels, uint16 or float
units, artefacts up to 0.6). Each cell below is a combination it never saw: Hounsfield
units, voxels from 16 to 40 µm, cone-beam-CT cochlea crops, strong artefacts. For each
cell the script writes ``--n`` new phantoms (anatomy realism on, seed ``--seed``), each as a
NIfTI file in the cell's units, segments it with ``innerear segment``'s own function, and
scores the mask **on the scan's own grid** against the phantom's *clean* label (the label
noise of real manual labels is a training condition, not the yardstick):

* Dice of the inner-ear mask, and Dice per structure (cochlea, vestibule, canals; each
  voxel belongs to its nearest true structure, :func:`innerear.metrics.per_structure`);
* for a model with a structure label map, the Dice of each predicted structure label;
* the cochlear duct length and turns measured on the predicted cochlea against the truth.

Both models are scored: the shipped robust model and the paper recipe's model
(``--baseline``, default the earlier shipped 64³ grid model), side by side in one run.

    .venv/bin/python benchmarks/bench_domain_shift.py --model innerear/models/robust_cascade \
        --baseline innerear/models/phantom_cascade --n 2

writes ``benchmarks/results/domain_shift.json`` and prints the matrix.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "domain_shift.json"
GOAL_DICE = 0.85


@dataclass(frozen=True)
class Cell:
    """One held-out combination of style, voxel size, field of view and units."""

    name: str
    style: str
    voxel_mm: float
    fov_mm: float
    centre: str
    units: str
    artefacts: float  # 0..1, every artefact at this strength
    held_out: bool = True  # False: a reference row (the paper recipe's own training domain), not in the goal


REFERENCE = Cell("demo phantoms, uint16 (the paper recipe's training domain)", "demo", 0.0, 0.0, "labyrinth",
                 "uint16", 0.0, held_out=False)
CELLS = (
    Cell("CBCT cochlea crop, HU, 0.1 mm", "cbct", 0.10, 9.0, "cochlea", "hu", 0.9),
    Cell("CBCT cochlea crop, HU, 0.2 mm", "cbct", 0.20, 9.0, "cochlea", "hu", 0.9),
    Cell("CBCT cochlea crop, HU, 0.3 mm", "cbct", 0.30, 10.0, "cochlea", "hu", 0.9),
    Cell("CBCT block, HU, 0.3 mm", "cbct", 0.30, 30.0, "labyrinth", "hu", 0.9),
    Cell("micro-CT cochlea crop, uint16, 16 µm", "microct", 0.016, 8.0, "cochlea", "uint16", 0.9),
    Cell("micro-CT block, uint16, 25 µm", "microct", 0.025, 14.0, "labyrinth", "uint16", 0.9),
    Cell("micro-CT block, uint16, 40 µm", "microct", 0.040, 24.0, "labyrinth", "uint16", 0.9),
    Cell("micro-CT block, float, 0.1 mm", "microct", 0.10, 20.0, "labyrinth", "float", 0.9),
    REFERENCE,
)
QUICK = {0, 2, 6, 8}  # --quick: one CBCT crop, the coarse CBCT crop, a micro-CT block, the reference


def make_scan(cell: Cell, index: int, seed: int, folder: Path) -> tuple[Path, Path]:
    """Write phantom ``index`` of ``cell`` as a NIfTI scan with its truth, unless the folder
    already holds exactly that scan; return the scan's path and its record (JSON)."""
    from innerear.data import phantom as ph
    from innerear.settings.profiles import get_profile
    from innerear.io import write_json
    from innerear.data.phantom.acquisition import ARTEFACTS, Acquisition

    record = folder / f"phantom_{index:03d}.json"
    key = {"cell": asdict(cell), "index": index, "seed": seed, "version": ph.PHANTOM_VERSION}
    if record.exists():
        entry = json.loads(record.read_text())
        if entry.get("key") == key and all((folder / entry[k]).exists() for k in ("image", "label", "structures")):
            return folder / entry["image"], record
    if cell.style == "demo":  # the plain demo phantoms, as the paper recipe's model was trained on
        spec = ph.generate_specimen(index, seed, get_profile("demo").phantoms)
    else:
        acq = Acquisition(style=cell.style, voxel_mm=cell.voxel_mm, fov_mm=cell.fov_mm, centre=cell.centre,
                          units=cell.units, **{name: cell.artefacts for name in ARTEFACTS})
        spec = ph.generate_specimen(index, seed, get_profile("demo").phantoms, realism=ph.AnatomyRealism.full(),
                                    acquisition=acq)
    entry = ph.write_specimen(spec, folder)  # no label noise here: the label is the truth
    entry["key"] = key
    entry["seconds"] = spec.meta.get("seconds")
    write_json(record, entry)
    return folder / entry["image"], record


def read_truth(record: Path) -> dict:
    """The clean label, structure map and cochlea truth of a scan written by :func:`make_scan`."""
    from innerear.io import read_volume

    entry = json.loads(record.read_text())
    label = read_volume(record.parent / entry["label"])[0]
    structures = read_volume(record.parent / entry["structures"])[0]
    return {"label": np.asarray(label), "structures": np.asarray(structures), "shape": entry["shape"],
            "cochlea_truth": entry["meta"].get("cochlea_truth"), "seconds": entry.get("seconds")}


def _bbox(*masks: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    union = np.zeros(masks[0].shape, bool)
    for m in masks:
        union |= np.asarray(m) != 0
    if not union.any():
        return tuple(slice(0, 0) for _ in union.shape)
    idx = np.argwhere(union)
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + margin + 1, union.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def score(mask: np.ndarray, labels: np.ndarray | None, truth: dict, spacing, report: dict) -> dict:
    """Dice, per-structure Dice (and label-map Dice), cochlea measures against the truth."""
    from innerear.metrics import dice, per_structure

    box = _bbox(mask, truth["label"])
    m, t, s = mask[box], truth["label"][box], truth["structures"][box]
    out = {"dice": dice(m, t), **{k: v for k, v in per_structure(m, s, spacing).items() if k.startswith("dice_")}}
    if labels is not None:
        lab = labels[box]
        for code, name in ((1, "cochlea"), (2, "vestibule"), (3, "canals")):
            if np.any(s == code):
                out[f"label_dice_{name}"] = dice(lab == code, s == code)
    coch = report.get("cochlea") or {}
    true_c = truth.get("cochlea_truth") or {}
    if coch.get("duct_length_mm") is not None and true_c.get("lateral_wall_length_mm"):
        out["cdl_error_pct"] = 100.0 * (coch["duct_length_mm"] / true_c["lateral_wall_length_mm"] - 1.0)
        out["turns_error"] = coch["turns"] - true_c["turns"]
    out["seconds"] = report.get("total_s")
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def run_model(model_dir: Path, scans: list[tuple[Path, Path]]) -> list[dict]:
    """Segment every scan with one model (loaded once); score each."""
    from innerear.inference import segment as sg

    cascade = sg.load_model_dir(model_dir, reuse=False)
    rows = []
    for path, record in scans:
        labels_out: dict = {}
        mask, _, report = sg.segment_scan(path, cascade=cascade, labels_out=labels_out)
        labels = labels_out.get("labels")
        spacing = report["input"]["spacing_mm"]
        rows.append(score(mask, labels, read_truth(record), spacing, report))
        del mask, labels, labels_out
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean, minimum and count of every numeric field over a cell's scans (text fields are skipped)."""
    keys = sorted({k for r in rows for k in r})
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and r.get(k) is not None]
        out[k] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "n": len(vals)} if vals else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "innerear" / "models" / "robust_cascade")
    ap.add_argument("--baseline", type=Path, default=ROOT / "innerear" / "models" / "phantom_cascade")
    ap.add_argument("--n", type=int, default=2, help="phantoms per cell")
    ap.add_argument("--seed", type=int, default=7001, help="phantom seed (training used 0)")
    ap.add_argument("--quick", action="store_true", help="three cells only")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "domain_shift",
                    help="scratch folder for the scans (reused: a cell's scans are rewritten each run)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--generate-only", action="store_true", help="write the cells' scans, segment nothing")
    args = ap.parse_args()
    work = args.work
    cells = [c for i, c in enumerate(CELLS) if not args.quick or i in QUICK]
    models = {"robust": args.model, "paper recipe": args.baseline}
    results = []
    t_all = time.perf_counter()
    for ci, cell in enumerate(cells):
        folder = work / f"cell{ci}"
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        scans = [make_scan(cell, i, args.seed + 100 * ci, folder) for i in range(args.n)]
        gen_s = time.perf_counter() - t0
        records = [json.loads(r.read_text()) for _, r in scans]
        shapes = [r["shape"] for r in records]
        print(f"{cell.name}: {args.n} scans {shapes} ready ({gen_s:.0f} s)", flush=True)
        if args.generate_only:
            continue
        voxels = [float(r["spacing"][0]) for r in records]
        fovs = [float(np.mean(np.multiply(r["shape"], r["spacing"]))) for r in records]
        entry = {"cell": asdict(cell), "n": args.n, "shapes": shapes, "voxel_mm": [min(voxels), max(voxels)],
                 "fov_mm": [min(fovs), max(fovs)], "models": {}}
        for name, model in models.items():
            rows = run_model(model, scans)
            entry["models"][name] = {"per_scan": rows, "summary": summarise(rows)}
            s = entry["models"][name]["summary"]
            print(f"{cell.name:40s} {name:13s} Dice {s['dice']['mean']:.3f} (min {s['dice']['min']:.3f})"
                  + "".join(f"  {k[5:]} {s[k]['mean']:.3f}" for k in ("dice_cochlea", "dice_vestibule", "dice_canals")
                            if s.get(k)), flush=True)
        results.append(entry)
    if args.generate_only:
        return 0
    robust_min = [e["models"]["robust"]["summary"]["dice"]["mean"] for e in results if e["cell"]["held_out"]]
    doc = {
        "goal_dice": GOAL_DICE,
        "what": "Dice on held-out acquisitions (style x voxel size x field of view x units), on each scan's own "
                "grid against the phantom's clean label; anatomy realism on; strong artefacts",
        "goal": f"robust model: mean Dice >= {GOAL_DICE} in every held-out cell",
        "goal_met": bool(all(v >= GOAL_DICE for v in robust_min)),
        "models": {k: str(v.relative_to(ROOT) if v.is_relative_to(ROOT) else v) for k, v in models.items()},
        "seed": args.seed,
        "cells": results,
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    from innerear.reporting.performance import write_record

    write_record(args.out, "domain_shift", doc)
    print(f"wrote {args.out} ({doc['seconds']:.0f} s); goal met: {doc['goal_met']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
