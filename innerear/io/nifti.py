"""NIfTI-1: reading (nibabel, optionally memory-mapped) and the one writer, which streams the
array plane by plane and gzips reproducibly (no timestamp or name in the gzip header)."""
from __future__ import annotations

import contextlib
import gzip
import logging
import os
from pathlib import Path

import nibabel as nib
from nibabel.openers import ImageOpener
import numpy as np

from innerear.io.common import VolumeError
from innerear.io.files import atomic_path

_HEADER_BYTES = 352  # 348-byte header and 4 bytes saying "no extensions"
_STREAM_BYTES = 8_000_000  # bytes of voxels written at a time


def read_nifti(path: Path, mmap: bool = False, spacing_given: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of a NIfTI file, or :class:`VolumeError` naming it.

    A voxel size of zero (or not a number) in ``pixdim`` where no sform gives the geometry is
    refused (nibabel would read it as 1 mm), unless ``spacing_given``: the caller replaces the
    voxel size (``--spacing``)."""
    try:
        with _quiet_nibabel():
            img = nib.load(str(path), mmap="r" if mmap else True)
        if not spacing_given:
            _check_pixdim(path, img.header)
        array = np.asanyarray(img.dataobj)
    except VolumeError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise VolumeError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    return array, np.asarray(img.affine, dtype=float)


@contextlib.contextmanager
def _quiet_nibabel():
    """nibabel logs the header fields it repairs (a zero pixdim) to stderr: the reader decides instead."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_pixdim(path: Path, header) -> None:
    """Refuse a zero or non-finite ``pixdim[1..3]`` as stored in the file (before nibabel's repair)
    when the sform does not give the voxel-to-world affine (the qform and the fallback use ``pixdim``)."""
    with ImageOpener(str(path)) as fh:
        raw = type(header).from_fileobj(fh, check=False)
    if int(raw["sform_code"]) > 0:
        return
    ndim = max(1, min(3, int(raw["dim"][0])))
    pixdim = [float(v) for v in raw["pixdim"][1:4]]
    bad = [i + 1 for i in range(ndim) if not np.isfinite(pixdim[i]) or pixdim[i] == 0]
    if bad:
        shown = ", ".join(f"{v:g}" for v in pixdim[:ndim])
        which = ", ".join(f"pixdim[{i}] = {pixdim[i - 1]:g}" for i in bad)
        verb = "is" if len(bad) == 1 else "are"
        raise VolumeError(path, f"invalid voxel size in the NIfTI header field pixdim ({shown}) mm: {which} {verb} "
                                f"not a voxel size, and no sform gives the geometry; fix the header or give the "
                                f"voxel size with --spacing SX SY SZ (mm)")


def nifti_header(shape, dtype, affine: np.ndarray, description: str = "") -> bytes:
    """The 352 bytes before a NIfTI-1 file's voxels: header (qform = sform = ``affine``, mm) and no extensions."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(tuple(int(s) for s in shape))
    hdr.set_data_dtype(np.dtype(dtype))
    spatial = [float(z) for z in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]
    hdr.set_zooms(tuple(spatial[:len(shape)]) + (1.0,) * max(0, len(shape) - 3))
    hdr.set_xyzt_units("mm")
    hdr.set_qform(np.asarray(affine, float), code=1)
    hdr.set_sform(np.asarray(affine, float), code=1)
    hdr["descrip"] = description.encode()[:79]
    hdr["vox_offset"] = _HEADER_BYTES
    return hdr.binaryblock + b"\x00\x00\x00\x00"


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, compress: bool = True,
                compresslevel: int = 6, description: str = "") -> None:
    """Write ``array`` as NIfTI-1 to ``path`` (not atomically), streaming it in slabs of planes
    (no full copy in memory); gzip'd reproducibly when ``compress``."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    with open(path, "wb") as raw:
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) \
            if compress else raw
        out.write(nifti_header(array.shape, array.dtype, affine, description))
        if array.ndim == 3:
            step = max(1, _STREAM_BYTES // max(1, array[:, :, :1].nbytes))
            for k in range(0, array.shape[2], step):  # NIfTI stores x fastest: planes of z, transposed
                out.write(np.ascontiguousarray(array[:, :, k:k + step].transpose(2, 1, 0)).tobytes())
        else:  # 2D or 4D (refused by the readers, written as given)
            out.write(np.asarray(array).tobytes(order="F"))
        if compress:
            out.close()
        raw.flush()
        os.fsync(raw.fileno())


def write_nifti_gz(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, compresslevel: int = 1,
                   description: str = "") -> Path:
    """Write a reproducible ``.nii.gz`` atomically (the phantoms' writer: fast compression)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write_nifti(tmp, array, affine, compresslevel=compresslevel, description=description)
    return path
