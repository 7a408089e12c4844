import gzip

import nibabel as nib
import numpy as np
import pytest

from innerear.io import VolumeError, read_volume, spacing_from_affine, write_volume


def _affine(spacing=(0.02, 0.03, 0.05), origin=(1.0, -2.0, 3.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd"])
def test_round_trip_keeps_array_spacing_and_affine(tmp_path, rng, name):
    arr = rng.integers(0, 4000, size=(7, 6, 5)).astype(np.uint16)
    aff = _affine()
    write_volume(tmp_path / name, arr, aff)
    back, spacing, aff2 = read_volume(tmp_path / name)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(spacing, (0.02, 0.03, 0.05), rtol=1e-6)
    np.testing.assert_allclose(aff2, aff, atol=1e-6)
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_gzip_output_is_reproducible(tmp_path, rng):
    arr = rng.random((4, 4, 4)).astype(np.float32)
    write_volume(tmp_path / "a.nii.gz", arr, _affine())
    write_volume(tmp_path / "b.nii.gz", arr, _affine())
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(VolumeError, match="nope.nii.gz: file not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_unknown_format(tmp_path):
    (tmp_path / "x.png").write_bytes(b"1")
    with pytest.raises(VolumeError, match="x.png: unknown volume format"):
        read_volume(tmp_path / "x.png")


@pytest.mark.parametrize("shape,msg", [((8, 8), "2D"), ((4, 4, 4, 3), "4D"), ((8, 8, 1), "single slice")])
def test_wrong_dimensionality(tmp_path, shape, msg):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(VolumeError, match=f"bad.nii.gz: .*{msg}"):
        read_volume(tmp_path / "bad.nii.gz")


def test_corrupt_file(tmp_path):
    (tmp_path / "c.nii.gz").write_bytes(gzip.compress(b"this is not a nifti file at all" * 20))
    with pytest.raises(VolumeError, match="c.nii.gz: cannot be read as NIfTI"):
        read_volume(tmp_path / "c.nii.gz")


def test_nan_voxels(tmp_path):
    arr = np.ones((4, 4, 4), np.float32)
    arr[1, 2, 3] = np.nan
    write_volume(tmp_path / "n.nii.gz", arr, np.eye(4))
    with pytest.raises(VolumeError, match="n.nii.gz: contains 1 NaN"):
        read_volume(tmp_path / "n.nii.gz")


def test_no_overwrite_and_missing_folder(tmp_path):
    write_volume(tmp_path / "a.nii.gz", np.zeros((3, 3, 3)), np.eye(4))
    with pytest.raises(FileExistsError, match="a.nii.gz"):
        write_volume(tmp_path / "a.nii.gz", np.zeros((3, 3, 3)), np.eye(4), overwrite=False)
    with pytest.raises(FileNotFoundError, match="missing"):
        write_volume(tmp_path / "missing" / "a.nii.gz", np.zeros((3, 3, 3)), np.eye(4))


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        write_volume(tmp_path / "obj.nii.gz", np.array([object()] * 8).reshape(2, 2, 2), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_spacing_from_rotated_affine():
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.1, 0.2, 0.3])
    np.testing.assert_allclose(spacing_from_affine(aff), (0.1, 0.2, 0.3))


@pytest.mark.parametrize("unit", ["mm", "um", "\\u00B5m", "micron"])  # ImageJ writes µ as an ASCII escape
def test_tiff_voxel_size_from_imagej_units(tmp_path, unit):
    import tifffile

    scale = 1.0 if unit == "mm" else 1e-3
    data = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    tifffile.imwrite(tmp_path / "v.tif", data, imagej=True, resolution=(1 / 20.0, 1 / 20.0),
                     metadata={"unit": unit, "spacing": 25.0, "axes": "ZYX"})
    _, spacing, _ = read_volume(tmp_path / "v.tif")
    np.testing.assert_allclose(sorted(spacing), sorted([20 * scale, 20 * scale, 25 * scale]), rtol=1e-5)
