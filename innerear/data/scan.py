"""A scan's geometry in physical units: preparing it for a cascade and mapping results back.

:func:`prepare_scan` resamples a scan to a grid model's N³ grid (the paper's recipe);
:func:`prepare_scan_physical` resamples it to a physical model's voxel size and pads it to the
networks' multiple (:class:`PhysicalScan`, geometry from :func:`physical_geometry`);
:func:`map_to_scan` is the one resampler between two grids through world coordinates (linear or
nearest neighbour), used to map predictions back onto the scan's own grid, to move class maps
and to bring a label onto its image's grid.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from innerear.data.preprocess import resample_image, resampled_affine, to_canonical
from innerear.data.resample import antialias_sigma, resample_image_bounded

PREPARE_MAX_BYTES = 512 << 20  # the resampler's working memory in `innerear segment`
#: the most voxels a scan prepared for a physical model may have (400³: a 60 mm cube at 0.15 mm)
MAX_PREPARED_VOXELS = 400**3


def prepare_scan(image: np.ndarray, affine: np.ndarray, grid: int,
                 max_bytes: int = PREPARE_MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Resample a scan to the cascade's grid as training did: ``(volume, prepared_affine)``.

    The reorientation is a view and the resampling reads the scan in slabs within
    ``max_bytes``, so a memory-mapped ``image`` is never copied whole into memory.
    """
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
    keeps its voxel centres (an odd padding puts the extra voxel after the scan), also when its
    voxel size differs from ``voxel_mm`` by less than a thousandth of a voxel over the scan's length.
    """
    shape = np.asarray(shape, int)
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    voxel = np.broadcast_to(np.asarray(voxel_mm, float), (3,))
    multiple = max(1, int(multiple))
    steps = voxel / spacing
    needed = np.maximum(1, np.ceil(shape / steps - 1e-6)).astype(int)
    grid = (multiple * np.ceil(needed / multiple)).astype(int)
    starts = (shape - 1) / 2.0 - (grid - 1) / 2.0 * steps
    # already at voxel_mm: up to the round-off of a voxel size stored as float32 (NIfTI's pixdim),
    # which would otherwise cost a full spline resampling to move voxels by a millionth of a voxel
    same = np.abs(steps - 1.0) * shape < 1e-3
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
                order: int = 1, fill: float | None = None) -> np.ndarray:
    """Sample a map on one grid ``(values, prepared_affine)`` at every voxel centre of another grid
    ``(shape, affine)`` through world coordinates: THE resampler between grids of the package
    (``innerear segment``'s map back, the robust recipe's class maps, the Hear-EU labels).

    Linear interpolation (``order=1``; ``scipy.ndimage.map_coordinates``), computed in slabs of
    about ``chunk_voxels`` voxels. With ``threshold`` returns the ``uint8`` mask
    ``value >= threshold``, else the float32 values. ``order=0`` (nearest neighbour, e.g. a label
    map) returns the values in their own type. Beyond the grid: its edge values (``fill`` None),
    or ``fill`` for every point more than half a voxel outside it. Where the result can only be 0
    (a mask outside the region at or above ``threshold``, a label map outside its non-zero
    region), only the voxels within that region's bounding box are computed.
    """
    shape = tuple(int(s) for s in shape)
    m = np.linalg.inv(np.asarray(prepared_affine, float)) @ np.asarray(affine, float)
    if order == 0:
        values = np.asarray(values)
        if values.dtype == bool:  # map_coordinates has no boolean arrays
            return map_to_scan(values.view(np.uint8), prepared_affine, shape, affine, threshold, chunk_voxels,
                               progress, order, fill).astype(bool)
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
        vals = ndimage.map_coordinates(values, coords, order=order, mode="nearest" if fill is None else "grid-constant",
                                       cval=0.0 if fill is None else fill)
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


def crop_to_mask(mask: np.ndarray, affine: np.ndarray, margin: int = 2
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mask's bounding box (plus a margin): ``(crop, spacing, crop_affine)``, for meshing and
    measuring a structure of a large scan."""
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
