"""``benchmarks/bench_real.py``: a folder of scans with expert labels scored by the shipped segmenter.

The scoring functions are checked on masks whose Dice and volume error are known; the label map,
the pairing and the mirrored header on small files; the whole script once on a folder of two smoke
phantoms (labels in the maintainers' kind of values: the cochlea split into two scalae) and one
label that does not fit its scan, with the shipped model (a few seconds per segmentation).
"""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from innerear.data.phantom import generate_specimen
from innerear.io import write_volume
from innerear.reporting import performance as perf
from innerear.settings.profiles import get_profile
from innerear.settings.structures import CANALS, COCHLEA, VESTIBULE

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_real", ROOT / "benchmarks" / "bench_real.py")
bench = sys.modules.setdefault("bench_real", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench)

MAP = {"cochlea": [1, 2], "vestibule": [3], "canals": [4]}


def _cube(shape=(30, 30, 30), lo=(10, 10, 10), size=(10, 10, 10)):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + s) for a, s in zip(lo, size))] = True
    return m


# --------------------------------------------------------------------------- scores
def test_scores_of_masks_whose_dice_and_volume_error_are_known():
    affine = np.diag([0.1, 0.2, 0.3, 1.0])
    voxel = 0.1 * 0.2 * 0.3
    same = bench.score_masks(_cube(), _cube(), affine)
    assert same.dice == 1.0 and same.hd95_mm == 0.0 and same.volume_error_mm3 == 0.0 and same.volume_error_pct == 0.0
    shifted = bench.score_masks(_cube(lo=(12, 10, 10)), _cube(), affine)  # overlap 8 of 10 slices
    assert shifted.dice == pytest.approx(0.8) and shifted.volume_error_pct == 0.0
    assert 0.0 < shifted.hd95_mm <= 2 * 0.1 + 1e-9  # the two faces 2 voxels (0.2 mm) apart along x
    larger = bench.score_masks(_cube(size=(12, 10, 10)), _cube(), affine)
    assert larger.dice == pytest.approx(2 * 1000 / 2200)
    assert larger.volume_error_mm3 == pytest.approx(200 * voxel) and larger.volume_error_pct == pytest.approx(20.0)
    empty = bench.score_masks(np.zeros((30, 30, 30), bool), _cube(), affine)
    assert empty.dice == 0.0 and empty.hd95_mm is None and empty.volume_error_pct == pytest.approx(-100.0)


def test_whole_mask_score_is_restricted_to_the_labelled_structures():
    shape = (30, 30, 30)
    predicted = np.zeros(shape, np.uint8)
    predicted[_cube(lo=(2, 2, 2), size=(8, 8, 8))] = COCHLEA
    predicted[_cube(lo=(15, 15, 15), size=(8, 8, 8))] = VESTIBULE
    expert_label = np.zeros(shape, np.int16)
    expert_label[_cube(lo=(2, 2, 2), size=(8, 8, 4))] = 1  # scala tympani
    expert_label[_cube(lo=(2, 2, 6), size=(8, 8, 4))] = 2  # scala vestibuli; nothing else labelled
    expert = bench.apply_label_map(expert_label, bench.parse_label_map(MAP, Path("m.json")), Path("e.nii.gz"))
    assert expert.labelled == ("cochlea",) and expert.values == (0, 1, 2)
    s = bench.score(predicted > 0, predicted, expert, np.diag([0.1, 0.1, 0.1, 1.0]))
    assert s.compared == ("cochlea",) and set(s.structures) == {"cochlea"}
    assert s.inner_ear.dice == 1.0 and s.structures["cochlea"].dice == 1.0  # the vestibule is not labelled
    assert s.cochlea_expert is not None and s.cochlea_expert.reason  # a cube is no spiral: the reason, no crash
    default = bench.apply_label_map(expert_label, bench.LabelMap(), Path("e.nii.gz"))
    s = bench.score(predicted > 0, predicted, default, np.diag([0.1, 0.1, 0.1, 1.0]))
    assert s.compared == (bench.INNER_EAR,) and s.structures == {} and s.cochlea_expert is None
    assert s.inner_ear.dice == pytest.approx(2 * 512 / (1024 + 512))


# --------------------------------------------------------------------------- label map
def test_label_map_is_checked_and_errors_name_the_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"cochlea": [1, 2], "vestibule": 3}))
    lm = bench.resolve_label_map(tmp_path, None)
    assert lm.structures == {"cochlea": (1, 2), "vestibule": (3,)} and lm.source == str(path)
    for obj, words in (({"cochlae": [1]}, "unknown structure 'cochlae' (known: cochlea, vestibule, canals)"),
                       ({"cochlea": [0, 1]}, "0, which is background"),
                       ({"cochlea": [1], "canals": [1]}, "label value 1 is mapped to both"),
                       ({"cochlea": ["1"]}, "integers"), ([1, 2], "expected an object")):
        path.write_text(json.dumps(obj))
        with pytest.raises(ValueError) as err:
            bench.read_label_map(path)
        assert str(err.value).startswith(f"{path}: ") and words in str(err.value), err.value
    path.write_text("{cochlea: 1")
    with pytest.raises(ValueError, match="not valid JSON"):
        bench.resolve_label_map(tmp_path, None)
    path.unlink()
    assert not bench.resolve_label_map(tmp_path, None).per_structure  # default: any non-zero is the inner ear


def test_label_values_map_to_structures_and_bad_labels_are_refused():
    lm = bench.parse_label_map(MAP, Path("m.json"))
    label = np.array([0, 1, 2, 3, 4, 9], np.int32).reshape(1, 2, 3)
    expert = bench.apply_label_map(label, lm, Path("e.nii.gz"))
    assert expert.structures.ravel().tolist() == [0, COCHLEA, COCHLEA, VESTIBULE, CANALS, 0]  # 9: background
    assert expert.labelled == ("cochlea", "vestibule", "canals")
    with pytest.raises(ValueError, match="e.nii.gz: the label holds non-integer values"):
        bench.apply_label_map(label + 0.5, lm, Path("e.nii.gz"))
    with pytest.raises(ValueError, match="holds none of the values m.json maps"):
        bench.apply_label_map(np.full((2, 2, 2), 9), lm, Path("e.nii.gz"))


def test_script_refuses_a_bad_label_map_in_one_line_before_loading_a_model(tmp_path, capsys):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"cochlea": [1], "utricle": [2]}))
    assert bench.main(["--data", str(tmp_path), "--labels-map", str(bad), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: unknown structure 'utricle'" in err[0]
    assert bench.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.json")]) == 2
    assert "nowhere: data folder not found" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------------- pairing and geometry
def test_pairs_by_suffix_or_labels_folder(tmp_path):
    small = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    for name in ("a.nii.gz", "a_label.nii.gz", "b_image.nrrd", "b_seg.mha", "c.nii.gz", "d.nii.gz",
                 "labels/c.nrrd", "e_mask.nii.gz"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_volume(tmp_path / name, small, np.eye(4))
    (tmp_path / "labels.json").write_text("{}")
    pairs = {p.case: p for p in bench.find_pairs(tmp_path)}
    assert sorted(pairs) == ["a", "b", "c", "d", "e"]
    assert (pairs["a"].scan.name, pairs["a"].label.name, pairs["a"].problem) == ("a.nii.gz", "a_label.nii.gz", None)
    assert (pairs["b"].scan.name, pairs["b"].label.name) == ("b_image.nrrd", "b_seg.mha")
    assert pairs["c"].label == tmp_path / "labels" / "c.nrrd" and pairs["c"].problem is None
    assert "d.nii.gz: no expert label (expected d_label.<ext> or labels/d.<ext>)" in pairs["d"].problem
    assert "e_mask.nii.gz: a label without a scan" in pairs["e"].problem


def test_mirrored_header_keeps_the_volume_in_place():
    affine = np.array([[0.0, 0.0, -0.13, 5.0], [0.11, 0.0, 0.0, -2.0], [0.0, -0.09, 0.0, 1.0], [0, 0, 0, 1.0]])
    shape = (7, 5, 4)
    mirrored = bench.mirrored_affine(affine, shape)
    corners = {tuple(np.round(c, 9)) for c in bench._corners(affine, shape)}
    assert {tuple(np.round(c, 9)) for c in bench._corners(mirrored, shape)} == corners
    assert np.sign(np.linalg.det(mirrored[:3, :3])) == -np.sign(np.linalg.det(affine[:3, :3]))
    np.testing.assert_allclose(mirrored @ [2, 1, 3, 1], affine @ [shape[0] - 1 - 2, 1, 3, 1])
    assert bench.grid_problem(shape, affine, shape, affine) is None
    shifted = affine.copy()
    shifted[:3, 3] += 0.05
    assert "not the scan's grid" in bench.grid_problem(shape, affine, shape, shifted)
    assert "shape (7, 5, 3) differs from the scan's (7, 5, 4)" in bench.grid_problem(shape, affine, (7, 5, 3), affine)


def test_side_convention_is_the_phantoms():
    sp = generate_specimen(0, 7, get_profile("smoke").phantoms)
    cochlea = sp.structures == COCHLEA
    assert bench.SIDE_BY_HANDEDNESS[bench.measure(cochlea, sp.affine).handedness] == sp.meta["side"]
    other = bench.measure(cochlea, bench.mirrored_affine(sp.affine, cochlea.shape))
    assert bench.SIDE_BY_HANDEDNESS[other.handedness] != sp.meta["side"]


# --------------------------------------------------------------------------- the script
def _expert_label(structures: np.ndarray) -> np.ndarray:
    """The phantom's structures in an expert's values: the cochlea split into two scalae (1, 2) along
    its last axis, vestibule 3, canals 4."""
    label = np.zeros(structures.shape, np.int16)
    cochlea = structures == COCHLEA
    k = np.nonzero(cochlea)[2]
    split = np.zeros_like(cochlea)
    split[..., int(np.median(k)):] = True
    label[cochlea & ~split], label[cochlea & split] = 1, 2
    label[structures == VESTIBULE], label[structures == CANALS] = 3, 4
    return label


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """Two phantoms (the second labelled in labels/ and only its cochlea), one label that does not fit."""
    folder = tmp_path_factory.mktemp("real")
    (folder / "labels").mkdir()
    settings = get_profile("smoke").phantoms
    one, two = generate_specimen(0, 7, settings), generate_specimen(3, 7, settings)
    write_volume(folder / "ear01.nii.gz", one.image, one.affine)
    write_volume(folder / "ear01_label.nii.gz", _expert_label(one.structures), one.affine)
    write_volume(folder / "ear02.nrrd", two.image, two.affine)
    only_cochlea = np.where(_expert_label(two.structures) <= 2, _expert_label(two.structures), 0)
    write_volume(folder / "labels" / "ear02.nii.gz", only_cochlea.astype(np.int16), two.affine)
    write_volume(folder / "ear03.nii.gz", one.image, one.affine)
    write_volume(folder / "ear03_label.nii.gz", _expert_label(one.structures)[:-3], one.affine)
    (folder / "labels.json").write_text(json.dumps(MAP))
    out = folder / "record.json"
    code = bench.main(["--data", str(folder), "--out", str(out)])
    assert code == 0
    return folder, perf.read_record(out)


def test_script_scores_each_case_and_records_the_bad_one(real_run, capsys):
    folder, record = real_run
    assert record["kind"] == "bench_real" and record["label_map"]["source"] == str(folder / "labels.json")
    rows = {r["case"]: r for r in record["cases"]}
    assert sorted(rows) == ["ear01", "ear02", "ear03"]
    assert record["summary"]["scored"] == 2 and record["summary"]["not_scored"] == 1
    bad = rows["ear03"]
    assert bad["as_stored"] is None and bad["reason"].startswith(str(folder / "ear03_label.nii.gz"))
    assert "differs from the scan's" in bad["reason"]
    full, partial = rows["ear01"], rows["ear02"]
    assert full["labelled"] == ["cochlea", "vestibule", "canals"] and partial["labelled"] == ["cochlea"]
    assert partial["label"] == str(folder / "labels" / "ear02.nii.gz")
    for row in (full, partial):
        stored, mirrored = row["as_stored"], row["mirrored"]
        assert row["shape"] and len(row["voxel_mm"]) == 3 and row["seconds"] > 0
        assert 0 < stored["inner_ear"]["dice"] <= 1 and 0 < mirrored["inner_ear"]["dice"] <= 1
        assert row["dice_difference"] == pytest.approx(mirrored["inner_ear"]["dice"] - stored["inner_ear"]["dice"])
        assert stored["compared"] == row["labelled"] and set(stored["structures"]) == set(row["labelled"])
        assert stored["cochlea_expert"]["handedness"] == 1 and row["side_as_read"] == "right (+1)"  # both right ears
        assert mirrored["cochlea_expert"]["handedness"] == -1
        assert stored["cochlea_expert"]["duct_length_mm"] == pytest.approx(
            mirrored["cochlea_expert"]["duct_length_mm"], rel=0.01)  # the same voxels, mirrored: the same length
    assert full["as_stored"]["inner_ear"]["dice"] > 0.5  # the labyrinth is found (its cochlea, at 0.39 mm, barely)
    # only the cochlea is labelled: the whole-mask score is the cochlea's
    assert partial["as_stored"]["inner_ear"]["dice"] == pytest.approx(partial["as_stored"]["structures"]["cochlea"]["dice"])


def test_performance_page_section_renders_the_record_or_says_it_is_absent(real_run):
    _, record = real_run
    table = perf.real_scans_table(record)
    assert list(table["case"]) == ["ear01", "ear02", "ear03"]
    assert table.loc[2, "Dice as stored"] == "not scored" and table.loc[2, "Dice mirrored"] == "—"
    assert table.loc[0, "Dice as stored"] == f"{record['cases'][0]['as_stored']['inner_ear']['dice']:.3f}"
    text = perf.real_scans_markdown(record)
    assert "2 of 3 cases scored" in text and "- ear03: " in text and "| cochlea Dice |" in text
    absent = perf.real_scans_markdown(None)
    assert absent.startswith("No real-scan record is present (`benchmarks/results/bench_real.json` is absent)")
