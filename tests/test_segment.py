"""`innerear segment` / `innerear train`: scans come back on their own grid; bad input fails in one line."""
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from innerear import cli
from innerear.settings.profiles import get_profile
from innerear.io import read_volume, write_tiff_stack, write_volume
from innerear.data.phantom import generate_specimen, write_phantom_set
from innerear.metrics import dice
from innerear.data.scan import map_to_scan
from innerear.inference.modelfolder import DEFAULT_MODEL, FORMAT_VERSION, PAPER_RECIPE_MODEL, read_model_folder
from innerear.inference.segment import load_model_dir, segment_scan
from innerear.io.mesh import read_stl

pytest.importorskip("SimpleITK")


def _rotation(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def reslice(spec, direction, spacing):
    """The specimen re-scanned on a grid with ``direction`` (3x3, columns) and ``spacing`` that
    covers its whole field of view: ``(image, label, affine)``; linear interpolation."""
    corners = np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in spec.image.shape], indexing="ij")).reshape(3, -1)
    world = spec.affine[:3, :3] @ corners + spec.affine[:3, 3, None]
    frame = np.asarray(direction) @ np.diag(spacing)
    idx = np.linalg.solve(frame, world)  # world corners in the new grid's (unshifted) index frame
    lo, hi = idx.min(1), idx.max(1)
    shape = tuple(int(np.ceil(h - l)) for l, h in zip(lo, hi))
    affine = np.eye(4)
    affine[:3, :3] = frame
    affine[:3, 3] = frame @ (lo + 0.5)
    pts = np.array(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).reshape(3, -1)
    src = np.linalg.inv(spec.affine) @ affine @ np.vstack([pts, np.ones(pts.shape[1])])
    image = ndimage.map_coordinates(spec.image.astype(np.float32), src[:3], order=1, mode="nearest").reshape(shape)
    label = ndimage.map_coordinates(spec.label.astype(np.float32), src[:3], order=1, cval=0).reshape(shape) >= 0.5
    return image.astype(np.uint16), label.astype(np.uint8), affine


@pytest.fixture(scope="module")
def held_out():
    """A demo-sized phantom the shipped model never saw (seed 99)."""
    return generate_specimen(2, 99, get_profile("demo").phantoms)


@pytest.fixture(scope="module")
def model():
    return load_model_dir()


def test_default_model_is_the_robust_one_and_documented():
    model = read_model_folder(None)
    folder, spec = model.folder, model.spec
    assert folder == DEFAULT_MODEL and spec.stages == ("stage1_coronal", "stage2_sagittal", "stage3_axial")
    assert spec.format_version == FORMAT_VERSION == 2
    assert spec.voxel_mm > 0 and spec.grid is None and spec.normalizer["kind"] == "percentile"
    assert spec.classes == ("background", "cochlea", "vestibule", "canals")
    assert spec.intensity_histogram["warn_above"] >= 0.1
    card = json.loads((folder / "model_card.json").read_text())
    assert "SYNTHETIC" in card["WARNING"] and card["recipe"]["voxel_mm"] == spec.voxel_mm and len(card["limits"]) >= 3
    cells = card["domain_shift"]["cells"]
    assert cells and all(isinstance(c["robust"]["dice"], float) for c in cells)
    assert card["speed"]["median_wall_s"] > 0
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 20 * 2**20  # the limit


def test_paper_recipe_model_is_complete_and_documented():
    model = read_model_folder(PAPER_RECIPE_MODEL)
    assert model.spec.stages == ("stage1_coronal", "stage2_sagittal", "stage3_axial")
    assert model.spec.format_version == 2 and model.spec.grid == 64
    card = json.loads((model.folder / "model_card.json").read_text())
    assert "SYNTHETIC" in card["data"]["kind"] and card["training"]["profile"]["name"] == "demo"
    assert set(card["held_out_dice_per_stage"]) == {"stage1_coronal", "stage2_sagittal", "stage3_axial"}
    size = sum(p.stat().st_size for p in model.folder.rglob("*") if p.is_file())
    assert size < 10 * 2**20


def test_paper_recipe_model_card_is_consistent():
    card = json.loads((PAPER_RECIPE_MODEL / "model_card.json").read_text())
    spec = read_model_folder(PAPER_RECIPE_MODEL).spec
    trained = card["training"]["profile"]
    n_used = len(card["stages"][0]["train_ids"]) + len(card["stages"][0]["test_ids"])
    assert card["data"]["n_specimens"] == trained["phantoms"]["n_specimens"] == n_used
    assert spec.grid == trained["grid"] == card["training"]["overrides_of_demo"]["grid"]
    assert not {"grid", "order", "normalizer", "profile"} & set(card)  # what cascade.json states, the card doesn't
    assert not card["exported_from"].startswith(("/tmp", "/var")) and card["exported_from"].startswith("WORK/")


def test_rotated_anisotropic_scan_comes_back_on_its_grid(tmp_path, held_out, model, capsys):
    # axes permuted and flipped, tilted by 12 degrees, anisotropic voxels, non-cubic grid
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0.0]])
    direction = _rotation((1, 2, 0.5), 12) @ perm
    v = held_out.spacing[0]
    image, label, affine = reslice(held_out, direction, (1.25 * v, 0.9 * v, 1.1 * v))
    assert len(set(image.shape)) == 3
    write_volume(tmp_path / "scan.nrrd", image, affine)
    args = ["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "ear.nii.gz"),
            "--mesh", str(tmp_path / "ear.stl"), "--report", str(tmp_path / "ear.json"), "--quiet"]
    assert cli.main(args) == 0
    assert "ear.nii.gz: inner ear" in capsys.readouterr().out
    mask, spacing, back_affine = read_volume(tmp_path / "ear.nii.gz")
    assert mask.shape == image.shape
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)
    assert dice(mask, label) >= 0.8
    rep = json.loads((tmp_path / "ear.json").read_text())
    ear = rep["inner_ear"]
    assert ear["voxels"] == int(mask.sum()) and ear["components_kept"] == 1
    assert ear["volume_mm3"] == pytest.approx(mask.sum() * abs(np.linalg.det(affine[:3, :3])))
    assert ear["volume_mm3"] == pytest.approx(label.sum() * abs(np.linalg.det(affine[:3, :3])), rel=0.3)
    assert rep["input"]["shape"] == list(image.shape) and rep["model"]["profile"] == "robust"
    assert {"read", "prepare", "cascade", "map_back", "write"} <= set(rep["timings_s"])
    tri, _ = read_stl(tmp_path / "ear.stl")
    verts = tri.reshape(-1, 3)
    lo, hi = np.array(ear["bbox_mm"]["min"]), np.array(ear["bbox_mm"]["max"])
    assert len(verts) and np.all(verts >= lo - 1e-3) and np.all(verts <= hi + 1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ear.json", "ear.nii.gz", "ear.stl", "scan.nrrd"]


def test_tiff_folder_with_given_spacing(tmp_path, held_out, model):
    write_tiff_stack(tmp_path / "slices", held_out.image)
    mask, affine, rep = segment_scan(tmp_path / "slices", spacing=held_out.spacing, cascade=model)
    assert mask.shape == held_out.image.shape
    np.testing.assert_allclose(affine, np.diag([*held_out.spacing, 1.0]))
    assert dice(mask, held_out.label) >= 0.8
    assert rep["input"]["format"] == "tiff" and rep["input"]["spacing_source"] == "given"


def test_map_to_scan_is_the_inverse_of_preparation():
    """A map on the prepared grid sampled back at the scan's voxel centres (pure geometry)."""
    from innerear.data.scan import prepare_scan

    aff = np.array([[0, 0, -0.3, 5], [0.2, 0, 0, -1], [0, 0.5, 0, 2], [0, 0, 0, 1.0]])
    shape = (30, 20, 12)
    world_x = (aff @ np.vstack([np.indices(shape).reshape(3, -1), np.ones(np.prod(shape))]))[0].reshape(shape)
    prepared, paff = prepare_scan(world_x, aff, 16)
    back = map_to_scan(prepared, paff, shape, aff, threshold=None)
    inner = (slice(2, -2),) * 3  # away from the clamped edges
    np.testing.assert_allclose(back[inner], world_x[inner], atol=0.05)


# --------------------------------------------------------------------------- bad input
def _nifti(path, array, affine=np.eye(4)):
    write_volume(path, array, affine)
    return path


def _scan(tmp_path):
    return _nifti(tmp_path / "ok.nii.gz", np.random.default_rng(0).random((12, 10, 8)).astype(np.float32))


def _incomplete_model(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    (folder / "stage2_sagittal" / "best.keras").unlink()
    return folder


BAD = {
    "unknown format": (lambda p: ["segment", str(_nifti(p / "x.nii.gz", np.ones((3, 3, 3))).rename(p / "x.png")),
                                  "-o", str(p / "out.nii.gz")], "x.png"),
    "unreadable": (lambda p: [(p / "bad.nrrd").write_bytes(b"NRRD0004\ngarbage\n"), "segment", str(p / "bad.nrrd"),
                              "-o", str(p / "out.nii.gz")][1:], "bad.nrrd"),
    "missing scan": (lambda p: ["segment", str(p / "nope.nii.gz"), "-o", str(p / "out.nii.gz")], "nope.nii.gz"),
    "2D image": (lambda p: ["segment", str(_nifti(p / "flat.nii.gz", np.ones((8, 8), np.float32))),
                            "-o", str(p / "out.nii.gz")], "flat.nii.gz"),
    "missing spacing": (lambda p: [write_tiff_stack(p / "stack", np.ones((4, 4, 4), np.uint8)), "segment",
                                   str(p / "stack"), "-o", str(p / "out.nii.gz")][1:], "stack"),
    "constant": (lambda p: ["segment", str(_nifti(p / "const.nii.gz", np.full((8, 8, 8), 7.0, np.float32))),
                            "-o", str(p / "out.nii.gz")], "const.nii.gz"),
    "NaNs": (lambda p: ["segment", str(_nifti(p / "nan.nii.gz", np.where(np.eye(8)[:, :, None] > 0, np.nan, 1.0)
                                              * np.ones((8, 8, 8), np.float32))), "-o", str(p / "out.nii.gz")],
             "nan.nii.gz"),
    "output exists": (lambda p: ["segment", str(_scan(p)), "-o",
                                 str(_nifti(p / "exists.nii.gz", np.zeros((2, 2, 2))))], "exists.nii.gz"),
    "output folder missing": (lambda p: ["segment", str(_scan(p)), "-o", str(p / "missing" / "out.nii.gz")],
                              "out.nii.gz"),
    "output format": (lambda p: ["segment", str(_scan(p)), "-o", str(p / "out.png")], "out.png"),
    "mesh format": (lambda p: ["segment", str(_scan(p)), "-o", str(p / "out.nii.gz"), "--mesh", str(p / "m.obj")],
                    "m.obj"),
    "model incomplete": (lambda p: ["segment", str(_scan(p)), "-o", str(p / "out.nii.gz"),
                                    "--model", str(_incomplete_model(p))], "best.keras"),
    "label/image mismatch": (lambda p: [(p / "d").mkdir(), _nifti(p / "d" / "s1_image.nii.gz", np.arange(512.0).reshape(8, 8, 8)),
                                        _nifti(p / "d" / "s1_label.nii.gz", np.ones((8, 8, 7))),
                                        "train", str(p / "d"), "--out", str(p / "out"), "--quiet"][3:],
                             "s1_label.nii.gz"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_in_one_line_naming_the_file(tmp_path, capsys, case):
    make, name = BAD[case]
    args = make(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("innerear: error: ") and name in err[0], err
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "a failed run left or changed files"


def test_failure_while_writing_leaves_no_partial_output(tmp_path, held_out, model, monkeypatch, capsys):
    import innerear.inference.segment

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(innerear.inference.segment, "write_stl", broken)
    _nifti(tmp_path / "scan.nii.gz", held_out.image, held_out.affine)
    code = cli.main(["segment", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "ear.nrrd"),
                     "--mesh", str(tmp_path / "ear.stl"), "--report", str(tmp_path / "r.json"), "--quiet"])
    assert code == 1 and "disk full" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]


def test_train_then_segment_with_the_trained_model(tmp_path, capsys):
    data = tmp_path / "data"
    write_phantom_set(data, get_profile("smoke").phantoms, seed=4, n=4)
    code = cli.main(["train", str(data), "--out", str(tmp_path / "runs"), "--profile", "smoke",
                     "--order", "axial", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "stage 1 (axial): held-out Dice" in out and "cascade.json" in out
    cascades = list((tmp_path / "runs").rglob("cascade.json"))
    assert len(cascades) == 1
    # --model may name the train --out folder: its one cascade is found (a smoke-sized model's mask
    # need not be plausible: --allow-empty; the refusal itself is tested in test_refusals.py)
    code = cli.main(["segment", str(data / "phantom_000_image.nii.gz"), "-o", str(tmp_path / "m.nii.gz"),
                     "--model", str(tmp_path / "runs"), "--quiet", "--allow-empty"])
    assert code == 0
    mask, _, _ = read_volume(tmp_path / "m.nii.gz")
    assert mask.shape == read_volume(data / "phantom_000_image.nii.gz")[0].shape
