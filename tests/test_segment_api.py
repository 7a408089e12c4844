"""Issue 23 (3–5): probability maps, the Python API (``innerear.Segmenter``) and batches.

The shipped model (structures) runs on smoke-sized phantoms (41 × 48 × 39 voxels, a few seconds
each once loaded); the binary case uses the hand-set threshold network of
``test_segment_physical`` (a one-stage physical model folder, no training).
"""
import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

import innerear
from innerear import cli
from innerear.data.phantom import generate_specimen
from innerear.inference.batch import SUMMARY_COLUMNS, find_scans, is_batch, scan_name
from innerear.inference.modelfolder import SegmentError
from innerear.inference.segment import SegmentResult, Segmenter
from innerear.io import VolumeError, read_volume, write_volume
from innerear.metrics import largest_component
from innerear.settings.profiles import get_profile
import test_segment_physical as physical_tests
from test_segment_physical import AFFINES, _planted, _scan


@pytest.fixture(scope="module")
def physical_model(tmp_path_factory):
    """The hand-set one-stage threshold model of ``test_segment_physical`` (binary, physical units)."""
    return physical_tests.physical_model.__wrapped__(tmp_path_factory)


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter()  # the shipped model, loaded once for the module


@pytest.fixture(scope="module")
def phantom():
    return generate_specimen(0, 7, get_profile("smoke").phantoms)


def _write(path, image, affine):
    write_volume(path, image, affine)
    return path


# --------------------------------------------------------------------------- 3. probabilities
def test_probabilities_of_a_model_with_structures(tmp_path, segmenter, phantom, capsys):
    """4D, one float32 volume per structure on the scan's grid; their sum thresholded at 0.5 is the
    mask before the largest component (to float32 rounding, as softmax outputs sum to 1)."""
    scan = _write(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    prob_path = tmp_path / "p.nii.gz"
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "m.nii.gz"), "--labels", str(tmp_path / "l.nii.gz"),
                     "--probabilities", str(prob_path), "--report", str(tmp_path / "r.json"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    img = nib.load(prob_path)
    prob = np.asarray(img.dataobj)
    mask, _, affine = read_volume(tmp_path / "m.nii.gz")
    labels, _, _ = read_volume(tmp_path / "l.nii.gz")
    assert prob.dtype == np.float32 and prob.shape == phantom.image.shape + (3,)
    np.testing.assert_allclose(img.affine, phantom.affine, atol=1e-5)
    np.testing.assert_allclose(affine, phantom.affine, atol=1e-5)
    assert prob.min() >= 0 and prob.max() <= 1 + 1e-6 and prob.max() > 0.5
    foreground = prob.sum(-1)
    raw = foreground >= 0.5
    rounding = np.abs(foreground - 0.5) < 1e-5
    assert np.all(mask[~rounding] <= raw[~rounding])  # the mask is within the thresholded probabilities
    kept = largest_component(raw.astype(np.uint8), 26)
    assert np.array_equal(kept[~rounding], mask[~rounding].astype(bool))
    inside = mask > 0
    agree = np.mean(np.argmax(prob[inside], -1) + 1 == labels[inside])
    assert agree > 0.9, agree  # labels: nearest neighbour; probabilities: linear (boundaries may differ)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["output"]["probabilities"] == str(prob_path)
    assert rep["output"]["probability_volumes"] == ["cochlea", "vestibule", "canals"]


def test_probabilities_of_a_binary_model_threshold_to_the_mask(tmp_path, physical_model):
    affine = AFFINES["oblique mirrored"]
    image = _scan(_planted((40, 36, 34), affine), seed=5)
    result = Segmenter(physical_model).segment(image, affine=affine)
    assert result.probabilities.shape == image.shape and result.probabilities.dtype == np.float32
    assert result.probability_names == ("inner_ear",) and result.labels is None
    raw = (result.probabilities >= result.report.threshold).astype(np.uint8)
    assert np.array_equal(largest_component(raw, 26), result.mask.astype(bool))  # exactly: the same values
    result.save(tmp_path / "m.nii.gz", probabilities=tmp_path / "p.nii.gz")
    back = nib.load(tmp_path / "p.nii.gz")
    assert back.shape == image.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), result.probabilities)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)


def test_probabilities_follow_the_output_rules(tmp_path, physical_model, capsys):
    affine = AFFINES["isotropic"]
    scan = _write(tmp_path / "scan.nii.gz", _scan(_planted((40, 36, 34), affine), seed=6), affine)
    existing = _write(tmp_path / "p.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    for target, words in ((existing, "already exists"), (tmp_path / "p.nrrd", "compressed NIfTI")):
        code = cli.main(["segment", str(scan), "-o", str(tmp_path / "m.nii.gz"), "--model", str(physical_model),
                         "--probabilities", str(target), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and target.name in err[0] and words in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # nothing written
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "m.nii.gz"), "--model", str(physical_model),
                     "--probabilities", str(existing), "--force", "--quiet"])
    assert code == 0 and nib.load(existing).shape == (40, 36, 34)


def test_probabilities_change_nothing_else(physical_model):
    affine = AFFINES["anisotropic"]
    image = _scan(_planted((40, 36, 34), affine), seed=7)
    seg = Segmenter(physical_model)
    with_p, without = seg.segment(image, affine=affine), seg.segment(image, affine=affine, probabilities=False)
    assert without.probabilities is None and np.array_equal(with_p.mask, without.mask)
    assert with_p.report.inner_ear == without.report.inner_ear


# --------------------------------------------------------------------------- 4. the Python API
def test_the_api_on_a_path_and_on_an_array_agree(tmp_path, segmenter, phantom):
    assert innerear.Segmenter is Segmenter and innerear.SegmentResult is SegmentResult
    path = _write(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    from_file = segmenter.segment(path)
    image, _, affine = read_volume(path)  # the file's affine (NIfTI stores it in float32)
    from_array = segmenter.segment(image, affine=affine)
    assert isinstance(from_file, SegmentResult)
    assert np.array_equal(from_file.mask, from_array.mask) and np.array_equal(from_file.labels, from_array.labels)
    np.testing.assert_allclose(from_file.probabilities, from_array.probabilities, atol=1e-6)
    assert from_file.report.inner_ear == from_array.report.inner_ear
    assert from_file.report.input["path"] == str(path) and from_array.report.input["path"] is None
    assert from_array.report.input["format"] == "array" and from_file.source == path and from_array.source is None
    as_json = json.loads(from_array.report.to_json())
    assert as_json["inner_ear"]["volume_mm3"] == pytest.approx(from_array.report.to_dict()["inner_ear"]["volume_mm3"])
    with pytest.raises(AttributeError):  # frozen
        from_file.mask = None
    # spacing alone: the array's axes are the world's
    spacing = tuple(float(s) for s in np.linalg.norm(phantom.affine[:3, :3], axis=0))
    by_spacing = segmenter.segment(np.asarray(phantom.image), spacing=spacing, probabilities=False)
    np.testing.assert_allclose(by_spacing.affine, np.diag([*spacing, 1.0]))
    assert by_spacing.mask.shape == phantom.image.shape


def test_networks_load_while_the_first_scan_is_read(tmp_path, segmenter, phantom, monkeypatch):
    """``load=False``: ONNX networks load in a background thread beside the first scan's read, once; the
    answer is the loaded segmenter's; a scan that cannot be read leaves the load for the next scan, and a
    load that fails raises its own error at the load step."""
    import threading

    from innerear.inference import segment as sg

    path = _write(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    loads, real = [], sg.load_model_dir

    def counted(*args, **kwargs):
        loads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(sg, "load_model_dir", counted)
    lazy = Segmenter(load=False)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a scan")
    with pytest.raises(VolumeError, match="bad.nii.gz"):
        lazy.segment(bad)
    first = lazy.segment(path)
    lazy.segment(path, probabilities=False)
    assert len(loads) == 1 and loads[0].startswith("innerear-load")  # loaded once, beside the first read
    assert np.array_equal(first.mask, segmenter.segment(path).mask)

    def broken(*args, **kwargs):
        raise SegmentError(tmp_path / "net", "damaged network")

    monkeypatch.setattr(sg, "load_model_dir", broken)
    with pytest.raises(SegmentError, match="damaged network"):
        Segmenter(load=False).segment(path)


def test_result_save_writes_everything_or_nothing(tmp_path, segmenter, phantom):
    result = segmenter.segment(np.asarray(phantom.image), affine=phantom.affine)
    names = dict(labels=tmp_path / "l.nrrd", probabilities=tmp_path / "p.nii.gz", mesh=tmp_path / "m.stl",
                 report=tmp_path / "r.json")
    rep = result.save(tmp_path / "ear.nii.gz", **names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ear.nii.gz", "l.nrrd", "m.stl", "p.nii.gz", "r.json"]
    assert rep["output"]["labels"] == str(names["labels"]) and json.loads(names["report"].read_text())["mesh"]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(SegmentError, match="already exists"):
        result.save(tmp_path / "new.nii.gz", **names)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    result.save(tmp_path / "ear.nii.gz", **names, force=True)
    assert result.report.checks["inner_ear_volume"].get("allowed_by") is None  # save never changes the result


def test_bad_arrays_are_refused_in_one_line(physical_model):
    seg = Segmenter(physical_model, load=False)
    volume = np.random.default_rng(0).random((12, 10, 8)).astype(np.float32)
    cases = [((volume,), {}, "no voxel size"),
             ((volume,), {"spacing": (0.1, 0.1)}, "three positive numbers"),
             ((volume,), {"spacing": (0.1, 0.1, 0.1), "affine": np.diag([0.2, 0.2, 0.2, 1])}, "disagrees"),
             ((volume,), {"affine": np.eye(3)}, "4x4"),
             ((volume[0],), {"spacing": (0.1, 0.1, 0.1)}, "3D"),
             ((np.full((8, 8, 8), 3.0),), {"spacing": (0.1, 0.1, 0.1)}, "constant"),
             ((volume,), {"spacing": (5.0, 5.0, 5.0)}, "voxel size")]
    for args, kwargs, words in cases:
        with pytest.raises(VolumeError, match=words) as info:
            seg.segment(*args, **kwargs)
        assert str(info.value).startswith("<array>: ") and "\n" not in str(info.value)


# --------------------------------------------------------------------------- 5. batches
def _batch_folder(tmp_path, n=2):
    """``n`` smoke phantoms (seed 7: each segmented in one pass; seed 11's second, at 0.47 mm, made the
    engine search the cube's turns and realign it five times, 30 of this test's 62 s), a broken scan and
    a text file."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(n):
        spec = generate_specimen(i, 7, get_profile("smoke").phantoms)
        _write(scans / f"ear{i}.nii.gz", spec.image, spec.affine)
    (scans / "broken.nrrd").write_bytes(b"NRRD0004\ngarbage\n")
    (scans / "notes.txt").write_text("not a scan")
    return scans


def _summary(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_batch_of_a_folder(tmp_path, segmenter, capsys):
    scans = _batch_folder(tmp_path)
    out = tmp_path / "out"
    assert [p.name for p in find_scans(scans)] == ["broken.nrrd", "ear0.nii.gz", "ear1.nii.gz"]
    assert is_batch([scans], out) and scan_name(scans / "ear0.nii.gz") == "ear0"
    code = cli.main(["segment", str(scans), "-o", str(out), "--labels", "--probabilities", "--quiet"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 1  # one scan failed
    assert err[0].startswith("innerear: error: ") and "broken.nrrd" in err[0] and "1 of 3 scans failed" in err[-1]
    rows = _summary(out / "summary.csv")
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    by_file = {r["file"].split("/")[-1]: r for r in rows}
    assert by_file["broken.nrrd"]["status"] == "failed" and "broken.nrrd" in by_file["broken.nrrd"]["error"]
    for name in ("ear0", "ear1"):
        row = by_file[f"{name}.nii.gz"]
        assert row["status"] == "ok" and row["error"] == "" and float(row["seconds"]) > 0
        report = json.loads((out / f"{name}_report.json").read_text())
        assert float(row["inner_ear_mm3"]) == pytest.approx(report["inner_ear"]["volume_mm3"])
        assert float(row["cochlea_mm3"]) == pytest.approx(report["structures"]["cochlea"]["volume_mm3"])
        assert row["duct_length_mm"] == str(report["cochlea"].get("duct_length_mm") or "")
        mask, _, _ = read_volume(out / f"{name}_mask.nii.gz")
        assert mask.shape == nib.load(out / f"{name}_probabilities.nii.gz").shape[:3]
        assert (out / f"{name}_labels.nii.gz").exists()
    assert not any(p.name.startswith(("broken", ".")) for p in out.iterdir())  # nothing of the failed scan
    # a rerun skips the done scans (their rows come from their reports); --force redoes them
    (scans / "broken.nrrd").unlink()
    stamp = (out / "ear0_mask.nii.gz").stat().st_mtime_ns
    assert cli.main(["segment", str(scans), "-o", str(out), "--labels", "--probabilities", "--quiet"]) == 0
    rows = _summary(out / "summary.csv")
    assert [r["status"] for r in rows] == ["skipped", "skipped"] and rows[0]["inner_ear_mm3"]
    assert (out / "ear0_mask.nii.gz").stat().st_mtime_ns == stamp
    assert cli.main(["segment", str(scans / "ear0.nii.gz"), "-o", str(out), "--labels", "--probabilities",
                     "--force", "--quiet"]) == 0
    assert [r["status"] for r in _summary(out / "summary.csv")] == ["ok"]
    assert (out / "ear0_mask.nii.gz").stat().st_mtime_ns != stamp


def test_batch_of_paths_refuses_clashes_and_partial_outputs(tmp_path, segmenter, phantom, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a, b = (_write(tmp_path / name / "ear.nii.gz", phantom.image, phantom.affine) for name in ("a", "b"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "ear_report.json").write_text("{}")  # a partial earlier run: the mask is missing
    code = cli.main(["segment", str(a), str(b), str(tmp_path / "missing.nii.gz"), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 4, err  # three failed scans and the total
    assert "ear_report.json" in err[0] and "already exists" in err[0]
    assert str(b) in err[1] and "rename one" in err[1] and "missing.nii.gz" in err[2]
    assert sorted(p.name for p in out.iterdir()) == ["ear_report.json", "summary.csv"]


def test_batch_usage_errors(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "x.txt").write_text("")
    cases = [(["segment", str(scans), "-o", str(tmp_path / "out")], "no scans", 1),
             (["segment", "a.nii", "b.nii", "-o", str(tmp_path / "o"), "--labels", "x.nii.gz"], "takes no file name", 2),
             (["segment", "a.nii", "-o", str(tmp_path / "m.nii.gz"), "--labels"], "needs a file name", 2)]
    for args, words, status in cases:
        assert cli.main(args) == status
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scans"]


def test_a_dicom_or_tiff_folder_is_one_scan(tmp_path):
    from innerear.io import write_tiff_stack

    write_tiff_stack(tmp_path / "stack", np.ones((4, 4, 4), np.uint8))
    assert not is_batch([tmp_path / "stack"], tmp_path / "m.nii.gz")
    assert is_batch([tmp_path / "stack"], tmp_path)  # an existing folder as -o: a batch of that one scan
    shutil.rmtree(tmp_path / "stack")
