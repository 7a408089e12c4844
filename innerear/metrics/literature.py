"""Published human inner-ear morphometry, and measured values compared with it.

The table is package data: ``innerear/metrics/reference/morphometry.csv`` (one row per
source and quantity; at most one ``chosen=yes`` row per quantity; ``README.md`` next to it
says which source was chosen and why). :func:`reference_table` reads the chosen rows;
:func:`compare` sets measurements (e.g. :class:`~innerear.metrics.morphometry.Morphometry`
of several phantoms) against them:

* the **reference band**: mean +- 1 SD, else the interquartile range, else min-max;
* the **plausible limits**: the published min-max widened by 10 % (min x 0.9, max x 1.1),
  else mean +- 3 SD; none for a mean alone.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_CSV: Path = Path(__file__).resolve().parent / "reference" / "morphometry.csv"
COLUMNS = ("quantity", "unit", "mean", "sd", "q1", "q3", "min", "max", "n", "modality", "wall_or_definition",
           "source_short", "doi", "chosen", "note")
_NAN = float("nan")


@dataclass(frozen=True)
class Reference:
    """One row of the reference table (NaN where the source gives no number)."""

    quantity: str
    unit: str
    mean: float
    sd: float
    q1: float
    q3: float
    min: float
    max: float
    n: str  # as published: "30", "480 ears", "4708 cochleae / 56 studies", or ""
    modality: str
    definition: str
    source: str
    doi: str
    chosen: bool
    note: str

    def band(self) -> tuple[float, float, str] | None:
        """(low, high, kind): mean +- SD, else IQR, else min-max; ``None`` without either."""
        if math.isfinite(self.mean) and math.isfinite(self.sd):
            return self.mean - self.sd, self.mean + self.sd, "mean +- SD"
        if math.isfinite(self.q1) and math.isfinite(self.q3):
            return self.q1, self.q3, "IQR"
        if math.isfinite(self.min) and math.isfinite(self.max):
            return self.min, self.max, "min-max"
        return None

    def limits(self) -> tuple[float, float, str] | None:
        """(low, high, kind): published min-max widened by 10 %, else mean +- 3 SD; else ``None``."""
        if math.isfinite(self.min) and math.isfinite(self.max):
            return 0.9 * self.min, 1.1 * self.max, "min x 0.9 - max x 1.1"
        if math.isfinite(self.mean) and math.isfinite(self.sd):
            return self.mean - 3 * self.sd, self.mean + 3 * self.sd, "mean +- 3 SD"
        return None


def _num(text: str) -> float:
    return float(text) if text.strip() else _NAN


def read_references(path: Path | str = REFERENCE_CSV) -> list[Reference]:
    """Every row of the reference table (chosen or not), in file order."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(COLUMNS)}")
        return [Reference(r["quantity"], r["unit"], *(_num(r[k]) for k in ("mean", "sd", "q1", "q3", "min", "max")),
                          r["n"], r["modality"], r["wall_or_definition"], r["source_short"], r["doi"],
                          r["chosen"].strip().lower() == "yes", r["note"]) for r in reader]


def reference_table(path: Path | str = REFERENCE_CSV) -> dict[str, Reference]:
    """The chosen reference of each quantity that has one (``ValueError`` if a quantity has two)."""
    table: dict[str, Reference] = {}
    for ref in read_references(path):
        if ref.chosen:
            if ref.quantity in table:
                raise ValueError(f"{path}: two chosen rows for {ref.quantity}")
            table[ref.quantity] = ref
    return table


@dataclass(frozen=True)
class Comparison:
    """Measured values of one quantity against its reference."""

    quantity: str
    unit: str
    n_measured: int  # finite measured values
    median: float
    low: float  # smallest measured value
    high: float  # largest
    reference_mean: float
    band: tuple[float, float] | None
    band_kind: str
    median_in_band: bool | None  # None: no band, or nothing measured
    limits: tuple[float, float] | None
    limits_kind: str
    all_within_limits: bool | None  # None: no limits, or nothing measured
    source: str
    doi: str


def _values(item) -> Mapping[str, float]:
    """A measurement's values by quantity: a mapping as it is, else ``item.values()``."""
    return item if isinstance(item, Mapping) else item.values()


def compare(measured: Sequence, table: Mapping[str, Reference] | None = None) -> list[Comparison]:
    """For each quantity that has a chosen reference and is among the measurements (objects
    with ``values()`` such as ``Morphometry``, or mappings of quantity -> value): the measured
    median and range, the reference band and limits, and whether the median lies in the band
    and every value within the limits. NaN measurements are left out."""
    table = reference_table() if table is None else table
    rows = [_values(m) for m in measured]
    out = []
    for q, ref in table.items():
        if not any(q in r for r in rows):
            continue
        v = np.array([float(r[q]) for r in rows if q in r], float)
        v = v[np.isfinite(v)]
        band, limits = ref.band(), ref.limits()
        med = float(np.median(v)) if len(v) else _NAN
        out.append(Comparison(
            q, ref.unit, len(v), med, float(v.min()) if len(v) else _NAN, float(v.max()) if len(v) else _NAN,
            ref.mean, band[:2] if band else None, band[2] if band else "",
            bool(band[0] <= med <= band[1]) if band and len(v) else None,
            limits[:2] if limits else None, limits[2] if limits else "",
            bool(((v >= limits[0]) & (v <= limits[1])).all()) if limits and len(v) else None, ref.source, ref.doi))
    return out


#: a quantity whose source gives a mean only (no spread): its median must lie this close to it
MEAN_ONLY_TOLERANCE = 0.15


def mean_only(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The measured quantities whose reference has a mean but no band."""
    return [c for c in comparisons if c.band is None and c.n_measured and math.isfinite(c.reference_mean)]


def near_mean(c: Comparison, tolerance: float = MEAN_ONLY_TOLERANCE) -> bool:
    """Whether ``c``'s median lies within ``tolerance`` (a fraction) of its reference mean."""
    return abs(c.median / c.reference_mean - 1.0) <= tolerance


def format_comparisons(rows: Sequence[Comparison]) -> str:
    """A plain-text table of comparisons (for a report or a terminal)."""
    def f(x: float) -> str:
        return "nan" if not math.isfinite(x) else f"{x:.3g}"

    def yn(b: bool | None) -> str:
        return "-" if b is None else ("yes" if b else "NO")

    head = f"{'quantity':<26} {'unit':<5} {'median':>7} {'range':>15} {'ref':>7} {'band':>15} in  {'limits':>15} ok"
    lines = [head, "-" * len(head)]
    for c in rows:
        band = f"{f(c.band[0])}-{f(c.band[1])}" if c.band else "-"
        lim = f"{f(c.limits[0])}-{f(c.limits[1])}" if c.limits else "-"
        lines.append(f"{c.quantity:<26} {c.unit:<5} {f(c.median):>7} {f(c.low) + '-' + f(c.high):>15} "
                     f"{f(c.reference_mean):>7} {band:>15} {yn(c.median_in_band):<3} {lim:>15} {yn(c.all_within_limits)}")
    return "\n".join(lines)


_WORDS = {"asc": "anterior canal", "psc": "posterior canal", "lsc": "lateral canal", "cdl": "duct length",
          "a": "A", "b": "B", "corti": "Corti"}
UNIT_TEXT = {"mm3": "mm³", "mm2": "mm²", "mm": "mm", "deg": "°", "turns": "turns"}


def quantity_title(quantity: str) -> str:
    """A quantity id for people: ``cochlea_volume_mm3`` -> ``Cochlea volume``."""
    if quantity.startswith("angle_"):
        a, b = quantity[len("angle_"):-len("_deg")].split("_")
        return f"Angle {_WORDS[a]} / {_WORDS[b]}"
    words = quantity.split("_")
    if words[-1] in UNIT_TEXT and len(words) > 2:  # the unit suffix (not "cochlea_turns")
        words = words[:-1]
    text = " ".join(_WORDS.get(w, w) for w in words)
    return text[:1].upper() + text[1:]
