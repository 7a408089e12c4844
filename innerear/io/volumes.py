"""Reading and writing volumes with their geometry.

:func:`read_volume` and :func:`write_volume` choose the format module (:mod:`~innerear.io.nifti`,
:mod:`~innerear.io.nrrd`, :mod:`~innerear.io.itk`, :mod:`~innerear.io.tiff`) by the path.
Every reader returns ``(array, spacing_mm, affine)``: the voxel array as stored, the voxel
size in millimetres along each array axis, and the 4x4 voxel-to-world affine (RAS+, mm, as
in NIfTI). Problems with a file raise :class:`VolumeError`, whose message names the file.
Writers go through a temporary file in the destination folder and an atomic rename, so an
interrupted write never leaves a half-written volume behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from innerear.io.common import SPACING_FIELDS, WRITABLE, VolumeError, check_array, spacing_from_affine, volume_format
from innerear.io.files import atomic_path
from innerear.io.itk import read_dicom, read_metaimage, write_metaimage
from innerear.io.nifti import read_nifti, write_nifti
from innerear.io.nrrd import read_nrrd, write_nrrd
from innerear.io.tiff import read_tiff


def spacing_source(path: str | os.PathLike, given: bool) -> str:
    """Where :func:`read_volume` took a file's voxel size from, for messages."""
    return "option --spacing" if given else SPACING_FIELDS[volume_format(path)]


def _with_spacing(path: Path, affine: np.ndarray | None, spacing: Sequence[float]) -> np.ndarray:
    try:
        spacing = np.asarray([float(s) for s in spacing], float)
    except (TypeError, ValueError):
        raise VolumeError(path, f"invalid spacing {spacing!r}: expected three numbers (mm)") from None
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise VolumeError(path, f"invalid spacing {tuple(spacing.tolist())}: expected three positive numbers (mm)")
    if affine is None:
        return np.diag([*spacing, 1.0])
    affine = np.array(affine, float)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    norms[norms == 0] = 1.0
    affine[:3, :3] = affine[:3, :3] / norms * spacing
    return affine


def read_volume(
    path: str | os.PathLike,
    *,
    allow_nan: bool = False,
    spacing: Sequence[float] | None = None,
    mmap: bool = False,
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read a 3D volume: ``(array, spacing_mm, affine)``.

    Reads NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
    ``.mhd``), a multipage TIFF, and folders holding a DICOM series or a stack of 2D TIFF
    slices. The affine is RAS+ in mm whatever the file's convention (NRRD, MetaImage and
    DICOM store LPS and are converted). TIFF stacks carry no orientation: array axes are
    (column, row, slice) and the affine is ``diag(spacing)``; their voxel size comes from
    ImageJ metadata when present, else from ``spacing``.

    ``spacing`` (mm, along the array's three axes) replaces the voxel size of any format,
    keeping the directions and origin; it is required for TIFF stacks that do not record it.

    ``mmap=True`` maps an uncompressed NIfTI file read-only instead of reading it (the
    array is a ``np.memmap`` view where the file stores it unscaled), so that
    :func:`innerear.data.resample.resample_image_bounded` reads it slab by slab; other formats
    and compressed files are read into memory as usual.

    Raises :class:`VolumeError` (naming the file) for a missing, unreadable or corrupt file,
    an unknown format, a 2D or 4D image, a missing or invalid voxel size, and NaN/infinite
    voxels (unless ``allow_nan``).
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "file not found")
    fmt = volume_format(path)
    if fmt == "nifti":
        array, affine = read_nifti(path, mmap=mmap)
    elif fmt == "nrrd":
        array, affine = read_nrrd(path)
    elif fmt == "metaimage":
        array, affine = read_metaimage(path)
    elif fmt == "dicom":
        array, affine = read_dicom(path)
    else:
        array, affine = read_tiff(path)
    array = check_array(path, np.asanyarray(array) if mmap else np.asarray(array), allow_nan)
    if spacing is not None:
        affine = _with_spacing(path, affine, spacing)
    elif affine is None:
        raise VolumeError(path, "the TIFF stack does not record its voxel size; give it in mm "
                                "(innerear segment --spacing SX SY SZ)")
    spacing_mm = spacing_from_affine(affine)
    if not all(np.isfinite(s) and s > 0 for s in spacing_mm) or abs(np.linalg.det(affine[:3, :3])) < 1e-30:
        raise VolumeError(path, f"invalid voxel size {spacing_mm} in the header")
    return array, spacing_mm, affine


def check_writable(path: str | os.PathLike) -> str:
    """The format :func:`write_volume` would write ``path`` in; :class:`VolumeError` if none."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".mhd"):
        raise VolumeError(path, "cannot write a detached MetaImage (.mhd); use .mha, .nii.gz or .nrrd")
    if name.endswith(".nhdr"):
        raise VolumeError(path, "cannot write a detached NRRD (.nhdr); use .nrrd, .nii.gz or .mha")
    try:
        fmt = volume_format(path) if not path.is_dir() else "folder"
    except VolumeError:
        fmt = "unknown"
    if fmt not in WRITABLE:
        raise VolumeError(path, "cannot write this format; name the output .nii.gz, .nii, .nrrd or .mha")
    return fmt


def write_volume_to(tmp: str | os.PathLike, array: np.ndarray, affine: np.ndarray, like: str | os.PathLike) -> None:
    """Write a volume to ``tmp`` (not atomically) in the format ``like``'s name asks for.

    The building block of :func:`write_volume`, for callers that commit several files together.
    """
    fmt = check_writable(like)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    affine = np.asarray(affine, dtype=float)
    if fmt == "nifti":
        write_nifti(tmp, array, affine, compress=str(like).lower().endswith(".gz"))
    elif fmt == "nrrd":
        write_nrrd(tmp, array, affine)
    else:
        write_metaimage(tmp, array, affine)


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write a volume atomically as NIfTI, NRRD or MetaImage (``.mha``), chosen by the file name."""
    path = Path(path)
    check_writable(path)
    with atomic_path(path, overwrite=overwrite, suffix=temp_suffix(path)) as tmp:
        write_volume_to(tmp, array, affine, like=path)
    return path


def temp_suffix(path: str | os.PathLike) -> str:
    """The temporary-file suffix :func:`write_volume_to` needs for ``path``'s format."""
    return ".tmp.mha" if volume_format(path) == "metaimage" else ".tmp"
