import numpy as np
import pytest

from innerear.data import preprocess as pp
from innerear.io import VolumeError, write_volume
from conftest import make_tube_volume
from innerear.settings import views
from innerear.data import normalize as nz


def _write_case(folder, cid, image, label, affine=None, label_affine=None):
    affine = np.diag([0.1, 0.1, 0.1, 1.0]) if affine is None else affine
    write_volume(folder / f"{cid}_image.nii.gz", image, affine)
    write_volume(folder / f"{cid}_label.nii.gz", label, affine if label_affine is None else label_affine)


def test_discover_pairs_and_errors(tmp_path):
    img, lab = make_tube_volume((12, 12, 12))
    _write_case(tmp_path, "a", img, lab)
    _write_case(tmp_path, "b", img, lab)
    cases = pp.discover_pairs(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b"]
    write_volume(tmp_path / "c_image.nii.gz", img, np.eye(4))
    with pytest.raises(VolumeError, match="c_image.nii.gz: image without a matching label"):
        pp.discover_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        pp.discover_pairs(tmp_path / "nothing")


def test_label_grid_mismatch_is_reported(tmp_path):
    img, lab = make_tube_volume((12, 12, 12))
    _write_case(tmp_path, "a", img, lab[:, :, :10])
    with pytest.raises(VolumeError, match="a_label.nii.gz: shape"):
        pp.load_case(pp.discover_pairs(tmp_path)[0])
    _write_case(tmp_path, "a", img, lab, label_affine=np.diag([0.2, 0.1, 0.1, 1.0]))
    with pytest.raises(VolumeError, match="a_label.nii.gz: affine differs"):
        pp.load_case(pp.discover_pairs(tmp_path)[0])


def test_constant_image_is_rejected(tmp_path):
    _write_case(tmp_path, "a", np.ones((6, 6, 6), np.float32), np.zeros((6, 6, 6), np.uint8))
    with pytest.raises(VolumeError, match="a_image.nii.gz: image is constant"):
        pp.load_case(pp.discover_pairs(tmp_path)[0])


def test_canonical_reorientation_keeps_world_coordinates(rng):
    arr = rng.random((5, 6, 7))
    aff = np.array([[0, 0, -0.3, 10], [0.1, 0, 0, -5], [0, -0.2, 0, 2], [0, 0, 0, 1]], float)
    out, aff2 = pp.to_canonical(arr, aff)
    assert np.all(np.diag(aff2[:3, :3]) > 0)
    # the same voxel value sits at the same world point
    for ijk in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        world = aff @ [*ijk, 1]
        ijk2 = np.round(np.linalg.inv(aff2) @ world).astype(int)[:3]
        assert out[tuple(ijk2)] == arr[ijk]


def test_resampled_affine_keeps_the_field_of_view():
    aff = np.diag([0.02, 0.03, 0.04, 1.0])
    shape, grid = (100, 60, 80), (25, 30, 20)
    new = pp.resampled_affine(aff, shape, grid)
    # outer voxel edges coincide: corner of voxel -0.5 maps to the same world point
    np.testing.assert_allclose(new @ [-0.5, -0.5, -0.5, 1], aff @ [-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(new @ [g - 0.5 for g in grid] + [0] * 0 + [1] if False else new @ [24.5, 29.5, 19.5, 1],
                               aff @ [99.5, 59.5, 79.5, 1])


@pytest.mark.parametrize("offset", [42, 43, 44])
def test_sdf_label_resampling_keeps_thin_canal(offset):
    # a cross of canals 3 voxels wide, down-sampled by 3: a majority vote (antialiased) loses
    # them when they straddle two new voxels; the signed-distance method keeps them whole
    from scipy import ndimage

    lab = np.zeros((90, 90, 90), np.uint8)
    lab[offset:offset + 3, offset:offset + 3, :] = 1
    lab[offset:offset + 3, :, offset:offset + 3] = 1
    small = pp.resample_label(lab, 30)
    assert small.dtype == np.uint8 and set(np.unique(small)) <= {0, 1}
    assert ndimage.label(small, structure=np.ones((3, 3, 3)))[1] == 1
    assert small[:, :, 0].sum() >= 1 and small[:, :, -1].sum() >= 1  # runs end to end
    assert small.sum() >= 59
    assert pp.resample_label(lab, 30, "antialiased").sum() <= small.sum()


def test_label_resampling_methods_agree_on_a_ball():
    x, y, z = np.mgrid[:100, :90, :80]
    ball = ((x - 50) ** 2 + (y - 40) ** 2 + (z - 40) ** 2 < 30**2).astype(np.uint8)
    for method in ("nearest", "linear", "antialiased", "sdf"):
        assert pp.label_resampling_dice(ball, (37, 41, 29), method) > 0.95
    with pytest.raises(ValueError):
        pp.resample_label(ball, 10, "cubic")


def test_resample_image_shape_and_values():
    img, _ = make_tube_volume((40, 36, 32))
    out = pp.resample_image(img, 16)
    assert out.shape == (16, 16, 16) and out.dtype == np.float32
    assert abs(out.mean() - img.mean()) < 0.05 * abs(img.mean())


def test_normalizer_uses_training_volumes_only(rng):
    train = [rng.normal(10, 2, (8, 8, 8)) for _ in range(3)]
    norm = nz.fit_normalizer(train)
    assert abs(norm.mean - 10) < 0.5 and abs(norm.std - 2) < 0.3
    # changing the held-out volumes changes nothing
    assert nz.fit_normalizer(train) == norm
    z = norm(np.concatenate([t.ravel() for t in train]))
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3


def test_fold_statistics_never_see_the_test_fold(tmp_path, rng):
    ids = [f"s{i:02d}" for i in range(17)]
    vols = {c: rng.normal(i, 1, (4, 4, 4)) for i, c in enumerate(ids)}
    folds = pp.make_folds(ids, 4, seed=3)
    for k in range(4):
        train, test = pp.split_fold(ids, folds, k)
        assert not set(train) & set(test)
        expected = nz.fit_normalizer(vols[c] for c in train)
        poisoned = {**vols, **{c: vols[c] + 1e6 for c in test}}
        assert nz.fit_normalizer(poisoned[c] for c in train) == expected


def test_make_folds_partition_by_specimen():
    ids = [f"s{i:02d}" for i in range(17)]
    folds = pp.make_folds(ids, 4, seed=0)
    assert sorted(len(f) for f in folds) == [4, 4, 4, 5]
    assert sorted(sum(folds, [])) == ids
    assert pp.make_folds(ids, 4, seed=0) == folds
    assert pp.make_folds(ids, 4, seed=1) != folds
    with pytest.raises(ValueError):
        pp.make_folds(ids[:3], 4)


@pytest.mark.parametrize("view,axis", [("sagittal", 0), ("coronal", 1), ("axial", 2)])
def test_slices_round_trip_and_axis(rng, view, axis):
    vol = rng.random((4, 5, 6, 2))
    s = views.to_slices(vol, view)
    assert s.shape[0] == vol.shape[axis]
    np.testing.assert_array_equal(s[2], np.take(vol, 2, axis=axis))
    np.testing.assert_array_equal(views.from_slices(s, view), vol)


def test_prepare_dataset_caches(tmp_path):
    img, lab = make_tube_volume((24, 20, 16))
    data = tmp_path / "data"
    data.mkdir()
    _write_case(data, "a", img, lab)
    cache = tmp_path / "cache"
    first = pp.prepare_dataset(data, 8, cache)
    assert first[0].image.shape == (8, 8, 8) and first[0].label.shape == (8, 8, 8)
    assert (cache / "a.npz").exists()
    second = pp.prepare_dataset(data, 8, cache)
    np.testing.assert_array_equal(first[0].image, second[0].image)
    np.testing.assert_allclose(second[0].spacing, (0.3, 0.25, 0.2))
