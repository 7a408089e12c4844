"""Measuring the anatomy from the voxels alone: cochlear path, turns and handedness,
topology (components, cavities, tunnels) and the canals' tunnels."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .geometry import unit
from .specimen import CANALS, COCHLEA, VESTIBULE


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
    return unit(np.sum(np.cross(tang[:-1], tang[1:]), axis=0))


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
    e1 = unit(np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0]))
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
