"""Geometric primitives of the phantom: vector helpers, tubes and ellipsoids (mm)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` normalised along its last axis."""
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def rotmat(axis: np.ndarray, deg: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``deg`` degrees (Rodrigues)."""
    a = unit(axis)
    t = math.radians(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def rand_unit(rng: np.random.Generator) -> np.ndarray:
    """A random unit vector (three standard normal draws)."""
    return unit(rng.standard_normal(3))


def jitter(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation by up to ``max_deg`` degrees (draws even when ``max_deg`` is 0)."""
    return rotmat(rand_unit(rng), rng.uniform(0.0, max_deg))


def plane_angle(n1: np.ndarray, n2: np.ndarray) -> float:
    """Angle (degrees, 0-90) between two planes given by their normals."""
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(unit(n1), unit(n2)))))))


def resample(points: np.ndarray, ds: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at arc-length step ``ds``; returns (points, arc length of each)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / ds)) + 1)
    snew = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(snew, s, points[:, i]) for i in range(3)], axis=1)
    return out, snew


def arc_length(points: np.ndarray) -> np.ndarray:
    """Arc length at each point of a polyline (0 at the first)."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def tangents(points: np.ndarray) -> np.ndarray:
    """Unit tangents of a polyline (central differences)."""
    return unit(np.gradient(points, axis=0))


def perp_frames(t: np.ndarray) -> np.ndarray:
    """Orthonormal frames (rows e1, e2, t) for circular sections."""
    ref = np.where(np.abs(t[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    e1 = unit(np.cross(t, ref))
    e2 = np.cross(t, e1)
    return np.stack([e1, e2, t], axis=1)


def orthonormal(frames: np.ndarray) -> np.ndarray:
    """Re-orthonormalise frames (rows e1, e2, t), keeping t and, where it is usable, e1."""
    t = unit(frames[:, 2])
    e1 = frames[:, 0] - np.sum(frames[:, 0] * t, axis=1, keepdims=True) * t
    bad = np.linalg.norm(e1, axis=1) < 1e-6
    if bad.any():
        e1[bad] = perp_frames(t[bad])[:, 0]
    e1 = unit(e1)
    return np.stack([e1, np.cross(t, e1), t], axis=1)


def line(p0: np.ndarray, p1: np.ndarray, ds: float) -> np.ndarray:
    """Points from ``p0`` to ``p1`` (both included) at most ``ds`` apart."""
    n = max(2, int(math.ceil(np.linalg.norm(p1 - p0) / ds)) + 1)
    return p0[None] + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0)[None]


@dataclass
class Tube:
    """A tube: centreline samples with an ellipsoid (semi-axes along e1, e2, t) at each."""

    name: str
    code: int
    pts: np.ndarray  # (n, 3)
    semi: np.ndarray  # (n, 3)
    frames: np.ndarray  # (n, 3, 3) rows e1, e2, t
    lumen: bool = True  # False: a skeleton-only connector (keeps the label connected)

    def transformed(self, lin: np.ndarray, scale: float) -> Tube:
        """The tube mapped by ``lin`` (rotation x mirror x ``scale``)."""
        rot = lin / scale  # orthogonal (rotation x mirror)
        return Tube(self.name, self.code, self.pts @ lin.T, self.semi * scale,
                    self.frames @ rot.T, self.lumen)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid: centre, unit axes (columns) and semi-axes along them."""

    centre: np.ndarray
    axes: np.ndarray  # columns: unit axes
    semi: np.ndarray

    def q(self, pts: np.ndarray) -> np.ndarray:
        """Quadratic form: < 1 inside, 1 on the surface."""
        loc = (pts - self.centre) @ self.axes / self.semi
        return np.sum(loc * loc, axis=-1)

    def transformed(self, lin: np.ndarray, scale: float) -> Ellipsoid:
        """The ellipsoid mapped by ``lin`` (rotation x mirror x ``scale``)."""
        rot = lin / scale
        return Ellipsoid(self.centre @ lin.T, rot @ self.axes, self.semi * scale)

    def surface_distance(self, pts: np.ndarray) -> np.ndarray:
        """Approximate signed distance to the surface (negative inside)."""
        q = np.maximum(self.q(pts), 1e-12)
        r = np.linalg.norm(pts - self.centre, axis=-1)
        return r * (1.0 - 1.0 / np.sqrt(q))

    def world_half_extent(self) -> np.ndarray:
        """Half size of the axis-aligned bounding box."""
        return np.sqrt(((self.axes * self.semi[None, :]) ** 2).sum(axis=1))
