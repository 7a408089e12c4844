"""Writing phantoms: reproducible NIfTI files (gzip without timestamp), atomic JSON, the
manifest entry of one specimen and the state of a set's folder (resume or refuse)."""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from innerear.settings.profiles import PhantomSettings
from innerear.data.phantom.specimen import GENERATOR, PHANTOM_VERSION, Specimen, jsonable
from innerear.settings.structures import STRUCTURES
from innerear.io import atomic_path

PARTIAL = ".phantoms-partial.json"  # the progress file of an unfinished set
_SPECIMEN_FILES = ("image", "label", "structures")


def _nifti_header(shape, dtype, affine) -> bytes:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(tuple(int(s) for s in shape))
    hdr.set_data_dtype(np.dtype(dtype))
    hdr.set_zooms(tuple(float(z) for z in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))
    hdr.set_xyzt_units("mm")
    hdr.set_qform(np.asarray(affine, float), code=1)
    hdr.set_sform(np.asarray(affine, float), code=1)
    hdr["descrip"] = b"innerear synthetic phantom"
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock
    assert len(raw) == 348
    return raw + b"\x00\x00\x00\x00"  # no extensions


def write_nifti_gz(path: Path, array: np.ndarray, affine: np.ndarray, compresslevel: int = 1) -> Path:
    """Write a NIfTI-1 .nii.gz reproducibly (no gzip timestamp or name) and atomically, streaming
    the data plane by plane (no full copy in memory)."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))

    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as gz:
            gz.write(_nifti_header(array.shape, array.dtype, affine))
            plane = max(1, array.shape[0] * array.shape[1])
            step = max(1, 8_000_000 // plane)
            for k in range(0, array.shape[2], step):
                gz.write(np.ascontiguousarray(array[:, :, k:k + step].transpose(2, 1, 0)).tobytes())
        raw.flush()
        os.fsync(raw.fileno())
    return path


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def specimen_files(sid: str) -> dict[str, str]:
    """File names of specimen ``sid``: image, label and structures."""
    return {k: f"{sid}_{k}.nii.gz" for k in _SPECIMEN_FILES}


def write_specimen(spec: Specimen, out_dir: Path) -> dict:
    """Write ``{id}_image/_label/_structures.nii.gz`` (the image in its own dtype: uint16,
    int16 HU or float32; with label noise also ``_label_clean/_structures_clean``); return the
    manifest entry."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = specimen_files(spec.specimen_id)
    write_nifti_gz(out_dir / files["image"], spec.image, spec.affine)
    write_nifti_gz(out_dir / files["label"], spec.label, spec.affine)
    write_nifti_gz(out_dir / files["structures"], spec.structures, spec.affine)
    if spec.clean_label is not None:  # label noise: the truth as well
        files = {**files, "clean_label": f"{spec.specimen_id}_label_clean.nii.gz",
                 "clean_structures": f"{spec.specimen_id}_structures_clean.nii.gz"}
        write_nifti_gz(out_dir / files["clean_label"], spec.clean_label, spec.affine)
        write_nifti_gz(out_dir / files["clean_structures"], spec.clean_structures, spec.affine)
    meta = {k: v for k, v in spec.meta.items() if k != "seconds"}  # keep manifests reproducible
    return jsonable({
        "id": spec.specimen_id,
        **files,
        "shape": list(spec.image.shape),
        "spacing": list(spec.spacing),
        "affine": spec.affine,
        "meta": meta,
    })


def entry_files_exist(out_dir: Path, entry: dict) -> bool:
    """Whether all files of a manifest entry are in ``out_dir``."""
    return all((Path(out_dir) / entry[f]).exists() for f in _SPECIMEN_FILES)


def set_key(settings: PhantomSettings, seed: int, n: int) -> dict:
    """What identifies a phantom set: generator, version, seed, size and settings."""
    return json.loads(json.dumps(jsonable({
        "generator": GENERATOR,
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "n": int(n),
        "settings": asdict(settings),
    })))


def resume_set(out_dir: Path, key: dict) -> tuple[dict | None, dict[str, dict]]:
    """State of a set's folder: (its manifest if the set is complete, else None; the entries
    already written, by id). Raises :class:`FileExistsError` if the folder holds anything
    else (another set, an unreadable manifest, other files)."""
    manifest_path = out_dir / "manifest.json"
    partial_path = out_dir / PARTIAL
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise FileExistsError(f"{manifest_path}: unreadable manifest ({exc}); not overwriting {out_dir}") from exc
        if {k: old.get(k) for k in key} != key:
            theirs = {k: old.get(k) for k in ("generator", "version", "seed", "n")}
            raise FileExistsError(
                f"{out_dir} already holds a different data set ({theirs}, settings {old.get('settings')}); "
                f"asked for seed={key['seed']}, n={key['n']}, settings {key['settings']}. "
                "Use another folder or delete it.")
        if all(entry_files_exist(out_dir, e) for e in old.get("specimens", [])):
            return old, {}
        return None, {e["id"]: e for e in old.get("specimens", [])}
    if partial_path.exists():
        try:
            part = json.loads(partial_path.read_text())
        except (OSError, ValueError):
            part = {}
        if {k: part.get(k) for k in key} != key:
            raise FileExistsError(f"{out_dir} holds an unfinished different phantom set ({partial_path}); "
                                  "use another folder or delete it")
        return None, {e["id"]: e for e in part.get("specimens", [])}
    others = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    if others:
        raise FileExistsError(f"{out_dir} is not empty and holds no phantom manifest "
                              f"({', '.join(others[:5])}{'...' if len(others) > 5 else ''}); "
                              "use another folder or delete it")
    return None, {}


def finish_set(out_dir: Path, key: dict, entries: list[dict]) -> dict:
    """Write the set's ``manifest.json``, remove the progress file; return the manifest."""
    manifest = {
        **key,
        "synthetic": True,
        "structures": {str(k): v for k, v in STRUCTURES.items()},
        "description": "synthetic micro-CT phantoms of the human inner ear (innerear.data.phantom)",
        "specimens": entries,
    }
    manifest_path = out_dir / "manifest.json"
    write_json(manifest_path, manifest)
    partial_path = out_dir / PARTIAL
    if partial_path.exists():
        partial_path.unlink()
    return json.loads(manifest_path.read_text())
