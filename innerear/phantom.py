"""Synthetic micro-CT phantoms of a human temporal bone's inner ear (the default data set).

The real Hear-EU scans cannot be downloaded here, so the pipeline runs on phantoms that
are hard in the same way as real scans: the labyrinth is a thin, dark, tortuous lumen in
bright bone, and dark look-alikes (mastoid air cells, vessels, nerve canals) sit close to it,
so that a single 2D slice is ambiguous while the 3D shape is not.

Anatomy (mm), built in an anatomical frame (x lateral, y anterior, z superior, origin at the
vestibule centre), then scaled, mirrored (left/right) and posed in the scanner frame:

* cochlea: a tapering spiral tube (radius r_apex + (r0 - r_apex) exp(-k phi)) of 2.5-2.75
  turns, rising along its modiolar axis (A ~8.75, B ~7, height ~3.3, duct ~28-36; scala
  ~1.0 high at the base, ~0.7 at the half turn, ~0.45 at the apex, elliptical section);
  its basal end (a short straight hook, widening into a mouth) opens into the vestibule; a
  faint osseous spiral lamina inside the scala (image only);
* vestibule: a ~5 x 5 x 3 ellipsoid;
* three semicircular canals in near-orthogonal planes (84-94 degrees), lumen ~0.8, an
  ampulla ~2x wider next to the vestibule, arc lengths anterior 15-20, posterior 18-22,
  lateral 12-15 (its radius ~25 % smaller); the anterior and posterior canals leave the top
  of a common crus (a web fills the narrow crotch between them). Each canal leaves and
  re-enters the vestibule, so canals + vestibule hold exactly three tunnels;
* surroundings: dense otic-capsule bone in a wobbly shell (1.3-2.2 mm) around the lumen,
  lighter trabecular bone with marrow pores, mastoid air cells (dark, round, 0.5-5 mm,
  3-12, one to three within 2-3.5 voxels of the labyrinth but never touching it), thin
  vessels (dark, 0.3-0.8 mm) passing 1.5 voxels to 1 mm from it, an internal auditory canal
  (soft tissue) along the modiolar axis, sometimes a cut face of the specimen block
  (embedding medium). No air, vessel or nerve voxel is label or 26-adjacent to it;
* imaging: voxel size = protocol (16.3 / 19.5 um) x ``binning``, per-specimen field of view
  (13-18 mm per axis or what the labyrinth needs), pose (rotation 3-20 degrees, offset),
  size (+-10 %), side (right = mirror image of left), Gaussian PSF (0.8-1.2 voxel), Gaussian
  noise, a smooth multiplicative drift; stored as uint16 (capsule ~26000-28000, trabecular
  bone ~10000-23000, lumen and air ~4000-6500, soft tissue / medium ~6500-11000).

The label is the geometry (voxel centre inside the union of the tubes' elliptical
sections and the vestibule), not a threshold of the image; where the lumen is thinner than
a voxel (coarse smoke settings) the voxels on the centreline are added so that the label
stays one 26-connected component, and voxel-sized bone pockets enclosed by lumen are
filled. ``structures`` holds 1 cochlea, 2 vestibule, 3 canals; with ``with_tissue=True``
a tissue map (see ``TISSUES``) says what every voxel was drawn as.

Helpers measure the anatomy from the voxels alone: :func:`count_cochlear_turns`,
:func:`cochlear_handedness`, :func:`topology` (components, cavities, tunnels),
:func:`canal_tunnels`.

Volumes are built in slabs along axis 0 (each with a halo for the blur), so that a
paper-sized specimen (``binning=1``, e.g. ``shape=(618, 892, 600)``) needs only its uint16 /
uint8 output arrays plus a few hundred MB. Everything is deterministic from ``seed``:
specimen ``i`` draws from ``numpy.random.default_rng([seed, i, ...])`` whatever the set size,
and written files are byte-identical for the same seed.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .config import PhantomSettings

PHANTOM_VERSION = 1
GENERATOR = "innerear.phantom"

STRUCTURES = {0: "background", 1: "cochlea", 2: "vestibule", 3: "canals"}
COCHLEA, VESTIBULE, CANALS = 1, 2, 3

# tissue classes of the optional tissue map (what each voxel was drawn as)
TISSUES = {0: "bone", 1: "lumen", 2: "air_cell", 3: "vessel", 4: "nerve_canal", 5: "medium"}
T_BONE, T_LUMEN, T_AIR, T_VESSEL, T_NERVE, T_MEDIUM = range(6)

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # Kronecker sequences: balanced sides / protocols
_SILVER = math.sqrt(2.0) - 1.0
_SLAB_VOXELS = 16_000_000  # voxels per slab (plus halo)
_COARSE_MM = 0.3  # grid of the smooth fields (distance to the lumen, bias, capsule edge)
_TEXTURE_MM = 0.1  # finest grid of the trabecular texture


@dataclass
class Specimen:
    """One synthetic specimen: image, labels and geometry."""

    specimen_id: str
    image: np.ndarray  # uint16 (X, Y, Z)
    label: np.ndarray  # uint8 0/1
    structures: np.ndarray  # uint8 0..3 (see STRUCTURES)
    affine: np.ndarray  # 4x4 voxel -> world (mm, RAS+)
    spacing: tuple[float, float, float]
    meta: dict = field(default_factory=dict)
    tissue: np.ndarray | None = None  # uint8 (see TISSUES), only with ``with_tissue=True``


# =========================================================================== small helpers
def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rotmat(axis: np.ndarray, deg: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``deg`` degrees (Rodrigues)."""
    a = _unit(axis)
    t = math.radians(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _rand_unit(rng: np.random.Generator) -> np.ndarray:
    return _unit(rng.standard_normal(3))


def _jitter(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    return _rotmat(_rand_unit(rng), rng.uniform(0.0, max_deg))


def _plane_angle(n1: np.ndarray, n2: np.ndarray) -> float:
    """Angle (degrees, 0-90) between two planes given by their normals."""
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(_unit(n1), _unit(n2)))))))


def _resample(points: np.ndarray, ds: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at arc-length step ``ds``; returns (points, arc length of each)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / ds)) + 1)
    snew = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(snew, s, points[:, i]) for i in range(3)], axis=1)
    return out, snew


def _tangents(points: np.ndarray) -> np.ndarray:
    return _unit(np.gradient(points, axis=0))


def _perp_frames(t: np.ndarray) -> np.ndarray:
    """Orthonormal frames (rows e1, e2, t) for circular sections."""
    ref = np.where(np.abs(t[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    e1 = _unit(np.cross(t, ref))
    e2 = np.cross(t, e1)
    return np.stack([e1, e2, t], axis=1)


def _orthonormal(frames: np.ndarray) -> np.ndarray:
    """Re-orthonormalise frames (rows e1, e2, t), keeping t and, where it is usable, e1."""
    t = _unit(frames[:, 2])
    e1 = frames[:, 0] - np.sum(frames[:, 0] * t, axis=1, keepdims=True) * t
    bad = np.linalg.norm(e1, axis=1) < 1e-6
    if bad.any():
        e1[bad] = _perp_frames(t[bad])[:, 0]
    e1 = _unit(e1)
    return np.stack([e1, np.cross(t, e1), t], axis=1)


def _line(p0: np.ndarray, p1: np.ndarray, ds: float) -> np.ndarray:
    n = max(2, int(math.ceil(np.linalg.norm(p1 - p0) / ds)) + 1)
    return p0[None] + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0)[None]


@dataclass
class _Tube:
    """A tube: centreline samples with an ellipsoid (semi-axes along e1, e2, t) at each."""

    name: str
    code: int
    pts: np.ndarray  # (n, 3)
    semi: np.ndarray  # (n, 3)
    frames: np.ndarray  # (n, 3, 3) rows e1, e2, t
    lumen: bool = True  # False: a skeleton-only connector (keeps the label connected)

    def transformed(self, lin: np.ndarray, scale: float) -> "_Tube":
        rot = lin / scale  # orthogonal (rotation x mirror)
        return _Tube(self.name, self.code, self.pts @ lin.T, self.semi * scale,
                     self.frames @ rot.T, self.lumen)


@dataclass
class _Ellipsoid:
    centre: np.ndarray
    axes: np.ndarray  # columns: unit axes
    semi: np.ndarray

    def q(self, pts: np.ndarray) -> np.ndarray:
        loc = (pts - self.centre) @ self.axes / self.semi
        return np.sum(loc * loc, axis=-1)

    def transformed(self, lin: np.ndarray, scale: float) -> "_Ellipsoid":
        rot = lin / scale
        return _Ellipsoid(self.centre @ lin.T, rot @ self.axes, self.semi * scale)

    def surface_distance(self, pts: np.ndarray) -> np.ndarray:
        """Approximate signed distance to the surface (negative inside)."""
        q = np.maximum(self.q(pts), 1e-12)
        r = np.linalg.norm(pts - self.centre, axis=-1)
        return r * (1.0 - 1.0 / np.sqrt(q))

    def world_half_extent(self) -> np.ndarray:
        return np.sqrt(((self.axes * self.semi[None, :]) ** 2).sum(axis=1))


# =========================================================================== parameter draw
def draw_specimen_params(index: int, seed: int, settings: PhantomSettings) -> dict[str, Any]:
    """The per-specimen draw (side, protocol, size, pose, imaging...), cheap and geometry-free.

    Specimen ``index`` gets the same parameters whatever the size of the set. Sides and
    protocols follow low-discrepancy sequences with a seed-dependent start, so any 17
    consecutive specimens hold both sides and (for a share >= 1/17) both protocols.
    """
    index, seed = int(index), int(seed)
    offs = np.random.default_rng([seed, 0x5EED]).random(2)
    rng = np.random.default_rng([seed, index, 1])
    side = "left" if (offs[0] + index * _SILVER) % 1.0 < 0.5 else "right"
    protocols = tuple(float(p) for p in settings.protocols_um)
    second = len(protocols) > 1 and (offs[1] + index * _GOLDEN) % 1.0 < settings.second_protocol_share
    protocol_index = 1 if second else 0
    u = rng.uniform
    p: dict[str, Any] = {
        "index": index,
        "side": side,
        "protocol_index": protocol_index,
        "protocol_um": protocols[protocol_index],
        "binning": int(settings.binning),
        "voxel_mm": protocols[protocol_index] * int(settings.binning) / 1000.0,
        "scale": u(0.9, 1.1),
        # cochlea
        "turns": u(2.5, 2.75),
        "cochlea_A": u(8.5, 9.0),
        "cochlea_k": u(0.15, 0.18),
        "cochlea_r_apex": u(0.45, 0.6),
        "cochlea_height": u(3.1, 3.5),
        "scala_h_base": u(0.95, 1.05),
        "scala_h_half": u(0.66, 0.74),
        "scala_h_apex": u(0.4, 0.5),
        "scala_width_ratio": u(1.25, 1.45),
        "hook_mm": u(1.4, 1.9),
        # vestibule and canals
        "vestibule_semi": [u(1.4, 1.6), u(2.35, 2.65), u(2.35, 2.65)],
        "len_anterior": u(15.0, 20.0),
        "len_posterior": u(18.0, 22.0),
        "len_lateral": u(12.0, 15.0),
        "canal_radius": u(0.37, 0.43),
        "ampulla_factor": u(1.8, 2.1),
        "crus_mm": u(1.6, 2.2),
        # pose and field of view
        "pose_axis": _rand_unit(rng).tolist(),
        "pose_deg": u(3.0, 20.0),
        "fov_mm": [u(13.0, 18.0) for _ in range(3)],
        "offset_frac": [u(0.0, 1.0) for _ in range(3)],
        # surroundings
        "capsule_mm": u(1.3, 2.2),
        "n_air_cells": int(rng.integers(3, 13)),
        "n_vessels": int(rng.integers(2, 6)),
        "iac_radius": u(1.6, 2.1),
        "cut_face": bool(rng.random() < 0.5),
        "pore_mm": u(0.22, 0.4),
        "pore_threshold": u(-0.4, 0.2),
        # imaging
        "psf_sigma_vox": u(0.8, 1.2),
        "noise_frac": u(0.035, 0.07),
        "bias_amp": u(0.04, 0.12),
        "i_capsule": u(25500.0, 28500.0),
        "i_trabecular": u(19000.0, 23000.0),
        "i_marrow": u(9000.0, 12500.0),
        "i_lumen": u(3800.0, 5200.0),
        "air_factor": u(1.0, 1.25),
        "vessel_factor": u(0.9, 1.1),
        "i_soft": u(8000.0, 11000.0),
        "i_medium": u(6500.0, 9000.0),
    }
    return p


# =========================================================================== anatomy
class _Anatomy:
    """Tubes and vestibule in the anatomical frame (mm, scale 1, left ear)."""

    def __init__(self, tubes: list[_Tube], vestibule: _Ellipsoid, lamina: _Tube, info: dict[str, Any]):
        self.tubes = tubes  # labyrinth tubes and (lumen=False) connectors to the vestibule centre
        self.vestibule = vestibule
        self.lamina = lamina  # osseous spiral lamina (image only, inside the cochlear label)
        self.info = info


def _arc(centre, e_n, e_l, r, psi0, psi1, ds):
    """Circle points ``centre + r (-cos(psi) e_n + sin(psi) e_l)`` for psi from psi0 to psi1."""
    n = max(8, int(math.ceil(r * abs(psi1 - psi0) / ds)) + 1)
    psi = np.linspace(psi0, psi1, n)
    return centre[None] + r * (-np.cos(psi)[:, None] * e_n[None] + np.sin(psi)[:, None] * e_l[None])


def _bezier(p0, d0, p3, d3, ds, stiff=0.4):
    """Cubic from p0 (leaving along d0) to p3 (arriving along d3)."""
    length = float(np.linalg.norm(p3 - p0))
    b1 = p0 + _unit(d0) * length * stiff
    b2 = p3 - _unit(d3) * length * stiff
    n = max(8, int(math.ceil(2.0 * length / ds)) + 1)
    u = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - u) ** 3 * p0 + 3 * (1 - u) ** 2 * u * b1 + 3 * (1 - u) * u ** 2 * b2 + u ** 3 * p3
    return _resample(pts, ds)[0]


def _outside_length(pts: np.ndarray, vest: _Ellipsoid) -> float:
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    mid = 0.5 * (pts[1:] + pts[:-1])
    return float(seg[vest.q(mid) > 1.0].sum())


def _solve_radius(build, target, vest, lo=1.0, hi=8.0):
    """Bisection on the radius so that the outside length of ``build(r)`` is ``target``."""
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        if _outside_length(build(mid), vest) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _canal_tube(name, pts, vest, r0, amp_factor, ampulla_at_end: bool, ds) -> _Tube:
    """Canal tube of lumen radius r0 with an ampulla just outside the vestibule at one end."""
    pts, s = _resample(pts, ds)
    if ampulla_at_end:
        s = s[-1] - s
    outside = vest.q(pts) > 1.0
    s_exit = float(s[outside].min()) if outside.any() else 0.0
    s0 = s_exit + 0.5
    g = np.where(s <= s0, 1.0, np.exp(-(((s - s0) / 0.8) ** 2)))
    radius = r0 * (1.0 + (amp_factor - 1.0) * g)
    frames = _perp_frames(_tangents(pts))
    return _Tube(name, CANALS, pts, np.stack([radius, radius, radius], axis=1), frames)


def _flare(t: _Tube, vest: _Ellipsoid, amount: float, length: float, at_start: bool = True) -> None:
    """Widen a tube where it opens into the vestibule (a smooth mouth instead of a sliver)."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(t.pts, axis=0), axis=1))])
    if not at_start:
        s = s[-1] - s
    outside = vest.q(t.pts) > 1.0
    s_exit = float(s[outside].min()) if outside.any() else 0.0
    g = np.clip(1.0 - (s - s_exit) / length, 0.0, 1.0)
    t.semi = t.semi * (1.0 + amount * g * g * (3 - 2 * g))[:, None]


def _connector(name, p0, p1, ds) -> _Tube:
    pts = _line(p0, p1, ds)
    return _Tube(name, VESTIBULE, pts, np.zeros((len(pts), 3)), _perp_frames(_tangents(pts)), lumen=False)


def _build_cochlea(p: dict, v_entry: np.ndarray, d0: np.ndarray, t0: np.ndarray, ds: float):
    """Log-spiral scala from the vestibule (hook) to the apex."""
    w = _unit(np.cross(d0, t0))
    d1 = np.cross(w, d0)
    turns = p["turns"]
    phi_end = 2 * math.pi * turns
    k = p["cochlea_k"]
    h0, hh, ha = p["scala_h_base"], p["scala_h_half"], p["scala_h_apex"]
    tau = -math.pi / math.log((hh - ha) / (h0 - ha))

    def height(phi):
        return ha + (h0 - ha) * np.exp(-phi / tau)

    ratio = p["scala_width_ratio"]
    width0, width_pi = ratio * height(0.0), ratio * height(math.pi)
    r_inf = p["cochlea_r_apex"]  # the spiral's radius tends to r_inf (apical turn ~1.5 mm across)
    r0 = (p["cochlea_A"] - 0.5 * (width0 + width_pi) - r_inf * (1.0 - math.exp(-k * math.pi))) / (
        1.0 + math.exp(-k * math.pi))
    rise = p["cochlea_height"] - 0.5 * (h0 + height(phi_end))

    def local(phi):
        phi = np.asarray(phi, float)
        r = r_inf + (r0 - r_inf) * np.exp(-k * phi)
        return ((r * np.cos(phi))[..., None] * d0 + (r * np.sin(phi))[..., None] * d1
                + (rise * phi / phi_end)[..., None] * w)

    # arc length as a function of phi, for resampling at ~ds
    phis = np.linspace(0.0, phi_end, 40001)
    lp = local(phis)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(lp, axis=0), axis=1))])
    spiral_len = float(s[-1])
    n = max(8, int(math.ceil(spiral_len / ds)) + 1)
    phi = np.interp(np.linspace(0.0, spiral_len, n), s, phis)
    tan0 = _unit(local(1e-4) - local(0.0))
    s0 = v_entry + p["hook_mm"] * tan0
    modiolus = s0 - local(0.0)  # base of the modiolar axis
    spiral = modiolus + local(phi)
    hook = _line(v_entry, s0, ds)[:-1]
    pts = np.concatenate([hook, spiral])
    phi_all = np.concatenate([np.zeros(len(hook)), phi])
    t = _tangents(pts)
    axis_pt = modiolus + (rise * phi_all / phi_end)[:, None] * w
    radial = pts - axis_pt
    radial[: len(hook)] = d0  # the hook keeps the basal orientation
    e1 = _unit(radial - np.sum(radial * t, axis=1, keepdims=True) * t)
    e2 = np.cross(t, e1)
    hgt = height(phi_all)
    wid = ratio * hgt
    semi = np.stack([wid / 2, hgt / 2, np.maximum(wid, hgt) / 2], axis=1)
    tube = _Tube("cochlea", COCHLEA, pts, semi, np.stack([e1, e2, t], axis=1))
    b_width = 2 * r_inf + (r0 - r_inf) * (math.exp(-k * math.pi / 2) + math.exp(-k * 3 * math.pi / 2)) + ratio * 0.5 * (
        height(math.pi / 2) + height(3 * math.pi / 2))
    info = {
        "turns": turns,
        "modiolus_base": modiolus.tolist(),
        "modiolar_axis": w.tolist(),
        "cochlea_A_mm": p["cochlea_A"],
        "cochlea_B_mm": float(b_width),
        "cochlea_height_mm": p["cochlea_height"],
        "spiral_length_mm": spiral_len,
        "scala_height_mm": [float(h0), float(height(math.pi)), float(height(phi_end))],
    }
    # osseous spiral lamina: a thin shelf from the modiolar wall, half the scala width
    lam_ext = 0.5 - 0.15 * phi_all / phi_end
    lam_centre = pts - e1 * (wid / 2 * (1.0 - lam_ext))[:, None]
    lam_semi = np.stack([wid / 2 * lam_ext, np.full(len(pts), 0.04), wid / 2 * lam_ext], axis=1)
    lamina = _Tube("lamina", COCHLEA, lam_centre, lam_semi, np.stack([e1, e2, t], axis=1))
    return tube, lamina, info


def _gaps(pa, ra, pb, rb, vest: _Ellipsoid, exclude=None) -> float:
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
    outside = vest.surface_distance(contact) > -0.15
    return float(gap[outside].min()) if outside.any() else np.inf


def _min_clearance(a: _Tube, b: _Tube, vest: _Ellipsoid, skip_near: np.ndarray | None = None,
                   skip_mm: float = 0.0) -> float:
    """Smallest gap between two tubes outside the vestibule (optionally away from a junction)."""
    ma = np.ones(len(a.pts), bool)
    mb = np.ones(len(b.pts), bool)
    if skip_near is not None:
        ma = np.linalg.norm(a.pts - skip_near, axis=1) > skip_mm
        mb = np.linalg.norm(b.pts - skip_near, axis=1) > skip_mm
    return _gaps(a.pts[ma], a.semi[ma].max(1), b.pts[mb], b.semi[mb].max(1), vest)


def _self_clearance(t: _Tube, vest: _Ellipsoid, min_sep_mm: float) -> float:
    """Smallest gap between parts of one tube more than ``min_sep_mm`` apart along it (for
    the elliptical cochlea: the semi-axis along the joining direction)."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(t.pts, axis=0), axis=1))])
    if t.code == COCHLEA:
        tree = cKDTree(t.pts)
        pr = tree.query_pairs(2 * t.semi.max() + 0.6, output_type="ndarray")
        pr = pr[np.abs(s[pr[:, 0]] - s[pr[:, 1]]) > min_sep_mm]
        if len(pr) == 0:
            return np.inf
        u = _unit(t.pts[pr[:, 1]] - t.pts[pr[:, 0]])

        def extent(idx, direction):
            loc = np.einsum("nij,nj->ni", t.frames[idx], direction)
            return 1.0 / np.sqrt(np.sum((loc / t.semi[idx]) ** 2, axis=1))

        d = np.linalg.norm(t.pts[pr[:, 1]] - t.pts[pr[:, 0]], axis=1)
        return float(np.min(d - extent(pr[:, 0], u) - extent(pr[:, 1], -u)))
    r = t.semi.max(1)
    return _gaps(t.pts, r, t.pts, r, vest, exclude=lambda i, j: np.abs(s[i] - s[j]) <= min_sep_mm)


_LAYOUT_DS = 0.05  # the layout is drawn and checked at this sampling, whatever the voxel size


def _build_anatomy(p: dict, seed: int, index: int, ds: float) -> _Anatomy:
    """Labyrinth in the anatomical frame (left ear, scale 1); redraws the jitter until the
    layout is valid (checked at a fixed sampling, so the anatomy is the same at any binning)."""
    rng = np.random.default_rng([int(seed), int(index), 2])
    last_err = ""
    for attempt in range(60):
        jit = 1.0 if attempt < 50 else 0.0  # last tries: the nominal layout
        state = rng.bit_generator.state
        try:
            anat = _try_anatomy(p, rng, _LAYOUT_DS, jit)
        except _LayoutError as exc:
            last_err = str(exc)
            continue
        if ds < _LAYOUT_DS:  # finer voxels: the same layout, sampled more densely
            rng.bit_generator.state = state
            info = anat.info
            anat = _try_anatomy(p, rng, ds, jit, check=False)
            anat.info["min_tube_gap_mm"] = info["min_tube_gap_mm"]
        anat.info["layout_attempts"] = attempt + 1
        return anat
    raise RuntimeError(f"phantom anatomy: no valid layout after 60 tries ({last_err})")


class _LayoutError(Exception):
    pass


def _try_anatomy(p: dict, rng: np.random.Generator, ds: float, jit: float, check: bool = True) -> _Anatomy:
    u = rng.uniform
    vest = _Ellipsoid(np.zeros(3), _jitter(rng, 6.0 * jit), np.asarray(p["vestibule_semi"], float))

    def in_vest(nominal, depth):
        """A point inside the vestibule: a direction in its own axes, at ``depth`` of the radius."""
        d = _unit(np.asarray(nominal, float) + u(-0.07, 0.07, 3) * jit)
        return vest.centre + vest.axes @ (d * vest.semi * depth)

    def exit_along(p0, direction):
        """Distance from an inside point to the vestibule surface along ``direction``."""
        lo, hi = 0.0, 10.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if vest.q(p0 + mid * direction) < 1.0 else (lo, mid)
        return lo

    # canal plane normals: a near-orthogonal triad, each jittered, pairwise 84-94 degrees
    alpha = math.radians(45.0 + u(-5, 5) * jit)
    ant_dir = np.array([math.sin(alpha), math.cos(alpha), 0.0])  # anterolateral
    post_dir = np.array([math.cos(alpha), -math.sin(alpha), 0.0])  # posterolateral
    for _ in range(200):
        n_a = _jitter(rng, 4.0 * jit) @ post_dir  # anterior canal plane contains ant_dir and z
        n_p = _jitter(rng, 4.0 * jit) @ ant_dir  # posterior canal plane contains post_dir and z
        n_l = _jitter(rng, 4.0 * jit) @ np.array([0.0, 0.0, 1.0])
        angles = [_plane_angle(n_a, n_p), _plane_angle(n_a, n_l), _plane_angle(n_p, n_l)]
        if all(84.0 <= a <= 94.0 for a in angles):
            break
    else:
        raise _LayoutError("canal planes")
    r0 = p["canal_radius"]
    amp = p["ampulla_factor"]

    # common crus: from the posteromedial top of the vestibule along the planes' intersection
    ell = _unit(np.cross(n_a, n_p))
    if ell[2] < 0:
        ell = -ell
    cc_entry = in_vest([-0.4, -0.5, 0.75], 0.55)
    q_pt = cc_entry + ell * (exit_along(cc_entry, ell) + p["crus_mm"])
    crus_pts = _line(cc_entry, q_pt, ds)
    crus_out = _outside_length(crus_pts, vest)

    def in_plane_dir(normal, want):
        d = _unit(np.cross(normal, ell))
        return d if np.dot(d, want) > 0 else -d

    # anterior canal: a circle tangent to the crus at its top, over the vestibule, down its
    # ampullated limb to the anterior-superior vestibule
    en_a = in_plane_dir(n_a, ant_dir)
    psi_a = math.radians(u(195.0, 215.0) if jit else 205.0)
    e_a = in_vest([0.05, 0.5, 0.87], 0.62)

    def build_a(r):
        arc = _arc(q_pt + r * en_a, en_a, ell, r, 0.0, psi_a, ds)
        limb = _bezier(arc[-1], arc[-1] - arc[-2], e_a, vest.centre - e_a, ds)
        return np.concatenate([arc, limb[1:]])

    ra = _solve_radius(build_a, p["len_anterior"] - crus_out, vest)
    path_a = build_a(ra)
    # posterior canal: tangent to the crus, behind and below, down to the posterior-inferior
    en_p = in_plane_dir(n_p, post_dir)
    psi_p = math.radians(u(225.0, 250.0) if jit else 238.0)
    e_p = in_vest([0.35, -0.55, -0.75], 0.6)

    beta = math.radians(u(25.0, 45.0) if jit else 35.0)  # the posterior canal leaves the crus tilted
    ep_n = math.cos(beta) * en_p - math.sin(beta) * ell
    ep_l = math.sin(beta) * en_p + math.cos(beta) * ell

    def build_p(r):
        arc = _arc(q_pt + r * ep_n, ep_n, ep_l, r, 0.0, psi_p, ds)
        limb = _bezier(arc[-1], arc[-1] - arc[-2], e_p, vest.centre - e_p, ds)
        return np.concatenate([arc, limb[1:]])

    rp = _solve_radius(build_p, p["len_posterior"] - crus_out, vest)
    path_p = build_p(rp)
    # lateral canal: a circle lateral to the vestibule, open towards it
    e_l1 = in_vest([0.95, 0.3, -0.15], 0.6)  # ampullated, anterolateral
    e_l2 = in_vest([0.8, -0.5, 0.05], 0.6)  # posterolateral
    bulge = np.array([1.0, 0.0, 0.0])
    bulge = _unit(bulge - np.dot(bulge, n_l) * n_l)
    anchor = vest.centre + bulge * exit_along(vest.centre, bulge)
    gamma = math.radians(u(40.0, 55.0) if jit else 48.0)
    e1 = -bulge
    e2 = np.cross(n_l, e1)
    if np.dot(e2, [0.0, 1.0, 0.0]) > 0:  # start on the posterior side
        e2 = -e2
    off = u(0.3, 0.7) if jit else 0.5

    def build_l(r):
        centre = anchor + bulge * (r + off)
        th = np.linspace(gamma, 2 * math.pi - gamma, max(8, int(math.ceil(r * 2 * math.pi / ds))))
        arc = centre[None] + r * (np.cos(th)[:, None] * e1[None] + np.sin(th)[:, None] * e2[None])
        a = _bezier(e_l2, e_l2 - vest.centre, arc[0], arc[1] - arc[0], ds)
        b = _bezier(arc[-1], arc[-1] - arc[-2], e_l1, vest.centre - e_l1, ds)
        return np.concatenate([a[:-1], arc, b[1:]])

    rl = _solve_radius(build_l, p["len_lateral"], vest, 0.8, 6.0)
    path_l = build_l(rl)

    anterior = _canal_tube("anterior_canal", path_a, vest, r0, amp, True, ds)
    posterior = _canal_tube("posterior_canal", path_p, vest, r0, amp, True, ds)
    lateral = _canal_tube("lateral_canal", path_l, vest, r0 * u(0.95, 1.05), amp, True, ds)
    crus_pts = _resample(crus_pts, ds)[0]
    crus = _Tube("common_crus", CANALS, crus_pts, np.full((len(crus_pts), 3), r0 * 1.15),
                 _perp_frames(_tangents(crus_pts)))
    _flare(crus, vest, 0.4, 0.6)
    # the crotch where the anterior and posterior canals leave the common crus: a web as thick
    # as the canals bridges them until they are 0.7 mm apart (a smooth junction, no thin
    # sliver of bone between two nearly touching tubes)
    sa = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path_a, axis=0), axis=1))])
    sp_ = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path_p, axis=0), axis=1))])
    tt = np.arange(0.0, 4.0, ds)
    pa = np.stack([np.interp(tt, sa, path_a[:, k]) for k in range(3)], 1)
    pp = np.stack([np.interp(tt, sp_, path_p[:, k]) for k in range(3)], 1)
    sep = np.linalg.norm(pp - pa, axis=1)
    n_web = max(3, int(np.searchsorted(sep, 2 * r0 + 0.7)))
    mid = 0.5 * (pa + pp)[:n_web]
    tw = _tangents(mid)
    across = pp[:n_web] - pa[:n_web]
    across -= np.sum(across * tw, axis=1, keepdims=True) * tw
    frames = _orthonormal(np.stack([across, across, tw], axis=1))
    web_semi = np.stack([np.maximum(0.5 * sep[:n_web], r0), np.full(n_web, r0), np.full(n_web, r0)], 1)
    fillet = _Tube("crus_web", CANALS, mid, web_semi, frames)
    _flare(lateral, vest, 0.4, 0.6, at_start=True)
    for t in (anterior, posterior, lateral):  # the ampullated ends open widely too
        _flare(t, vest, 0.25, 0.6, at_start=False)

    # cochlea: anteromedial, apex anterolateral-inferior; the basal hook leaves the
    # anterior-inferior vestibule
    v_entry = in_vest([-0.35, 0.6, -0.6], 0.55)
    rj = _jitter(rng, 8.0 * jit)
    w = rj @ _unit(np.array([0.75, 0.45, -0.5]))
    d0 = rj @ np.array([0.45, -0.85, -0.2])
    d0 = _unit(d0 - np.dot(d0, w) * w)
    t0 = np.cross(w, d0)
    cochlea, lamina, cinfo = _build_cochlea(p, v_entry, d0, t0, ds)
    _flare(cochlea, vest, 0.6, 0.8)

    # validity: tubes never touch outside the vestibule (anterior and posterior canals only
    # meet at the crus)
    gap = 0.25
    pairs = {
        ("cochlea", "anterior"): (cochlea, anterior, None),
        ("cochlea", "posterior"): (cochlea, posterior, None),
        ("cochlea", "lateral"): (cochlea, lateral, None),
        ("cochlea", "crus"): (cochlea, crus, None),
        ("anterior", "lateral"): (anterior, lateral, None),
        ("posterior", "lateral"): (posterior, lateral, None),
        ("lateral", "crus"): (lateral, crus, None),
        ("anterior", "posterior"): (anterior, posterior, 4.0),
    }
    checks = {}
    if check:
        checks = {k: _min_clearance(a, b, vest, q_pt if skip else None, skip or 0.0)
                  for k, (a, b, skip) in pairs.items()}
        problems = [f"tubes too close: {k} {v:.3f}" for k, v in checks.items() if v < gap]
        if _self_clearance(cochlea, vest, 3.0) < 0.15:
            problems.append("cochlear turns touch")
        for t in (anterior, posterior, lateral):
            if _self_clearance(t, vest, 3.0) < 0.3:
                problems.append(f"{t.name} touches itself")
        # the spiral (beyond the hook) stays clear of the vestibule
        s_c = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(cochlea.pts, axis=0), axis=1))])
        far = s_c > p["hook_mm"] + 2.5
        if np.any(vest.surface_distance(cochlea.pts[far]) - cochlea.semi[far].max(1) < 0.3):
            problems.append("cochlea touches the vestibule")
        if problems:
            raise _LayoutError("; ".join(problems))

    tubes = [cochlea, anterior, posterior, lateral, crus, fillet,
             _connector("c_cochlea", vest.centre, v_entry, ds),
             _connector("c_anterior", vest.centre, path_a[-1], ds),
             _connector("c_posterior", vest.centre, path_p[-1], ds),
             _connector("c_lateral1", vest.centre, path_l[0], ds),
             _connector("c_lateral2", vest.centre, path_l[-1], ds),
             _connector("c_crus", vest.centre, cc_entry, ds)]
    lengths = {
        "anterior": _outside_length(path_a, vest) + crus_out,
        "posterior": _outside_length(path_p, vest) + crus_out,
        "lateral": _outside_length(path_l, vest),
    }
    info = dict(cinfo)
    info.update({
        "canal_arc_length_mm": lengths,
        "canal_radius_of_curvature_mm": {"anterior": ra, "posterior": rp, "lateral": rl},
        "canal_lumen_diameter_mm": 2 * r0,
        "ampulla_diameter_mm": 2 * r0 * amp,
        "canal_plane_angles_deg": {"anterior_posterior": _plane_angle(n_a, n_p),
                                   "anterior_lateral": _plane_angle(n_a, n_l),
                                   "posterior_lateral": _plane_angle(n_p, n_l)},
        "vestibule_mm": [float(2 * s) for s in vest.semi],
        "min_tube_gap_mm": float(min(1.0, min(checks.values()))) if checks else None,
    })
    return _Anatomy(tubes, vest, lamina, info)


# =========================================================================== rasterising tubes
class _TubeSet:
    """Union of the ellipsoids of many tube samples, with fast inside tests on voxel grids."""

    def __init__(self, tubes: Iterable[_Tube]):
        tubes = [t for t in tubes if len(t.pts)]
        self.c = np.concatenate([t.pts for t in tubes])
        self.f = _orthonormal(np.concatenate([t.frames for t in tubes]))
        semi = np.maximum(np.concatenate([t.semi for t in tubes]), 1e-6)
        self.inv2 = 1.0 / semi**2
        self.code = np.concatenate([np.full(len(t.pts), t.code, np.int8) for t in tubes])
        self.rmax = semi.max(1)
        self.rmin = semi.min(1)
        self.R = float(self.rmax.max())
        self.tree = cKDTree(self.c)
        # radius classes: exact "no sample reaches this block" tests (largest semi-axis) and
        # "every voxel of this block is inside its nearest sample's ellipsoid" (smallest)
        cls = np.floor(np.log(self.rmax / self.rmax.min()) / np.log(1.25)).astype(int)
        self.classes = [(cKDTree(self.c[cls == k]), float(self.rmax[cls == k].max())) for k in np.unique(cls)]
        cls = np.floor(np.log(self.rmin / self.rmin.min()) / np.log(1.25)).astype(int)
        self.min_classes = [(cKDTree(self.c[cls == k]), float(self.rmin[cls == k].min())) for k in np.unique(cls)]
        # one tree per tube: inside tests look at the nearest samples of every tube
        bounds = np.cumsum([0] + [len(t.pts) for t in tubes])
        self.groups = [(cKDTree(self.c[a:b]), a, float(self.rmax[a:b].max())) for a, b in zip(bounds[:-1], bounds[1:])]

    def _q(self, pts: np.ndarray, idx: np.ndarray) -> np.ndarray:
        loc = np.einsum("nij,nj->ni", self.f[idx], pts - self.c[idx])
        return np.einsum("ni,ni->n", loc * loc, self.inv2[idx])

    def classify(self, pts: np.ndarray, hd: np.ndarray):
        """For blocks (centre, half-diagonal): surely inside, surely outside, code.

        Both are exact with respect to :meth:`points_inside` (whatever the blocks, every voxel
        gets the same answer): a block is outside when no sample's ellipsoid reaches it; it is
        inside when every voxel's nearest sample is closer than that sample's smallest
        semi-axis.
        """
        out = np.ones(len(pts), bool)
        hmax = float(hd.max()) if len(hd) else 0.0
        for tree, radius in self.classes:
            dist, _ = tree.query(pts, k=1, distance_upper_bound=radius + hmax + 1e-6)
            out &= dist > radius + hd
        inside = np.zeros(len(pts), bool)
        code = np.zeros(len(pts), np.int8)
        cand = np.nonzero(~out)[0]
        if len(cand):
            d, idx = self.tree.query(pts[cand], k=1)
            h = hd[cand]
            reach = d + h  # every voxel's nearest sample is at most this far from it ...
            lower = np.full(len(cand), np.inf)  # ... and lies within d + 2h of the centre
            for tree, rmin in self.min_classes:
                dist, _ = tree.query(pts[cand], k=1, distance_upper_bound=float((d + 2 * h).max()) + 1e-6)
                lower = np.where(dist <= d + 2 * h, np.minimum(lower, rmin), lower)
            inside[cand] = reach < lower
            code[cand] = self.code[idx]
        return inside, out, code

    def points_inside(self, pts: np.ndarray, k: int = 3):
        inside = np.zeros(len(pts), bool)
        code = np.zeros(len(pts), np.int8)
        for tree, start, radius in self.groups:
            kk = min(k, tree.n)
            dist, idx = tree.query(pts, k=kk, distance_upper_bound=radius * 1.0001)
            dist, idx = dist.reshape(len(pts), kk), idx.reshape(len(pts), kk)
            near = np.isfinite(dist[:, 0]) & ~inside
            if not near.any():
                continue
            rows = np.nonzero(near)[0]
            sub = idx[rows]
            valid = sub < tree.n
            gidx = np.where(valid, sub, 0) + start
            q = self._q(np.repeat(pts[rows], kk, axis=0), gidx.ravel()).reshape(len(rows), kk)
            q[~valid] = np.inf
            hit = q.min(axis=1) <= 1.0
            inside[rows[hit]] = True
            code[rows[hit]] = self.code[gidx[hit, 0]]
        return inside, code


def _levels(voxel_mm: float) -> list[int]:
    b = 1
    while b * 2 * voxel_mm <= 0.8 and b < 64:
        b *= 2
    out = []
    while b >= 1:
        out.append(b)
        b //= 2
    return out


def _raster(ts: _TubeSet, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, levels: list[int]) -> np.ndarray:
    """Codes of the tube set on the grid xs x ys x zs (0 outside), hierarchically by blocks."""
    shape = np.array([len(xs), len(ys), len(zs)])
    out = np.zeros(tuple(shape), np.int8)
    axes = (xs, ys, zs)
    b0 = levels[0]
    origins = np.stack(np.meshgrid(*[np.arange(0, n, b0) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    for li, b in enumerate(levels):
        if len(origins) == 0:
            break
        if b == 1:
            pts = np.stack([axes[a][origins[:, a]] for a in range(3)], axis=1)
            ins, code = ts.points_inside(pts)
            o = origins[ins]
            out[o[:, 0], o[:, 1], o[:, 2]] = code[ins]
            break
        ends = np.minimum(origins + b, shape) - 1
        lo = np.stack([axes[a][origins[:, a]] for a in range(3)], axis=1)
        hi = np.stack([axes[a][ends[:, a]] for a in range(3)], axis=1)
        inside, outside, code = ts.classify(0.5 * (lo + hi), 0.5 * np.linalg.norm(hi - lo, axis=1))
        if inside.any():
            g = np.zeros(tuple(-(-shape // b)), np.int8)
            oi = origins[inside] // b
            g[oi[:, 0], oi[:, 1], oi[:, 2]] = code[inside]
            big = g.repeat(b, 0).repeat(b, 1).repeat(b, 2)[: shape[0], : shape[1], : shape[2]]
            np.copyto(out, big, where=big > 0)
        unsure = origins[~inside & ~outside]
        b2 = levels[li + 1]
        offs = np.stack(np.meshgrid(*[np.arange(0, b, b2)] * 3, indexing="ij"), -1).reshape(-1, 3)
        children = (unsure[:, None, :] + offs[None]).reshape(-1, 3)
        origins = children[(children < shape).all(axis=1)]
    return out


def _ellipsoid_mask(e: _Ellipsoid, xs, ys, zs) -> np.ndarray:
    out = np.zeros((len(xs), len(ys), len(zs)), bool)
    half = e.world_half_extent()
    sl = []
    for a, ax in enumerate((xs, ys, zs)):
        i0 = int(np.searchsorted(ax, e.centre[a] - half[a]))
        i1 = int(np.searchsorted(ax, e.centre[a] + half[a], side="right"))
        if i1 <= i0:
            return out
        sl.append(slice(i0, i1))
    m = np.linalg.inv(e.axes * e.semi[None, :])  # world offset -> unit-sphere coordinates
    dx = (xs[sl[0]] - e.centre[0])[:, None, None]
    dy = (ys[sl[1]] - e.centre[1])[None, :, None]
    dz = (zs[sl[2]] - e.centre[2])[None, None, :]
    q = sum((m[k, 0] * dx + m[k, 1] * dy + m[k, 2] * dz) ** 2 for k in range(3))
    out[sl[0], sl[1], sl[2]] = q <= 1.0
    return out


def _spheres_mask(centres: np.ndarray, radii: np.ndarray, xs, ys, zs) -> np.ndarray:
    out = np.zeros((len(xs), len(ys), len(zs)), bool)
    for c, r in zip(centres, radii):
        sl = []
        for a, ax in enumerate((xs, ys, zs)):
            i0 = int(np.searchsorted(ax, c[a] - r))
            i1 = int(np.searchsorted(ax, c[a] + r, side="right"))
            sl.append(slice(i0, i1))
        if any(s.stop <= s.start for s in sl):
            continue
        d2 = ((xs[sl[0]] - c[0]) ** 2)[:, None, None] + ((ys[sl[1]] - c[1]) ** 2)[None, :, None] + (
            (zs[sl[2]] - c[2]) ** 2)[None, None, :]
        out[sl[0], sl[1], sl[2]] |= d2 <= r * r
    return out


def _lin(x: np.ndarray, x0: float, step: float, n: int):
    f = (x - x0) / step
    i = np.clip(np.floor(f).astype(np.int64), 0, n - 2)
    return i, np.clip(f - i, 0.0, 1.0).astype(np.float32)


def _interp(grid: np.ndarray, g0: np.ndarray, gs: float, xs, ys, zs) -> np.ndarray:
    """Trilinear interpolation of ``grid`` (..., nx, ny, nz; origin g0, step gs) on xs x ys x zs."""
    i, w = _lin(xs, g0[0], gs, grid.shape[-3])
    a = grid[..., i, :, :] * (1 - w)[:, None, None] + grid[..., i + 1, :, :] * w[:, None, None]
    j, w = _lin(ys, g0[1], gs, grid.shape[-2])
    a = a[..., :, j, :] * (1 - w)[:, None] + a[..., :, j + 1, :] * w[:, None]
    k, w = _lin(zs, g0[2], gs, grid.shape[-1])
    return a[..., k] * (1 - w) + a[..., k + 1] * w


# =========================================================================== one specimen
def _geometry_ds(voxel_mm: float, scale: float) -> float:
    """Centreline sampling (mm): under half a voxel (the centreline voxels stay 26-connected)."""
    return float(min(_LAYOUT_DS, 0.45 * voxel_mm / scale))


def _mirror(side: str) -> np.ndarray:
    # anatomical x is lateral; in RAS+ a left ear's lateral is -x
    return np.diag([-1.0, 1.0, 1.0]) if side == "left" else np.eye(3)


def _extent(anat: _Anatomy, lin: np.ndarray, scale: float):
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


class _World:
    """Everything of one specimen in scanner coordinates (mm), ready to be rasterised."""


def _setup(index: int, seed: int, settings: PhantomSettings, shape: tuple[int, int, int] | None) -> _World:
    p = draw_specimen_params(index, seed, settings)
    voxel = p["voxel_mm"]
    scale = p["scale"]
    ds = _geometry_ds(voxel, scale)
    anat = _build_anatomy(p, seed, index, ds)
    pose = _rotmat(np.asarray(p["pose_axis"]), p["pose_deg"])
    mirror = _mirror(p["side"])
    margin = 1.0 if shape is None else 0.5  # mm of bone at least around the labyrinth
    fit_scale = 1.0
    base = np.eye(3)
    if shape is None:
        lin = pose @ mirror * scale
        lo, hi = _extent(anat, lin, scale)
        fov = np.maximum(np.asarray(p["fov_mm"]), hi - lo + 2 * margin)
        dims = np.maximum(8, np.round(fov / voxel)).astype(int)
    else:
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
        base = best[1]
        if fit_scale <= 0.2:
            raise ValueError(f"shape {tuple(int(d) for d in dims)} at {voxel * 1000:.1f} um voxels "
                             "is too small for an inner ear")
    scale_total = scale * fit_scale
    lin = base @ pose @ mirror * scale_total
    lo, hi = _extent(anat, lin, scale_total)
    fov = dims * voxel
    slack = np.maximum(fov - (hi - lo) - 2 * margin, 0.0)
    start = lo - margin - np.asarray(p["offset_frac"]) * slack  # world position of the FOV corner
    origin = start + voxel / 2.0  # centre of voxel (0, 0, 0)

    w = _World()
    w.p, w.anat, w.voxel, w.dims, w.origin = p, anat, voxel, dims, origin
    w.scale, w.fit_scale, w.lin = scale_total, fit_scale, lin
    w.axes = [origin[a] + voxel * np.arange(dims[a]) for a in range(3)]
    w.affine = np.eye(4)
    w.affine[:3, :3] = np.diag([voxel] * 3)
    w.affine[:3, 3] = origin
    tubes = [t.transformed(lin, scale_total) for t in anat.tubes]
    w.tubes = tubes
    w.lumen = _TubeSet([t for t in tubes if t.lumen])
    w.vest = anat.vestibule.transformed(lin, scale_total)
    lam = anat.lamina.transformed(lin, scale_total)
    lam.semi[:, 1] = np.maximum(lam.semi[:, 1], 0.5 * voxel)
    w.lamina = _TubeSet([lam])
    w.lamina_weight = float(min(1.0, 0.08 * scale_total / voxel))
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
    w.sk_idx, w.sk_code = sk_idx[order], sk_code[order]
    w.levels = _levels(voxel)
    w.modiolus = (np.asarray(anat.info["modiolus_base"]) @ lin.T)
    w.modiolar_axis = _unit(np.asarray(anat.info["modiolar_axis"]) @ lin.T)
    _place_surroundings(w, index, seed)
    _smooth_fields(w, index, seed)
    return w


def _lab_distance(w: _World, pts: np.ndarray) -> np.ndarray:
    """Distance (mm) from points to the labyrinth lumen (a close lower bound)."""
    pts = np.atleast_2d(pts)
    d, idx = w.lumen.tree.query(pts, k=8)
    tube = np.min(d - w.lumen.rmax[idx], axis=1)
    return np.minimum(tube, w.vest.surface_distance(pts) - 0.05)


def _place_surroundings(w: _World, index: int, seed: int) -> None:
    p = w.p
    rng = np.random.default_rng([int(seed), int(index), 3])
    lo = np.array([a[0] for a in w.axes]) - w.voxel / 2
    hi = np.array([a[-1] for a in w.axes]) + w.voxel / 2
    lab_pts = w.lumen.c
    lab_r = w.lumen.rmax
    # cut face of the specimen block (embedding medium beyond it)
    w.cut = None
    if p["cut_face"]:
        axis = int(rng.integers(0, 3))
        n = np.zeros(3)
        n[axis] = 1.0 if rng.random() < 0.5 else -1.0
        n = _unit(n + rng.normal(0.0, 0.25, 3))
        dmin = float(np.max(lab_pts @ n + lab_r)) + 1.5
        corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
        dmax = float(np.max(corners @ n)) - 0.8
        if dmax > dmin:
            w.cut = (n, float(rng.uniform(dmin, dmax)))

    def in_block(c, margin=0.0):
        return w.cut is None or float(np.dot(w.cut[0], c)) < w.cut[1] - margin

    # internal auditory canal: soft tissue along the modiolar axis, medial to the cochlea
    axis = _unit(-w.modiolar_axis + rng.normal(0.0, 0.08, 3))
    r_iac = p["iac_radius"] * w.scale
    sep = 0.3
    while True:
        start = w.modiolus + axis * sep
        pts = _line(start, start + axis * 30.0, 0.1)
        if np.all(_lab_distance(w, pts) - r_iac >= 0.5) or sep > 8:
            break
        sep += 0.2
    iac = _Tube("iac", 1, pts, np.full((len(pts), 3), r_iac), _perp_frames(_tangents(pts)))
    w.iac = _TubeSet([iac])
    w.iac_info = {"radius_mm": r_iac, "gap_mm": float(np.min(_lab_distance(w, pts) - r_iac))}

    # vessels: thin dark tubes passing close to the labyrinth
    w_gap = max(0.15, 1.5 * w.voxel)
    vessels = []
    for _ in range(p["n_vessels"]):
        for _try in range(40):
            i = int(rng.integers(0, len(lab_pts)))
            c = lab_pts[i]
            rv = rng.uniform(0.15, 0.4) * w.scale
            u = _rand_unit(rng)
            target = c + u * (lab_r[i] + rv + w_gap + rng.uniform(0.05, 0.8))
            v = _unit(np.cross(u, _rand_unit(rng)))
            p0 = target - v * rng.uniform(3.0, 9.0) + rng.normal(0.0, 1.0, 3)
            p2 = target + v * rng.uniform(3.0, 9.0) + rng.normal(0.0, 1.0, 3)
            p1 = 2 * target - 0.5 * (p0 + p2)
            t = np.linspace(0.0, 1.0, 400)[:, None]
            pts = _resample((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2, 0.05)[0]
            if np.min(_lab_distance(w, pts) - rv) < w_gap or not in_block(target):
                continue
            vessels.append(_Tube("vessel", 1, pts, np.full((len(pts), 3), rv), _perp_frames(_tangents(pts))))
            break
    w.vessels = _TubeSet(vessels) if vessels else None
    w.vessel_info = [{"diameter_mm": float(2 * t.semi[0, 0]),
                      "gap_mm": float(np.min(_lab_distance(w, t.pts) - t.semi[0, 0]))} for t in vessels]

    # mastoid air cells: round, dark; a few close to the labyrinth (a couple of voxels of bone
    # between), the others in the trabecular bone
    cells_c, cells_r, near_flags = [], [], []
    n_air = p["n_air_cells"]
    n_near = int(rng.integers(1, min(3, n_air) + 1))

    def free(c, r):
        for c2, r2 in zip(cells_c, cells_r):
            if np.linalg.norm(c - c2) < r + r2 + 0.2:
                return False
        d_iac = np.min(np.linalg.norm(w.iac.c - c, axis=1)) - r_iac - r
        return d_iac > 0.2 and in_block(c, r) and np.all(c > lo - 0.5 * r) and np.all(c < hi + 0.5 * r)

    for k in range(n_air):
        near = k < n_near
        shrink = 1.0
        for _try in range(120):
            if near:
                r = max(0.25, 0.5 * rng.uniform(0.5, 2.5) * shrink) * w.scale
                gap = rng.uniform(2.0, 3.5) * w.voxel + 0.02
                i = int(rng.integers(0, len(lab_pts)))
                c = lab_pts[i] + _rand_unit(rng) * (lab_r[i] + r + gap)
                ok = _lab_distance(w, c)[0] - r >= 0.9 * gap
            else:
                r = max(0.25, 0.5 * math.exp(rng.uniform(math.log(0.5), math.log(5.0))) * shrink) * w.scale
                c = lo + rng.random(3) * (hi - lo)
                ok = _lab_distance(w, c)[0] - r >= 0.8 * p["capsule_mm"] * w.scale
            shrink = max(0.2, shrink * 0.98)  # smaller cells fit more easily
            if ok and free(c, r):
                cells_c.append(c)
                cells_r.append(r)
                near_flags.append(near)
                break
    w.air_c = np.array(cells_c).reshape(-1, 3)
    w.air_r = np.array(cells_r)
    w.air_info = [{"diameter_mm": float(2 * r), "near": bool(n),
                   "gap_mm": float(_lab_distance(w, c)[0] - r)} for c, r, n in zip(cells_c, cells_r, near_flags)]


def _smooth_fields(w: _World, index: int, seed: int) -> None:
    """Coarse fields (distance to the lumen, capsule edge wobble, bias) and the trabecular texture."""
    p = w.p
    rng = np.random.default_rng([int(seed), int(index), 4])
    lo = np.array([a[0] for a in w.axes])
    hi = np.array([a[-1] for a in w.axes])
    cg = _COARSE_MM
    w.cg0 = lo - cg
    n = np.ceil((hi - lo) / cg).astype(int) + 3
    gx, gy, gz = (w.cg0[a] + cg * np.arange(n[a]) for a in range(3))
    # distance to the labyrinth: Euclidean distance transform of its coarse footprint
    foot = _ellipsoid_mask(w.vest, gx, gy, gz)
    ijk = np.rint((w.lumen.c - w.cg0) / cg).astype(np.int64)
    ok = ((ijk >= 0) & (ijk < n)).all(1)
    foot[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]] = True
    dist = np.maximum(ndimage.distance_transform_edt(~foot) * cg - 0.35 * w.scale, 0.0)
    wobble = ndimage.gaussian_filter(rng.standard_normal(tuple(n)), 1.0 / cg, mode="wrap")
    wobble /= max(float(wobble.std()), 1e-9)
    # smooth drift: a random quadratic in normalised coordinates
    xn = [(g - (lo[a] + hi[a]) / 2) / max((hi[a] - lo[a]) / 2, 1e-6) for a, g in enumerate((gx, gy, gz))]
    X, Y, Z = np.meshgrid(*xn, indexing="ij")
    terms = [X, Y, Z, X * X, Y * Y, Z * Z, X * Y, X * Z, Y * Z]
    coef = rng.normal(0.0, 1.0, len(terms))
    poly = sum(c * t for c, t in zip(coef, terms))
    poly -= poly.mean()
    poly /= max(float(np.abs(poly).max()), 1e-9)
    bias = 1.0 + p["bias_amp"] * poly
    # capsule margin (mm, > 0 inside the dense otic capsule; its edge wobbles) and drift
    margin = p["capsule_mm"] * w.scale * (1.0 + 0.25 * wobble) - dist
    w.coarse = np.stack([margin, bias]).astype(np.float32)
    w.cg = cg
    # trabecular texture: smoothed noise, thresholded into bone and pores later
    tg = max(_TEXTURE_MM, w.voxel)
    w.tg = tg
    w.tg0 = lo - tg
    nt = np.ceil((hi - lo) / tg).astype(int) + 3
    tex = rng.standard_normal(tuple(nt), dtype=np.float32)
    tex = ndimage.gaussian_filter(tex, p["pore_mm"] * w.scale / tg, mode="wrap")
    tex /= max(float(tex.std()), 1e-9)
    w.texture = tex


def _render(w: _World, with_tissue: bool, index: int, seed: int):
    p = w.p
    X, Y, Z = (int(d) for d in w.dims)
    image = np.empty((X, Y, Z), np.uint16)
    label = np.empty((X, Y, Z), np.uint8)
    struct = np.empty((X, Y, Z), np.uint8)
    tissue = np.empty((X, Y, Z), np.uint8) if with_tissue else None
    sigma = p["psf_sigma_vox"]
    halo = int(4.0 * sigma + 0.5) + 1
    depth = max(4 * halo, _SLAB_VOXELS // max(Y * Z, 1), 1)
    xs_all, ys, zs = w.axes
    i_cap, i_trab, i_marrow = p["i_capsule"], p["i_trabecular"], p["i_marrow"]
    i_lumen = p["i_lumen"]
    i_air = i_lumen * p["air_factor"]
    i_vessel = i_lumen * p["vessel_factor"]
    noise_sd = p["noise_frac"] * (i_cap - i_lumen)
    for slab, i0 in enumerate(range(0, X, depth)):
        i1 = min(X, i0 + depth)
        a, b = max(0, i0 - halo), min(X, i1 + halo)
        xs = xs_all[a:b]
        code = _raster(w.lumen, xs, ys, zs, w.levels)
        vest = _ellipsoid_mask(w.vest, xs, ys, zs)
        st = np.where(vest, np.int8(VESTIBULE), code)
        sel = slice(np.searchsorted(w.sk_idx[:, 0], a), np.searchsorted(w.sk_idx[:, 0], b))
        sk, skc = w.sk_idx[sel], w.sk_code[sel]
        if len(sk):
            cur = st[sk[:, 0] - a, sk[:, 1], sk[:, 2]]
            st[sk[:, 0] - a, sk[:, 1], sk[:, 2]] = np.where(cur > 0, cur, skc)
        lab = st > 0
        # no bone islands inside the lumen: fill tiny enclosed pockets (voxel-scale slivers
        # where a tube leaves the vestibule obliquely)
        bg, nbg = ndimage.label(~lab)
        if nbg > 1:
            open_ = np.unique(np.concatenate([bg[0].ravel(), bg[-1].ravel(), bg[:, 0].ravel(), bg[:, -1].ravel(),
                                              bg[:, :, 0].ravel(), bg[:, :, -1].ravel()]))
            sizes = np.bincount(bg.ravel())
            pocket = np.zeros(nbg + 1, bool)
            pocket[1:] = sizes[1:] <= 64
            pocket[open_] = False
            if pocket.any():
                fill = pocket[bg]
                st = np.where(fill, ndimage.maximum_filter(st, size=3), st)
                lab = st > 0
        del bg
        near = ndimage.maximum_filter(lab.view(np.uint8), size=3).astype(bool)
        tis = np.zeros(lab.shape, np.uint8)
        if w.cut is not None:
            n, d = w.cut
            tis[(n[0] * xs[:, None, None] + n[1] * ys[None, :, None] + n[2] * zs[None, None, :]) > d] = T_MEDIUM
        tis[_raster(w.iac, xs, ys, zs, w.levels) > 0] = T_NERVE
        if w.vessels is not None:
            tis[_raster(w.vessels, xs, ys, zs, w.levels) > 0] = T_VESSEL
        if len(w.air_r):
            tis[_spheres_mask(w.air_c, w.air_r, xs, ys, zs)] = T_AIR
        tis[near & (tis != T_MEDIUM)] = T_BONE  # nothing dark touches the labyrinth
        tis[lab] = T_LUMEN
        # bone: dense capsule near the lumen, trabecular bone with pores further out
        cap_margin, bias = _interp(w.coarse, w.cg0, w.cg, xs, ys, zs)
        tex = _interp(w.texture, w.tg0, w.tg, xs, ys, zs)
        wcap = np.clip(cap_margin / 0.5 + 0.5, 0.0, 1.0)
        del cap_margin
        trab = i_marrow + (i_trab - i_marrow) * 0.5 * (1.0 + np.tanh((tex - p["pore_threshold"]) / 0.2))
        img = trab * (1.0 - wcap) + (i_cap * (1.0 + 0.015 * tex)) * wcap
        del tex, trab, wcap
        img[tis == T_MEDIUM] = p["i_medium"]
        img[tis == T_NERVE] = p["i_soft"]
        img[tis == T_VESSEL] = i_vessel
        img[tis == T_AIR] = i_air
        img[lab] = i_lumen
        lam = (_raster(w.lamina, xs, ys, zs, w.levels) > 0) & (st == COCHLEA)
        img[lam] += w.lamina_weight * 0.6 * (i_cap - i_lumen)
        img = ndimage.gaussian_filter(img.astype(np.float32, copy=False), sigma, mode="nearest", truncate=4.0)
        c0, c1 = i0 - a, i1 - a
        out = img[c0:c1] * bias[c0:c1]
        noise = np.random.default_rng([int(seed), int(index), 5, slab]).standard_normal(out.shape, dtype=np.float32)
        out += noise * np.float32(noise_sd)
        del noise
        np.clip(out, 0.0, 65535.0, out=out)
        image[i0:i1] = np.rint(out).astype(np.uint16)
        label[i0:i1] = lab[c0:c1]
        struct[i0:i1] = st[c0:c1]
        if tissue is not None:
            tissue[i0:i1] = tis[c0:c1]
    return image, label, struct, tissue


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return round(v, 6) if math.isfinite(v) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def specimen_id(index: int) -> str:
    return f"phantom_{int(index):03d}"


def generate_specimen(index: int, seed: int, settings: PhantomSettings,
                      shape: tuple[int, int, int] | None = None, with_tissue: bool = False) -> Specimen:
    """Generate specimen ``index`` of the set drawn from ``seed``.

    ``shape`` fixes the grid (e.g. ``(618, 892, 600)`` with ``binning=1`` for a paper-sized
    specimen); the labyrinth is then oriented to fit and, if it still does not fit, shrunk
    (``meta["fit_scale"]``). ``with_tissue`` also returns the map of what each voxel was drawn
    as (see ``TISSUES``).
    """
    t0 = time.perf_counter()
    w = _setup(index, seed, settings, shape)
    image, label, struct, tissue = _render(w, with_tissue, index, seed)
    p = w.p
    meta: dict[str, Any] = {
        "generator": GENERATOR,
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "index": int(index),
        "side": p["side"],
        "protocol_um": p["protocol_um"],
        "binning": p["binning"],
        "voxel_mm": w.voxel,
        "shape": [int(s) for s in w.dims],
        "fov_mm": [float(d * w.voxel) for d in w.dims],
        "scale": p["scale"],
        "fit_scale": w.fit_scale,
        "turns": p["turns"],
        "pose_deg": p["pose_deg"],
        "pose_axis": p["pose_axis"],
        "anatomy_to_world": w.lin,
        "modiolus_base_world": w.modiolus,
        "modiolar_axis_world": w.modiolar_axis,
        "vestibule_centre_world": w.vest.centre,
        "anatomy": w.anat.info,
        "n_air_cells": int(len(w.air_r)),
        "air_cells": w.air_info,
        "n_vessels": len(w.vessel_info),
        "vessels": w.vessel_info,
        "internal_auditory_canal": w.iac_info,
        "cut_face": w.cut is not None,
        "imaging": {k: p[k] for k in ("psf_sigma_vox", "noise_frac", "bias_amp", "i_capsule", "i_trabecular",
                                      "i_marrow", "i_lumen", "i_soft", "i_medium")},
        "label_voxels": int(np.count_nonzero(label)),
    }
    if label.size <= 64_000_000:
        _, ncomp = ndimage.label(label, structure=np.ones((3, 3, 3), bool))
        meta["label_components"] = int(ncomp)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    spacing = (w.voxel, w.voxel, w.voxel)
    return Specimen(specimen_id(index), image, label, struct, w.affine.copy(), spacing, _jsonable(meta), tissue)


# =========================================================================== measuring helpers
def voxel_centres(index: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of voxel indices (n, 3)."""
    a = np.asarray(affine, float)
    return np.asarray(index, float) @ a[:3, :3].T + a[:3, 3]


def cochlear_path(structures: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The cochlear duct's centreline from the voxels alone, base to apex (world mm, (n, 3)).

    The cochlear voxels (``structures == 1``, largest component) are ordered by their
    geodesic distance inside the cochlea from where they meet the vestibule; the path is the
    centroids of thin distance bins.
    """
    from skimage.graph import MCP_Geometric

    structures = np.asarray(structures)
    coch = structures == COCHLEA
    if not coch.any():
        return np.zeros((0, 3))
    lab, n = ndimage.label(coch, structure=np.ones((3, 3, 3), bool))
    if n > 1:
        coch = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    box = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in np.nonzero(coch))
    c = coch[box]
    vest = structures[box] == VESTIBULE
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    starts = c & ndimage.binary_dilation(vest, structure=np.ones((3, 3, 3), bool))
    if not starts.any():  # no vestibule next to it: start from its surface
        starts = c & ~ndimage.binary_erosion(c)
    mcp = MCP_Geometric(np.where(c, 1.0, np.inf), sampling=tuple(float(s) for s in spacing))
    dist, _ = mcp.find_costs([tuple(int(v) for v in s) for s in np.argwhere(starts)])
    idx = np.argwhere(c & np.isfinite(dist))
    d = dist[tuple(idx.T)]
    world = voxel_centres(idx + np.array([s.start for s in box]), affine)
    step = max(1.5 * float(spacing.max()), 0.15)
    bins = np.floor(d / step).astype(int)
    counts = np.bincount(bins)
    keep = counts > 0
    return np.stack([np.bincount(bins, weights=world[:, k])[keep] / counts[keep] for k in range(3)], 1)


def _spiral_axis(path: np.ndarray) -> np.ndarray:
    """Mean binormal of a path: the axis it winds around (right-handed winding)."""
    tang = np.diff(path, axis=0)
    return _unit(np.sum(np.cross(tang[:-1], tang[1:]), axis=0))


def count_cochlear_turns(structures: np.ndarray, affine: np.ndarray) -> float:
    """Number of turns of the cochlea, measured from the voxels alone.

    Along :func:`cochlear_path` (base to apex), the modiolar axis is the path's mean binormal
    and the spiral's pole the mean of its last (apical) turn; the turns are the angle the
    path sweeps around the pole, / 360 degrees.
    """
    path = cochlear_path(structures, affine)
    if len(path) < 6:
        return 0.0
    axis = _spiral_axis(path)
    e1 = _unit(np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0]))
    e2 = np.cross(axis, e1)
    xy = np.stack([path @ e1, path @ e2], axis=1)
    # the last full turn of the path (by tangent rotation) gives the pole
    t2 = np.diff(xy, axis=0)
    turn = np.arctan2(t2[:-1, 0] * t2[1:, 1] - t2[:-1, 1] * t2[1:, 0], np.sum(t2[:-1] * t2[1:], axis=1))
    back = np.abs(np.cumsum(turn[::-1]))
    m = len(xy) - 2 - int(np.searchsorted(back, 2 * math.pi)) if back[-1] >= 2 * math.pi else 0
    seg = np.linalg.norm(t2[m:], axis=1)
    mid = 0.5 * (xy[m:-1] + xy[m + 1:])
    pole = (mid * seg[:, None]).sum(0) / max(seg.sum(), 1e-12)
    ang = np.unwrap(np.arctan2(xy[:, 1] - pole[1], xy[:, 0] - pole[0]))
    return float(abs(ang[-1] - ang[0]) / (2 * math.pi))


def cochlear_handedness(structures: np.ndarray, affine: np.ndarray) -> int:
    """+1 if the cochlea winds right-handed from base to apex (in world coordinates), else -1.
    Left and right ears wind oppositely."""
    path = cochlear_path(structures, affine)
    if len(path) < 6:
        return 0
    return 1 if float(np.dot(_spiral_axis(path), path[-1] - path[0])) > 0 else -1


def topology(mask: np.ndarray) -> dict[str, int]:
    """Components (26-connected), cavities and tunnels (handles) of a binary mask.

    Uses the 3D Euler characteristic chi = components - tunnels + cavities (26-connectivity
    for the object, 6 for the background).
    """
    from skimage.measure import euler_number

    m = np.pad(np.asarray(mask, bool), 1)
    _, comps = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    _, bg = ndimage.label(~m)  # 6-connected background
    cavities = bg - 1
    chi = int(euler_number(m, connectivity=3))
    return {"components": int(comps), "cavities": int(cavities), "tunnels": int(comps + cavities - chi),
            "euler": chi}


def canal_tunnels(structures: np.ndarray) -> int:
    """Tunnels of vestibule + canals: one per canal loop closed through the vestibule (3)."""
    s = np.asarray(structures)
    return topology((s == VESTIBULE) | (s == CANALS))["tunnels"]


# =========================================================================== writing
def _nifti_header(shape, dtype, affine) -> bytes:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(tuple(int(s) for s in shape))
    hdr.set_data_dtype(np.dtype(dtype))
    hdr.set_zooms(tuple(float(z) for z in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))
    hdr.set_xyzt_units("mm")
    hdr.set_qform(np.asarray(affine, float), code=1)
    hdr.set_sform(np.asarray(affine, float), code=1)
    hdr["descrip"] = b"innerear synthetic phantom"
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock
    assert len(raw) == 348
    return raw + b"\x00\x00\x00\x00"  # no extensions


def write_nifti_gz(path: Path, array: np.ndarray, affine: np.ndarray, compresslevel: int = 1) -> Path:
    """Write a NIfTI-1 .nii.gz reproducibly (no gzip timestamp or name) and atomically, streaming
    the data plane by plane (no full copy in memory)."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as gz:
                gz.write(_nifti_header(array.shape, array.dtype, affine))
                plane = max(1, array.shape[0] * array.shape[1])
                step = max(1, 8_000_000 // plane)
                for k in range(0, array.shape[2], step):
                    gz.write(np.ascontiguousarray(array[:, :, k:k + step].transpose(2, 1, 0)).tobytes())
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def specimen_files(sid: str) -> dict[str, str]:
    return {k: f"{sid}_{k}.nii.gz" for k in ("image", "label", "structures")}


def write_specimen(spec: Specimen, out_dir: Path) -> dict:
    """Write ``{id}_image/_label/_structures.nii.gz``; return the manifest entry."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = specimen_files(spec.specimen_id)
    write_nifti_gz(out_dir / files["image"], spec.image, spec.affine)
    write_nifti_gz(out_dir / files["label"], spec.label, spec.affine)
    write_nifti_gz(out_dir / files["structures"], spec.structures, spec.affine)
    meta = {k: v for k, v in spec.meta.items() if k != "seconds"}  # keep manifests reproducible
    return _jsonable({
        "id": spec.specimen_id,
        **files,
        "shape": list(spec.image.shape),
        "spacing": list(spec.spacing),
        "affine": spec.affine,
        "meta": meta,
    })


def _set_key(settings: PhantomSettings, seed: int, n: int) -> dict:
    return json.loads(json.dumps(_jsonable({
        "generator": GENERATOR,
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "n": int(n),
        "settings": asdict(settings),
    })))


_PARTIAL = ".phantoms-partial.json"


def write_phantom_set(out_dir: Path, settings: PhantomSettings, seed: int, n: int | None = None,
                      progress: bool = False) -> dict:
    """Write ``n`` specimens (default ``settings.n_specimens``) and ``manifest.json`` to ``out_dir``.

    A folder that already holds this very set (same generator version, settings, seed and
    n) is left as it is (missing files are rewritten). A folder holding anything else raises
    :class:`FileExistsError`. An interrupted run resumes where it stopped.
    """
    n = int(settings.n_specimens if n is None else n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _set_key(settings, seed, n)
    manifest_path = out_dir / "manifest.json"
    partial_path = out_dir / _PARTIAL
    done: dict[str, dict] = {}
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise FileExistsError(f"{manifest_path}: unreadable manifest ({exc}); not overwriting {out_dir}") from exc
        if {k: old.get(k) for k in key} != key:
            theirs = {k: old.get(k) for k in ("generator", "version", "seed", "n")}
            raise FileExistsError(
                f"{out_dir} already holds a different data set ({theirs}, settings {old.get('settings')}); "
                f"asked for seed={seed}, n={n}, settings {key['settings']}. Use another folder or delete it.")
        if all((out_dir / e[f]).exists() for e in old.get("specimens", []) for f in ("image", "label", "structures")):
            return old
        done = {e["id"]: e for e in old.get("specimens", [])}
    elif partial_path.exists():
        try:
            part = json.loads(partial_path.read_text())
        except (OSError, ValueError):
            part = {}
        if {k: part.get(k) for k in key} != key:
            raise FileExistsError(f"{out_dir} holds an unfinished different phantom set ({partial_path}); "
                                  "use another folder or delete it")
        done = {e["id"]: e for e in part.get("specimens", [])}
    else:
        others = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
        if others:
            raise FileExistsError(f"{out_dir} is not empty and holds no phantom manifest "
                                  f"({', '.join(others[:5])}{'...' if len(others) > 5 else ''}); "
                                  "use another folder or delete it")
    entries = []
    t_all = time.perf_counter()
    for i in range(n):
        sid = specimen_id(i)
        entry = done.get(sid)
        files_ok = entry is not None and all((out_dir / entry[f]).exists() for f in ("image", "label", "structures"))
        if not files_ok:
            t0 = time.perf_counter()
            spec = generate_specimen(i, seed, settings)
            entry = write_specimen(spec, out_dir)
            del spec
            if progress:
                print(f"[phantoms] {i + 1}/{n} {sid} {tuple(entry['shape'])} {entry['meta']['side']} "
                      f"{entry['meta']['protocol_um']} um ({time.perf_counter() - t0:.1f} s)",
                      file=sys.stderr, flush=True)
        entries.append(entry)
        _write_json(partial_path, {**key, "specimens": entries})
    manifest = {
        **key,
        "synthetic": True,
        "structures": {str(k): v for k, v in STRUCTURES.items()},
        "description": "synthetic micro-CT phantoms of the human inner ear (innerear.phantom)",
        "specimens": entries,
    }
    _write_json(manifest_path, manifest)
    if partial_path.exists():
        partial_path.unlink()
    if progress:
        print(f"[phantoms] {n} specimens in {out_dir} ({time.perf_counter() - t_all:.1f} s)",
              file=sys.stderr, flush=True)
    return json.loads(manifest_path.read_text())
