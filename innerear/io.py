"""Reading and writing volumes with their geometry.

Every reader returns ``(array, spacing_mm, affine)``: the voxel array as stored, the voxel
size in millimetres along each array axis, and the 4x4 voxel-to-world affine (RAS+, mm, as
in NIfTI). Problems with a file raise :class:`VolumeError`, whose message names the file.
Writers go through a temporary file in the destination folder and an atomic rename, so an
interrupted write never leaves a half-written volume behind.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")


class VolumeError(ValueError):
    """A volume file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def volume_format(path: str | os.PathLike) -> str:
    """Return ``"nifti"`` or ``"nrrd"`` from a file name, or raise :class:`VolumeError`."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    raise VolumeError(path, "unknown volume format (expected .nii, .nii.gz, .nrrd or .nhdr)")


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis: the norms of the affine's columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def _check_array(path: Path, array: np.ndarray, allow_nan: bool) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise VolumeError(path, f"expected a 3D volume, found {array.ndim}D with shape {array.shape}")
    if min(array.shape) < 2:
        raise VolumeError(path, f"expected a 3D volume, found a single slice of shape {array.shape}")
    if not allow_nan and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise VolumeError(path, f"contains {bad} NaN or infinite voxel(s)")
    return array


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise VolumeError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    return array, np.asarray(img.affine, dtype=float)


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nrrd

    try:
        array, header = nrrd.read(str(path))
    except Exception as exc:
        raise VolumeError(path, f"cannot be read as NRRD ({type(exc).__name__}: {exc})") from exc
    directions = header.get("space directions")
    if directions is None:
        raise VolumeError(path, "NRRD header has no 'space directions' (voxel size unknown)")
    directions = np.asarray([d for d in directions if d is not None], dtype=float)
    if directions.shape != (3, 3):
        raise VolumeError(path, f"NRRD 'space directions' has shape {directions.shape}, expected 3x3")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = origin
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("left-posterior-superior", "lps"):
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    return array, affine


def read_volume(path: str | os.PathLike, *, allow_nan: bool = False) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read a 3D volume: ``(array, spacing_mm, affine)``.

    Raises :class:`VolumeError` (naming the file) for a missing, unreadable or corrupt file,
    a 2D or 4D image, and NaN/infinite voxels (unless ``allow_nan``).
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "file not found")
    fmt = volume_format(path)
    array, affine = _read_nifti(path) if fmt == "nifti" else _read_nrrd(path)
    array = _check_array(path, np.asarray(array), allow_nan)
    spacing = spacing_from_affine(affine)
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise VolumeError(path, f"invalid voxel size {spacing} in the header")
    return array, spacing, affine


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    With ``overwrite=False`` an existing ``path`` raises :class:`FileExistsError` first.
    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: output folder does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (refusing to overwrite)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def nifti_bytes(array: np.ndarray, affine: np.ndarray, compress: bool = True) -> bytes:
    """Serialise a NIfTI-1 image to bytes, gzip'd reproducibly (no timestamp) if asked."""
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write a volume atomically as NIfTI or NRRD, chosen by the file name."""
    path = Path(path)
    fmt = volume_format(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if fmt == "nifti":
            tmp.write_bytes(nifti_bytes(array, affine, compress=path.name.lower().endswith(".gz")))
        else:
            import nrrd

            lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
            header = {
                "space": "left-posterior-superior",
                "space directions": lps[:3, :3].T,
                "space origin": lps[:3, 3],
                "encoding": "gzip",
            }
            nrrd.write(str(tmp), np.asarray(array), header, index_order="F")
    return path


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write JSON atomically (sorted keys, indented) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays to a compressed ``.npz`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path
