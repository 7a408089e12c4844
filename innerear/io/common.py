"""What every volume format shares: :class:`VolumeError` (it names the file), the formats' suffixes,
telling a path's format, voxel sizes from an affine and their plausibility check."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")


NRRD_SUFFIXES = (".nrrd", ".nhdr")


METAIMAGE_SUFFIXES = (".mha", ".mhd")


TIFF_SUFFIXES = (".tif", ".tiff")


DICOM_SUFFIXES = (".dcm",)


#: formats :func:`write_volume` can write (MetaImage as single-file ``.mha`` only)
WRITABLE = ("nifti", "nrrd", "metaimage")


LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS (its own inverse)


#: voxel sizes (mm) a scan may have: 1 µm (synchrotron / nano-CT) to 2 mm (coarse clinical CT)
VOXEL_MM_RANGE = (0.001, 2.0)


#: where each format records its voxel size, for messages that name the header field
SPACING_FIELDS = {
    "nifti": "NIfTI header field pixdim (and the sform/qform affine)",
    "nrrd": "NRRD header field 'space directions'",
    "metaimage": "MetaImage header field ElementSpacing",
    "dicom": "DICOM PixelSpacing (0028,0030) and the slices' ImagePositionPatient (0020,0032)",
    "tiff": "TIFF XResolution/YResolution tags and ImageJ 'spacing'",
}


MM_PER_UNIT = {"mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "um": 1e-3, "µm": 1e-3,
                "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3, "micrometre": 1e-3, "nm": 1e-6,
                "cm": 10.0, "m": 1000.0}


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace (exception texts span lines) and cap the length."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class VolumeError(ValueError):
    """A volume file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = one_line(problem, 1000)
        super().__init__(f"{self.path}: {self.problem}")


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis: the norms of the affine's columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def check_voxel_size(path: str | os.PathLike, spacing_mm: Sequence[float], source: str) -> None:
    """Refuse voxel sizes outside :data:`VOXEL_MM_RANGE`; ``source`` names where they came from
    (a header field of :data:`SPACING_FIELDS`, or ``--spacing``)."""
    lo, hi = VOXEL_MM_RANGE
    sizes = [float(s) for s in spacing_mm]
    if not all(lo <= s <= hi for s in sizes):
        shown = ", ".join(f"{s:.6g}" for s in sizes)
        hint = ("give it in mm" if source.endswith("--spacing") else
                "fix the header or give the voxel size with --spacing SX SY SZ (mm)")
        raise VolumeError(path, f"voxel size ({shown}) mm from the {source} is outside {lo * 1000:g} µm – {hi:g} mm "
                                f"(micro-CT to clinical CT); {hint}")


def check_array(path: Path, array: np.ndarray, allow_nan: bool) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise VolumeError(path, f"expected a 3D volume, found {array.ndim}D with shape {array.shape}")
    if min(array.shape) < 2:
        raise VolumeError(path, f"expected a 3D volume, found a single slice of shape {array.shape}")
    if not allow_nan and np.issubdtype(array.dtype, np.floating):
        bad = sum(int(np.size(p) - np.count_nonzero(np.isfinite(p))) for p in array)  # plane by plane
        if bad:
            raise VolumeError(path, f"contains {bad} NaN or infinite voxel(s)")
    return array


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_contents(path: Path) -> tuple[list[Path], list[Path]]:
    files = [f for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith(".")]
    tiffs = [f for f in files if f.name.lower().endswith(TIFF_SUFFIXES)]
    dicoms = [f for f in files if f not in tiffs and _is_dicom_file(f)]
    return tiffs, dicoms


def volume_format(path: str | os.PathLike) -> str:
    """The format of a volume path: ``"nifti"``, ``"nrrd"``, ``"metaimage"``, ``"tiff"`` or ``"dicom"``.

    Files are told apart by their name; a folder is a DICOM series (files ending ``.dcm`` or
    with the ``DICM`` preamble) or a TIFF stack (one 2D TIFF per slice, or one multipage
    TIFF). Raises :class:`VolumeError` otherwise.
    """
    path = Path(path)
    if path.is_dir():
        tiffs, dicoms = folder_contents(path)
        if tiffs and dicoms:
            raise VolumeError(path, f"folder holds both TIFF ({len(tiffs)}) and DICOM ({len(dicoms)}) files; keep one stack per folder")
        if dicoms:
            return "dicom"
        if tiffs:
            return "tiff"
        raise VolumeError(path, "folder holds neither a DICOM series nor TIFF slices")
    name = path.name.lower()
    for fmt, suffixes in (("nifti", NIFTI_SUFFIXES), ("nrrd", NRRD_SUFFIXES), ("metaimage", METAIMAGE_SUFFIXES),
                          ("tiff", TIFF_SUFFIXES), ("dicom", DICOM_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    raise VolumeError(path, "unknown volume format (expected .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, "
                            ".tif/.tiff, or a folder holding a DICOM series or TIFF slices)")
