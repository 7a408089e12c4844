"""Aligning a turned scan to the labyrinth's own axes before the final pass (issue 24, case 3).

Specimen micro-CT is mounted in any orientation, and a 2D cascade's views (coronal, sagittal,
axial) see a turned labyrinth from sides it rarely met in training. Rather than averaging the
cascade over many turns (several times the time on every scan), the engine reads the labyrinth's
orientation from a first pass: the directions from the vestibule's centroid to the cochlea's and
to the canals' give a frame; when that frame is turned from the training phantoms' frame by more
than a threshold, the prepared volume is turned back about the labyrinth's centroid, segmented
again, and the class probabilities are turned to the scan's frame. A scan in the usual
orientation pays nothing. A right ear's frame is the left ear's mirrored (the side is chosen as
the smaller turn), so mirroring never counts as a turn.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from innerear.settings.threads import cores

#: the training phantoms' frame (left-ear convention, RAS): unit vectors from the vestibule's
#: centroid to the cochlea's and to the semicircular canals', the mean of 12 phantoms of the
#: calibrated generator (seed 0, 0.25 mm, their drawn 3-20 degree poses; each within 20 degrees
#: of the mean), and the turn above which the scan is realigned
ANATOMY_FRAME: dict[str, Any] = {
    "cochlea": [0.441, 0.788, -0.429],
    "canals": [-0.756, -0.169, 0.632],
    "realign_above_deg": 35.0,
    # a turn within this of a quarter turn is undone exactly (the training poses reach 20 degrees);
    # the frame is read again after each realigned pass and the pass repeated while it moves more
    # than refine_above_deg, up to max_passes realigned passes (Cascade._realigned)
    "snap_within_deg": 10.0,
    "refine_above_deg": 5.0,
    "max_passes": 4,
    # a frame is read only from a whole labyrinth: at least these volumes (mm³) of each structure
    # (a cochlea-centred crop holds bits of the canals, whose centroid would give a false turn)
    "min_mm3": {"cochlea": 10.0, "vestibule": 10.0, "canals": 15.0},
    # when the first pass shows no whole labyrinth in a field of view that could hold one (every
    # side at least this long; the training mixture's smallest labyrinth block is 14 mm, its
    # cochlea crops 8.5-12 mm), the cube's quarter and half turns are tried, one pass each without
    # mirroring, until one shows a whole labyrinth: a scan turned a quarter turn away can look to
    # the first pass like no ear at all (Cascade._searched)
    "search_min_fov_mm": 14.0,
    "source": "mean frame of 12 calibrated phantoms (seed 0), innerear.inference.align",
}


@dataclass(frozen=True)
class Turn:
    """How a labyrinth is turned from the reference frame: ``rotation`` maps the scan's directions
    to the reference's, about ``centre`` (voxel coordinates of the prepared grid)."""

    rotation: np.ndarray
    angle_deg: float
    centre: np.ndarray
    side: str


def _frame(cochlea: np.ndarray, canals: np.ndarray) -> np.ndarray:
    """An orthonormal frame (rows) from two directions (Gram-Schmidt, then their cross product)."""
    e1 = cochlea / np.linalg.norm(cochlea)
    e2 = canals - (canals @ e1) * e1
    e2 = e2 / np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)])


def find_turns(labels: np.ndarray, frame: dict[str, Any], voxel_mm: float | None = None) -> list[Turn]:
    """The labyrinth's turn from ``frame`` read from a structure label map (1 cochlea, 2 vestibule,
    3 canals) on an isotropic grid of ``voxel_mm``, as a left ear and as a right ear, the smaller
    turn first; empty when a structure is smaller than the frame's ``min_mm3`` (a partial labyrinth
    gives no reliable frame). A poor first pass of a much turned scan can make the wrong side's
    turn the smaller one, so the engine tries the other when the first leads nowhere."""
    voxel_mm3 = float(voxel_mm) ** 3 if voxel_mm else None
    least = frame.get("min_mm3", {})
    cents = []
    for code, name in ((1, "cochlea"), (2, "vestibule"), (3, "canals")):
        idx = np.argwhere(labels == code)
        if len(idx) < 10 or (voxel_mm3 is not None and len(idx) * voxel_mm3 < float(least.get(name, 0.0))):
            return []
        cents.append(idx.mean(0))
    c, v, k = cents
    if min(np.linalg.norm(c - v), np.linalg.norm(k - v)) < 1e-6:
        return []
    observed = _frame(c - v, k - v)
    centre = np.argwhere(labels > 0).mean(0)
    turns = []
    for side, flip in (("left", np.array([1.0, 1.0, 1.0])), ("right", np.array([-1.0, 1.0, 1.0]))):
        ref = _frame(np.asarray(frame["cochlea"], float) * flip, np.asarray(frame["canals"], float) * flip)
        rotation = ref.T @ observed  # observed direction d -> rotation @ d in the reference frame
        if np.linalg.det(rotation) < 0:  # a mirror, not a turn: the other side's frame
            continue
        turns.append(Turn(rotation, turn_between(np.eye(3), rotation), centre, side))
    return sorted(turns, key=lambda t: t.angle_deg)


def find_turn(labels: np.ndarray, frame: dict[str, Any], voxel_mm: float | None = None) -> Turn | None:
    """The smaller of :func:`find_turns`' turns (the more likely side), or None."""
    turns = find_turns(labels, frame, voxel_mm)
    return turns[0] if turns else None


#: the turned grid of an interpolated realignment: a cube about the labyrinth's centre holding the
#: first pass's mask (and this margin) after any turn, at least this radius: a labyrinth that fills
#: the scan's field of view would otherwise be turned partly out of the scan's own grid
FRAME_MARGIN_MM = 2.0
FRAME_MIN_RADIUS_MM = 10.0


def frame_shape(mask: np.ndarray, centre: np.ndarray, voxel_mm: float, multiple: int = 1) -> tuple[int, int, int]:
    """The cube (voxels per side a multiple of ``multiple``) centred on ``centre`` that holds every
    voxel of ``mask`` plus :data:`FRAME_MARGIN_MM` whatever the turn, at least
    :data:`FRAME_MIN_RADIUS_MM` in radius and at most the distance to the scan's farthest corner."""
    idx = np.argwhere(mask)
    reach = float(np.sqrt(((idx - centre) ** 2).sum(1)).max()) if len(idx) else 0.0
    radius = max(reach + FRAME_MARGIN_MM / voxel_mm, FRAME_MIN_RADIUS_MM / voxel_mm)
    farthest_corner = np.maximum(centre, np.asarray(mask.shape) - 1.0 - centre)
    radius = min(radius, float(np.linalg.norm(farthest_corner)))
    side = int(np.ceil((2.0 * radius + 1.0) / multiple)) * multiple
    return (side, side, side)


def turn_volume(volume: np.ndarray, turn: Turn, back: bool = False, order: int = 1, cval: float | None = None,
                frame: tuple[int, int, int] | None = None, scan_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``volume`` (3D) turned so that the labyrinth sits in the reference frame (``back``: the
    inverse, from the reference frame to the scan's). The turned grid is the scan's own, turned
    about the turn's centre, or with ``frame`` a grid of that shape with the labyrinth's centre at
    its middle (:func:`frame_shape`); ``back`` from such a grid needs ``scan_shape``. Outside the
    input grid: the nearest edge value, or ``cval``."""
    frame_centre = turn.centre if frame is None else (np.asarray(frame, float) - 1.0) / 2.0
    if back:
        rot, src, dst = turn.rotation, frame_centre, turn.centre  # output voxel -> input voxel
        shape = volume.shape if frame is None else tuple(scan_shape)
    else:
        rot, src, dst = turn.rotation.T, turn.centre, frame_centre
        shape = volume.shape if frame is None else tuple(frame)
    offset = src - rot @ dst
    mode = "nearest" if cval is None else "constant"
    return _affine(np.asarray(volume, np.float32), rot, offset, tuple(shape), order, mode, 0.0 if cval is None else cval)


#: voxels of edge padding before a spline filter in mode "nearest" (as ``ndimage.affine_transform`` pads)
SPLINE_PAD = 12


def _affine(volume: np.ndarray, matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, ...], order: int,
            mode: str, cval: float) -> np.ndarray:
    """``ndimage.affine_transform`` into float32, its output computed in slabs along the first axis,
    one per core side by side (the interpolation releases the GIL): a 45-degree turn of a 20 mm scan
    into its 192³ frame took 4.5-7.1 s in one call on a 2-core machine (2026-12-06). The spline
    coefficients of an order above 1 are filtered once for every slab, as ``affine_transform`` filters
    them (edge-padded by :data:`SPLINE_PAD` voxels in mode ``"nearest"``). The same values as one call
    to float rounding: a slab's coordinates are summed from its own corner."""
    slabs = min(cores(), shape[0])
    if slabs <= 1:
        return ndimage.affine_transform(volume, matrix, offset=offset, output_shape=shape, order=order, mode=mode,
                                        cval=cval, output=np.float32)
    coefficients, pad = volume, 0
    if order > 1:
        if mode == "nearest":
            coefficients, pad = np.pad(volume, SPLINE_PAD, mode="edge"), SPLINE_PAD
        coefficients = ndimage.spline_filter(coefficients, order, output=np.float64, mode=mode)
    out = np.empty(shape, np.float32)
    bounds = np.linspace(0, shape[0], slabs + 1).astype(int)

    def slab(lo: int, hi: int) -> None:  # its first voxel's input coordinates: the offset plus lo steps along axis 0
        ndimage.affine_transform(coefficients, matrix, offset=offset + matrix[:, 0] * lo + pad,
                                 output_shape=(hi - lo,) + shape[1:], order=order, mode=mode, cval=cval,
                                 output=out[lo:hi], prefilter=False)

    with ThreadPoolExecutor(slabs) as pool:
        list(pool.map(slab, bounds[:-1], bounds[1:]))
    return out


def turn_between(a: np.ndarray, b: np.ndarray) -> float:
    """The angle (degrees) of the rotation taking rotation ``a`` to rotation ``b``."""
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1.0) / 2.0, -1.0, 1.0))))


def cube_turn(rotation: np.ndarray, within_deg: float = 10.0) -> np.ndarray | None:
    """The quarter-turn rotation (a signed permutation, one of the cube's 24) nearest ``rotation``
    when it is within ``within_deg`` of it, else None: a scan mounted a quarter turn away is then
    turned back without interpolation. Only near-exact quarter turns are snapped (the engine's
    ``snap_within_deg``, 10): a phantom acquired 45 degrees further turned, snapped with a residual of
    19 degrees, scored 0.874 Dice against 0.906-0.929 turned the rest of the way by interpolation
    (2026-12-03, notes in tests/test_faults24_model.py)."""
    best, best_angle = None, 180.0
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in np.array(np.meshgrid([1, -1], [1, -1], [1, -1])).T.reshape(-1, 3):
            q = np.zeros((3, 3))
            q[np.arange(3), perm] = signs
            if np.linalg.det(q) < 0:
                continue
            angle = turn_between(q, rotation)
            if angle < best_angle:
                best, best_angle = q, angle
    return best if best_angle <= within_deg else None


def search_turns() -> list[tuple[str, np.ndarray]]:
    """The cube's turns tried on a scan whose first pass shows no whole labyrinth, named and in
    the order tried: the six quarter turns about one axis, then the three half turns (a scan is
    more often mounted one quarter turn away than two)."""
    def about(axis: int, cos: int, sin: int) -> np.ndarray:
        a, b = (i for i in range(3) if i != axis)
        q = np.eye(3)
        q[a, a], q[a, b], q[b, a], q[b, b] = cos, -sin, sin, cos
        return q

    quarters = [(f"{sign * 90} deg about {'xyz'[axis]}", about(axis, 0, sign)) for axis in range(3) for sign in (1, -1)]
    halves = [(f"180 deg about {'xyz'[axis]}", about(axis, -1, 0)) for axis in range(3)]
    return quarters + halves


def quarter_turn(volume: np.ndarray, q: np.ndarray, back: bool = False) -> np.ndarray:
    """``volume`` (3D, or with channels last) under the signed permutation ``q`` (directions ``d``
    of the input go to ``q @ d``), or its inverse with ``back``: exact, no interpolation."""
    q = q.T if back else q
    axes = [int(np.flatnonzero(q[a])[0]) for a in range(3)]  # output axis a reads input axis axes[a]
    out = np.transpose(volume, axes + list(range(3, volume.ndim)))
    for a in range(3):
        if q[a, axes[a]] < 0:
            out = np.flip(out, a)
    return np.ascontiguousarray(out)
