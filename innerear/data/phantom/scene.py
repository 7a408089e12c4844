"""The specimen in the scanner: its voxel grid and the labyrinth posed in world coordinates.

:func:`place` scales, mirrors (left/right) and rotates the anatomy, chooses the field of
view (or, for a fixed ``shape``, orients and if needed shrinks the labyrinth to fit it), and
returns the :class:`Grid` and the posed :class:`Labyrinth`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from innerear.data.phantom.anatomy import LAYOUT_DS, Anatomy
from innerear.data.phantom.geometry import Ellipsoid, rotmat, unit
from innerear.data.phantom.params import SpecimenParams
from innerear.data.phantom.raster import TubeSet, block_levels
from innerear.settings.structures import COCHLEA


@dataclass(frozen=True)
class Grid:
    """The scanner's voxel grid (world mm, RAS+)."""

    voxel: float  # mm (isotropic)
    dims: np.ndarray  # (3,) int
    origin: np.ndarray  # centre of voxel (0, 0, 0)
    axes: list[np.ndarray]  # voxel-centre coordinates along each axis
    affine: np.ndarray  # 4x4 voxel -> world
    levels: list[int]  # block sizes for rasterising (see :func:`raster.block_levels`)


@dataclass(frozen=True)
class Labyrinth:
    """The labyrinth posed in the scanner (world mm)."""

    lumen: TubeSet  # the labelled tubes
    vest: Ellipsoid
    lamina: TubeSet  # osseous spiral lamina (image only)
    lamina_weight: float  # its contrast (thinner than a voxel: partial volume)
    sk_idx: np.ndarray  # (n, 3) voxels on the centrelines, sorted by axis 0
    sk_code: np.ndarray  # (n,) their structure codes
    modiolus: np.ndarray  # base of the modiolar axis
    modiolar_axis: np.ndarray

    def distance(self, pts: np.ndarray) -> np.ndarray:
        """Distance (mm) from points to the labyrinth lumen (a close lower bound)."""
        pts = np.atleast_2d(pts)
        d, idx = self.lumen.tree.query(pts, k=8)
        tube = np.min(d - self.lumen.rmax[idx], axis=1)
        return np.minimum(tube, self.vest.surface_distance(pts) - 0.05)


@dataclass(frozen=True)
class View:
    """A fixed field of view (an acquisition's): size, voxel, what it is centred on, offset.

    ``offset`` (each in [-1, 1]) moves the centre: for ``"labyrinth"`` by up to the slack
    around the labyrinth plus 10 % of its extent (most of it stays inside), for
    ``"cochlea"`` by up to 10 % of the field of view (the canals may be cut).
    """

    voxel_mm: float
    fov_mm: tuple[float, float, float]
    centre: str  # "labyrinth" or "cochlea"
    offset: tuple[float, float, float]


@dataclass(frozen=True)
class Placement:
    """The anatomy's map into the scanner and the result of placing it."""

    lin: np.ndarray  # 3x3 anatomy -> world (rotation x mirror x scale)
    scale: float  # total scale (drawn size x fit_scale)
    fit_scale: float  # < 1 where the labyrinth was shrunk to fit a fixed shape
    grid: Grid
    labyrinth: Labyrinth


def geometry_ds(voxel_mm: float, scale: float) -> float:
    """Centreline sampling (mm): under half a voxel (the centreline voxels stay 26-connected)."""
    return float(min(LAYOUT_DS, 0.45 * voxel_mm / scale))


def _mirror(side: str) -> np.ndarray:
    # anatomical x is lateral; in RAS+ a left ear's lateral is -x
    return np.diag([-1.0, 1.0, 1.0]) if side == "left" else np.eye(3)


def _extent(anat: Anatomy, lin: np.ndarray, scale: float):
    pts = np.concatenate([t.pts for t in anat.tubes if t.lumen]) @ lin.T
    r = np.concatenate([t.semi.max(1) for t in anat.tubes if t.lumen])[:, None] * scale
    lo, hi = (pts - r).min(0), (pts + r).max(0)
    v = anat.vestibule.transformed(lin, scale)
    half = v.world_half_extent()
    return np.minimum(lo, v.centre - half), np.maximum(hi, v.centre + half)


def _proper_axis_rotations() -> list[np.ndarray]:
    out = []
    for perm in ((0, 1, 2), (1, 2, 0), (2, 0, 1), (1, 0, 2), (0, 2, 1), (2, 1, 0)):
        for signs in np.ndindex(2, 2, 2):
            m = np.zeros((3, 3))
            for r, c in enumerate(perm):
                m[r, c] = (-1.0) ** signs[r]
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def _fit(p: SpecimenParams, anat: Anatomy, pose: np.ndarray, mirror: np.ndarray,
         shape: tuple[int, int, int] | None, margin: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Grid size, axis-aligned orientation and shrink factor: (dims, base, fit_scale)."""
    voxel, scale = p.voxel_mm, p.scale
    if shape is None:
        lin = pose @ mirror * scale
        lo, hi = _extent(anat, lin, scale)
        fov = np.maximum(np.asarray(p.pose.fov_mm), hi - lo + 2 * margin)
        dims = np.maximum(8, np.round(fov / voxel)).astype(int)
        return dims, np.eye(3), 1.0
    dims = np.asarray([int(s) for s in shape])
    if dims.shape != (3,) or (dims < 8).any():
        raise ValueError(f"shape must be three sizes >= 8, got {shape!r}")
    fov = dims * voxel
    # orient the specimen in the scanner so that it fits best, then shrink if needed
    best = None
    for cand in _proper_axis_rotations():
        lin = cand @ pose @ mirror * scale
        lo, hi = _extent(anat, lin, scale)
        f = float(np.min((fov - 2 * margin) / (hi - lo)))
        if best is None or f > best[0] + 1e-9:
            best = (f, cand)
    fit_scale = min(1.0, best[0])
    if fit_scale <= 0.25:  # shrunk to a quarter: not an inner ear any more
        raise ValueError(f"shape {tuple(int(d) for d in dims)} at {voxel * 1000:.1f} um voxels "
                         "is too small for an inner ear")
    return dims, best[1], fit_scale


def _grid(p: SpecimenParams, dims: np.ndarray, lo: np.ndarray, hi: np.ndarray, margin: float) -> Grid:
    """The field of view around the labyrinth's box [lo, hi], offset by the drawn fraction."""
    voxel = p.voxel_mm
    fov = dims * voxel
    slack = np.maximum(fov - (hi - lo) - 2 * margin, 0.0)
    start = lo - margin - np.asarray(p.pose.offset_frac) * slack  # world position of the FOV corner
    origin = start + voxel / 2.0  # centre of voxel (0, 0, 0)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([voxel] * 3)
    affine[:3, 3] = origin
    return Grid(voxel, dims, origin, [origin[a] + voxel * np.arange(dims[a]) for a in range(3)], affine,
                block_levels(voxel))


def _labyrinth(anat: Anatomy, lin: np.ndarray, scale: float, grid: Grid) -> Labyrinth:
    """The anatomy mapped by ``lin`` into the grid's world frame."""
    voxel, origin, dims = grid.voxel, grid.origin, grid.dims
    tubes = [t.transformed(lin, scale) for t in anat.tubes]
    lam = anat.lamina.transformed(lin, scale)
    lam.semi[:, 1] = np.maximum(lam.semi[:, 1], 0.5 * voxel)
    # skeleton voxels: every tube's centreline (and the connectors to the vestibule centre)
    sk_idx, sk_code = [], []
    for t in tubes:
        ijk = np.rint((t.pts - origin) / voxel).astype(np.int64)
        ok = ((ijk >= 0) & (ijk < dims)).all(1)
        sk_idx.append(ijk[ok])
        sk_code.append(np.full(ok.sum(), t.code, np.int8))
    sk_idx = np.concatenate(sk_idx)
    sk_code = np.concatenate(sk_code)
    order = np.lexsort((sk_idx[:, 2], sk_idx[:, 1], sk_idx[:, 0]))
    return Labyrinth(
        lumen=TubeSet([t for t in tubes if t.lumen]),
        vest=anat.vestibule.transformed(lin, scale),
        lamina=TubeSet([lam]),
        lamina_weight=float(min(1.0, 0.08 * scale / voxel)),
        sk_idx=sk_idx[order],
        sk_code=sk_code[order],
        modiolus=(np.asarray(anat.info["modiolus_base"]) @ lin.T),
        modiolar_axis=unit(np.asarray(anat.info["modiolar_axis"]) @ lin.T),
    )


def _cochlea_centre(anat: Anatomy, lin: np.ndarray) -> np.ndarray:
    """Centre of the cochlea's bounding box (world mm)."""
    pts = np.concatenate([t.pts for t in anat.tubes if t.lumen and t.code == COCHLEA]) @ lin.T
    return 0.5 * (pts.min(0) + pts.max(0))


def _view_grid(view: View, anat: Anatomy, lin: np.ndarray, scale: float) -> Grid:
    """The acquisition's grid: a fixed field of view centred as ``view`` says (it may cut)."""
    voxel = float(view.voxel_mm)
    fov = np.broadcast_to(np.asarray(view.fov_mm, float), (3,))
    dims = np.maximum(8, np.round(fov / voxel)).astype(int)
    size = dims * voxel
    off = np.asarray(view.offset, float)
    if view.centre == "cochlea":
        centre = _cochlea_centre(anat, lin) + off * 0.1 * size
    else:
        lo, hi = _extent(anat, lin, scale)
        ext = hi - lo
        centre = 0.5 * (lo + hi) + off * (np.maximum(size - ext, 0.0) / 2 + 0.1 * np.minimum(ext, size))
    origin = centre - (dims - 1) / 2.0 * voxel
    affine = np.eye(4)
    affine[:3, :3] = np.diag([voxel] * 3)
    affine[:3, 3] = origin
    return Grid(voxel, dims, origin, [origin[a] + voxel * np.arange(dims[a]) for a in range(3)], affine,
                block_levels(voxel))


def place(p: SpecimenParams, anat: Anatomy, shape: tuple[int, int, int] | None,
          view: View | None = None) -> Placement:
    """Pose the anatomy in the scanner (``shape``: a fixed grid, ``view``: an acquisition's
    field of view, else the drawn field of view)."""
    if view is not None:
        if shape is not None:
            raise ValueError("give either a fixed shape or an acquisition, not both")
        lin = rotmat(np.asarray(p.pose.pose_axis), p.pose.pose_deg) @ _mirror(p.side) * p.scale
        grid = _view_grid(view, anat, lin, p.scale)
        return Placement(lin, p.scale, 1.0, grid, _labyrinth(anat, lin, p.scale, grid))
    pose = rotmat(np.asarray(p.pose.pose_axis), p.pose.pose_deg)
    mirror = _mirror(p.side)
    margin = 1.0 if shape is None else 0.5  # mm of bone at least around the labyrinth
    dims, base, fit_scale = _fit(p, anat, pose, mirror, shape, margin)
    scale_total = p.scale * fit_scale
    lin = base @ pose @ mirror * scale_total
    lo, hi = _extent(anat, lin, scale_total)
    grid = _grid(p, dims, lo, hi, margin)
    return Placement(lin, scale_total, fit_scale, grid, _labyrinth(anat, lin, scale_total, grid))
