"""What ``innerear segment`` measures and reports.

:func:`mask_measures` (volume, bounding box, centroid), :func:`structure_measures` (each structure's
volume) and :func:`cochlea_measures` (duct length and turns, :mod:`innerear.metrics.cochlea`) measure
a mask on the scan's grid; :class:`SegmentReport` is the JSON report (``--report``) built from them,
the checks (:mod:`innerear.inference.checks`) and the timings.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from innerear import __version__
from innerear.data.scan import crop_to_mask
from innerear.inference.checks import touches_border
from innerear.io.files import json_text
from innerear.metrics.cochlea import measure_cochlea
from innerear.settings.structures import STRUCTURE_NAMES


def mask_measures(mask: np.ndarray, affine: np.ndarray) -> dict:
    """Voxel count, volume (mm³), bounding box (voxels, inclusive; and world RAS mm), centroid."""
    affine = np.asarray(affine, float)
    voxels = int(np.count_nonzero(mask))
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    out: dict = {"voxels": voxels, "volume_mm3": voxels * voxel_mm3, "voxel_volume_mm3": voxel_mm3,
                 "bbox_voxels": None, "bbox_mm": None, "centroid_mm": None}
    if voxels == 0:
        return out
    idx = np.nonzero(mask)
    lo = np.array([a.min() for a in idx])
    hi = np.array([a.max() for a in idx])
    corners = np.array([[c[0], c[1], c[2], 1.0] for c in
                        np.array(np.meshgrid(*[(l - 0.5, h + 0.5) for l, h in zip(lo, hi)], indexing="ij")).reshape(3, -1).T])
    world = (corners @ affine.T)[:, :3]
    centroid = affine[:3, :3] @ np.array([a.mean() for a in idx]) + affine[:3, 3]
    out["bbox_voxels"] = {"min": lo.tolist(), "max": hi.tolist(), "size": (hi - lo + 1).tolist()}
    out["bbox_mm"] = {"min": world.min(0).tolist(), "max": world.max(0).tolist(),
                      "size": (world.max(0) - world.min(0)).tolist(), "frame": "RAS world (mm), voxel edges"}
    out["centroid_mm"] = centroid.tolist()
    return out


def structure_measures(labels: np.ndarray, affine: np.ndarray) -> dict:
    """Voxels and volume (mm³) of each structure of a label map."""
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=len(STRUCTURE_NAMES) + 1)
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))
    return {name: {"label": k, "voxels": int(counts[k]), "volume_mm3": float(counts[k] * voxel_mm3)}
            for k, name in STRUCTURE_NAMES.items()}


def cochlea_measures(labels: np.ndarray, affine: np.ndarray) -> dict:
    """The cochlea's measures (:func:`innerear.metrics.cochlea.measure_cochlea`: volume, duct length along
    the lateral wall, turns, method) from label 1, on its bounding box; or why there are none."""
    cochlea = labels == 1
    if not cochlea.any():
        return {"available": False, "reason": "no cochlea in the label map"}
    crop, _, crop_affine = crop_to_mask(cochlea.astype(np.uint8), affine)
    cut = touches_border(cochlea)
    try:
        measures = measure_cochlea(crop, crop_affine)
    except ValueError as exc:  # a predicted cochlea that is no spiral: say so, don't fail the segmentation
        return {"available": False, "reason": f"the predicted cochlea could not be measured: {exc}",
                "touches_field_of_view_border": cut}
    out = measures.to_dict()
    out["available"] = True
    out["touches_field_of_view_border"] = cut
    doubts = []
    if cut:
        doubts.append("the cochlea touches the scan's border: the duct may be cut, the length too short")
    if out.get("warning"):  # e.g. turns merged so widely that the duct's two orderings disagree
        doubts.append(f"the predicted cochlea's {out['warning']}")
    if out.get("kept_fraction", 1.0) < 0.95:
        doubts.append(f"only {out['kept_fraction']:.0%} of the predicted cochlea is one piece; the rest was left out")
    out["doubts"] = doubts
    return out


@dataclass
class SegmentReport:
    """The report of one segmentation (``innerear segment --report``): ``to_dict`` gives its JSON
    object, whose keys are the field names plus ``warnings`` (every failed check's reason) and
    ``intensity_histogram_distance``. ``input``, ``model`` and ``prepared`` describe the scan, the
    model and the grid the networks saw; ``inner_ear`` holds ``mask_measures`` (volume, voxels,
    bounding box, centroid) and the
    component counts; ``structures`` and ``cochlea`` are None for a binary model."""

    input: dict[str, Any]
    model: dict[str, Any]
    prepared: dict[str, Any]
    threshold: float
    inner_ear: dict[str, Any]
    structures: dict[str, Any] | None
    cochlea: dict[str, Any] | None
    checks: dict[str, dict[str, Any]]
    timings_s: dict[str, float]
    total_s: float
    innerear_version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def warnings(self) -> list[str]:
        """The reasons of the checks that failed."""
        return [c["reason"] for c in self.checks.values() if not c["passed"]]

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-able dict."""
        return {
            "innerear_version": self.innerear_version, "created": self.created, "input": self.input,
            "model": self.model, "prepared": self.prepared, "threshold": self.threshold,
            "inner_ear": self.inner_ear, "structures": self.structures, "cochlea": self.cochlea,
            "intensity_histogram_distance": self.checks["intensity"]["distance"], "checks": self.checks,
            "warnings": self.warnings, "timings_s": self.timings_s, "total_s": self.total_s,
        }

    def to_json(self) -> str:
        """The report as the text of a JSON file."""
        return json_text(self.to_dict())

