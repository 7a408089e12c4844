"""Rasterising the phantom's shapes on voxel grids: tube sets (hierarchically, by blocks),
ellipsoids, spheres, and trilinear interpolation of coarse fields."""
from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy.spatial import cKDTree

from innerear.data.phantom.geometry import Ellipsoid, Tube, orthonormal


class TubeSet:
    """Union of the ellipsoids of many tube samples, with fast inside tests on voxel grids."""

    def __init__(self, tubes: Iterable[Tube]):
        tubes = [t for t in tubes if len(t.pts)]
        self.c = np.concatenate([t.pts for t in tubes])
        self.f = orthonormal(np.concatenate([t.frames for t in tubes]))
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
        """Whether each point is inside the union, and the code of the tube it is in."""
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


def block_levels(voxel_mm: float) -> list[int]:
    """Block sizes (voxels, largest first, down to 1) for :func:`raster` at this voxel size."""
    b = 1
    while b * 2 * voxel_mm <= 0.8 and b < 64:
        b *= 2
    out = []
    while b >= 1:
        out.append(b)
        b //= 2
    return out


def raster(ts: TubeSet, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, levels: list[int]) -> np.ndarray:
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


def ellipsoid_mask(e: Ellipsoid, xs, ys, zs) -> np.ndarray:
    """Voxels of the grid xs x ys x zs whose centre is inside ``e``."""
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


def spheres_mask(centres: np.ndarray, radii: np.ndarray, xs, ys, zs) -> np.ndarray:
    """Voxels of the grid xs x ys x zs whose centre is inside one of the spheres."""
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


def coarse_nodes(lo: np.ndarray, hi: np.ndarray, step: float) -> np.ndarray:
    """Nodes per axis of a coarse grid of spacing ``step`` that starts one node below ``lo`` and
    covers ``hi`` for :func:`interp`: ``ceil((hi - lo) / step) + 3``, the ratio rounded to 9 decimals
    first. An extent of exactly k steps (a grid's own spacing) computes to k plus or minus one unit in
    the last place depending on the CPU's vector instructions (AVX2 and AVX-512 gave different
    results); rounded, it counts as k on every machine, so a seed draws the same field everywhere."""
    ratio = np.round((np.asarray(hi, float) - np.asarray(lo, float)) / float(step), 9)
    return np.ceil(ratio).astype(int) + 3


def interp(grid: np.ndarray, g0: np.ndarray, gs: float, xs, ys, zs) -> np.ndarray:
    """Trilinear interpolation of ``grid`` (..., nx, ny, nz; origin g0, step gs) on xs x ys x zs."""
    i, w = _lin(xs, g0[0], gs, grid.shape[-3])
    a = grid[..., i, :, :] * (1 - w)[:, None, None] + grid[..., i + 1, :, :] * w[:, None, None]
    j, w = _lin(ys, g0[1], gs, grid.shape[-2])
    a = a[..., :, j, :] * (1 - w)[:, None] + a[..., :, j + 1, :] * w[:, None]
    k, w = _lin(zs, g0[2], gs, grid.shape[-1])
    return a[..., k] * (1 - w) + a[..., k + 1] * w
