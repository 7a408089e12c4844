"""The cochlea's true size from the generator's own spiral (:func:`cochlea_truth`), to check
the measurements of :mod:`innerear.metrics` against."""
from __future__ import annotations

import math

import numpy as np

from innerear.data.phantom.anatomy import Anatomy
from innerear.data.phantom.geometry import arc_length, unit


def cochlea_truth(anatomy: Anatomy, scale: float) -> dict[str, float]:
    """The cochlear duct's true size from the generator's own spiral (world mm: anatomical
    mm x ``scale``), with the convention of :func:`innerear.metrics.cochlea.measure_cochlea`.

    The duct runs from where its centreline leaves the vestibule (the centre of its basal
    opening; the cochlear label starts there) to the centreline's apical end (the centre of
    the rounded tip). Its lateral wall is the tube's outer edge, the centreline moved by half
    the scala's width away from the modiolar axis. Turns: the angle the centreline sweeps
    about the modiolar axis between the two ends / 360 degrees.
    """
    tube = next(t for t in anatomy.tubes if t.name == "cochlea")
    q = anatomy.vestibule.q(tube.pts)
    i0 = max(1, int(np.argmax(q > 1.0)))
    f = float(np.clip((1.0 - q[i0 - 1]) / max(q[i0] - q[i0 - 1], 1e-12), 0.0, 1.0))

    def from_opening(x: np.ndarray) -> np.ndarray:
        return np.concatenate([(x[i0 - 1] + f * (x[i0] - x[i0 - 1]))[None], x[i0:]])

    centre = from_opening(tube.pts)
    lateral = from_opening(tube.pts + tube.frames[:, 0] * tube.semi[:, :1])
    axis = unit(np.asarray(anatomy.info["modiolar_axis"], float))
    e1 = unit(np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0]))
    rel = centre - np.asarray(anatomy.info["modiolus_base"], float)
    ang = np.unwrap(np.arctan2(rel @ np.cross(axis, e1), rel @ e1))
    return {"turns": float(abs(ang[-1] - ang[0]) / (2 * math.pi)),
            "lateral_wall_length_mm": float(arc_length(lateral)[-1] * scale),
            "centreline_length_mm": float(arc_length(centre)[-1] * scale)}




