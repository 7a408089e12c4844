"""Data preparation as in the paper: pairs, resampling to N³, z-scoring, folds and slice views.

Prepared volumes are reoriented to the closest RAS+ orientation, so array axis 0 runs
left→right, axis 1 posterior→anterior and axis 2 inferior→superior; which axis a view
(sagittal, coronal, axial) slices is documented, with the authors' convention, in
:mod:`innerear.settings.views` (whose slicing functions are re-exported here).

Images are resampled with :func:`innerear.data.resample.resample_image_bounded` (the cubic
B-spline of ``scipy.ndimage.zoom``, computed in slabs within a memory bound) from a
memory-mapped read where the file allows it.

The normalisers (the paper's z-score with the training set's statistics and the per-scan
percentile normalisation of models in physical units) live in :mod:`innerear.data.normalize`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from innerear.data.resample import DEFAULT_MAX_BYTES, resample_image_bounded, value_range
from innerear.io import VolumeError, check_voxel_size, read_volume, save_npz, spacing_source
from innerear.metrics import dice

CACHE_VERSION = 2
IMAGE_SUFFIXES = ("_image", "_img", "_ct")
LABEL_SUFFIXES = ("_label", "_seg", "_mask")
VOLUME_EXTS = (".nii.gz", ".nii", ".nrrd", ".nhdr")


@dataclass(frozen=True)
class Case:
    """One specimen on disk: its image, its label and (optionally) its structure map."""

    case_id: str
    image: Path
    label: Path | None
    structures: Path | None = None


@dataclass
class PreparedCase:
    """One specimen resampled to the profile's grid (raw intensities, not yet z-scored)."""

    case_id: str
    image: np.ndarray  # float32 (g, g, g)
    label: np.ndarray | None  # uint8 (g, g, g)
    structures: np.ndarray | None  # uint8 (g, g, g), 0 bg, 1 cochlea, 2 vestibule, 3 canals
    spacing: tuple[float, float, float]  # mm, of the prepared grid
    affine: np.ndarray  # prepared grid -> world (mm)
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray  # the scan's own voxel -> world (mm), as stored
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- discovery
def _split_name(path: Path) -> tuple[str, str] | None:
    name = path.name
    for ext in VOLUME_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], ext
    return None


def discover_pairs(data_dir: str | os.PathLike) -> list[Case]:
    """Pair ``<id>_image.<ext>`` with ``<id>_label.<ext>`` (and ``<id>_structures``) files.

    Raises :class:`FileNotFoundError` for a missing folder and :class:`VolumeError` for an
    image without a label (or the reverse), naming the file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data folder not found (run `innerear phantoms` or put scans there)")
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    structures: dict[str, Path] = {}
    for path in sorted(data_dir.iterdir()):
        parts = _split_name(path)
        if parts is None or path.name.startswith("."):
            continue
        stem = parts[0]
        for suffixes, bucket in ((IMAGE_SUFFIXES, images), (LABEL_SUFFIXES, labels), (("_structures",), structures)):
            for suffix in suffixes:
                if stem.lower().endswith(suffix):
                    bucket[stem[: -len(suffix)]] = path
                    break
    for cid, path in labels.items():
        if cid not in images:
            raise VolumeError(path, "label without a matching image file")
    cases = []
    for cid, path in sorted(images.items()):
        if cid not in labels:
            raise VolumeError(path, "image without a matching label file (expected <id>_label.<ext>)")
        cases.append(Case(cid, path, labels[cid], structures.get(cid)))
    if not cases:
        raise FileNotFoundError(f"{data_dir}: no <id>_image / <id>_label volume pairs found")
    return cases


# --------------------------------------------------------------------------- geometry
def to_canonical(array: np.ndarray, affine: np.ndarray, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an array to the closest RAS+ axis order (flips and permutations only).

    With ``copy=False`` the result is a view of ``array`` (flipped and transposed strides),
    so a memory-mapped scan stays on disk until it is read slab by slab.
    """
    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    new_affine = np.asarray(affine) @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    return (np.ascontiguousarray(out) if copy else out), new_affine


def resampled_affine(affine: np.ndarray, shape: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Affine of a grid of ``grid`` voxels covering the same extent as ``shape`` voxels.

    Voxel edges coincide (scipy's ``grid_mode=True``): new voxel ``i`` has its centre at old
    continuous index ``(i + 0.5) * shape / grid - 0.5``.
    """
    scale = np.asarray(shape, float) / np.asarray(grid, float)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(affine) @ step


def _grid(grid: int | Sequence[int]) -> tuple[int, int, int]:
    return (grid,) * 3 if isinstance(grid, int) else tuple(int(g) for g in grid)


def resample_image(array: np.ndarray, grid: int | Sequence[int], order: int = 3,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Resample an image to ``grid`` voxels with a cubic B-spline (the paper's choice).

    ``scipy.ndimage.zoom(order=3, mode="nearest", grid_mode=True)``'s result, computed by
    :func:`innerear.data.resample.resample_image_bounded` in slabs within ``max_bytes`` (a
    memory-mapped ``array`` is read one slab at a time). ``order`` other than 3 falls back
    to ``ndimage.zoom`` on the whole array.
    """
    grid = _grid(grid)
    if order == 3:
        return resample_image_bounded(array, grid, max_bytes=max_bytes)
    zoom = [g / s for g, s in zip(grid, array.shape)]
    out = ndimage.zoom(np.asarray(array, np.float32), zoom, order=order, mode="nearest", grid_mode=True)
    return out.astype(np.float32, copy=False)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (in voxels) to the boundary of a binary mask: negative inside.

    Boundaries sit half-way between a foreground and a background voxel centre.
    """
    mask = np.asarray(mask) != 0
    outside = ndimage.distance_transform_edt(~mask) - 0.5
    inside = ndimage.distance_transform_edt(mask) - 0.5
    return np.where(mask, -inside, outside).astype(np.float32)


def resample_label(label: np.ndarray, grid: int | Sequence[int], method: str = "sdf") -> np.ndarray:
    """Resample a binary label to ``grid`` voxels, keeping it binary.

    ``"sdf"`` (default) interpolates the label's signed distance map linearly and keeps the
    voxels whose centre falls inside the original surface, so a canal narrower than a new
    voxel survives wherever a new voxel centre lies within it; computed on the label's
    bounding box only. ``"antialiased"`` low-pass filters the 0/1 mask, interpolates and
    thresholds at 0.5 (a majority vote: thin canals that cover less than half of every new
    voxel disappear); ``"nearest"`` picks the nearest original voxel; ``"linear"``
    interpolates the 0/1 mask and thresholds at 0.5.
    """
    grid = _grid(grid)
    factors = np.asarray(label.shape, float) / np.asarray(grid, float)
    zoom = 1.0 / factors
    mask = np.asarray(label) != 0
    if method == "sdf":
        out = np.zeros(grid, np.uint8)
        if not mask.any():
            return out
        # new voxels whose centres can fall within 1 new voxel of the label
        nz = np.nonzero(mask)
        lo_new = np.maximum(0, np.floor((np.array([a.min() for a in nz]) + 0.5) / factors - 0.5).astype(int) - 1)
        hi_new = np.minimum(grid, np.ceil((np.array([a.max() for a in nz]) + 0.5) / factors - 0.5).astype(int) + 2)
        # original voxels needed to interpolate those centres, plus a margin for the distances
        lo_old = np.maximum(0, np.floor((lo_new + 0.5) * factors - 0.5).astype(int) - 2)
        hi_old = np.minimum(mask.shape, np.ceil((hi_new - 0.5) * factors - 0.5).astype(int) + 3)
        crop = mask[tuple(slice(a, b) for a, b in zip(lo_old, hi_old))]
        sdf = signed_distance(crop)
        coords = [((np.arange(a, b) + 0.5) * f - 0.5 - o) for a, b, f, o in zip(lo_new, hi_new, factors, lo_old)]
        grid_pts = np.meshgrid(*coords, indexing="ij")
        vals = ndimage.map_coordinates(sdf, grid_pts, order=1, mode="nearest")
        out[tuple(slice(a, b) for a, b in zip(lo_new, hi_new))] = (vals <= 0).astype(np.uint8)
        return out
    m = mask.astype(np.float32)
    if method == "nearest":
        return ndimage.zoom(m, zoom, order=0, mode="nearest", grid_mode=True).astype(np.uint8)
    if method == "antialiased":
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
        if np.any(sigma > 0):
            m = ndimage.gaussian_filter(m, sigma, mode="nearest")
    elif method != "linear":
        raise ValueError(f"unknown label resampling method {method!r}")
    out = ndimage.zoom(m, zoom, order=1, mode="nearest", grid_mode=True)
    return (out >= 0.5).astype(np.uint8)


def resample_structures(structures: np.ndarray, label: np.ndarray, grid: int | Sequence[int]) -> np.ndarray:
    """Resample a structure map so that it agrees with the resampled ``label``."""
    grid = _grid(grid)
    factors = np.asarray(structures.shape, float) / np.asarray(grid, float)
    sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
    classes = [c for c in np.unique(structures) if c != 0]
    if not classes:
        return np.zeros(grid, np.uint8)
    scores = []
    for c in classes:
        m = (structures == c).astype(np.float32)
        if np.any(sigma > 0):
            m = ndimage.gaussian_filter(m, sigma, mode="nearest")
        scores.append(ndimage.zoom(m, 1.0 / factors, order=1, mode="nearest", grid_mode=True))
    best = np.asarray(classes, np.uint8)[np.argmax(np.stack(scores), axis=0)]
    return np.where(label != 0, best, 0).astype(np.uint8)


def upsample_label(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour map of a resampled label back onto the original ``shape``."""
    zoom = [s / g for s, g in zip(shape, label.shape)]
    return ndimage.zoom(label.astype(np.uint8), zoom, order=0, mode="nearest", grid_mode=True)


def label_resampling_dice(label: np.ndarray, grid: int | Sequence[int], method: str = "sdf") -> float:
    """Dice of a label resampled to ``grid`` and mapped back, against the original label."""
    small = resample_label(label, grid, method)
    return dice(upsample_label(small, label.shape), label)


# --------------------------------------------------------------------------- loading
def label_values_found(label: np.ndarray) -> list:
    """The distinct values of a label volume (fast for small non-negative integers)."""
    label = np.asarray(label)
    if np.issubdtype(label.dtype, np.integer) and label.size and 0 <= label.min() and label.max() < 1 << 16:
        return np.flatnonzero(np.bincount(label.ravel())).tolist()
    return np.unique(label).tolist()


def binary_label(path: str | os.PathLike, label: np.ndarray, label_values: Sequence[int] | None = None) -> np.ndarray:
    """A label volume as a ``uint8`` 0/1 mask, refusing what would be merged silently.

    Without ``label_values`` the label must be binary: 0 and one foreground value (1, or
    e.g. 255). A multi-label map (0, 2, 5, ...) needs ``label_values`` (``innerear train
    --label-values 2,5``): those values are the foreground, every other value background.
    An empty foreground is refused either way. Errors name the file and the values found.
    """
    found = label_values_found(label)
    shown = ", ".join(f"{v:g}" for v in found[:12]) + (", ..." if len(found) > 12 else "")
    if label_values is None:
        if len(found) > 2 or (len(found) == 2 and found[0] != 0):
            raise VolumeError(path, f"label holds values {{{shown}}}, expected 0 and one foreground value; for a "
                                    f"multi-label map say which values are the inner ear (innerear train "
                                    f"--label-values V1,V2,...)")
        mask = np.asarray(label) != 0
    else:
        mask = np.isin(label, list(label_values))
    if not mask.any():
        wanted = "" if label_values is None else f" (foreground values {', '.join(map(str, label_values))})"
        raise VolumeError(path, f"label has no foreground voxel{wanted}: values found {{{shown}}}")
    return mask.astype(np.uint8)


def load_case(case: Case, label_values: Sequence[int] | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Read a case's image, label and structure map, checking that their grids agree, that the
    voxel size is plausible and that the label is binary (see :func:`binary_label`)."""
    image, spacing, affine = read_volume(case.image, mmap=True)
    check_voxel_size(case.image, spacing, spacing_source(case.image, False))
    lo, hi = value_range(image)
    if lo == hi:
        raise VolumeError(case.image, "image is constant (all voxels have the same value)")
    arrays = []
    for path in (case.label, case.structures):
        if path is None:
            arrays.append(None)
            continue
        arr, _, aff = read_volume(path)
        if arr.shape != image.shape:
            raise VolumeError(path, f"shape {arr.shape} differs from its image's {image.shape} ({case.image.name})")
        if not np.allclose(aff, affine, atol=1e-3):
            raise VolumeError(path, f"affine differs from its image's ({case.image.name}); the label is not on the image grid")
        arrays.append(arr)
    if arrays[0] is not None:
        arrays[0] = binary_label(case.label, arrays[0], label_values)
    return image, arrays[0], arrays[1], affine


def _source_key(case: Case, grid: tuple[int, int, int], label_values: Sequence[int] | None = None) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{grid}".encode())
    if label_values is not None:
        h.update(f"|labels{sorted(label_values)}".encode())
    for path in (case.image, case.label, case.structures):
        if path is not None:
            st = path.stat()
            h.update(f"|{path.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prepare_case(case: Case, grid: int | Sequence[int], label_values: Sequence[int] | None = None) -> PreparedCase:
    """Load one case, reorient to RAS+, resample image (cubic spline) and label to ``grid``."""
    grid = _grid(grid)
    image, label, structures, affine = load_case(case, label_values)
    source_shape, source_affine = tuple(int(s) for s in image.shape), affine
    image_c, affine_c = to_canonical(image, affine, copy=False)
    prepared_affine = resampled_affine(affine_c, image_c.shape, grid)
    lab = struct = None
    if label is not None:
        label_c, _ = to_canonical(label, affine)
        lab = resample_label(label_c, grid)
        if structures is not None:
            struct = resample_structures(to_canonical(structures, affine)[0], lab, grid)
    spacing = tuple(float(v) for v in np.linalg.norm(prepared_affine[:3, :3], axis=0))
    return PreparedCase(
        case_id=case.case_id,
        image=resample_image(image_c, grid),
        label=lab,
        structures=struct,
        spacing=spacing,
        affine=prepared_affine,
        source_shape=source_shape,
        source_affine=source_affine,
        meta={"image": str(case.image), "label": str(case.label) if case.label else None},
    )


def prepare_dataset(
    data_dir: str | os.PathLike,
    grid: int,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    label_values: Sequence[int] | None = None,
) -> list[PreparedCase]:
    """Prepare every case of ``data_dir``; reuse cached arrays when the sources are unchanged.

    ``label_values`` picks the foreground values of multi-label maps (see :func:`binary_label`).
    The cache is written all or nothing: new entries (and the cache folder) only once every case
    is prepared, so a refused case (shape or affine mismatch, bad label values) leaves no file
    and no folder behind.
    """
    cases = discover_pairs(data_dir)
    cache = Path(cache_dir) if cache_dir is not None else None
    out = []
    new: list[tuple[Path, str, PreparedCase]] = []
    iterator: Iterable[Case] = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="prepare", unit="case")
    for case in iterator:
        if cache is None:
            out.append(prepare_case(case, grid, label_values))
            continue
        key = _source_key(case, _grid(grid), label_values)
        path = cache / f"{case.case_id}.npz"
        prepared = _load_cached(path, key)
        if prepared is None:
            prepared = prepare_case(case, grid, label_values)
            new.append((path, key, prepared))
        out.append(prepared)
    if new:
        cache.mkdir(parents=True, exist_ok=True)
    for path, key, prepared in new:
        _save_cached(path, key, prepared)
    return out


def _save_cached(path: Path, key: str, p: PreparedCase) -> None:
    meta = dict(p.meta, key=key, case_id=p.case_id, spacing=p.spacing, source_shape=p.source_shape)
    arrays = dict(image=p.image, affine=p.affine, source_affine=p.source_affine, meta=np.array(json.dumps(meta)))
    if p.label is not None:
        arrays["label"] = p.label
    if p.structures is not None:
        arrays["structures"] = p.structures
    save_npz(path, **arrays)


def _load_cached(path: Path, key: str) -> PreparedCase | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                return None
            return PreparedCase(
                case_id=meta["case_id"],
                image=z["image"],
                label=z["label"] if "label" in z else None,
                structures=z["structures"] if "structures" in z else None,
                spacing=tuple(meta["spacing"]),
                affine=z["affine"],
                source_shape=tuple(meta["source_shape"]),
                source_affine=z["source_affine"],
                meta={k: v for k, v in meta.items() if k not in ("key", "case_id", "spacing", "source_shape")},
            )
    except Exception:  # a damaged cache entry is rebuilt, never trusted
        return None


# --------------------------------------------------------------------------- folds
def make_folds(case_ids: Sequence[str], n_folds: int = 4, seed: int = 0) -> list[list[str]]:
    """Split specimens (not slices) into ``n_folds`` test folds at random, with a seed."""
    ids = sorted(case_ids)
    if len(ids) < n_folds:
        raise ValueError(f"{len(ids)} specimens cannot make {n_folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [sorted(ids[i] for i in chunk) for chunk in np.array_split(order, n_folds)]


def split_fold(case_ids: Sequence[str], folds: list[list[str]], fold: int) -> tuple[list[str], list[str]]:
    """Return ``(train_ids, test_ids)`` for one fold."""
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold must be in 0..{len(folds) - 1}, got {fold}")
    test = list(folds[fold])
    return [c for c in sorted(case_ids) if c not in test], test
