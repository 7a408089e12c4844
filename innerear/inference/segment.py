"""Segment your own scan with a trained cascade (``innerear segment``).

:func:`segment_scan` reads a scan in any format :func:`innerear.io.read_volume` knows, prepares
it as the training volumes were prepared (:mod:`innerear.data.scan`), runs the engine
(:meth:`innerear.inference.engine.Cascade.predict`, default ``"fast"`` mode, as everywhere) and
maps the last stage's probabilities back onto the scan's own grid: every scan voxel's centre is
carried through the world frame into the prepared grid (:func:`innerear.data.scan.map_to_scan`),
the probability map is sampled there by linear interpolation (in slabs, to bound memory),
thresholded at 0.5, and the largest connected component
(:func:`innerear.metrics.largest_component`, the cascade's connectivity) is kept. The mask
therefore has the scan's shape and affine. Each step is a function of its own: read, load,
prepare, predict, map back, measure (:mod:`innerear.inference.report`), check
(:mod:`innerear.inference.checks`) and report.

:func:`segment_to_files` adds the command line's checks and writes the mask (NIfTI, NRRD or
MetaImage by extension), optionally an STL surface, a structure label map and a JSON report,
all or nothing.

Model folders (their format: :mod:`innerear.inference.modelfolder`) are of two kinds. A *grid*
model (``cascade.json`` has ``"grid"``: the paper's recipe, e.g. the shipped ``phantom_cascade``)
sees every scan resampled to N³. A *physical* model (``"voxel_mm"``, no ``"grid"``) sees the scan
at its own field of view, resampled to the model's voxel size
(:func:`innerear.data.scan.prepare_scan_physical`: a Gaussian prefilter when that shrinks the
scan by more than 1.5 times), padded to the networks' multiple and normalised per scan
(:class:`innerear.data.preprocess.PercentileNormalizer`); the pad never yields foreground. A
model that outputs structures (cochlea / vestibule / canals) also gives a label map
(``--labels``), each structure's volume and the cochlea's measures
(:func:`innerear.metrics.cochlea.measure_cochlea`).

The shipped models were trained on the project's SYNTHETIC phantoms only: the default,
``innerear/models/robust_cascade`` (robust recipe, physical units, structures), and the paper
recipe's ``innerear/models/phantom_cascade`` (64³ grid); see their ``model_card.json``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from innerear.data.resample import value_range
from innerear.data.scan import PhysicalScan, crop_to_mask, map_to_scan, prepare_scan, prepare_scan_physical
from innerear.inference.checks import intensity_check, plausible_volume, touches_border, volume_check
from innerear.inference.modelfolder import DEFAULT_MODEL, SegmentError, read_model_card, read_model_folder
from innerear.inference.report import SegmentReport, cochlea_measures, mask_measures, structure_measures
from innerear.io import (
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
from innerear.io.files import json_text
from innerear.io.mesh import surface_mesh, write_stl
from innerear.metrics import largest_component, structure_labels
from innerear.settings.profiles import import_backend

#: the steps of :func:`segment_scan` after reading the scan (the progress bar's)
STEPS = ("load model", "prepare", "cascade", "map back", "largest component", "measure")


# --------------------------------------------------------------------------- models
def model_voxel_mm(cascade) -> tuple[float, float, float] | None:
    """A physical model's voxel size (mm, per axis), or None for a grid model.

    Read from the engine (``Cascade.voxel_mm``) where it has one, else from ``cascade.json``."""
    if getattr(cascade, "grid", None) is not None:
        return None
    voxel = getattr(cascade, "voxel_mm", None)
    if voxel is None:
        voxel = getattr(cascade, "info", {}).get("voxel_mm")
    if voxel is None:
        return None
    v = np.broadcast_to(np.asarray(voxel, float), (3,))
    return tuple(float(x) for x in v)


_LOADED: dict[tuple, object] = {}


def load_model_dir(model_dir: str | os.PathLike | None = None, *, reuse: bool = True):
    """Load a model folder (default: the shipped model) as a :class:`~innerear.inference.engine.Cascade`.

    The folder is read and checked by :func:`~innerear.inference.modelfolder.read_model_folder`
    before Keras is imported. With ``reuse`` a folder whose files are unchanged is loaded once
    per process.
    """
    model = read_model_folder(model_dir)
    import_backend()
    # lazy: the engine imports Keras, which comes after the command line's checks and thread settings
    from innerear.inference.engine import load_cascade

    key = (str(model.folder.resolve()), tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in model.files))
    if reuse and key in _LOADED:
        return _LOADED[key]
    try:
        cascade = load_cascade(model.folder)
    except Exception as exc:  # keras raises many types for a damaged .keras file
        raise SegmentError(model.folder, f"model cannot be loaded ({type(exc).__name__}: {exc})") from exc
    cascade.info = dict(cascade.info, folder=str(model.folder))
    if reuse:
        _LOADED.clear()  # keep one model in memory
        _LOADED[key] = cascade
    return cascade


# --------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class Scan:
    """A scan as read and checked: the (possibly memory-mapped) array, voxel size, RAS affine."""

    path: Path
    image: np.ndarray
    spacing_mm: tuple[float, ...]
    affine: np.ndarray
    value_range: tuple[float, float]
    spacing_given: bool


@dataclass(frozen=True)
class Prepared:
    """The scan as the networks see it: ``volume`` on the grid ``affine``; ``core`` the voxels within
    the scan; ``physical`` the physical preparation (None for a grid model)."""

    volume: np.ndarray
    affine: np.ndarray
    core: tuple[slice, ...]
    physical: PhysicalScan | None
    voxel_mm: tuple[float, float, float] | None


@dataclass(frozen=True)
class Prediction:
    """The engine's output on the prepared grid: the mask, probabilities and structure labels (or None)."""

    mask: np.ndarray
    prob: np.ndarray
    labels: np.ndarray | None


class _Steps:
    """Each step's seconds (``timings``) and the progress bar over :data:`STEPS`."""

    def __init__(self, timings: dict[str, float], progress: bool) -> None:
        self.timings = timings
        self.bar = tqdm(total=len(STEPS), desc="segment", unit="step", file=sys.stderr, disable=not progress,
                        leave=False)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.bar.set_description(name)
        t0 = time.perf_counter()
        yield
        self.timings[name.replace(" ", "_")] = round(time.perf_counter() - t0, 3)
        self.bar.update(1)


def read_scan(path: Path, spacing: Sequence[float] | None) -> Scan:
    """Read a scan memory-mapped and check its voxel size and that it is not constant."""
    image, spacing_mm, affine = read_volume(path, spacing=spacing, mmap=True)
    check_voxel_size(path, spacing_mm, spacing_source(path, spacing is not None))
    lo, hi = value_range(image)
    if lo == hi:
        raise VolumeError(path, f"image is constant (every voxel is {lo:g}); nothing to segment")
    return Scan(path, image, tuple(spacing_mm), affine, (lo, hi), spacing is not None)


def _load(cascade, model_dir, before_model: Callable[[], None] | None, require_labels) -> tuple[Any, Path]:
    """The loaded cascade (``cascade`` if given) and its folder; a binary model is refused when
    labels are required."""
    if cascade is None:
        if before_model is not None:
            before_model()
        cascade = load_model_dir(model_dir)
    folder = Path(cascade.info.get("folder", model_dir or DEFAULT_MODEL))
    if require_labels is not None and getattr(cascade, "n_classes", None) == 1:
        raise _no_labels(require_labels, folder)
    return cascade, folder


def prepare(scan: Scan, cascade) -> Prepared:
    """The scan resampled to the model's grid (grid model) or voxel size (physical model)."""
    voxel_mm = model_voxel_mm(cascade)
    if voxel_mm is None:  # a grid model: the paper's N^3 preparation
        volume, affine = prepare_scan(scan.image, scan.affine, cascade.grid)
        return Prepared(volume, affine, (slice(None),) * 3, None, None)
    try:
        physical = prepare_scan_physical(scan.image, scan.affine, voxel_mm, cascade.pooling)
    except ValueError as exc:
        if "too large" not in str(exc):
            raise
        raise VolumeError(scan.path, str(exc)) from None
    return Prepared(physical.volume, physical.affine, physical.core, physical, voxel_mm)


def predict(cascade, prepared: Prepared) -> Prediction:
    """The cascade on the prepared scan; a physical model's padding never yields foreground."""
    mask, prob, labels = cascade.predict(prepared.volume, return_labels=True)
    if prepared.physical is not None:
        mask, prob, labels = (prepared.physical.outside_zeroed(v) for v in (mask, prob, labels))
    return Prediction(mask, prob, labels)


@dataclass(frozen=True)
class Measured:
    """The cleaned mask on the scan's grid and what was measured from it."""

    mask: np.ndarray
    components: int
    removed: int
    measures: dict[str, Any]
    labels: np.ndarray | None
    structures: dict[str, Any] | None
    cochlea: dict[str, Any] | None


def keep_largest(raw: np.ndarray, cascade) -> tuple[np.ndarray, int, int]:
    """The largest component of the mapped-back mask: ``(mask, components before, voxels removed)``."""
    mask, n_components = largest_component(raw, cascade.connectivity, return_count=True)
    return mask, n_components, int(np.count_nonzero(raw)) - int(np.count_nonzero(mask))


def measure(scan: Scan, prepared: Prepared, prediction: Prediction, mask: np.ndarray, components: int,
            removed: int, chunk_voxels: int) -> Measured:
    """Measure the mask; a model with structures also gives the label map on the scan's grid, each
    structure's volume and the cochlea's measures."""
    labels = structures = cochlea = None
    if prediction.labels is not None:
        mapped = map_to_scan(prediction.labels, prepared.affine, scan.image.shape, scan.affine, None, chunk_voxels,
                             order=0)
        labels = structure_labels(mapped, mask)
        structures = structure_measures(labels, scan.affine)
        cochlea = cochlea_measures(labels, scan.affine)
    return Measured(mask, components, removed, mask_measures(mask, scan.affine), labels, structures, cochlea)


def run_checks(scan: Scan, cascade, prepared: Prepared, measured: Measured) -> dict[str, dict[str, Any]]:
    """The report's checks: voxel size (passed: it was refused otherwise), volume, intensities."""
    info = getattr(cascade, "info", {})
    return {
        "voxel_size": {"check": "every voxel size is within the range", "range_mm": list(VOXEL_MM_RANGE),
                       "spacing_mm": list(scan.spacing_mm), "passed": True},
        "inner_ear_volume": volume_check(measured.measures["volume_mm3"], measured.measures["voxels"],
                                         plausible_volume(info.get("plausible_inner_ear_volume_mm3")),
                                         cut=touches_border(measured.mask)),
        "intensity": intensity_check(cascade, prepared.volume, info.get("intensity_histogram"), prepared.core),
    }


def _model_section(cascade, folder: Path, prepared: Prepared, structures: bool) -> dict[str, Any]:
    spec, voxel_mm = cascade.info, prepared.voxel_mm
    try:
        card = read_model_card(folder)
    except (OSError, ValueError):
        card = {}
    return {
        "folder": str(folder), "profile": spec.get("profile"), "backbone": spec.get("backbone"),
        "fold": spec.get("fold"), "order": list(cascade.order), "grid": cascade.grid,
        "voxel_mm": list(voxel_mm) if voxel_mm is not None else None,
        "kind": "physical (fixed voxel size)" if voxel_mm is not None else "grid (every scan resampled to N^3)",
        "structures": structures, "normalizer": cascade.normalizer.to_dict(), "training": card,
    }


def _prepared_section(prepared: Prepared, mask_p: np.ndarray) -> dict[str, Any]:
    physical, affine = prepared.physical, prepared.affine
    return {
        "grid": list(prepared.volume.shape),
        "spacing_mm": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        "affine": affine.tolist(),
        "padding_voxels": physical.padding() if physical is not None else None,
        "antialias_sigma_source_voxels": list(physical.antialias_sigma) if physical is not None else None,
        "voxels": int(np.count_nonzero(mask_p)),
        "volume_mm3": float(np.count_nonzero(mask_p) * abs(np.linalg.det(affine[:3, :3]))),
    }


def build_report(scan: Scan, cascade, folder: Path, prepared: Prepared, prediction: Prediction,
                 measured: Measured, checks: dict, timings: dict[str, float], t_start: float) -> SegmentReport:
    """The report of one segmentation (:class:`~innerear.inference.report.SegmentReport`)."""
    lo, hi = scan.value_range
    return SegmentReport(
        input={"path": str(scan.path), "format": volume_format(scan.path), "shape": list(scan.image.shape),
               "dtype": str(scan.image.dtype), "spacing_mm": list(scan.spacing_mm),
               "spacing_source": "given" if scan.spacing_given else "file",
               "affine": np.asarray(scan.affine).tolist(), "intensity_range": [lo, hi]},
        model=_model_section(cascade, folder, prepared, prediction.labels is not None),
        prepared=_prepared_section(prepared, prediction.mask),
        threshold=cascade.threshold,
        inner_ear=dict(measured.measures, components=measured.components,
                       components_kept=min(1, measured.components), voxels_removed=measured.removed),
        structures=measured.structures, cochlea=measured.cochlea, checks=checks, timings_s=timings,
        total_s=round(time.perf_counter() - t_start, 3),
    )


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
    labels_out: dict | None = None,
    require_labels: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Segment the inner ear in one scan: ``(mask, affine, report)``.

    ``mask`` is ``uint8`` on the scan's own grid (its shape), ``affine`` the scan's RAS
    affine, ``report`` a JSON-able dict (:meth:`~innerear.inference.report.SegmentReport.to_dict`:
    input, model, volume in mm³, bounding box, component count, per-structure volumes and cochlea
    measures for a model with structures, the checks, timings). ``spacing`` (mm) is needed for
    TIFF stacks that do not record it and overrides any other file's voxel size. ``cascade``
    reuses a loaded model (:func:`load_model_dir`); otherwise ``model_dir`` (default: the shipped
    model) is loaded, after the scan was read and checked and after calling ``before_model`` (the
    command line sets the backend's threads there). A dict passed as ``labels_out`` receives the
    structure map on the scan's grid as ``labels_out["labels"]`` (None for a binary model).
    ``require_labels`` (the label map's output path) refuses a binary model as soon as it is
    loaded, naming that path.
    """
    t_start = time.perf_counter()
    # reading and checking the scan come first, before any progress bar: a bad file fails in one line
    scan = read_scan(Path(path), spacing)
    timings = {"read": round(time.perf_counter() - t_start, 3)}
    steps = _Steps(timings, progress)
    try:
        with steps.step("load model"):
            cascade, folder = _load(cascade, model_dir, before_model, require_labels)
        with steps.step("prepare"):
            prepared = prepare(scan, cascade)
        with steps.step("cascade"):
            prediction = predict(cascade, prepared)
        with steps.step("map back"):
            raw = map_to_scan(prediction.prob, prepared.affine, scan.image.shape, scan.affine, cascade.threshold,
                              chunk_voxels, progress)
        with steps.step("largest component"):
            mask, components, removed = keep_largest(raw, cascade)
            del raw
        with steps.step("measure"):
            measured = measure(scan, prepared, prediction, mask, components, removed, chunk_voxels)
            checks = run_checks(scan, cascade, prepared, measured)
    finally:
        steps.bar.close()
    if labels_out is not None:
        labels_out["labels"] = measured.labels
    report = build_report(scan, cascade, folder, prepared, prediction, measured, checks, timings, t_start)
    return mask, scan.affine, report.to_dict()


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


def check_outputs(scan: Path, out: Path, mesh: Path | None, report: Path | None, force: bool,
                  labels: Path | None = None) -> None:
    """Refuse, before any work, outputs that could not be written (or would be overwritten)."""
    try:
        check_writable(out)
    except VolumeError as exc:
        raise SegmentError(out, exc.problem) from None
    taken = {scan.resolve()}
    _check_output(out, (".nii", ".nii.gz", ".nrrd", ".mha"), "the mask", force, taken)
    if labels is not None:
        _check_output(labels, (".nii", ".nii.gz", ".nrrd", ".mha"), "the label map", force, taken)
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
    labels: str | os.PathLike | None = None,
    spacing: Sequence[float] | None = None,
    force: bool = False,
    progress: bool = False,
    allow_empty: bool = False,
    before_model: Callable[[], None] | None = None,
) -> dict:
    """Segment ``scan`` and write the mask (and mesh, report, structure label map): all of them, or none.

    ``labels`` writes the structure map (uint8: 0 background, 1 cochlea, 2 vestibule,
    3 semicircular canals) on the scan's grid; a binary model (no structures) is refused.

    Everything that can be checked is checked before the work starts (output names, that
    their folders exist and are writable, overwriting without ``force``, the model folder).
    An empty mask or an implausible inner-ear volume (the report's ``checks``) is refused
    with :class:`SegmentError` and nothing is written, unless ``allow_empty``. The files are
    written to temporary names and renamed only when all of them are complete. Returns the report.
    """
    scan, out = Path(scan), Path(out)
    mesh = Path(mesh) if mesh is not None else None
    report_path = Path(report) if report is not None else None
    labels_path = Path(labels) if labels is not None else None
    if not scan.exists():
        raise VolumeError(scan, "file not found")
    check_outputs(scan, out, mesh, report_path, force, labels_path)
    read_model_folder(model_dir)
    found: dict = {}
    mask, affine, rep = segment_scan(scan, model_dir, spacing, progress=progress, before_model=before_model,
                                     labels_out=found, require_labels=labels_path)
    if labels_path is not None and found.get("labels") is None:
        raise _no_labels(labels_path, rep["model"]["folder"])
    check = rep["checks"]["inner_ear_volume"]
    if not check["passed"]:
        if not allow_empty:
            raise SegmentError(scan, f"{check['reason']}; is the scan a human inner-ear CT with the intensities the "
                                     f"model expects? (--allow-empty writes it anyway)")
        check["allowed_by"] = "--allow-empty"
    t0 = time.perf_counter()
    rep["output"] = {"mask": str(out), "mesh": str(mesh) if mesh else None,
                     "report": str(report_path) if report_path else None,
                     "labels": str(labels_path) if labels_path else None}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(out, overwrite=force, suffix=temp_suffix(out)))
        write_volume_to(tmp, mask, affine, like=out)
        if labels_path is not None:
            tmp_labels = stack.enter_context(atomic_path(labels_path, overwrite=force, suffix=temp_suffix(labels_path)))
            write_volume_to(tmp_labels, found["labels"], affine, like=labels_path)
        if mesh is not None:
            tmp_mesh = stack.enter_context(atomic_path(mesh, overwrite=force))
            verts, faces = surface_mesh(*crop_to_mask(mask, affine))
            write_stl(tmp_mesh, verts, faces, name=f"innerear mask of {scan.name} (RAS mm)")
            rep["mesh"] = {"vertices": int(len(verts)), "triangles": int(len(faces)), "frame": "RAS world (mm)"}
        rep["timings_s"]["write"] = round(time.perf_counter() - t0, 3)
        if report_path is not None:
            tmp_rep = stack.enter_context(atomic_path(report_path, overwrite=force))
            tmp_rep.write_text(json_text(rep))
    return rep


def _no_labels(path: str | os.PathLike, folder) -> SegmentError:
    return SegmentError(path, f"the model {folder} segments the inner ear as one class and has no structure labels "
                              f"(cochlea, vestibule, canals) to write; omit --labels or use a model trained with "
                              f"structures")
