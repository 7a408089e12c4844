"""Measuring the anatomy from the voxels alone: cochlear path, turns and handedness,
topology (components, cavities, tunnels) and the canals' tunnels; and the cochlea's true
size from the generator's own spiral (:func:`cochlea_truth`)."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..cochlea import geodesic_distance, measure_cochlea, shell_centreline
from .anatomy import Anatomy
from .geometry import arc_length, unit
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
    dist = geodesic_distance(c, spacing, np.argwhere(starts))
    idx = np.argwhere(c & np.isfinite(dist))
    world = voxel_centres(idx + np.array([s.start for s in box]), affine)
    return shell_centreline(world, dist[tuple(idx.T)], max(1.5 * float(spacing.max()), 0.15))[0]


def count_cochlear_turns(structures: np.ndarray, affine: np.ndarray) -> float:
    """Number of turns of the cochlea (``structures == 1``), measured from the voxels alone by
    :func:`innerear.cochlea.measure_cochlea` (0 where there is no cochlea)."""
    coch = np.asarray(structures) == COCHLEA
    return measure_cochlea(coch, affine).turns if coch.any() else 0.0


def cochlear_handedness(structures: np.ndarray, affine: np.ndarray) -> int:
    """+1 if the cochlea winds right-handed from base to apex (in world coordinates), else -1
    (0 where there is no cochlea). Left and right ears wind oppositely."""
    coch = np.asarray(structures) == COCHLEA
    return measure_cochlea(coch, affine).handedness if coch.any() else 0


def cochlea_truth(anatomy: Anatomy, scale: float) -> dict[str, float]:
    """The cochlear duct's true size from the generator's own spiral (world mm: anatomical
    mm x ``scale``), with the convention of :func:`innerear.cochlea.measure_cochlea`.

    The duct runs from where its centreline leaves the vestibule (the centre of its basal
    opening; the cochlear label starts there) to the centreline's apical end (the centre of
    the rounded tip). Its lateral wall is the tube's outer edge, the centreline moved by half
    the scala's width away from the modiolar axis. Turns: the angle the centreline sweeps
    about the modiolar axis between the two ends / 360 degrees.
    """
    tube = next(t for t in anatomy.tubes if t.name == "cochlea")
    q = anatomy.vestibule.q(tube.pts)
    i0 = max(1, int(np.argmax(q > 1.0)))
    f = float(np.clip((1.0 - q[i0 - 1]) / max(q[i0] - q[i0 - 1], 1e-12), 0.0, 1.0))

    def from_opening(x: np.ndarray) -> np.ndarray:
        return np.concatenate([(x[i0 - 1] + f * (x[i0] - x[i0 - 1]))[None], x[i0:]])

    centre = from_opening(tube.pts)
    lateral = from_opening(tube.pts + tube.frames[:, 0] * tube.semi[:, :1])
    axis = unit(np.asarray(anatomy.info["modiolar_axis"], float))
    e1 = unit(np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0]))
    rel = centre - np.asarray(anatomy.info["modiolus_base"], float)
    ang = np.unwrap(np.arctan2(rel @ np.cross(axis, e1), rel @ e1))
    return {"turns": float(abs(ang[-1] - ang[0]) / (2 * math.pi)),
            "lateral_wall_length_mm": float(arc_length(lateral)[-1] * scale),
            "centreline_length_mm": float(arc_length(centre)[-1] * scale)}


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
