"""Surfaces of binary masks: marching cubes and binary STL files (no plotting library).

The command line (``innerear segment --mesh``) writes surfaces through this module only, so
it never imports matplotlib; :mod:`innerear.reporting.figures` re-exports these functions for the notebooks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from innerear.io.files import atomic_path


def surface_mesh(mask: np.ndarray, spacing: Sequence[float], affine: np.ndarray | None = None,
                 smooth_sigma: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface of a binary mask: ``(vertices, faces)``, vertices in mm.

    With ``affine`` the vertices are in world coordinates (mm), otherwise in the grid's own
    frame scaled by ``spacing``. A light Gaussian smoothing removes voxel staircases.
    """
    from skimage import measure

    m = np.pad(np.asarray(mask, np.float32), 1)
    if smooth_sigma > 0:
        m = ndimage.gaussian_filter(m, smooth_sigma)
    if m.max() < 0.5:
        return np.zeros((0, 3)), np.zeros((0, 3), int)
    verts, faces, _, _ = measure.marching_cubes(m, 0.5)
    verts -= 1.0  # undo the padding: vertices in voxel-index coordinates
    if affine is not None:
        verts = (np.c_[verts, np.ones(len(verts))] @ np.asarray(affine).T)[:, :3]
    else:
        verts = verts * np.asarray(spacing, float)
    return verts, faces


def vertex_distances(verts: np.ndarray, reference_verts: np.ndarray) -> np.ndarray:
    """Distance (mm) from each vertex to the nearest vertex of a reference surface."""
    from scipy.spatial import cKDTree

    if len(verts) == 0 or len(reference_verts) == 0:
        return np.full(len(verts), np.inf)
    return cKDTree(reference_verts).query(verts)[0]


def write_stl(path, verts: np.ndarray, faces: np.ndarray, name: str = "innerear") -> None:
    """Write a binary STL file atomically (vertices in mm)."""

    tri = np.asarray(verts, np.float32)[np.asarray(faces)]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    records = np.zeros(len(tri), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    records["n"] = normals
    records["v"] = tri
    header = name.encode("ascii", "replace")[:80].ljust(80, b" ")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(np.uint32(len(tri)).tobytes())
            fh.write(records.tobytes())


def read_stl(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary STL written by :func:`write_stl`: ``(triangles (n, 3, 3), normals)``."""
    with open(path, "rb") as fh:
        fh.read(80)
        n = int(np.frombuffer(fh.read(4), "<u4")[0])
        records = np.frombuffer(fh.read(), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")], count=n)
    return records["v"].copy(), records["n"].copy()
