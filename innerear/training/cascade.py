"""Training the auto-context cascade of the paper recipe: one run (backbone, fold, stage order).

:func:`train_cascade` trains the stages of one order in sequence, each on the image plus
the earlier stages' held-out masks (with optional context dropout,
:func:`drop_context`), writes every stage's held-out predictions through the engine
(:func:`innerear.inference.engine.run_stage`) and a ``cascade.json``
(:class:`innerear.inference.modelfolder.ModelSpec`) for :func:`innerear.inference.engine.load_cascade`. A stage folder is locked while it trains
(:func:`stage_lock`) and resumes from its checkpoints."""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import keras
import numpy as np

from innerear.data.normalize import fit_normalizer
from innerear.data.preprocess import PreparedCase, split_fold
from innerear.inference.engine import InferenceSettings, run_stage, stage_inputs
from innerear.inference.modelfolder import ModelSpec
from innerear.io import json_round_trip, save_npz, write_json
from innerear.metrics import dice
from innerear.nets.backbones import build_for_profile
from innerear.settings.layout import fold_dir, read_stage_masks, stage_dir
from innerear.settings.profiles import Profile
from innerear.settings.views import check_order
from innerear.training.fit import ModelPool, SliceDataset, fit, set_output_prior


@contextlib.contextmanager
def stage_lock(folder: str | os.PathLike, verbose: bool = False) -> Iterator[None]:
    """Hold the lock of a stage folder (``<folder>/.lock``, a :class:`filelock.FileLock`) so that
    two processes (e.g. notebooks run side by side) never train or write the same stage; a
    second one waits, then finds the stage trained."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if verbose:
            print(f"waiting for {folder}: another process is training this stage", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _stage_seed(seed: int, backbone: str, fold: int, order: Sequence[str]) -> int:
    key = f"{backbone}|{fold}|{'/'.join(order)}"
    return (seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(key))) % (2**31 - 1)


# Profile fields added after runs were first recorded: a record without one was trained with
# this value (the behaviour before the field existed).
_LEGACY_PROFILE_VALUES = {"plain_bottleneck": False, "connectivity": 26, "lr_plateau": None, "min_delta": 0.0,
                         "prior_bias": False, "context_dropout": 0.0}


@dataclass
class _Run:
    """What every stage of one cascade training shares."""

    cases: dict[str, PreparedCase]
    ids: list[str]
    train_ids: list[str]
    test_ids: list[str]
    backbone: str
    fold: int
    order: tuple[str, ...]
    profile: Profile
    runs_root: str | os.PathLike
    seed: int
    verbose: bool
    pool: ModelPool | None
    inference: InferenceSettings
    view_axes: str
    images: dict[str, np.ndarray]  # normalised

    def seed_of(self, k: int) -> int:
        return _stage_seed(self.seed, self.backbone, self.fold, self.order[: k + 1])

    def folder(self, k: int) -> Path:
        return stage_dir(self.runs_root, self.profile, self.backbone, self.fold, self.order[: k + 1])


def train_cascade(
    cases: Sequence[PreparedCase],
    folds: list[list[str]],
    fold: int,
    backbone: str,
    order: Sequence[str],
    profile: Profile,
    runs_root: str | os.PathLike = "runs",
    seed: int = 0,
    verbose: bool = False,
    pool: ModelPool | None = None,
    inference: InferenceSettings | None = None,
    view_axes: str | None = None,
) -> dict:
    """Train (or resume, or skip) every stage of one cascade on one fold.

    Each stage trains on the previous stage's post-processed predictions *on the training
    volumes* (as the paper did), then predicts both training and held-out volumes; held-out
    probabilities and masks are saved per case under ``<stage>/pred/``. Returns a summary
    with each stage's held-out Dice per case. A :class:`~innerear.training.fit.ModelPool` shared by
    several calls in one process reuses compiled networks (same results, less tracing).

    The stage predictions are made by the engine (:func:`run_stage`) with ``inference``
    (default: ``"fast"`` mode). ``view_axes`` (default: the profile's field of that name if
    it has one, else ``"ras"``) chooses the slicing convention (:mod:`innerear.settings.views`); it is
    written to ``cascade.json`` with the connectivity, so that a loaded cascade predicts as
    it was trained.
    """
    order = check_order(order)
    by_id = {c.case_id: c for c in cases}
    ids = sorted(by_id)
    train_ids, test_ids = split_fold(ids, folds, fold)
    normalizer = fit_normalizer(by_id[c].image for c in train_ids)
    _record_fold(fold_dir(runs_root, profile, backbone, fold), train_ids, test_ids, normalizer, profile, backbone, fold)
    run = _Run(by_id, ids, train_ids, test_ids, backbone, fold, order, profile, runs_root, seed, verbose, pool,
               inference or InferenceSettings(), view_axes or getattr(profile, "view_axes", "ras"),
               {c: normalizer(by_id[c].image) for c in ids})
    masks: dict[str, list[np.ndarray]] = {c: [] for c in ids}
    summary: dict = {"fold": fold, "backbone": backbone, "order": list(order), "stages": []}
    for k in range(len(order)):
        with stage_lock(run.folder(k), verbose):
            info, prev = _train_stage(run, k, masks)
        for c in ids:
            masks[c].append(prev[c])
        summary["stages"].append(info)
    last = run.folder(len(order) - 1)
    ModelSpec(stages=tuple(os.path.relpath(run.folder(k), last) for k in range(len(order))),
              order=tuple(order), normalizer=normalizer.to_dict(), grid=profile.grid, threshold=0.5,
              connectivity=profile.connectivity, view_axes=run.view_axes, backbone=backbone, fold=fold,
              profile=profile.name).write(last)
    return summary


def _record_fold(root: Path, train_ids: list[str], test_ids: list[str], normalizer, profile: Profile, backbone: str,
                 fold: int) -> None:
    """Write ``fold.json``; refuse a folder trained on other specimens or with other settings."""
    root.mkdir(parents=True, exist_ok=True)
    fold_file = root / "fold.json"
    if fold_file.exists():
        old = json.loads(fold_file.read_text())
        if old.get("train") != train_ids or old.get("test") != test_ids:
            raise RuntimeError(f"{root}: trained on other specimens than this data set's fold {fold} "
                               f"(fold.json differs); remove the folder or use another runs folder")
        irrelevant = {"name", "extra", "phantoms"} | ({"se_mode"} if backbone != "se_unet" else set()) \
            | ({"plain_bottleneck"} if backbone == "unet" else set())
        recorded = _LEGACY_PROFILE_VALUES | old.get("profile", {})
        changed = sorted(k for k, v in profile.to_dict().items() if k not in irrelevant
                         and k in recorded and json_round_trip(recorded[k]) != json_round_trip(v))
        if changed:
            raise RuntimeError(f"{root}: trained with other settings ({', '.join(changed)} differ from profile "
                               f"{profile.name!r}); remove the folder or use another runs folder")
    write_json(fold_file, {"train": train_ids, "test": test_ids, "normalizer": normalizer.to_dict(),
                           "profile": profile.to_dict(), "backbone": backbone, "fold": fold})


def _train_stage(run: _Run, k: int, masks: dict[str, list[np.ndarray]]) -> tuple[dict, dict[str, np.ndarray]]:
    """Stage ``k``: its record and every case's mask (read back when the stage was trained before)."""
    folder, view = run.folder(k), run.order[k]
    if (folder / "stage.json").exists():
        if run.verbose:
            print(f"stage {k + 1} ({view}) already trained: {folder}", flush=True)
        return json.loads((folder / "stage.json").read_text()), read_stage_masks(folder, run.ids)
    t0 = time.perf_counter()
    if run.verbose:
        print(f"stage {k + 1}/{len(run.order)} ({view}, {1 + k} channel(s)) -> {folder}", flush=True)
    result = _fit_stage(run, k, masks)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    prev, test_dice = _predict_stage(run, k, result.model, masks)
    info = {"view": view, "stage": k + 1, "channels": 1 + k, "order": list(run.order[: k + 1]),
            "epochs": result.epochs, "best_epoch": result.best_epoch, "stopped_by": result.stopped_by,
            "max_epochs": run.profile.max_epochs, "train_seconds": train_seconds,
            "predict_seconds": time.perf_counter() - t1, "test_dice": test_dice,
            "mean_test_dice": float(np.mean(list(test_dice.values()))), "train_ids": run.train_ids,
            "test_ids": run.test_ids, "backbone": run.backbone, "fold": run.fold, "grid": run.profile.grid,
            "inference_mode": run.inference.mode, "view_axes": run.view_axes}
    write_json(folder / "stage.json", info)
    if run.pool is None:  # pooled networks must survive for the next training
        keras.backend.clear_session()
    return info, prev


def _fit_stage(run: _Run, k: int, masks: dict[str, list[np.ndarray]]):
    """Fit stage ``k``'s network on the training volumes plus the earlier stages' (dropped-out) masks."""
    profile, train_ids = run.profile, run.train_ids
    rng = np.random.default_rng(run.seed_of(k))
    context = {c: [drop_context(m, profile.context_dropout, rng) for m in masks[c]] for c in train_ids}
    train_data = SliceDataset([stage_inputs(run.images[c], context[c]) for c in train_ids],
                              [run.cases[c].label for c in train_ids], run.order[k], profile.batch_size,
                              seed=run.seed_of(k), view_axes=run.view_axes)
    share = float(np.mean([run.cases[c].label.mean() for c in train_ids])) if profile.prior_bias else None

    def network(channels: int = 1 + k, share: float | None = share) -> keras.Model:
        model = build_for_profile(run.backbone, channels, profile)
        return model if share is None else set_output_prior(model, share)

    return fit(network, train_data, run.folder(k), max_epochs=profile.max_epochs, patience=profile.patience,
               learning_rate=profile.learning_rate, loss=profile.loss, monitor=profile.monitor, seed=run.seed_of(k),
               verbose=run.verbose, pool=run.pool, min_delta=profile.min_delta, lr_plateau=profile.lr_plateau)


def _predict_stage(run: _Run, k: int, model: keras.Model, masks: dict[str, list[np.ndarray]]):
    """Every case through stage ``k`` (the engine); held-out probabilities and masks saved, training masks too."""
    folder = run.folder(k)
    (folder / "pred").mkdir(exist_ok=True)
    prev, test_dice = {}, {}
    for c in run.ids:
        prob, mask = run_stage(model, run.order[k], run.images[c], masks[c], 0.5, run.inference,
                               view_axes=run.view_axes, connectivity=run.profile.connectivity)
        prev[c] = mask
        if c in run.test_ids:
            save_npz(folder / "pred" / f"{c}.npz", prob=prob.astype(np.float16), mask=mask)
            test_dice[c] = dice(mask, run.cases[c].label)
        else:  # training volumes: only the mask, which the next stage trains on
            save_npz(folder / "pred" / f"{c}.npz", mask=mask)
    return prev, test_dice


def drop_context(mask: np.ndarray, share: float, rng: np.random.Generator,
                 radius: tuple[int, int] = (3, 8)) -> np.ndarray:
    """A copy of an earlier stage's mask with balls of it erased, about ``share`` of its voxels.

    Ball centres are random foreground voxels, radii uniform in ``radius`` (voxels). Later
    stages trained on such masks cannot simply copy the earlier stage's answer (on its own
    training volumes it is nearly perfect) and learn to find lumen the mask misses, as it
    will at test time. ``share=0`` returns the mask unchanged.
    """
    out = np.array(mask, dtype=np.uint8, copy=True)
    total = int(out.sum())
    if share <= 0 or total == 0:
        return out
    fg = np.argwhere(out)
    removed = 0
    while removed < share * total:
        c = fg[rng.integers(len(fg))]
        r = int(rng.integers(radius[0], radius[1] + 1))
        lo = np.maximum(c - r, 0)
        hi = np.minimum(c + r + 1, out.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        gx, gy, gz = np.ogrid[box]
        d2 = (gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2
        ball = (d2 <= r * r) & (out[box] != 0)
        removed += int(ball.sum())
        out[box][ball] = 0
    return out
