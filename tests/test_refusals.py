"""Issue 14: `innerear` refuses what it cannot segment, and keeps files readable.

One test (or more) per case of the issue; each fails on the code before it.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from innerear import cli
from innerear.settings.profiles import get_profile
from innerear.io import VolumeError, read_volume, write_volume
from innerear.metrics import dice
from innerear.training import cascade as tc

sitk = pytest.importorskip("SimpleITK")
ROOT = Path(__file__).resolve().parents[1]


def _run_cli(args, capsys):
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


@pytest.fixture(scope="module")
def held_out():
    """A demo-sized phantom the shipped model never saw (seed 99)."""
    from innerear.data.phantom import generate_specimen

    return generate_specimen(2, 99, get_profile("demo").phantoms)


# --------------------------------------------------------------------------- 1. intensity units
def test_plausible_range_is_stated_with_its_source_and_covers_the_phantoms():
    from innerear.data.phantom import generate_specimen
    from innerear.inference.checks import PLAUSIBLE_VOLUME
    from innerear.inference.modelfolder import DEFAULT_MODEL, PAPER_RECIPE_MODEL, read_model_folder

    for model in (DEFAULT_MODEL, PAPER_RECIPE_MODEL):
        stated = read_model_folder(model).spec.plausible_inner_ear_volume_mm3
        assert stated == PLAUSIBLE_VOLUME and "https://" in stated["source"]
    for profile, index in (("demo", 0), ("demo", 1), ("smoke", 2)):
        spec = generate_specimen(index, 0, get_profile(profile).phantoms)
        volume = spec.label.sum() * abs(np.linalg.det(spec.affine[:3, :3]))
        assert stated["min"] <= volume <= stated["max"], (profile, index, volume)


def test_empty_mask_from_other_intensity_units_is_refused(tmp_path, held_out, capsys):
    """The paper recipe's model (fixed z-score) finds nothing in Hounsfield units: refused; the
    default robust model (per-scan percentiles) segments the same scan."""
    from innerear.inference.modelfolder import PAPER_RECIPE_MODEL

    img = held_out.image.astype(np.float32)
    hounsfield = (img - img.min()) / (img.max() - img.min()) * 4000 - 1000  # int16, -1000..3000
    write_volume(tmp_path / "hu.nii.gz", hounsfield.astype(np.int16), held_out.affine)
    code, _, err = _run_cli(["segment", tmp_path / "hu.nii.gz", "-o", tmp_path / "robust.nii.gz", "--quiet"], capsys)
    assert code == 0, err
    assert dice(read_volume(tmp_path / "robust.nii.gz")[0], held_out.label) > 0.8
    (tmp_path / "robust.nii.gz").unlink()
    before = _files(tmp_path)
    code, _, err = _run_cli(["segment", tmp_path / "hu.nii.gz", "-o", tmp_path / "ear.nii.gz", "--model",
                             PAPER_RECIPE_MODEL, "--report", tmp_path / "ear.json", "--quiet"], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("innerear: error: ") and "hu.nii.gz" in err[0] and "--allow-empty" in err[0]
    assert "empty" in err[0] or "implausible" in err[0]
    assert _files(tmp_path) == before, "a refused run wrote files"
    # asked for: written, and the report states the check and its outcome
    code, _, err = _run_cli(["segment", tmp_path / "hu.nii.gz", "-o", tmp_path / "ear.nii.gz", "--model",
                             PAPER_RECIPE_MODEL, "--report", tmp_path / "ear.json", "--quiet", "--allow-empty"], capsys)
    assert code == 0
    check = json.loads((tmp_path / "ear.json").read_text())["checks"]["inner_ear_volume"]
    assert check["passed"] is False and check["allowed_by"] == "--allow-empty" and check["reason"]
    assert check["range_mm3"] == [20.0, 1000.0]


# --------------------------------------------------------------------------- 2. voxel size
@pytest.mark.parametrize("name,spacing,given,field", [
    ("big.nii.gz", 10.0, None, "pixdim"),
    ("tiny.nrrd", 1e-4, None, "space directions"),
    ("ok.mha", 0.1, ("5", "5", "5"), "--spacing"),
])
def test_voxel_size_outside_range_names_the_header_field(tmp_path, capsys, name, spacing, given, field):
    image = np.random.default_rng(0).integers(0, 60000, (24, 22, 20)).astype(np.uint16)
    write_volume(tmp_path / name, image, np.diag([spacing] * 3 + [1.0]))
    args = ["segment", tmp_path / name, "-o", tmp_path / "ear.nii.gz", "--quiet"]
    code, _, err = _run_cli(args + (["--spacing", *given] if given else []), capsys)
    assert code == 1 and len(err) == 1, err
    assert name in err[0] and field in err[0] and "outside 1 µm – 2 mm" in err[0], err[0]
    assert not (tmp_path / "ear.nii.gz").exists()


# --------------------------------------------------------------------------- 3. DICOM gaps
def test_dicom_series_with_missing_slices_is_refused_naming_the_gap(tmp_path):
    from test_formats import write_dicom_series

    volume = np.random.default_rng(1).integers(0, 3000, (10, 9, 30)).astype(np.int16)
    write_dicom_series(tmp_path / "series", volume, (0.1, 0.1, 0.2), (0.0, 0.0, 0.0))
    assert read_volume(tmp_path / "series")[1] == pytest.approx((0.1, 0.1, 0.2))
    for k in range(10, 15):
        (tmp_path / "series" / f"slice{k:03d}.dcm").unlink()
    with pytest.raises(VolumeError) as info:
        read_volume(tmp_path / "series")
    text = str(info.value)
    assert "series" in text and "ImagePositionPatient" in text
    assert "gap of 1.2 mm between 1.8 and 3 mm" in text and "0.2 mm apart" in text, text


# --------------------------------------------------------------------------- 4. model folders
@pytest.mark.parametrize("which,edit,named", [
    ("paper", lambda m: _edit_json(m / "cascade.json", grid=96),
     ["stage1_coronal/stage.json", "grid", "96", "64", "cascade.json"]),
    ("paper", lambda m: _edit_json(m / "cascade.json", order=["axial", "sagittal", "coronal"]),
     ["stage1_coronal/stage.json", "view", "coronal", "axial"]),
    ("paper", lambda m: _edit_json(m / "stage2_sagittal" / "stage.json", view="axial"),
     ["stage2_sagittal/stage.json", "view", "axial", "sagittal"]),
    ("paper", lambda m: _edit_json(m / "stage3_axial" / "stage.json", channels=1),
     ["stage3_axial/stage.json", "channels"]),
    ("robust", lambda m: _edit_json(m / "cascade.json", voxel_mm=0.3),
     ["stage1_coronal/stage.json", "voxel_mm", "0.15", "0.3", "cascade.json"]),
    ("robust", lambda m: _edit_json(m / "stage2_sagittal" / "stage.json", voxel_mm=0.2),
     ["stage2_sagittal/stage.json", "voxel_mm", "0.2", "0.15", "cascade.json"]),
    ("robust", lambda m: _edit_json(m / "stage2_sagittal" / "stage.json", channels=3),
     ["stage2_sagittal/stage.json", "channels"]),
])
def test_inconsistent_model_folder_is_refused(tmp_path, capsys, which, edit, named):
    from innerear.inference.modelfolder import DEFAULT_MODEL, PAPER_RECIPE_MODEL, SegmentError, read_model_folder

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL if which == "robust" else PAPER_RECIPE_MODEL, model)
    read_model_folder(model)  # the copy is consistent
    edit(model)
    with pytest.raises(SegmentError) as info:
        read_model_folder(model)
    assert all(n in str(info.value) for n in named), str(info.value)
    assert "inconsistent" in str(info.value) and "\n" not in str(info.value)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- 5. training labels
def _labelled_case(folder, label, cid="s1"):
    folder.mkdir(exist_ok=True)
    image = np.random.default_rng(0).normal(1000, 100, label.shape).astype(np.float32)
    write_volume(folder / f"{cid}_image.nii.gz", image, np.diag([0.1, 0.1, 0.1, 1.0]))
    write_volume(folder / f"{cid}_label.nii.gz", label, np.diag([0.1, 0.1, 0.1, 1.0]))


def test_multi_label_and_empty_labels_are_refused(tmp_path):
    from innerear.data.preprocess import prepare_dataset

    label = np.zeros((12, 12, 12), np.uint8)
    label[2:5, 2:5, 2:5] = 2
    label[6:10, 6:10, 6:10] = 5
    _labelled_case(tmp_path / "multi", label)
    with pytest.raises(VolumeError, match=r"s1_label.nii.gz: label holds values \{0, 2, 5\}.*--label-values"):
        prepare_dataset(tmp_path / "multi", 8)
    _labelled_case(tmp_path / "empty", np.zeros((12, 12, 12), np.uint8))
    with pytest.raises(VolumeError, match=r"s1_label.nii.gz: label has no foreground voxel: values found \{0\}"):
        prepare_dataset(tmp_path / "empty", 8)
    # the documented choice: these values are the inner ear, the others background
    (case,) = prepare_dataset(tmp_path / "multi", 12, label_values=(2, 5))
    assert set(np.unique(case.label)) == {0, 1} and case.label.sum() == 27 + 64
    (case,) = prepare_dataset(tmp_path / "multi", 12, label_values=(5,))
    assert case.label.sum() == 64
    with pytest.raises(VolumeError, match="no foreground voxel .foreground values 7"):
        prepare_dataset(tmp_path / "multi", 12, label_values=(7,))


def test_train_takes_label_values(capsys):
    args = cli.build_parser().parse_args(["train", "data", "--out", "runs", "--label-values", "1,2,3"])
    assert args.label_values == (1, 2, 3)
    code, _, err = _run_cli(["train", "data", "--out", "runs", "--label-values", "0,1"], capsys)
    assert code == 2 and "--label-values" in err[0]


# --------------------------------------------------------------------------- 6. file modes
def _write_everything(folder):
    from innerear.io import save_npz, write_json, write_tiff_stack
    from innerear.io.nifti import write_nifti_gz
    from innerear.io.mesh import write_stl

    vol = np.zeros((4, 4, 4), np.uint8)
    write_volume(folder / "mask.nii.gz", vol, np.eye(4))
    write_volume(folder / "mask.nrrd", vol, np.eye(4))
    write_volume(folder / "mask.mha", vol, np.eye(4))
    write_json(folder / "report.json", {"a": 1})
    save_npz(folder / "arrays.npz", a=vol)
    write_tiff_stack(folder / "stack.tif", vol)
    write_tiff_stack(folder / "slices", vol)
    write_nifti_gz(folder / "phantom.nii.gz", vol, np.eye(4))
    write_stl(folder / "mesh.stl", np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _write_everything(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes.pop("slices") == 0o777 & ~umask
    assert set(modes.values()) == {mode}, {k: oct(v) for k, v in modes.items()}
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left"


def test_overwriting_keeps_the_files_mode(tmp_path):
    write_volume(tmp_path / "mask.nii.gz", np.zeros((3, 3, 3), np.uint8), np.eye(4))
    (tmp_path / "mask.nii.gz").chmod(0o644)
    old = os.umask(0o077)
    try:
        write_volume(tmp_path / "mask.nii.gz", np.ones((3, 3, 3), np.uint8), np.eye(4), overwrite=True)
    finally:
        os.umask(old)
    assert (tmp_path / "mask.nii.gz").stat().st_mode & 0o777 == 0o644


def test_one_atomic_write_helper():
    """Only innerear.io renames temporary files into place."""
    offenders = []
    for folder in ("innerear", "tools", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent == ROOT / "innerear" / "io" or path.name == "gpu_check.py":
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {w}" for w in ("os.replace(", "mkstemp(", "mkdtemp(",
                                                                       "NamedTemporaryFile(") if w in text]
    assert not offenders, offenders


# --------------------------------------------------------------------------- 7. writable outputs
def _unwritable(tmp_path):
    if os.geteuid() == 0:  # root may write anywhere a mode allows: use a file system that refuses
        return Path("/sys")
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("option", ["-o", "--mesh", "--report"])
def test_unwritable_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch, option):
    import innerear.inference.segment

    def no_work(*args, **kwargs):
        raise AssertionError("the segmentation started")

    monkeypatch.setattr(innerear.inference.segment, "run_segmentation", no_work)
    write_volume(tmp_path / "scan.nii.gz", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32),
                 np.diag([0.1, 0.1, 0.1, 1]))
    bad = _unwritable(tmp_path) / {"-o": "ear.nii.gz", "--mesh": "ear.stl", "--report": "ear.json"}[option]
    outs = {"-o": tmp_path / "ear.nii.gz", option: bad}
    code, _, err = _run_cli(["segment", tmp_path / "scan.nii.gz", "--quiet",
                             *[str(a) for kv in outs.items() for a in kv]], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"innerear: error: {bad}: cannot write") and ".tmp" not in err[0], err[0]


# --------------------------------------------------------------------------- 8. SIGTERM
def test_sigterm_during_the_final_write_leaves_nothing(tmp_path):
    """A real process, terminated while the mask is being written."""
    write_volume(tmp_path / "scan.nii.gz", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32),
                 np.diag([0.1, 0.1, 0.1, 1]))
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        import innerear.inference.segment as seg
        from innerear import cli

        def fake_run(scan, load, **kwargs):  # the segmentation itself is not under test
            from innerear.inference.report import SegmentReport

            mask = np.zeros((8, 8, 8), np.uint8)
            mask[2:5, 2:5, 2:5] = 1
            checks = {{"inner_ear_volume": {{"passed": True}}, "intensity": {{"passed": True, "distance": 0.0}}}}
            report = SegmentReport({{}}, {{}}, {{}}, 0.5, {{}}, None, None, checks, {{}}, 0.0)
            return seg.SegmentResult(mask, None, None, np.diag([0.1, 0.1, 0.1, 1.0]), report)

        def slow_write(tmp, *args, **kwargs):
            print("writing", flush=True)
            time.sleep(60)

        seg.run_segmentation = fake_run
        seg.write_volume_to = slow_write
        sys.exit(cli.main(["segment", "{tmp_path / 'scan.nii.gz'}", "-o", "{tmp_path / 'ear.nii.gz'}",
                           "--report", "{tmp_path / 'ear.json'}", "--quiet"]))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ear.nii.gz.")], "no temporary file yet"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["innerear: terminated"]
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]


# --------------------------------------------------------------------------- 9. numeric options
@pytest.mark.parametrize("args,option", [
    (["phantoms", "--out", "x", "--binning", "0"], "--binning"),
    (["phantoms", "--out", "x", "--binning", "-4"], "--binning"),
    (["phantoms", "--out", "x", "--seed", "-5"], "--seed"),
    (["phantoms", "--out", "x", "--n", "0"], "--n"),
    (["phantoms", "--out", "x", "--shape", "10", "0", "10"], "--shape"),
    (["phantoms", "--out", "x", "--index", "-1"], "--index"),
    (["run", "--epochs", "0"], "--epochs"),
    (["run", "--fold", "-1"], "--fold"),
    (["train", "d", "--out", "o", "--grid", "-64"], "--grid"),
    (["train", "d", "--out", "o", "--patience", "1.5"], "--patience"),
    (["train", "d", "--out", "o", "--base-filters", "0"], "--base-filters"),
    (["segment", "s.nii", "-o", "m.nii", "--spacing", "0.1", "nan", "0.1"], "--spacing"),
    (["segment", "s.nii", "-o", "m.nii", "--spacing", "0.1", "-1", "0.1"], "--spacing"),
    (["reproduce", "--workers", "0"], "--workers"),
    (["reproduce", "--seed", "-1"], "--seed"),
])
def test_numeric_options_are_validated_naming_the_option(tmp_path, capsys, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_cli(args, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("innerear: error: ") and f"argument {option}" in err[0], err[0]
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- 10. fail fast, quietly
def _in_fresh_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_bad_input_fails_fast_before_the_deep_learning_stack(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "s1_image.nii.gz").write_bytes(b"not a nifti")
    (data / "s1_label.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "scan.nrrd").write_bytes(b"NRRD0004\ngarbage\n")
    runs = [["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
            ["train", str(data), "--out", str(tmp_path / "o"), "--quiet"],
            ["segment", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "m.nii.gz")],
            ["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "m.nii.gz")]]
    proc = _in_fresh_python(f"""
        import json, sys, time
        from innerear import cli
        for args in {runs!r}:
            t = time.perf_counter()
            code = cli.main(args)
            print(json.dumps([code, time.perf_counter() - t, "keras" in sys.modules or "tensorflow" in sys.modules]))
    """)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(runs), proc.stderr
    for args, (code, seconds, loaded) in zip(runs, results):
        # fast because the deep-learning stack is never imported (seconds are not asserted: a loaded
        # machine would make that flaky; the import check is what makes it fast)
        assert code == 1 and not loaded, (args, code, seconds, loaded)
    assert len(proc.stderr.strip().splitlines()) == len(runs), proc.stderr


def test_backend_start_up_prints_nothing():
    proc = _in_fresh_python("""
        from innerear.settings.profiles import import_backend
        import_backend()
        import keras, sys
        print("tensorflow" in sys.modules)
    """)
    assert proc.stdout.strip() == "True" and proc.stderr == "", proc.stderr


# --------------------------------------------------------------------------- 11. no implicit deletion
def test_another_seed_never_deletes_trained_runs(tmp_path):
    from innerear.reporting.pipeline import ensure_phantoms

    profile = get_profile("smoke")
    profile = replace(profile, phantoms=replace(profile.phantoms, n_specimens=2))
    data = ensure_phantoms(profile, 0, tmp_path)
    stage = tmp_path / "runs" / "smoke" / "unet" / "fold0" / "axial"
    stage.mkdir(parents=True)
    (stage / "stage.json").write_text("{}")
    before = _files(tmp_path)
    with pytest.raises(RuntimeError) as info:
        ensure_phantoms(profile, 1, tmp_path)
    message = str(info.value)
    assert f"rm -r {tmp_path / 'runs' / 'smoke'}" in message and "seed 0" in message and "seed 1" in message
    assert _files(tmp_path) == before, "something was deleted or written"
    # without trained runs the phantom set is simply regenerated
    shutil.rmtree(tmp_path / "runs")
    ensure_phantoms(profile, 1, tmp_path)
    assert json.loads((data / "manifest.json").read_text())["seed"] == 1


# --------------------------------------------------------------------------- 12. stage locks
def test_two_trainings_of_one_stage_never_overlap(tmp_path, monkeypatch):
    """Two trainings of the same stage (threads here; processes alike): the second waits for
    the first, which holds the stage folder's lock."""
    from innerear.data.preprocess import PreparedCase, make_folds

    from conftest import make_tube_volume

    intervals = []

    def fake_fit(build, train_data, run_dir, **kwargs):
        start = time.perf_counter()
        time.sleep(1.0)
        intervals.append((start, time.perf_counter()))
        raise RuntimeError("stop after the fake training")

    monkeypatch.setattr(tc, "fit", fake_fit)
    cases = []
    for i in range(4):
        image, label = make_tube_volume((16, 16, 16), seed=i)
        cases.append(PreparedCase(f"c{i}", image, label, None, (0.1,) * 3, np.eye(4), (16,) * 3, np.eye(4)))
    profile = get_profile("smoke")
    folds = make_folds([c.case_id for c in cases], 4, 0)
    errors = []

    def train():
        try:
            tc.train_cascade(cases, folds, 0, "unet", ["axial"], profile, tmp_path)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == ["stop after the fake training"] * 2 and len(intervals) == 2
    (a0, a1), (b0, b1) = sorted(intervals)
    assert b0 >= a1, f"the two trainings overlapped: {intervals}"
