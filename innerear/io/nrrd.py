"""NRRD (pynrrd): reading with the ``space`` frame turned into RAS, writing gzip-encoded LPS."""
from __future__ import annotations

import os
from pathlib import Path

import nrrd  # pynrrd (a top-level package: this module is innerear.io.nrrd)
import numpy as np

from innerear.io.common import LPS, VolumeError


def _space_to_ras(space: str) -> np.ndarray:
    """Sign flips from an NRRD ``space`` (``left-posterior-superior``, ``RAS``, ...) to RAS."""
    space = space.lower()
    words = {"lps": "left-posterior-superior", "ras": "right-anterior-superior", "las": "left-anterior-superior"}
    parts = words.get(space, space).split("-")
    if len(parts) != 3:  # scanner-xyz, 3D-right-handed: no anatomical frame; keep as stored
        return np.eye(4)
    flips = [-1.0 if p in ("left", "posterior", "inferior") else 1.0 for p in parts]
    return np.diag([*flips, 1.0])


def read_nrrd_file(path: Path) -> tuple[np.ndarray, dict]:
    """``(array, header)`` of an NRRD file (pynrrd), or :class:`VolumeError` naming the file."""
    try:
        return nrrd.read(str(path))
    except Exception as exc:
        raise VolumeError(path, f"cannot be read as NRRD ({type(exc).__name__}: {exc})") from exc


def nrrd_affine(directions: np.ndarray, header: dict) -> np.ndarray:
    """RAS affine from an NRRD header's three spatial ``space directions`` rows, origin and space."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, float).T
    affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    return _space_to_ras(str(header.get("space", "left-posterior-superior"))) @ affine


def read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    array, header = read_nrrd_file(path)
    directions = header.get("space directions")
    if directions is None:
        raise VolumeError(path, "NRRD header has no 'space directions' (voxel size unknown)")
    directions = np.asarray([d for d in directions if d is not None and np.all(np.isfinite(np.asarray(d, float)))],
                            dtype=float)
    if directions.shape != (3, 3):
        raise VolumeError(path, f"NRRD 'space directions' has shape {directions.shape}, expected 3x3")
    return array, nrrd_affine(directions, header)


def write_nrrd(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a gzip-encoded NRRD in LPS space (not atomically: callers go through :func:`~innerear.io.files.atomic_path`)."""
    lps = LPS @ np.asarray(affine, float)
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3],
              "encoding": "gzip"}
    nrrd.write(str(path), np.asarray(array), header, index_order="F")
