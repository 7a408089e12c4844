"""MetaImage and DICOM series through SimpleITK (imported on first use, warnings turned into
one-line errors), with the checks a DICOM series needs (evenly spaced slices)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from innerear.io.common import LPS, VolumeError


def sitk_module():
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
    sitk = sitk_module()

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
    return array, LPS @ affine


def read_metaimage(path: Path) -> tuple[np.ndarray, np.ndarray]:
    sitk = sitk_module()

    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("MetaImageIO")
        reader.SetFileName(str(path))
        with keep_locale():
            img = reader.Execute()
    except Exception as exc:
        raise VolumeError(path, f"cannot be read as MetaImage ({_sitk_problem(exc)})") from exc
    return _sitk_to_array(path, img)


def read_dicom(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series: a folder holding one series, or one of its files."""
    sitk = sitk_module()

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


def write_metaimage(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a compressed single-file MetaImage (``.mha``; not atomically)."""
    sitk = sitk_module()
    lps = LPS @ np.asarray(affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(np.asarray(array), (2, 1, 0))), isVector=False)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("MetaImageIO")
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    with keep_locale():
        writer.Execute(img)
