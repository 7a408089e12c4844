"""Everything of one specimen in scanner coordinates, ready to be rendered, built in one
place (:func:`build_world`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from innerear.data.phantom.anatomy import Anatomy, build_anatomy
from innerear.data.phantom.imaging import Fields, smooth_fields
from innerear.data.phantom.params import AnatomyRealism, SpecimenParams
from innerear.data.phantom.realism import Realism, build_realism
from innerear.data.phantom.scene import Grid, Labyrinth, View, geometry_ds, place
from innerear.data.phantom.surroundings import Surroundings, place_surroundings


@dataclass(frozen=True)
class World:
    """One specimen: its parameters, anatomy, grid, posed labyrinth, surroundings and fields."""

    params: SpecimenParams
    anatomy: Anatomy  # in the anatomical frame
    lin: np.ndarray  # 3x3 anatomy -> world
    scale: float  # drawn size x fit_scale
    fit_scale: float
    grid: Grid
    labyrinth: Labyrinth
    surroundings: Surroundings
    fields: Fields
    realism: Realism | None = None  # opt-in anatomy realism (see :mod:`.realism`)


def build_world(index: int, seed: int, p: SpecimenParams, shape: tuple[int, int, int] | None,
                view: View | None = None, realism: AnatomyRealism | None = None) -> World:
    """Build specimen ``index`` of the set drawn from ``seed`` with parameters ``p`` (``view``:
    an acquisition's field of view; with ``realism``, the realism structures, drawn after
    everything else from their own streams)."""
    anat = build_anatomy(p.anatomy, seed, index, geometry_ds(p.voxel_mm, p.scale))
    placed = place(p, anat, shape, view)
    surroundings = place_surroundings(p.surroundings, placed.grid, placed.labyrinth, placed.scale, index, seed)
    fields = smooth_fields(p.surroundings, p.imaging, placed.grid, placed.labyrinth, placed.scale, index, seed)
    real = None
    if realism is not None:
        real = build_realism(realism, p, anat, placed.lin, placed.scale, placed.grid, placed.labyrinth,
                             surroundings.iac, float(surroundings.iac_info["radius_mm"]), index, seed)
    return World(p, anat, placed.lin, placed.scale, placed.fit_scale, placed.grid, placed.labyrinth,
                 surroundings, fields, real)
