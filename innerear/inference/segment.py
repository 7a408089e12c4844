"""Segment your own scan with a trained cascade.

:func:`segment_scan` reads a scan in any format :func:`innerear.io.read_volume` knows,
prepares it exactly as the training volumes were prepared (``preprocess.to_canonical`` and
``preprocess.resample_image`` to the cascade's grid: the memory-bounded cubic B-spline of
:mod:`innerear.data.resample`, reading an uncompressed NIfTI scan memory-mapped, slab by slab),
runs the engine, :meth:`innerear.inference.engine.Cascade.predict` (default ``"fast"`` mode, as
everywhere), and maps the last stage's probabilities back
onto the scan's own grid: every scan voxel's centre is carried through the world frame into
the prepared grid (``inv(prepared_affine) @ scan_affine``), the probability map is sampled
there by linear interpolation (in slabs, to bound memory), thresholded at 0.5, and the
largest connected component (:func:`innerear.metrics.largest_component`, the cascade's
connectivity) is kept. The mask therefore has the scan's shape and affine.

:func:`segment_to_files` adds the command line's checks and writes the mask (NIfTI, NRRD or
MetaImage by extension), optionally an STL surface and a JSON report, all or nothing.

Two kinds of model folders are read. A *grid* model (``cascade.json`` has ``"grid"``: the paper's
recipe, e.g. the shipped ``phantom_cascade``) sees every scan resampled to N³ as above. A
*physical* model (``"voxel_mm"``, no ``"grid"``) sees the scan at its own field of view,
resampled to the model's voxel size (:func:`prepare_scan_physical`: a Gaussian prefilter when
that shrinks the scan by more than 1.5 times), padded to the networks' multiple and normalised
per scan (:class:`innerear.data.preprocess.PercentileNormalizer`); the pad never yields foreground.
A model that outputs structures (cochlea / vestibule / canals) also gives a label map
(``--labels``), each structure's volume and the cochlea's measures
(:func:`innerear.metrics.cochlea.measure_cochlea`).

The shipped models were trained on the project's SYNTHETIC phantoms only: the default,
``innerear/models/robust_cascade`` (robust recipe, physical units, structures), and the paper
recipe's ``innerear/models/phantom_cascade`` (64³ grid); see their ``model_card.json``.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

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
from innerear.metrics import largest_component
from innerear.settings.views import ORIENTATIONS
from innerear.settings.structures import STRUCTURE_NAMES

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: the shipped segmenter: the robust recipe (physical units, structures; see innerear.training.robust)
DEFAULT_MODEL = MODELS_DIR / "robust_cascade"
#: the earlier shipped model of the paper recipe (64³ grid, fixed z-score): the benchmark's baseline
PAPER_RECIPE_MODEL = MODELS_DIR / "phantom_cascade"
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
#: the lower bound (mm³) instead of ``PLAUSIBLE_VOLUME["min"]`` when the mask touches the scan's border,
#: i.e. the field of view cuts the labyrinth (a cochlea-centred crop); a card may state ``"min_cut"``
PLAUSIBLE_CUT_MIN = {
    "min_cut": 5.0,
    "source_cut": ("When the mask touches the border of the field of view the labyrinth is cut and only part of it "
                   "is in the scan, so the whole-labyrinth lower bound does not apply; 5 mm^3 is about a fifth of the "
                   "smallest scala tympani (23 uL, Dhanasingh et al. 2021) and less than any field of view in scope "
                   "(8 mm or more, centred on the labyrinth or the cochlea) holds of a labyrinth; a smaller mask is a "
                   "speck, not a cut labyrinth. The upper bound still applies. tests/test_segment_physical.py checks "
                   "that 8 mm cochlea-centred crops of the project's phantoms lie above it."),
}
#: the 1-D Wasserstein distance (normalised intensity, 1 = the 0.5-99.5 percentile span) between the
#: scan's normalised histogram and the model card's above which the report warns
HISTOGRAM_WARN_DISTANCE = 0.1


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
    missing = [k for k in ("stages", "normalizer") if k not in spec]
    if "grid" not in spec and "voxel_mm" not in spec:
        missing.append("grid or voxel_mm")
    if missing or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise SegmentError(spec_path, f"model folder incomplete: cascade.json lacks {missing or ['stages']}")
    from innerear.data.normalize import normalizer_from_dict

    try:
        normalizer_from_dict(spec["normalizer"])
    except (TypeError, ValueError) as exc:
        raise SegmentError(spec_path, f"model folder incomplete: cascade.json's normalizer: {exc}") from None
    if spec.get("grid") is None:
        check_model_voxel(spec_path, spec.get("voxel_mm"))
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
        for key in ("grid", "voxel_mm", "order", "backbone", "fold", "normalizer"):
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


def check_model_voxel(path: Path, voxel_mm) -> None:
    """Refuse a physical model's ``voxel_mm`` that is not a positive size within the scan range."""
    try:
        sizes = [float(v) for v in np.atleast_1d(np.asarray(voxel_mm, float))]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) not in (1, 3) or not all(VOXEL_MM_RANGE[0] <= v <= VOXEL_MM_RANGE[1] for v in sizes):
        raise SegmentError(path, f"model folder incomplete: voxel_mm {voxel_mm!r} is not one or three sizes "
                                 f"within {VOXEL_MM_RANGE[0]:g}-{VOXEL_MM_RANGE[1]:g} mm")


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
    """Load a trained cascade (default: the shipped phantom model) as a :class:`~innerear.inference.engine.Cascade`.

    With ``reuse`` a folder whose files are unchanged is loaded once per process.
    """
    from innerear.settings.profiles import import_backend

    folder, spec = check_model_dir(model_dir)
    import_backend()
    from innerear.inference.engine import load_cascade

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
#: the most voxels a scan prepared for a physical model may have (400³: a 60 mm cube at 0.15 mm)
MAX_PREPARED_VOXELS = 400**3


def prepare_scan(image: np.ndarray, affine: np.ndarray, grid: int,
                 max_bytes: int = PREPARE_MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Resample a scan to the cascade's grid as training did: ``(volume, prepared_affine)``.

    The reorientation is a view and the resampling reads the scan in slabs within
    ``max_bytes``, so a memory-mapped ``image`` is never copied whole into memory.
    """
    from innerear.data.preprocess import resample_image, resampled_affine, to_canonical

    image_c, affine_c = to_canonical(np.asanyarray(image), np.asarray(affine, float), copy=False)
    prepared_affine = resampled_affine(affine_c, image_c.shape, (grid,) * 3)
    try:
        volume = resample_image(image_c, grid, max_bytes=max_bytes)
    except ValueError as exc:  # a scan too large for that budget: the resampler's default (2 GiB)
        if "too small" not in str(exc):
            raise
        volume = resample_image(image_c, grid)
    return volume, prepared_affine


@dataclass(frozen=True)
class PhysicalScan:
    """A scan prepared for a physical model (:func:`prepare_scan_physical`).

    ``volume`` (float32, raw intensities) is the scan in canonical orientation at the model's
    voxel size, padded on every side to a multiple of the networks' pooling factor; ``affine``
    maps its voxels to the world (give it to :func:`map_to_scan`); ``core`` selects the voxels
    whose centres lie within the scan (the rest is padding, edge values of the scan);
    ``step`` is the new voxel in source voxels per canonical axis and ``antialias_sigma`` the
    Gaussian prefilter's width in source voxels (0: none).
    """

    volume: np.ndarray
    affine: np.ndarray
    core: tuple[slice, slice, slice]
    step: tuple[float, float, float]
    antialias_sigma: tuple[float, float, float]

    @property
    def spacing_mm(self) -> list[float]:
        return [float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0)]

    def padding(self) -> list[list[int]]:
        """Voxels of padding ``[before, after]`` per axis."""
        return [[sl.start, n - sl.stop] for sl, n in zip(self.core, self.volume.shape)]

    def outside_zeroed(self, values: np.ndarray | None) -> np.ndarray | None:
        """``values`` (on the prepared grid) with the padding set to 0, so it yields no foreground."""
        if values is None:
            return None
        out = np.zeros_like(values)
        out[self.core] = values[self.core]
        return out


def physical_geometry(shape: Sequence[int], affine: np.ndarray, voxel_mm: float | Sequence[float], multiple: int
                      ) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray, tuple[slice, ...]]:
    """The prepared grid of a canonical scan ``(shape, affine)``: ``(grid, steps, starts,
    prepared_affine, core)``.

    Each axis gets ``ceil(extent / voxel_mm)`` voxels of exactly ``voxel_mm``, rounded up to a
    multiple of ``multiple`` and centred on the scan (the padding splits between both sides);
    new voxel ``i`` sits at source index ``starts + i * steps``. An axis already at ``voxel_mm``
    keeps its voxel centres (an odd padding puts the extra voxel after the scan).
    """
    shape = np.asarray(shape, int)
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    voxel = np.broadcast_to(np.asarray(voxel_mm, float), (3,))
    multiple = max(1, int(multiple))
    steps = voxel / spacing
    needed = np.maximum(1, np.ceil(shape / steps - 1e-6)).astype(int)
    grid = (multiple * np.ceil(needed / multiple)).astype(int)
    starts = (shape - 1) / 2.0 - (grid - 1) / 2.0 * steps
    same = np.abs(steps - 1.0) < 1e-9
    steps = np.where(same, 1.0, steps)
    starts = np.where(same, -((grid - shape) // 2), starts)
    step_affine = np.eye(4)
    step_affine[:3, :3] = np.diag(steps)
    step_affine[:3, 3] = starts
    first = np.maximum(0, np.ceil((-0.5 - starts) / steps - 1e-9)).astype(int)
    last = np.minimum(grid - 1, np.floor((shape - 0.5 - starts) / steps + 1e-9)).astype(int)
    core = tuple(slice(int(a), int(b) + 1) for a, b in zip(first, last))
    return tuple(int(g) for g in grid), steps, starts, np.asarray(affine, float) @ step_affine, core


def prepare_scan_physical(image: np.ndarray, affine: np.ndarray, voxel_mm: float | Sequence[float], multiple: int,
                          max_bytes: int = PREPARE_MAX_BYTES, antialias: bool = True,
                          max_voxels: int = MAX_PREPARED_VOXELS) -> PhysicalScan:
    """Resample a scan to a physical model's voxel size and pad it to the networks' multiple.

    The scan is reoriented to canonical (RAS+) axes as a view, resampled with the memory-bounded
    cubic B-spline (:func:`innerear.data.resample.resample_image_bounded`, reading a memory-mapped
    scan slab by slab within ``max_bytes``) to voxels of exactly ``voxel_mm`` (``antialias``: a
    Gaussian prefilter along every axis shrunk by more than 1.5 times, so a fine scan's noise is
    averaged, not aliased) and padded on every side to a multiple of ``multiple`` with the
    scan's edge values (intensities the normaliser knows; no dark slab that could look like
    lumen). Map results back with ``map_to_scan(values, prepared.affine, image.shape, affine)``
    after :meth:`PhysicalScan.outside_zeroed`. A field of view that would need more than
    ``max_voxels`` prepared voxels (a whole head, say) raises :class:`ValueError` saying so.
    """
    from innerear.data.preprocess import to_canonical
    from innerear.data.resample import antialias_sigma, resample_image_bounded

    image_c, affine_c = to_canonical(np.asanyarray(image), np.asarray(affine, float), copy=False)
    grid, steps, starts, prepared_affine, core = physical_geometry(image_c.shape, affine_c, voxel_mm, multiple)
    if int(np.prod(grid)) > max_voxels:
        fov = np.asarray(image_c.shape) * np.linalg.norm(affine_c[:3, :3], axis=0)
        voxel = np.broadcast_to(np.asarray(voxel_mm, float), (3,))
        side = max_voxels ** (1 / 3) * float(voxel.min())
        shown = f"{voxel[0]:g}" if np.all(voxel == voxel[0]) else " x ".join(f"{v:g}" for v in voxel)
        raise ValueError(f"field of view {' x '.join(f'{v:.0f}' for v in fov)} mm is too large for the model's "
                         f"{shown} mm voxels ({' x '.join(map(str, grid))} voxels, at most {max_voxels}); crop the "
                         f"scan around the inner ear (about {side:.0f} mm per axis at most)")
    kwargs = dict(steps=steps, starts=starts, antialias=antialias)
    if np.all(steps == 1.0):  # already at the model's voxel size: the spline through the samples is the scan
        pad = [(int(-a), int(g - n + a)) for a, g, n in zip(starts, grid, image_c.shape)]
        volume = np.pad(np.asarray(image_c, np.float32), pad, mode="edge")
    else:
        try:
            volume = resample_image_bounded(image_c, grid, max_bytes=max_bytes, **kwargs)
        except ValueError as exc:  # a scan too large for that budget: the resampler's default (2 GiB)
            if "too small" not in str(exc):
                raise
            volume = resample_image_bounded(image_c, grid, **kwargs)
    sigma = tuple(float(antialias_sigma(s)) if antialias else 0.0 for s in steps)
    return PhysicalScan(volume, prepared_affine, core, tuple(float(s) for s in steps), sigma)


def map_to_scan(values: np.ndarray, prepared_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray,
                threshold: float | None = 0.5, chunk_voxels: int = 1 << 20, progress: bool = False,
                order: int = 1) -> np.ndarray:
    """Sample a prepared-grid map at every voxel centre of the scan grid ``(shape, affine)``.

    Linear interpolation (``order=1``; ``scipy.ndimage.map_coordinates``, edge values beyond
    the grid), computed in slabs of about ``chunk_voxels`` voxels. With ``threshold`` returns
    the ``uint8`` mask ``value >= threshold``, else the float32 values. ``order=0`` (nearest
    neighbour, e.g. a label map) returns the values in their own type. Where the result can
    only be 0 (a mask outside the region at or above ``threshold``, a label map outside its
    non-zero region), only the scan voxels within that region's bounding box are computed.
    """
    from tqdm.auto import tqdm

    shape = tuple(int(s) for s in shape)
    m = np.linalg.inv(np.asarray(prepared_affine, float)) @ np.asarray(affine, float)
    if order == 0:
        values = np.asarray(values)
        out = np.zeros(shape, values.dtype)
        region = values != 0
    else:
        values = np.asarray(values, np.float32)
        out = np.zeros(shape, np.uint8 if threshold is not None else np.float32)
        region = values >= threshold if threshold is not None else None
    lo, hi = np.zeros(3, int), np.array(shape)
    if region is not None:
        if not region.any():
            return out
        lo, hi = _scan_box(region, m, shape)
        if np.any(hi <= lo):
            return out
    j, k = np.meshgrid(np.arange(lo[1], hi[1], dtype=float), np.arange(lo[2], hi[2], dtype=float), indexing="ij")
    plane = m[:3, 1, None, None] * j + m[:3, 2, None, None] * k + m[:3, 3, None, None]  # (3, Y, Z)
    step = max(1, chunk_voxels // max(1, j.size))
    starts = range(int(lo[0]), int(hi[0]), step)
    for i0 in tqdm(starts, desc="map back", unit="slab", leave=False, file=sys.stderr,
                   disable=not progress or len(starts) < 2):
        i = np.arange(i0, min(int(hi[0]), i0 + step), dtype=float)
        coords = plane[:, None] + m[:3, 0, None, None, None] * i[None, :, None, None]
        vals = ndimage.map_coordinates(values, coords, order=order, mode="nearest")
        out[i0 : i0 + len(i), lo[1]:hi[1], lo[2]:hi[2]] = vals >= threshold if (threshold is not None and order) else vals
    return out


def _scan_box(region: np.ndarray, m: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Scan-index bounding box ``[lo, hi)`` of every scan voxel whose centre maps (``m``: scan index to
    prepared index) within one prepared voxel of ``region``'s bounding box."""
    idx = [np.flatnonzero(region.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    far = 1e6  # a region at the grid's edge extends beyond it ("nearest": edge values out there)
    plo = np.array([i[0] - 1.0 if i[0] > 0 else -far for i in idx])
    phi = np.array([i[-1] + 1.0 if i[-1] < n - 1 else far for i, n in zip(idx, region.shape)])
    corners = np.array(np.meshgrid(*zip(plo, phi), indexing="ij")).reshape(3, -1)
    inv = np.linalg.inv(m)
    scan = inv[:3, :3] @ corners + inv[:3, 3, None]
    lo = np.maximum(0, np.floor(scan.min(1)) - 1).astype(int)
    hi = np.minimum(shape, np.ceil(scan.max(1)) + 2).astype(int)
    return lo, hi


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
    """The model card's ``plausible_inner_ear_volume_mm3`` (``min``, ``max``, ``source`` and
    optionally ``min_cut``, ``source_cut``), or :data:`PLAUSIBLE_VOLUME` for a model folder whose
    card states none; :data:`PLAUSIBLE_CUT_MIN` fills a missing ``min_cut``."""
    stated = card.get("plausible_inner_ear_volume_mm3") if isinstance(card, dict) else None
    if stated:
        out = {"min": float(stated["min"]), "max": float(stated["max"]), "source": stated.get("source", "model card")}
        if "min_cut" in stated:
            out.update(min_cut=float(stated["min_cut"]), source_cut=stated.get("source_cut", "model card"))
    else:
        out = dict(PLAUSIBLE_VOLUME)
    return {**PLAUSIBLE_CUT_MIN, **out}


def touches_border(mask: np.ndarray) -> bool:
    """Does the mask reach a face of its array (the scan's field of view)?"""
    mask = np.asarray(mask)
    return any(bool(np.take(mask, i, axis=a).any()) for a in range(mask.ndim) for i in (0, -1))


def volume_check(volume_mm3: float, voxels: int, bounds: dict, cut: bool = False) -> dict:
    """Is the segmented inner ear non-empty and of a plausible size? A JSON-able record with
    ``passed`` and, when it failed, a one-line ``reason``.

    ``cut`` (the mask touches the field of view's border, :func:`touches_border`): the scan
    holds part of the labyrinth, so the lower bound is ``bounds["min_cut"]`` instead of the
    whole labyrinth's ``min``; the upper bound is the same."""
    lo, hi = bounds["min"], bounds["max"]
    applied = float(bounds.get("min_cut", lo)) if cut else lo
    reason = None
    if voxels == 0:
        reason = "no inner ear found: the mask is empty"
    elif not applied <= volume_mm3 <= hi:
        what = ("the part of a human inner ear a field of view cuts" if cut else "a human inner ear")
        reason = f"implausible inner-ear volume {volume_mm3:.4g} mm^3 ({what} is within {applied:g}-{hi:g} mm^3)"
    out = {"check": "the mask is non-empty and its volume is within the plausible range",
           "range_mm3": [lo, hi], "source": bounds["source"], "cut_by_field_of_view": bool(cut),
           "applied_range_mm3": [applied, hi], "volume_mm3": volume_mm3, "passed": reason is None, "reason": reason}
    if cut:
        out["source_cut"] = bounds.get("source_cut")
    return out


def intensity_check(cascade, prepared: np.ndarray, card: dict,
                    core: tuple[slice, ...] = (slice(None),) * 3) -> dict:
    """How far the scan's normalised intensities are from the model's training intensities.

    The 1-D Wasserstein distance (:func:`innerear.data.preprocess.histogram_distance`) between the
    normalised histogram of the prepared scan (normalised as the networks see it, then the
    voxels within the scan, ``core``; the card's bins) and the card's ``"intensity_histogram"``
    (or ``cascade.json``'s, for a run folder without a card); ``passed`` is False above
    :data:`HISTOGRAM_WARN_DISTANCE` or the histogram's own ``"warn_above"`` (a training recipe
    may state the spread of its own scans). A card without a histogram gives ``distance`` None."""
    from innerear.data.normalize import histogram_distance, normalised_histogram

    ref = card.get("intensity_histogram") if isinstance(card, dict) else None
    ref = ref or getattr(cascade, "info", {}).get("intensity_histogram")
    out = {"check": "the scan's normalised intensity histogram is close to the training data's",
           "metric": "1-D Wasserstein distance, normalised intensity (1 = the span the normaliser maps to 0..1)",
           "warn_above": HISTOGRAM_WARN_DISTANCE, "distance": None, "passed": True, "reason": None}
    if not ref:
        out["note"] = "the model card has no intensity_histogram"
        return out
    try:
        edges = np.asarray(ref["edges"], float)
        hist = normalised_histogram(cascade.normalizer(prepared)[core], bins=edges)
        distance = histogram_distance(hist, ref)
    except (KeyError, TypeError, ValueError) as exc:
        out["note"] = f"the model card's intensity_histogram is unusable ({exc})"
        return out
    warn = float(ref.get("warn_above", HISTOGRAM_WARN_DISTANCE)) if isinstance(ref, dict) else HISTOGRAM_WARN_DISTANCE
    out["distance"], out["warn_above"] = round(distance, 4), warn
    if distance > warn:
        out["passed"] = False
        out["reason"] = (f"the scan's normalised intensities are far from the training data's (histogram distance "
                         f"{distance:.3f} > {warn:g}): other contrast, inverted intensities or strong artefacts? "
                         f"Check the mask")
    return out


def structure_labels(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A structure map that agrees with ``mask``: ``labels`` inside it, 0 outside, and every mask
    voxel without a structure given its nearest labelled voxel's (within the mask's bounding box)."""
    out = np.where(mask != 0, labels, 0).astype(np.uint8)
    if not mask.any():
        return out
    idx = np.nonzero(mask)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in idx)
    crop, crop_mask = out[box], mask[box] != 0
    missing = crop_mask & (crop == 0)
    if missing.any() and crop.any():
        nearest = ndimage.distance_transform_edt(crop == 0, return_distances=False, return_indices=True)
        crop[missing] = crop[tuple(n[missing] for n in nearest)]
    return out


def structure_measures(labels: np.ndarray, affine: np.ndarray) -> dict:
    """Voxels and volume (mm³) of each structure of a label map."""
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=len(STRUCTURE_NAMES) + 1)
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))
    return {name: {"label": k, "voxels": int(counts[k]), "volume_mm3": float(counts[k] * voxel_mm3)}
            for k, name in STRUCTURE_NAMES.items()}


def cochlea_measures(labels: np.ndarray, affine: np.ndarray) -> dict:
    """The cochlea's measures (:func:`innerear.metrics.cochlea.measure_cochlea`: volume, duct length along
    the lateral wall, turns, method) from label 1, on its bounding box; or why there are none."""
    cochlea = labels == 1
    if not cochlea.any():
        return {"available": False, "reason": "no cochlea in the label map"}
    from innerear.metrics.cochlea import measure_cochlea

    crop, _, crop_affine = _cropped(cochlea.astype(np.uint8), affine)
    cut = touches_border(cochlea)
    try:
        measures = measure_cochlea(crop, crop_affine)
    except ValueError as exc:  # a predicted cochlea that is no spiral: say so, don't fail the segmentation
        return {"available": False, "reason": f"the predicted cochlea could not be measured: {exc}",
                "touches_field_of_view_border": cut}
    out = measures.to_dict()
    out["available"] = True
    out["touches_field_of_view_border"] = cut
    doubts = []
    if cut:
        doubts.append("the cochlea touches the scan's border: the duct may be cut, the length too short")
    if out.get("tunnels", 0) > 0:
        doubts.append("turns of the predicted cochlea touch each other: length and turns may be too small")
    if out.get("kept_fraction", 1.0) < 0.95:
        doubts.append(f"only {out['kept_fraction']:.0%} of the predicted cochlea is one piece; the rest was left out")
    out["doubts"] = doubts
    return out


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
    affine, ``report`` a JSON-able dict (input, model, volume in mm³, bounding box,
    component count, per-structure volumes and cochlea measures for a model with structures,
    the intensity check, timings). ``spacing`` (mm) is needed for TIFF stacks that do not record
    it and overrides any other file's voxel size. ``cascade`` reuses a loaded model
    (:func:`load_model_dir`); otherwise ``model_dir`` (default: the shipped model) is loaded,
    after the scan was read and checked and after calling ``before_model`` (the command line
    sets the backend's threads there). A dict passed as ``labels_out`` receives the structure
    map on the scan's grid as ``labels_out["labels"]`` (None for a binary model).
    ``require_labels`` (the label map's output path) refuses a binary model as soon as it is
    loaded, naming that path.
    """
    from tqdm.auto import tqdm

    from innerear import __version__
    from innerear.data.resample import value_range

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
        if require_labels is not None and getattr(cascade, "n_classes", None) == 1:
            raise _no_labels(require_labels, folder)
        t = step("load model", t)

        bar.set_description("prepare")
        voxel_mm = model_voxel_mm(cascade)
        if voxel_mm is None:  # a grid model: the paper's N^3 preparation
            prepared, prepared_affine = prepare_scan(image, affine, cascade.grid)
            physical = None
            core = (slice(None),) * 3
        else:
            try:
                physical = prepare_scan_physical(image, affine, voxel_mm, cascade.pooling)
            except ValueError as exc:
                if "too large" not in str(exc):
                    raise
                raise VolumeError(path, str(exc)) from None
            prepared, prepared_affine, core = physical.volume, physical.affine, physical.core
        t = step("prepare", t)

        bar.set_description("cascade")
        mask_p, prob_p, labels_p = cascade.predict(prepared, return_labels=True)
        if physical is not None:  # the padding never yields foreground
            mask_p, prob_p, labels_p = (physical.outside_zeroed(v) for v in (mask_p, prob_p, labels_p))
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
        labels = structures = cochlea = None
        if labels_p is not None:
            labels = structure_labels(map_to_scan(labels_p, prepared_affine, image.shape, affine, None, chunk_voxels,
                                                  order=0), mask)
            structures = structure_measures(labels, affine)
            cochlea = cochlea_measures(labels, affine)
        try:
            card = read_model_card(folder)
        except (OSError, ValueError):
            card = {}
        intensity = intensity_check(cascade, prepared, card, core)
        t = step("measure", t)
    finally:
        bar.close()

    if labels_out is not None:
        labels_out["labels"] = labels
    spec = cascade.info
    checks = {
        "voxel_size": {"check": "every voxel size is within the range", "range_mm": list(VOXEL_MM_RANGE),
                       "spacing_mm": list(spacing_mm), "passed": True},
        "inner_ear_volume": volume_check(measures["volume_mm3"], measures["voxels"], plausible_volume(card),
                                         cut=touches_border(mask)),
        "intensity": intensity,
    }
    warnings = [c["reason"] for c in checks.values() if not c["passed"]]
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
            "voxel_mm": list(voxel_mm) if voxel_mm is not None else None,
            "kind": "physical (fixed voxel size)" if voxel_mm is not None else "grid (every scan resampled to N^3)",
            "structures": labels_p is not None,
            "normalizer": cascade.normalizer.to_dict(),
            "training": card,
        },
        "prepared": {
            "grid": list(prepared.shape),
            "spacing_mm": [float(v) for v in np.linalg.norm(prepared_affine[:3, :3], axis=0)],
            "affine": prepared_affine.tolist(),
            "padding_voxels": physical.padding() if physical is not None else None,
            "antialias_sigma_source_voxels": list(physical.antialias_sigma) if physical is not None else None,
            "voxels": int(np.count_nonzero(mask_p)),
            "volume_mm3": float(np.count_nonzero(mask_p) * abs(np.linalg.det(prepared_affine[:3, :3]))),
        },
        "threshold": cascade.threshold,
        "inner_ear": dict(measures, components=n_components, components_kept=min(1, n_components),
                          voxels_removed=removed),
        "structures": structures,
        "cochlea": cochlea,
        "intensity_histogram_distance": intensity["distance"],
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
    from innerear.io import json_default

    scan, out = Path(scan), Path(out)
    mesh = Path(mesh) if mesh is not None else None
    report_path = Path(report) if report is not None else None
    labels_path = Path(labels) if labels is not None else None
    if not scan.exists():
        raise VolumeError(scan, "file not found")
    check_outputs(scan, out, mesh, report_path, force, labels_path)
    check_model_dir(model_dir)
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
            from innerear.io.mesh import surface_mesh, write_stl

            tmp_mesh = stack.enter_context(atomic_path(mesh, overwrite=force))
            verts, faces = surface_mesh(*_cropped(mask, affine))
            write_stl(tmp_mesh, verts, faces, name=f"innerear mask of {scan.name} (RAS mm)")
            rep["mesh"] = {"vertices": int(len(verts)), "triangles": int(len(faces)), "frame": "RAS world (mm)"}
        rep["timings_s"]["write"] = round(time.perf_counter() - t0, 3)
        if report_path is not None:
            tmp_rep = stack.enter_context(atomic_path(report_path, overwrite=force))
            tmp_rep.write_text(json.dumps(rep, indent=2, sort_keys=True, default=json_default) + "\n")
    return rep


def _no_labels(path: str | os.PathLike, folder) -> SegmentError:
    return SegmentError(path, f"the model {folder} segments the inner ear as one class and has no structure labels "
                              f"(cochlea, vestibule, canals) to write; omit --labels or use a model trained with "
                              f"structures")


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

    ``dest`` gets ``stage<k>_<view>/{best.keras,stage.json}`` per stage (the networks without
    their optimizer state), a ``cascade.json``
    whose stage paths are relative to ``dest`` and a ``model_card.json`` (the stages'
    held-out Dice and training record, plus ``card``). Written to a temporary folder and
    renamed; an existing ``dest`` is replaced.
    """
    from innerear.nets.checkpoints import save_for_inference

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
            save_for_inference(stage / "best.keras", tmp / name / "best.keras")  # no optimizer state
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
            **({"voxel_mm": spec["voxel_mm"]} if spec.get("voxel_mm") is not None else {}),
            "exported_from": str(src),
            "plausible_inner_ear_volume_mm3": PLAUSIBLE_VOLUME,
            **(card or {}),
        }
        (tmp / "model_card.json").write_text(json.dumps(model_card, indent=2, sort_keys=True, default=str) + "\n")
        for path in tmp.rglob("*"):  # a model folder is shared: readable by all
            path.chmod(0o755 if path.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest
