"""Inner-ear morphometry from a structure label map, and the literature table it is compared with."""
import math
import re

import numpy as np
import pytest

from innerear.data.phantom import generate_specimen
from innerear.metrics.canals import canal_arcs, fit_circle, measure_canals
from innerear.metrics.literature import Reference, compare, read_references, reference_table
from innerear.metrics.morphometry import QUANTITIES, Morphometry, measure_morphometry, measure_vestibule
from innerear.settings.profiles import PhantomSettings
from innerear.settings.structures import CANALS, VESTIBULE


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _grid(lo, hi, vox):
    axes = [np.arange(a, b + vox / 2, vox) for a, b in zip(lo, hi)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    aff = np.diag([vox, vox, vox, 1.0])
    aff[:3, 3] = [a[0] for a in axes]
    return pts, aff


def _torus(pts, centre, normal, big_r, small_r):
    rel = pts - np.asarray(centre, float)
    h = rel @ np.asarray(normal, float)
    rho = np.linalg.norm(rel - h[..., None] * np.asarray(normal, float), axis=-1)
    return (rho - big_r) ** 2 + h ** 2 <= small_r ** 2


R, r, BALL = 3.0, 0.45, 1.5
# the centreline leaves the ball where 2 R^2 (1 + cos t) = BALL^2: the arc outside it
ARC = R * 2 * math.acos(BALL ** 2 / (2 * R * R) - 1.0)


def test_one_torus_canal_at_fine_voxels():
    """A canal circle through a ball 'vestibule' (0.05 mm voxels): radius, lumen, length."""
    pts, aff = _grid((-BALL - 0.1, -R - r - 0.1, -0.6), (2 * R + r + 0.1, R + r + 0.1, 0.6), 0.05)
    st = np.zeros(pts.shape[:3], np.uint8)
    st[_torus(pts, (R, 0, 0), (0, 0, 1), R, r)] = CANALS
    st[(pts ** 2).sum(-1) <= BALL ** 2] = VESTIBULE
    arcs, problems = canal_arcs(st, aff)
    assert len(arcs) == 1 and not problems
    arc = arcs[0][0]
    assert arc.radius_mm == pytest.approx(R, rel=0.05)
    assert arc.lumen_diameter_mm == pytest.approx(2 * r, rel=0.10)
    assert arc.arc_length_mm == pytest.approx(ARC, rel=0.05)
    assert abs(arc.normal[2]) > 0.999


def test_three_orthogonal_tori_rotated():
    """Three canals in mutually orthogonal planes, posed obliquely: three arcs, 90 deg apart."""
    rot = _rotation(3)
    pts, aff = _grid((-7.2,) * 3, (7.2,) * 3, 0.1)
    local = pts @ rot  # the scene is built in a rotated frame
    st = np.zeros(pts.shape[:3], np.uint8)
    for c, n in (((R, 0, 0), (0, 0, 1)), ((0, R, 0), (1, 0, 0)), ((0, 0, -R), (0, 1, 0))):
        st[_torus(local, c, n, R, r)] = CANALS
    st[(pts ** 2).sum(-1) <= BALL ** 2] = VESTIBULE
    canals = measure_canals(st, aff)
    assert set(canals.arcs) == {"asc", "psc", "lsc"} and all(a is not None for a in canals.arcs.values())
    assert "no common crus" in canals.naming  # three separate arcs: named by orientation, and said so
    for arc in canals.arcs.values():
        assert arc.radius_mm == pytest.approx(R, rel=0.05)
        assert arc.lumen_diameter_mm == pytest.approx(2 * r, rel=0.10)
        assert arc.arc_length_mm == pytest.approx(ARC, rel=0.05)
    for a, b in (("asc", "psc"), ("asc", "lsc"), ("psc", "lsc")):
        assert canals.angle(a, b) == pytest.approx(90.0, abs=3.0)


def test_circle_fit_ignores_a_limb():
    t = np.linspace(0, 1.4 * math.pi, 200)
    arc = np.stack([2.5 * np.cos(t), 2.5 * np.sin(t), np.zeros_like(t)], 1)
    inward = -arc[-1] / np.linalg.norm(arc[-1])
    limb = arc[-1] + np.outer(np.linspace(0.05, 2.0, 40), 0.8 * inward + [0.0, 0.0, -0.6])  # towards an ampulla
    pts = np.concatenate([arc, limb])
    radius, centre, normal = fit_circle(pts)
    plain = fit_circle(pts, trim=False)[0]
    assert radius == pytest.approx(2.5, rel=0.03) and abs(normal[2]) > 0.995
    assert abs(plain - 2.5) > 2 * abs(radius - 2.5)  # the limb bends an untrimmed fit


def test_vestibule_ellipsoid_extents_and_volume():
    semi = np.array([2.9, 1.2, 2.5])  # length 5.8, width 2.4, height 5.0
    pts, aff = _grid((-3.2,) * 3, (3.2,) * 3, 0.05)
    local = pts @ _rotation(5)
    st = np.where(((local / semi) ** 2).sum(-1) <= 1.0, VESTIBULE, 0).astype(np.uint8)
    length, width, height = measure_vestibule(st, aff)
    assert (length, width, height) == (pytest.approx(5.8, rel=0.03), pytest.approx(2.4, rel=0.03),
                                       pytest.approx(5.0, rel=0.03))
    m = measure_morphometry(st, aff)
    assert m.vestibule_volume_mm3 == pytest.approx(4 / 3 * math.pi * semi.prod(), rel=0.03)
    assert math.isnan(m.cochlea_volume_mm3) and math.isnan(m.asc_radius_mm)
    assert "cochlea" in m.notes["cochlea_a_value_mm"] and "canal" in m.notes["asc_radius_mm"]


def test_bad_input_raises_and_missing_anatomy_does_not():
    with pytest.raises(ValueError, match="3D"):
        measure_morphometry(np.zeros((4, 4), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        measure_morphometry(np.zeros((4, 4, 4), np.uint8), np.eye(3))
    with pytest.raises(ValueError, match="invertible"):
        measure_morphometry(np.zeros((4, 4, 4), np.uint8), np.diag([1.0, 0.0, 1.0, 1.0]))
    m = measure_morphometry(np.zeros((6, 6, 6), np.uint8), np.eye(4))
    assert all(math.isnan(v) for v in m.values().values())
    assert set(QUANTITIES) <= set(m.notes)  # every NaN says why


# --------------------------------------------------------------------------- phantoms
@pytest.fixture(scope="module")
def fine_phantom():
    return generate_specimen(0, 11, PhantomSettings(n_specimens=3, binning=10))


def test_phantom_every_quantity_measured(fine_phantom):
    sp = fine_phantom
    m = measure_morphometry(sp.structures, sp.affine)
    for q, v in m.values().items():
        if q == "apical_turn_area_mm2" and not math.isfinite(v):
            assert "spans" in m.notes[q]  # a duct shorter than 910 deg has no apical wedge
            continue
        assert math.isfinite(v), (q, m.notes.get(q))
    truth, scale = sp.meta["anatomy"], sp.meta["scale"]
    assert m.cochlea_volume_mm3 + m.vestibule_volume_mm3 + m.canals_volume_mm3 == pytest.approx(
        m.labyrinth_volume_mm3)
    assert m.cochlea_turns == pytest.approx(truth["turns"], abs=0.15)
    assert m.cochlea_a_value_mm == pytest.approx(truth["cochlea_A_mm"] * scale, rel=0.10)
    assert m.cochlea_b_value_mm == pytest.approx(truth["cochlea_B_mm"] * scale, rel=0.10)
    assert m.basal_turn_area_mm2 > m.middle_turn_area_mm2  # the duct narrows towards the apex
    # canals named as the generator built them (the posterior is its largest, the lateral its smallest)
    radii = truth["canal_radius_of_curvature_mm"]
    for name, key in (("asc", "anterior"), ("psc", "posterior"), ("lsc", "lateral")):
        assert getattr(m, f"{name}_radius_mm") == pytest.approx(radii[key] * scale, rel=0.15), name
        assert getattr(m, f"{name}_lumen_diameter_mm") == pytest.approx(
            truth["canal_lumen_diameter_mm"] * scale, rel=0.15), name
    angles = truth["canal_plane_angles_deg"]
    for (a, b), key in ((("asc", "psc"), "anterior_posterior"), (("asc", "lsc"), "anterior_lateral"),
                        (("psc", "lsc"), "posterior_lateral")):
        assert getattr(m, f"angle_{a}_{b}_deg") == pytest.approx(angles[key], abs=6.0)


def test_coarse_phantom_three_canals():
    sp = generate_specimen(0, 11, PhantomSettings(n_specimens=1, binning=12))  # ~0.2-0.23 mm: a canal lumen is 4 voxels
    canals = measure_canals(sp.structures, sp.affine)
    assert all(canals.arcs[k] is not None for k in ("asc", "psc", "lsc")), canals.notes
    assert "crus" in canals.naming and "no common crus" not in canals.naming
    assert canals.arcs["lsc"].radius_mm < min(canals.arcs["asc"].radius_mm, canals.arcs["psc"].radius_mm)


# --------------------------------------------------------------------------- the reference table
_UNIT = {"_mm3": "mm3", "_mm2": "mm2", "_mm": "mm", "_deg": "deg", "turns": "turns"}
NO_CHOSEN = {"scala_vestibuli_volume_mm3", "vestibule_volume_mm3", "canals_volume_mm3", "labyrinth_volume_mm3",
             "middle_turn_area_mm2", "apical_turn_area_mm2",
             # the only values found for these are from memory (UNVERIFIED), never a reference
             "asc_radius_mm", "psc_radius_mm", "lsc_radius_mm"}


def test_reference_table_is_consistent():
    rows = read_references()
    table = reference_table()
    assert {r.quantity for r in rows} - set(table) == NO_CHOSEN
    assert set(QUANTITIES) - set(table) == NO_CHOSEN - {"scala_vestibuli_volume_mm3"}
    for ref in rows:
        unit = next(u for suffix, u in _UNIT.items() if ref.quantity.endswith(suffix))
        assert ref.unit == unit, ref.quantity
    for ref in table.values():
        assert math.isfinite(ref.mean) or ref.band() is not None, ref.quantity
        assert not ref.note.upper().startswith("UNVERIFIED"), f"{ref.quantity}: a number from memory is no reference"
        assert ref.doi.startswith("10.") or re.search(
            r"DOI|PMID|UNVERIFIED|DERIVED|not captured|no source", ref.note), f"{ref.quantity}: no DOI, no reason"
    # the honest markers of the compiled table survive the copy
    assert next(r for r in rows if r.quantity == "asc_radius_mm").note.startswith("UNVERIFIED")
    assert table["basal_turn_area_mm2"].note.startswith("DERIVED")
    assert any(r.note.startswith("SECONDARY ONLY") for r in rows if r.quantity == "cochlea_volume_mm3")


def _ref(**kw) -> Reference:
    base = dict(quantity="x_mm", unit="mm", mean=math.nan, sd=math.nan, q1=math.nan, q3=math.nan, min=math.nan,
                max=math.nan, n="", modality="", definition="", source="S", doi="10.1/x", chosen=True, note="")
    return Reference(**{**base, **kw})


def test_compare_on_planted_numbers():
    table = {"cochlea_a_value_mm": _ref(quantity="cochlea_a_value_mm", mean=9.0, sd=0.5),
             "cochlea_height_mm": _ref(quantity="cochlea_height_mm", mean=5.0, min=3.0, max=7.0),
             "cochlea_turns": _ref(quantity="cochlea_turns", unit="turns", q1=2.4, q3=2.7),
             "cochlea_volume_mm3": _ref(quantity="cochlea_volume_mm3", unit="mm3", mean=55.9),
             "not_measured_mm": _ref(quantity="not_measured_mm", mean=1.0, sd=0.1)}
    measured = [Morphometry(cochlea_a_value_mm=8.0, cochlea_height_mm=3.1, cochlea_turns=2.5, cochlea_volume_mm3=20.0),
                Morphometry(cochlea_a_value_mm=8.4, cochlea_height_mm=2.6, cochlea_turns=2.6),
                {"cochlea_a_value_mm": 8.6, "cochlea_height_mm": 7.8, "cochlea_turns": math.nan}]
    rows = {c.quantity: c for c in compare(measured, table)}
    assert set(rows) == {"cochlea_a_value_mm", "cochlea_height_mm", "cochlea_turns", "cochlea_volume_mm3"}
    a = rows["cochlea_a_value_mm"]
    assert (a.median, a.low, a.high, a.n_measured) == (8.4, 8.0, 8.6, 3)
    assert a.band == (8.5, 9.5) and a.median_in_band is False
    assert a.limits == (pytest.approx(7.5), pytest.approx(10.5)) and a.all_within_limits is True
    h = rows["cochlea_height_mm"]  # min-max band; limits 2.7-7.7: 2.6 and 7.8 fall outside
    assert h.band == (3.0, 7.0) and h.median_in_band is True and h.all_within_limits is False
    t = rows["cochlea_turns"]
    assert t.n_measured == 2 and t.band == (2.4, 2.7) and t.band_kind == "IQR" and t.limits is None
    v = rows["cochlea_volume_mm3"]
    assert v.n_measured == 1 and v.band is None and v.median_in_band is None and v.all_within_limits is None
