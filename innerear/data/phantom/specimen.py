"""What a phantom is: the :class:`Specimen` record, its id, and the label and tissue codes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


PHANTOM_VERSION = 3  # 2: anatomy calibrated against human morphometry (issue 21); 3: coarse fields' grids
# sized alike on every CPU (raster.coarse_nodes; version 2 drew some specimens' textures differently on AVX-512)
GENERATOR = "innerear.phantom"


# tissue classes of the optional tissue map (what each voxel was drawn as)
TISSUES = {0: "bone", 1: "lumen", 2: "air_cell", 3: "vessel", 4: "nerve_canal", 5: "medium",
           # only with anatomy realism (see ``AnatomyRealism``): fluid canals attached to the
           # labyrinth, middle-ear air (cavity and windows), the septum between the scalae and
           # air inside the lumen (the last two are label voxels)
           6: "aqueduct", 7: "middle_ear_air", 8: "septum", 9: "lumen_air"}
T_BONE, T_LUMEN, T_AIR, T_VESSEL, T_NERVE, T_MEDIUM = range(6)
T_AQUEDUCT, T_MIDDLE_EAR, T_SEPTUM, T_LUMEN_AIR = range(6, 10)


@dataclass
class Specimen:
    """One synthetic specimen: image, labels and geometry."""

    specimen_id: str
    image: np.ndarray  # uint16 (X, Y, Z); an acquisition's units (int16 HU, float32) with one
    label: np.ndarray  # uint8 0/1
    structures: np.ndarray  # uint8 0..3 (see STRUCTURES)
    affine: np.ndarray  # 4x4 voxel -> world (mm, RAS+)
    spacing: tuple[float, float, float]
    meta: dict = field(default_factory=dict)
    tissue: np.ndarray | None = None  # uint8 (see TISSUES), only with ``with_tissue=True``
    clean_label: np.ndarray | None = None  # the true label when ``label`` carries label noise
    clean_structures: np.ndarray | None = None


def specimen_id(index: int) -> str:
    """The id (and file stem) of specimen ``index``."""
    return f"phantom_{int(index):03d}"


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (floats rounded to 6 digits, non-finite ones as None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return round(v, 6) if math.isfinite(v) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj
