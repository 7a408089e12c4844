"""Anatomy measured from a structure label map alone: the cochlear duct's path, its turns and
handedness, and topology (components, cavities, tunnels) including the canals' three loops."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from innerear.metrics.cochlea import geodesic_distance, measure_cochlea, shell_centreline
from innerear.metrics.components import largest_component, topology
from innerear.settings.structures import CANALS, COCHLEA, VESTIBULE


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
    coch = largest_component(coch).view(bool)
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
    :func:`innerear.metrics.cochlea.measure_cochlea` (0 where there is no cochlea)."""
    coch = np.asarray(structures) == COCHLEA
    return measure_cochlea(coch, affine).turns if coch.any() else 0.0


def cochlear_handedness(structures: np.ndarray, affine: np.ndarray) -> int:
    """+1 if the cochlea winds right-handed from base to apex (in world coordinates), else -1
    (0 where there is no cochlea). Left and right ears wind oppositely."""
    coch = np.asarray(structures) == COCHLEA
    return measure_cochlea(coch, affine).handedness if coch.any() else 0




def canal_tunnels(structures: np.ndarray) -> int:
    """Tunnels of vestibule + canals: one per canal loop closed through the vestibule (3)."""
    s = np.asarray(structures)
    return topology((s == VESTIBULE) | (s == CANALS))["tunnels"]
