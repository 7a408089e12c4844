"""Loading the Hear-EU micro-CT data set (as downloaded from the SICAS Medical Image Repository).

The data set is not redistributed here and this module cannot download it; it turns a
download into the layout the rest of the pipeline reads (``data/hear-eu/<id>_image.nii.gz``
and ``<id>_label.nii.gz``, see :func:`export_prepared`).

Accepted layouts (both may be mixed under one root folder):

* **one subfolder per specimen** -- ``ROOT/<specimen>/`` holds one image volume and one label
  volume; the specimen id is the folder's name. The label is the file whose name contains a
  label word (``label``, ``labels``, ``labelmap``, ``seg``, ``segmentation``, ``mask``, ``gt``)
  or that ends in ``.seg.nrrd``; the image is the other one.
* **flat files** -- ``ROOT/<name>.<ext>`` where every name holds the specimen id and, for
  labels, a label word; image names may carry an image word (``image``, ``img``, ``ct``,
  ``scan``, ``volume``, ``vol``). Names are split into words at ``_``, ``-``, ``.`` and
  spaces; the specimen id is what remains without those words (``Specimen_03_label.mha`` and
  ``Specimen_03.mha`` are specimen ``Specimen_03``; ids match case-insensitively).

Volumes may be uncompressed or gzipped NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``,
``.mhd``), NRRD (``.nrrd``, ``.nhdr``) or 3D Slicer segmentations (``.seg.nrrd``).

Labels are brought onto their image's grid: a label with the image's shape is taken voxel for
voxel; a Slicer segmentation, or a label with a different shape, is resampled through world
coordinates (nearest neighbour; :func:`innerear.data.scan.map_to_scan`). Per-specimen corrections (the
paper re-aligned five label maps by hand) come from a small YAML or JSON file::

    Specimen_07:
      permute: [1, 0, 2]      # transpose the stored label's axes (before it is put on the grid)
      flip: [2]               # then flip these axes of the image grid
      translate_vox: [0, -3, 1]  # then shift by whole voxels (zero fill)

and are applied in that order (permute, flip, translate_vox). Finally every pair is checked:
the labelled inner-ear lumen must be darker than the bone around it (:func:`lumen_check`);
pairs that fail are flagged in the report and, by default, not exported.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from innerear.data.scan import map_to_scan
from innerear.io import VolumeError, nrrd_affine, read_nrrd_file, read_volume, write_json, write_volume
from innerear.settings.profiles import project_root

VOLUME_EXTS = (".seg.nrrd", ".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
LABEL_WORDS = ("label", "labels", "labelmap", "seg", "segmentation", "mask", "gt")
IMAGE_WORDS = ("image", "img", "ct", "scan", "volume", "vol")
CORRECTION_KEYS = ("permute", "flip", "translate_vox")


@dataclass(frozen=True)
class SpecimenFiles:
    """One specimen of the download: its id, image file and label file."""

    specimen_id: str
    image: Path
    label: Path


@dataclass
class LoadedSpecimen:
    """A specimen read, its label corrected and put on the image grid, and checked."""

    specimen_id: str
    image: np.ndarray
    label: np.ndarray  # uint8 0/1 on the image grid
    affine: np.ndarray
    spacing: tuple[float, float, float]
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- discovery
def _split_ext(name: str) -> tuple[str, str] | None:
    low = name.lower()
    for ext in VOLUME_EXTS:
        if low.endswith(ext):
            return name[: -len(ext)], ext
    return None


def _words(stem: str) -> list[str]:
    return [w for w in re.split(r"[_\-.\s]+", stem) if w]


def _role_and_id(path: Path) -> tuple[str, str] | None:
    """``("label" | "image", specimen id)`` from a file name, or ``None`` for a non-volume."""
    parts = _split_ext(path.name)
    if parts is None or path.name.startswith("."):
        return None
    stem, ext = parts
    words = _words(stem)
    is_label = ext == ".seg.nrrd" or any(w.lower() in LABEL_WORDS for w in words)
    rest = [w for w in words if w.lower() not in LABEL_WORDS + IMAGE_WORDS]
    return ("label" if is_label else "image"), "_".join(rest)


def _safe_id(raw: str, where: Path) -> str:
    sid = re.sub(r"[^A-Za-z0-9-]+", "_", raw).strip("_")
    if not sid:
        raise VolumeError(where, "cannot tell the specimen id from the file name")
    return sid


def find_specimens(root: str | os.PathLike) -> list[SpecimenFiles]:
    """Pair images and labels under ``root`` (see the module docstring for the layouts).

    Raises :class:`FileNotFoundError` for a missing folder or no pairs, and
    :class:`VolumeError` naming the file or folder for an unpaired or ambiguous volume.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Hear-EU folder not found")
    found: dict[str, SpecimenFiles] = {}

    def add(sid: str, image: Path, label: Path) -> None:
        key = sid.lower()
        if key in found:
            raise VolumeError(image, f"specimen {sid} appears twice (also {found[key].image})")
        found[key] = SpecimenFiles(sid, image, label)

    flat: dict[str, dict[str, list[Path]]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            roles: dict[str, list[Path]] = {"image": [], "label": []}
            for f in sorted(entry.iterdir()):
                ri = _role_and_id(f) if f.is_file() else None
                if ri is not None:
                    roles[ri[0]].append(f)
            if not roles["image"] and not roles["label"]:
                continue
            for role in ("image", "label"):
                if len(roles[role]) != 1:
                    what = "no" if not roles[role] else f"{len(roles[role])}"
                    raise VolumeError(entry, f"specimen folder holds {what} {role} volume(s) "
                                             f"({', '.join(p.name for p in roles[role]) or 'none'}); expected one")
            add(_safe_id(entry.name, entry), roles["image"][0], roles["label"][0])
            continue
        ri = _role_and_id(entry)
        if ri is None:
            continue
        role, raw = ri
        bucket = flat.setdefault(_safe_id(raw, entry).lower(), {"image": [], "label": []})
        bucket[role].append(entry)
    for key, roles in sorted(flat.items()):
        for role, other in (("image", "label"), ("label", "image")):
            if len(roles[role]) > 1:
                raise VolumeError(roles[role][1], f"more than one {role} for specimen "
                                                  f"{_safe_id(key, roles[role][0])} ({roles[role][0].name})")
            if roles[role] and not roles[other]:
                raise VolumeError(roles[role][0], f"{role} without a matching {other} file")
        image, label = roles["image"][0], roles["label"][0]
        add(_safe_id(_role_and_id(image)[1], image), image, label)
    if not found:
        raise FileNotFoundError(f"{root}: no image/label volume pairs found (see innerear.data.hear_eu for the layouts)")
    return sorted(found.values(), key=lambda s: s.specimen_id.lower())


# --------------------------------------------------------------------------- labels
def read_slicer_segmentation(path: str | os.PathLike, segment: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D Slicer ``.seg.nrrd``: ``(binary mask, RAS affine)`` on the segmentation's own grid.

    Handles single-layer (3D, voxel values are the segments' label values) and multi-layer
    (4D, one ``list`` axis) files. ``segment`` picks one segment by name (``SegmentN_Name``);
    by default every segment is merged.
    """

    path = Path(path)
    array, header = read_nrrd_file(path)
    dirs = header.get("space directions")
    if dirs is None:
        raise VolumeError(path, "segmentation has no 'space directions' (no geometry)")
    rows = [None if d is None or not np.all(np.isfinite(np.asarray(d, float))) else np.asarray(d, float) for d in dirs]
    list_axes = [i for i, r in enumerate(rows) if r is None]
    if array.ndim == 4 and len(list_axes) == 1:
        array = np.moveaxis(array, list_axes[0], -1)
    elif array.ndim == 3 and not list_axes:
        array = array[..., None]
    else:
        raise VolumeError(path, f"unexpected segmentation array of shape {array.shape}")
    affine = nrrd_affine(np.asarray([r for r in rows if r is not None]), header)
    segments = {}
    for key, value in header.items():
        m = re.fullmatch(r"Segment(\d+)_Name", str(key))
        if m:
            i = m.group(1)
            segments[str(value)] = (int(header.get(f"Segment{i}_Layer", 0)), int(header.get(f"Segment{i}_LabelValue", 1)))
    if segment is None:
        mask = np.any(array != 0, axis=-1)
    else:
        if segment not in segments:
            raise VolumeError(path, f"no segment named {segment!r} (segments: {sorted(segments) or 'none named'})")
        layer, value = segments[segment]
        mask = array[..., layer] == value
    return mask.astype(np.uint8), affine


# --------------------------------------------------------------------------- corrections
def load_corrections(path: str | os.PathLike | None) -> dict[str, dict]:
    """Read per-specimen corrections from YAML or JSON (``{}`` for ``None``); validates them."""
    if path is None:
        return {}
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except FileNotFoundError:
        raise VolumeError(path, "corrections file not found") from None
    except Exception as exc:
        raise VolumeError(path, f"cannot be read as YAML/JSON ({type(exc).__name__}: {exc})") from exc
    data = data or {}
    if not isinstance(data, dict):
        raise VolumeError(path, "expected a mapping {specimen_id: {permute/flip/translate_vox: ...}}")
    out = {}
    for sid, corr in data.items():
        corr = corr or {}
        if not isinstance(corr, dict):
            raise VolumeError(path, f"{sid}: expected a mapping of corrections")
        unknown = set(corr) - set(CORRECTION_KEYS)
        if unknown:
            raise VolumeError(path, f"{sid}: unknown correction(s) {sorted(unknown)}; use {list(CORRECTION_KEYS)}")
        if "permute" in corr and sorted(int(a) for a in corr["permute"]) != [0, 1, 2]:
            raise VolumeError(path, f"{sid}: permute must order the axes 0, 1, 2, got {corr['permute']}")
        if "flip" in corr and not all(int(a) in (0, 1, 2) for a in corr["flip"]):
            raise VolumeError(path, f"{sid}: flip takes axes among 0, 1, 2, got {corr['flip']}")
        if "translate_vox" in corr:
            t = corr["translate_vox"]
            if len(t) != 3 or any(float(v) != int(float(v)) for v in t):
                raise VolumeError(path, f"{sid}: translate_vox must be three whole numbers of voxels, got {t}")
        out[str(sid).lower()] = {k: [int(v) for v in corr[k]] for k in CORRECTION_KEYS if k in corr}
    return out


def shift_vox(array: np.ndarray, shift: Sequence[int]) -> np.ndarray:
    """Shift a volume by whole voxels along each axis, filling with zeros."""
    out = np.zeros_like(array)
    src, dst = [], []
    for s, n in zip(shift, array.shape):
        s = int(s)
        if abs(s) >= n:
            return out
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = array[tuple(src)]
    return out


# --------------------------------------------------------------------------- checks
def lumen_check(image: np.ndarray, label: np.ndarray, shell_vox: int = 2, min_contrast: float = 1.0) -> dict:
    """Does the label sit on the dark lumen? Compare the image inside the label with a shell around it.

    The shell is the label dilated by ``shell_vox`` voxels, minus the label. ``contrast`` is
    ``(mean_shell - mean_inside) / std`` (std over inside and shell together); the pair is
    ``ok`` when the inside is darker by at least ``min_contrast`` of that spread. (A clean
    two-level image with as many voxels inside as in the shell gives 2; on the phantoms,
    correct labels score about 1.7 and labels moved by 3-6 voxels or flipped 0.1-0.9.)
    """
    label = np.asarray(label) != 0
    if not label.any():
        return {"ok": False, "reason": "label is empty", "mean_inside": None, "mean_shell": None, "contrast": None}
    shell = ndimage.binary_dilation(label, iterations=int(shell_vox)) & ~label
    if not shell.any():
        return {"ok": False, "reason": "label fills the image (no shell around it)", "mean_inside": None,
                "mean_shell": None, "contrast": None}
    image = np.asarray(image, np.float64)
    inside_v, shell_v = image[label], image[shell]
    spread = float(np.concatenate([inside_v, shell_v]).std()) or 1.0
    mean_in, mean_shell = float(inside_v.mean()), float(shell_v.mean())
    contrast = (mean_shell - mean_in) / spread
    ok = contrast >= min_contrast
    reason = "" if ok else ("label is not darker than its surroundings" if contrast <= 0
                            else f"label barely darker than its surroundings (contrast {contrast:.2f} < {min_contrast})")
    return {"ok": bool(ok), "reason": reason, "mean_inside": mean_in, "mean_shell": mean_shell,
            "contrast": float(contrast), "shell_vox": int(shell_vox), "label_voxels": int(label.sum())}


# --------------------------------------------------------------------------- loading
def load_specimen(spec: SpecimenFiles, corrections: dict | None = None, segment: str | None = None,
                  check: bool = True) -> LoadedSpecimen:
    """Read one specimen, put its label on the image grid, apply its corrections and check it."""
    image, spacing, affine = read_volume(spec.image)
    if np.ptp(image) == 0:
        raise VolumeError(spec.image, "image is constant (all voxels have the same value)")
    corr = (corrections or {}).get(spec.specimen_id.lower(), {})
    info: dict = {"image": str(spec.image), "label": str(spec.label), "shape": list(image.shape),
                  "spacing_mm": list(spacing), "corrections": corr, "notes": []}
    if spec.label.name.lower().endswith(".seg.nrrd"):
        label, label_affine = read_slicer_segmentation(spec.label, segment)
    else:
        label, _, label_affine = read_volume(spec.label)
        values = np.unique(label)
        if len(values) > 2:
            info["notes"].append(f"label has {len(values)} values; every nonzero voxel counts as inner ear")
        label = (label != 0).astype(np.uint8)
    if "permute" in corr:
        p = corr["permute"]
        label = np.ascontiguousarray(np.transpose(label, p))
        label_affine = label_affine.copy()
        label_affine[:, :3] = label_affine[:, p]
    if label.shape == image.shape and not spec.label.name.lower().endswith(".seg.nrrd"):
        if not np.allclose(label_affine, affine, atol=1e-3):
            info["notes"].append("label header geometry differs from the image's; taken voxel for voxel")
    else:
        label = map_to_scan(label, label_affine, image.shape, affine, threshold=None, chunk_voxels=1 << 21,
                            order=0, fill=0)
        info["notes"].append("label resampled onto the image grid through world coordinates (nearest neighbour)")
        if not label.any():
            raise VolumeError(spec.label, "label does not overlap its image in world coordinates")
    for axis in corr.get("flip", []):
        label = np.flip(label, axis)
    if "translate_vox" in corr:
        label = shift_vox(label, corr["translate_vox"])
    label = np.ascontiguousarray(label, dtype=np.uint8)
    if check:
        info["lumen_check"] = lumen_check(image, label)
    return LoadedSpecimen(spec.specimen_id, image, label, affine, spacing, info)


def export_prepared(
    root: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    corrections: str | os.PathLike | dict | None = None,
    *,
    include_flagged: bool = False,
    segment: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write ``<id>_image.nii.gz`` and ``<id>_label.nii.gz`` for every specimen under ``root``.

    ``out_dir`` defaults to ``data/hear-eu`` of the project, where
    :func:`innerear.settings.profiles.default_data_dir` picks it up. Pairs whose label fails
    :func:`lumen_check` are flagged and skipped unless ``include_flagged``. Writes (and
    returns) a report, ``hear_eu_report.json``, and a ``manifest.json`` marking the data as
    real (not synthetic).
    """

    out = Path(out_dir) if out_dir is not None else project_root() / "data" / "hear-eu"
    out.mkdir(parents=True, exist_ok=True)
    corr = corrections if isinstance(corrections, dict) else load_corrections(corrections)
    corr = {str(k).lower(): v for k, v in corr.items()}
    specimens = find_specimens(root)
    known = {s.specimen_id.lower() for s in specimens}
    report: dict = {"source": str(Path(root).resolve()), "out": str(out), "specimens": {}, "exported": [],
                    "flagged": [], "unused_corrections": sorted(k for k in corr if k not in known)}
    for spec in specimens:
        loaded = load_specimen(spec, corr, segment)
        check = loaded.info["lumen_check"]
        report["specimens"][spec.specimen_id] = loaded.info
        if not check["ok"]:
            report["flagged"].append(spec.specimen_id)
            if not include_flagged:
                loaded.info["exported"] = False
                continue
        write_volume(out / f"{spec.specimen_id}_image.nii.gz", loaded.image, loaded.affine, overwrite=overwrite)
        write_volume(out / f"{spec.specimen_id}_label.nii.gz", loaded.label, loaded.affine, overwrite=overwrite)
        loaded.info["exported"] = True
        report["exported"].append(spec.specimen_id)
    write_json(out / "hear_eu_report.json", report)
    write_json(out / "manifest.json", {"synthetic": False, "description": "Hear-EU micro-CT specimens (innerear.data.hear_eu)",
                                       "specimens": report["exported"], "source": report["source"]})
    return report
