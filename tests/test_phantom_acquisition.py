"""Acquisition realism of the phantom generator, each feature measured from the voxels:
field of view and voxel size, cochlea crops, units, correlated noise, rings, cupping,
streaks and motion, label noise; without an acquisition nothing changes (golden test)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from innerear.data import phantom as ph
from innerear.settings.profiles import get_profile
from innerear.data.phantom.acquisition import Acquisition, draw_acquisition
from innerear.settings.structures import CANALS, COCHLEA

DEMO = get_profile("demo").phantoms
SEED = 3


def _gen(index: int = 0, with_tissue: bool = False, **kw) -> ph.Specimen:
    base = dict(voxel_mm=0.2, fov_mm=12.0)
    base.update(kw)
    return ph.generate_specimen(index, SEED, DEMO, with_tissue=with_tissue, acquisition=Acquisition(**base))


def _lag_corr(x: np.ndarray, mask: np.ndarray, lag: int, axis: int) -> float:
    """Correlation of ``x`` with itself shifted by ``lag`` along ``axis`` inside ``mask``."""
    a = np.moveaxis(x, axis, 0)
    m = np.moveaxis(mask, axis, 0)
    u, v, mm = a[:-lag], a[lag:], m[:-lag] & m[lag:]
    u, v = u[mm] - u[mm].mean(), v[mm] - v[mm].mean()
    return float((u * v).mean() / np.sqrt((u * u).mean() * (v * v).mean()))


def test_grid_is_the_acquisitions_field_of_view_and_voxel(tmp_path):
    spec = _gen(voxel_mm=0.25, fov_mm=(10.0, 12.0, 9.0))
    assert spec.image.shape == (40, 48, 36)
    assert np.allclose(np.diag(spec.affine)[:3], 0.25) and spec.spacing == (0.25, 0.25, 0.25)
    entry = ph.write_specimen(spec, tmp_path)
    img = nib.load(tmp_path / entry["image"])
    assert np.allclose(img.affine, spec.affine) and img.header.get_xyzt_units()[0] == "mm"
    assert np.allclose(img.header.get_zooms(), 0.25)
    assert spec.meta["acquisition"]["voxel_mm"] == 0.25


def test_cochlea_crop_holds_the_cochlea_and_cuts_the_canals():
    full = _gen(voxel_mm=0.25, fov_mm=30.0, centre="labyrinth")
    crop = _gen(voxel_mm=0.25, fov_mm=8.0, centre="cochlea")
    n_full = {k: int((full.structures == k).sum()) for k in (COCHLEA, CANALS)}
    n_crop = {k: int((crop.structures == k).sum()) for k in (COCHLEA, CANALS)}
    assert n_crop[COCHLEA] > 0.6 * n_full[COCHLEA]
    assert n_crop[CANALS] < 0.6 * n_full[CANALS]  # the canals are cut
    # the canals' label touches the border of the crop
    assert (crop.label.astype(bool) & _border(crop.label.shape)).any()


def _border(shape: tuple[int, ...]) -> np.ndarray:
    border = np.zeros(shape, bool)
    border[[0, -1]] = True
    border[:, [0, -1]] = True
    border[:, :, [0, -1]] = True
    return border


def test_hu_file_is_int16_with_air_and_capsule_in_range(tmp_path):
    spec = _gen(style="cbct", units="hu", with_tissue=True)
    entry = ph.write_specimen(spec, tmp_path)
    img = nib.load(tmp_path / entry["image"])
    assert img.get_data_dtype() == np.int16
    data = np.asarray(img.dataobj)
    assert np.array_equal(data, spec.image)
    air = ndimage.binary_erosion(spec.tissue == ph.T_AIR, iterations=2)
    assert air.sum() > 20 and -1050 < np.median(data[air]) < -850
    dist = ndimage.distance_transform_edt(spec.label == 0) * 0.2  # mm from the lumen
    capsule = (dist > 0.6) & (dist < 1.0) & (spec.tissue == ph.T_BONE)  # the dense otic capsule
    assert capsule.sum() > 100 and 1300 < np.median(data[capsule]) < 2600
    soft = ndimage.binary_erosion(spec.tissue == ph.T_NERVE, iterations=2)
    assert -60 < np.median(data[soft]) < 140


def test_uint16_and_float_units():
    u16 = _gen(style="cbct", units="uint16")
    hu = _gen(style="cbct", units="hu")
    assert u16.image.dtype == np.uint16 and hu.image.dtype == np.int16
    ok = hu.image > -1024
    assert np.abs(u16.image[ok].astype(int) - hu.image[ok].astype(int) - 1024).max() <= 1  # HU + 1024
    fl = _gen(units="float", float_scale=0.01, float_offset=-7.0)
    counts = _gen(units="uint16")
    assert fl.image.dtype == np.float32
    assert np.allclose(fl.image, counts.image.astype(np.float64) * 0.01 - 7.0, atol=0.006)
    mct = _gen(units="hu")  # micro-CT counts calibrated to HU: fluid near 0, capsule 1500-2500
    lumen = ndimage.binary_erosion(mct.label > 0, iterations=2)
    assert -150 < np.median(mct.image[lumen]) < 200


def test_correlated_noise_has_autocorrelation_that_white_noise_lacks():
    """The differences of neighbouring voxels inside the fluid are anti-correlated (-0.5) for
    white noise and positively correlated for noise with a correlation length of 1-3 voxels."""
    vals = {}
    for share in (0.0, 1.0):
        spec = _gen(voxel_mm=0.1, fov_mm=8.0, centre="cochlea", correlated_noise=share)
        inner = ndimage.binary_erosion(spec.label > 0, iterations=2)
        assert inner.sum() > 500
        x = spec.image.astype(np.float64)
        vals[share] = []
        for ax in (1, 2):
            d = np.diff(x, axis=ax)
            m = np.delete(inner, -1, axis=ax) & np.delete(inner, 0, axis=ax)
            vals[share] += [_lag_corr(d, m, lag, ax) for lag in (1, 2)]
    assert max(vals[0.0][0::2]) < -0.35 and max(np.abs(vals[0.0][1::2])) < 0.15  # white
    assert min(vals[1.0][0::2]) > 0.2  # correlated over more than one voxel


def test_rings_show_a_radial_periodic_profile():
    kw = dict(voxel_mm=0.2, fov_mm=14.0, style="cbct", units="float")
    plain, ringed = _gen(**kw), _gen(rings=1.0, **kw)
    diff = ringed.image.astype(np.float64) - plain.image
    info = ringed.meta["acquisition"]
    cx, cy = info["axis_centre_mm"]
    xs = ringed.affine[0, 3] + 0.2 * np.arange(diff.shape[0])
    ys = ringed.affine[1, 3] + 0.2 * np.arange(diff.shape[1])
    r = np.hypot(*np.meshgrid(xs - cx, ys - cy, indexing="ij"))
    assert np.allclose(diff, diff[:, :, :1], atol=1e-3)  # constant along the rotation axis
    d2 = diff[:, :, 0]
    rb = np.round(r / 0.1).astype(int)
    prof = ndimage.mean(d2, rb, index=np.unique(rb))
    explained = 1.0 - np.var(d2 - prof[np.searchsorted(np.unique(rb), rb)]) / np.var(d2)
    assert explained > 0.9  # concentric: a function of the radius alone
    _, n_rings = ndimage.label(np.abs(prof) > 0.1 * np.abs(prof).max())
    assert n_rings >= 4  # separate rings along the radius
    assert np.abs(d2).max() > 20  # HU


def test_cupping_lowers_the_centre():
    kw = dict(voxel_mm=0.25, fov_mm=20.0, style="cbct", units="float")
    plain, cupped = _gen(**kw), _gen(cupping=1.0, **kw)
    ratio = (cupped.image + 1000.0) / np.maximum(plain.image + 1000.0, 1.0)  # internal = HU + 1000
    cx, cy = cupped.meta["acquisition"]["axis_centre_mm"]
    xs = cupped.affine[0, 3] + 0.25 * np.arange(ratio.shape[0])
    ys = cupped.affine[1, 3] + 0.25 * np.arange(ratio.shape[1])
    r = np.hypot(*np.meshgrid(xs - cx, ys - cy, indexing="ij"))
    bright = plain.image > 300
    centre = np.median(ratio[(r < 3)[:, :, None] & bright])
    edge = np.median(ratio[(r > 9)[:, :, None] & bright])
    assert centre < 0.88 and edge > 0.93 and centre < edge - 0.05


def test_streaks_and_motion_change_the_image_along_lines():
    kw = dict(voxel_mm=0.2, fov_mm=12.0, style="cbct", units="float")
    plain = _gen(**kw)
    streaked = _gen(streaks=1.0, **kw)
    diff = streaked.image - plain.image
    assert diff.min() < -100 and diff.max() < 1e-3  # dark streaks only
    moved = _gen(motion=1.0, **kw)
    info = moved.meta["acquisition"]
    assert info["ghost_shift_vox"] > 1.0
    d = moved.image - plain.image
    assert np.abs(d).max() > 100


def test_label_noise_changes_about_a_voxel_shell_and_keeps_the_truth(tmp_path):
    kw = dict(voxel_mm=0.15, fov_mm=10.0, centre="cochlea")
    clean = _gen(**kw)
    noisy = _gen(label_noise_vox=1.0, **kw)
    assert clean.clean_label is None and clean.clean_structures is None
    assert np.array_equal(noisy.clean_label, clean.label)  # the truth is the label without noise
    assert np.array_equal(noisy.clean_structures, clean.structures)
    assert np.array_equal(noisy.image, clean.image)  # label noise does not touch the image
    a, b = noisy.label.astype(bool), noisy.clean_label.astype(bool)
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert 0.7 < dice < 0.97
    changed = a ^ b
    shell = ndimage.binary_dilation(b, iterations=3) & ~ndimage.binary_erosion(b, iterations=3)
    assert changed[~shell].sum() == 0  # only near the boundary
    assert np.array_equal(noisy.label > 0, noisy.structures > 0)
    entry = ph.write_specimen(noisy, tmp_path)  # the truth is written next to the noisy label
    assert np.array_equal(np.asarray(nib.load(tmp_path / entry["clean_label"]).dataobj), clean.label)
    assert np.array_equal(np.asarray(nib.load(tmp_path / entry["label"]).dataobj), noisy.label)
    shifted = _gen(label_noise_vox=0.0, misregistration_vox=2.0, **kw)
    s = shifted.meta["acquisition"]["label_shift_vox"]
    assert 1 <= max(abs(v) for v in s) <= 2
    assert np.array_equal(np.roll(clean.label, s, axis=(0, 1, 2))[3:-3, 3:-3, 3:-3], shifted.label[3:-3, 3:-3, 3:-3])


def test_slabs_do_not_change_the_result(monkeypatch):
    kw = dict(voxel_mm=0.2, fov_mm=9.0, style="cbct", units="hu", correlated_noise=1.0, rings=0.5,
              cupping=0.5, streaks=0.5, motion=0.5, label_noise_vox=1.0)
    whole = _gen(**kw)
    monkeypatch.setattr(ph, "_SLAB_VOXELS", 45 * 45 * 5)
    slabs = _gen(**kw)
    assert np.array_equal(whole.image, slabs.image)
    assert np.array_equal(whole.label, slabs.label)


def test_draw_acquisition_and_refusals():
    rng = np.random.default_rng(0)
    acqs = [draw_acquisition(rng, voxel_mm=(0.1, 0.3), fov_mm=(8, 12), style="cbct", units=("hu",),
                             artefacts=(0.2, 0.8)) for _ in range(30)]
    assert all(0.1 <= a.voxel_mm <= 0.3 and 8 <= a.fov3[0] <= 12 for a in acqs)
    assert all(a.style == "cbct" and a.units == "hu" and 0.2 <= a.rings <= 0.8 for a in acqs)
    assert {a.centre for a in acqs} == {"labyrinth", "cochlea"}
    assert 0 < sum(a.misregistration_vox > 0 for a in acqs) < 30
    for bad in (dict(voxel_mm=0.5), dict(fov_mm=40.0), dict(style="mri"), dict(units="int8"), dict(rings=2.0)):
        with pytest.raises(ValueError, match="acquisition"):
            Acquisition(**bad)
    with pytest.raises(ValueError, match="shape"):
        ph.generate_specimen(0, 0, DEMO, shape=(40, 40, 40), acquisition=Acquisition())


def test_without_acquisition_nothing_changes():
    spec = ph.generate_specimen(0, 0, get_profile("smoke").phantoms)
    assert spec.clean_label is None and "acquisition" not in spec.meta and spec.image.dtype == np.uint16
