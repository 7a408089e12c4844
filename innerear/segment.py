"""Segment your own scan with a trained cascade.

:func:`segment_scan` reads a scan in any format :func:`innerear.io.read_volume` knows,
prepares it exactly as the training volumes were prepared (``preprocess.to_canonical`` and
``preprocess.resample_image`` to the cascade's grid: the memory-bounded cubic B-spline of
:mod:`innerear.resample`, reading an uncompressed NIfTI scan memory-mapped, slab by slab),
runs the engine, :meth:`innerear.cascade.Cascade.predict` (default ``"fast"`` mode, as
everywhere), and maps the last stage's probabilities back
onto the scan's own grid: every scan voxel's centre is carried through the world frame into
the prepared grid (``inv(prepared_affine) @ scan_affine``), the probability map is sampled
there by linear interpolation (in slabs, to bound memory), thresholded at 0.5, and the
largest connected component (:func:`innerear.metrics.largest_component`, the cascade's
connectivity) is kept. The mask therefore has the scan's shape and affine.

:func:`segment_to_files` adds the command line's checks and writes the mask (NIfTI, NRRD or
MetaImage by extension), optionally an STL surface and a JSON report, all or nothing.

The shipped model (``innerear/models/phantom_cascade``) was trained on the project's
SYNTHETIC phantoms only; see its ``model_card.json``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from .io import (
    VOXEL_MM_RANGE,
    VolumeError,
    atomic_path,
    check_voxel_size,
    check_writable,
    read_volume,
    spacing_source,
    temp_suffix,
    volume_format,
    write_volume_to,
)
from .metrics import largest_component
from .views import ORIENTATIONS

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "phantom_cascade"
#: inner-ear volumes (mm³) a segmentation may have; :func:`export_model` writes it into every
#: model card (``plausible_inner_ear_volume_mm3``), and it applies to folders whose card states none
PLAUSIBLE_VOLUME = {
    "min": 20.0,
    "max": 1000.0,
    "source": ("Generous bounds, not a normal range: below 20 mm^3 is less than the scala tympani alone in "
               "the smallest of 30 human temporal bones measured by micro-CT (23-50 uL, mean 34.2 uL; "
               "Dhanasingh et al. 2021, https://pmc.ncbi.nlm.nih.gov/articles/PMC8514755/), and the whole "
               "cochlear perilymph space is about 93 uL (Ekdale 2016, micro-CT); 1000 mm^3 (1 mL) is several "
               "times a whole labyrinth (cochlea, vestibule and semicircular canals), so a larger mask has "
               "grown into bone, air cells or the background. tests/test_refusals.py checks that the "
               "project's phantoms lie within it."),
}


class SegmentError(ValueError):
    """A problem with a model folder or an output path; the message names it."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")


# --------------------------------------------------------------------------- models
def find_cascade(model_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding ``cascade.json``: ``model_dir`` itself, or its only descendant
    holding one (so the ``--out`` folder of ``innerear train`` works). Default: the shipped model."""
    model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL
    if not model_dir.is_dir():
        raise SegmentError(model_dir, "model folder not found")
    if (model_dir / "cascade.json").is_file():
        return model_dir
    found = sorted(p.parent for p in model_dir.rglob("cascade.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise SegmentError(model_dir, "model folder incomplete: no cascade.json in it")
    raise SegmentError(model_dir, f"holds {len(found)} cascades; pass one of them, e.g. {found[0]}")


def check_model_dir(model_dir: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Validate a model folder without loading the networks: ``(folder, cascade spec)``.

    Raises :class:`SegmentError` naming the missing or broken file.
    """
    folder = find_cascade(model_dir)
    spec_path = folder / "cascade.json"
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as exc:
        raise SegmentError(spec_path, f"model folder incomplete: cascade.json unreadable ({exc})") from exc
    missing = [k for k in ("stages", "normalizer", "grid") if k not in spec]
    if missing or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise SegmentError(spec_path, f"model folder incomplete: cascade.json lacks {missing or ['stages']}")
    if not {"mean", "std"} <= set(spec["normalizer"]):
        raise SegmentError(spec_path, "model folder incomplete: cascade.json's normalizer lacks mean/std")
    for rel in spec["stages"]:
        stage = (folder / rel).resolve()
        for name in ("best.keras", "stage.json"):
            if not (stage / name).is_file():
                raise SegmentError(stage / name, "model folder incomplete: file missing")
        try:
            view = json.loads((stage / "stage.json").read_text())["view"]
        except (OSError, ValueError, KeyError) as exc:
            raise SegmentError(stage / "stage.json", f"model folder incomplete: no stage view ({exc})") from exc
        if view not in ORIENTATIONS:
            raise SegmentError(stage / "stage.json", f"unknown stage view {view!r}")
    check_model_consistency(folder, spec)
    return folder, spec


def check_model_consistency(folder: Path, spec: dict) -> None:
    """Refuse a model folder whose files disagree: ``cascade.json`` against ``model_card.json``
    (grid, order, backbone, fold, normaliser) and against each stage's ``stage.json`` (view,
    stage number, input channels, grid, backbone, fold). Raises :class:`SegmentError` naming
    the file, the field and both values."""
    spec_path = folder / "cascade.json"

    def differ(path: Path, key: str, theirs, ours) -> None:
        if theirs is not None and ours is not None and _jsonable(theirs) != _jsonable(ours):
            raise SegmentError(path, f"model folder inconsistent: {key} is {theirs!r} here but {ours!r} in {spec_path}")

    card_path = folder / "model_card.json"
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as exc:
            raise SegmentError(card_path, f"model card unreadable ({exc})") from exc
        for key in ("grid", "order", "backbone", "fold", "normalizer"):
            differ(card_path, key, card.get(key), spec.get(key))
        differ(card_path, "training profile grid", card.get("training", {}).get("profile", {}).get("grid"),
               spec.get("grid"))
    order = spec.get("order")
    if order is not None and len(order) != len(spec["stages"]):
        raise SegmentError(spec_path, f"model folder inconsistent: {len(spec['stages'])} stages but order {order}")
    for k, rel in enumerate(spec["stages"]):
        path = (folder / rel).resolve() / "stage.json"
        info = json.loads(path.read_text())
        differ(path, "view", info.get("view"), order[k] if order else None)
        for key, ours in (("stage", k + 1), ("channels", k + 1), ("grid", spec.get("grid")),
                          ("backbone", spec.get("backbone")), ("fold", spec.get("fold"))):
            differ(path, key, info.get(key), ours)


def _jsonable(value):
    return json.loads(json.dumps(value))


def read_model_card(folder: str | os.PathLike) -> dict:
    """The model card next to ``cascade.json`` (``model_card.json``), or a summary of the stages."""
    folder = Path(folder)
    card = folder / "model_card.json"
    if card.is_file():
        return json.loads(card.read_text())
    spec = json.loads((folder / "cascade.json").read_text())
    return {"stages": [_stage_summary(json.loads(((folder / rel) / "stage.json").read_text()))
                       for rel in spec["stages"]]}


def _stage_summary(info: dict) -> dict:
    keys = ("stage", "view", "channels", "epochs", "best_epoch", "train_seconds", "mean_test_dice", "test_dice",
            "train_ids", "test_ids")
    return {k: info[k] for k in keys if k in info}


_LOADED: dict[tuple, object] = {}


def load_model_dir(model_dir: str | os.PathLike | None = None, *, reuse: bool = True):
    """Load a trained cascade (default: the shipped phantom model) as a :class:`~innerear.cascade.Cascade`.

    With ``reuse`` a folder whose files are unchanged is loaded once per process.
    """
    from .config import import_backend

    folder, spec = check_model_dir(model_dir)
    import_backend()
    from .cascade import load_cascade

    files = [folder / "cascade.json"] + [(folder / rel).resolve() / "best.keras" for rel in spec["stages"]]
    key = (str(folder.resolve()), tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files))
    if reuse and key in _LOADED:
        return _LOADED[key]
    try:
        cascade = load_cascade(folder)
    except Exception as exc:  # keras raises many types for a damaged .keras file
        raise SegmentError(folder, f"model cannot be loaded ({type(exc).__name__}: {exc})") from exc
    cascade.info = dict(cascade.info, folder=str(folder))
    if reuse:
        _LOADED.clear()  # keep one model in memory
        _LOADED[key] = cascade
    return cascade


# --------------------------------------------------------------------------- geometry
PREPARE_MAX_BYTES = 512 << 20  # the resampler's working memory in `innerear segment`


def prepare_scan(image: np.ndarray, affine: np.ndarray, grid: int,
                 max_bytes: int = PREPARE_MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Resample a scan to the cascade's grid as training did: ``(volume, prepared_affine)``.

    The reorientation is a view and the resampling reads the scan in slabs within
    ``max_bytes``, so a memory-mapped ``image`` is never copied whole into memory.
    """
    from .preprocess import resample_image, resampled_affine, to_canonical

    image_c, affine_c = to_canonical(np.asanyarray(image), np.asarray(affine, float), copy=False)
    prepared_affine = resampled_affine(affine_c, image_c.shape, (grid,) * 3)
    try:
        volume = resample_image(image_c, grid, max_bytes=max_bytes)
    except ValueError as exc:  # a scan too large for that budget: the resampler's default (2 GiB)
        if "too small" not in str(exc):
            raise
        volume = resample_image(image_c, grid)
    return volume, prepared_affine


def map_to_scan(values: np.ndarray, prepared_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray,
                threshold: float | None = 0.5, chunk_voxels: int = 1 << 20, progress: bool = False) -> np.ndarray:
    """Sample a prepared-grid map at every voxel centre of the scan grid ``(shape, affine)``.

    Linear interpolation (``scipy.ndimage.map_coordinates``, edge values beyond the grid),
    computed in slabs of about ``chunk_voxels`` voxels. With ``threshold`` returns the
    ``uint8`` mask ``value >= threshold``, else the float32 values.
    """
    from tqdm.auto import tqdm

    shape = tuple(int(s) for s in shape)
    m = np.linalg.inv(np.asarray(prepared_affine, float)) @ np.asarray(affine, float)
    j, k = np.meshgrid(np.arange(shape[1], dtype=float), np.arange(shape[2], dtype=float), indexing="ij")
    plane = m[:3, 1, None, None] * j + m[:3, 2, None, None] * k + m[:3, 3, None, None]  # (3, Y, Z)
    out = np.empty(shape, np.uint8 if threshold is not None else np.float32)
    values = np.asarray(values, np.float32)
    step = max(1, chunk_voxels // max(1, shape[1] * shape[2]))
    starts = range(0, shape[0], step)
    for i0 in tqdm(starts, desc="map back", unit="slab", leave=False, file=sys.stderr,
                   disable=not progress or len(starts) < 2):
        i = np.arange(i0, min(shape[0], i0 + step), dtype=float)
        coords = plane[:, None] + m[:3, 0, None, None, None] * i[None, :, None, None]
        vals = ndimage.map_coordinates(values, coords, order=1, mode="nearest")
        out[i0 : i0 + len(i)] = vals >= threshold if threshold is not None else vals
    return out


def mask_measures(mask: np.ndarray, affine: np.ndarray) -> dict:
    """Voxel count, volume (mm³), bounding box (voxels, inclusive; and world RAS mm), centroid."""
    affine = np.asarray(affine, float)
    voxels = int(np.count_nonzero(mask))
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    out: dict = {"voxels": voxels, "volume_mm3": voxels * voxel_mm3, "voxel_volume_mm3": voxel_mm3,
                 "bbox_voxels": None, "bbox_mm": None, "centroid_mm": None}
    if voxels == 0:
        return out
    idx = np.nonzero(mask)
    lo = np.array([a.min() for a in idx])
    hi = np.array([a.max() for a in idx])
    corners = np.array([[c[0], c[1], c[2], 1.0] for c in
                        np.array(np.meshgrid(*[(l - 0.5, h + 0.5) for l, h in zip(lo, hi)], indexing="ij")).reshape(3, -1).T])
    world = (corners @ affine.T)[:, :3]
    centroid = affine[:3, :3] @ np.array([a.mean() for a in idx]) + affine[:3, 3]
    out["bbox_voxels"] = {"min": lo.tolist(), "max": hi.tolist(), "size": (hi - lo + 1).tolist()}
    out["bbox_mm"] = {"min": world.min(0).tolist(), "max": world.max(0).tolist(),
                      "size": (world.max(0) - world.min(0)).tolist(), "frame": "RAS world (mm), voxel edges"}
    out["centroid_mm"] = centroid.tolist()
    return out


# --------------------------------------------------------------------------- checks
def plausible_volume(card: dict) -> dict:
    """The model card's ``plausible_inner_ear_volume_mm3`` (``min``, ``max``, ``source``), or
    :data:`PLAUSIBLE_VOLUME` for a model folder whose card states none."""
    stated = card.get("plausible_inner_ear_volume_mm3") if isinstance(card, dict) else None
    if stated:
        return {"min": float(stated["min"]), "max": float(stated["max"]), "source": stated.get("source", "model card")}
    return dict(PLAUSIBLE_VOLUME)


def volume_check(volume_mm3: float, voxels: int, bounds: dict) -> dict:
    """Is the segmented inner ear non-empty and of a plausible size? A JSON-able record with
    ``passed`` and, when it failed, a one-line ``reason``."""
    lo, hi = bounds["min"], bounds["max"]
    reason = None
    if voxels == 0:
        reason = "no inner ear found: the mask is empty"
    elif not lo <= volume_mm3 <= hi:
        reason = (f"implausible inner-ear volume {volume_mm3:.4g} mm^3 (a human inner ear is within "
                  f"{lo:g}-{hi:g} mm^3)")
    return {"check": "the mask is non-empty and its volume is within the plausible range",
            "range_mm3": [lo, hi], "source": bounds["source"], "volume_mm3": volume_mm3, "passed": reason is None,
            "reason": reason}


# --------------------------------------------------------------------------- segmentation
def segment_scan(
    path: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    spacing: Sequence[float] | None = None,
    *,
    cascade=None,
    progress: bool = False,
    chunk_voxels: int = 1 << 20,
    before_model: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Segment the inner ear in one scan: ``(mask, affine, report)``.

    ``mask`` is ``uint8`` on the scan's own grid (its shape), ``affine`` the scan's RAS
    affine, ``report`` a JSON-able dict (input, model, volume in mm³, bounding box,
    component count, timings). ``spacing`` (mm) is needed for TIFF stacks that do not record
    it and overrides any other file's voxel size. ``cascade`` reuses a loaded model
    (:func:`load_model_dir`); otherwise ``model_dir`` (default: the shipped model) is loaded,
    after the scan was read and checked and after calling ``before_model`` (the command line
    sets the backend's threads there).
    """
    from tqdm.auto import tqdm

    from . import __version__
    from .resample import value_range

    path = Path(path)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    # reading and checking the scan come first, before any progress bar: a bad file fails in one line
    t = time.perf_counter()
    image, spacing_mm, affine = read_volume(path, spacing=spacing, mmap=True)
    check_voxel_size(path, spacing_mm, spacing_source(path, spacing is not None))
    lo, hi = value_range(image)
    if lo == hi:
        raise VolumeError(path, f"image is constant (every voxel is {lo:g}); nothing to segment")
    timings["read"] = round(time.perf_counter() - t, 3)
    steps = ["load model", "prepare", "cascade", "map back", "largest component", "measure"]
    bar = tqdm(total=len(steps), desc="segment", unit="step", file=sys.stderr, disable=not progress, leave=False)

    def step(name: str, t0: float) -> float:
        timings[name.replace(" ", "_")] = round(time.perf_counter() - t0, 3)
        bar.update(1)
        return time.perf_counter()

    try:
        t = time.perf_counter()
        bar.set_description("load model")
        if cascade is None:
            if before_model is not None:
                before_model()
            cascade = load_model_dir(model_dir)

        folder = Path(cascade.info.get("folder", model_dir or DEFAULT_MODEL))
        t = step("load model", t)

        bar.set_description("prepare")
        prepared, prepared_affine = prepare_scan(image, affine, cascade.grid)
        t = step("prepare", t)

        bar.set_description("cascade")
        mask_p, prob_p = cascade.predict(prepared)
        t = step("cascade", t)

        bar.set_description("map back")
        raw = map_to_scan(prob_p, prepared_affine, image.shape, affine, cascade.threshold, chunk_voxels, progress)
        t = step("map back", t)

        bar.set_description("largest component")
        mask, n_components = largest_component(raw, cascade.connectivity, return_count=True)
        removed = int(np.count_nonzero(raw)) - int(np.count_nonzero(mask))
        del raw
        t = step("largest component", t)

        bar.set_description("measure")
        measures = mask_measures(mask, affine)
        t = step("measure", t)
    finally:
        bar.close()

    try:
        card = read_model_card(folder)
    except (OSError, ValueError):
        card = {}
    spec = cascade.info
    checks = {
        "voxel_size": {"check": "every voxel size is within the range", "range_mm": list(VOXEL_MM_RANGE),
                       "spacing_mm": list(spacing_mm), "passed": True},
        "inner_ear_volume": volume_check(measures["volume_mm3"], measures["voxels"], plausible_volume(card)),
    }
    warnings = [checks["inner_ear_volume"]["reason"]] if not checks["inner_ear_volume"]["passed"] else []
    report = {
        "innerear_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "path": str(path),
            "format": volume_format(path),
            "shape": list(image.shape),
            "dtype": str(image.dtype),
            "spacing_mm": list(spacing_mm),
            "spacing_source": "given" if spacing is not None else "file",
            "affine": np.asarray(affine).tolist(),
            "intensity_range": [lo, hi],
        },
        "model": {
            "folder": str(folder),
            "profile": spec.get("profile"),
            "backbone": spec.get("backbone"),
            "fold": spec.get("fold"),
            "order": list(cascade.order),
            "grid": cascade.grid,
            "normalizer": cascade.normalizer.to_dict(),
            "training": card,
        },
        "prepared": {
            "grid": [cascade.grid] * 3,
            "spacing_mm": [float(v) for v in np.linalg.norm(prepared_affine[:3, :3], axis=0)],
            "affine": prepared_affine.tolist(),
            "voxels": int(np.count_nonzero(mask_p)),
            "volume_mm3": float(np.count_nonzero(mask_p) * abs(np.linalg.det(prepared_affine[:3, :3]))),
        },
        "threshold": cascade.threshold,
        "inner_ear": dict(measures, components=n_components, components_kept=min(1, n_components),
                          voxels_removed=removed),
        "checks": checks,
        "warnings": warnings,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - t_start, 3),
    }
    return mask, affine, report


# --------------------------------------------------------------------------- files
def _check_output(path: Path, suffixes: tuple[str, ...], what: str, force: bool, taken: set) -> None:
    if not path.name.lower().endswith(suffixes):
        raise SegmentError(path, f"{what} must end with {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise SegmentError(path, f"output folder {path.parent} does not exist")
    try:  # the real test: can a file be created there (permissions, read-only file systems)?
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise SegmentError(path, f"cannot write in the output folder {path.parent} ({exc.strerror or exc})") from None
    if path.is_dir():
        raise SegmentError(path, "is a folder, expected a file name")
    if path.exists() and not force:
        raise SegmentError(path, "already exists (use --force to overwrite)")
    key = path.resolve()
    if key in taken:
        raise SegmentError(path, "named twice (input and outputs must be distinct)")
    taken.add(key)


def check_outputs(scan: Path, out: Path, mesh: Path | None, report: Path | None, force: bool) -> None:
    """Refuse, before any work, outputs that could not be written (or would be overwritten)."""
    try:
        check_writable(out)
    except VolumeError as exc:
        raise SegmentError(out, exc.problem) from None
    taken = {scan.resolve()}
    _check_output(out, (".nii", ".nii.gz", ".nrrd", ".mha"), "the mask", force, taken)
    if mesh is not None:
        _check_output(mesh, (".stl",), "the mesh", force, taken)
    if report is not None:
        _check_output(report, (".json",), "the report", force, taken)


def segment_to_files(
    scan: str | os.PathLike,
    out: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    *,
    mesh: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    spacing: Sequence[float] | None = None,
    force: bool = False,
    progress: bool = False,
    allow_empty: bool = False,
    before_model: Callable[[], None] | None = None,
) -> dict:
    """Segment ``scan`` and write the mask (and mesh, report): all of them, or none.

    Everything that can be checked is checked before the work starts (output names, that
    their folders exist and are writable, overwriting without ``force``, the model folder).
    An empty mask or an implausible inner-ear volume (the report's ``checks``) is refused
    with :class:`SegmentError` and nothing is written, unless ``allow_empty``. The files are
    written to temporary names and renamed only when all of them are complete. Returns the report.
    """
    from .io import _json_default

    scan, out = Path(scan), Path(out)
    mesh = Path(mesh) if mesh is not None else None
    report_path = Path(report) if report is not None else None
    if not scan.exists():
        raise VolumeError(scan, "file not found")
    check_outputs(scan, out, mesh, report_path, force)
    check_model_dir(model_dir)
    mask, affine, rep = segment_scan(scan, model_dir, spacing, progress=progress, before_model=before_model)
    check = rep["checks"]["inner_ear_volume"]
    if not check["passed"]:
        if not allow_empty:
            raise SegmentError(scan, f"{check['reason']}; is the scan a human inner-ear CT with the intensities the "
                                     f"model expects? (--allow-empty writes it anyway)")
        check["allowed_by"] = "--allow-empty"
    t0 = time.perf_counter()
    rep["output"] = {"mask": str(out), "mesh": str(mesh) if mesh else None,
                     "report": str(report_path) if report_path else None}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(out, overwrite=force, suffix=temp_suffix(out)))
        write_volume_to(tmp, mask, affine, like=out)
        if mesh is not None:
            from .mesh import surface_mesh, write_stl

            tmp_mesh = stack.enter_context(atomic_path(mesh, overwrite=force))
            verts, faces = surface_mesh(*_cropped(mask, affine))
            write_stl(tmp_mesh, verts, faces, name=f"innerear mask of {scan.name} (RAS mm)")
            rep["mesh"] = {"vertices": int(len(verts)), "triangles": int(len(faces)), "frame": "RAS world (mm)"}
        rep["timings_s"]["write"] = round(time.perf_counter() - t0, 3)
        if report_path is not None:
            tmp_rep = stack.enter_context(atomic_path(report_path, overwrite=force))
            tmp_rep.write_text(json.dumps(rep, indent=2, sort_keys=True, default=_json_default) + "\n")
    return rep


def _cropped(mask: np.ndarray, affine: np.ndarray, margin: int = 2):
    """The mask's bounding box (plus a margin) with its own affine, for meshing large scans."""
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    if not mask.any():
        return mask[:1, :1, :1] * 0, spacing, affine
    idx = np.nonzero(mask)
    lo = np.maximum(0, [a.min() - margin for a in idx])
    hi = np.minimum(mask.shape, [a.max() + margin + 1 for a in idx])
    shift = np.eye(4)
    shift[:3, 3] = lo
    crop = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return crop, spacing, np.asarray(affine, float) @ shift


# --------------------------------------------------------------------------- model folders
def export_model(cascade_dir: str | os.PathLike, dest: str | os.PathLike, card: dict | None = None) -> Path:
    """Copy a trained cascade (a run's deepest stage folder) into a self-contained model folder.

    ``dest`` gets ``stage<k>_<view>/{best.keras,stage.json}`` per stage, a ``cascade.json``
    whose stage paths are relative to ``dest`` and a ``model_card.json`` (the stages'
    held-out Dice and training record, plus ``card``). Written to a temporary folder and
    renamed; an existing ``dest`` is replaced.
    """
    src, spec = check_model_dir(cascade_dir)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, folder=True) as tmp:
        stages = []
        stage_infos = []
        for k, rel in enumerate(spec["stages"]):
            stage = (src / rel).resolve()
            info = json.loads((stage / "stage.json").read_text())
            name = f"stage{k + 1}_{info['view']}"
            (tmp / name).mkdir()
            shutil.copy2(stage / "best.keras", tmp / name / "best.keras")
            shutil.copy2(stage / "stage.json", tmp / name / "stage.json")
            stages.append(name)
            stage_infos.append(_stage_summary(info))
        new_spec = dict(spec, stages=stages)
        (tmp / "cascade.json").write_text(json.dumps(new_spec, indent=2, sort_keys=True) + "\n")
        model_card = {
            "stages": stage_infos,
            "held_out_dice_per_stage": {f"stage{s['stage']}_{s['view']}": s.get("mean_test_dice") for s in stage_infos},
            "order": spec.get("order"), "backbone": spec.get("backbone"), "fold": spec.get("fold"),
            "profile": spec.get("profile"), "grid": spec.get("grid"), "normalizer": spec.get("normalizer"),
            "exported_from": str(src),
            "plausible_inner_ear_volume_mm3": PLAUSIBLE_VOLUME,
            **(card or {}),
        }
        (tmp / "model_card.json").write_text(json.dumps(model_card, indent=2, sort_keys=True, default=str) + "\n")
        for path in tmp.rglob("*"):  # a model folder is shared: readable by all
            path.chmod(0o755 if path.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest
