"""The whole reproduction in order: phantoms → prepared data → notebooks (papermill) → book.

``innerear reproduce --profile demo`` (what ``make reproduce`` calls) runs every step; each
step skips what is already complete, so a rerun after an interruption picks up where the
last one stopped, and one failed notebook run does not touch the others' results.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from innerear.data.phantom import write_phantom_set
from innerear.data.preprocess import prepare_dataset
from innerear.io import atomic_path, sweep_temporaries
from innerear.reporting.performance import timings_path, write_record
from innerear.settings.layout import cache_dir, profile_runs, runs_root, stage_dir
from innerear.settings.profiles import (BACKBONES, Profile, backbone_label, default_data_dir, get_profile,
                                        project_root)
from innerear.settings.views import ALL_ORDERS, ORIENTATIONS, PAPER_ORDER

NOTEBOOKS = {
    "01": "01_data_preparation",
    "02": "02_backbones",
    "03": "03_cascade_training",
    "04": "04_evaluation",
    "05": "05_3d_visualization",
    "06": "06_performance",  # runs last: it renders this run's timings.json (see reproduce)
    "07": "07_headline",  # the landing page: runs after 06, it reads what 04 wrote (per_volume.csv)
    "08": "08_use_from_python",  # the Python API on one smoke-sized phantom (shipped model)
}
# cells of an executed page that are plumbing, not method: hidden from the rendered page (the
# executed copy keeps them, so nbval and a reader of the .ipynb see them)
PLUMBING_TAGS = ("parameters", "injected-parameters")
@dataclass(frozen=True)
class NotebookRun:
    """One papermill execution: which notebook, with which parameters, into which page."""

    notebook: str
    output: str  # relative to book/executed/
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What a profile runs: folds, backbones and ablations."""

    folds: tuple[int, ...]
    backbones: tuple[str, ...]
    orientation_folds: tuple[int, ...]  # U-Net single-view comparison (all three views)
    order_folds: tuple[int, ...]  # U-Net six-order ablation


PLANS = {
    "smoke": Plan(folds=(0,), backbones=("unet",), orientation_folds=(), order_folds=()),
    "demo": Plan(folds=(0, 1, 2, 3), backbones=BACKBONES, orientation_folds=(0,), order_folds=(0,)),
    "paper": Plan(folds=(0, 1, 2, 3), backbones=BACKBONES, orientation_folds=(0, 1, 2, 3), order_folds=(0, 1, 2, 3)),
}


def notebook_runs(profile: Profile, seed: int = 0) -> list[NotebookRun]:
    """Every notebook execution of ``make reproduce`` for a profile, in order."""
    plan = PLANS[profile.name]
    p = {"profile": profile.name, "seed": seed}
    runs = [NotebookRun(NOTEBOOKS["01"], f"{NOTEBOOKS['01']}.ipynb", dict(p))]
    for fold in plan.folds:
        for backbone in plan.backbones:
            views = ORIENTATIONS if backbone == "unet" and fold in plan.orientation_folds else ("axial",)
            views = ("axial",) + tuple(v for v in views if v != "axial")
            runs.append(NotebookRun(NOTEBOOKS["02"], f"02_backbones/{backbone}_fold{fold}.ipynb",
                                    dict(p, fold=fold, backbone=backbone, orientation=",".join(views))))
    for backbone in plan.backbones:
        for fold in plan.folds:
            runs.append(NotebookRun(NOTEBOOKS["03"], f"03_cascade/{backbone}_fold{fold}.ipynb",
                                    dict(p, fold=fold, backbone=backbone, order=",".join(PAPER_ORDER))))
    runs.append(NotebookRun(NOTEBOOKS["04"], f"{NOTEBOOKS['04']}.ipynb", dict(p)))
    runs.append(NotebookRun(NOTEBOOKS["05"], f"{NOTEBOOKS['05']}.ipynb", dict(p)))
    runs.append(NotebookRun(NOTEBOOKS["08"], f"{NOTEBOOKS['08']}.ipynb", dict(p)))
    runs.append(NotebookRun(NOTEBOOKS["06"], f"{NOTEBOOKS['06']}.ipynb", dict(p)))
    runs.append(NotebookRun(NOTEBOOKS["07"], f"{NOTEBOOKS['07']}.ipynb", dict(p)))
    return runs


def page_title(run: NotebookRun, se_mode: str = "authors") -> str | None:
    """The H1 (and sidebar entry) of a per-fold page, from its parameters; None for other pages.

    ``"U-Net baseline (axial), fold 0"`` for a backbone page, ``"AutoCas-SEU-Net (standard SE), fold 2"``
    for a cascade page (its order named when it is not the paper's)."""
    p = run.parameters
    if run.notebook == NOTEBOOKS["02"]:
        views = [v for v in str(p.get("orientation", "axial")).split(",") if v]
        also = f"; also {', '.join(views[1:])}" if len(views) > 1 else ""
        return f"{backbone_label(p['backbone'], se_mode)} baseline ({views[0]}{also}), fold {p['fold']}"
    if run.notebook == NOTEBOOKS["03"]:
        order = tuple(str(p.get("order", ",".join(PAPER_ORDER))).split(","))
        named = "" if order == tuple(PAPER_ORDER) else f" ({' → '.join(order)})"
        return f"AutoCas-{backbone_label(p['backbone'], se_mode)}{named}, fold {p['fold']}"
    return None


#: what TensorFlow's C++ start-up writes to stderr when a kernel first imports it: glog-style
#: lines (``I0000 00:00:... port.cc:153] oneDNN custom operations are on ...``) and absl's notice
_STARTUP_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
                            r"STDERR|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*)$")


def _startup_noise_only(cell) -> bool:
    """Whether a code cell's stderr holds nothing but TensorFlow's start-up lines."""
    err = [o for o in cell.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    lines = [line for o in err for line in "".join(o.get("text", "")).splitlines() if line.strip()]
    return bool(lines) and all(_STARTUP_NOISE.match(line) for line in lines)


def present_page(path: Path, title: str | None = None) -> None:
    """Make an executed page read as a page of the book: its H1 set to ``title`` (when given),
    papermill's parameter cells tagged ``remove-cell`` (Jupyter Book leaves them out of the HTML),
    and cells whose stderr is only TensorFlow's start-up lines tagged ``remove-stderr`` (hidden,
    not deleted: the executed notebook keeps them)."""
    import nbformat  # lazy: Jupyter's formats only where notebooks are written

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if set(tags) & set(PLUMBING_TAGS) and "remove-cell" not in tags:
            tags.append("remove-cell")
        if _startup_noise_only(cell) and "remove-stderr" not in tags:
            tags.append("remove-stderr")
    if title:
        first = next(c for c in nb.cells if c.cell_type == "markdown")
        lines = first.source.split("\n")
        k = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
        if k is None:
            lines.insert(0, f"# {title}")
        else:
            lines[k] = f"# {title}"
        first.source = "\n".join(lines)
    nbformat.write(nb, str(path))


def execute_notebook(run: NotebookRun, root: Path, site: Path, title: str | None = None) -> float:
    """Execute one notebook with papermill into ``book/executed/``; return the seconds taken.

    The executed copy is written to a temporary name and renamed on success, so a failed
    run never leaves a page that looks complete. It is titled ``title`` and its parameter
    cells are hidden from the book (:func:`present_page`).
    """
    import papermill as pm  # lazy: papermill (and Jupyter's client) only where notebooks run

    src = root / "notebooks" / f"{run.notebook}.ipynb"
    dst = site / "book" / "executed" / run.output
    dst.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with atomic_path(dst, suffix=".running.ipynb") as tmp:
        pm.execute_notebook(str(src), str(tmp), parameters=run.parameters, cwd=str(root / "notebooks"),
                            progress_bar=False, kernel_name="python3")
        present_page(Path(tmp), title)
    return time.perf_counter() - t0


def _run_link(output: str, title: str) -> str:
    return f"{{doc}}`{title} </book/executed/{output.removesuffix('.ipynb')}>`"


def run_tables(profile: Profile, seed: int, root: Path) -> dict[str, str]:
    """The chapters' tables of every per-fold page, as MyST markdown, from the runs' ``stage.json``.

    ``{"02_backbones": ..., "03_cascade": ...}``: one row per page (backbone × fold) with its
    held-out specimens and held-out Dice (mean over the fold's held-out specimens, after the
    largest-component step), each linking to its page; the cascade's row gives every stage's Dice.
    """
    runs_dir = runs_root(root)
    tables: dict[str, str] = {}
    for key, nb in (("02_backbones", NOTEBOOKS["02"]), ("03_cascade", NOTEBOOKS["03"])):
        pages = [r for r in notebook_runs(profile, seed) if r.notebook == nb]
        n_stages = max((len(str(r.parameters.get("order", "axial")).split(",")) for r in pages), default=1)
        if nb == NOTEBOOKS["02"]:
            head = ["Page", "Network", "Fold", "Held-out specimens", "Held-out Dice (axial, mean)"]
        else:
            order = str(pages[0].parameters["order"]).split(",") if pages else list(PAPER_ORDER)
            head = ["Page", "Network", "Fold", "Held-out specimens"] + [
                f"Dice after stage {k + 1} ({v})" + (", final" if k == n_stages - 1 else "")
                for k, v in enumerate(order)]
        rows = []
        for r in pages:
            p = r.parameters
            views = (str(p["orientation"]).split(",")[:1] if nb == NOTEBOOKS["02"]
                     else str(p["order"]).split(","))
            stages = []
            for k in range(len(views)):
                f = stage_dir(runs_dir, profile, p["backbone"], p["fold"], tuple(views[: k + 1])) / "stage.json"
                stages.append(json.loads(f.read_text()) if f.exists() else None)
            label = backbone_label(p["backbone"], profile.se_mode)
            net = label if nb == NOTEBOOKS["02"] else f"AutoCas-{label}"
            held = ", ".join(stages[-1]["test_ids"]) if stages[-1] else "not trained"
            dice = [f"{st['mean_test_dice']:.3f}" if st else "not trained" for st in stages]
            rows.append([_run_link(r.output, page_title(r, profile.se_mode) or r.output), net, str(p["fold"]), held,
                         *dice])
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        tables[key] = "\n".join(lines) + "\n"
    return tables


def write_run_tables(profile: Profile, seed: int, root: Path, site: Path) -> list[Path]:
    """Write :func:`run_tables` to ``book/executed/<key>_runs.md`` of ``site`` (the chapters include them)."""
    out = []
    for key, text in run_tables(profile, seed, root).items():
        path = site / "book" / "executed" / f"{key}_runs.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
        out.append(path)
    return out


def training_jobs(profile: Profile) -> list[tuple[str, int, tuple[str, ...]]]:
    """Every (backbone, fold, views) run a profile's book needs, before notebooks read them."""
    plan = PLANS[profile.name]
    jobs: list[tuple[str, int, tuple[str, ...]]] = []
    for fold in plan.folds:
        for backbone in plan.backbones:
            jobs += [(backbone, fold, ("axial",)), (backbone, fold, tuple(PAPER_ORDER))]
    for fold in plan.orientation_folds:
        jobs += [("unet", fold, (v,)) for v in ORIENTATIONS]
    for fold in plan.order_folds:
        jobs += [("unet", fold, tuple(o)) for o in ALL_ORDERS]
    return list(dict.fromkeys(jobs))


def job_groups(jobs: Sequence[tuple[str, int, tuple[str, ...]]]) -> list[list[tuple]]:
    """Runs grouped for training in one process each, one group per (backbone, fold).

    Runs that share stages have the same backbone and fold, so they share a group and groups
    never depend on each other; within a group the runs keep their order, whose shared
    prefixes are trained by the first. Groups come longest first (by stages to train), so
    that workers taking them in turn finish close together: grouping by backbone alone left
    one of two workers idle for a third of the demo training (the U-Net group holds the
    orientation and order experiments).
    """
    groups: dict[tuple, list[tuple]] = {}
    for job in jobs:
        groups.setdefault((job[0], job[1]), []).append(job)
    return sorted(groups.values(), key=lambda g: -_stages_to_train(g))


def _stages_to_train(group: Sequence[tuple[str, int, tuple[str, ...]]]) -> int:
    """Distinct stages a group trains (runs sharing a prefix train it once)."""
    return len({(b, f, v[: k + 1]) for b, f, v in group for k in range(len(v))})


def balance(groups: Sequence[Sequence[tuple]], n_workers: int) -> list[int]:
    """Stages per worker when ``n_workers`` take ``groups`` in order, each the next free."""
    loads = [0] * max(1, n_workers)
    for g in groups:
        loads[loads.index(min(loads))] += _stages_to_train(g)
    return loads


def _train_group(profile_name: str, seed: int, root: str, group: list[tuple], threads: int | None) -> list[dict]:
    """Worker task: train a group of runs of one backbone in one fresh Python process.

    The process is ``innerear run --job ...``, which trains each run with the paper recipe's
    entry point, :func:`innerear.training.paper.train_run`. One process per group pays the
    framework's start-up once and lets runs of the same architecture share compiled networks
    (:class:`~innerear.training.fit.ModelPool`); a separate process keeps each group's memory and
    threads to itself (TensorFlow in a thread of the parent process ran 2-3x slower here).
    """
    env = dict(os.environ, INNEREAR_HOME=root, TF_CPP_MIN_LOG_LEVEL="3")
    if threads:
        env["INNEREAR_THREADS"] = str(threads)
    backbone = group[0][0]
    cmd = [sys.executable, "-m", "innerear", "run", "--profile", profile_name, "--seed", str(seed),
           "--backbone", backbone]
    for _, fold, views in group:
        cmd += ["--job", f"{fold}:{','.join(views)}"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    results = []
    for _, fold, views in group:
        folder = stage_dir(runs_root(root), profile_name, backbone, fold, views)
        if not (folder / "stage.json").exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise RuntimeError(f"training {backbone} fold {fold} {'/'.join(views)} failed:\n{tail}")
        stages = [json.loads((stage_dir(runs_root(root), profile_name, backbone, fold, views[: k + 1]) / "stage.json")
                             .read_text()) for k in range(len(views))]
        results.append({"backbone": backbone, "fold": fold, "views": "/".join(views),
                        "dice": [round(st["mean_test_dice"], 3) for st in stages],
                        "epochs": [st["epochs"] for st in stages],
                        "train_seconds": sum(st["train_seconds"] for st in stages)})
    return results


def train_all(profile: Profile, seed: int, root: Path, workers: int | None = None,
              scheduler: str | None = None, verbose: bool = True) -> list[dict]:
    """Train every run the book needs, in parallel: local worker processes, or a Dask cluster.

    The runs are grouped (:func:`job_groups`) and each group is one task that trains its
    runs in one process; runs that share their first stages are in the same group, so
    shared stages are trained once and no two workers write the same folder. Without
    ``scheduler`` the tasks run on this machine, ``workers`` at a time (default: one per CPU
    core), each a subprocess with ``cores // workers`` backend threads, taken longest first;
    a plain thread pool waits on them (a local Dask cluster doing the same waiting cost about
    9 % of a core on a 2-core machine, issue 25). With a scheduler address
    (``tcp://host:8786``) the tasks go to that Dask cluster, whose workers must see the same
    project folder.
    """
    jobs = [j for j in training_jobs(profile)
            if not (stage_dir(runs_root(root), profile, *j) / "stage.json").exists()]
    if not jobs:
        return []
    groups = job_groups(jobs)
    results: list[dict] = []

    def report(group_results: list[dict]) -> None:
        for r in group_results:
            results.append(r)
            if verbose:
                print(f"[train {len(results)}/{len(jobs)}] {r['backbone']} fold {r['fold']} {r['views']}: "
                      f"held-out Dice per stage {r['dice']}, epochs {r['epochs']}, {r['train_seconds']:.0f} s",
                      flush=True)

    if scheduler:
        _train_on_cluster(scheduler, profile, seed, root, groups, report)
        return results
    n_workers = workers or max(1, os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="train") as pool:
        futures = [pool.submit(_train_group, profile.name, seed, str(root), group, threads) for group in groups]
        failures = []
        for fut in as_completed(futures):  # a failed group does not stop the others: their stages stay valid
            try:
                report(fut.result())
            except RuntimeError as exc:
                failures.append(str(exc))
                print(f"[train] FAILED {exc}", file=sys.stderr, flush=True)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(groups)} training groups failed:\n" + "\n".join(failures))
    return results


def _train_on_cluster(scheduler: str, profile: Profile, seed: int, root: Path, groups: list[list[tuple]],
                      report: Callable[[list[dict]], None]) -> None:
    """The groups as tasks on the Dask cluster at ``scheduler``; each finished group goes to ``report``."""
    from dask.distributed import Client, as_completed as dask_completed  # lazy: Dask only for a cluster

    client = Client(scheduler)
    try:
        futures = [client.submit(_train_group, profile.name, seed, str(root), group, None, pure=False,
                                 key=f"train-{profile.name}-{group[0][0]}-{len(group)}runs-{i}")
                   for i, group in enumerate(groups)]
        for fut in dask_completed(futures):
            report(fut.result())
    finally:
        client.close()


def ensure_phantoms(profile: Profile, seed: int, root: Path) -> Path:
    """Generate the profile's phantom set unless real data or a matching set is present.

    When the profile's phantom folder holds another set (other seed, settings or generator
    version) it is regenerated, and the data prepared from it dropped, only while no network
    was trained on it: trained runs (``runs/<profile>``) are never deleted implicitly; a
    :class:`RuntimeError` then says which command removes them.
    """
    data_dir = default_data_dir(profile.name, root)
    if data_dir.name == "hear-eu":
        return data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_phantom_set(data_dir, profile.phantoms, seed=seed, progress=True)
    except FileExistsError:
        manifest = data_dir / "manifest.json"
        if not (manifest.exists() and json.loads(manifest.read_text()).get("synthetic")):
            raise
        runs = profile_runs(runs_root(root), profile)
        if runs.exists():
            old_seed = json.loads(manifest.read_text()).get("seed")
            what = f"seed {old_seed}" if old_seed != seed else "other settings or generator version"
            keep = f", or keep seed {old_seed}" if old_seed != seed else ""
            raise RuntimeError(
                f"{data_dir}: holds a phantom set of {what} (asked for seed {seed}) and {runs} holds networks "
                f"trained on it; nothing was changed. To start over, remove the trained runs yourself: "
                f"rm -r {runs} (or `make clean`){keep}")
        print(f"[phantoms] {data_dir} holds a different phantom set and no run was trained on it; regenerating it",
              flush=True)
        shutil.rmtree(data_dir)
        shutil.rmtree(cache_dir(root, profile), ignore_errors=True)
        data_dir.mkdir(parents=True)
        write_phantom_set(data_dir, profile.phantoms, seed=seed, progress=True)
    return data_dir


def write_timings(root: Path, profile: Profile, seed: int, times: dict[str, float], complete: bool,
                  workers: int | None = None) -> Path:
    """Record a reproduce run's seconds per step (and per notebook page) as JSON.

    Written twice per run: before the Performance page is rendered (``complete`` false: the
    book build and the total are still to come) and at the end.
    """
    pages = {k: v for k, v in times.items() if k.endswith(".ipynb")}
    steps = [{"step": k, "seconds": v} for k, v in times.items() if k not in pages and k != "total"]  # in order
    return write_record(timings_path(root, profile.name), "reproduce-timings",
                        {"profile": profile.name, "seed": seed, "complete": complete,
                         "workers": workers or os.cpu_count(), "steps": steps, "pages": pages,
                         "total_s": times.get("total")})


BOOK_SOURCES = ("_config.yml", "_toc.yml", "references.bib", "CITATION.cff", "book")  # book/citing.md includes CITATION.cff


def prepare_site(root: Path, site: Path) -> Path:
    """Copy the book's static sources into ``site`` (a separate book, e.g. the test build)."""
    if site.resolve() == root.resolve():
        return site
    site.mkdir(parents=True, exist_ok=True)
    for name in BOOK_SOURCES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, site / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("executed", "*.png"))
        elif src.exists():
            shutil.copy2(src, site / name)
    return site


def build_book(site: Path, warnings_as_errors: bool = True) -> Path:
    """Build the Jupyter Book (HTML) in ``site``; return the index page."""
    # the redirect to the root page is written only when missing (sphinx-external-toc): drop it so that a
    # changed root page (book/intro.md before issue 26) is followed
    (site / "_build" / "html" / "index.html").unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(site), "--path-output", str(site)]
    if warnings_as_errors:
        cmd += ["-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True, cwd=site)
    return site / "_build" / "html" / "index.html"


def reproduce(profile_name: str = "demo", seed: int = 0, book: bool = True, only: Sequence[str] | None = None,
              site: str | os.PathLike | None = None, workers: int | None = None,
              scheduler: str | None = None) -> dict:
    """Run the whole pipeline for a profile; return the seconds each step took.

    The executed pages and the HTML go to ``site`` (default: the project itself, so
    ``_build/html``); ``make test`` builds its smoke book in a separate site so that it
    never replaces the pages of a demo run.
    """
    profile = get_profile(profile_name)
    root = project_root()
    site_dir = prepare_site(root, Path(site).resolve() if site else root)
    # a run killed outright (SIGKILL, power) ran no cleanup: its writers' temporaries go now
    for folder in (profile_runs(runs_root(root), profile), cache_dir(root, profile), default_data_dir(profile.name, root),
                   site_dir / "book" / "executed"):
        sweep_temporaries(folder)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    ensure_phantoms(profile, seed, root)
    times["phantoms"] = time.perf_counter() - t0
    t = time.perf_counter()
    prepare_dataset(default_data_dir(profile.name, root), profile.grid, cache_dir(root, profile), progress=True)
    times["prepare"] = time.perf_counter() - t
    if not only:
        t = time.perf_counter()
        train_all(profile, seed, root, workers=workers, scheduler=scheduler)
        times["training (all stages)"] = time.perf_counter() - t
    # the kernels inherit these; set once, before the notebooks run side by side
    os.environ.update(INNEREAR_HOME=str(root), TF_CPP_MIN_LOG_LEVEL="3")
    runs = [r for r in notebook_runs(profile, seed) if not only or any(r.notebook.startswith(o) for o in only)]
    # 06 renders the timings of the steps before it; 07 (the landing page) reads what 04 wrote
    last = [r for r in runs if r.notebook in (NOTEBOOKS["06"], NOTEBOOKS["07"])]
    runs = [r for r in runs if r not in last]
    failures = []

    def one(run: NotebookRun) -> None:
        print(f"[papermill] {run.notebook} {run.parameters} -> book/executed/{run.output}", flush=True)
        try:
            times[run.output] = execute_notebook(run, root, site_dir, page_title(run, profile.se_mode))
        except Exception as exc:  # keep going: other runs' results stay valid
            failures.append(f"{run.output}: {type(exc).__name__}")
            print(f"[papermill] FAILED {run.output}: {exc}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(one, runs))
    times["notebooks (all)"] = time.perf_counter() - t
    if failures:
        raise RuntimeError("notebook runs failed:\n" + "\n".join(failures))
    write_timings(root, profile, seed, times, complete=False, workers=workers)
    for run in last:
        one(run)
    if failures:
        raise RuntimeError("notebook runs failed:\n" + "\n".join(failures))
    if book:
        t = time.perf_counter()
        write_run_tables(profile, seed, root, site_dir)
        index = build_book(site_dir)
        times["book"] = time.perf_counter() - t
        print(f"Book built: open {index}", flush=True)
    times["total"] = time.perf_counter() - t0
    write_timings(root, profile, seed, times, complete=True, workers=workers)
    return times
