"""Writing phantoms: their NIfTI files (through :func:`innerear.io.nifti.write_nifti_gz`, reproducible),
the manifest entry of one specimen and the state of a set's folder (resume or refuse)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from innerear.data.phantom.specimen import GENERATOR, PHANTOM_VERSION, Specimen, jsonable
from innerear.io.files import write_json
from innerear.io.nifti import write_nifti_gz
from innerear.settings.profiles import PhantomSettings
from innerear.settings.structures import STRUCTURES

DESCRIPTION = "innerear synthetic phantom"  # the NIfTI header's descrip field
PARTIAL = ".phantoms-partial.json"  # the progress file of an unfinished set
_SPECIMEN_FILES = ("image", "label", "structures")


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
    write_nifti_gz(out_dir / files["image"], spec.image, spec.affine, description=DESCRIPTION)
    write_nifti_gz(out_dir / files["label"], spec.label, spec.affine, description=DESCRIPTION)
    write_nifti_gz(out_dir / files["structures"], spec.structures, spec.affine, description=DESCRIPTION)
    if spec.clean_label is not None:  # label noise: the truth as well
        files = {**files, "clean_label": f"{spec.specimen_id}_label_clean.nii.gz",
                 "clean_structures": f"{spec.specimen_id}_structures_clean.nii.gz"}
        write_nifti_gz(out_dir / files["clean_label"], spec.clean_label, spec.affine, description=DESCRIPTION)
        write_nifti_gz(out_dir / files["clean_structures"], spec.clean_structures, spec.affine, description=DESCRIPTION)
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
    write_json(manifest_path, manifest, indent=1)
    partial_path = out_dir / PARTIAL
    if partial_path.exists():
        partial_path.unlink()
    return json.loads(manifest_path.read_text())
