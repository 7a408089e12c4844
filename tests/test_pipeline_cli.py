"""Pipeline plan, CLI exit codes and messages, viz helpers."""
from pathlib import Path

import numpy as np
import pytest

from innerear import cli
from innerear.reporting import pipeline, figures as viz
from innerear.settings.views import PAPER_ORDER
from innerear.settings.profiles import get_profile
from innerear.io import mesh


def test_training_jobs_cover_table1_and_group_runs_that_share_stages():
    jobs = pipeline.training_jobs(get_profile("demo"))
    assert len(jobs) == len(set(jobs))
    for backbone in ("unet", "res_unet", "se_unet"):
        for fold in range(4):
            assert (backbone, fold, ("axial",)) in jobs
            assert (backbone, fold, tuple(PAPER_ORDER)) in jobs
    groups = pipeline.job_groups(jobs)
    assert len(groups) == 12  # one per (backbone, fold)
    assert sorted(j for g in groups for j in g) == sorted(jobs)
    for g in groups:  # one backbone per group; runs sharing a (backbone, fold) share a group
        assert len({j[0] for j in g}) == 1
        others = [j for h in groups if h is not g for j in h]
        assert not {(j[0], j[1]) for j in g} & {(j[0], j[1]) for j in others}
    sizes = [pipeline._stages_to_train(g) for g in groups]
    assert sizes == sorted(sizes, reverse=True)  # longest first
    loads = pipeline.balance(groups, 2)  # two workers finish within one group of each other
    assert max(loads) - min(loads) <= max(sizes)
    assert max(loads) < 0.6 * sum(sizes)
    # within a group, runs keep the plan's order
    unet0 = next(g for g in groups if g[0][:2] == ("unet", 0))
    assert unet0 == [j for j in jobs if j[:2] == ("unet", 0)]


def test_notebook_runs_have_a_page_per_fold_and_backbone():
    runs = pipeline.notebook_runs(get_profile("demo"))
    pages = [r.output for r in runs]
    assert len(pages) == len(set(pages))
    assert sum(p.startswith("03_cascade/") for p in pages) == 12
    assert sum(p.startswith("02_backbones/") for p in pages) == 12
    unet02 = [r for r in runs if r.notebook == "02_backbones" and r.parameters["backbone"] == "unet"]
    assert all(r.parameters["orientation"].startswith("axial") for r in unet02)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    code = cli.main(["prepare", "--profile", "smoke", "--data", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("innerear: error:") and "missing" in err[0]


def test_cli_phantoms_writes_a_set(tmp_path, capsys):
    out = tmp_path / "ph"
    assert cli.main(["phantoms", "--profile", "smoke", "--seed", "3", "--n", "2", "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" in names and "phantom_000_image.nii.gz" in names and "phantom_001_label.nii.gz" in names


def test_stl_round_trip(tmp_path):
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[3:9, 3:9, 3:9] = 1
    verts, faces = mesh.surface_mesh(mask, (0.5, 0.5, 1.0))
    assert len(faces) > 0
    extent = verts.max(0) - verts.min(0)
    np.testing.assert_allclose(extent, [3.0, 3.0, 6.0], atol=1.0)  # about 6 voxels in mm
    mesh.write_stl(tmp_path / "cube.stl", verts, faces)
    tri, normals = mesh.read_stl(tmp_path / "cube.stl")
    assert tri.shape == (len(faces), 3, 3)
    np.testing.assert_allclose(tri, verts[faces], atol=1e-5)


def test_offline_plotly_html_embeds_the_library():
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    fig = viz.plotly_surfaces({"cube": mesh.surface_mesh(mask, (1, 1, 1))})
    html = viz.offline_html(fig)
    import re

    assert not re.search(r"<script[^>]*src=[\"']https?://", html)  # nothing loaded from a CDN
    assert len(html) > 1_000_000  # plotly.js itself is inside


def test_lookalike_mask_finds_dark_blob_not_label():
    from conftest import make_tube_volume

    img, lab = make_tube_volume((40, 36, 32))
    look = viz.lookalike_mask(img, lab)
    assert look[6, 6, 16] and not (look & (lab > 0)).any()


def test_training_overrides_on_the_command_line(capsys):
    args = cli.build_parser().parse_args(["train", "d", "--out", "o", "--profile", "demo", "--grid", "64",
                                          "--epochs", "12", "--patience", "3", "--base-filters", "16"])
    profile = cli._profile(args)
    assert (profile.grid, profile.max_epochs, profile.patience, profile.base_filters) == (64, 12, 3, 16)
    assert profile.learning_rate == get_profile("demo").learning_rate
    assert cli.main(["train", "d", "--out", "o", "--grid", "50"]) == 1
    assert "--grid must be divisible by 8" in capsys.readouterr().err
    assert cli.main(["run", "--epochs", "0"]) == 2  # a usage error, named by argparse
    assert "argument --epochs: expected a positive integer" in capsys.readouterr().err
    assert cli.main(["run", "--job", "axial"]) == 1
    assert "--job must look like FOLD:VIEW" in capsys.readouterr().err


def test_every_notebook_is_executed_and_in_the_table_of_contents():
    """A notebook in notebooks/ is a page only when ``innerear reproduce`` executes it and _toc.yml lists it."""
    root = Path(__file__).resolve().parents[1]
    notebooks = sorted(p.stem for p in (root / "notebooks").glob("*.ipynb"))
    assert sorted(pipeline.NOTEBOOKS.values()) == notebooks
    executed = {r.notebook for r in pipeline.notebook_runs(get_profile("smoke"))}
    assert executed == set(notebooks)
    toc = (root / "_toc.yml").read_text()
    for name in notebooks:
        assert f"book/executed/{name}" in toc or f"book/executed/{name.split('_')[0]}" in toc, name
    assert "file: book/api" in toc and (root / "book" / "api.md").exists()


def _fake_group_trainer(calls, fail_backbone=None):
    """A stand-in for ``pipeline._train_group`` that records its calls (no training)."""
    import threading

    lock = threading.Lock()

    def train(profile_name, seed, root, group, threads):
        with lock:
            calls.append((group, threads))
        if group[0][0] == fail_backbone:
            raise RuntimeError(f"training {group[0][0]} fold {group[0][1]} failed: boom")
        return [{"backbone": b, "fold": f, "views": "/".join(v), "dice": [0.9] * len(v), "epochs": [3] * len(v),
                 "train_seconds": 1.0} for b, f, v in group]
    return train


def test_train_all_runs_every_group_once_locally_with_one_thread_per_worker(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "_train_group", _fake_group_trainer(calls))
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 4)
    profile = get_profile("demo")
    results = pipeline.train_all(profile, 0, tmp_path, workers=2, verbose=False)
    jobs = pipeline.training_jobs(profile)
    assert sorted((r["backbone"], r["fold"], tuple(r["views"].split("/"))) for r in results) == sorted(jobs)
    assert sorted(map(str, (g for g, _ in calls))) == sorted(map(str, pipeline.job_groups(jobs)))
    assert {t for _, t in calls} == {2}  # 4 cores / 2 workers


def test_train_all_finishes_the_other_groups_when_one_fails(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "_train_group", _fake_group_trainer(calls, fail_backbone="se_unet"))
    profile = get_profile("demo")
    with pytest.raises(RuntimeError, match=r"4 of 12 training groups failed") as err:
        pipeline.train_all(profile, 0, tmp_path, workers=2, verbose=False)
    assert "se_unet fold" in str(err.value)
    assert len(calls) == 12  # every group was still trained
