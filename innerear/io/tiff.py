"""TIFF stacks: a folder of 2D slices or one multipage file, voxel size from the resolution tags
or ImageJ's spacing; and writing a stack (one slice per file)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from innerear.io.common import MM_PER_UNIT, TIFF_SUFFIXES, VolumeError, folder_contents
from innerear.io.files import atomic_path


def _natural_key(path: Path) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def _tiff_spacing(tf) -> tuple[float, float, float] | None:
    """Voxel size (mm) recorded in a TIFF's ImageJ metadata (x, y from the resolution tags,
    z from ``spacing``); ``None`` when any of it is missing."""
    meta = tf.imagej_metadata or {}
    unit = str(meta.get("unit", "")).strip().lower().replace("\\u00b5", "µ")
    scale = MM_PER_UNIT.get(unit)
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


def read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
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
    files = sorted(folder_contents(path)[0], key=_natural_key)
    if len(files) == 1:  # a folder holding one multipage TIFF
        return read_tiff(files[0])
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
