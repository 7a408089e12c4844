"""Accuracy and speed of :func:`innerear.metrics.cochlea.measure_cochlea` on phantoms.

**Clean labels.** For ``--n`` phantoms (seed ``--seed``) at each ``--binnings`` (voxels
16.3 / 19.5 um x binning), the cochlea label (``structures == 1``) is measured and compared
with the generator's own spiral (``meta["cochlea_truth"]``): duct length along the lateral
wall and centreline length (relative error, %), number of turns (difference), and the seconds
one measurement takes.

**Touching turns.** At clinical cone-beam CT resolution the bone between two turns is thinner
than a voxel and the turns touch in the label. For ``--n`` phantoms scanned as CBCT cochlea
crops (``Acquisition(style="cbct", centre="cochlea")``) at each ``--touching-voxels``, three
labels are measured (``--conditions``):

* ``cbct``: the crop's own label (turns touch where the voxel grid closes the bone between
  them: at 0.3 mm);
* ``closed``: the label with the bone between turns thinner than 0.4 mm filled (a closing
  with a 0.2 mm ball, at least one voxel): the turns touch, the lateral wall is the truth's;
* ``dilated``: the label grown by one voxel (6-connected): an over-grown label such as an
  expert draws on a blurred scan. Its lateral wall lies about a voxel outside the truth's, so
  its duct length reads long by about ``voxel x 2 pi x turns`` whatever the method;
* ``ragged`` (0.125 mm only): ``dilated`` plus a random half of the next voxel shell, a
  rough surface with tens of tunnels, like an expert label painted slice by slice.

Each row counts the turn contacts the label really has (``true_contacts``: 26-neighbour voxel
pairs whose nearest points on the generator's spiral lie more than half a turn apart)
and what the measurement says (``touching_turns``, ``contact_voxels``, ``warning``). Prints
tables and writes ``benchmarks/results/bench_cochlea.json`` (an empty ``--binnings`` or
``--touching-voxels`` keeps that part of the existing file).

Usage::

    .venv/bin/python benchmarks/bench_cochlea.py [--n 8] [--binnings 5,15] [--seed 11]
        [--touching-voxels 0.1,0.125,0.2,0.3] [--conditions cbct,closed,dilated,ragged]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from innerear.data import phantom as ph  # noqa: E402
from innerear.metrics.cochlea import METHOD, measure_cochlea  # noqa: E402
from innerear.settings.profiles import PhantomSettings  # noqa: E402
from innerear.settings.structures import COCHLEA  # noqa: E402

CONDITIONS = ("cbct", "closed", "dilated", "ragged")
RAGGED_VOXEL_MM = 0.125  # the expert label's voxel size
CLOSED_MM = 0.2  # radius of the ball that closes the bone between turns (gaps up to twice this)
CROP_FOV_MM = 10.0
GOAL_TURNS, GOAL_LENGTH_PCT = 0.25, 5.0  # the goal for touching turns


# =========================================================================== measuring
def _measure(mask: np.ndarray, affine: np.ndarray, truth: dict) -> dict:
    """Measures of one label against the truth, or why it was refused."""
    t0 = time.perf_counter()
    try:
        m = measure_cochlea(mask, affine)
    except ValueError as err:  # a cochlea whose turns merged into one blob may be refused: say so
        return {"refused": str(err), "tunnels": None, "duct_length_mm": None, "turns": None,
                "centreline_length_mm": None, "seconds": time.perf_counter() - t0, "duct_length_error_pct": None,
                "centreline_error_pct": None, "turns_error": None, "touching_turns": None, "contact_voxels": None,
                "merged_turns": None, "warning": None}
    return {"refused": None, "tunnels": m.tunnels, "duct_length_mm": m.duct_length_mm, "turns": m.turns,
            "centreline_length_mm": m.centreline_length_mm, "seconds": time.perf_counter() - t0,
            "duct_length_error_pct": 100 * (m.duct_length_mm / truth["lateral_wall_length_mm"] - 1),
            "centreline_error_pct": 100 * (m.centreline_length_mm / truth["centreline_length_mm"] - 1),
            "turns_error": m.turns - truth["turns"], "touching_turns": m.touching_turns,
            "contact_voxels": m.contact_voxels, "merged_turns": m.merged_turns, "warning": m.warning}


def measure_one(index: int, seed: int, binning: int) -> dict:
    """One phantom's clean label at one binning: truth, measures, errors and seconds."""
    sp = ph.generate_specimen(index, seed, PhantomSettings(n_specimens=index + 1, binning=binning))
    truth = sp.meta["cochlea_truth"]
    return {"index": index, "binning": binning, "voxel_mm": sp.meta["voxel_mm"], "side": sp.meta["side"],
            "truth": truth, **_measure(sp.structures == COCHLEA, sp.affine, truth)}


def _stats(rows: list[dict], key: str) -> dict:
    v = np.array([r[key] for r in rows], float)
    return {"max_abs": float(np.abs(v).max()), "mean": float(v.mean())} if len(v) else {"max_abs": None, "mean": None}


def summary(rows: list[dict], group: str = "binning") -> dict:
    """Per ``group``: how many cochleae were measured, found touching (contacts between turns
    cut before the duct was ordered), warned about (turns doubtful) or refused (not a spiral),
    the worst and mean errors of the measured ones without a warning (what the method vouches
    for), and the median seconds."""
    out = {}
    for g in sorted({r[group] for r in rows}):
        sel = [r for r in rows if r[group] == g]
        measured = [r for r in sel if r["refused"] is None]
        sure = [r for r in measured if r["warning"] is None]
        vox = [r["voxel_mm"] for r in sel]
        out[str(g)] = {"voxel_mm": [min(vox), max(vox)], "n": len(sel),
                       "touching": sum(1 for r in measured if r["touching_turns"]),
                       "warned": len(measured) - len(sure), "refused": len(sel) - len(measured)}
        for k in ("duct_length_error_pct", "centreline_error_pct", "turns_error"):
            out[str(g)][k] = _stats(sure, k)
        out[str(g)]["median_seconds"] = float(np.median([r["seconds"] for r in sel]))
    return out


# =========================================================================== touching turns
def crop_specimen(index: int, seed: int, voxel_mm: float) -> ph.Specimen:
    """Phantom ``index`` scanned as a clinical cone-beam CT crop of its cochlea."""
    acq = ph.Acquisition(style="cbct", voxel_mm=voxel_mm, fov_mm=CROP_FOV_MM, centre="cochlea", units="hu")
    return ph.generate_specimen(index, seed, PhantomSettings(n_specimens=index + 1, binning=5), acquisition=acq)


def _ball(radius: int) -> np.ndarray:
    g = np.indices((2 * radius + 1,) * 3) - radius
    return (g ** 2).sum(0) <= radius * radius + 0.5


def touching_label(label: np.ndarray, condition: str, voxel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """The cochlea label of a crop made to touch as ``condition`` says (module docstring)."""
    if condition == "cbct":
        return label
    if condition == "closed":
        r = max(1, round(CLOSED_MM / voxel_mm))
        pad = r + 1
        return ndimage.binary_closing(np.pad(label, pad), _ball(r))[(slice(pad, -pad),) * 3]
    grown = ndimage.binary_dilation(label)
    if condition == "dilated":
        return grown
    if condition == "ragged":
        shell = ndimage.binary_dilation(grown) & ~grown
        return grown | (shell & (rng.random(label.shape) < 0.5))
    raise ValueError(f"unknown condition {condition!r}; one of {CONDITIONS}")


def spiral_lookup(index: int, seed: int, sp: ph.Specimen) -> dict:
    """The generator's cochlear tube in world mm: its centreline samples (every ~0.1 mm, a
    KD-tree), their elliptical sections (frames, semi-axes) and each sample's unwrapped angle
    about the modiolar axis (rad) and distance along the centreline (mm)."""
    from scipy.spatial import cKDTree

    from innerear.data.phantom.anatomy import build_anatomy
    from innerear.data.phantom.geometry import orthonormal
    from innerear.data.phantom.params import draw_params

    p = draw_params(index, seed, PhantomSettings(n_specimens=index + 1, binning=5))
    anatomy = build_anatomy(p.anatomy, seed, index, 0.1)
    tube = next(t for t in anatomy.tubes if t.name == "cochlea")
    axis = np.asarray(anatomy.info["modiolar_axis"], float)
    axis /= np.linalg.norm(axis)
    e1 = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    rel = tube.pts - np.asarray(anatomy.info["modiolus_base"], float)
    lin = np.asarray(sp.meta["anatomy_to_world"], float)
    scale = float(np.cbrt(abs(np.linalg.det(lin))))
    posed = tube.transformed(lin, scale)
    along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(posed.pts, axis=0), axis=1))])
    return {"tree": cKDTree(posed.pts), "pts": posed.pts, "frames": orthonormal(posed.frames),
            "inv2": 1.0 / np.maximum(posed.semi, 1e-6) ** 2, "along": along,
            "angle": np.unwrap(np.arctan2(rel @ np.cross(axis, e1), rel @ e1))}


def _nearest_section(world: np.ndarray, lookup: dict, k: int = 40, chunk: int = 20000) -> np.ndarray:
    """For each point, the centreline sample whose elliptical section holds it best (smallest
    normalised distance among the ``k`` nearest samples): its own turn, even at the edge of a
    wide section whose neighbouring turn's centreline lies nearer."""
    out = np.empty(len(world), np.int64)
    k = min(k, len(lookup["pts"]))
    for i in range(0, len(world), chunk):
        x = world[i:i + chunk]
        cand = lookup["tree"].query(x, k=k)[1]
        loc = np.einsum("nkij,nkj->nki", lookup["frames"][cand], x[:, None, :] - lookup["pts"][cand])
        q = np.einsum("nki,nki->nk", loc * loc, lookup["inv2"][cand])
        out[i:i + chunk] = cand[np.arange(len(x)), np.argmin(q, axis=1)]
    return out


def true_contacts(mask: np.ndarray, affine: np.ndarray, lookup: dict) -> int:
    """26-neighbour voxel pairs of ``mask`` (the label's connectivity) on two turns of the
    generator's spiral: their sections' samples lie more than half a turn and more than 3 mm
    apart along it (the distance keeps out the spiral's start, which may pass near the modiolar
    axis, where the angle about it is unsteady)."""
    from innerear.metrics.cochlea import neighbour_pairs

    idx, a, b = neighbour_pairs(mask)
    near = _nearest_section(idx @ affine[:3, :3].T + affine[:3, 3], lookup)
    angle, along = lookup["angle"][near], lookup["along"][near]
    return int(np.count_nonzero((np.abs(angle[a] - angle[b]) > math.pi) & (np.abs(along[a] - along[b]) > 3.0)))


def measure_touching(index: int, seed: int, voxel_mm: float, conditions: list[str]) -> list[dict]:
    """One phantom's CBCT crop at one voxel size, each condition's label measured."""
    sp = crop_specimen(index, seed, voxel_mm)
    truth = sp.meta["cochlea_truth"]
    lookup = spiral_lookup(index, seed, sp)
    rng = np.random.default_rng([seed, index, round(voxel_mm * 1000)])
    rows = []
    for cond in conditions:
        if cond == "ragged" and not math.isclose(voxel_mm, RAGGED_VOXEL_MM):
            continue
        mask = touching_label(sp.structures == COCHLEA, cond, voxel_mm, rng)
        rows.append({"condition": cond, "voxel_mm": sp.meta["voxel_mm"], "group": f"{cond} {voxel_mm:g} mm",
                     "index": index, "side": sp.meta["side"], "truth": truth,
                     "volume_mm3": float(np.count_nonzero(mask) * voxel_mm ** 3),
                     "true_contacts": true_contacts(mask, sp.affine, lookup), **_measure(mask, sp.affine, truth)})
    return rows


def touching_summary(rows: list[dict]) -> dict:
    """Per condition and voxel size: :func:`summary`, how many phantoms really had touching turns,
    and the errors over all measured phantoms (warned or not) with how many met the goal
    (:data:`GOAL_TURNS`, :data:`GOAL_LENGTH_PCT`)."""
    out = summary(rows, "group")
    for g, s in out.items():
        sel = [r for r in rows if r["group"] == g]
        measured = [r for r in sel if r["refused"] is None]
        s["with_true_contacts"] = sum(1 for r in sel if r["true_contacts"] > 0)
        s["all_turns_error"] = _stats(measured, "turns_error")
        s["all_duct_length_error_pct"] = _stats(measured, "duct_length_error_pct")
        s["within_goal"] = sum(1 for r in measured if abs(r["turns_error"]) <= GOAL_TURNS
                               and abs(r["duct_length_error_pct"]) <= GOAL_LENGTH_PCT)
        s["turns_within_goal"] = sum(1 for r in measured if abs(r["turns_error"]) <= GOAL_TURNS)
    return out


# =========================================================================== running
def _row_line(r: dict, key: str) -> str:
    t = r["truth"]
    head = f"| {r[key]} | {r['voxel_mm']:.3f} | {r['index']} | {r['side']} | {t['lateral_wall_length_mm']:.2f} | "
    if r["refused"] is not None:
        return head + f"refused: {r['refused']} |"
    extra = f" {r.get('true_contacts', '')} |" if "true_contacts" in r else ""
    return (head + f"{r['duct_length_mm']:.2f} | {r['duct_length_error_pct']:+.1f} | {t['turns']:.3f} | "
            f"{r['turns']:.3f} | {r['turns_error']:+.3f} | {r['tunnels']} | {r['contact_voxels']} |{extra} "
            f"{'yes' if r['warning'] else ''} | {r['seconds']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--binnings", default="5,15")
    ap.add_argument("--touching-voxels", default="0.1,0.125,0.2,0.3")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_cochlea.json")
    args = ap.parse_args(argv)
    from innerear.reporting.performance import read_record, write_record

    old = read_record(args.json) if args.json.exists() else None
    record = {"method": METHOD, "seed": args.seed}
    cols = ("| CDL_LW truth (mm) | measured | error % | turns truth | measured | error | tunnels | contact voxels |")
    if args.binnings:
        rows = []
        print("| binning | voxel (mm) | specimen | side " + cols + " warning | seconds |")
        print("| --- " * 14 + "|")
        for b in (int(x) for x in args.binnings.split(",")):
            for i in range(args.n):
                rows.append(measure_one(i, args.seed, b))
                print(_row_line(rows[-1], "binning"), flush=True)
        record.update(summary=summary(rows), rows=rows)
    elif old:
        record.update(summary=old["summary"], rows=old["rows"])
    if args.touching_voxels:
        rows = []
        print("\n| condition | voxel (mm) | specimen | side " + cols + " true contacts | warning | seconds |")
        print("| --- " * 15 + "|")
        conditions = args.conditions.split(",")
        for v in (float(x) for x in args.touching_voxels.split(",")):
            for i in range(args.n):
                for r in measure_touching(i, args.seed, v, conditions):
                    rows.append(r)
                    print(_row_line(r, "group"), flush=True)
        record.update(touching_goal={"turns": GOAL_TURNS, "duct_length_pct": GOAL_LENGTH_PCT},
                      touching_summary=touching_summary(rows), touching_rows=rows)
    elif old and "touching_rows" in old:
        record.update({k: old[k] for k in ("touching_goal", "touching_summary", "touching_rows")})
    write_record(args.json, "bench_cochlea", record)  # with the machine and versions (run_context)
    print(json.dumps({k: record[k] for k in ("summary", "touching_summary") if k in record}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
