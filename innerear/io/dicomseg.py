"""DICOM Segmentation objects (highdicom) of a structure label map on a DICOM CT series' own grid.

:func:`write_dicom_seg` writes a BINARY Segmentation IOD: one segment per structure (its name,
colour and codes from :mod:`innerear.settings.terminology`, algorithm type AUTOMATIC with the model's
name and version), whose frames reference the source series' instances (Source Image Sequence)
and carry their positions. The label map must lie on the series' grid, as
:func:`innerear.io.read_volume` returns it (array axes column, row, slice): each source instance's
ImagePositionPatient and ImageOrientationPatient are checked against the label map's affine, and
a series that does not match is refused naming the file. highdicom and pydicom are imported on
first use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from innerear.io.common import LPS, VolumeError, folder_contents
from innerear.io.files import atomic_path
from innerear.settings.structures import TABLE, Structure
from innerear.settings.terminology import ANATOMICAL_STRUCTURE, INNER_EAR, STRUCTURE_TYPES, Code

#: a segment for a model without structures: the whole inner ear
INNER_EAR_STRUCTURE = Structure(1, "inner_ear", "Inner ear", "#e6b400")
GEOMETRY_TOLERANCE = 0.01  # voxels (positions) and direction cosines


@dataclass(frozen=True)
class Algorithm:
    """What made the segmentation: the algorithm's name and version, and the writing software's version."""

    name: str
    version: str
    software_version: str


def read_source_series(path: str | os.PathLike) -> list:
    """The datasets (no pixel data) of the DICOM series ``path`` names: a folder holding one series, or one of
    its files (then the files of that series in its folder). :class:`VolumeError` names the problem."""
    import pydicom

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    datasets = []
    for file in folder_contents(folder)[1]:
        try:
            datasets.append(pydicom.dcmread(file, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises many types for damaged files
            raise VolumeError(file, f"cannot be read as DICOM ({type(exc).__name__}: {exc})") from exc
    wanted = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets}
    if not path.is_dir():
        wanted = {str(getattr(next(d for d in datasets if Path(d.filename) == path), "SeriesInstanceUID", ""))}
    elif len(wanted) > 1:
        raise VolumeError(path, f"folder holds {len(wanted)} DICOM series; put each series in its own folder")
    datasets = [ds for ds in datasets if str(getattr(ds, "SeriesInstanceUID", "")) in wanted]
    if not datasets:
        raise VolumeError(path, "no DICOM files found")
    multi = [ds for ds in datasets if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise VolumeError(multi[0].filename, "multi-frame source images are not supported for a DICOM SEG; "
                                             "give a series of single-frame images")
    return datasets


def slice_index(ds, affine: np.ndarray, shape: Sequence[int]) -> int:
    """The label map's slice (third array axis) at ``ds``'s position; :class:`VolumeError` if ``ds`` is not a
    slice of the label map's grid (position, orientation, rows and columns)."""
    name = getattr(ds, "filename", None) or "DICOM instance"
    try:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], float)
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], float)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, ValueError, TypeError):
        raise VolumeError(name, "no ImagePositionPatient, ImageOrientationPatient, Rows or Columns") from None
    if (cols, rows) != (int(shape[0]), int(shape[1])):
        raise VolumeError(name, f"is {cols}x{rows} (columns x rows), the label map's slices are "
                                f"{shape[0]}x{shape[1]}")
    lps = LPS @ np.asarray(affine, float)
    axes = lps[:3, :2] / np.linalg.norm(lps[:3, :2], axis=0)
    if not np.allclose(orientation, np.concatenate([axes[:, 0], axes[:, 1]]), atol=GEOMETRY_TOLERANCE):
        raise VolumeError(name, "ImageOrientationPatient differs from the label map's row and column directions")
    ijk = np.linalg.solve(lps[:3, :3], position - lps[:3, 3])
    k = int(round(ijk[2]))
    if np.any(np.abs(ijk[:2]) > GEOMETRY_TOLERANCE) or abs(ijk[2] - k) > GEOMETRY_TOLERANCE \
            or not 0 <= k < int(shape[2]):
        raise VolumeError(name, f"ImagePositionPatient {position.round(4).tolist()} is not on a slice of the "
                                f"label map's grid")
    return k


def _coded(code: Code):
    import highdicom as hd

    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def segment_description(number: int, structure: Structure, algorithm: Algorithm):
    """The highdicom description of one segment."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    red, green, blue = (int(structure.colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=structure.title,
        segmented_property_category=_coded(ANATOMICAL_STRUCTURE),
        segmented_property_type=_coded(STRUCTURE_TYPES.get(structure.name, INNER_EAR)),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name[:64], family=codes.cid7162.ArtificialIntelligence, version=algorithm.version[:64]),
        anatomic_regions=[_coded(INNER_EAR)], tracking_id=structure.name,
        tracking_uid=hd.UID(), display_color=hd.color.CIELabColor.from_rgb(red, green, blue))


def seg_dataset(source: list, labels: np.ndarray, affine: np.ndarray, algorithm: Algorithm,
                structures: Sequence[Structure] = TABLE):
    """The Segmentation dataset of ``labels`` (values: the structures' ``value``, 0 background) on the
    grid of the ``source`` datasets."""
    labels = np.asarray(labels)
    order = sorted(source, key=lambda ds: slice_index(ds, affine, labels.shape))
    numbers = {s.value: n for n, s in enumerate(structures, start=1)}  # segment numbers are 1, 2, ...
    lookup = np.zeros(max(256, int(labels.max()) + 1), np.uint8)
    for value, number in numbers.items():
        lookup[value] = number
    frames = np.stack([lookup[labels[:, :, slice_index(ds, affine, labels.shape)]].T for ds in order])
    try:
        return _segmentation(order, frames, algorithm, structures)
    except ValueError as exc:  # highdicom's checks of the source images (a required attribute missing, ...)
        raise VolumeError(Path(order[0].filename).parent, f"cannot make a DICOM SEG for this series ({exc})") from None


def _segmentation(order: list, frames: np.ndarray, algorithm: Algorithm, structures: Sequence[Structure]):
    import highdicom as hd

    return hd.seg.Segmentation(
        source_images=order, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(n, s, algorithm) for n, s in enumerate(structures, start=1)],
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="innerear", manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.software_version, device_serial_number="none",
        series_description=f"{algorithm.name} inner ear"[:64], content_label="INNEREAR",
        content_description="Inner-ear structures (automatic)")


def write_dicom_seg(path: str | os.PathLike, series: str | os.PathLike, labels: np.ndarray, affine: np.ndarray,
                    algorithm: Algorithm, structures: Sequence[Structure] = TABLE, *,
                    name: str | os.PathLike | None = None) -> None:
    """Write a DICOM SEG of ``labels`` for the DICOM ``series`` to ``path`` (not atomically: see
    :func:`save_dicom_seg`); errors about the label map name ``name`` (the final path when ``path`` is a
    temporary file), errors about the series its file."""
    labels = np.asarray(labels)
    unknown = set(np.unique(labels).tolist()) - {0} - {s.value for s in structures}
    if unknown:
        raise VolumeError(name or path, f"label map holds values {sorted(unknown)} that are no structure")
    seg_dataset(read_source_series(series), labels, affine, algorithm, structures).save_as(str(path))


def save_dicom_seg(path: str | os.PathLike, series: str | os.PathLike, labels: np.ndarray, affine: np.ndarray,
                   algorithm: Algorithm, structures: Sequence[Structure] = TABLE, overwrite: bool = True) -> Path:
    """Write a DICOM SEG atomically and return its path."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        write_dicom_seg(tmp, series, labels, affine, algorithm, structures, name=path)
    return path
