"""Every scan format `innerear segment` reads: round trips keep the array, voxel size and RAS affine."""
import numpy as np
import pytest

from innerear.io import VolumeError, keep_locale, read_volume, volume_format, write_tiff_stack, write_volume

sitk = pytest.importorskip("SimpleITK")


def _oblique_affine(spacing=(0.02, 0.03, 0.05), origin=(1.0, -2.0, 3.0), deg=20.0):
    """A rotated (about z), axis-swapped, anisotropic voxel-to-RAS affine."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


@pytest.fixture
def volume(rng):
    return rng.integers(-1000, 3000, size=(9, 7, 5)).astype(np.int16)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd", "v.mha"])
def test_oblique_round_trip(tmp_path, volume, name):
    aff = _oblique_affine()
    write_volume(tmp_path / name, volume, aff)
    back, spacing, aff2 = read_volume(tmp_path / name)
    np.testing.assert_array_equal(back, volume)
    np.testing.assert_allclose(spacing, (0.02, 0.03, 0.05), rtol=1e-6)
    np.testing.assert_allclose(aff2, aff, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "temporary file left behind"


def test_metaimage_is_lps_on_disk_and_mhd_reads(tmp_path, volume):
    """A MetaImage written by SimpleITK itself (detached .mhd) reads back in RAS."""
    img = sitk.GetImageFromArray(np.transpose(volume, (2, 1, 0)))
    img.SetSpacing((0.5, 0.25, 2.0))
    img.SetOrigin((10.0, 20.0, 30.0))  # LPS
    sitk.WriteImage(img, str(tmp_path / "scan.mhd"))
    back, spacing, aff = read_volume(tmp_path / "scan.mhd")
    np.testing.assert_array_equal(back, volume)
    assert spacing == pytest.approx((0.5, 0.25, 2.0))
    np.testing.assert_allclose(aff, np.array([[-0.5, 0, 0, -10], [0, -0.25, 0, -20], [0, 0, 2, 30], [0, 0, 0, 1]]))


def test_nrrd_in_ras_space(tmp_path, volume):
    import nrrd

    nrrd.write(str(tmp_path / "ras.nrrd"), volume, {"space": "right-anterior-superior",
                                                     "space directions": np.diag([0.1, 0.2, 0.3]),
                                                     "space origin": np.array([1.0, 2.0, 3.0])})
    _, _, aff = read_volume(tmp_path / "ras.nrrd")
    np.testing.assert_allclose(aff, [[0.1, 0, 0, 1], [0, 0.2, 0, 2], [0, 0, 0.3, 3], [0, 0, 0, 1]])


@pytest.mark.parametrize("name", ["stack.tif", "slices"])
def test_tiff_round_trip_with_recorded_spacing(tmp_path, volume, name):
    write_tiff_stack(tmp_path / name, volume, spacing=(0.0163, 0.0163, 0.0195))
    assert volume_format(tmp_path / name) == "tiff"
    back, spacing, aff = read_volume(tmp_path / name)
    np.testing.assert_array_equal(back, volume)
    np.testing.assert_allclose(spacing, (0.0163, 0.0163, 0.0195), rtol=1e-5)
    np.testing.assert_allclose(aff, np.diag([*spacing, 1.0]))


@pytest.mark.parametrize("name", ["stack.tif", "slices"])
def test_tiff_without_spacing_needs_it_given(tmp_path, volume, name):
    write_tiff_stack(tmp_path / name, volume)
    with pytest.raises(VolumeError, match=f"{name}: .*voxel size.*--spacing"):
        read_volume(tmp_path / name)
    back, spacing, aff = read_volume(tmp_path / name, spacing=(0.1, 0.2, 0.3))
    np.testing.assert_array_equal(back, volume)
    np.testing.assert_allclose(aff, np.diag([0.1, 0.2, 0.3, 1.0]))


def test_tiff_folder_slices_sort_naturally_and_must_agree(tmp_path, volume):
    import tifffile

    folder = tmp_path / "stack"
    folder.mkdir()
    for k in range(volume.shape[2]):  # img_2 must come before img_10
        tifffile.imwrite(folder / f"img_{k * 4}.tiff", np.ascontiguousarray(volume[:, :, k].T))
    back, _, _ = read_volume(folder, spacing=(1, 1, 1))
    np.testing.assert_array_equal(back, volume)
    tifffile.imwrite(folder / "img_99.tiff", np.zeros((3, 3), np.int16))
    with pytest.raises(VolumeError, match="img_99.tiff: slice"):
        read_volume(folder, spacing=(1, 1, 1))


def test_spacing_overrides_the_header_keeping_directions(tmp_path, volume):
    aff = _oblique_affine()
    write_volume(tmp_path / "v.nrrd", volume, aff)
    _, spacing, aff2 = read_volume(tmp_path / "v.nrrd", spacing=(1.0, 2.0, 3.0))
    assert spacing == pytest.approx((1.0, 2.0, 3.0))
    np.testing.assert_allclose(aff2[:3, :3] / [1.0, 2.0, 3.0], aff[:3, :3] / [0.02, 0.03, 0.05], atol=1e-9)
    np.testing.assert_allclose(aff2[:3, 3], aff[:3, 3])


def write_dicom_series(folder, volume, spacing, origin_lps, direction_lps=np.eye(3)):
    """Write an int16 (x, y, z) volume as a CT DICOM series with SimpleITK (one file per z)."""
    folder.mkdir()
    img = sitk.GetImageFromArray(np.transpose(volume, (2, 1, 0)).astype(np.int16))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin_lps])
    img.SetDirection([float(v) for v in np.asarray(direction_lps).ravel()])
    d = np.asarray(direction_lps)
    orientation = "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.20260101"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                           ("0020|0037", orientation), ("0020|0013", str(k + 1)),
                           ("0008|0018", f"{uid}.3.{k + 1}"), ("0018|0050", f"{spacing[2]:.6f}"),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))))):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        with keep_locale():  # GDCM's writer sets LC_CTYPE to "C"
            writer.Execute(sl)


def test_dicom_series_folder(tmp_path, volume):
    # rows and columns swapped; right-handed, so the slices' normal is the third axis (DICOM
    # readers order slices along row x column: a left-handed frame would come back z-reversed)
    direction = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]])
    write_dicom_series(tmp_path / "series", volume, (0.5, 0.25, 0.75), (-5.0, 12.0, 3.0), direction)
    assert volume_format(tmp_path / "series") == "dicom"
    back, spacing, aff = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(back, volume)
    assert spacing == pytest.approx((0.5, 0.25, 0.75), rel=1e-5)
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1, -1, 1.0]) @ direction @ np.diag([0.5, 0.25, 0.75])
    expected[:3, 3] = (5.0, -12.0, 3.0)
    np.testing.assert_allclose(aff, expected, atol=1e-5)
    # one file of the series reads the whole series
    back2, _, _ = read_volume(tmp_path / "series" / "slice002.dcm")
    np.testing.assert_array_equal(back2, volume)


@pytest.mark.parametrize("make,problem", [
    (lambda p: (p / "empty").mkdir(), "neither a DICOM series nor TIFF"),
    (lambda p: (p / "x.mha").write_text("not a metaimage"), "cannot be read as MetaImage"),
    (lambda p: (p / "x.tif").write_bytes(b"II*\x00garbage"), "cannot be read as TIFF"),
])
def test_unreadable_inputs_name_the_file(tmp_path, make, problem):
    make(tmp_path)
    target = next(tmp_path.iterdir())
    with pytest.raises(VolumeError, match=f"{target.name}: .*{problem}") as info:
        read_volume(target)
    assert "\n" not in str(info.value)


def test_single_page_tiff_is_2d(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "one.tif", np.zeros((5, 6), np.uint8))
    with pytest.raises(VolumeError, match="one.tif: expected a 3D volume, found 2D"):
        read_volume(tmp_path / "one.tif", spacing=(1, 1, 1))


def test_write_refuses_detached_and_unknown_formats(tmp_path, volume):
    for name in ("v.mhd", "v.nhdr", "v.png"):
        with pytest.raises(VolumeError, match=name):
            write_volume(tmp_path / name, volume, np.eye(4))
    assert list(tmp_path.iterdir()) == []
