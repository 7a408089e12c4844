"""The auto-context cascade (AutoCasNet): the one inference engine, and its training.

Stage *k* sees the image and the *k-1* earlier stages' post-processed masks as channels,
sliced along its own view. After each stage the slice predictions are reassembled in 3D,
thresholded at 0.5 and reduced to the largest 3D connected component (26-connected by
default; ``Profile.connectivity``).

:class:`Cascade` is the engine every caller uses: the stage predictions written during
training (:func:`train_cascade`), ``innerear segment`` (:mod:`innerear.segment`), the
notebooks, the timing in :mod:`innerear.timing` and the benchmarks all call
:meth:`Cascade.predict` (or :func:`run_stage` for one stage). Its default mode ``"fast"``
(compiled prediction, stages 2 and 3 restricted to the earlier masks' region) and the exact
modes are described in :mod:`innerear.fastinfer`.

Runs are stored as a prefix tree, one folder per stage (paths: :mod:`innerear.layout`)::

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

from .config import Profile
from .fastinfer import DEFAULT_MARGIN, auto_bucket, output_classes, pooling_factor, predict_slices, predict_volume, roi_crops
from .io import save_npz, write_json
from .layout import fold_dir, read_stage_masks, read_stage_predictions, stage_dir  # noqa: F401  (re-exported)
from .metrics import dice, largest_component
from .preprocess import Normalizer, PreparedCase, fit_normalizer, normalizer_from_dict, split_fold
from .train import ModelPool, SliceDataset, fit, load_model, set_output_prior
from .views import check_order, from_slices, orientation_axis, to_slices  # noqa: F401  (re-exported)

MODES = ("fast", "compiled", "full")


# --------------------------------------------------------------------------- building blocks
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
@dataclass(frozen=True)
class InferenceSettings:
    """How :func:`run_stage` predicts (see :mod:`innerear.fastinfer` for the modes).

    ``mode``: ``"fast"`` (default), ``"compiled"`` or ``"full"``; ``margin`` (voxels) the
    region kept around the earlier masks in fast mode; ``batch_size`` slices per call
    (``None``: 8 compiled, 32 eager); ``bucket`` rounds rectangle sides (default: the pooling
    factor on TensorFlow, 64 on JAX); ``full_fraction`` turns a rectangle that large into the
    full slice; ``fixed_batch`` pads the last batch (default on JAX).
    """

    mode: str = "fast"
    margin: int = DEFAULT_MARGIN
    batch_size: int | None = None
    bucket: int | None = None
    full_fraction: float = 0.75
    fixed_batch: bool | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown inference mode {self.mode!r}; use one of {list(MODES)}")

    @property
    def compiled(self) -> bool:
        return self.mode != "full"

    @property
    def batch(self) -> int:
        return int(self.batch_size or (8 if self.compiled else 32))


def run_stage(model: keras.Model, view: str, image_norm: np.ndarray, masks: Sequence[np.ndarray],
              threshold: float = 0.5, settings: InferenceSettings | None = None, *, view_axes: str = "ras",
              connectivity: int = 26, stats: dict | None = None, return_classes: bool = False):
    """One stage on one volume: ``(probabilities, post-processed mask)``.

    The probabilities are the foreground's: a multi-class network's ``1 - p(background)``.
    With ``return_classes`` also its ``(x, y, z, k)`` class probabilities (``None`` for a
    binary network) as a third item. In ``"fast"`` mode a stage with earlier masks predicts
    only their region (see :mod:`innerear.fastinfer`); without earlier masks (stage 1) or
    with empty ones it predicts every slice at full size. A dict passed as ``stats``
    receives the stage's seconds and the fraction of pixels computed.
    """
    settings = settings or InferenceSettings()
    t0 = time.perf_counter()
    inputs = stage_inputs(image_norm, masks)
    slices = to_slices(inputs, view, view_axes)
    n, h, w = slices.shape[:3]
    crops = None
    if masks and settings.mode == "fast":
        align = pooling_factor(model)
        bucket = auto_bucket(align) if settings.bucket is None else int(settings.bucket)
        crops = roi_crops(masks, view, int(settings.margin), align, bucket, settings.full_fraction, view_axes) or None
    if crops is None:  # every slice at full size
        prob = predict_volume(model, inputs, view, settings.batch, settings.compiled, settings.fixed_batch,
                              view_axes)
        pixels = n * h * w
    else:
        classes = output_classes(model)
        out = np.zeros((n, h, w) + ((classes,) if classes > 1 else ()), np.float32)
        if classes > 1:
            out[..., 0] = 1.0  # outside the rectangles: background
        groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for i, r0, nr, c0, nc in crops:
            groups.setdefault((nr, nc), []).append((i, r0, c0))
        pixels = 0
        for (nr, nc), items in sorted(groups.items()):
            for start in range(0, len(items), settings.batch):
                chunk = items[start:start + settings.batch]
                batch = np.stack([slices[i, r0:r0 + nr, c0:c0 + nc] for i, r0, c0 in chunk])
                pred = predict_slices(model, batch, settings.batch, True, settings.fixed_batch)
                for (i, r0, c0), p in zip(chunk, pred):
                    out[i, r0:r0 + nr, c0:c0 + nc] = p
                pixels += len(chunk) * nr * nc
        prob = from_slices(out, view, view_axes)
    class_prob = None
    if prob.ndim == 4:  # a multi-class network: the foreground is every class but background
        class_prob = prob
        prob = 1.0 - class_prob[..., 0]
    mask = postprocess(prob, threshold, connectivity=connectivity)
    if stats is not None:
        stats.setdefault("stages", []).append({
            "view": view, "mode": settings.mode, "seconds": time.perf_counter() - t0,
            "pixel_fraction": pixels / float(n * h * w), "slices": n if crops is None else len(crops),
            "shapes": 1 if crops is None else len({c[2:5:2] for c in crops}),
        })
    return (prob, mask, class_prob) if return_classes else (prob, mask)


def labels_from_classes(mask: np.ndarray, class_prob: np.ndarray | None) -> np.ndarray | None:
    """The label map inside ``mask``: each voxel's most likely structure class (1..k-1), 0 outside.

    ``None`` for a binary network (no class probabilities).
    """
    if class_prob is None:
        return None
    labels = (np.argmax(class_prob[..., 1:], axis=-1) + 1).astype(np.uint8)
    labels[np.asarray(mask) == 0] = 0
    return labels


@dataclass
class Cascade:
    """A trained cascade: its stages (view, model), normaliser, grid and inference settings.

    Load one with :func:`load_cascade` (a run's deepest stage folder) or
    :func:`innerear.segment.load_model_dir` (a shipped model folder); segment a prepared
    volume with :meth:`predict`.
    """

    stages: list[tuple[str, keras.Model]]
    normalizer: Normalizer
    grid: int | None  # the reproduction's N^3 grid; None for a model in physical units
    threshold: float = 0.5
    batch_size: int | None = None
    info: dict = field(default_factory=dict)
    view_axes: str = "ras"
    connectivity: int = 26
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    voxel_mm: float | None = None  # the networks' voxel size (robust recipe), None for grid models

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(view for view, _ in self.stages)

    @property
    def pooling(self) -> int:
        """The networks' pooling factor: a slice side must be a multiple of it."""
        return max(pooling_factor(model) for _, model in self.stages)

    @property
    def n_classes(self) -> int:
        """1 for a binary cascade, else the classes of its last network (background first)."""
        return output_classes(self.stages[-1][1])

    def predict(self, volume: np.ndarray, mode: str | None = None, *, return_stages: bool = False,
                return_labels: bool = False, stats: dict | None = None, **settings):
        """Segment a prepared volume (resampled to the cascade's grid or voxel size, raw intensities).

        Returns ``(mask, probabilities)`` of the last stage; with ``return_labels`` also the
        structure label map (:func:`labels_from_classes`; ``None`` for a binary cascade), then,
        with ``return_stages``, the list of every stage's ``(probabilities, mask)``. ``mode`` (default: the cascade's
        settings, ``"fast"``) and keyword settings (``margin``, ``batch_size``, ``bucket``,
        ``full_fraction``, ``fixed_batch``) override :attr:`settings` for this call.
        """
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
        for view in self.order:
            orientation_axis(view, self.view_axes)
        opts = dict(self.settings.__dict__)
        if self.batch_size is not None:
            opts["batch_size"] = self.batch_size
        opts.update({k: v for k, v in settings.items() if v is not None})  # None: keep the cascade's
        if mode is not None:
            opts["mode"] = mode
        run = InferenceSettings(**opts)
        image = self.normalizer(volume)
        masks: list[np.ndarray] = []
        stages = []
        class_prob = None
        for k, (view, model) in enumerate(self.stages):
            last = k == len(self.stages) - 1
            prob, mask, classes = run_stage(model, view, image, masks, self.threshold, run, view_axes=self.view_axes,
                                            connectivity=self.connectivity, stats=stats, return_classes=True)
            if last:
                class_prob = classes
            del classes
            masks.append(mask)
            stages.append((prob, mask))
        mask, prob = stages[-1][1], stages[-1][0]
        out: tuple = (mask, prob)
        if return_labels:
            out += (labels_from_classes(mask, class_prob),)
        if return_stages:
            out += (stages,)
        return out


def segment(volume: np.ndarray, models: Cascade, return_stages: bool = False, mode: str | None = None, **settings):
    """``models.predict(volume, ...)`` (kept for callers of the earlier function)."""
    return models.predict(volume, mode, return_stages=return_stages, **settings)


def load_cascade(run_dir: str | os.PathLike) -> Cascade:
    """Load a trained cascade from its deepest stage folder (or a folder with ``cascade.json``)."""
    run_dir = Path(run_dir)
    spec_path = run_dir / "cascade.json"
    if not spec_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a trained cascade (no cascade.json)")
    spec = json.loads(spec_path.read_text())
    stages = []
    for rel in spec["stages"]:
        stage_path = (run_dir / rel).resolve()
        model_path = stage_path / "best.keras"
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path}: model file missing; the run folder is incomplete")
        stages.append((json.loads((stage_path / "stage.json").read_text())["view"], load_model(model_path)))
    norm = normalizer_from_dict(spec["normalizer"])
    grid = int(spec["grid"]) if spec.get("grid") is not None else None  # None: a physical model (voxel_mm)
    return Cascade(stages=stages, normalizer=norm, grid=grid, threshold=float(spec.get("threshold", 0.5)),
                   info=spec, view_axes=spec.get("view_axes", "ras"), connectivity=int(spec.get("connectivity", 26)),
                   voxel_mm=spec.get("voxel_mm"))


# --------------------------------------------------------------------------- training
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
    inference: InferenceSettings | None = None,
    view_axes: str | None = None,
) -> dict:
    """Train (or resume, or skip) every stage of one cascade on one fold.

    Each stage trains on the previous stage's post-processed predictions *on the training
    volumes* (as the paper did), then predicts both training and held-out volumes; held-out
    probabilities and masks are saved per case under ``<stage>/pred/``. Returns a summary
    with each stage's held-out Dice per case. A :class:`~innerear.train.ModelPool` shared by
    several calls in one process reuses compiled networks (same results, less tracing).

    The stage predictions are made by the engine (:func:`run_stage`) with ``inference``
    (default: ``"fast"`` mode). ``view_axes`` (default: the profile's field of that name if
    it has one, else ``"ras"``) chooses the slicing convention (:mod:`innerear.views`); it is
    written to ``cascade.json`` with the connectivity, so that a loaded cascade predicts as
    it was trained.
    """
    from .backbones import build_for_profile

    inference = inference or InferenceSettings()
    view_axes = view_axes or getattr(profile, "view_axes", "ras")

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
                prev = read_stage_masks(folder, ids)
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
                                          seed=_stage_seed(seed, backbone, fold, order[: k + 1]), view_axes=view_axes)
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
                    prob, mask = run_stage(result.model, view, images[c], masks[c], 0.5, inference,
                                           view_axes=view_axes, connectivity=profile.connectivity)
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
                        "test_ids": test_ids, "backbone": backbone, "fold": fold, "grid": profile.grid,
                        "inference_mode": inference.mode, "view_axes": view_axes}
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
        "connectivity": profile.connectivity, "view_axes": view_axes,
        "backbone": backbone, "fold": fold, "profile": profile.name,
    })
    return summary
