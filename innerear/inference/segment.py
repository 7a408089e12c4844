"""Segment your own scan with a trained cascade: :class:`Segmenter` (``innerear.Segmenter``) and
``innerear segment``.

:class:`Segmenter` loads a model once and segments scans given as files (any format
:func:`innerear.io.read_volume` knows) or as 3D arrays with their voxel size. Every route (the
class, :func:`segment_scan`, :func:`segment_to_files`, the command line and its batches in
:mod:`innerear.inference.batch`) runs the one :func:`run_segmentation`: prepare the scan as the
training volumes were prepared (:mod:`innerear.data.scan`), run the engine
(:meth:`innerear.inference.engine.Cascade.predict`, default ``"fast"`` mode, as everywhere) and
map the last stage's probabilities back onto the scan's own grid: every scan voxel's centre is
carried through the world frame into the prepared grid (:func:`innerear.data.scan.map_to_scan`),
the probability map is sampled there by linear interpolation (in slabs, to bound memory),
thresholded at 0.5, and the largest connected component
(:func:`innerear.metrics.largest_component`, the cascade's connectivity) is kept. The mask
therefore has the scan's shape and affine. Each step is a function of its own: read, load,
prepare, predict, map back, measure (:mod:`innerear.inference.report`), check
(:mod:`innerear.inference.checks`) and report. The result is a :class:`SegmentResult` (mask,
labels, probabilities, affine, report).

:meth:`SegmentResult.save` (and :func:`segment_to_files`, which checks the outputs before the
work) writes the mask (NIfTI, NRRD or MetaImage by extension), optionally a structure label map,
the probabilities (float32 compressed NIfTI), an STL surface and a JSON report, all or nothing.

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
import copy
import os
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from innerear.data.resample import value_range
from innerear.data.scan import PhysicalScan, crop_to_mask, map_to_scan, prepare_scan, prepare_scan_physical
from innerear.inference.checks import (
    confidence_check,
    intensity_check,
    plausible_volume,
    touches_border,
    volume_check,
)
from innerear.inference.modelfolder import DEFAULT_MODEL, SegmentError, read_model_card, read_model_folder
from innerear.inference.report import SegmentReport, cochlea_measures, mask_measures, structure_measures
from innerear.io import (
    VOXEL_MM_RANGE,
    VolumeError,
    atomic_path,
    check_voxel_size,
    spacing_from_affine,
    check_writable,
    read_volume,
    spacing_source,
    temp_suffix,
    volume_format,
    write_volume_to,
)
from innerear.io.common import check_array
from innerear.io.dicomseg import INNER_EAR_STRUCTURE, Algorithm, write_dicom_seg
from innerear.io.files import json_text
from innerear.io.mesh import surface_mesh, write_stl
from innerear.io.nifti import write_nifti
from innerear.io.slicer import is_seg_nrrd, write_seg_nrrd
from innerear.metrics import largest_component, structure_labels
from innerear import __version__
from innerear.settings.profiles import import_backend
from innerear.settings.structures import CLASS_NAMES

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


def load_model_dir(model_dir: str | os.PathLike | None = None, *, reuse: bool = True, runtime: str = "auto"):
    """Load a model folder (default: the shipped model) as a :class:`~innerear.inference.engine.Cascade`.

    The folder is read and checked by :func:`~innerear.inference.modelfolder.read_model_folder`
    before anything heavy is imported. ``runtime`` (:meth:`~innerear.inference.modelfolder.ModelFolder.runtime`):
    ``"auto"`` runs the folder's ONNX exports in ONNX Runtime when it has them (no Keras import,
    the shipped models' way), else Keras (with ``$INNEREAR_THREADS`` threads when set). With
    ``reuse`` a folder whose files are unchanged is loaded once per process.
    """
    model = read_model_folder(model_dir)
    chosen = model.runtime(runtime)
    if chosen == "keras":
        import_backend()
        if os.environ.get("INNEREAR_THREADS"):
            from innerear.nets.backend import set_threads  # lazy: Keras only for this runtime

            set_threads(int(os.environ["INNEREAR_THREADS"]))
    # lazy: the engine imports only what the chosen runtime needs, after the command line's checks
    from innerear.inference.engine import load_cascade

    key = (str(model.folder.resolve()), chosen,
           tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in model.files))
    if reuse and key in _LOADED:
        return _LOADED[key]
    try:
        cascade = load_cascade(model.folder, runtime=chosen)
    except SegmentError:
        raise
    except Exception as exc:  # keras and onnxruntime raise many types for a damaged network file
        raise SegmentError(model.folder, f"model cannot be loaded ({type(exc).__name__}: {exc})") from exc
    cascade.info = dict(cascade.info, folder=str(model.folder))
    if reuse:
        _LOADED.clear()  # keep one model in memory
        _LOADED[key] = cascade
    return cascade


# --------------------------------------------------------------------------- steps
#: the name of a NumPy array in messages (a scan given to :meth:`Segmenter.segment` as an array)
ARRAY = Path("<array>")


@dataclass(frozen=True)
class Scan:
    """A scan as read and checked: the (possibly memory-mapped) array, voxel size, RAS affine.

    ``path`` is the file, or :data:`ARRAY` for an array given in memory (``from_file`` False)."""

    path: Path
    image: np.ndarray
    spacing_mm: tuple[float, ...]
    affine: np.ndarray
    value_range: tuple[float, float]
    spacing_given: bool
    from_file: bool = True


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
    """The engine's output on the prepared grid: the mask, foreground probabilities, structure labels
    (or None) and, when asked for, the class probabilities ``(x, y, z, k)``, background first (None
    for a binary model or when not asked for)."""

    mask: np.ndarray
    prob: np.ndarray
    labels: np.ndarray | None
    classes: np.ndarray | None = None
    agreement: dict | None = None  # the last stage's mirror agreement (None without test-time mirroring)
    alignment: dict | None = None  # how the labyrinth's turn was read and undone (None: model without a frame)


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


def _not_constant(path: Path, image: np.ndarray) -> tuple[float, float]:
    lo, hi = value_range(image)
    if lo == hi:
        raise VolumeError(path, f"image is constant (every voxel is {lo:g}); nothing to segment")
    return lo, hi


def read_scan(path: Path, spacing: Sequence[float] | None) -> Scan:
    """Read a scan memory-mapped and check its voxel size and that it is not constant."""
    image, spacing_mm, affine = read_volume(path, spacing=spacing, mmap=True)
    check_voxel_size(path, spacing_mm, spacing_source(path, spacing is not None))
    return Scan(path, image, tuple(spacing_mm), affine, _not_constant(path, image), spacing is not None)


def _array_affine(spacing: Sequence[float] | None, affine: np.ndarray | None) -> np.ndarray:
    """The voxel-to-world affine of an array from ``spacing`` (mm) or ``affine`` (4x4), which must agree."""
    if spacing is None and affine is None:
        raise VolumeError(ARRAY, "an array has no voxel size: give spacing=(sx, sy, sz) in mm or a 4x4 "
                                 "voxel-to-world affine (RAS+, mm)")
    if spacing is not None:
        try:
            sizes = np.asarray([float(v) for v in spacing], float)
        except (TypeError, ValueError):
            raise VolumeError(ARRAY, f"invalid spacing {spacing!r}: expected three numbers (mm)") from None
        if sizes.shape != (3,) or not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
            raise VolumeError(ARRAY, f"invalid spacing {tuple(sizes.tolist())}: expected three positive numbers (mm)")
    if affine is None:
        return np.diag([*sizes, 1.0])
    matrix = np.asarray(affine, float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-30:
        raise VolumeError(ARRAY, f"affine must be a finite 4x4 matrix with an invertible 3x3 part, got shape "
                                 f"{matrix.shape}")
    if spacing is not None and not np.allclose(spacing_from_affine(matrix), sizes, rtol=1e-6, atol=0):
        raise VolumeError(ARRAY, f"spacing {tuple(sizes.tolist())} disagrees with the affine's voxel size "
                                 f"{spacing_from_affine(matrix)}; give one of them")
    return matrix


def array_scan(array: np.ndarray, spacing: Sequence[float] | None = None, affine: np.ndarray | None = None) -> Scan:
    """A scan given as a 3D array, with its voxel size (``spacing``, mm along the array axes) or its
    voxel-to-world ``affine`` (RAS+, mm, as NIfTI and :func:`innerear.io.read_volume` give it);
    checked as :func:`read_scan` checks a file (3D, finite, voxel size in range, not constant)."""
    image = check_array(ARRAY, np.asarray(array), allow_nan=False)
    matrix = _array_affine(spacing, affine)
    spacing_mm = spacing_from_affine(matrix)
    check_voxel_size(ARRAY, spacing_mm, "argument spacing" if affine is None else "argument affine")
    return Scan(ARRAY, image, tuple(spacing_mm), matrix, _not_constant(ARRAY, image), True, from_file=False)


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


def predict(cascade, prepared: Prepared, classes: bool = False) -> Prediction:
    """The cascade on the prepared scan (with ``classes``, also its class probabilities); a physical
    model's padding never yields foreground."""
    stats: dict = {}
    if classes:
        mask, prob, labels, class_prob = cascade.predict(prepared.volume, return_labels=True, return_classes=True,
                                                         stats=stats)
    else:
        (mask, prob, labels), class_prob = cascade.predict(prepared.volume, return_labels=True, stats=stats), None
    if prepared.physical is not None:
        mask, prob, labels, class_prob = (prepared.physical.outside_zeroed(v) for v in (mask, prob, labels, class_prob))
    agreement = (stats.get("stages") or [{}])[-1].get("mirror_agreement")
    return Prediction(mask, prob, labels, class_prob, agreement, stats.get("alignment"))


def map_back(scan: Scan, prepared: Prepared, prediction: Prediction, threshold: float, chunk_voxels: int,
             progress: bool, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The thresholded foreground on the scan's grid (before the largest component) and, with
    ``probabilities``, the probabilities there: ``(raw mask, probabilities or None)``.

    The foreground probability is sampled at every scan voxel by linear interpolation and the raw
    mask is ``probability >= threshold``, so with ``probabilities`` the raw mask is computed from
    the very values returned. Those are the foreground's (one volume) for a binary model, else
    each structure's ``(x, y, z, k)``, interpolated the same way; they sum to the foreground's
    (to float32 rounding: softmax outputs sum to 1)."""
    grid = (prepared.affine, scan.image.shape, scan.affine)
    if not probabilities:
        return map_to_scan(prediction.prob, *grid, threshold, chunk_voxels, progress), None
    foreground = map_to_scan(prediction.prob, *grid, None, chunk_voxels, progress)
    raw = (foreground >= threshold).astype(np.uint8)
    if prediction.classes is None:
        return raw, foreground
    del foreground
    classes = prediction.classes.shape[-1]
    out = np.empty(tuple(scan.image.shape) + (classes - 1,), np.float32)
    for k in range(1, classes):
        out[..., k - 1] = map_to_scan(prediction.classes[..., k], *grid, None, chunk_voxels)
    return raw, out


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


def run_checks(scan: Scan, cascade, prepared: Prepared, measured: Measured,
               prediction: Prediction) -> dict[str, dict[str, Any]]:
    """The report's checks: voxel size (passed: it was refused otherwise), volume, intensities, and
    the model's confidence (mirror agreement, a missing or partial cochlea)."""
    info = getattr(cascade, "info", {})
    return {
        "voxel_size": {"check": "every voxel size is within the range", "range_mm": list(VOXEL_MM_RANGE),
                       "spacing_mm": list(scan.spacing_mm), "passed": True},
        "inner_ear_volume": volume_check(measured.measures["volume_mm3"], measured.measures["voxels"],
                                         plausible_volume(info.get("plausible_inner_ear_volume_mm3")),
                                         cut=touches_border(measured.mask)),
        "intensity": intensity_check(cascade, prepared.volume, info.get("intensity_histogram"), prepared.core),
        "confidence": confidence_check(prediction.agreement, measured.structures, measured.labels),
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
        "structures": structures, "normalizer": cascade.normalizer.to_dict(), "runtime": spec.get("runtime", "keras"),
        "training": card,
    }


def _prepared_section(prepared: Prepared, prediction: Prediction) -> dict[str, Any]:
    physical, affine, mask_p = prepared.physical, prepared.affine, prediction.mask
    return {
        "grid": list(prepared.volume.shape),
        "spacing_mm": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        "affine": affine.tolist(),
        "padding_voxels": physical.padding() if physical is not None else None,
        "antialias_sigma_source_voxels": list(physical.antialias_sigma) if physical is not None else None,
        "voxels": int(np.count_nonzero(mask_p)),
        "volume_mm3": float(np.count_nonzero(mask_p) * abs(np.linalg.det(affine[:3, :3]))),
        "alignment": prediction.alignment,
    }


def build_report(scan: Scan, cascade, folder: Path, prepared: Prepared, prediction: Prediction,
                 measured: Measured, checks: dict, timings: dict[str, float], t_start: float) -> SegmentReport:
    """The report of one segmentation (:class:`~innerear.inference.report.SegmentReport`)."""
    lo, hi = scan.value_range
    return SegmentReport(
        input={"path": str(scan.path) if scan.from_file else None,
               "format": volume_format(scan.path) if scan.from_file else "array", "shape": list(scan.image.shape),
               "dtype": str(scan.image.dtype), "spacing_mm": list(scan.spacing_mm),
               "spacing_source": "given" if scan.spacing_given else "file",
               "affine": np.asarray(scan.affine).tolist(), "intensity_range": [lo, hi]},
        model=_model_section(cascade, folder, prepared, prediction.labels is not None),
        prepared=_prepared_section(prepared, prediction),
        threshold=cascade.threshold,
        inner_ear=dict(measured.measures, components=measured.components,
                       components_kept=min(1, measured.components), voxels_removed=measured.removed),
        structures=measured.structures, cochlea=measured.cochlea, checks=checks, timings_s=timings,
        total_s=round(time.perf_counter() - t_start, 3),
    )


# --------------------------------------------------------------------------- segmentation
def probability_names(cascade) -> tuple[str, ...]:
    """The names of the probability volumes: each structure's for a model with structures, else
    ``("inner_ear",)``."""
    if getattr(cascade, "n_classes", 1) == 1:
        return ("inner_ear",)
    classes = tuple(getattr(cascade, "info", {}).get("classes") or CLASS_NAMES)
    return classes[1:]


@dataclass(frozen=True, eq=False)
class SegmentResult:
    """One segmentation, on the scan's own grid (:meth:`Segmenter.segment`).

    ``mask`` (``uint8``, 0/1) is the inner ear; ``labels`` the structure map (``uint8``: 0 background,
    1 cochlea, 2 vestibule, 3 semicircular canals; None for a binary model); ``probabilities`` the
    ``float32`` probabilities (None unless asked for): shape ``scan + (k,)`` with one volume per
    structure (named in ``probability_names``) for a model with structures, else the scan's shape (the
    inner ear's). ``affine`` is the scan's voxel-to-world matrix (RAS+, mm); ``report`` the
    :class:`~innerear.inference.report.SegmentReport`; ``source`` the scan's file (None for an array).

    How they relate: the foreground probability is the structures' sum (to float32 rounding) or
    the one volume; ``probability >= report.threshold`` (0.5) is the mask *before* the largest
    connected component is kept, so ``mask`` is that set's largest component (equal to it when the
    report's ``inner_ear["components"]`` is 1). ``labels`` are mapped back by nearest neighbour
    from the networks' grid, the probabilities by linear interpolation: the most probable structure
    of a voxel can differ from its label near a boundary between structures.
    """

    mask: np.ndarray
    labels: np.ndarray | None
    probabilities: np.ndarray | None
    affine: np.ndarray
    report: SegmentReport
    probability_names: tuple[str, ...] = ("inner_ear",)
    source: Path | None = None

    def save(self, out: str | os.PathLike, *, labels: str | os.PathLike | None = None,
             probabilities: str | os.PathLike | None = None, mesh: str | os.PathLike | None = None,
             report: str | os.PathLike | None = None, force: bool = False, allow_empty: bool = False) -> dict:
        """Write the mask to ``out`` (``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``) and, where named, the
        label map, the probabilities (compressed NIfTI, ``.nii.gz``), an STL surface (world mm) and the
        JSON report: all of them, or none (temporary names, renamed when every file is complete).

        Refuses (:class:`~innerear.inference.modelfolder.SegmentError`, naming the path) an existing
        file without ``force``, a folder that does not exist, a wrong suffix, labels of a binary
        model, probabilities not kept, and an empty or implausible mask unless ``allow_empty``.
        Returns the report as written (with an ``output`` section)."""
        paths = Outputs.of(out, labels=labels, probabilities=probabilities, mesh=mesh, report=report)
        paths.check(self.source, force)
        return write_outputs(self, paths, force, allow_empty)


def run_segmentation(scan: Scan, load: Callable[[], tuple[Any, Path]], *, probabilities: bool = False,
                     progress: bool = False, chunk_voxels: int = 1 << 20, require_labels: str | os.PathLike | None = None,
                     t_start: float | None = None, timings: dict[str, float] | None = None) -> SegmentResult:
    """THE segmentation of a read scan (every route calls it): load (``load()`` gives the cascade and
    its folder), prepare, predict, map back, keep the largest component, measure, check, report.

    ``require_labels`` (the label map's output path) refuses a binary model as soon as it is loaded."""
    t_start = time.perf_counter() if t_start is None else t_start
    timings = {} if timings is None else timings
    steps = _Steps(timings, progress)
    try:
        with steps.step("load model"):
            cascade, folder = load()
            if require_labels is not None and getattr(cascade, "n_classes", None) == 1:
                raise _no_labels(require_labels, folder)
        with steps.step("prepare"):
            prepared = prepare(scan, cascade)
        with steps.step("cascade"):
            prediction = predict(cascade, prepared, classes=probabilities)
        with steps.step("map back"):
            raw, prob = map_back(scan, prepared, prediction, cascade.threshold, chunk_voxels, progress, probabilities)
        with steps.step("largest component"):
            mask, components, removed = keep_largest(raw, cascade)
            del raw
        with steps.step("measure"):
            measured = measure(scan, prepared, prediction, mask, components, removed, chunk_voxels)
            checks = run_checks(scan, cascade, prepared, measured, prediction)
    finally:
        steps.bar.close()
    report = build_report(scan, cascade, folder, prepared, prediction, measured, checks, timings, t_start)
    return SegmentResult(mask, measured.labels, prob, scan.affine, report, probability_names(cascade),
                         scan.path if scan.from_file else None)


class Segmenter:
    """Segment the inner ear in scans with one model, loaded once.

    ``Segmenter()`` uses the shipped model (``innerear/models/robust_cascade``, trained on
    SYNTHETIC phantoms only); ``Segmenter(model_dir)`` a model folder
    (format: ``innerear.inference.modelfolder``), which is read and checked at once. The networks are
    loaded at once too, or with ``load=False`` at the first segmentation (after ``before_load()``;
    ONNX networks in a background thread while the first scan file is read).
    ``runtime``: how the networks run: ``"auto"`` (default) runs the folder's ONNX exports in ONNX
    Runtime when it has them (the shipped models do; TensorFlow is never imported), else the Keras
    networks; ``"onnx"`` insists on the exports, ``"keras"`` uses the ``.keras`` networks. ``cascade`` wraps an engine already in
    memory (an ``innerear.inference.engine.Cascade``) instead. ``progress`` shows a progress
    bar per scan on stderr.

    >>> seg = Segmenter()                                              # doctest: +SKIP
    >>> result = seg.segment("scan.nii.gz")                            # doctest: +SKIP
    >>> result = seg.segment(volume, spacing=(0.1, 0.1, 0.1))          # doctest: +SKIP
    >>> result.save("ear.nii.gz", labels="labels.nii.gz", report="ear.json")  # doctest: +SKIP
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, *, load: bool = True, progress: bool = False,
                 before_load: Callable[[], None] | None = None, cascade: Any = None,
                 chunk_voxels: int = 1 << 20, runtime: str = "auto") -> None:
        self.model_dir = model_dir
        self.runtime = runtime
        self.progress = progress
        self.chunk_voxels = chunk_voxels
        self._before_load = before_load
        self._cascade = cascade
        self._loading: Future | None = None
        self._model = read_model_folder(model_dir) if cascade is None else None  # checked at once
        if self._model is not None:
            self.folder = self._model.folder
        else:
            self.folder = Path(getattr(cascade, "info", {}).get("folder", model_dir or DEFAULT_MODEL))
        if load:
            self.load()

    def load(self) -> Any:
        """The engine (``innerear.inference.engine.Cascade``), loaded on the first call."""
        if self._cascade is None:
            loading, self._loading = self._loading, None
            if loading is None and self._before_load is not None:
                self._before_load()
            self._cascade = loading.result() if loading is not None else self._load_networks()
            self.folder = Path(self._cascade.info.get("folder", self.folder))
        return self._cascade

    def _load_networks(self) -> Any:
        return load_model_dir(self.model_dir, runtime=self.runtime)

    def _load_beside(self) -> None:
        """Start loading ONNX networks in a background thread while a scan file is read: decompressing the
        scan (zlib) and opening the sessions (ONNX Runtime) mostly run outside Python's lock, so the two
        overlap. :meth:`load` waits for it, and raises its error there; ``before_load`` runs first, here."""
        if self._cascade is not None or self._loading is not None or self._model is None:
            return
        try:
            if self._model.runtime(self.runtime) != "onnx":
                return  # Keras: loaded in turn, as before
        except SegmentError:
            return  # raised by the load step, after the scan is read, as before
        if self._before_load is not None:
            self._before_load()
        pool = ThreadPoolExecutor(1, thread_name_prefix="innerear-load")
        self._loading = pool.submit(self._load_networks)
        pool.shutdown(wait=False)  # the thread ends with its one task

    def _loaded(self) -> tuple[Any, Path]:
        return self.load(), self.folder

    def segment(self, scan: str | os.PathLike | np.ndarray, spacing: Sequence[float] | None = None,
                affine: np.ndarray | None = None, *, probabilities: bool = True) -> SegmentResult:
        """Segment one scan: a path (any format ``innerear.io.read_volume`` reads) or a 3D array.

        For a path, ``spacing`` (mm along the array axes) replaces the file's voxel size (needed for
        TIFF stacks that do not record it); ``affine`` is not allowed. For an array give ``spacing``
        or its voxel-to-world ``affine`` (4x4, RAS+, mm). ``probabilities=False`` skips mapping the
        probabilities back (``result.probabilities`` is None), which saves memory on large scans.
        Bad input raises :class:`~innerear.io.VolumeError` naming the file (or ``<array>``).
        """
        return self._segment(scan, spacing, affine, probabilities=probabilities)

    def _segment(self, scan: str | os.PathLike | np.ndarray, spacing: Sequence[float] | None = None,
                 affine: np.ndarray | None = None, *, probabilities: bool = True,
                 require_labels: str | os.PathLike | None = None) -> SegmentResult:
        t_start = time.perf_counter()
        if isinstance(scan, np.ndarray):
            checked = array_scan(scan, spacing, affine)
        else:
            if affine is not None:
                raise VolumeError(Path(scan), "affine is for arrays; a file's affine comes from its header")
            self._load_beside()
            checked = read_scan(Path(scan), spacing)
        timings = {"read": round(time.perf_counter() - t_start, 3)}
        return run_segmentation(checked, self._loaded, probabilities=probabilities, progress=self.progress,
                                chunk_voxels=self.chunk_voxels, require_labels=require_labels, t_start=t_start,
                                timings=timings)

    def segment_to_files(self, scan: str | os.PathLike, out: str | os.PathLike, *, labels: str | os.PathLike | None = None,
                         probabilities: str | os.PathLike | None = None, mesh: str | os.PathLike | None = None,
                         report: str | os.PathLike | None = None, spacing: Sequence[float] | None = None,
                         force: bool = False, allow_empty: bool = False,
                         dicom_seg: str | os.PathLike | None = None) -> dict:
        """Segment the scan file ``scan`` and write its outputs (:meth:`SegmentResult.save`; and
        ``dicom_seg``, a DICOM SEG, for a DICOM series), checking every output before the work
        starts; ``innerear segment SCAN -o OUT``. Returns the report."""
        scan = Path(scan)
        if not scan.exists():
            raise VolumeError(scan, "file not found")
        paths = Outputs.of(out, labels=labels, probabilities=probabilities, mesh=mesh, report=report,
                           dicom_seg=dicom_seg)
        paths.check(scan, force)
        if paths.dicom_seg is not None and spacing is not None:
            raise SegmentError(scan, "--dicom-seg takes its geometry from the DICOM series; omit --spacing")
        result = self._segment(scan, spacing, probabilities=paths.probabilities is not None,
                               require_labels=paths.labels)
        return write_outputs(result, paths, force, allow_empty)


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
    runtime: str = "auto",
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Segment the inner ear in one scan file: ``(mask, affine, report)`` (:class:`Segmenter` with
    arrays and dicts, for scripts that want no result object).

    ``mask`` is ``uint8`` on the scan's own grid (its shape), ``affine`` the scan's RAS
    affine, ``report`` a JSON-able dict (:meth:`~innerear.inference.report.SegmentReport.to_dict`).
    ``spacing`` (mm) is needed for TIFF stacks that do not record it and overrides any other
    file's voxel size. ``cascade`` reuses a loaded model (:func:`load_model_dir`); otherwise
    ``model_dir`` (default: the shipped model) is loaded after the scan was read and checked and
    after calling ``before_model``. A dict passed as ``labels_out`` receives the structure map as
    ``labels_out["labels"]`` (None for a binary model). ``require_labels`` (the label map's output
    path) refuses a binary model as soon as it is loaded, naming that path. ``runtime``: see :class:`Segmenter`.
    """
    segmenter = Segmenter(model_dir, load=False, progress=progress, before_load=before_model, cascade=cascade,
                          chunk_voxels=chunk_voxels, runtime=runtime)
    result = segmenter._segment(path, spacing, probabilities=False, require_labels=require_labels)
    if labels_out is not None:
        labels_out["labels"] = result.labels
    return result.mask, result.affine, result.report.to_dict()


# --------------------------------------------------------------------------- files
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


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


@dataclass(frozen=True)
class Outputs:
    """The files one segmentation writes: the mask and, where not None, the others."""

    mask: Path
    labels: Path | None = None
    probabilities: Path | None = None
    mesh: Path | None = None
    report: Path | None = None
    dicom_seg: Path | None = None

    @classmethod
    def of(cls, mask: str | os.PathLike, **others: str | os.PathLike | None) -> "Outputs":
        return cls(Path(mask), **{k: Path(v) if v is not None else None for k, v in others.items()})

    def present(self) -> list[Path]:
        """The paths named."""
        return [p for p in (self.mask, self.labels, self.probabilities, self.mesh, self.report, self.dicom_seg)
                if p is not None]

    def check(self, scan: Path | None, force: bool) -> None:
        """Refuse, before any work, outputs that could not be written (or would be overwritten)."""
        try:
            check_writable(self.mask)
        except VolumeError as exc:
            raise SegmentError(self.mask, exc.problem) from None
        taken = {scan.resolve()} if scan is not None else set()
        _check_output(self.mask, VOLUME_SUFFIXES, "the mask", force, taken)
        for path, suffixes, what in ((self.labels, VOLUME_SUFFIXES, "the label map"),
                                     (self.probabilities, (".nii.gz",), "the probability map (compressed NIfTI)"),
                                     (self.mesh, (".stl",), "the mesh"), (self.report, (".json",), "the report"),
                                     (self.dicom_seg, (".dcm",), "the DICOM SEG")):
            if path is not None:
                _check_output(path, suffixes, what, force, taken)
        if self.dicom_seg is not None and (scan is None or volume_format(scan) != "dicom"):
            what = "an array" if scan is None else f"a {volume_format(scan)} file"
            raise SegmentError(scan if scan is not None else self.dicom_seg,
                               f"--dicom-seg needs a DICOM series as input (a folder of DICOM files), this is {what}; "
                               f"write --labels or -o instead")


def check_outputs(scan: Path, out: Path, mesh: Path | None, report: Path | None, force: bool,
                  labels: Path | None = None, probabilities: Path | None = None,
                  dicom_seg: Path | None = None) -> None:
    """Refuse, before any work, outputs that could not be written (or would be overwritten)."""
    Outputs(out, labels, probabilities, mesh, report, dicom_seg).check(scan, force)


def write_outputs(result: SegmentResult, paths: Outputs, force: bool, allow_empty: bool) -> dict:
    """Write ``result``'s files named in ``paths``, all or none; return the report as written."""
    rep = copy.deepcopy(result.report.to_dict())
    name = result.source if result.source is not None else ARRAY
    if paths.labels is not None and result.labels is None:
        raise _no_labels(paths.labels, rep["model"]["folder"])
    if paths.probabilities is not None and result.probabilities is None:
        raise SegmentError(paths.probabilities, "the probabilities were not kept (segment(..., probabilities=True))")
    check = rep["checks"]["inner_ear_volume"]
    if not check["passed"]:
        if not allow_empty:
            raise SegmentError(name, f"{check['reason']}; is the scan a human inner-ear CT with the intensities the "
                                     f"model expects? (--allow-empty writes it anyway)")
        check["allowed_by"] = "--allow-empty"
    t0 = time.perf_counter()
    rep["output"] = {"mask": str(paths.mask), "mesh": str(paths.mesh) if paths.mesh else None,
                     "report": str(paths.report) if paths.report else None,
                     "labels": str(paths.labels) if paths.labels else None,
                     "probabilities": str(paths.probabilities) if paths.probabilities else None,
                     "dicom_seg": str(paths.dicom_seg) if paths.dicom_seg else None}
    if paths.probabilities is not None:
        rep["output"]["probability_volumes"] = list(result.probability_names)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(paths.mask, overwrite=force, suffix=temp_suffix(paths.mask)))
        write_volume_to(tmp, result.mask, result.affine, like=paths.mask)
        if paths.labels is not None:
            tmp_labels = stack.enter_context(atomic_path(paths.labels, overwrite=force,
                                                         suffix=temp_suffix(paths.labels)))
            if is_seg_nrrd(paths.labels):
                write_seg_nrrd(tmp_labels, result.labels, result.affine, name=paths.labels)
            else:
                write_volume_to(tmp_labels, result.labels, result.affine, like=paths.labels)
        if paths.dicom_seg is not None:
            tmp_seg = stack.enter_context(atomic_path(paths.dicom_seg, overwrite=force))
            write_seg_for(tmp_seg, paths.dicom_seg, result.source, result.mask, result.labels, result.affine,
                          rep["model"])
        if paths.probabilities is not None:
            tmp_prob = stack.enter_context(atomic_path(paths.probabilities, overwrite=force))
            write_nifti(tmp_prob, np.asarray(result.probabilities, np.float32), result.affine, compress=True,
                        description="innerear probabilities: " + ", ".join(result.probability_names))
        if paths.mesh is not None:
            tmp_mesh = stack.enter_context(atomic_path(paths.mesh, overwrite=force))
            verts, faces = surface_mesh(*crop_to_mask(result.mask, result.affine))
            write_stl(tmp_mesh, verts, faces, name=f"innerear mask of {name.name} (RAS mm)")
            rep["mesh"] = {"vertices": int(len(verts)), "triangles": int(len(faces)), "frame": "RAS world (mm)"}
        rep["timings_s"]["write"] = round(time.perf_counter() - t0, 3)
        if paths.report is not None:
            tmp_rep = stack.enter_context(atomic_path(paths.report, overwrite=force))
            tmp_rep.write_text(json_text(rep))
    return rep


def segment_to_files(
    scan: str | os.PathLike,
    out: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    *,
    mesh: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    spacing: Sequence[float] | None = None,
    force: bool = False,
    progress: bool = False,
    allow_empty: bool = False,
    before_model: Callable[[], None] | None = None,
    dicom_seg: str | os.PathLike | None = None,
    runtime: str = "auto",
) -> dict:
    """Segment ``scan`` and write the mask (and mesh, report, structure label map, probabilities): all
    of them, or none (:meth:`Segmenter.segment_to_files` with a model loaded for this one scan).

    ``labels`` writes the structure map (uint8: 0 background, 1 cochlea, 2 vestibule,
    3 semicircular canals) on the scan's grid; a binary model is refused. A ``labels`` name
    ending ``.seg.nrrd`` is written as a 3D Slicer segmentation (:mod:`innerear.io.slicer`).
    ``probabilities`` writes the probabilities (float32, compressed NIfTI; see :class:`SegmentResult`).
    ``dicom_seg`` (``.dcm``, for a DICOM series only) writes a DICOM SEG (:mod:`innerear.io.dicomseg`)
    referencing the series: one segment per structure, or the inner ear as one segment for a binary model.

    Everything that can be checked is checked before the work starts (output names, that
    their folders exist and are writable, overwriting without ``force``, the model folder).
    An empty mask or an implausible inner-ear volume (the report's ``checks``) is refused
    with :class:`SegmentError` and nothing is written, unless ``allow_empty``. The files are
    written to temporary names and renamed only when all of them are complete. ``runtime``: see
    :class:`Segmenter`. Returns the report.
    """
    scan = Path(scan)
    if not scan.exists():
        raise VolumeError(scan, "file not found")
    Outputs.of(out, labels=labels, probabilities=probabilities, mesh=mesh, report=report,
               dicom_seg=dicom_seg).check(scan, force)
    if dicom_seg is not None and spacing is not None:
        raise SegmentError(scan, "--dicom-seg takes its geometry from the DICOM series; omit --spacing")
    segmenter = Segmenter(model_dir, load=False, progress=progress, before_load=before_model, runtime=runtime)
    return segmenter.segment_to_files(scan, out, labels=labels, probabilities=probabilities, mesh=mesh, report=report,
                                      spacing=spacing, force=force, allow_empty=allow_empty, dicom_seg=dicom_seg)


def write_seg_for(tmp: Path, path: Path, scan: Path, mask: np.ndarray, labels: np.ndarray | None, affine: np.ndarray,
                  model: dict) -> None:
    """Write the DICOM SEG of a segmentation of the DICOM series ``scan`` to ``tmp`` (``path``'s temporary
    file): the structures when the model gives them, else the mask as one inner-ear segment; the algorithm
    is the model card's name (or the model folder's) with the card's date as its version."""
    card = model.get("training") or {}
    algorithm = Algorithm(name=str(card.get("name") or Path(model["folder"]).name),
                          version=str(card.get("date") or "undated"), software_version=f"innerear {__version__}")
    if labels is None:
        write_dicom_seg(tmp, scan, mask, affine, algorithm, (INNER_EAR_STRUCTURE,), name=path)
    else:
        write_dicom_seg(tmp, scan, labels, affine, algorithm, name=path)


def _no_labels(path: str | os.PathLike, folder) -> SegmentError:
    return SegmentError(path, f"the model {folder} segments the inner ear as one class and has no structure labels "
                              f"(cochlea, vestibule, canals) to write; omit --labels or use a model trained with "
                              f"structures")
