"""The Hear-EU loader on a fake SMIR download built from phantoms."""
import json

import nrrd
import numpy as np
import pytest

from innerear.settings.profiles import get_profile, is_synthetic
from innerear.data.hear_eu import (export_prepared, find_specimens, load_corrections, load_specimen, lumen_check,
                                   read_slicer_segmentation, shift_vox)
from innerear.io import VolumeError, read_volume, write_volume
from innerear.data.phantom import generate_specimen
from innerear.data.preprocess import discover_pairs

pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def phantoms():
    settings = get_profile("smoke").phantoms
    return [generate_specimen(i, 5, settings) for i in range(3)]


def _write_slicer_seg(path, label, affine, factor=2, margin=2):
    """A Slicer-style multi-layer .seg.nrrd: the label cropped to its box, on a ``factor``x finer grid."""
    idx = np.nonzero(label)
    lo = np.array([max(0, a.min() - margin) for a in idx])
    hi = np.array([min(s, a.max() + margin + 1) for a, s in zip(idx, label.shape)])
    crop = label[tuple(slice(a, b) for a, b in zip(lo, hi))]
    fine = crop.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
    layers = np.stack([fine, np.zeros_like(fine)])  # (layer, x, y, z): a second, empty layer
    fine_aff = affine.copy()
    fine_aff[:3, :3] = affine[:3, :3] / factor
    # voxel lo - 0.5 + 0.5/factor of the image grid is the centre of the first fine voxel
    fine_aff[:3, 3] = (affine @ np.r_[lo - 0.5 + 0.5 / factor, 1.0])[:3]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ fine_aff
    header = {"space": "left-posterior-superior",
              "space directions": np.vstack([np.full(3, np.nan), lps[:3, :3].T]),
              "space origin": lps[:3, 3], "kinds": ["list", "domain", "domain", "domain"],
              "Segment0_Name": "inner ear", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
              "Segment1_Name": "empty", "Segment1_LabelValue": "1", "Segment1_Layer": "1"}
    nrrd.write(str(path), layers.astype(np.uint8), header)


@pytest.fixture
def smir(tmp_path, phantoms):
    """Five specimens in the layouts a download may have; returns (root, truths)."""
    a, b, c = phantoms
    root = tmp_path / "smir"
    (root / "Specimen_01").mkdir(parents=True)
    write_volume(root / "Specimen_01" / "Specimen_01.mha", a.image, a.affine)
    write_volume(root / "Specimen_01" / "Specimen_01_labelmap.mha", a.label, a.affine)
    write_volume(root / "Specimen_02_image.nii", b.image, b.affine)  # flat, uncompressed
    write_volume(root / "Specimen_02_seg.nii", b.label, b.affine)
    write_volume(root / "Specimen_03.nii", c.image, c.affine)
    _write_slicer_seg(root / "Specimen_03.seg.nrrd", c.label, c.affine)
    # stored with x and y swapped and flipped along x: needs {permute: [1, 0, 2], flip: [0]}
    write_volume(root / "Specimen_04.mha", a.image, a.affine)
    write_volume(root / "Specimen_04_label.mha", np.transpose(np.flip(a.label, 0), (1, 0, 2)).copy(), a.affine)
    # moved by 3 voxels and no correction given: must be flagged
    write_volume(root / "Specimen_05.mha", b.image, b.affine)
    write_volume(root / "Specimen_05-label.mha", shift_vox(b.label, (3, 0, 0)), b.affine)
    (root / "README.txt").write_text("not a volume")
    corrections = tmp_path / "corrections.yaml"
    corrections.write_text("Specimen_04:\n  permute: [1, 0, 2]\n  flip: [0]\n")
    truths = {"Specimen_01": a, "Specimen_02": b, "Specimen_03": c, "Specimen_04": a, "Specimen_05": b}
    return root, corrections, truths


def test_find_specimens_pairs_folders_and_flat_files(smir):
    root, _, _ = smir
    found = {s.specimen_id: (s.image.name, s.label.name) for s in find_specimens(root)}
    assert found == {
        "Specimen_01": ("Specimen_01.mha", "Specimen_01_labelmap.mha"),
        "Specimen_02": ("Specimen_02_image.nii", "Specimen_02_seg.nii"),
        "Specimen_03": ("Specimen_03.nii", "Specimen_03.seg.nrrd"),
        "Specimen_04": ("Specimen_04.mha", "Specimen_04_label.mha"),
        "Specimen_05": ("Specimen_05.mha", "Specimen_05-label.mha"),
    }


def test_slicer_segmentation_on_a_finer_cropped_grid_lands_on_the_image(smir):
    root, _, truths = smir
    mask, aff = read_slicer_segmentation(root / "Specimen_03.seg.nrrd")
    assert mask.shape != truths["Specimen_03"].label.shape
    with pytest.raises(VolumeError, match="no segment named 'nope'"):
        read_slicer_segmentation(root / "Specimen_03.seg.nrrd", segment="nope")
    spec = next(s for s in find_specimens(root) if s.specimen_id == "Specimen_03")
    loaded = load_specimen(spec)
    np.testing.assert_array_equal(loaded.label, truths["Specimen_03"].label)
    assert loaded.info["lumen_check"]["ok"]
    empty, _ = read_slicer_segmentation(root / "Specimen_03.seg.nrrd", segment="empty")
    assert not empty.any()


def test_corrections_realign_a_label_and_a_moved_label_is_flagged(smir):
    root, corrections, truths = smir
    corr = load_corrections(corrections)
    specs = {s.specimen_id: s for s in find_specimens(root)}
    fixed = load_specimen(specs["Specimen_04"], corr)
    np.testing.assert_array_equal(fixed.label, truths["Specimen_04"].label)
    assert fixed.info["lumen_check"]["ok"]
    assert not load_specimen(specs["Specimen_04"]).info["lumen_check"]["ok"]  # without the correction
    moved = load_specimen(specs["Specimen_05"], corr).info["lumen_check"]
    assert not moved["ok"] and moved["mean_inside"] > load_specimen(specs["Specimen_02"]).info["lumen_check"]["mean_inside"]


def test_export_prepared_writes_the_pipeline_layout(smir, tmp_path):
    root, corrections, truths = smir
    out = tmp_path / "data" / "hear-eu"
    report = export_prepared(root, out, corrections)
    assert report["flagged"] == ["Specimen_05"]
    assert report["exported"] == ["Specimen_01", "Specimen_02", "Specimen_03", "Specimen_04"]
    cases = discover_pairs(out)
    assert [c.case_id for c in cases] == report["exported"]
    for case in cases:
        label, _, aff = read_volume(case.label)
        np.testing.assert_array_equal(label, truths[case.case_id].label)
        np.testing.assert_allclose(aff, truths[case.case_id].affine, atol=1e-5)
    assert not is_synthetic(out)
    saved = json.loads((out / "hear_eu_report.json").read_text())
    assert saved["specimens"]["Specimen_05"]["exported"] is False
    assert "resampled" in " ".join(saved["specimens"]["Specimen_03"]["notes"])


def test_bad_layouts_and_corrections_name_the_file(tmp_path, phantoms):
    a = phantoms[0]
    flat = tmp_path / "flat"
    flat.mkdir()
    write_volume(flat / "S1_image.nii.gz", a.image, a.affine)
    with pytest.raises(VolumeError, match="S1_image.nii.gz: image without a matching label"):
        find_specimens(flat)
    nested = tmp_path / "nested" / "S2"
    nested.mkdir(parents=True)
    write_volume(nested / "a.nii.gz", a.image, a.affine)
    write_volume(nested / "b.nii.gz", a.image, a.affine)
    write_volume(nested / "b_label.nii.gz", a.label, a.affine)
    with pytest.raises(VolumeError, match="S2: specimen folder holds 2 image"):
        find_specimens(tmp_path / "nested")
    bad = tmp_path / "corr.json"
    bad.write_text(json.dumps({"S1": {"rotate": 90}}))
    with pytest.raises(VolumeError, match="corr.json: S1: unknown correction"):
        load_corrections(bad)


def test_lumen_check_on_an_empty_label():
    assert lumen_check(np.random.default_rng(0).random((8, 8, 8)), np.zeros((8, 8, 8)))["reason"] == "label is empty"
