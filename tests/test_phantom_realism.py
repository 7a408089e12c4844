"""Anatomy realism of the phantoms (issue 13): each feature measured from the voxels."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from innerear.data import phantom as ph
from innerear.settings.profiles import get_profile
from innerear.metrics import largest_component
from innerear.data.phantom.specimen import (T_AIR, T_AQUEDUCT, T_BONE, T_LUMEN, T_LUMEN_AIR, T_MIDDLE_EAR, T_NERVE,
                                            T_SEPTUM, TISSUES)
from innerear.settings.structures import COCHLEA

DEMO = get_profile("demo").phantoms  # ~0.13-0.16 mm voxels, under a second a specimen
FULL = ph.AnatomyRealism.full()
CUBE = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def plain():
    return ph.generate_specimen(0, 0, DEMO, with_tissue=True)


@pytest.fixture(scope="module")
def real():
    return ph.generate_specimen(0, 0, DEMO, with_tissue=True, realism=FULL)


def _touching(spec, code: int) -> int:
    """Voxels of tissue ``code`` 26-adjacent to the label."""
    near = ndimage.binary_dilation(spec.label > 0, CUBE)
    return int(np.count_nonzero((spec.tissue == code) & near))


def _interior(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(mask, CUBE)


def test_realism_off_changes_nothing(plain):
    again = ph.generate_specimen(0, 0, DEMO, with_tissue=True, realism=None)
    for k in ("image", "label", "structures", "tissue"):
        assert np.array_equal(getattr(again, k), getattr(plain, k)), k
    meta = {k: v for k, v in again.meta.items() if k != "seconds"}
    assert meta == {k: v for k, v in plain.meta.items() if k != "seconds"}
    assert "realism" not in plain.meta
    assert set(np.unique(plain.tissue)) <= {0, 1, 2, 3, 4, 5}


def test_realism_with_everything_off_draws_the_plain_phantom(plain):
    spec = ph.generate_specimen(0, 0, DEMO, with_tissue=True, realism=ph.AnatomyRealism())
    for k in ("image", "label", "structures", "tissue"):
        assert np.array_equal(getattr(spec, k), getattr(plain, k)), k
    assert spec.meta["realism"]["options"] == dataclasses.asdict(ph.AnatomyRealism())


def test_label_is_unchanged_and_realism_recorded(plain, real):
    assert np.array_equal(real.label, plain.label)
    assert np.array_equal(real.structures, plain.structures)
    assert real.image.shape == plain.image.shape and not np.array_equal(real.image, plain.image)
    info = real.meta["realism"]
    assert info["options"] == dataclasses.asdict(FULL)
    for key in ("fundus", "cochlear_aqueduct", "vestibular_aqueduct", "windows", "septum", "bubbles", "honeycomb"):
        assert key in info, key
    assert {6: "aqueduct", 7: "middle_ear_air", 8: "septum", 9: "lumen_air"}.items() <= TISSUES.items()
    # deterministic
    again = ph.generate_specimen(0, 0, DEMO, realism=FULL)
    assert np.array_equal(again.image, real.image)


def test_plain_phantom_keeps_dark_tissue_off_the_label(plain):
    for code in (T_AIR, T_NERVE, T_AQUEDUCT, T_MIDDLE_EAR):
        assert _touching(plain, code) == 0


def _dark_labyrinth(real) -> np.ndarray:
    """The largest dark component (threshold halfway between the fluid and the otic capsule
    next to the lumen) of the label and the structures attached to it."""
    img = ndimage.gaussian_filter(real.image.astype(np.float32), 0.7)
    lab = real.label > 0
    shell = (ndimage.binary_dilation(lab, CUBE, iterations=3) & ~ndimage.binary_dilation(lab, CUBE)
             & (real.tissue == T_BONE))
    thr = 0.5 * (np.median(img[_interior(real.tissue == T_LUMEN)]) + np.median(img[shell]))
    attached = np.isin(real.tissue, (T_NERVE, T_AQUEDUCT, T_MIDDLE_EAR))
    return largest_component((img < thr) & (lab | attached))


def test_aqueducts_survive_largest_component_in_most_specimens(real):
    """The aqueducts' narrow parts (the vestibular one ~0.45-0.7 mm, 3-4 demo voxels) sit at the
    halfway threshold when a specimen's point spread is wide: over specimens 0-3 most of the
    aqueduct voxels stay in the labyrinth's dark component (specimen 0 alone is the worst case)."""
    shares = []
    for index in range(4):
        spec = real if index == 0 else ph.generate_specimen(index, 0, DEMO, with_tissue=True, realism=FULL)
        aq = spec.tissue == T_AQUEDUCT
        assert _touching(spec, T_AQUEDUCT) > 0
        shares.append(np.count_nonzero(_dark_labyrinth(spec) & aq) / np.count_nonzero(aq))
    assert np.median(shares) > 0.4, shares


def test_attached_structures_touch_the_label_and_survive_largest_component(real):
    """The IAC fundus, both aqueducts and the windows touch the label, are dark in the image,
    and the largest dark component that holds the labyrinth holds them too."""
    lab = real.label > 0
    keep = _dark_labyrinth(real)
    assert np.count_nonzero(keep & lab) > 0.8 * np.count_nonzero(lab)
    # the thin aqueducts are partly lost to partial volume, as in real scans (the aqueducts'
    # share: test_aqueducts_survive_largest_component_in_most_specimens)
    for code, share in ((T_NERVE, 0.8), (T_MIDDLE_EAR, 0.8)):
        tissue = real.tissue == code
        assert _touching(real, code) > 0, TISSUES[code]
        assert np.count_nonzero(keep & tissue) > share * np.count_nonzero(tissue), TISSUES[code]
    # each aqueduct on its own (two fluid canals) reaches the label
    comps, n = ndimage.label(real.tissue == T_AQUEDUCT, CUBE)
    assert n >= 2
    sizes = np.bincount(comps.ravel())[1:]
    near = ndimage.binary_dilation(lab, CUBE)
    for c in np.argsort(sizes)[::-1][:2] + 1:
        assert np.any(near & (comps == c))
    # the anatomy drawn: aqueducts and windows of the sizes of real ones
    info = real.meta["realism"]
    assert 0.1 <= info["cochlear_aqueduct"]["diameter_mm"][0] <= 0.35
    assert 0.7 <= info["cochlear_aqueduct"]["diameter_mm"][1] <= 1.3
    assert 7.0 <= info["vestibular_aqueduct"]["length_mm"] <= 11.0
    assert 1.3 <= info["windows"]["round_window_mm"] <= 2.2


def _septum_step(spec, sept: np.ndarray, tissue: np.ndarray) -> tuple[float, float]:
    """Mean of (septum voxel - darkest lumen voxel within 4 voxels along the modiolar axis),
    on each side of the septum."""
    img = spec.image.astype(np.float64)
    axis = np.asarray(spec.meta["modiolar_axis_world"])
    sides = []
    for sign in (1, -1):
        best = np.full(len(sept), np.inf)
        for k in np.arange(1.0, 4.01, 0.5):
            q = np.rint(sept + sign * k * axis).astype(int)
            ok = (q >= 0).all(1) & (q < np.array(img.shape)).all(1)
            q = np.where(ok[:, None], q, 0)
            ok &= tissue[tuple(q.T)] == T_LUMEN
            best = np.where(ok, np.minimum(best, img[tuple(q.T)]), best)
        sides.append(best)
    ok = np.isfinite(sides[0]) & np.isfinite(sides[1])
    assert ok.sum() > 100
    v = img[tuple(sept[ok].T)]
    return float(np.mean(v - sides[0][ok])), float(np.mean(v - sides[1][ok]))


def test_septum_divides_the_cochlear_lumen_into_two_scalae():
    """A brighter sheet (osseous spiral lamina + basilar membrane) with darker lumen on both
    sides; measured at 4x binning (~70 um voxels), where a 0.05-0.12 mm septum is resolved."""
    fine = dataclasses.replace(DEMO, binning=4)
    spec = ph.generate_specimen(0, 0, fine, with_tissue=True, realism=ph.AnatomyRealism(scalae=True))
    base = ph.generate_specimen(0, 0, fine)
    assert np.array_equal(spec.label, base.label)
    sept = np.argwhere(spec.tissue == T_SEPTUM)
    assert len(sept) > 500 and np.all(spec.structures[tuple(sept.T)] == COCHLEA)
    contrast = spec.meta["imaging"]["i_capsule"] - spec.meta["imaging"]["i_lumen"]
    up, down = _septum_step(spec, sept, spec.tissue)
    up0, down0 = _septum_step(base, sept, spec.tissue)
    assert min(up, down) > 0.05 * contrast
    assert up - up0 > 0.04 * contrast and down - down0 > 0.04 * contrast


def test_air_is_darker_than_fluid(plain, real):
    img = real.image.astype(np.float64)
    fluid = np.median(img[_interior(real.tissue == T_LUMEN)])
    for code in (T_AIR, T_MIDDLE_EAR):
        assert np.median(img[_interior(real.tissue == code)]) < 0.75 * fluid, TISSUES[code]
    # the plain phantoms: air cells as bright as the lumen or brighter (what issue 13 found)
    pimg = plain.image.astype(np.float64)
    assert np.median(pimg[_interior(plain.tissue == T_AIR)]) > 0.9 * np.median(pimg[_interior(plain.tissue == T_LUMEN)])


def test_air_in_the_lumen():
    opts = dataclasses.replace(FULL, bubbles=1.0)
    spec = ph.generate_specimen(1, 0, DEMO, with_tissue=True, realism=opts)
    air = spec.tissue == T_LUMEN_AIR
    assert air.any() and np.all(spec.label[air] > 0)
    assert spec.meta["realism"]["bubbles"]["air_in_lumen"] is True
    none = ph.generate_specimen(1, 0, DEMO, with_tissue=True, realism=dataclasses.replace(FULL, bubbles=0.0))
    assert not np.any(none.tissue == T_LUMEN_AIR)
    assert np.array_equal(none.label, spec.label)
    # the same voxels are darker with air than with fluid
    inner = _interior(air)
    assert inner.sum() > 20
    fluid = np.mean(none.image[inner].astype(np.float64))
    assert np.mean(spec.image[inner].astype(np.float64)) < fluid - 0.1 * spec.meta["imaging"]["i_lumen"]
    with pytest.raises(ValueError, match="bubbles"):
        ph.AnatomyRealism(bubbles=1.5)


def test_mastoid_honeycomb_is_one_network_of_many_cells(real):
    air = real.tissue == T_AIR
    assert _touching(real, T_AIR) == 0
    assert real.meta["n_air_cells"] == 0 and real.meta["air_cells"] == []  # no isolated spheres
    comps, n = ndimage.label(air, CUBE)
    sizes = np.bincount(comps.ravel())[1:]
    biggest = comps == (np.argmax(sizes) + 1)
    assert sizes.max() > 0.8 * air.sum()
    # many cells: local maxima of the distance to the septa within the network
    from skimage.feature import peak_local_max
    dist = ndimage.distance_transform_edt(biggest)
    assert len(peak_local_max(dist, min_distance=2, labels=biggest.astype(int))) > 30
    # thin bony septa between them, brighter than the air inside the cells (the air voxels next
    # to a septum are brightened by the blur, as in a real scan)
    septa = ndimage.binary_closing(air, CUBE, iterations=2) & ~air
    assert septa.sum() > 0.1 * air.sum()
    img = real.image.astype(np.float64)
    assert np.mean(img[septa]) > 2.0 * np.mean(img[_interior(air)])


def test_features_draw_from_their_own_streams():
    """Turning one feature off leaves what the others drew unchanged."""
    a = ph.generate_specimen(2, 0, DEMO, realism=FULL).meta["realism"]
    b = ph.generate_specimen(2, 0, DEMO, realism=dataclasses.replace(FULL, honeycomb=False, scalae=False)).meta[
        "realism"]
    for key in ("fundus", "cochlear_aqueduct", "vestibular_aqueduct", "windows", "bubbles"):
        assert a[key] == b[key], key
    assert "honeycomb" not in b and "septum" not in b


def test_realism_at_smoke_size(tmp_path):
    smoke = get_profile("smoke").phantoms
    plain = ph.generate_specimen(3, 0, smoke)
    spec = ph.generate_specimen(3, 0, smoke, with_tissue=True, realism=FULL)
    assert np.array_equal(spec.label, plain.label)
    for code in (T_NERVE, T_AQUEDUCT, T_MIDDLE_EAR):
        assert _touching(spec, code) > 0, TISSUES[code]
    entry = ph.write_specimen(spec, tmp_path)  # the meta (with what realism drew) is JSON
    assert entry["meta"]["realism"]["options"]["honeycomb"] is True
