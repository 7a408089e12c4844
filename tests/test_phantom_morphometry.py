"""The phantoms' anatomy against human morphometry (issue 21).

Twelve demo-resolution phantoms (seed 0) are measured with
:func:`innerear.metrics.morphometry.measure_morphometry` and compared
(:func:`innerear.metrics.literature.compare`) with the chosen reference of every quantity
that has one: the median must lie in the reference band (mean +- SD, else IQR, else
min-max) and every phantom within the plausible limits (min x 0.9 to max x 1.1, else
mean +- 3 SD). Quantities with a mean only (no spread published) have neither: their median
must lie within ``MEAN_ONLY_TOLERANCE`` of that mean (``innerear/metrics/reference/README.md`` lists them). ``benchmarks/bench_morphometry.py``
runs the same comparison on 100 phantoms.
"""
from __future__ import annotations

import pytest

from innerear.data.phantom import generate_specimen
from innerear.metrics.literature import MEAN_ONLY_TOLERANCE, compare, format_comparisons, mean_only, near_mean
from innerear.metrics.morphometry import measure_morphometry
from innerear.settings.profiles import get_profile

N_PHANTOMS = 12
SEED = 0


@pytest.fixture(scope="module")
def comparisons():
    settings = get_profile("demo").phantoms
    measured = []
    for i in range(N_PHANTOMS):
        sp = generate_specimen(i, SEED, settings)
        measured.append(measure_morphometry(sp.structures, sp.affine))
    return compare(measured)


def _failing(comparisons, verdict: str) -> list[str]:
    """The quantities judged by ``verdict`` (a Comparison field: True, False or None) that fail;
    at least 13 quantities must be judged."""
    judged = [c for c in comparisons if getattr(c, verdict) is not None]
    assert len(judged) >= 13, format_comparisons(comparisons)
    return [c.quantity for c in judged if not getattr(c, verdict)]


@pytest.mark.slow
def test_medians_inside_the_reference_bands(comparisons):
    bad = _failing(comparisons, "median_in_band")
    assert not bad, f"medians outside the band: {bad}\n{format_comparisons(comparisons)}"


@pytest.mark.slow
def test_every_phantom_within_the_plausible_limits(comparisons):
    bad = _failing(comparisons, "all_within_limits")
    assert not bad, f"phantoms outside the limits: {bad}\n{format_comparisons(comparisons)}"


@pytest.mark.slow
def test_every_quantity_measured_on_every_phantom(comparisons):
    short = [(c.quantity, c.n_measured) for c in comparisons if c.n_measured < N_PHANTOMS]
    assert not short, short


@pytest.mark.slow
def test_mean_only_quantities_near_the_published_mean(comparisons):
    only = mean_only(comparisons)
    assert len(only) >= 6, format_comparisons(comparisons)
    bad = [(c.quantity, round(c.median, 2), c.reference_mean) for c in only if not near_mean(c)]
    assert not bad, f"medians farther than {MEAN_ONLY_TOLERANCE:.0%} from the published mean: {bad}"
