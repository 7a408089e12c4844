"""Issue 24: bad inputs and failed writes end in one line naming the file (or the option) and the
problem, with a non-zero exit and nothing left behind. One test (or more) per case of the issue
(its numbers); each fails on the code before the fix. Every test runs in seconds: none loads a network.
"""
import errno
import io
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from innerear import cli
from innerear.io import read_volume, write_volume

AFFINE = np.diag([0.1, 0.1, 0.1, 1.0])


def _run_cli(args, capsys):
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _tree(folder):
    """Every file and folder under ``folder`` (names relative to it)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def _scan(path, shape=(24, 22, 20)):
    image = np.random.default_rng(0).integers(0, 60000, shape).astype(np.uint16)
    write_volume(path, image, AFFINE)
    return path


# --------------------------------------------------------------------------- 2. zero voxel size in NIfTI
_PIXDIM1, _QFORM_CODE = 80, 252  # byte offsets in the NIfTI-1 header: pixdim[1]; qform_code, sform_code


def _nifti_without_geometry(path, pixdim):
    """An uncompressed NIfTI whose pixdim[1..3] are ``pixdim`` and whose qform and sform codes are 0."""
    _scan(path)
    data = bytearray(path.read_bytes())
    data[_PIXDIM1:_PIXDIM1 + 12] = struct.pack("<3f", *pixdim)
    data[_QFORM_CODE:_QFORM_CODE + 4] = struct.pack("<2h", 0, 0)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("pixdim,named", [((0.0, 0.1, 0.1), "pixdim[1] = 0"),
                                          ((0.0, 0.0, 0.0), "pixdim[1] = 0, pixdim[2] = 0, pixdim[3] = 0")])
def test_zero_pixdim_without_sform_is_refused_naming_it(tmp_path, capsys, monkeypatch, pixdim, named):
    import innerear.inference.segment

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(innerear.inference.segment, "load_model_dir", no_work)
    scan = _nifti_without_geometry(tmp_path / "zero.nii", pixdim)
    before = _tree(tmp_path)
    code, _, err = _run_cli(["segment", scan, "-o", tmp_path / "ear.nii.gz", "--quiet"], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"innerear: error: {scan}: invalid voxel size") and "pixdim" in err[0], err[0]
    assert named in err[0] and "--spacing" in err[0] and "field of view" not in err[0], err[0]
    assert _tree(tmp_path) == before


def test_zero_pixdim_is_replaced_by_the_given_spacing(tmp_path):
    from innerear.inference.segment import read_scan

    scan = _nifti_without_geometry(tmp_path / "zero.nii", (0.0, 0.1, 0.1))
    _, spacing, affine = read_volume(scan, spacing=(0.05, 0.06, 0.07))
    assert spacing == pytest.approx((0.05, 0.06, 0.07))
    assert np.linalg.norm(affine[:3, :3], axis=0) == pytest.approx([0.05, 0.06, 0.07])
    assert read_scan(scan, (0.05, 0.06, 0.07)).spacing_mm == pytest.approx((0.05, 0.06, 0.07))


# --------------------------------------------------------------------------- 4. mesh winding
def _ball(shape=(14, 13, 12), radius=4.5):
    grid = np.indices(shape).astype(float)
    centre = (np.asarray(shape, float) - 1) / 2
    return (((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius ** 2).astype(np.uint8)


def _rotation_z(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


@pytest.mark.parametrize("name,affine", [
    ("RAS", np.diag([0.1, 0.1, 0.1, 1.0])),
    ("LPS-stored (det > 0)", np.diag([-0.1, -0.1, 0.1, 1.0])),
    ("mirrored (det < 0)", np.diag([-0.1, 0.1, 0.1, 1.0])),
    ("rotated, mirrored, anisotropic", _rotation_z(30) @ np.diag([0.08, -0.1, 0.12, 1.0])),
])
def test_mesh_normals_point_outward_for_every_handedness(tmp_path, name, affine):
    from innerear.data.scan import crop_to_mask
    from innerear.io.mesh import read_stl, surface_mesh, write_stl

    mask = _ball()
    verts, faces = surface_mesh(*crop_to_mask(mask, affine))
    tri = verts[faces]
    signed = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
    volume = mask.sum() * abs(np.linalg.det(affine[:3, :3]))
    assert np.sign(np.linalg.det(affine[:3, :3])) != 0
    assert signed > 0, f"{name}: the mesh's normals point inward (signed volume {signed:.3f} mm^3)"
    assert signed == pytest.approx(volume, rel=0.2)
    write_stl(tmp_path / "ear.stl", verts, faces)
    triangles, normals = read_stl(tmp_path / "ear.stl")
    winding = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    assert (np.einsum("ij,ij->i", winding, normals) > 0).all(), "STL facet normals disagree with the winding"
    outward = np.einsum("ij,ij->i", normals, triangles.mean(1) - verts.mean(0))
    assert (outward > 0).mean() > 0.99, f"{name}: facet normals point into the ball"


# --------------------------------------------------------------------------- 5. model folder voxel size
def test_stage_voxel_size_disagreeing_with_cascade_and_card_is_refused(tmp_path, capsys, monkeypatch):
    import innerear.inference.segment
    from innerear.inference.modelfolder import DEFAULT_MODEL

    def no_work(*args, **kwargs):
        raise AssertionError("the segmentation started")

    monkeypatch.setattr(innerear.inference.segment, "run_segmentation", no_work)
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model, ignore=shutil.ignore_patterns("best.keras"))
    for stage in model.glob("stage*"):
        (stage / "best.keras").write_bytes(b"")  # never loaded: the folder is refused first
    for path, edit in ((model / "cascade.json", lambda d: d.update(voxel_mm=0.2)),
                       (model / "model_card.json", lambda d: d["recipe"].update(voxel_mm=0.2)),
                       (model / "stage2_sagittal" / "stage.json", lambda d: d.update(voxel_mm=0.2)),
                       (model / "stage3_axial" / "stage.json", lambda d: d.update(voxel_mm=0.2))):
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    assert json.loads((model / "stage1_coronal" / "stage.json").read_text())["voxel_mm"] == 0.15
    scan = _scan(tmp_path / "scan.nii.gz")
    before = _tree(tmp_path)
    code, _, err = _run_cli(["segment", scan, "-o", tmp_path / "ear.nii.gz", "--model", model, "--quiet"], capsys)
    assert code == 1 and len(err) == 1, err
    line = err[0]
    assert line.startswith(f"innerear: error: {model / 'stage1_coronal' / 'stage.json'}: "), line
    assert "voxel_mm" in line and "0.15" in line and "0.2" in line and str(model / "cascade.json") in line, line
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- 6, 7. disk full
class _FullDisk(io.FileIO):
    """A file on a disk that fills up after 40 bytes."""

    room = 40

    def write(self, data):
        data = bytes(data)
        left = max(0, self.room - self.tell())
        if len(data) > left:
            super().write(data[:left])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _full_disk_open(path, mode="r", *args, **kwargs):
    return _FullDisk(path, "w" if "w" in mode else "r")


def _fake_segmentation(scan, load, **kwargs):  # the segmentation itself is not under test
    import innerear.inference.segment as seg
    from innerear.inference.report import SegmentReport

    checks = {"inner_ear_volume": {"passed": True}, "intensity": {"passed": True, "distance": 0.0}}
    report = SegmentReport({}, {}, {}, 0.5, {}, None, None, checks, {}, 0.0)
    return seg.SegmentResult(_ball((16, 16, 16), 5), None, None, AFFINE, report)


@pytest.mark.parametrize("output,writer", [("ear.nii.gz", "innerear.io.nifti"), ("ear.stl", "innerear.io.mesh")])
def test_disk_full_names_the_output_and_leaves_nothing(tmp_path, capsys, monkeypatch, output, writer):
    import importlib

    import innerear.inference.segment

    scan = _scan(tmp_path / "scan.nii.gz")
    monkeypatch.setattr(innerear.inference.segment, "run_segmentation", _fake_segmentation)
    monkeypatch.setattr(importlib.import_module(writer), "open", _full_disk_open, raising=False)
    before = _tree(tmp_path)
    target = tmp_path / output
    code, _, err = _run_cli(["segment", scan, "-o", tmp_path / "ear.nii.gz", "--mesh", tmp_path / "ear.stl",
                             "--report", tmp_path / "ear.json", "--quiet"], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0] == f"innerear: error: {target}: cannot be written (No space left on device)", err[0]
    assert _tree(tmp_path) == before, "a failed write left files behind"


def test_write_error_names_the_file_in_every_atomic_writer(tmp_path, monkeypatch):
    from innerear.io import WriteError, save_npz, write_json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(WriteError) as info:
        write_json(tmp_path / "a.json", {"x": 1})
    assert str(info.value) == f"{tmp_path / 'a.json'}: cannot be written (No space left on device)"
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(WriteError, match="b.npz: cannot be written"):
        save_npz(tmp_path / "b.npz", x=np.zeros(3))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 8-11. train refusals
def _pair(folder, cid, label=None, image_shape=(12, 12, 12), label_affine=AFFINE):
    folder.mkdir(exist_ok=True)
    if label is None:
        label = np.zeros((12, 12, 12), np.uint8)
        label[3:9, 4:8, 2:10] = 1
    image = np.random.default_rng(0).normal(1000, 100, image_shape).astype(np.float32)
    write_volume(folder / f"{cid}_image.nii.gz", image, AFFINE)
    write_volume(folder / f"{cid}_label.nii.gz", label, label_affine)


def _train(capsys, data, out, *extra):
    return _run_cli(["train", data, "--out", out, "--profile", "smoke", "--order", "axial", "--quiet", *extra],
                    capsys)


@pytest.mark.parametrize("n", [1, 3])
def test_too_few_specimens_for_the_folds_are_refused_before_writing(tmp_path, capsys, n):
    data = tmp_path / "data"
    for i in range(n):
        _pair(data, f"s{i}")
    before = _tree(tmp_path)
    code, _, err = _train(capsys, data, tmp_path / "runs")
    assert code == 1 and len(err) == 1, err
    line = err[0]
    assert line.startswith(f"innerear: error: {data}: {n} specimen(s)") and "cannot make 4 folds" in line, line
    assert "n_folds" in line and "--profile" in line and "'smoke'" in line, line
    assert _tree(tmp_path) == before, "a refused training wrote files or folders"


def test_fold_out_of_range_is_refused_before_writing(tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(4):
        _pair(data, f"s{i}")
    before = _tree(tmp_path)
    code, _, err = _train(capsys, data, tmp_path / "runs", "--fold", "4")
    assert code == 1 and len(err) == 1 and "--fold must be in 0..3, got 4" in err[0], err
    assert _tree(tmp_path) == before


def _bad_label_values():
    label = np.zeros((12, 12, 12), np.uint8)
    label[3:9, 4:8, 2:10] = 2
    label[3:5, 4:6, 2:4] = 5
    return label


@pytest.mark.parametrize("bad,problem", [
    ("s0", "shape (12, 12, 12) differs"),  # the first case refused: nothing prepared yet
    ("s3", "shape (12, 12, 12) differs"),  # the last one: three cases prepared before it
    ("s2", "affine differs"),
    ("s1", "label holds values {0, 2, 5}"),
])
def test_refused_training_data_leaves_no_cache_behind(tmp_path, capsys, bad, problem):
    data = tmp_path / "data"
    for i in range(4):
        cid = f"s{i}"
        if cid != bad:
            _pair(data, cid)
        elif "shape" in problem:
            _pair(data, cid, image_shape=(10, 12, 12))
        elif "affine" in problem:
            _pair(data, cid, label_affine=np.diag([0.1, 0.1, 0.2, 1.0]))
        else:
            _pair(data, cid, label=_bad_label_values())
    before = _tree(tmp_path)
    code, _, err = _train(capsys, data, tmp_path / "runs")
    assert code == 1 and len(err) == 1, err
    assert f"{bad}_" in err[0] and problem in err[0], err[0]
    assert _tree(tmp_path) == before, "a refused training left files or folders"
    # what existed before is never deleted
    keep = tmp_path / "runs" / "cache" / "smoke-32"
    keep.mkdir(parents=True)
    (keep / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    code, _, err = _train(capsys, data, tmp_path / "runs")
    assert code == 1 and len(err) == 1, err
    assert _tree(tmp_path) == before and (keep / "notes.txt").read_text() == "mine"
