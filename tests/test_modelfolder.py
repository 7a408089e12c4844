"""The model-folder format: one typed description, one loader, refusals in one line, the upgrade from format 1."""
import json
import shutil

import numpy as np
import pytest

from innerear import cli
from innerear.inference.modelfolder import (DEFAULT_MODEL, FORMAT_VERSION, PAPER_RECIPE_MODEL, ModelSpec, SegmentError,
                                            export_model, read_model_folder, upgrade_model)

#: what format 1 kept in (or repeated into) the model card
_V1_CARD_FACTS = ("grid", "voxel_mm", "order", "backbone", "fold", "normalizer", "profile", "classes")


def _as_format_1(folder):
    """Rewrite a format-2 folder as format 1 wrote it: no format_version, the checks' references
    and the recipe in the card, the card repeating cascade.json, stage.json without the grid."""
    spec = json.loads((folder / "cascade.json").read_text())
    card = json.loads((folder / "model_card.json").read_text())
    del spec["format_version"]
    for key in ("intensity_histogram", "plausible_inner_ear_volume_mm3"):
        if key in spec:
            card[key] = spec.pop(key)
    if "recipe" in card:
        spec["recipe"] = card["recipe"]
    card.update({k: spec.get(k) for k in _V1_CARD_FACTS})
    (folder / "cascade.json").write_text(json.dumps(spec))
    (folder / "model_card.json").write_text(json.dumps(card))
    for rel in spec["stages"]:
        stage = folder / rel / "stage.json"
        stage.write_text(json.dumps({k: v for k, v in json.loads(stage.read_text()).items() if k != "grid"}))
    return folder


@pytest.mark.parametrize("model", [DEFAULT_MODEL, PAPER_RECIPE_MODEL], ids=["robust", "paper"])
def test_shipped_folders_are_format_2(model):
    loaded = read_model_folder(model)
    assert loaded.spec.format_version == FORMAT_VERSION == 2
    assert [s.view for s in loaded.stages] == list(loaded.spec.order)
    assert [(s.stage, s.channels) for s in loaded.stages] == [(1, 1), (2, 2), (3, 3)]
    assert all(s.network.is_file() for s in loaded.stages)
    assert ModelSpec.from_dict(loaded.spec.to_dict(), model / "cascade.json") == loaded.spec
    card = json.loads((model / "model_card.json").read_text())
    assert not set(card) & {"grid", "voxel_mm", "order", "normalizer", "intensity_histogram",
                            "plausible_inner_ear_volume_mm3"}, "the card repeats cascade.json"


def test_stage_voxel_size_that_disagrees_is_refused_naming_the_file(tmp_path):
    model = shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    stage = model / "stage3_axial" / "stage.json"
    stage.write_text(json.dumps(dict(json.loads(stage.read_text()), voxel_mm=0.3)))
    with pytest.raises(SegmentError) as info:
        read_model_folder(model)
    text = str(info.value)
    assert text.startswith(f"{stage}: ") and "voxel_mm is 0.3 here but 0.15 in" in text and "cascade.json" in text
    assert "\n" not in text


def test_format_1_folder_is_refused_with_the_way_to_convert_it(tmp_path, capsys):
    model = _as_format_1(shutil.copytree(PAPER_RECIPE_MODEL, tmp_path / "old"))
    with pytest.raises(SegmentError) as info:
        read_model_folder(model)
    text = str(info.value)
    assert text.startswith(f"{model}: ") and "version 1" in text and f"innerear upgrade-model {model}" in text
    scan = tmp_path / "scan.nii.gz"
    from innerear.io import write_volume

    write_volume(scan, np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.diag([0.1] * 3 + [1.0]))
    capsys.readouterr()
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "ear.nii.gz"), "--model", str(model), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "innerear upgrade-model" in err[0], err
    assert not (tmp_path / "ear.nii.gz").exists()


@pytest.mark.parametrize("model", [DEFAULT_MODEL, PAPER_RECIPE_MODEL], ids=["robust", "paper"])
def test_upgrade_gives_the_format_2_folder_back(tmp_path, capsys, model):
    old = _as_format_1(shutil.copytree(model, tmp_path / "old"))
    keras_before = {p: p.read_bytes() for p in old.rglob("best.keras")}
    assert cli.main(["upgrade-model", str(old)]) == 0
    assert "format version 2" in capsys.readouterr().out
    assert read_model_folder(old).spec == read_model_folder(model).spec
    assert json.loads((old / "model_card.json").read_text()) == json.loads((model / "model_card.json").read_text())
    for rel in read_model_folder(model).spec.stages:
        assert json.loads((old / rel / "stage.json").read_text()) == json.loads((model / rel / "stage.json").read_text())
    assert all(p.read_bytes() == data for p, data in keras_before.items())  # networks untouched
    # never silently again
    assert cli.main(["upgrade-model", str(old)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already model folder format version 2" in err[0]


def test_upgraded_folder_segments_identically(tmp_path):
    from innerear.data.phantom import generate_specimen
    from innerear.inference.segment import segment_scan
    from innerear.io import write_volume
    from innerear.settings.profiles import get_profile

    old = _as_format_1(shutil.copytree(DEFAULT_MODEL, tmp_path / "old"))
    upgrade_model(old)
    spec = generate_specimen(0, 7, get_profile("smoke").phantoms)
    write_volume(tmp_path / "scan.nii", spec.image, spec.affine)
    results = []
    for model in (DEFAULT_MODEL, old):
        labels: dict = {}
        mask, affine, report = segment_scan(tmp_path / "scan.nii", model, labels_out=labels)
        results.append((mask, labels["labels"], report))
    (mask_a, labels_a, rep_a), (mask_b, labels_b, rep_b) = results
    assert np.array_equal(mask_a, mask_b) and np.array_equal(labels_a, labels_b)
    for key in ("inner_ear", "structures", "checks", "prepared"):
        assert rep_a[key] == rep_b[key], key


def test_upgrade_refuses_a_card_that_disagrees(tmp_path):
    old = _as_format_1(shutil.copytree(PAPER_RECIPE_MODEL, tmp_path / "old"))
    card = json.loads((old / "model_card.json").read_text())
    (old / "model_card.json").write_text(json.dumps(dict(card, grid=96)))
    with pytest.raises(SegmentError, match="model_card.json: model folder inconsistent: grid is 96 here but 64"):
        upgrade_model(old)
    assert "format_version" not in json.loads((old / "cascade.json").read_text())  # nothing written


def test_export_refuses_a_card_that_repeats_cascade_json(tmp_path):
    with pytest.raises(ValueError, match="must not repeat"):
        export_model(PAPER_RECIPE_MODEL, tmp_path / "model", {"grid": 64})
    assert not (tmp_path / "model").exists()
