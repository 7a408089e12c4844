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
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
METAIMAGE_SUFFIXES = (".mha", ".mhd")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm",)
#: formats :func:`write_volume` can write (MetaImage as single-file ``.mha`` only)
WRITABLE = ("nifti", "nrrd", "metaimage")
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS (its own inverse)
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
_MM_PER_UNIT = {"mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "um": 1e-3, "µm": 1e-3,
                "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3, "micrometre": 1e-3, "nm": 1e-6,
                "cm": 10.0, "m": 1000.0}


def _one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace (exception texts span lines) and cap the length."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class VolumeError(ValueError):
    """A volume file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = _one_line(problem, 1000)
        super().__init__(f"{self.path}: {self.problem}")


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _folder_contents(path: Path) -> tuple[list[Path], list[Path]]:
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
        tiffs, dicoms = _folder_contents(path)
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


def spacing_source(path: str | os.PathLike, given: bool) -> str:
    """Where :func:`read_volume` took a file's voxel size from, for messages."""
    return "option --spacing" if given else SPACING_FIELDS[volume_format(path)]


def _check_array(path: Path, array: np.ndarray, allow_nan: bool) -> np.ndarray:
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


def _read_nifti(path: Path, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path), mmap="r" if mmap else True)
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise VolumeError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    return array, np.asarray(img.affine, dtype=float)


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
    import nrrd

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


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    array, header = read_nrrd_file(path)
    directions = header.get("space directions")
    if directions is None:
        raise VolumeError(path, "NRRD header has no 'space directions' (voxel size unknown)")
    directions = np.asarray([d for d in directions if d is not None and np.all(np.isfinite(np.asarray(d, float)))],
                            dtype=float)
    if directions.shape != (3, 3):
        raise VolumeError(path, f"NRRD 'space directions' has shape {directions.shape}, expected 3x3")
    return array, nrrd_affine(directions, header)


def _sitk():
    """SimpleITK, imported on first use, with ITK's multi-line warnings on stderr turned off
    (problems surface as one-line :class:`VolumeError` messages instead)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


@contextmanager
def keep_locale() -> Iterator[None]:
    """Restore the C locale after native code that changes it (ITK's GDCM writer sets
    ``LC_CTYPE`` to ``C``, which would turn Python's default text encoding into ASCII)."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != saved:
            locale.setlocale(locale.LC_ALL, saved)


def _sitk_problem(exc: Exception) -> str:
    """The useful part of a SimpleITK exception text (which spans lines and names C++ files)."""
    text = " ".join(str(exc).split())
    if "ERROR:" in text:
        text = text.split("ERROR:", 1)[1].strip()
    return text


def _sitk_to_array(path: Path, img) -> tuple[np.ndarray, np.ndarray]:
    """A SimpleITK image as an (x, y, z) array and its RAS affine."""
    sitk = _sitk()

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(path, f"has {img.GetNumberOfComponentsPerPixel()} components per voxel (expected a scalar volume)")
    dim = img.GetDimension()
    array = sitk.GetArrayFromImage(img)  # (z, y, x)
    array = np.transpose(array, tuple(range(array.ndim))[::-1])  # -> (x, y, z)
    affine = np.eye(4)
    if dim >= 3:
        direction = np.asarray(img.GetDirection(), float).reshape(dim, dim)[:3, :3]
        affine[:3, :3] = direction @ np.diag(np.asarray(img.GetSpacing(), float)[:3])
        affine[:3, 3] = np.asarray(img.GetOrigin(), float)[:3]
    return array, _LPS @ affine


def _read_metaimage(path: Path) -> tuple[np.ndarray, np.ndarray]:
    sitk = _sitk()

    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("MetaImageIO")
        reader.SetFileName(str(path))
        with keep_locale():
            img = reader.Execute()
    except Exception as exc:
        raise VolumeError(path, f"cannot be read as MetaImage ({_sitk_problem(exc)})") from exc
    return _sitk_to_array(path, img)


def _read_dicom(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series: a folder holding one series, or one of its files."""
    sitk = _sitk()

    folder = path if path.is_dir() else path.parent
    try:
        with keep_locale():
            reader = sitk.ImageSeriesReader()
            series = list(reader.GetGDCMSeriesIDs(str(folder)))
            if not series:
                raise VolumeError(path, "no readable DICOM series found")
            if path.is_dir():
                if len(series) > 1:
                    raise VolumeError(path, f"folder holds {len(series)} DICOM series; put each series in its own folder")
                files = list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
            else:
                files = next((f for f in (list(reader.GetGDCMSeriesFileNames(str(folder), s)) for s in series)
                              if any(Path(x).resolve() == path.resolve() for x in f)), [str(path)])
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            img = reader.Execute()
            tags = [{t: reader.GetMetaData(k, t) for t in ("0020|0032", "0020|0037") if reader.HasMetaDataKey(k, t)}
                    for k in range(len(files))]
    except VolumeError:
        raise
    except Exception as exc:
        raise VolumeError(path, f"cannot be read as a DICOM series ({_sitk_problem(exc)})") from exc
    check_slice_positions(path, tags)
    return _sitk_to_array(path, img)


def _dicom_numbers(text: str) -> np.ndarray:
    """A DICOM multi-valued decimal string (``1\\0\\0 ``, space or NUL padded) as numbers."""
    return np.asarray([float(v.strip(" \x00")) for v in text.split("\\") if v.strip(" \x00")], float)


def check_slice_positions(path: Path, tags: Sequence[dict], rel_tol: float = 0.05) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced (missing or duplicated slices).

    ``tags`` holds each slice's ImagePositionPatient (``0020|0032``) and ImageOrientationPatient
    (``0020|0037``); positions are projected on the slices' normal. A series without
    positions (e.g. one file) is not checked.
    """
    if len(tags) < 3 or not all("0020|0032" in t and "0020|0037" in t for t in tags):
        return
    try:
        orient = _dicom_numbers(tags[0]["0020|0037"])
        normal = np.cross(orient[:3], orient[3:6])
        pos = np.sort([float(_dicom_numbers(t["0020|0032"])[:3] @ normal) for t in tags])
    except (ValueError, IndexError):
        raise VolumeError(path, "DICOM ImagePositionPatient/ImageOrientationPatient (0020,0032/0037) unreadable") from None
    steps = np.diff(pos)
    step = float(np.median(steps))
    if step <= 0:
        raise VolumeError(path, f"DICOM series has {int(np.sum(steps <= 0)) + 1} slices at the same position "
                                f"{pos[int(np.argmin(steps))]:.4g} mm (ImagePositionPatient); duplicated slices?")
    bad = np.flatnonzero(np.abs(steps - step) > rel_tol * step)
    if bad.size:
        k = int(bad[np.argmax(np.abs(steps[bad] - step))])
        missing = int(round(steps[k] / step)) - 1
        raise VolumeError(path, f"DICOM slice positions (ImagePositionPatient along the slice normal) are not evenly "
                                f"spaced: a gap of {steps[k]:.4g} mm between {pos[k]:.4g} and {pos[k + 1]:.4g} mm where "
                                f"the others are {step:.4g} mm apart ({len(bad)} irregular step(s); about "
                                f"{max(missing, 0)} slice(s) missing here); the series is incomplete")


def _natural_key(path: Path) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def _tiff_spacing(tf) -> tuple[float, float, float] | None:
    """Voxel size (mm) recorded in a TIFF's ImageJ metadata (x, y from the resolution tags,
    z from ``spacing``); ``None`` when any of it is missing."""
    meta = tf.imagej_metadata or {}
    unit = str(meta.get("unit", "")).strip().lower().replace("\\u00b5", "µ")
    scale = _MM_PER_UNIT.get(unit)
    if scale is None or "spacing" not in meta:
        return None
    try:
        xres, yres = tf.pages[0].get_resolution()
        spacing = (scale / float(xres), scale / float(yres), scale * float(meta["spacing"]))
    except Exception:
        return None
    return spacing if all(np.isfinite(s) and s > 0 for s in spacing) else None


def _read_tiff_file(path: Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """One TIFF file: its pages as a (pages, rows, cols) or (rows, cols) array, and its spacing."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            series = tf.series[0]
            array = series.asarray()
            axes = series.axes
            spacing = _tiff_spacing(tf)
    except Exception as exc:
        raise VolumeError(path, f"cannot be read as TIFF ({type(exc).__name__}: {exc})") from exc
    if "S" in axes or "C" in axes:
        raise VolumeError(path, f"has colour channels (TIFF axes {axes}, shape {array.shape}); expected grey values")
    return array, spacing


def _tiff_affine(spacing: tuple[float, float, float] | None) -> np.ndarray | None:
    return None if spacing is None else np.diag([*spacing, 1.0])


def _read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A multipage TIFF, or a folder of 2D TIFF slices (in natural name order).

    TIFF stacks carry no orientation: array axis 0 is the image column (x), axis 1 the row
    (y), axis 2 the slice; the affine is diagonal with the voxel size, or ``None`` when the
    files do not record it.
    """
    if path.is_file():
        array, spacing = _read_tiff_file(path)
        if array.ndim == 3:
            array = np.transpose(array, (2, 1, 0))
        return array, _tiff_affine(spacing)
    files = sorted(_folder_contents(path)[0], key=_natural_key)
    if len(files) == 1:  # a folder holding one multipage TIFF
        return _read_tiff(files[0])
    slices = []
    spacing = None
    for k, f in enumerate(files):
        arr, sp = _read_tiff_file(f)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise VolumeError(f, f"expected one 2D slice per file in a TIFF folder, found shape {arr.shape}")
        if k == 0:
            spacing = sp
        elif arr.shape != slices[0].shape or arr.dtype != slices[0].dtype:
            raise VolumeError(f, f"slice {arr.shape} {arr.dtype} differs from {files[0].name}'s "
                                 f"{slices[0].shape} {slices[0].dtype}")
        slices.append(arr)
    array = np.stack(slices, axis=-1)  # (rows, cols, slices)
    return np.ascontiguousarray(np.transpose(array, (1, 0, 2))), _tiff_affine(spacing)


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
        array, affine = _read_nifti(path, mmap=mmap)
    elif fmt == "nrrd":
        array, affine = _read_nrrd(path)
    elif fmt == "metaimage":
        array, affine = _read_metaimage(path)
    elif fmt == "dicom":
        array, affine = _read_dicom(path)
    else:
        array, affine = _read_tiff(path)
    array = _check_array(path, np.asanyarray(array) if mmap else np.asarray(array), allow_nan)
    if spacing is not None:
        affine = _with_spacing(path, affine, spacing)
    elif affine is None:
        raise VolumeError(path, "the TIFF stack does not record its voxel size; give it in mm "
                                "(innerear segment --spacing SX SY SZ)")
    spacing_mm = spacing_from_affine(affine)
    if not all(np.isfinite(s) and s > 0 for s in spacing_mm) or abs(np.linalg.det(affine[:3, :3])) < 1e-30:
        raise VolumeError(path, f"invalid voxel size {spacing_mm} in the header")
    return array, spacing_mm, affine


def current_umask() -> int:
    """The process's file-creation mask (read from ``/proc`` where possible, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it elsewhere
    os.umask(mask)
    return mask


def _publish_mode(path: Path, is_dir: bool) -> int:
    """The mode a new file (0o666) or folder (0o777) gets under the umask, or ``path``'s own
    mode when it already exists (overwriting keeps a file's permissions)."""
    if path.exists() and path.is_dir() == is_dir:
        return path.stat().st_mode & 0o7777
    return (0o777 if is_dir else 0o666) & ~current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True, suffix: str = ".tmp",
                folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The one atomic-write helper of the package: every file (or, with ``folder``, every
    folder) innerear writes goes through it. With ``overwrite=False`` an existing ``path``
    raises :class:`FileExistsError` first. On any exception (including an interrupt, and
    SIGTERM under the command line) the temporary file is removed and ``path`` is left
    untouched. The result has the permissions a plain ``open()`` would give it under the
    umask (temporary files are created private), or the replaced file's own.
    ``suffix`` ends the temporary name (writers that pick a format by extension need it).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: output folder does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (refusing to overwrite)")
    if folder:
        tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(_publish_mode(path, folder))
        if folder and path.is_dir():
            shutil.rmtree(path)
        elif folder and path.exists():
            path.unlink()
        os.replace(tmp_path, path)
    finally:
        if tmp_path.is_dir() and not tmp_path.is_symlink():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def temp_suffix(path: str | os.PathLike) -> str:
    """The temporary-file suffix :func:`write_volume_to` needs for ``path``'s format."""
    return ".tmp.mha" if volume_format(path) == "metaimage" else ".tmp"


def nifti_bytes(array: np.ndarray, affine: np.ndarray, compress: bool = True) -> bytes:
    """Serialise a NIfTI-1 image to bytes, gzip'd reproducibly (no timestamp) if asked."""
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


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
    tmp = Path(tmp)
    if fmt == "nifti":
        tmp.write_bytes(nifti_bytes(array, affine, compress=str(like).lower().endswith(".gz")))
    elif fmt == "nrrd":
        import nrrd

        lps = _LPS @ affine
        header = {
            "space": "left-posterior-superior",
            "space directions": lps[:3, :3].T,
            "space origin": lps[:3, 3],
            "encoding": "gzip",
        }
        nrrd.write(str(tmp), array, header, index_order="F")
    else:
        sitk = _sitk()

        lps = _LPS @ affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))), isVector=False)
        img.SetSpacing([float(s) for s in spacing])
        img.SetOrigin([float(v) for v in lps[:3, 3]])
        img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("MetaImageIO")
        writer.SetFileName(str(tmp))
        writer.SetUseCompression(True)
        with keep_locale():
            writer.Execute(img)


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write a volume atomically as NIfTI, NRRD or MetaImage (``.mha``), chosen by the file name."""
    path = Path(path)
    check_writable(path)
    with atomic_path(path, overwrite=overwrite, suffix=temp_suffix(path)) as tmp:
        write_volume_to(tmp, array, affine, like=path)
    return path


def write_tiff_stack(path: str | os.PathLike, array: np.ndarray, spacing: Sequence[float] | None = None,
                     *, overwrite: bool = True) -> Path:
    """Write an (x, y, z) volume as a TIFF stack, the inverse of :func:`read_volume`'s TIFF reader.

    A name ending ``.tif``/``.tiff`` gives one multipage TIFF; any other name a folder of 2D
    slices ``slice_0000.tif``, ... (one per index of axis 2). With ``spacing`` (mm) the files
    record it as ImageJ metadata; without, readers need it given. Atomic: a folder is
    written under a temporary name and renamed.
    """
    import tifffile

    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    kwargs: dict = {}
    if spacing is not None:
        sx, sy, sz = (float(s) for s in spacing)
        kwargs = dict(imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata={"spacing": sz, "unit": "mm"})
    if path.name.lower().endswith(TIFF_SUFFIXES):
        with atomic_path(path, overwrite=overwrite) as tmp:
            data = np.ascontiguousarray(np.transpose(array, (2, 1, 0)))
            tifffile.imwrite(str(tmp), data, **(dict(kwargs, metadata=dict(kwargs["metadata"], axes="ZYX")) if kwargs else {}))
        return path
    with atomic_path(path, overwrite=overwrite, folder=True) as tmp_dir:
        for k in range(array.shape[2]):
            tifffile.imwrite(str(tmp_dir / f"slice_{k:04d}.tif"), np.ascontiguousarray(array[:, :, k].T), **kwargs)
    return path


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write JSON atomically (sorted keys, indented) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")
    return path


def jsonable(value: object) -> object:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars numbers), for comparing."""
    return json.loads(json.dumps(value, default=json_default))


def json_default(obj: object) -> object:
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
