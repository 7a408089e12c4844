"""What lies around the labyrinth and looks like it: a cut face of the specimen block, the
internal auditory canal, vessels and mastoid air cells, all drawn from
``numpy.random.default_rng([seed, index, 3])`` in that order."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from innerear.data.phantom.geometry import Tube, line, perp_frames, rand_unit, resample, tangents, unit
from innerear.data.phantom.params import SurroundingsParams
from innerear.data.phantom.raster import TubeSet
from innerear.data.phantom.scene import Grid, Labyrinth


@dataclass(frozen=True)
class Surroundings:
    """The dark look-alikes and the cut face, in world mm."""

    cut: tuple[np.ndarray, float] | None  # plane (normal n, offset d): n.x > d is embedding medium
    iac: TubeSet  # internal auditory canal (soft tissue)
    iac_info: dict
    vessels: TubeSet | None
    vessel_info: list[dict]
    air_c: np.ndarray  # (n, 3) air-cell centres
    air_r: np.ndarray  # (n,) radii
    air_info: list[dict]


def _in_block(cut: tuple[np.ndarray, float] | None, c: np.ndarray, margin: float = 0.0) -> bool:
    """Whether ``c`` lies in the specimen block (on the bone side of the cut face)."""
    return cut is None or float(np.dot(cut[0], c)) < cut[1] - margin


def _cut_face(p: SurroundingsParams, lab: Labyrinth, lo, hi, rng) -> tuple[np.ndarray, float] | None:
    """Sometimes a cut face of the specimen block (embedding medium beyond it)."""
    if not p.cut_face:
        return None
    axis = int(rng.integers(0, 3))
    n = np.zeros(3)
    n[axis] = 1.0 if rng.random() < 0.5 else -1.0
    n = unit(n + rng.normal(0.0, 0.25, 3))
    dmin = float(np.max(lab.lumen.c @ n + lab.lumen.rmax)) + 1.5
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
    dmax = float(np.max(corners @ n)) - 0.8
    if dmax > dmin:
        return (n, float(rng.uniform(dmin, dmax)))
    return None


def _internal_auditory_canal(p: SurroundingsParams, lab: Labyrinth, scale: float, rng) -> tuple[Tube, float]:
    """Soft tissue along the modiolar axis, medial to the cochlea; returns (tube, radius)."""
    axis = unit(-lab.modiolar_axis + rng.normal(0.0, 0.08, 3))
    r_iac = p.iac_radius * scale
    sep = 0.3
    while True:
        start = lab.modiolus + axis * sep
        pts = line(start, start + axis * 30.0, 0.1)
        if np.all(lab.distance(pts) - r_iac >= 0.5) or sep > 8:
            break
        sep += 0.2
    return Tube("iac", 1, pts, np.full((len(pts), 3), r_iac), perp_frames(tangents(pts))), r_iac


def _vessels(p: SurroundingsParams, lab: Labyrinth, grid: Grid, scale: float, cut, rng) -> list[Tube]:
    """Thin dark tubes passing close to the labyrinth (never within ``1.5`` voxels of it)."""
    lab_pts, lab_r = lab.lumen.c, lab.lumen.rmax
    w_gap = max(0.15, 1.5 * grid.voxel)
    vessels = []
    for _ in range(p.n_vessels):
        for _try in range(40):
            i = int(rng.integers(0, len(lab_pts)))
            c = lab_pts[i]
            rv = rng.uniform(0.15, 0.4) * scale
            u = rand_unit(rng)
            target = c + u * (lab_r[i] + rv + w_gap + rng.uniform(0.05, 0.8))
            v = unit(np.cross(u, rand_unit(rng)))
            p0 = target - v * rng.uniform(3.0, 9.0) + rng.normal(0.0, 1.0, 3)
            p2 = target + v * rng.uniform(3.0, 9.0) + rng.normal(0.0, 1.0, 3)
            p1 = 2 * target - 0.5 * (p0 + p2)
            t = np.linspace(0.0, 1.0, 400)[:, None]
            pts = resample((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2, 0.05)[0]
            if np.min(lab.distance(pts) - rv) < w_gap or not _in_block(cut, target):
                continue
            vessels.append(Tube("vessel", 1, pts, np.full((len(pts), 3), rv), perp_frames(tangents(pts))))
            break
    return vessels


def _air_cells(p: SurroundingsParams, lab: Labyrinth, grid: Grid, scale: float, cut, iac: TubeSet,
               r_iac: float, lo, hi, rng) -> tuple[list[np.ndarray], list[float], list[bool]]:
    """Mastoid air cells: round, dark; a few close to the labyrinth (a couple of voxels of bone
    between), the others in the trabecular bone. Returns (centres, radii, near flags)."""
    lab_pts, lab_r = lab.lumen.c, lab.lumen.rmax
    cells_c, cells_r, near_flags = [], [], []
    n_air = p.n_air_cells
    n_near = int(rng.integers(1, min(3, n_air) + 1))
    for k in range(n_air):
        near = k < n_near
        shrink = 1.0
        for _try in range(120):
            if near:
                r = max(0.25, 0.5 * rng.uniform(0.5, 2.5) * shrink) * scale
                gap = rng.uniform(2.0, 3.5) * grid.voxel + 0.02
                i = int(rng.integers(0, len(lab_pts)))
                c = lab_pts[i] + rand_unit(rng) * (lab_r[i] + r + gap)
                ok = lab.distance(c)[0] - r >= 0.9 * gap
            else:
                r = max(0.25, 0.5 * math.exp(rng.uniform(math.log(0.5), math.log(5.0))) * shrink) * scale
                c = lo + rng.random(3) * (hi - lo)
                ok = lab.distance(c)[0] - r >= 0.8 * p.capsule_mm * scale
            shrink = max(0.2, shrink * 0.98)  # smaller cells fit more easily
            if ok and _cell_is_free(c, r, cells_c, cells_r, iac, r_iac, cut, lo, hi):
                cells_c.append(c)
                cells_r.append(r)
                near_flags.append(near)
                break
    return cells_c, cells_r, near_flags


def _cell_is_free(c, r, cells_c, cells_r, iac: TubeSet, r_iac: float, cut, lo, hi) -> bool:
    """An air cell at ``c`` of radius ``r`` overlaps no other cell nor the internal auditory
    canal, and lies in the block and (mostly) in the field of view."""
    for c2, r2 in zip(cells_c, cells_r):
        if np.linalg.norm(c - c2) < r + r2 + 0.2:
            return False
    d_iac = np.min(np.linalg.norm(iac.c - c, axis=1)) - r_iac - r
    return d_iac > 0.2 and _in_block(cut, c, r) and np.all(c > lo - 0.5 * r) and np.all(c < hi + 0.5 * r)


def place_surroundings(p: SurroundingsParams, grid: Grid, lab: Labyrinth, scale: float,
                       index: int, seed: int) -> Surroundings:
    """Cut face, internal auditory canal, vessels and air cells of specimen ``index``."""
    rng = np.random.default_rng([int(seed), int(index), 3])
    lo = np.array([a[0] for a in grid.axes]) - grid.voxel / 2
    hi = np.array([a[-1] for a in grid.axes]) + grid.voxel / 2
    cut = _cut_face(p, lab, lo, hi, rng)
    iac_tube, r_iac = _internal_auditory_canal(p, lab, scale, rng)
    iac = TubeSet([iac_tube])
    iac_info = {"radius_mm": r_iac, "gap_mm": float(np.min(lab.distance(iac_tube.pts) - r_iac))}
    vessels = _vessels(p, lab, grid, scale, cut, rng)
    vessel_info = [{"diameter_mm": float(2 * t.semi[0, 0]),
                    "gap_mm": float(np.min(lab.distance(t.pts) - t.semi[0, 0]))} for t in vessels]
    cells_c, cells_r, near_flags = _air_cells(p, lab, grid, scale, cut, iac, r_iac, lo, hi, rng)
    air_info = [{"diameter_mm": float(2 * r), "near": bool(n), "gap_mm": float(lab.distance(c)[0] - r)}
                for c, r, n in zip(cells_c, cells_r, near_flags)]
    return Surroundings(cut, iac, iac_info, TubeSet(vessels) if vessels else None, vessel_info,
                        np.array(cells_c).reshape(-1, 3), np.array(cells_r), air_info)
