"""io: volume files, surfaces and safe writing (floor 1; imports only :mod:`innerear.settings`).

Owns every file format the package reads or writes: volumes in NIfTI, NRRD, MetaImage,
DICOM series and TIFF stacks (:func:`read_volume` returns ``(array, spacing_mm, affine)``
and names the file in every :class:`VolumeError`), surface meshes as STL
(:mod:`~innerear.io.mesh`), and the one atomic writer (:func:`atomic_path`, used by every
JSON, NPZ, model and volume file the package writes). The names below are its public API."""
from innerear.io.common import (
                                DICOM_SUFFIXES,
                                METAIMAGE_SUFFIXES,
                                NIFTI_SUFFIXES,
                                NRRD_SUFFIXES,
                                SPACING_FIELDS,
                                TIFF_SUFFIXES,
                                VOXEL_MM_RANGE,
                                WRITABLE,
                                VolumeError,
                                check_voxel_size,
                                spacing_from_affine,
                                volume_format,
)
from innerear.io.files import (WriteError, atomic_path, current_umask, json_default, json_round_trip, save_npz,
                               sweep_temporaries, write_json)
from innerear.io.itk import check_slice_positions, keep_locale
from innerear.io.nifti import write_nifti_gz
from innerear.io.nrrd import nrrd_affine, read_nrrd_file
from innerear.io.tiff import write_tiff_stack
from innerear.io.volumes import check_writable, read_volume, spacing_source, temp_suffix, write_volume, write_volume_to

__all__ = ["DICOM_SUFFIXES", "METAIMAGE_SUFFIXES", "NIFTI_SUFFIXES", "NRRD_SUFFIXES", "SPACING_FIELDS", "TIFF_SUFFIXES",
           "VOXEL_MM_RANGE", "WRITABLE", "VolumeError", "WriteError", "atomic_path", "check_slice_positions", "check_voxel_size",
           "check_writable", "current_umask", "json_default", "json_round_trip", "keep_locale", "nrrd_affine",
           "read_nrrd_file", "read_volume", "save_npz", "spacing_from_affine", "spacing_source", "sweep_temporaries", "temp_suffix",
           "volume_format", "write_json", "write_nifti_gz", "write_tiff_stack", "write_volume", "write_volume_to"]
