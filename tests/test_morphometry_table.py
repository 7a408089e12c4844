"""The phantoms-vs-literature table reads as a reader expects: a source that publishes a range
only says so, and nothing reads "nan"."""
from __future__ import annotations

import math

from innerear.metrics.literature import Comparison
from innerear.reporting.figures import morphometry_table


def _comparison(mean: float, band) -> Comparison:
    return Comparison("lsc_arc_length_mm", "mm", 12, 13.7, 11.4, 15.4, mean, band, "min-max", True,
                      (10.8, 16.5), "min-max +- 10 %", True, "Gray's Anatomy 1918", "")


def test_a_range_only_source_is_not_called_not_measured():
    table = morphometry_table([_comparison(math.nan, (12.0, 15.0))])
    cell = table.iloc[0]["literature: mean (band)"]
    assert cell.startswith("range only (12–15") and "not measured" not in cell
    assert "nan" not in table.to_string().lower()


def test_a_mean_with_its_band():
    cell = morphometry_table([_comparison(13.5, (12.0, 15.0))]).iloc[0]["literature: mean (band)"]
    assert cell.startswith("13.5 (12–15")
