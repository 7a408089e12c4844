"""Issue 24 (3): a folder of scans in mixed formats is a batch, not one TIFF stack. Found by
``benchmarks/bench_load.py``: a folder holding NIfTI, NRRD, MetaImage files, DICOM series folders and
multipage ``.tif`` stacks was taken for one stack of TIFF slices (its ``.tif`` files), so
``innerear segment DIR -o OUTDIR`` segmented that one "scan" and exited 0. No network is loaded."""
import numpy as np

from innerear.inference.batch import find_scans, is_batch, is_scan_folder
from innerear.io import write_tiff_stack, write_volume

AFFINE = np.diag([0.1, 0.1, 0.1, 1.0])


def _volume():
    return np.arange(6 * 5 * 4, dtype=np.uint16).reshape(6, 5, 4)


def test_a_folder_of_mixed_scans_with_multipage_tiffs_is_a_batch(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_volume(scans / "a.nii.gz", _volume(), AFFINE)
    write_tiff_stack(scans / "b.tif", _volume(), spacing=(0.1, 0.1, 0.1))
    assert not is_scan_folder(scans)
    assert is_batch([scans], tmp_path / "out")
    assert [p.name for p in find_scans(scans)] == ["a.nii.gz", "b.tif"]


def test_several_multipage_tiffs_are_several_scans(tmp_path):
    scans = tmp_path / "stacks"
    scans.mkdir()
    for name in ("a.tif", "b.tif"):
        write_tiff_stack(scans / name, _volume(), spacing=(0.1, 0.1, 0.1))
    assert not is_scan_folder(scans) and len(find_scans(scans)) == 2


def test_a_folder_beside_a_tiff_series_folder_is_a_batch(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_tiff_stack(scans / "a.tif", _volume(), spacing=(0.1, 0.1, 0.1))
    write_tiff_stack(scans / "slices", _volume())  # a folder of 2D slices: a scan of its own
    assert is_scan_folder(scans / "slices") and not is_scan_folder(scans)


def test_slices_and_one_multipage_tiff_stay_one_scan(tmp_path):
    write_tiff_stack(tmp_path / "slices", _volume())
    assert is_scan_folder(tmp_path / "slices")
    (tmp_path / "one").mkdir()
    write_tiff_stack(tmp_path / "one" / "stack.tif", _volume(), spacing=(0.1, 0.1, 0.1))
    assert is_scan_folder(tmp_path / "one")
    assert not is_batch([tmp_path / "one"], tmp_path / "out.nii.gz")
