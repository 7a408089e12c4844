"""The labyrinth in its anatomical frame (mm, scale 1, left ear; x lateral, y anterior,
z superior, origin at the vestibule centre): vestibule, three semicircular canals with their
common crus, and the cochlea.

:func:`build_anatomy` draws a layout and checks it (tubes never touch outside the vestibule,
cochlear turns never touch), redrawing until it is valid. One draw, :func:`_try_anatomy`,
runs the steps below in a fixed order on one random stream (the order is part of the
output: reordering the draws changes every phantom).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import numpy as np
from scipy.spatial import cKDTree

from innerear.data.phantom.geometry import (
    Ellipsoid,
    Tube,
    arc_length,
    jitter,
    line,
    orthonormal,
    perp_frames,
    plane_angle,
    resample,
    tangents,
    unit,
)
from innerear.data.phantom.params import AnatomyParams
from innerear.settings.structures import CANALS, COCHLEA, VESTIBULE

LAYOUT_DS = 0.05  # the layout is drawn and checked at this sampling, whatever the voxel size
_MIN_GAP_MM = 0.25  # smallest bone between two tubes outside the vestibule
_MIN_SEPTUM_MM = 0.15  # smallest bone between two cochlear turns
# the cochlea is raised until its turns keep this much bone (scale 1): at 0.9 scale still two
# demo voxels (<= 0.156 mm), so the turns stay apart in the label and the spiral unwraps
_STACK_SEPTUM_MM = 0.35
_COLUMELLA_MM = 0.3  # smallest distance from the cochlear lumen to its modiolar axis
_COCHLEA_FLARE = 0.1  # the basal end's widening into the vestibule (a ~2 mm lumen needs little)
# the cochlea rises along its axis as (phi / phi_end) ** _RISE_POWER: the basal turn, which
# clears the middle turn sideways, climbs least; the upper turns, stacked over each other,
# get the room their lumen needs
_RISE_POWER = 1.3


@dataclass
class Anatomy:
    """Tubes and vestibule in the anatomical frame (mm, scale 1, left ear)."""

    tubes: list[Tube]  # labyrinth tubes and (lumen=False) connectors to the vestibule centre
    vestibule: Ellipsoid
    lamina: Tube  # osseous spiral lamina (image only, inside the cochlear label)
    info: dict[str, Any]  # measured geometry, recorded in the specimen's meta


class _LayoutError(Exception):
    pass


# =========================================================================== path helpers
def _arc(centre, e_n, e_l, r, psi0, psi1, ds):
    """Circle points ``centre + r (-cos(psi) e_n + sin(psi) e_l)`` for psi from psi0 to psi1."""
    n = max(8, int(math.ceil(r * abs(psi1 - psi0) / ds)) + 1)
    psi = np.linspace(psi0, psi1, n)
    return centre[None] + r * (-np.cos(psi)[:, None] * e_n[None] + np.sin(psi)[:, None] * e_l[None])


def _bezier(p0, d0, p3, d3, ds, stiff=0.4):
    """Cubic from p0 (leaving along d0) to p3 (arriving along d3)."""
    length = float(np.linalg.norm(p3 - p0))
    b1 = p0 + unit(d0) * length * stiff
    b2 = p3 - unit(d3) * length * stiff
    n = max(8, int(math.ceil(2.0 * length / ds)) + 1)
    u = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - u) ** 3 * p0 + 3 * (1 - u) ** 2 * u * b1 + 3 * (1 - u) * u ** 2 * b2 + u ** 3 * p3
    return resample(pts, ds)[0]


def _outside_length(pts: np.ndarray, vest: Ellipsoid) -> float:
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    mid = 0.5 * (pts[1:] + pts[:-1])
    return float(seg[vest.q(mid) > 1.0].sum())


def _solve_radius(build: Callable[[float], np.ndarray], target, vest, lo=1.0, hi=8.0):
    """Bisection on the radius so that the outside length of ``build(r)`` is ``target``."""
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        if _outside_length(build(mid), vest) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _point_in(vest: Ellipsoid, nominal, depth: float, rng: np.random.Generator, jit: float) -> np.ndarray:
    """A point inside the vestibule: a direction in its own axes, at ``depth`` of the radius."""
    d = unit(np.asarray(nominal, float) + rng.uniform(-0.07, 0.07, 3) * jit)
    return vest.centre + vest.axes @ (d * vest.semi * depth)


def _exit_distance(vest: Ellipsoid, p0: np.ndarray, direction: np.ndarray) -> float:
    """Distance from an inside point to the vestibule surface along ``direction``."""
    lo, hi = 0.0, 10.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if vest.q(p0 + mid * direction) < 1.0 else (lo, mid)
    return lo


# =========================================================================== tubes
def _canal_tube(name, pts, vest, r0, amp_factor, ampulla_at_end: bool, ds) -> Tube:
    """Canal tube of lumen radius r0 with an ampulla just outside the vestibule at one end."""
    pts, s = resample(pts, ds)
    if ampulla_at_end:
        s = s[-1] - s
    outside = vest.q(pts) > 1.0
    s_exit = float(s[outside].min()) if outside.any() else 0.0
    s0 = s_exit + 0.5
    g = np.where(s <= s0, 1.0, np.exp(-(((s - s0) / 0.8) ** 2)))
    radius = r0 * (1.0 + (amp_factor - 1.0) * g)
    frames = perp_frames(tangents(pts))
    return Tube(name, CANALS, pts, np.stack([radius, radius, radius], axis=1), frames)


def _flare(t: Tube, vest: Ellipsoid, amount: float, length: float, at_start: bool = True) -> None:
    """Widen a tube where it opens into the vestibule (a smooth mouth instead of a sliver)."""
    s = arc_length(t.pts)
    if not at_start:
        s = s[-1] - s
    outside = vest.q(t.pts) > 1.0
    s_exit = float(s[outside].min()) if outside.any() else 0.0
    g = np.clip(1.0 - (s - s_exit) / length, 0.0, 1.0)
    t.semi = t.semi * (1.0 + amount * g * g * (3 - 2 * g))[:, None]


def _connector(name, p0, p1, ds) -> Tube:
    pts = line(p0, p1, ds)
    return Tube(name, VESTIBULE, pts, np.zeros((len(pts), 3)), perp_frames(tangents(pts)), lumen=False)


# =========================================================================== cochlea
def _build_cochlea(p: AnatomyParams, v_entry: np.ndarray, d0: np.ndarray, t0: np.ndarray, ds: float):
    """Log-spiral scala from the vestibule (hook) to the apex."""
    w = unit(np.cross(d0, t0))
    d1 = np.cross(w, d0)
    turns = p.turns
    phi_end = 2 * math.pi * turns
    k = p.cochlea_k
    h0, hh, ha = p.scala_h_base, p.scala_h_half, p.scala_h_apex
    tau = -math.pi / math.log((hh - ha) / (h0 - ha))

    def height(phi):
        return ha + (h0 - ha) * np.exp(-phi / tau)

    ratio = p.scala_width_ratio
    width0, width_pi = ratio * height(0.0), ratio * height(math.pi)
    r_inf = p.cochlea_r_apex  # the spiral's radius tends to r_inf (apical turn ~1.5 mm across)
    r0 = (p.cochlea_A - 0.5 * (width0 + width_pi) - r_inf * (1.0 - math.exp(-k * math.pi))) / (
        1.0 + math.exp(-k * math.pi))
    rise = p.cochlea_height - 0.5 * (h0 + height(phi_end))

    def local(phi):
        phi = np.asarray(phi, float)
        r = r_inf + (r0 - r_inf) * np.exp(-k * phi)
        return ((r * np.cos(phi))[..., None] * d0 + (r * np.sin(phi))[..., None] * d1
                + (rise * (phi / phi_end) ** _RISE_POWER)[..., None] * w)

    # arc length as a function of phi, for resampling at ~ds
    phis = np.linspace(0.0, phi_end, 40001)
    lp = local(phis)
    s = arc_length(lp)
    spiral_len = float(s[-1])
    n = max(8, int(math.ceil(spiral_len / ds)) + 1)
    phi = np.interp(np.linspace(0.0, spiral_len, n), s, phis)
    tan0 = unit(local(1e-4) - local(0.0))
    s0 = v_entry + p.hook_mm * tan0
    modiolus = s0 - local(0.0)  # base of the modiolar axis
    spiral = modiolus + local(phi)
    hook = line(v_entry, s0, ds)[:-1]
    pts = np.concatenate([hook, spiral])
    phi_all = np.concatenate([np.zeros(len(hook)), phi])
    t = tangents(pts)
    axis_pt = modiolus + (rise * (phi_all / phi_end) ** _RISE_POWER)[:, None] * w
    radial = pts - axis_pt
    radial[: len(hook)] = d0  # the hook keeps the basal orientation
    e1 = unit(radial - np.sum(radial * t, axis=1, keepdims=True) * t)
    e2 = np.cross(t, e1)
    hgt = height(phi_all)
    # the lumen stays off the modiolar axis (a bony columella up to the apex), so the apical
    # turn stays a spiral and not a blob around the axis
    r_all = r_inf + (r0 - r_inf) * np.exp(-k * phi_all)
    wid = np.minimum(ratio * hgt, 2.0 * (r_all - _COLUMELLA_MM))
    # the hook narrows towards its mouth (0.6 x at the vestibule): a ~2.5 mm lumen would
    # otherwise wrap around the ~2.5 mm wide vestibule
    taper = np.ones(len(pts))
    taper[: len(hook)] = np.linspace(0.6, 1.0, len(hook))
    hgt, wid = hgt * taper, wid * taper
    semi = np.stack([wid / 2, hgt / 2, np.maximum(wid, hgt) / 2], axis=1)
    tube = Tube("cochlea", COCHLEA, pts, semi, np.stack([e1, e2, t], axis=1))
    b_width = 2 * r_inf + (r0 - r_inf) * (math.exp(-k * math.pi / 2) + math.exp(-k * 3 * math.pi / 2)) + ratio * 0.5 * (
        height(math.pi / 2) + height(3 * math.pi / 2))
    info = {
        "turns": turns,
        "modiolus_base": modiolus.tolist(),
        "modiolar_axis": w.tolist(),
        "cochlea_A_mm": p.cochlea_A,
        "cochlea_B_mm": float(b_width),
        "cochlea_height_mm": p.cochlea_height,
        "spiral_length_mm": spiral_len,
        "scala_height_mm": [float(h0), float(height(math.pi)), float(height(phi_end))],
    }
    # osseous spiral lamina: a thin shelf from the modiolar wall, half the scala width; it
    # stops short of the apex by the helicotrema (``helicotrema_deg``)
    lam_ext = 0.5 - 0.15 * phi_all / phi_end
    on = phi_all <= phi_end - math.radians(p.helicotrema_deg)
    lam_centre = (pts - e1 * (wid / 2 * (1.0 - lam_ext))[:, None])[on]
    lam_semi = np.stack([wid / 2 * lam_ext, np.full(len(pts), 0.04), wid / 2 * lam_ext], axis=1)[on]
    lamina = Tube("lamina", COCHLEA, lam_centre, lam_semi, np.stack([e1, e2, t], axis=1)[on])
    info["lamina_end_mm"] = float(arc_length(pts)[on][-1])  # arc length from the basal end
    return tube, lamina, info


def _place_cochlea(p: AnatomyParams, vest: Ellipsoid, rng: np.random.Generator, jit: float, ds: float):
    """Cochlea anteromedial, apex anterolateral-inferior; its basal hook leaves the
    anterior-inferior vestibule at ``v_entry``. Returns (tube, lamina, info, v_entry)."""
    v_entry = _point_in(vest, [-0.35, 0.6, -0.6], 0.55, rng, jit)
    rj = jitter(rng, 8.0 * jit)
    w = rj @ unit(np.array([0.75, 0.45, -0.5]))
    d0 = rj @ np.array([0.45, -0.85, -0.2])
    d0 = unit(d0 - np.dot(d0, w) * w)
    t0 = np.cross(w, d0)
    p = _stacked(p, vest, v_entry, d0, t0)
    cochlea, lamina, cinfo = _build_cochlea(p, v_entry, d0, t0, ds)
    _flare(cochlea, vest, _COCHLEA_FLARE, 0.8)
    return cochlea, lamina, cinfo, v_entry


def _stacked(p: AnatomyParams, vest: Ellipsoid, v_entry, d0, t0) -> AnatomyParams:
    """``p`` with the cochlea raised (0.1 mm steps, at most 1.5 mm) until its turns keep
    :data:`_STACK_SEPTUM_MM` of bone between them (checked at :data:`LAYOUT_DS`): a wide lumen
    in a tight spiral needs a taller cochlea, as in real ears."""
    for extra in np.arange(0.0, 1.51, 0.1):
        q = replace(p, cochlea_height=p.cochlea_height + float(extra))
        tube = _build_cochlea(q, v_entry, d0, t0, LAYOUT_DS)[0]
        _flare(tube, vest, _COCHLEA_FLARE, 0.8)
        if _self_clearance(tube, vest, 3.0) >= _STACK_SEPTUM_MM:
            return q
    return q


# =========================================================================== canals
@dataclass(frozen=True)
class _CanalPlanes:
    """Normals of the three canal planes (a near-orthogonal triad) and the two in-plane
    directions the vertical canals are built around."""

    ant_dir: np.ndarray  # anterolateral
    post_dir: np.ndarray  # posterolateral
    n_a: np.ndarray  # anterior canal plane (contains ant_dir and z)
    n_p: np.ndarray  # posterior canal plane (contains post_dir and z)
    n_l: np.ndarray  # lateral canal plane


@dataclass(frozen=True)
class _Crus:
    """The common crus: from ``entry`` (inside the vestibule) along ``ell`` to ``top``."""

    ell: np.ndarray  # the anterior and posterior planes' intersection, upwards
    entry: np.ndarray
    top: np.ndarray
    pts: np.ndarray
    outside: float  # its length outside the vestibule (mm)


def _canal_planes(rng: np.random.Generator, jit: float) -> _CanalPlanes:
    """Canal plane normals: a near-orthogonal triad, each jittered, pairwise 84-94 degrees."""
    alpha = math.radians(45.0 + rng.uniform(-5, 5) * jit)
    ant_dir = np.array([math.sin(alpha), math.cos(alpha), 0.0])  # anterolateral
    post_dir = np.array([math.cos(alpha), -math.sin(alpha), 0.0])  # posterolateral
    for _ in range(200):
        n_a = jitter(rng, 4.0 * jit) @ post_dir  # anterior canal plane contains ant_dir and z
        n_p = jitter(rng, 4.0 * jit) @ ant_dir  # posterior canal plane contains post_dir and z
        n_l = jitter(rng, 4.0 * jit) @ np.array([0.0, 0.0, 1.0])
        angles = [plane_angle(n_a, n_p), plane_angle(n_a, n_l), plane_angle(n_p, n_l)]
        if all(84.0 <= a <= 94.0 for a in angles):
            return _CanalPlanes(ant_dir, post_dir, n_a, n_p, n_l)
    raise _LayoutError("canal planes")


def _common_crus(p: AnatomyParams, vest: Ellipsoid, planes: _CanalPlanes, rng: np.random.Generator,
                 jit: float, ds: float) -> _Crus:
    """From the posteromedial top of the vestibule along the planes' intersection."""
    ell = unit(np.cross(planes.n_a, planes.n_p))
    if ell[2] < 0:
        ell = -ell
    entry = _point_in(vest, [-0.4, -0.5, 0.75], 0.55, rng, jit)
    top = entry + ell * (_exit_distance(vest, entry, ell) + p.crus_mm)
    pts = line(entry, top, ds)
    return _Crus(ell, entry, top, pts, _outside_length(pts, vest))


def _in_plane_dir(normal: np.ndarray, ell: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The direction in the plane of ``normal``, perpendicular to ``ell``, on ``want``'s side."""
    d = unit(np.cross(normal, ell))
    return d if np.dot(d, want) > 0 else -d


def _vertical_canal_path(top, e_n, e_l, psi, end, vest, ds, r) -> np.ndarray:
    """A circle of radius ``r`` tangent to the crus at its ``top`` (in the plane e_n, e_l),
    swept by ``psi``, then a limb down to ``end`` inside the vestibule."""
    arc = _arc(top + r * e_n, e_n, e_l, r, 0.0, psi, ds)
    limb = _bezier(arc[-1], arc[-1] - arc[-2], end, vest.centre - end, ds)
    return np.concatenate([arc, limb[1:]])


def _lateral_canal_path(anchor, bulge, off, gamma, e1, e2, start, end, vest, ds, r) -> np.ndarray:
    """A circle of radius ``r`` lateral to the vestibule, open towards it, joined to ``start``
    and ``end`` inside the vestibule."""
    centre = anchor + bulge * (r + off)
    th = np.linspace(gamma, 2 * math.pi - gamma, max(8, int(math.ceil(r * 2 * math.pi / ds))))
    arc = centre[None] + r * (np.cos(th)[:, None] * e1[None] + np.sin(th)[:, None] * e2[None])
    a = _bezier(start, start - vest.centre, arc[0], arc[1] - arc[0], ds)
    b = _bezier(arc[-1], arc[-1] - arc[-2], end, vest.centre - end, ds)
    return np.concatenate([a[:-1], arc, b[1:]])


def _anterior_canal(p, vest, planes: _CanalPlanes, crus: _Crus, rng, jit, ds) -> tuple[np.ndarray, float]:
    """Over the vestibule from the crus, down its ampullated limb to the anterior-superior
    vestibule. Returns (path, radius of curvature)."""
    en_a = _in_plane_dir(planes.n_a, crus.ell, planes.ant_dir)
    psi_a = math.radians(rng.uniform(195.0, 215.0) if jit else 205.0)
    e_a = _point_in(vest, [0.05, 0.5, 0.87], 0.62, rng, jit)
    build = partial(_vertical_canal_path, crus.top, en_a, crus.ell, psi_a, e_a, vest, ds)
    ra = _solve_radius(build, p.len_anterior - crus.outside, vest)
    return build(ra), ra


def _posterior_canal(p, vest, planes: _CanalPlanes, crus: _Crus, rng, jit, ds) -> tuple[np.ndarray, float]:
    """From the crus (tilted), behind and below, down to the posterior-inferior vestibule.
    Returns (path, radius of curvature)."""
    en_p = _in_plane_dir(planes.n_p, crus.ell, planes.post_dir)
    psi_p = math.radians(rng.uniform(225.0, 250.0) if jit else 238.0)
    e_p = _point_in(vest, [0.15, -0.55, -0.8], 0.6, rng, jit)  # clear of the lateral canal's end
    beta = math.radians(rng.uniform(25.0, 45.0) if jit else 35.0)  # the posterior canal leaves the crus tilted
    ep_n = math.cos(beta) * en_p - math.sin(beta) * crus.ell
    ep_l = math.sin(beta) * en_p + math.cos(beta) * crus.ell
    build = partial(_vertical_canal_path, crus.top, ep_n, ep_l, psi_p, e_p, vest, ds)
    rp = _solve_radius(build, p.len_posterior - crus.outside, vest)
    return build(rp), rp


def _lateral_canal(p, vest, planes: _CanalPlanes, rng, jit, ds) -> tuple[np.ndarray, float]:
    """A circle lateral to the vestibule, open towards it, from its posterolateral to its
    ampullated anterolateral end. Returns (path, radius of curvature)."""
    e_l1 = _point_in(vest, [0.95, 0.3, -0.15], 0.6, rng, jit)  # ampullated, anterolateral
    e_l2 = _point_in(vest, [0.8, -0.45, 0.25], 0.6, rng, jit)  # posterolateral
    n_l = planes.n_l
    bulge = np.array([1.0, 0.0, 0.0])
    bulge = unit(bulge - np.dot(bulge, n_l) * n_l)
    anchor = vest.centre + bulge * _exit_distance(vest, vest.centre, bulge)
    gamma = math.radians(rng.uniform(40.0, 55.0) if jit else 48.0)
    e1 = -bulge
    e2 = np.cross(n_l, e1)
    if np.dot(e2, [0.0, 1.0, 0.0]) > 0:  # start on the posterior side
        e2 = -e2
    off = rng.uniform(0.6, 1.0) if jit else 0.8  # bone between the vestibule (width ~2.5 mm) and the arc
    build = partial(_lateral_canal_path, anchor, bulge, off, gamma, e1, e2, e_l2, e_l1, vest, ds)
    rl = _solve_radius(build, p.len_lateral, vest, 0.8, 6.0)
    return build(rl), rl


def _crus_web(path_a: np.ndarray, path_p: np.ndarray, r0: float, ds: float) -> Tube:
    """The crotch where the anterior and posterior canals leave the common crus: a web as
    thick as the canals bridges them until they are 0.7 mm apart (a smooth junction, no thin
    sliver of bone between two nearly touching tubes)."""
    sa = arc_length(path_a)
    sp_ = arc_length(path_p)
    tt = np.arange(0.0, 4.0, ds)
    pa = np.stack([np.interp(tt, sa, path_a[:, k]) for k in range(3)], 1)
    pp = np.stack([np.interp(tt, sp_, path_p[:, k]) for k in range(3)], 1)
    sep = np.linalg.norm(pp - pa, axis=1)
    n_web = max(3, int(np.searchsorted(sep, 2 * r0 + 0.7)))
    mid = 0.5 * (pa + pp)[:n_web]
    tw = tangents(mid)
    across = pp[:n_web] - pa[:n_web]
    across -= np.sum(across * tw, axis=1, keepdims=True) * tw
    frames = orthonormal(np.stack([across, across, tw], axis=1))
    web_semi = np.stack([np.maximum(0.5 * sep[:n_web], r0), np.full(n_web, r0), np.full(n_web, r0)], 1)
    return Tube("crus_web", CANALS, mid, web_semi, frames)


def _canal_tubes(p: AnatomyParams, vest: Ellipsoid, crus: _Crus, path_a, path_p, path_l,
                 rng: np.random.Generator, ds: float) -> dict[str, Tube]:
    """Tubes of the canals (ampullae, flared mouths), the common crus and the crus web."""
    r0, amp = p.canal_radius, p.ampulla_factor
    anterior = _canal_tube("anterior_canal", path_a, vest, r0, amp, True, ds)
    posterior = _canal_tube("posterior_canal", path_p, vest, r0, amp, True, ds)
    lateral = _canal_tube("lateral_canal", path_l, vest, r0 * rng.uniform(0.95, 1.05), amp, True, ds)
    crus_pts = resample(crus.pts, ds)[0]
    crus_tube = Tube("common_crus", CANALS, crus_pts, np.full((len(crus_pts), 3), r0 * 1.15),
                     perp_frames(tangents(crus_pts)))
    _flare(crus_tube, vest, 0.4, 0.6)
    web = _crus_web(path_a, path_p, r0, ds)
    _flare(lateral, vest, 0.15, 0.6, at_start=True)
    for t in (anterior, posterior, lateral):  # the ampullated ends open widely too
        _flare(t, vest, 0.1, 0.6, at_start=False)
    return {"anterior": anterior, "posterior": posterior, "lateral": lateral, "crus": crus_tube, "web": web}


# =========================================================================== validity
def _min_clearance(a: Tube, b: Tube, vest: Ellipsoid, skip_near: np.ndarray | None = None,
                   skip_mm: float = 0.0) -> float:
    """Smallest gap between two tubes outside the vestibule (optionally away from a junction)."""
    ma = np.ones(len(a.pts), bool)
    mb = np.ones(len(b.pts), bool)
    if skip_near is not None:
        ma = np.linalg.norm(a.pts - skip_near, axis=1) > skip_mm
        mb = np.linalg.norm(b.pts - skip_near, axis=1) > skip_mm
    return _gaps(a.pts[ma], a.semi[ma].max(1), b.pts[mb], b.semi[mb].max(1), vest)


def _gaps(pa, ra, pb, rb, vest: Ellipsoid, exclude=None) -> float:
    """Smallest surface gap between two sets of balls (centres, radii), ignoring contacts that
    lie inside the vestibule (tubes may merge there) and pairs flagged by ``exclude(i, j)``."""
    if len(pa) == 0 or len(pb) == 0:
        return np.inf
    tree = cKDTree(pb)
    k = min(8, len(pb))
    d, j = tree.query(pa, k=k)
    d, j = d.reshape(len(pa), k), j.reshape(len(pa), k)
    i = np.repeat(np.arange(len(pa))[:, None], k, axis=1)
    gap = d - ra[:, None] - rb[j]
    close = gap < 1.0
    i, j, d, gap = i[close], j[close], d[close], gap[close]
    if exclude is not None:
        keep = ~exclude(i, j)
        i, j, d, gap = i[keep], j[keep], d[keep], gap[keep]
    if len(gap) == 0:
        return np.inf
    direction = (pb[j] - pa[i]) / np.maximum(d, 1e-9)[:, None]
    contact = pa[i] + direction * (ra[i] + 0.5 * gap)[:, None]
    outside = vest.surface_distance(contact) > -0.35
    return float(gap[outside].min()) if outside.any() else np.inf


def _self_clearance(t: Tube, vest: Ellipsoid, min_sep_mm: float) -> float:
    """Smallest gap between parts of one tube more than ``min_sep_mm`` apart along it (for
    the elliptical cochlea: the semi-axis along the joining direction, and parts at least 1.5
    times their two largest semi-axes apart along it, so a wide curving lumen does not touch
    itself across its own width)."""
    s = arc_length(t.pts)
    if t.code == COCHLEA:
        tree = cKDTree(t.pts)
        pr = tree.query_pairs(2 * t.semi.max() + 0.6, output_type="ndarray")
        big = t.semi.max(1)
        sep = np.maximum(min_sep_mm, 1.5 * (big[pr[:, 0]] + big[pr[:, 1]]))
        pr = pr[np.abs(s[pr[:, 0]] - s[pr[:, 1]]) > sep]
        if len(pr) == 0:
            return np.inf
        u = unit(t.pts[pr[:, 1]] - t.pts[pr[:, 0]])
        d = np.linalg.norm(t.pts[pr[:, 1]] - t.pts[pr[:, 0]], axis=1)
        return float(np.min(d - _extent_along(t, pr[:, 0], u) - _extent_along(t, pr[:, 1], -u)))
    r = t.semi.max(1)
    return _gaps(t.pts, r, t.pts, r, vest, exclude=lambda i, j: np.abs(s[i] - s[j]) <= min_sep_mm)


def _extent_along(t: Tube, idx: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distance from the centre to the surface of the sections ``idx`` along ``direction``."""
    loc = np.einsum("nij,nj->ni", t.frames[idx], direction)
    return 1.0 / np.sqrt(np.sum((loc / t.semi[idx]) ** 2, axis=1))


def _tube_clearances(cochlea: Tube, canals: dict[str, Tube], vest: Ellipsoid,
                     crus_top: np.ndarray) -> dict[tuple[str, str], float]:
    """Smallest gap (mm) between each pair of tubes that must not touch outside the
    vestibule (the anterior and posterior canals only meet at the crus)."""
    a, p, lat, crus = canals["anterior"], canals["posterior"], canals["lateral"], canals["crus"]
    return {
        ("cochlea", "anterior"): _min_clearance(cochlea, a, vest),
        ("cochlea", "posterior"): _min_clearance(cochlea, p, vest),
        ("cochlea", "lateral"): _min_clearance(cochlea, lat, vest),
        ("cochlea", "crus"): _min_clearance(cochlea, crus, vest),
        ("anterior", "lateral"): _min_clearance(a, lat, vest),
        ("posterior", "lateral"): _min_clearance(p, lat, vest),
        ("lateral", "crus"): _min_clearance(lat, crus, vest),
        ("anterior", "posterior"): _min_clearance(a, p, vest, crus_top, 4.0),
    }


def _check_layout(p: AnatomyParams, clearances: dict[tuple[str, str], float], cochlea: Tube,
                  canals: dict[str, Tube], vest: Ellipsoid) -> None:
    """Raise :class:`_LayoutError` naming every problem of the layout."""
    problems = [f"tubes too close: {k} {v:.3f}" for k, v in clearances.items() if v < _MIN_GAP_MM]
    if _self_clearance(cochlea, vest, 3.0) < _MIN_SEPTUM_MM:
        problems.append("cochlear turns touch")
    for t in (canals["anterior"], canals["posterior"], canals["lateral"]):
        if _self_clearance(t, vest, 3.0) < 0.3:
            problems.append(f"{t.name} touches itself")
    # the spiral (beyond the hook) stays clear of the vestibule
    far = arc_length(cochlea.pts) > p.hook_mm + 2.5
    if np.any(vest.surface_distance(cochlea.pts[far]) - cochlea.semi[far].max(1) < 0.3):
        problems.append("cochlea touches the vestibule")
    if problems:
        raise _LayoutError("; ".join(problems))


# =========================================================================== one layout
def _try_anatomy(p: AnatomyParams, rng: np.random.Generator, ds: float, jit: float, check: bool = True) -> Anatomy:
    """One layout (``jit`` 0: the nominal one) sampled at ``ds``; :class:`_LayoutError` if invalid."""
    vest = Ellipsoid(np.zeros(3), jitter(rng, 6.0 * jit), np.asarray(p.vestibule_semi, float))
    planes = _canal_planes(rng, jit)
    crus = _common_crus(p, vest, planes, rng, jit, ds)
    path_a, ra = _anterior_canal(p, vest, planes, crus, rng, jit, ds)
    path_p, rp = _posterior_canal(p, vest, planes, crus, rng, jit, ds)
    path_l, rl = _lateral_canal(p, vest, planes, rng, jit, ds)
    canals = _canal_tubes(p, vest, crus, path_a, path_p, path_l, rng, ds)
    cochlea, lamina, cinfo, v_entry = _place_cochlea(p, vest, rng, jit, ds)
    clearances = {}
    if check:
        clearances = _tube_clearances(cochlea, canals, vest, crus.top)
        _check_layout(p, clearances, cochlea, canals, vest)
    tubes = [cochlea, canals["anterior"], canals["posterior"], canals["lateral"], canals["crus"], canals["web"],
             _connector("c_cochlea", vest.centre, v_entry, ds),
             _connector("c_anterior", vest.centre, path_a[-1], ds),
             _connector("c_posterior", vest.centre, path_p[-1], ds),
             _connector("c_lateral1", vest.centre, path_l[0], ds),
             _connector("c_lateral2", vest.centre, path_l[-1], ds),
             _connector("c_crus", vest.centre, crus.entry, ds)]
    info = dict(cinfo)
    info.update({
        "canal_arc_length_mm": {
            "anterior": _outside_length(path_a, vest) + crus.outside,
            "posterior": _outside_length(path_p, vest) + crus.outside,
            "lateral": _outside_length(path_l, vest),
        },
        "canal_radius_of_curvature_mm": {"anterior": ra, "posterior": rp, "lateral": rl},
        "canal_lumen_diameter_mm": 2 * p.canal_radius,
        "ampulla_diameter_mm": 2 * p.canal_radius * p.ampulla_factor,
        "canal_plane_angles_deg": {"anterior_posterior": plane_angle(planes.n_a, planes.n_p),
                                   "anterior_lateral": plane_angle(planes.n_a, planes.n_l),
                                   "posterior_lateral": plane_angle(planes.n_p, planes.n_l)},
        "vestibule_mm": [float(2 * s) for s in vest.semi],
        "min_tube_gap_mm": float(min(1.0, min(clearances.values()))) if clearances else None,
    })
    return Anatomy(tubes, vest, lamina, info)


def build_anatomy(p: AnatomyParams, seed: int, index: int, ds: float) -> Anatomy:
    """Labyrinth in the anatomical frame (left ear, scale 1); redraws the jitter until the
    layout is valid (checked at a fixed sampling, so the anatomy is the same at any binning)."""
    rng = np.random.default_rng([int(seed), int(index), 2])
    last_err = ""
    for attempt in range(60):
        jit = 1.0 if attempt < 50 else 0.0  # last tries: the nominal layout
        state = rng.bit_generator.state
        try:
            anat = _try_anatomy(p, rng, LAYOUT_DS, jit)
        except _LayoutError as exc:
            last_err = str(exc)
            continue
        if ds < LAYOUT_DS:  # finer voxels: the same layout, sampled more densely
            rng.bit_generator.state = state
            info = anat.info
            anat = _try_anatomy(p, rng, ds, jit, check=False)
            anat.info["min_tube_gap_mm"] = info["min_tube_gap_mm"]
        anat.info["layout_attempts"] = attempt + 1
        return anat
    raise RuntimeError(f"phantom anatomy: no valid layout after 60 tries ({last_err})")
