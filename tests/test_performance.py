"""Measurement records (JSON) and the Performance page that renders them."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from innerear.reporting import performance as perf
from innerear.settings.profiles import get_profile
from innerear.reporting.pipeline import write_timings

ROOT = Path(__file__).resolve().parents[1]


def test_record_round_trip_carries_its_context(tmp_path):
    path = perf.write_record(tmp_path / "results" / "bench_x.json", "bench_x", {"rows": [{"a": 1.23456}]})
    rec = perf.read_record(path)
    assert rec["kind"] == "bench_x" and rec["rows"] == [{"a": 1.23456}]
    ctx = rec["context"]
    assert ctx["machine"]["cpu_count"] == os.cpu_count() and ctx["versions"]["numpy"]
    assert ctx["date"].endswith("+00:00")
    assert perf.read_record(tmp_path / "absent.json") is None
    (tmp_path / "plain.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="plain.json: not a measurement record"):
        perf.read_record(tmp_path / "plain.json")


def test_the_context_names_the_cpus_vector_extensions(tmp_path):
    """The same machine kind came with and without AVX-512: a record says which it had."""
    flags = perf.cpu_flags()
    if Path("/proc/cpuinfo").exists():
        assert set(flags) == set(perf.VECTOR_EXTENSIONS) and all(isinstance(v, bool) for v in flags.values())
    rec = perf.read_record(perf.write_record(tmp_path / "r.json", "k", {}))
    assert rec["context"]["machine"]["cpu_flags"] == flags
    rec["context"]["machine"]["cpu_flags"] = {"avx2": True, "fma": True, "avx512f": False}
    assert "(" + rec["context"]["machine"]["cpu"] + ", AVX2, FMA; no AVX-512, " in perf.context_line(rec)
    rec["context"]["machine"].pop("cpu_flags")  # an older record: no flags, no claim
    assert "AVX" not in perf.context_line(rec)


def test_render_record_shows_every_measured_value(tmp_path):
    rec = perf.read_record(perf.write_record(tmp_path / "r.json", "k", {
        "rows": [{"backbone": "unet", "step_s": 0.1234567, "params": 1930657}],
        "variants": {"fast": {"median_s": 103.04, "speedup": 3.4123}},
        "settings": {"grid": 256}}))
    text = perf.render_record(rec)
    assert "Measured " in text and f"{os.cpu_count()} CPU(s)" in text
    for shown in ("| unet | 1,930,657 | 0.1235 |", "| fast | 103 | 3.412 |", "- settings.grid: 256"):
        assert shown in text
    only = perf.render_record(rec, {"rows": ["step_s"]})
    assert "1,930,657" not in only and "0.1235" in only


def test_format_value_and_seconds():
    assert perf.format_value(12345.6) == "12,346" and perf.format_value(math.nan) == "nan"
    assert perf.format_value([1, 2.5]) == "1 / 2.5" and perf.format_value(None) == ""
    assert perf.format_seconds(12.34) == "12.3 s" and perf.format_seconds(1267) == "21 min 7 s"
    assert perf.format_seconds(3 * 3600 + 61) == "3 h 1 min 1 s"


def test_pipeline_timings_record_partial_then_complete(tmp_path):
    profile = get_profile("smoke")
    times = {"phantoms": 1.0, "prepare": 2.0, "01_data_preparation.ipynb": 3.0, "notebooks (all)": 3.5}
    path = write_timings(tmp_path, profile, 0, times, complete=False)
    assert path == tmp_path / "runs" / "smoke" / "timings.json"
    rec = perf.read_record(path)
    assert rec["complete"] is False and rec["total_s"] is None
    assert rec["pages"] == {"01_data_preparation.ipynb": 3.0} and len(rec["steps"]) == 3
    table = perf.timings_table(rec)
    assert list(table["step"]) == ["phantoms", "prepare", "notebooks (all)"]
    write_timings(tmp_path, profile, 0, dict(times, book=4.0, total=10.0), complete=True)
    rec = perf.read_record(path)
    table = perf.timings_table(rec)
    assert rec["complete"] and table["seconds"].iloc[-1] == "10.0" and table["share of total"].iloc[0] == "10%"


def test_paper_runtime_is_the_papers_two_machines():
    paper = perf.paper_runtime()
    assert list(paper["seconds_per_volume"]) == [11, 240]
    assert paper["machine"].str.contains("Titan X").any() and paper["machine"].str.contains("E5-2609").any()


@pytest.mark.slow
def test_performance_page_renders_records_and_says_what_is_missing(tmp_path):
    """Executes notebook 06 in a planted project: records shown, absent ones named."""
    import papermill as pm

    for name in ("_config.yml",):
        (tmp_path / name).write_text((ROOT / name).read_text())
    write_timings(tmp_path, get_profile("smoke"), 0, {"phantoms": 1.5, "prepare": 2.5, "a.ipynb": 7.25}, complete=False)
    perf.write_record(perf.results_path(tmp_path, "bench_training"), "bench_training",
                      {"rows": [{"profile": "demo", "backbone": "unet", "step_s": 0.4321, "all_steps_s": [1] * 20}]})
    out = tmp_path / "out.ipynb"
    os.environ["INNEREAR_HOME"] = str(tmp_path)
    try:
        pm.execute_notebook(str(ROOT / "notebooks" / "06_performance.ipynb"), str(out), parameters={"profile": "smoke"},
                            progress_bar=False, kernel_name="python3", cwd=str(tmp_path))
    finally:
        del os.environ["INNEREAR_HOME"]
    text = "\n".join("".join(o.get("data", {}).get("text/html", "")) for c in json.loads(out.read_text())["cells"]
                     for o in c.get("outputs", []))
    text = " ".join(text.split())
    assert "<td>phantoms</td> <td>1.5</td>" in text and "<td>a.ipynb</td> <td>7.25</td>" in text
    assert "<td>demo</td> <td>unet</td> <td>0.4321</td>" in text and "<td>240</td>" in text
    assert "<code>benchmarks/results/bench_inference.json</code> is absent" in text
    assert "No real-scan record is present (<code>benchmarks/results/bench_real.json</code> is absent)" in text


def _train_speed_rows():
    row = dict(all_epoch_s=[4.0], forward_share=0.28, jit=False, step_s=0.13)
    return [dict(row, name="1 thread, 1 step per call (before)", epoch_s=4.0, achieved_gflops=35.0, peak_gflops=105.0,
                 share_of_peak=0.333, spe=1, threads=1, speed_vs_before=1.0),
            dict(row, name="1 thread, 64 steps per call", epoch_s=3.2, achieved_gflops=44.0, peak_gflops=105.0,
                 share_of_peak=0.419, spe=64, threads=1, speed_vs_before=1.25),
            dict(row, name="2 threads", epoch_s=5.0, achieved_gflops=28.0, peak_gflops=190.0, share_of_peak=0.147,
                 spe=1, threads=2, speed_vs_before=0.8)]


def _train_speed_rows_with_backends():
    """A record as the extended benchmark writes it: workers, backends, an XLA row."""
    row = dict(all_epoch_s=[1.0], forward_share=0.25, step_s=0.3, workers=1, backend="tensorflow")
    return [dict(row, name="1 thread, 1 step per call (before)", epoch_s=12.0, effective_epoch_s=12.0, spe=1,
                 threads=1, jit=False, achieved_gflops=12.0, peak_gflops=35.0, share_of_peak=0.34, speed_vs_before=1.0),
            dict(row, name="1 thread, XLA", epoch_s=11.9, effective_epoch_s=11.9, spe=64, threads=1, jit=True,
                 achieved_gflops=12.1, peak_gflops=35.0, share_of_peak=0.35, speed_vs_before=1.01),
            dict(row, name="1 thread, 64 steps", epoch_s=12.2, effective_epoch_s=12.2, spe=64, threads=1, jit=False,
                 achieved_gflops=11.7, peak_gflops=35.0, share_of_peak=0.33, speed_vs_before=0.98),
            dict(row, name="2 threads", epoch_s=9.7, effective_epoch_s=9.7, spe=1, threads=2, jit=False,
                 achieved_gflops=14.7, peak_gflops=52.0, share_of_peak=0.28, speed_vs_before=1.24),
            dict(row, name="2 workers side by side", epoch_s=20.8, effective_epoch_s=10.4, spe=64, threads=1,
                 jit=False, workers=2, achieved_gflops=13.6, peak_gflops=52.0, share_of_peak=0.26,
                 speed_vs_before=1.15),
            dict(row, name="PyTorch, 2 threads", backend="torch", epoch_s=6.5, effective_epoch_s=6.5, spe=1,
                 threads=2, jit=False, achieved_gflops=21.6, peak_gflops=52.0, share_of_peak=0.41,
                 speed_vs_before=1.85)]


def test_train_speed_page_part_is_computed_from_its_record(tmp_path):
    rec = perf.read_record(perf.write_record(tmp_path / "t.json", "bench_train_speed", {"rows": _train_speed_rows()}))
    rec["context"]["machine"].pop("cpu_flags")
    text = perf.train_speed_markdown(rec)
    # an older record (no backend, workers or CPU flags): the fastest row is named with its ratio
    # to the one-step loop, and the two-thread row is compared with the single-thread one
    assert ("1 thread, 64 steps per call (TensorFlow), trains a demo epoch in 3.20 s (1.25× the one-step-per-call "
            "TensorFlow loop)") in text
    assert "42% of the 105 GFLOP/s" in text
    assert "two threads in one process are slower than one (5.00 vs 3.20 s per epoch)" in text
    assert "XLA" not in text and "side by side" not in text and "This CPU reports" not in text
    fig = perf.train_speed_figure(rec)
    assert len(fig.axes[0].patches) == 6  # a peak and an achieved bar per configuration
    assert "train_speed" in perf.train_speed_markdown(None) and "absent" in perf.train_speed_markdown(None)


def test_train_speed_sentences_follow_the_measurements(tmp_path):
    flags = {"avx2": True, "fma": True, "avx512f": False}
    rec = perf.read_record(perf.write_record(tmp_path / "t.json", "bench_train_speed",
                                             {"rows": _train_speed_rows_with_backends()}))
    rec["context"]["machine"]["cpu_flags"] = flags
    text = perf.train_speed_sentence(rec)
    assert text.startswith("This CPU reports AVX2, FMA and not AVX-512.")
    assert "The fastest configuration, PyTorch, 2 threads, trains a demo epoch in 6.50 s (1.85×" in text
    assert "two threads in one process are faster than one (9.70 vs 12.00 s per epoch)" in text
    assert ("Two single-thread workers side by side, as `innerear reproduce` runs them, take 20.80 s per epoch each, "
            "1.70× the 12.20 s of one alone, so 10.40 s per epoch of work: slower than one two-thread worker (9.70 s)"
            ) in text
    assert "XLA compilation gives 11.90 s per epoch against 12.20 s without: no gain on this CPU." in text
    assert "6.50 s with PyTorch, 2 threads. The fastest of them, PyTorch, 2 threads, is 1.49× as fast" in text
    table = perf.train_speed_table(rec)
    assert list(table["backend"]) == ["tensorflow"] * 5 + ["torch"] and list(table["workers"])[4] == 2
    assert list(table["seconds per epoch of work"])[4] == "10.40"
    # the same record with the pair faster than one two-thread worker says so
    rows = _train_speed_rows_with_backends()
    rows[4].update(epoch_s=16.0, effective_epoch_s=8.0)
    rows[4]["all_epoch_s"] = [15.0, 16.0, 19.0]
    rows[5].update(epoch_s=9.0, effective_epoch_s=9.0)
    rec2 = perf.read_record(perf.write_record(tmp_path / "u.json", "bench_train_speed", {"rows": rows}))
    text2 = perf.train_speed_sentence(rec2)
    assert "of one alone (median; 15.00-19.00 s over 3 epochs), so 8.00 s per epoch of work: faster than" in text2
    assert "trains a demo epoch of work every 8.00 s" in text2


def test_segment_profile_page_part_splits_the_wall_time(tmp_path):
    stages = [{"view": v, "seconds": 1.0, "pixel_fraction": f} for v, f in (("coronal", 2.0), ("sagittal", 0.5))]
    shipped = {"runs": 5, "median_wall_s": 20.0, "wall_s": [20.0] * 5,
               "median_steps_s": {"load_model": 4.0, "cascade": 10.0, "measure": 1.0, "total_inside": 16.0}}
    before = dict(shipped, median_wall_s=50.0, median_steps_s={"load_model": 6.0, "cascade": 30.0})
    keras = dict(shipped, median_wall_s=30.0)
    rec = perf.read_record(perf.write_record(tmp_path / "s.json", "bench_segment_profile", {
        "goal_wall_s": 5.0, "goal_met": False,
        "startup_s": {"python + keras (tensorflow)": 3.25, "python + onnxruntime": 0.25},
        "segment": shipped, "configurations": {"before": before, "shipped": shipped, "keras runtime": keras},
        "cascade": [{"mirror": m, "probe_step": p, "batch": 8, "seconds": s, "stages": stages}
                    for m, p, s in ((True, 4, 9.5), (True, 0, 12.0), (False, 4, 5.0))]}))
    text = perf.segment_profile_markdown(rec)
    assert "takes 20.0 s wall (median of 5 runs); the goal is 5 s, not met" in text
    assert "Before the speed-up it took 50.0 s, 2.5 times as long" in text
    assert "the cascade (three stages) (10.0 s) and load the networks (4.0 s)" in text
    assert "| start-up: interpreter, imports, argument checks | 4.0 | 20% |" in text  # 20 s wall - 16 s inside
    assert "3.2 s only to import Keras and TensorFlow, which the shipped runtime avoids, and 0.2 s" in text
    assert "With `--runtime keras` the same run takes 30.0 s." in text
    assert "9.5 s with stage 1's probe (the shipped setting) and 12.0 s when stage 1 predicts every slice" in text
    assert "| as shipped (ONNX Runtime) | 20.0 | 5 | 4.0 | 10.0 | 2.5x |" in text
    assert "| yes | every 4th slice | 8 | 9.5 | 1.0 (100%) | 1.0 (25%) |" in text  # mirrored: pixels halved
    assert "Test-time mirroring, which makes a left ear and its mirror image get mirror-image answers, costs " \
           "4.5 s of it (5.0 s without)." in text
    rec["cascade"][0]["stages"] = [dict(s, passes=p) for s, p in zip(stages, (2, 1))]  # as the engine records
    text = perf.segment_profile_markdown(rec)
    assert "| yes | every 4th slice | 8 | 9.5 | 1.0 (100%) | 1.0 (50%) |" in text
    assert "(5.0 s without); the sagittal stage predicts once, since the mirror only reverses the order of its " \
           "slices." in text
    at_limit = dict(shipped, median_wall_s=4.98, wall_s=[5.6, 4.9, 4.98, 5.01, 4.95])
    rec.update(goal_met=True, segment=at_limit)
    assert "the goal is 5 s, met at the limit (4.98 s; the runs spread from 4.90 to 5.60 s)." in \
        perf.segment_profile_markdown(rec)
    rec.update(segment=dict(at_limit, median_wall_s=4.0))
    assert "the goal is 5 s, met, with little to spare (the runs spread from 4.90 to 5.60 s)." in \
        perf.segment_profile_markdown(rec)
    rec.update(segment=dict(at_limit, median_wall_s=4.0, wall_s=[3.9, 4.0, 4.1, 4.2, 3.8]))
    assert "the goal is 5 s, met." in perf.segment_profile_markdown(rec)
    assert text.index("| load the networks |") < text.index("| the cascade (three stages) |")  # pipeline order
    rec["configurations"]["previous"] = dict(shipped, median_wall_s=25.0, git="abc1234", checkout="/x")
    rec["configurations"]["before"]["git"] = "f0f98cd"
    text = perf.segment_profile_markdown(rec)
    assert "The code of the previous record (git abc1234) took 25.0 s in the same run, 6.25 times as long." in text
    assert "Before the speed-up (git f0f98cd) it took 50.0 s" in text
    assert "| before the speed-up (an earlier checkout), git f0f98cd | 50.0 |" in text
    assert "| the previous record's code, git abc1234 | 25.0 |" in text
    rows = [line.split("|")[1].strip() for line in text.splitlines() if "git f0f98cd |" in line or "abc1234 |" in line
            or line.startswith("| as shipped") or line.startswith("| `--runtime keras`")]
    assert [r.split(" ")[0] for r in rows] == ["before", "the", "as", "`--runtime"]  # oldest code first, keras last
    assert "Acquired" not in text and "same mask" not in text  # no turned block, no masks compared in this record
    assert "network time" not in text  # no network floor in this record
    earlier = rec["segment"]
    rec.update(segment=shipped)  # 20 s wall, 16 s inside the report's steps
    rec["network_floor"] = {"slice_shape": "208x208", "per_slice_ms": {"coronal": 20.0, "sagittal": 21.5},
                            "floor_s": 3.0, "cascade_s": 9.5}
    text = perf.segment_profile_markdown(rec)
    assert ("The stage networks take coronal 20.0, sagittal 21.5 ms per 208×208 slice on this machine (both cores), "
            "so the slices the shipped cascade predicts need at least 3.0 s of network time (32% of its 9.5 s); with "
            "the 4.0 s of start-up and exit outside the report's steps that is 7.0 s, above the goal of 5 s before the "
            "scan is read, prepared or measured, so on this machine the goal needs fewer or smaller slices predicted, "
            "not faster code.") in text
    rec["network_floor"]["floor_s"] = 0.5
    assert "that is 4.5 s, within the goal of 5 s." in perf.segment_profile_markdown(rec)
    del rec["network_floor"]
    rec.update(segment=earlier)
    turned = dict(shipped, median_wall_s=30.0, runs=3, realigned_passes=2, dice=0.9512, same_mask_as_shipped=True)
    rec["turned"] = {"turn_deg": 45.0, "configurations": {
        "shipped": turned, "previous": dict(turned, median_wall_s=45.0, git="abc1234"),
        "before": dict(turned, median_wall_s=60.0, git="f0f98cd", same_mask_as_shipped=False, dice=0.95)}}
    text = perf.segment_profile_markdown(rec)
    assert ("Acquired 45° further turned, the block takes 30.0 s wall (median of 3 runs, 7.5 times the block as "
            "acquired): the engine finds the labyrinth turned and segments it 2 more times in its own frame, Dice "
            "0.951 against the phantom's label.") in text
    assert ("The previous record's code (git abc1234) took 45.0 s in the same run, 1.50 times as long, with the same "
            "mask voxel for voxel. The code from before the speed-up (git f0f98cd) took 60.0 s in the same run, 2.00 "
            "times as long, with a different mask.") in text
    assert "| the previous record's code, git abc1234 | 45.0 | 3 | 10.0 | 2 | 0.951 | yes |" in text
    assert "| before the speed-up (an earlier checkout), git f0f98cd | 60.0 | 3 | 10.0 | 2 | 0.950 | no |" in text
    assert text.index("git f0f98cd | 60.0") < text.index("git abc1234 | 45.0") < text.index("| as shipped (ONNX Runtime) | 30.0")
    for name, same in (("shipped", True), ("previous", True), ("keras runtime", False)):
        rec["configurations"][name] = dict(rec["configurations"][name], same_mask_as_shipped=same)
    text = perf.segment_profile_markdown(rec)
    assert "| the previous record's code, git abc1234 | 25.0 | 5 | 4.0 | 10.0 | 2.0x | yes |" in text
    assert "| `--runtime keras` (TensorFlow) | 30.0 | 5 | 4.0 | 10.0 | 1.7x | no |" in text
    assert "| before the speed-up (an earlier checkout), git f0f98cd | 50.0 | 5 | 6.0 | 30.0 | 1.0x | n/a |" in text




def test_probe_page_part_gives_the_worst_group_and_the_speed_up(tmp_path):
    groups = [{"group": "CBCT crop", "n": 2, "probe_dice": 0.95, "full_dice": 0.952, "difference": -0.002,
               "worst_difference": -0.004, "dice_between": 0.99, "probe_cascade_s": 2.0, "full_cascade_s": 4.0},
              {"group": "turned", "n": 4, "probe_dice": 0.94, "full_dice": 0.935, "difference": 0.005,
               "worst_difference": -0.001, "dice_between": 0.985, "probe_cascade_s": 3.0, "full_cascade_s": 9.0}]
    rec = perf.read_record(perf.write_record(tmp_path / "p.json", "bench_probe", {
        "tolerance": 0.01, "passed": True, "worst_group_difference": -0.002, "groups": groups, "rows": []}))
    text = perf.probe_markdown(rec)
    assert "On 6 scans in 2 groups, the probe changes a group's mean Dice by -0.0020 at worst (CBCT crop)" in text
    assert "the tolerance is 0.01, kept. The cascade is 2.5 times as fast with it" in text
    assert "| turned | 4 | 0.940 | 0.935 | +0.005 (-0.001) | 0.985 | 3.0 / 9.0 |" in text
    assert "absent" in perf.probe_markdown(None)


def _reproduce_record(tmp_path, **changes):
    steps = [{"step": "phantoms", "seconds": 20.0}, {"step": "prepare", "seconds": 10.0},
             {"step": "training (all stages)", "seconds": 1500.0}, {"step": "notebooks (all)", "seconds": 400.0},
             {"step": "book", "seconds": 70.0}]
    payload = {"profile": "demo", "git": "abc1234", "goal_s": 1800.0, "total_s": 2000.0, "make_wall_s": None,
               "from_clean": True, "skipped_steps": [], "goal_met": False, "steps": steps, "workers": 2,
               "pages_s": {"04_evaluation.ipynb": 120.0, "01_data_preparation.ipynb": 30.0, "a.ipynb": 65.0,
                           "b.ipynb": 5.0},
               "stages": {"n": 48, "stopped_by": {"patience": 47, "max_epochs": 1}, "epochs_total": 700,
                          "epochs_median": 14.5, "training_seconds_total": 2900.0, "rows": []}}
    payload.update(changes)
    return perf.read_record(perf.write_record(tmp_path / "r.json", "bench_reproduce", payload))


def test_reproduce_page_part_says_whether_the_goal_is_met(tmp_path):
    rec = _reproduce_record(tmp_path)
    text = perf.reproduce_markdown(rec)
    assert ("`make reproduce` (profile demo) of git abc1234, from a clean clone, took **33 min 20 s** (the run's own "
            "total; the goal is 30 min, not met).") in text
    assert ("Its 48 stages trained 700 epochs (median 14.5 per stage) and 47 of them stopped by patience (1 by the "
            "epoch cap). Training took 25 min 0 s, 75% of the run, on 2 worker processes.") in text
    assert "| training (all stages) | 25 min 0 s | 75% |" in text and "| **total** | 33 min 20 s |  |" in text
    assert "The slowest pages: `04_evaluation.ipynb` (2 min 0 s), `a.ipynb` (1 min 5 s), `01_data_preparation.ipynb` (30.0 s)." \
        in text
    assert "Source: `benchmarks/results/bench_reproduce.json`." in text
    text = perf.reproduce_markdown(_reproduce_record(tmp_path, total_s=1700.0, make_wall_s=1712.0))
    assert ("took **28 min 20 s** (the run's own total; `make` around it 28 min 32 s wall; the goal is 30 min, not met: "
            "the time fits, but not every stage stopped by patience).") in text
    done = {"n": 48, "stopped_by": {"patience": 48}, "epochs_total": 700, "epochs_median": 14.5}
    text = perf.reproduce_markdown(_reproduce_record(tmp_path, total_s=1700.0, goal_met=True, stages=done))
    assert "the goal is 30 min, met)" in text and "all of them stopped by patience." in text
    text = perf.reproduce_markdown(_reproduce_record(tmp_path, total_s=60.0, from_clean=False,
                                                     skipped_steps=["phantoms", "training (all stages)"], stages=done))
    assert ("resumed (it skipped phantoms, training (all stages)), so not from a clean tree, took **1 min 0 s** (the run's "
            "own total; the goal is 30 min, not met: the run was not from a clean tree)") in text
    assert "*Not yet measured on this machine*" in perf.reproduce_markdown(None)


def test_bench_reproduce_reads_a_finished_run_and_notices_a_resumed_one(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_reproduce", ROOT / "benchmarks" / "bench_reproduce.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    profile = get_profile("smoke")
    with pytest.raises(SystemExit, match="no timings record"):
        bench.summary(tmp_path, "smoke", None)
    times = {"phantoms": 3.0, "prepare": 2.0, "training (all stages)": 50.0, "a.ipynb": 7.0, "notebooks (all)": 9.0,
             "total": 65.0}
    write_timings(tmp_path, profile, 0, times, complete=False)
    with pytest.raises(SystemExit, match="did not finish"):
        bench.summary(tmp_path, "smoke", None)
    write_timings(tmp_path, profile, 0, times, complete=True)
    with pytest.raises(SystemExit, match="no trained stage"):
        bench.summary(tmp_path, "smoke", None)
    for stage, stopped, epochs in (("unet/fold0/coronal", "patience", 9), ("unet/fold0/axial", "max_epochs", 2)):
        (tmp_path / "runs" / "smoke" / stage).mkdir(parents=True)
        (tmp_path / "runs" / "smoke" / stage / "done.json").write_text(json.dumps(
            {"epochs": epochs, "best_epoch": epochs - 3, "seconds": 20.0, "stopped_by": stopped}))
    out = bench.summary(tmp_path, "smoke", 70.0)
    assert out["from_clean"] and out["total_s"] == 65.0 and out["make_wall_s"] == 70.0
    assert out["stages"]["stopped_by"] == {"patience": 1, "max_epochs": 1} and out["stages"]["epochs_total"] == 11
    assert not out["goal_met"]  # one stage stopped by the cap
    assert [s["step"] for s in out["steps"]] == ["phantoms", "prepare", "training (all stages)", "notebooks (all)"]
    write_timings(tmp_path, profile, 0, dict(times, phantoms=0.001, prepare=0.01), complete=True)  # a resumed run
    out = bench.summary(tmp_path, "smoke", None)
    assert not out["from_clean"] and out["skipped_steps"] == ["phantoms", "prepare"] and not out["goal_met"]


def test_the_model_card_speed_sentence_names_where_it_was_measured():
    speed = {"what": "innerear segment on a block", "runs": 3, "median_wall_s": 4.44, "median_inside_command_s": 3.34}
    assert perf.speed_sentence(speed) == ("Speed: innerear segment on a block: median 4.4 s over 3 runs (3.3 s inside "
                                          "the command).")
    speed["measured"] = "2026-12-06 on 2 CPU(s) (Intel Xeon)"
    assert perf.speed_sentence(speed).endswith("(3.3 s inside the command, measured 2026-12-06 on 2 CPU(s) (Intel Xeon)).")


def _load_bench(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stopping_record(tmp_path):
    bench = _load_bench("bench_stopping")
    curves = {"unet/0/coronal": ([0.09, 0.05, 0.03, 0.025, 0.022, 0.020, 0.019, 0.0185],
                                 [0.80, 0.90, 0.93, 0.94, 0.95, 0.95, 0.96, 0.96]),
              "unet/0/axial": ([0.08, 0.04, 0.035, 0.033, 0.031, 0.030],
                               [0.85, 0.92, 0.94, 0.945, 0.95, 0.95])}
    stages = []
    for spec, (losses, dice) in curves.items():
        backbone, fold, views = spec.split("/")
        stages.append({"stage": spec, "backbone": backbone, "fold": int(fold), "order": views.split(","),
                       "recorded_losses": losses if spec.endswith("coronal") else [*losses[:-1], 0.5],
                       "recorded_rule": [0.002, 3],
                       "epochs": [{"epoch": i, "loss": lo, "held_out_dice": d, "seconds": 1.0}
                                  for i, (lo, d) in enumerate(zip(losses, dice))]})
    rules = bench.summarise(stages, [(0.008, 2)], (0.002, 3), 40, (0.008, 2))
    for stage in stages:
        losses = [e["loss"] for e in stage["epochs"]]
        stage["stops"] = {"baseline": bench.stops(losses, (0.002, 3), 40), "profile": bench.stops(losses, (0.008, 2), 40)}
    payload = {"stages": stages, "rules": rules, "baseline_rule": {"min_delta": 0.002, "patience": 3},
               "profile_rule": {"min_delta": 0.008, "patience": 2}, "replayed": "2026-12-06T22:52:00+00:00"}
    return perf.read_record(perf.write_record(tmp_path / "s.json", "bench_stopping", payload))


def test_stopping_record_reads_off_each_rules_epochs_and_kept_dice(tmp_path):
    rec = _stopping_record(tmp_path)
    by_rule = {(r["min_delta"], r["patience"]): r for r in rec["rules"]}
    # coronal: the 0.008 rule stops after epoch 5 (no fall of 0.008 below 0.03 in epochs 4-5), keeps epoch 5
    # (Dice 0.95); the 0.002 rule runs all 8 epochs and keeps the last (0.96). Axial: 4 against 6 epochs.
    assert by_rule[(0.008, 2)]["epochs"] == 5 + 4 and by_rule[(0.002, 3)]["epochs"] == 8 + 6
    assert by_rule[(0.008, 2)]["mean_dice_change"] == pytest.approx(((0.95 - 0.96) + (0.945 - 0.95)) / 2, abs=1e-4)
    assert by_rule[(0.008, 2)]["worst_dice_change"] == pytest.approx(-0.01, abs=1e-4)
    assert by_rule[(0.002, 3)]["baseline"] and by_rule[(0.008, 2)]["profile_rule"]
    text = perf.stopping_markdown(rec)
    assert ("2 demo stages trained again epoch by epoch on their recorded inputs on 2026-12-06 (1 of 2 with exactly "
            "the training losses the run recorded).") in text
    assert ("The demo profile's rule (`min_delta` 0.008, patience 2) trains 0.64 of the epochs of the replayed run's "
            "(`min_delta` 0.002, patience 3): 9 against 14.") in text
    assert "| `min_delta` 0.008, patience 2 (**the demo profile's**) | 9 | 0.64 | 0.9475 | -0.0075 | -0.0100 |" in text
    assert "*Not yet measured on this machine*" in perf.stopping_markdown(None)
    fig = perf.stopping_figure(rec)
    marked = [[(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines[1:]] for ax in fig.axes[:2]]
    assert marked == [[(8, 0.96), (5, 0.95)], [(6, 0.95), (4, 0.945)]]  # 1-based epochs, as plotted


def test_bench_recipe_pairs_methods_by_specimen_and_checks_the_tolerance(tmp_path):
    bench = _load_bench("bench_recipe")

    def tree(dice, epochs, training_s, git, rule):
        return {"tree": "t", "git": git, "date": "d", "seed": 0, "cpu": "c", "min_delta": rule[0], "patience": rule[1],
                "stages": 2, "epochs": epochs, "epochs_median": epochs / 2, "stopped_by": {"patience": 2}, "training_s": training_s,
                "total_s": training_s + 100, "dice": dice}

    ids = [f"phantom_{i:03d}" for i in range(6)]
    before = {"U-Net": dict(zip(ids, [0.95, 0.96, 0.94, 0.95, 0.97, 0.96])),
              "AutoCas-U-Net": dict(zip(ids, [0.96, 0.96, 0.95, 0.96, 0.97, 0.97]))}
    after = {"U-Net": {k: v - 0.004 for k, v in before["U-Net"].items()},
             "AutoCas-U-Net": {k: v - (0.03 if k == "phantom_000" else 0.0) for k, v in before["AutoCas-U-Net"].items()}}
    out = bench.compare(tree(before, 1000, 3000.0, "aaa", (0.002, 3)), tree(after, 400, 1300.0, "bbb", (0.008, 2)))
    rows = {m["method"]: m for m in out["methods"]}
    assert rows["U-Net"]["difference"] == pytest.approx(-0.004) and rows["U-Net"]["within_tolerance"]
    assert rows["AutoCas-U-Net"]["largest_change"] == pytest.approx(-0.03)
    assert rows["AutoCas-U-Net"]["difference"] == pytest.approx(-0.005) and out["passed"]
    assert out["epoch_ratio"] == 0.4 and out["training_ratio"] == pytest.approx(0.433, abs=1e-3)
    worse = {"U-Net": {k: v - 0.02 for k, v in before["U-Net"].items()}, "AutoCas-U-Net": before["AutoCas-U-Net"]}
    failed = bench.compare(tree(before, 1000, 3000.0, "aaa", (0.002, 3)), tree(worse, 400, 1300.0, "bbb", (0.008, 2)))
    assert not failed["passed"] and failed["worst_difference"] == pytest.approx(-0.02)
    with pytest.raises(SystemExit, match="different specimens"):
        bench.paired(before["U-Net"], {k: v for k, v in before["U-Net"].items() if k != "phantom_005"})
    rec = perf.read_record(perf.write_record(tmp_path / "r.json", "bench_recipe", out))
    text = perf.recipe_markdown(rec)
    assert ("with `min_delta` 0.008, patience 2 (git bbb) against `min_delta` 0.002, patience 3 (git aaa), every "
            "method's mean held-out Dice stays within ±0.01 (the largest mean difference -0.0050).") in text
    assert ("The stages trained 400 epochs instead of 1000 (0.40×; a median of 200 per stage instead of 500), and "
            "training took 21 min 40 s instead of 50 min 0 s") in text
    assert "| AutoCas-U-Net | 0.9617 | 0.9567 | -0.0050 | -0.0300 |" in text
    assert text.startswith("Trained in full with each rule on the same 6 prepared specimens")
    rec = perf.read_record(perf.write_record(tmp_path / "f.json", "bench_recipe", failed))
    assert ("**not every method's mean held-out Dice stays within ±0.01** (outside it: U-Net -0.0200; the largest mean "
            "difference -0.0200).") in perf.recipe_markdown(rec)
    assert "*Not yet measured on this machine*" in perf.recipe_markdown(None)


def test_bench_recipe_hash_sees_one_changed_voxel(tmp_path):
    bench = _load_bench("bench_recipe")
    for name in ("a", "b"):
        folder = tmp_path / name / "data" / "cache" / "demo-8"
        folder.mkdir(parents=True)
        label = np.zeros((8, 8, 8), np.uint8)
        label[2, 2, 2] = name == "b"
        np.savez(folder / "phantom_000.npz", image=np.ones((8, 8, 8), np.float32), label=label)
    assert bench.specimens_hash(tmp_path / "a", "demo", 8) != bench.specimens_hash(tmp_path / "b", "demo", 8)
    assert bench.specimens_hash(tmp_path / "a", "demo", 8) == bench.specimens_hash(tmp_path / "a", "demo", 8)
    with pytest.raises(SystemExit, match="no prepared specimens"):
        bench.specimens_hash(tmp_path / "c", "demo", 8)
