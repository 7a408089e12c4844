"""The auto-context cascade (AutoCasNet) and the single-view baselines.

Stage *k* sees the image and the *k-1* earlier stages' post-processed masks as channels,
sliced along its own view. After each stage the slice predictions are reassembled in 3D,
thresholded at 0.5 and reduced to the largest 3D connected component (26-connected by
default; ``Profile.connectivity``).

Runs are stored as a prefix tree, one folder per stage::

    runs/<profile>/<backbone>/fold<k>/<view1>/<view2>/<view3>/

A single-view baseline is the first level of that tree (``fold0/axial``), and cascades that
share their first views share those stages' training: the six stage orders need 15 stage
trainings, not 18, and the three single-view baselines come with them.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import keras
import numpy as np
from scipy import ndimage

from .config import Profile
from .io import save_npz, write_json
from .preprocess import (
    Normalizer,
    PreparedCase,
    dice,
    check_order,
    fit_normalizer,
    split_fold,
)
from .train import ModelPool, SliceDataset, fit, load_model, predict_volume, set_output_prior

STRUCTURE_26 = np.ones((3, 3, 3), bool)


# --------------------------------------------------------------------------- building blocks
def connectivity_structure(connectivity: int = 26) -> np.ndarray:
    """The 3×3×3 neighbourhood of 6 (faces), 18 (+ edges) or 26 (+ corners) neighbours."""
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return ndimage.generate_binary_structure(3, rank)


def largest_component(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Keep the largest connected component of a binary volume (empty stays empty).

    ``connectivity`` 26 (default) or 6 (scipy's default; the authors' code) or 18."""
    mask = np.asarray(mask) != 0
    labels, n = ndimage.label(mask, structure=connectivity_structure(connectivity))
    if n <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(np.argmax(sizes))).astype(np.uint8)


def postprocess(probabilities: np.ndarray, threshold: float = 0.5, keep_largest: bool = True,
                connectivity: int = 26) -> np.ndarray:
    """Threshold stage probabilities and keep the largest 3D component (the paper's step)."""
    mask = (np.asarray(probabilities) >= threshold).astype(np.uint8)
    return largest_component(mask, connectivity) if keep_largest else mask


def stage_inputs(image: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """Stack the (z-scored) image and the earlier stages' masks as channels: (x, y, z, 1+k)."""
    channels = [np.asarray(image, np.float32)] + [np.asarray(m, np.float32) for m in masks]
    shapes = {c.shape for c in channels}
    if len(shapes) != 1:
        raise ValueError(f"image and masks must share a shape, got {sorted(shapes)}")
    return np.stack(channels, axis=-1)


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


# --------------------------------------------------------------------------- inference
@dataclass
class Cascade:
    """A trained cascade: its stages (view, model), normaliser and grid."""

    stages: list[tuple[str, keras.Model]]
    normalizer: Normalizer
    grid: int
    threshold: float = 0.5
    batch_size: int = 32
    info: dict = field(default_factory=dict)
    connectivity: int = 26

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(view for view, _ in self.stages)


def run_stage(model: keras.Model, view: str, image_norm: np.ndarray, masks: Sequence[np.ndarray],
              threshold: float = 0.5, batch_size: int = 32, connectivity: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """One stage on one volume: ``(probabilities, post-processed mask)``."""
    prob = predict_volume(model, stage_inputs(image_norm, masks), view, batch_size)
    return prob, postprocess(prob, threshold, connectivity=connectivity)


def segment(volume: np.ndarray, models: Cascade, return_stages: bool = False):
    """Segment a prepared volume (resampled to the cascade's grid, raw intensities).

    Returns ``(mask, probabilities)`` of the last stage; with ``return_stages`` also the list
    of every stage's ``(probabilities, mask)``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    image = models.normalizer(volume)
    masks: list[np.ndarray] = []
    stages = []
    for view, model in models.stages:
        prob, mask = run_stage(model, view, image, masks, models.threshold, models.batch_size, models.connectivity)
        masks.append(mask)
        stages.append((prob, mask))
    mask, prob = stages[-1][1], stages[-1][0]
    return (mask, prob, stages) if return_stages else (mask, prob)


def load_cascade(run_dir: str | os.PathLike) -> Cascade:
    """Load a trained cascade from its deepest stage folder (or a folder with ``cascade.json``)."""
    run_dir = Path(run_dir)
    spec_path = run_dir / "cascade.json"
    if not spec_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a trained cascade (no cascade.json)")
    spec = json.loads(spec_path.read_text())
    stages = []
    for rel in spec["stages"]:
        stage_dir = (run_dir / rel).resolve()
        model_path = stage_dir / "best.keras"
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path}: model file missing; the run folder is incomplete")
        stages.append((json.loads((stage_dir / "stage.json").read_text())["view"], load_model(model_path)))
    norm = Normalizer(**spec["normalizer"])
    return Cascade(stages=stages, normalizer=norm, grid=int(spec["grid"]), threshold=float(spec.get("threshold", 0.5)),
                   info=spec, connectivity=int(spec.get("connectivity", 26)))


# --------------------------------------------------------------------------- training
def fold_dir(runs_root: str | os.PathLike, profile: Profile, backbone: str, fold: int) -> Path:
    """``runs/<profile>/<backbone>/fold<k>``."""
    return Path(runs_root) / profile.name / backbone / f"fold{fold}"


def stage_dir(runs_root: str | os.PathLike, profile: Profile, backbone: str, fold: int, order: Sequence[str]) -> Path:
    """The folder of the last stage of ``order`` in the prefix tree."""
    return fold_dir(runs_root, profile, backbone, fold).joinpath(*order)


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


def _load_predictions(folder: Path, case_ids: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for cid in case_ids:
        with np.load(folder / "pred" / f"{cid}.npz") as z:
            out[cid] = z["mask"]
    return out


def read_stage_predictions(folder: str | os.PathLike, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Saved ``(probabilities, mask)`` of one stage for one case."""
    with np.load(Path(folder) / "pred" / f"{case_id}.npz") as z:
        if "prob" not in z:
            raise KeyError(f"{folder}: {case_id} is a training volume of this fold (no held-out prediction)")
        return z["prob"].astype(np.float32), z["mask"]


def _jsonable(value):
    """A value as it reads back from JSON (tuples become lists), for comparing settings."""
    return json.loads(json.dumps(value))


# Profile fields added after runs were first recorded: a record without one was trained with
# this value (the behaviour before the field existed).
_LEGACY_PROFILE_VALUES = {"plain_bottleneck": False, "connectivity": 26, "lr_plateau": None, "min_delta": 0.0,
                         "prior_bias": False, "context_dropout": 0.0}


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
) -> dict:
    """Train (or resume, or skip) every stage of one cascade on one fold.

    Each stage trains on the previous stage's post-processed predictions *on the training
    volumes* (as the paper did), then predicts both training and held-out volumes; held-out
    probabilities and masks are saved per case under ``<stage>/pred/``. Returns a summary
    with each stage's held-out Dice per case. A :class:`~innerear.train.ModelPool` shared by
    several calls in one process reuses compiled networks (same results, less tracing).
    """
    from .backbones import build_for_profile

    order = check_order(order)
    by_id = {c.case_id: c for c in cases}
    ids = sorted(by_id)
    train_ids, test_ids = split_fold(ids, folds, fold)
    root = fold_dir(runs_root, profile, backbone, fold)
    root.mkdir(parents=True, exist_ok=True)
    normalizer = fit_normalizer(by_id[c].image for c in train_ids)
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
                         and k in recorded and _jsonable(recorded[k]) != _jsonable(v))
        if changed:
            raise RuntimeError(f"{root}: trained with other settings ({', '.join(changed)} differ from profile "
                               f"{profile.name!r}); remove the folder or use another runs folder")
    write_json(fold_file, {"train": train_ids, "test": test_ids, "normalizer": normalizer.to_dict(),
                                    "profile": profile.to_dict(), "backbone": backbone, "fold": fold})
    images = {c: normalizer(by_id[c].image) for c in ids}
    masks: dict[str, list[np.ndarray]] = {c: [] for c in ids}
    summary: dict = {"fold": fold, "backbone": backbone, "order": list(order), "stages": []}
    for k, view in enumerate(order):
        folder = stage_dir(runs_root, profile, backbone, fold, order[: k + 1])
        with stage_lock(folder, verbose):
            done = folder / "stage.json"
            if done.exists():
                info = json.loads(done.read_text())
                prev = _load_predictions(folder, ids)
                if verbose:
                    print(f"stage {k + 1} ({view}) already trained: {folder}", flush=True)
            else:
                t0 = time.perf_counter()
                if verbose:
                    print(f"stage {k + 1}/{len(order)} ({view}, {1 + k} channel(s)) -> {folder}", flush=True)
                rng = np.random.default_rng(_stage_seed(seed, backbone, fold, order[: k + 1]))
                context = {c: [drop_context(m, profile.context_dropout, rng) for m in masks[c]] for c in train_ids}
                train_data = SliceDataset([stage_inputs(images[c], context[c]) for c in train_ids],
                                          [by_id[c].label for c in train_ids], view, profile.batch_size,
                                          seed=_stage_seed(seed, backbone, fold, order[: k + 1]))
                share = float(np.mean([by_id[c].label.mean() for c in train_ids])) if profile.prior_bias else None

                def network(channels: int = 1 + k, share: float | None = share) -> keras.Model:
                    model = build_for_profile(backbone, channels, profile)
                    return model if share is None else set_output_prior(model, share)

                result = fit(
                    network,
                    train_data, folder, max_epochs=profile.max_epochs, patience=profile.patience,
                    learning_rate=profile.learning_rate, loss=profile.loss, monitor=profile.monitor,
                    seed=_stage_seed(seed, backbone, fold, order[: k + 1]), verbose=verbose, pool=pool,
                    min_delta=profile.min_delta, lr_plateau=profile.lr_plateau,
                )
                train_seconds = time.perf_counter() - t0
                t1 = time.perf_counter()
                (folder / "pred").mkdir(exist_ok=True)
                prev = {}
                test_dice = {}
                for c in ids:
                    prob, mask = run_stage(result.model, view, images[c], masks[c], connectivity=profile.connectivity)
                    prev[c] = mask
                    if c in test_ids:
                        save_npz(folder / "pred" / f"{c}.npz", prob=prob.astype(np.float16), mask=mask)
                        test_dice[c] = dice(mask, by_id[c].label)
                    else:  # training volumes: only the mask, which the next stage trains on
                        save_npz(folder / "pred" / f"{c}.npz", mask=mask)
                info = {"view": view, "stage": k + 1, "channels": 1 + k, "order": list(order[: k + 1]),
                        "epochs": result.epochs, "best_epoch": result.best_epoch, "stopped_by": result.stopped_by,
                        "max_epochs": profile.max_epochs, "train_seconds": train_seconds,
                        "predict_seconds": time.perf_counter() - t1, "test_dice": test_dice,
                        "mean_test_dice": float(np.mean(list(test_dice.values()))), "train_ids": train_ids,
                        "test_ids": test_ids, "backbone": backbone, "fold": fold, "grid": profile.grid}
                write_json(folder / "stage.json", info)
                if pool is None:  # pooled networks must survive for the next training
                    keras.backend.clear_session()
        for c in ids:
            masks[c].append(prev[c])
        summary["stages"].append(info)
    last = stage_dir(runs_root, profile, backbone, fold, order)
    write_json(last / "cascade.json", {
        "stages": [os.path.relpath(stage_dir(runs_root, profile, backbone, fold, order[: k + 1]), last)
                   for k in range(len(order))],
        "order": list(order), "normalizer": normalizer.to_dict(), "grid": profile.grid, "threshold": 0.5,
        "connectivity": profile.connectivity,
        "backbone": backbone, "fold": fold, "profile": profile.name,
    })
    return summary
