"""The structure table: the one home of the inner ear's structures, their label values and colours.

A structure label map holds 0 for background and one value per structure. Every reader and
writer of such maps (the phantom generator, the multi-class networks, the per-structure
metrics, the report of ``innerear segment``) takes names and values from here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Structure:
    """One labelled structure of the inner ear."""

    value: int  # its value in a structure label map
    name: str  # lower-case name, used in column names and reports
    title: str  # for people (tables, legends)
    colour: str  # hex RGB, for figures and segmentation files


TABLE: tuple[Structure, ...] = (
    Structure(1, "cochlea", "Cochlea", "#e6b400"),
    Structure(2, "vestibule", "Vestibule", "#2ca02c"),
    Structure(3, "canals", "Semicircular canals", "#1f77b4"),
)

COCHLEA, VESTIBULE, CANALS = (s.value for s in TABLE)

#: foreground structures by label value
STRUCTURE_NAMES: dict[int, str] = {s.value: s.name for s in TABLE}
#: every class of a structure label map, background (0) first
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(s.name for s in TABLE)
#: label value -> name, with background
STRUCTURES: dict[int, str] = dict(enumerate(CLASS_NAMES))
