"""Anatomy realism (opt-in, see :class:`~.params.AnatomyRealism`): what real temporal bones
have and the plain phantoms leave out.

* structures *attached* to the labyrinth that are not labyrinth (the largest-component step
  cannot remove them): the fundus of the internal auditory canal (cochlear and vestibular
  nerve canals reaching the basal turn and the vestibule), the cochlear aqueduct (a thin
  fluid canal from the scala tympani of the basal turn near the round window, widening
  medially), the vestibular aqueduct (from the vestibule's posteromedial wall, running
  posteriorly, 8-10 mm), and the round and oval windows
  opening the basal turn and the vestibule to a middle-ear air cavity;
* a thin brighter septum (osseous spiral lamina and basilar membrane) across the cochlear
  lumen, dividing it into two scalae in the image (the label holds both);
* air in the lumen (bubbles, a partial fluid filling), air darker than fluid;
* a connected mastoid air-cell honeycomb (Voronoi cells with thin, perforated bony septa)
  in place of the isolated spherical cells.

None of these changes the label. Everything is drawn from its own streams,
``numpy.random.default_rng([seed, index, 2, 13, k])`` (``k`` one per feature): stream
``[seed, index, 2]`` itself is the anatomy's layout draw, which must stay as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from innerear.data.phantom.anatomy import Anatomy
from innerear.data.phantom.geometry import Ellipsoid, Tube, line, perp_frames, rand_unit, resample, tangents, unit
from innerear.data.phantom.params import AnatomyRealism, SpecimenParams
from innerear.data.phantom.raster import TubeSet, coarse_nodes, ellipsoid_mask, interp, raster, spheres_mask
from innerear.data.phantom.scene import Grid, Labyrinth
from innerear.data.phantom.specimen import (
    T_AIR,
    T_AQUEDUCT,
    T_BONE,
    T_LUMEN,
    T_LUMEN_AIR,
    T_MIDDLE_EAR,
    T_NERVE,
    T_SEPTUM,
)
from innerear.settings.structures import COCHLEA

_STREAM = (2, 13)  # sub-streams of the anatomy's stream number, one per feature
_PV_LEVELS = 100  # partial-volume weights are coded as 1 + round(100 w) in the channels' codes
_HOLE_MM = 0.3  # grid of the honeycomb's hole field


@dataclass(frozen=True)
class Channels:
    """Tubes of one tissue attached to the labyrinth, with their centreline voxels (which keep
    them 26-connected to the label even where they are thinner than a voxel)."""

    tissue: int
    tubes: TubeSet  # codes: 1 + round(100 x partial-volume weight)
    sk_idx: np.ndarray  # (n, 3) centreline voxels, sorted along axis 0
    sk_pv: np.ndarray  # (n,) their partial-volume weights


@dataclass(frozen=True)
class Honeycomb:
    """Mastoid air cells: Voronoi cells of seeds inside ``region`` (outside the otic capsule),
    separated by bony septa ``wall_mm`` thick. The septum between cells i and j is perforated
    (where the hole field is below ``hole_threshold``) when ``(u_i + u_j) mod 1 < open_share``:
    with ~14 neighbours per cell and half of the septa open, the cells form one network."""

    region: Ellipsoid
    tree: cKDTree
    u: np.ndarray  # (n,) uniform per seed
    open_share: float
    wall_mm: float
    holes: np.ndarray  # float32 unit-variance smooth noise on a coarse grid
    h0: np.ndarray
    hg: float
    hole_threshold: float


@dataclass(frozen=True)
class Realism:
    """The realism structures of one specimen, posed in world mm, and their grey values."""

    options: AnatomyRealism
    channels: list[Channels]
    middle_ear: Ellipsoid | None
    septum: TubeSet | None
    septum_add: float  # grey value added on the septum (partial volume included)
    bubbles_c: np.ndarray  # (n, 3)
    bubbles_r: np.ndarray  # (n,)
    fluid_level: tuple[np.ndarray, float, np.ndarray, float] | None  # (centre, radius, up, offset)
    i_air: float | None  # air grey value (None: as the plain phantoms)
    i_iac: float | None  # internal auditory canal grey value (None: as the plain phantoms)
    honeycomb: Honeycomb | None
    info: dict[str, Any]  # what was drawn (the specimen's meta "realism")


def _rng(seed: int, index: int, k: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), *_STREAM, k])


def _bezier(p0, d0, p3, d3, stiff: float, ds: float) -> np.ndarray:
    """Cubic from ``p0`` (leaving along ``d0``) to ``p3`` (arriving along ``d3``), step ``ds``."""
    length = float(np.linalg.norm(p3 - p0))
    b1, b2 = p0 + unit(d0) * length * stiff, p3 - unit(d3) * length * stiff
    u = np.linspace(0.0, 1.0, max(8, int(math.ceil(3.0 * length / ds)) + 1))[:, None]
    pts = (1 - u) ** 3 * p0 + 3 * (1 - u) ** 2 * u * b1 + 3 * (1 - u) * u ** 2 * b2 + u ** 3 * p3
    return resample(pts, ds)[0]


def _tube(name: str, pts: np.ndarray, radius: np.ndarray, voxel: float) -> tuple[Tube, np.ndarray]:
    """A round tube rasterised at least half a voxel wide; returns (tube, partial-volume weight)."""
    pv = np.clip(2.0 * radius / voxel, 0.0, 1.0)
    r = np.maximum(radius, 0.5 * voxel)
    code = 1 + np.rint(_PV_LEVELS * pv).astype(int)
    t = Tube(name, 1, pts, np.stack([r, r, r], axis=1), perp_frames(tangents(pts)))
    return t, code


def _channels(tissue: int, parts: list[tuple[Tube, np.ndarray]], grid: Grid) -> Channels | None:
    """One tissue's tubes with per-sample codes, and their centreline voxels."""
    if not parts:
        return None
    ts = TubeSet([t for t, _ in parts])
    ts.code = np.concatenate([c for _, c in parts]).astype(np.int8)
    pts = np.concatenate([t.pts for t, _ in parts])
    pv = np.concatenate([(c - 1) / _PV_LEVELS for _, c in parts]).astype(np.float32)
    ijk = np.rint((pts - grid.origin) / grid.voxel).astype(np.int64)
    ok = ((ijk >= 0) & (ijk < grid.dims)).all(1)
    ijk, pv = ijk[ok], pv[ok]
    order = np.lexsort((ijk[:, 2], ijk[:, 1], ijk[:, 0]))
    return Channels(tissue, ts, ijk[order], pv[order])


def _clearance(lab: Labyrinth, pts: np.ndarray, r: np.ndarray, skip_mm: float) -> float:
    """Smallest bone (mm) between a tube and the labyrinth, beyond ``skip_mm`` of where its
    centreline leaves the labyrinth (it starts inside the lumen; how deep depends on the
    lumen's size, so the skip is counted from the wall, not from the start)."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    d = lab.distance(pts)
    out = np.flatnonzero(d > 0.0)
    if not len(out):
        return -np.inf
    far = s > s[out[0]] + skip_mm
    return float(np.min(d[far] - r[far])) if far.any() else np.inf


def _best_path(build, lab: Labyrinth, rng: np.random.Generator, gap_mm: float, skip_mm: float, tries: int = 40):
    """Draw paths with ``build(rng) -> (pts, radius, info)`` until one keeps ``gap_mm`` of bone from
    the labyrinth (beyond ``skip_mm`` of where it leaves it); else the one with the most bone."""
    best = None
    for _ in range(tries):
        pts, rad, info = build(rng)
        gap = _clearance(lab, pts, rad, skip_mm)
        if best is None or gap > best[0]:
            best = (gap, pts, rad, info)
        if gap >= gap_mm:
            break
    gap, pts, rad, info = best
    return pts, rad, {**info, "min_bone_mm": gap}


@dataclass(frozen=True)
class _Frame:
    """The anatomical frame posed in the world (``lin``: rotation x mirror x scale)."""

    lin: np.ndarray
    scale: float

    def dir(self, v) -> np.ndarray:
        return unit(np.asarray(v, float) @ (self.lin / self.scale).T)


def _cochlea_world(anat: Anatomy, fr: _Frame) -> Tube:
    tube = next(t for t in anat.tubes if t.code == COCHLEA and t.lumen)
    return tube.transformed(fr.lin, fr.scale)


def _fundus(p: SpecimenParams, lab: Labyrinth, coch: Tube, iac: TubeSet, r_iac: float, scale: float, grid: Grid,
            rng: np.random.Generator):
    """The fundus of the internal auditory canal: the cochlear nerve canal to the basal turn and
    the vestibular nerve canal to the vestibule (no bone plate left between them)."""
    start = iac.c[0]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(coch.pts, axis=0), axis=1))])
    basal = s < (p.anatomy.hook_mm + 10.0) * scale  # the hook and the first half turn
    cand = coch.pts[basal]
    target_c = cand[int(np.argmin(np.linalg.norm(cand - start, axis=1)))]
    r_c = rng.uniform(0.6, 0.9) * scale
    r_v = rng.uniform(0.35, 0.55) * scale
    # nearest point of the vestibule (sampled surface), 0.3 mm inside it
    sph = unit(rng.standard_normal((400, 3)))
    surf = lab.vest.centre + (sph * lab.vest.semi) @ lab.vest.axes.T
    target_v = surf[int(np.argmin(np.linalg.norm(surf - start, axis=1)))]
    target_v = target_v + 0.3 * unit(lab.vest.centre - target_v)
    parts, info = [], {}
    for name, target, r_end in (("cochlear_nerve_canal", target_c, r_c), ("vestibular_nerve_canal", target_v, r_v)):
        pts = line(start, target, 0.4 * grid.voxel)
        u = np.linspace(0.0, 1.0, len(pts))
        rad = (0.7 * r_iac) * (1 - u) + r_end * u
        parts.append(_tube(name, pts, rad, grid.voxel))
        info[name] = {"length_mm": float(np.linalg.norm(target - start)), "diameter_mm": float(2 * r_end)}
    return parts, info


def _cochlear_aqueduct(p: SpecimenParams, lab: Labyrinth, coch: Tube, fr: _Frame, grid: Grid,
                       rng: np.random.Generator):
    """From the scala tympani of the basal turn near the round window, medially and inferiorly:
    0.1-0.3 mm wide at the cochlea, funnel-shaped to ~1 mm, a few mm long. It starts in the
    lower (basal, away from the apex) half of the lumen, below the spiral lamina's septum (at
    most 0.15 of the lumen height off its middle, :func:`_septum`), and leaves through that
    half's wall, so that it opens into the scala tympani whatever the lumen's size."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(coch.pts, axis=0), axis=1))])
    hook = p.anatomy.hook_mm * fr.scale
    ds = min(0.05, 0.4 * grid.voxel)

    def build(r):
        i = min(int(np.searchsorted(s, hook + r.uniform(0.8, 2.0) * fr.scale)), len(s) - 1)  # beyond the round window
        e2 = coch.frames[i, 1]  # the lumen's height axis (the septum spans the other one)
        tympani = -e2 if np.dot(e2, lab.modiolar_axis) > 0 else e2  # away from the apex
        p0 = coch.pts[i] + tympani * (0.55 * coch.semi[i, 1])
        d = fr.dir(np.array([-0.45, -0.35, -0.8]) + r.normal(0.0, 0.3, 3))
        length = r.uniform(4.0, 6.5) * fr.scale
        bend = fr.dir(np.array([-1.0, 0.0, 0.0]) + r.normal(0.0, 0.5, 3))
        p3 = p0 + d * length
        pts = _bezier(p0, unit(tympani + d), p3, unit(d + 0.6 * bend), 0.35, ds)
        u = np.linspace(0.0, 1.0, len(pts))
        r0, r1 = r.uniform(0.05, 0.15) * fr.scale, r.uniform(0.4, 0.6) * fr.scale
        rad = r0 + (r1 - r0) * u ** 2
        return pts, rad, {"length_mm": float(np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1))),
                          "diameter_mm": [float(2 * r0), float(2 * r1)]}

    pts, rad, info = _best_path(build, lab, rng, 0.3, 1.0 * fr.scale)
    return _tube("cochlear_aqueduct", pts, rad, grid.voxel), info


def _vestibular_aqueduct(p: SpecimenParams, lab: Labyrinth, fr: _Frame, grid: Grid, rng: np.random.Generator):
    """From the posteromedial vestibule (isthmus) up along the common crus, then curving
    posteriorly and inferiorly to its operculum: 8-10 mm, ~0.5 mm wide widening to ~1-1.5 mm.
    It starts just inside the vestibule's wall (not at a fixed share of its smallest
    semi-axis, which on a narrow vestibule lies deep inside it), so it opens through the wall
    within its first half millimetre."""
    ds = min(0.05, 0.4 * grid.voxel)
    vest = lab.vest

    def build(r):
        d_in = fr.dir(np.array([-0.45, -0.6, 0.35]) + r.normal(0.0, 0.1, 3))
        # the vestibule's posteromedial wall (where the ray from its centre meets the
        # ellipsoid), and a start 0.25 mm inside it: the canal opens through the wall
        wall = 1.0 / math.sqrt(float(vest.q(vest.centre + d_in)))
        p0 = vest.centre + d_in * (wall - 0.25 * fr.scale)
        d0 = fr.dir(np.array([-0.35, -0.55, 0.75]) + r.normal(0.0, 0.15, 3))
        d3 = fr.dir(np.array([-0.2, -0.75, -0.6]) + r.normal(0.0, 0.15, 3))
        length = r.uniform(8.0, 10.0) * fr.scale
        p3 = p0 + unit(0.35 * d0 + 0.65 * d3) * length * 0.9
        pts = _bezier(p0, d0, p3, d3, 0.5, ds)
        u = np.linspace(0.0, 1.0, len(pts))
        r0, r1 = r.uniform(0.22, 0.35) * fr.scale, r.uniform(0.5, 0.75) * fr.scale
        rad = r0 + (r1 - r0) * np.clip((u - 0.4) / 0.6, 0.0, 1.0) ** 1.5
        return pts, rad, {"length_mm": float(np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1))),
                          "diameter_mm": [float(2 * r0), float(2 * r1)]}

    pts, rad, info = _best_path(build, lab, rng, 0.3, 2.0 * fr.scale)
    return _tube("vestibular_aqueduct", pts, rad, grid.voxel), info


def _ellipsoid_gap(e: Ellipsoid, lab: Labyrinth) -> float:
    """Bone (mm, an estimate) between an ellipsoid and the labyrinth lumen."""
    tube = float(np.min(e.surface_distance(lab.lumen.c) - lab.lumen.rmax))
    sph = unit(np.random.default_rng(0).standard_normal((600, 3)))
    surf = lab.vest.centre + (sph * lab.vest.semi) @ lab.vest.axes.T
    return min(tube, float(np.min(e.surface_distance(surf))))


def _middle_ear(p: SpecimenParams, lab: Labyrinth, coch: Tube, fr: _Frame, grid: Grid, rng: np.random.Generator):
    """A middle-ear air cavity lateral (and a little inferior) to the labyrinth, with the round
    window (basal turn) and the oval window (vestibule) opening into it."""
    v0 = lab.vest.centre
    # round window: on the hook of the basal turn, 1.5-2 mm across
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(coch.pts, axis=0), axis=1))])
    i = int(np.searchsorted(s, p.anatomy.hook_mm * fr.scale * rng.uniform(0.7, 1.2)))
    p_rw = coch.pts[min(i, len(s) - 1)]
    r_rw = rng.uniform(0.75, 1.0) * fr.scale
    # oval window: on the lateral vestibule, 3 x 1.5 mm (long axis anteroposterior)
    p_ow = v0 + fr.dir([1.0, 0.25, -0.35]) * float(np.min(lab.vest.semi)) * 0.5
    ow_semi = np.array([rng.uniform(1.35, 1.6), rng.uniform(0.65, 0.8)]) * fr.scale
    # the cavity: lateral to both windows (its medial wall ~1 mm from them), then moved
    # laterally and down until bone of at least ``gap_mm`` separates it from the labyrinth
    semi = np.array([rng.uniform(1.5, 2.5), rng.uniform(3.5, 5.0), rng.uniform(3.0, 4.5)]) * fr.scale
    lat, down = fr.dir([1.0, 0.0, 0.0]), fr.dir([0.0, 0.0, -1.0])
    centre = (0.5 * (p_rw + p_ow) + lat * (semi[0] + 1.0 * fr.scale)
              + down * rng.uniform(0.3, 0.6) * semi[2] + fr.dir([0.0, 1.0, 0.0]) * rng.uniform(0.0, 1.5) * fr.scale)
    axes = fr.lin / fr.scale
    push = unit(lat + 0.5 * down)
    gap_mm = max(0.5, 2.5 * grid.voxel)
    shrink = 1.0
    for _ in range(150):  # first smaller (down to half its size), then further away
        cavity = Ellipsoid(centre, axes, semi * shrink)
        if _ellipsoid_gap(cavity, lab) >= gap_mm + 0.2:
            break
        if shrink > 0.5:
            shrink *= 0.95
        else:
            centre = centre + 0.1 * push
    semi = semi * shrink
    parts, depth = [], {}
    for name, p0, r in (("round_window", p_rw, r_rw), ("oval_window", p_ow, None)):
        d = unit(cavity.centre - p0)
        # the point where the ray from p0 towards the cavity's centre enters it, 0.5 mm deeper
        lo, hi = 0.0, float(np.linalg.norm(cavity.centre - p0))
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if cavity.q(p0 + mid * d) > 1.0 else (lo, mid)
        pts = line(p0, p0 + d * (hi + 0.5), 0.4 * grid.voxel)
        if r is not None:
            t, code = _tube(name, pts, np.full(len(pts), r), grid.voxel)
        else:
            ap = fr.dir([0.0, 1.0, 0.0])
            e1 = unit(ap - np.dot(ap, d) * d)
            frames = np.repeat(np.stack([e1, np.cross(d, e1), d])[None], len(pts), axis=0)
            sm = np.column_stack([np.full(len(pts), ow_semi[0]), np.full(len(pts), ow_semi[1]),
                                  np.full(len(pts), ow_semi[1])])
            t, code = Tube(name, 1, pts, sm, frames), np.full(len(pts), 1 + _PV_LEVELS)
        parts.append((t, code))
        depth[name] = float(hi + 0.5)
    info = {"middle_ear_semi_mm": semi, "middle_ear_gap_mm": _ellipsoid_gap(cavity, lab),
            "window_channel_mm": depth,
            "round_window_mm": float(2 * r_rw), "oval_window_mm": [float(2 * w) for w in ow_semi]}
    return cavity, parts, info


def _septum(p: SpecimenParams, anat: Anatomy, fr: _Frame, grid: Grid, rng: np.random.Generator):
    """The osseous spiral lamina and basilar membrane: a sheet across the scala at about half
    its height (0.05-0.12 mm thick, drawn at least half a voxel thick at its partial-volume
    contrast), from the end of the hook to the helicotrema."""
    tube = next(t for t in anat.tubes if t.code == COCHLEA and t.lumen)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(tube.pts, axis=0), axis=1))])
    keep = (s > 0.5 * p.anatomy.hook_mm) & (s <= anat.info.get("lamina_end_mm", np.inf))  # helicotrema
    hgt, wid = 2 * tube.semi[keep, 1], 2 * tube.semi[keep, 0]
    shift = rng.uniform(-0.15, 0.15)
    thick = rng.uniform(0.05, 0.12)
    contrast = rng.uniform(0.5, 0.9)
    frames = tube.frames[keep]
    pts = tube.pts[keep] + frames[:, 1] * (shift * hgt)[:, None]
    semi = np.stack([0.55 * wid, np.full(len(hgt), thick / 2), 0.5 * np.maximum(wid, hgt)], axis=1)
    sheet = Tube("septum", COCHLEA, pts, semi, frames).transformed(fr.lin, fr.scale)
    sheet.semi[:, 1] = np.maximum(sheet.semi[:, 1], 0.5 * grid.voxel)
    weight = float(min(1.0, thick * fr.scale / grid.voxel))
    return TubeSet([sheet]), weight * contrast, {"thickness_mm": thick, "contrast": contrast,
                                                 "height_shift": shift, "partial_volume": weight}


def _bubbles(opts: AnatomyRealism, lab: Labyrinth, fr: _Frame, rng: np.random.Generator):
    """Air in the lumen: a few bubbles and sometimes an air-fluid level (partial filling)."""
    has = bool(rng.random() < opts.bubbles)
    n = int(rng.integers(1, 5))
    idx = rng.integers(0, len(lab.lumen.c), n)
    radii = rng.uniform(0.6, 1.3, n) * lab.lumen.rmax[idx]
    level = bool(rng.random() < 0.5)
    up = rand_unit(rng)
    j = int(rng.integers(0, len(lab.lumen.c)))
    big = rng.uniform(1.5, 3.0) * fr.scale
    off = rng.uniform(-0.3, 0.3) * big
    if not has:
        return np.zeros((0, 3)), np.zeros(0), None, {"air_in_lumen": False}
    fluid = (lab.lumen.c[j], big, up, off) if level else None
    return lab.lumen.c[idx], radii, fluid, {"air_in_lumen": True, "n_bubbles": n,
                                            "bubble_diameter_mm": 2 * radii, "air_fluid_level": level}


def _honeycomb(lab: Labyrinth, fr: _Frame, grid: Grid, rng: np.random.Generator):
    """Mastoid cells posterolateral (and inferior) to the labyrinth: Voronoi cells of random
    seeds, with bony septa 0.15-0.3 mm (at least 1.5 voxels) thick, perforated here and there."""
    offset = np.array([rng.uniform(2.0, 5.0), rng.uniform(-8.0, -5.0), rng.uniform(-4.0, 0.0)])
    semi = np.array([rng.uniform(5.0, 7.0), rng.uniform(5.0, 8.0), rng.uniform(5.0, 7.0)]) * fr.scale
    spacing = rng.uniform(1.1, 2.0) * fr.scale
    wall = max(rng.uniform(0.15, 0.3), 1.5 * grid.voxel)
    hole_threshold = rng.uniform(-0.2, 0.6)
    open_share = rng.uniform(0.4, 0.6)
    region = Ellipsoid(lab.vest.centre + offset @ fr.lin.T, fr.lin / fr.scale, semi)
    n = int(math.ceil(4.0 / 3.0 * math.pi * float(np.prod(semi)) / spacing ** 3))
    u = rng.standard_normal((n, 3))
    u = unit(u) * rng.random((n, 1)) ** (1.0 / 3.0)
    seeds = region.centre + (u * semi) @ region.axes.T
    u_seed = rng.random(n)
    lo, hi = region.centre - region.world_half_extent(), region.centre + region.world_half_extent()
    h0 = lo - _HOLE_MM
    nh = coarse_nodes(lo, hi, _HOLE_MM)
    holes = ndimage.gaussian_filter(rng.standard_normal(tuple(nh)), 0.5 / _HOLE_MM, mode="wrap").astype(np.float32)
    holes /= max(float(holes.std()), 1e-9)
    info = {"n_seeds": n, "cell_spacing_mm": spacing, "wall_mm": wall, "hole_threshold": hole_threshold,
            "open_share": open_share, "region_semi_mm": semi}
    return Honeycomb(region, cKDTree(seeds), u_seed, open_share, wall, holes, h0, _HOLE_MM, hole_threshold), info


def build_realism(opts: AnatomyRealism, p: SpecimenParams, anat: Anatomy, lin: np.ndarray, scale: float,
                  grid: Grid, lab: Labyrinth, iac: TubeSet, r_iac: float, index: int, seed: int) -> Realism:
    """Draw and pose the realism structures of specimen ``index`` (each feature from its own
    stream, so that turning one on or off leaves the others as they are)."""
    fr = _Frame(lin, scale)
    coch = _cochlea_world(anat, fr)
    info: dict[str, Any] = {"options": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
                            "stream": [int(seed), int(index), *_STREAM]}
    by_tissue: dict[int, list] = {T_NERVE: [], T_MIDDLE_EAR: [], T_AQUEDUCT: []}  # painted in this order
    if opts.attached_iac:
        parts, info["fundus"] = _fundus(p, lab, coch, iac, r_iac, scale, grid, _rng(seed, index, 0))
        by_tissue[T_NERVE] += parts
    if opts.aqueducts:
        ca, info["cochlear_aqueduct"] = _cochlear_aqueduct(p, lab, coch, fr, grid, _rng(seed, index, 1))
        va, info["vestibular_aqueduct"] = _vestibular_aqueduct(p, lab, fr, grid, _rng(seed, index, 2))
        by_tissue[T_AQUEDUCT] += [ca, va]
    cavity = None
    if opts.windows:
        cavity, parts, info["windows"] = _middle_ear(p, lab, coch, fr, grid, _rng(seed, index, 3))
        by_tissue[T_MIDDLE_EAR] += parts
    septum, septum_add = None, 0.0
    if opts.scalae:
        septum, weight, info["septum"] = _septum(p, anat, fr, grid, _rng(seed, index, 4))
        septum_add = weight * (p.imaging.i_capsule - p.imaging.i_lumen)
    b_c, b_r, fluid, info["bubbles"] = _bubbles(opts, lab, fr, _rng(seed, index, 5))
    r6 = _rng(seed, index, 6)
    air_ratio, iac_ratio = r6.uniform(0.05, 0.45), r6.uniform(0.0, 0.5)
    i_air = p.imaging.i_lumen * air_ratio if opts.air_darker else None
    i_iac = p.imaging.i_lumen + iac_ratio * (p.imaging.i_soft - p.imaging.i_lumen) if opts.attached_iac else None
    info["i_air"], info["i_iac"] = i_air, i_iac
    honeycomb = None
    if opts.honeycomb:
        honeycomb, info["honeycomb"] = _honeycomb(lab, fr, grid, _rng(seed, index, 7))
    channels = [c for c in (_channels(t, parts, grid) for t, parts in by_tissue.items()) if c is not None]
    return Realism(opts, channels, cavity, septum, septum_add, b_c, b_r, fluid, i_air, i_iac, honeycomb, info)


# =========================================================================== one slab
def _raster_box(ts: TubeSet, xs, ys, zs, levels: list[int]) -> np.ndarray:
    """:func:`raster` of a small tube set, on the part of the grid its bounding box covers."""
    out = np.zeros((len(xs), len(ys), len(zs)), np.int8)
    lo, hi = ts.c.min(0) - ts.R, ts.c.max(0) + ts.R
    sl = []
    for a, ax in enumerate((xs, ys, zs)):
        i0, i1 = int(np.searchsorted(ax, lo[a])), int(np.searchsorted(ax, hi[a], side="right"))
        if i1 <= i0:
            return out
        sl.append(slice(i0, i1))
    out[tuple(sl)] = raster(ts, xs[sl[0]], ys[sl[1]], zs[sl[2]], levels)
    return out


def _honeycomb_air(hc: Honeycomb, cap_margin: np.ndarray, xs, ys, zs) -> np.ndarray:
    """Air voxels of the honeycomb in the slab (inside its region, outside the otic capsule)."""
    inside = ellipsoid_mask(hc.region, xs, ys, zs) & (cap_margin < 0.0)
    out = np.zeros(inside.shape, bool)
    idx = np.nonzero(inside)
    if not len(idx[0]):
        return out
    pts = np.stack([xs[idx[0]], ys[idx[1]], zs[idx[2]]], axis=1)
    d, j = hc.tree.query(pts, k=2)
    wall = (d[:, 1] - d[:, 0]) < hc.wall_mm
    open_ = np.mod(hc.u[j[:, 0]] + hc.u[j[:, 1]], 1.0) < hc.open_share
    hole = open_ & (interp(hc.holes, hc.h0, hc.hg, xs, ys, zs)[idx] < hc.hole_threshold)
    out[idx] = ~wall | hole
    return out


def slab_tissue(real: Realism, tis: np.ndarray, lab: np.ndarray, st: np.ndarray, cap_margin: np.ndarray,
                xs, ys, zs, levels: list[int], a: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint the realism tissues on the slab's tissue map (after the plain phantom's, whose
    nothing-dark-touches-the-labyrinth rule has run); returns (tissue, partial-volume weight of
    the attached channels, 1 elsewhere)."""
    pv = np.ones(tis.shape, np.float32)
    for ch in real.channels:
        code = _raster_box(ch.tubes, xs, ys, zs, levels)
        hit = code > 0
        b = a + len(xs)
        sel = slice(np.searchsorted(ch.sk_idx[:, 0], a), np.searchsorted(ch.sk_idx[:, 0], b))
        sk, skpv = ch.sk_idx[sel], ch.sk_pv[sel]
        w = np.where(hit, (code.astype(np.float32) - 1) / _PV_LEVELS, 0.0).astype(np.float32)
        w[sk[:, 0] - a, sk[:, 1], sk[:, 2]] = np.maximum(w[sk[:, 0] - a, sk[:, 1], sk[:, 2]], skpv)
        hit[sk[:, 0] - a, sk[:, 1], sk[:, 2]] = True
        hit &= ~lab
        tis[hit] = ch.tissue
        pv[hit] = w[hit]
    if len(real.bubbles_r) or real.fluid_level is not None:
        air = spheres_mask(real.bubbles_c, real.bubbles_r, xs, ys, zs)
        if real.fluid_level is not None:
            c, big, up, off = real.fluid_level
            dx, dy, dz = xs[:, None, None] - c[0], ys[None, :, None] - c[1], zs[None, None, :] - c[2]
            air |= (dx * dx + dy * dy + dz * dz <= big * big) & (up[0] * dx + up[1] * dy + up[2] * dz > off)
        tis[air & lab] = T_LUMEN_AIR
    if real.septum is not None:
        sheet = (_raster_box(real.septum, xs, ys, zs, levels) > 0) & (st == COCHLEA) & (tis == T_LUMEN)
        tis[sheet] = T_SEPTUM
    return tis, pv


def paint_dark(real: Realism, tis: np.ndarray, cap_margin: np.ndarray, xs, ys, zs) -> None:
    """Before the nothing-dark-touches-the-labyrinth rule: the honeycomb and the middle-ear
    cavity, in bone only (never over the canal, vessels or embedding medium)."""
    if real.honeycomb is not None:
        tis[_honeycomb_air(real.honeycomb, cap_margin, xs, ys, zs) & (tis == T_BONE)] = T_AIR
    if real.middle_ear is not None:
        tis[ellipsoid_mask(real.middle_ear, xs, ys, zs) & (tis == T_BONE)] = T_MIDDLE_EAR
