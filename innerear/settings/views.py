"""Slice views: the three orientations, the stage orders, and how a volume is cut into 2D slices.

Every 2D network of the cascade sees a volume as a stack of slices along one array axis.
Which axis a view name stands for is a *convention*, chosen with ``view_axes``:

``"ras"`` (default)
    Prepared volumes are reoriented to the closest RAS+ orientation
    (:func:`innerear.data.preprocess.to_canonical`), so array axis 0 runs left→right, axis 1
    posterior→anterior, axis 2 inferior→superior. A *sagittal* slice fixes axis 0, a
    *coronal* slice axis 1 and an *axial* slice axis 2, whatever order the file stored its
    axes in. For a Hear-EU scan (NIfTI/MetaImage whose affine is a scaled identity, i.e.
    stored axes already i→R, j→A, k→S) this is the storage order, and "axial" slices are
    the scanner's slices along the third stored axis.

``"authors"``
    The authors' code (``AutoCasNet`` on GitHub) ignores the orientation: it slices stage 1
    along the **last** stored array axis, stage 2 along the middle one and stage 3 along the
    first, on arrays in their files' storage order. With the paper's stage order
    (coronal → sagittal → axial) that is ``coronal → axis 2``, ``sagittal → axis 1``,
    ``axial → axis 0``: on a Hear-EU scan stored in RAS order the authors' "axial" slices
    are our sagittal ones and their "coronal" slices our axial ones. Micro-CT specimens
    have no patient orientation, so the names are labels for the three stages, and the
    reproduction of the authors' code also needs the volumes in storage order (a profile
    setting of the preparation), not only this map.

Only the map from view name to axis differs between the conventions; the slicing itself
(:func:`to_slices` / :func:`from_slices`) is the same code.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

ORIENTATIONS = ("sagittal", "coronal", "axial")
PAPER_ORDER = ("coronal", "sagittal", "axial")
# the six stage orders of the orientation-order ablation (notebook 04)
ALL_ORDERS = (
    ("coronal", "sagittal", "axial"),
    ("coronal", "axial", "sagittal"),
    ("sagittal", "coronal", "axial"),
    ("sagittal", "axial", "coronal"),
    ("axial", "coronal", "sagittal"),
    ("axial", "sagittal", "coronal"),
)
VIEW_AXES = {
    "ras": {"sagittal": 0, "coronal": 1, "axial": 2},
    "authors": {"coronal": 2, "sagittal": 1, "axial": 0},
}
ORIENTATION_AXIS = VIEW_AXES["ras"]


def orientation_axis(orientation: str, view_axes: str = "ras") -> int:
    """Array axis a slice of this orientation fixes, under the ``view_axes`` convention."""
    try:
        axes = VIEW_AXES[view_axes]
    except KeyError:
        raise ValueError(f"unknown view_axes {view_axes!r}; use one of {list(VIEW_AXES)}") from None
    try:
        return axes[orientation]
    except KeyError:
        raise ValueError(f"unknown orientation {orientation!r}; use one of {list(axes)}") from None


def to_slices(volume: np.ndarray, orientation: str, view_axes: str = "ras") -> np.ndarray:
    """View a volume (x, y, z[, c]) as a stack of 2D slices (n, h, w[, c]) along ``orientation``."""
    return np.moveaxis(volume, orientation_axis(orientation, view_axes), 0)


def from_slices(slices: np.ndarray, orientation: str, view_axes: str = "ras") -> np.ndarray:
    """Inverse of :func:`to_slices`: put a slice stack back into (x, y, z[, c]) order."""
    return np.moveaxis(slices, 0, orientation_axis(orientation, view_axes))


def check_order(order: Sequence[str]) -> tuple[str, ...]:
    """Validate a view order: 1–3 distinct views."""
    order = tuple(order)
    for view in order:
        orientation_axis(view)
    if not 1 <= len(order) <= 3 or len(set(order)) != len(order):
        raise ValueError(f"a stage order is 1–3 distinct views, got {order}")
    return order
