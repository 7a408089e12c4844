"""The auto-context cascade (AutoCasNet): the one inference engine, and its training.

Stage *k* sees the image and the *k-1* earlier stages' post-processed masks as channels,
sliced along its own view. After each stage the slice predictions are reassembled in 3D,
thresholded at 0.5 and reduced to the largest 3D connected component (26-connected by
default; ``Profile.connectivity``).

:class:`Cascade` is the engine every caller uses: the stage predictions written during
training (:func:`train_cascade`), ``innerear segment`` (:mod:`innerear.inference.segment`), the
notebooks, the timing in :mod:`innerear.reporting.timing` and the benchmarks all call
:meth:`Cascade.predict` (or :func:`run_stage` for one stage). Its default mode ``"fast"``
(compiled prediction, stages 2 and 3 restricted to the earlier masks' region) and the exact
modes are described in :mod:`innerear.inference.kernels`.

Runs are stored as a prefix tree, one folder per stage (paths: :mod:`innerear.settings.layout`)::

    runs/<profile>/<backbone>/fold<k>/<view1>/<view2>/<view3>/

A single-view baseline is the first level of that tree (``fold0/axial``), and cascades that
share their first views share those stages' training: the six stage orders need 15 stage
trainings, not 18, and the three single-view baselines come with them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from innerear.data.normalize import Normalizer, normalizer_from_dict
from innerear.inference.kernels import (
    DEFAULT_MARGIN,
    auto_bucket,
    output_classes,
    pooling_factor,
    predict_batches,
    predict_slices,
    predict_volume,
    roi_crops,
)
from innerear.inference.align import (
    ANATOMY_FRAME,
    cube_turn,
    find_turn,
    find_turns,
    frame_shape,
    quarter_turn,
    search_turns,
    turn_between,
    turn_volume,
)
from innerear.inference.modelfolder import SegmentError, read_model_folder
from innerear.metrics import bounding_box, dice, largest_component, major_components, near_largest
from innerear.nets.backend import quiet_retracing
from innerear.settings.views import from_slices, orientation_axis, to_slices

MODES = ("fast", "compiled", "full")
#: a stage network: a Keras model, or its ONNX export in ONNX Runtime (:class:`innerear.nets.onnx.OnnxNet`)
Net = Any

#: a model in physical units keeps, in the masks it hands to later stages, the pieces of at least
#: CONTEXT_MIN_MM3 within CONTEXT_GAP_MM of an earlier stage's largest component. Demo phantom 7
#: scanned 45 degrees further turned lost two thirds of its cochlea when stage 1 left the upper
#: turns 0.6 mm off the vestibule (a piece of 26 mm³; its false positives lay 5-7 mm away), and
#: later stages, shown only the largest component, never found them again. The smallest pieces
#: within 1 mm of phantom 0's labyrinth were specks of 0.3-0.9 mm³ that no stage should grow
#: (2026-12-04; figures in benchmarks/results/bench_turns.json)
CONTEXT_GAP_MM = 1.0
CONTEXT_MIN_MM3 = 2.0
#: fast mode's first stage (a model in physical units) probes every PROBE_STEP-th slice before it
#: predicts the region found (:func:`probe_region`); at 0.15 mm a probe every 0.6 mm, thinner than a
#: canal's lumen. The region holds the probe's components of at least PROBE_KEEP of its largest: a
#: first stage's scattered false positives (tens of voxels per slice in the 30 mm reference block)
#: would otherwise spread the region over every slice
PROBE_STEP = 4
PROBE_KEEP = 0.1
#: test-time mirroring flips the canonical grid's first axis (R-L). A stage that slices across it (the
#: sagittal one) sees the mirror image's slices as its own in reverse order and gives the same answer,
#: so it predicts once: on the 30 mm block its mirror agreement was 1.0 exactly for every class, and
#: the second pass was 1.2 of the cascade's 11 s on a 2-core AVX2 machine (2026-12-06)
MIRROR_AXIS = 0


# --------------------------------------------------------------------------- building blocks
def postprocess(probabilities: np.ndarray, threshold: float = 0.5, keep_largest: bool = True,
                connectivity: int = 26, near_vox: float = 0.0, near_min_voxels: int = 0) -> np.ndarray:
    """Threshold stage probabilities and keep the largest 3D component (the paper's step); with
    ``near_vox`` also the components of at least ``near_min_voxels`` that come that close to it
    (:func:`near_largest`)."""
    mask = (np.asarray(probabilities) >= threshold).astype(np.uint8)
    if not keep_largest:
        return mask
    if near_vox > 0:
        return near_largest(mask, near_vox, connectivity, near_min_voxels)
    return largest_component(mask, connectivity)


def stage_inputs(image: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """Stack the (z-scored) image and the earlier stages' masks as channels: (x, y, z, 1+k)."""
    return np.stack([c.astype(np.float32, copy=False) for c in _channels(image, masks)], axis=-1)


def _channels(image: np.ndarray, masks: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """A stage's input channels as separate volumes (the float32 image, then the earlier masks as they
    are): the engine stacks them only where a batch needs them (:func:`_crop_batches`), not whole."""
    channels = (np.asarray(image, np.float32), *(np.asarray(m) for m in masks))
    shapes = {c.shape for c in channels}
    if len(shapes) != 1:
        raise ValueError(f"image and masks must share a shape, got {sorted(shapes)}")
    return channels


def _stacked(channels: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`stage_inputs` of channels; the image alone as a view (no copy)."""
    return channels[0][..., None] if len(channels) == 1 else stage_inputs(channels[0], channels[1:])


def _crop_batches(channel_slices: Sequence[np.ndarray], jobs: Sequence[tuple[list, int, int]]):
    """Each job's batch ``(len(chunk), rows, cols, channels)`` float32 of its rectangles ``(slice, row0, col0)``,
    read from each channel's slice stack: only the rectangles' pixels are copied."""
    for chunk, nr, nc in jobs:
        batch = np.empty((len(chunk), nr, nc, len(channel_slices)), np.float32)
        for j, (i, r0, c0) in enumerate(chunk):
            for k, slices in enumerate(channel_slices):
                batch[j, :, :, k] = slices[i, r0:r0 + nr, c0:c0 + nc]
        yield batch


# --------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class InferenceSettings:
    """How :func:`run_stage` predicts (see :mod:`innerear.inference.kernels` for the modes).

    ``mode``: ``"fast"`` (default), ``"compiled"`` or ``"full"``; ``margin`` (voxels) the
    region kept around the earlier masks in fast mode; ``batch_size`` slices per call
    (``None``: 8 compiled, 32 eager); ``bucket`` rounds rectangle sides (default: the pooling
    factor on TensorFlow, 64 on JAX); ``full_fraction`` turns a rectangle that large into the
    full slice; ``fixed_batch`` pads the last batch (default on JAX). ``mirror``: test-time
    mirroring, each stage also predicts the volume flipped left-right (the first, R-L axis of
    the canonical grid) and averages the two, so that a left ear and its mirror image give
    mirror-image answers (twice the prediction time, except in a stage that slices across the
    mirror axis, :data:`MIRROR_AXIS`: the sagittal stage sees the mirror image's slices as its own and
    predicts once). ``align``: a cascade with an anatomy frame
    segments a scan whose labyrinth is turned from it by more than its threshold once more in
    the labyrinth's own axes (:mod:`innerear.inference.align`). ``context_gap_mm``: a model in
    physical units hands later stages, besides an earlier stage's largest component, every piece
    that comes within this distance of it (0: the largest only, the paper's step, which grid
    models always take); the last stage's mask is the largest component. ``probe_step``: in
    ``"fast"`` mode a physical model's first stage first predicts every ``probe_step``-th slice (and the last) at
    full size, then only the rectangles around what that probe found (:func:`probe_region`); 0 or
    1 predicts every slice at full size.
    """

    mode: str = "fast"
    mirror: bool = False
    align: bool = False
    context_gap_mm: float = CONTEXT_GAP_MM
    context_min_mm3: float = CONTEXT_MIN_MM3
    margin: int = DEFAULT_MARGIN
    batch_size: int | None = None
    bucket: int | None = None
    full_fraction: float = 0.75
    fixed_batch: bool | None = None
    probe_step: int = PROBE_STEP

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown inference mode {self.mode!r}; use one of {list(MODES)}")

    @property
    def compiled(self) -> bool:
        return self.mode != "full"

    @property
    def batch(self) -> int:
        return int(self.batch_size or (8 if self.compiled else 32))


Box = tuple[slice, ...]


def _whole(shape: Sequence[int]) -> Box:
    """The box of a whole volume of ``shape`` (its first three axes)."""
    return tuple(slice(0, int(n)) for n in shape[:3])


def _crops_box(crops: Sequence[tuple[int, int, int, int, int]]) -> Box:
    """The box, in slice order ``(slice, row, col)``, that holds every rectangle ``(slice, row0, rows, col0, cols)``."""
    return (slice(min(c[0] for c in crops), max(c[0] for c in crops) + 1),
            slice(min(c[1] for c in crops), max(c[1] + c[2] for c in crops)),
            slice(min(c[3] for c in crops), max(c[3] + c[4] for c in crops)))


def _background(shape: Sequence[int], classes: int) -> np.ndarray:
    """Probabilities that say background everywhere: 0 (binary), or class 0 at 1 (``classes > 1``)."""
    out = np.zeros(tuple(shape) + ((classes,) if classes > 1 else ()), np.float32)
    if classes > 1:
        out[..., 0] = 1.0
    return out


def _placed(part: np.ndarray, box: Box, within: Box, classes: int) -> np.ndarray:
    """``part`` (the probabilities on ``box``) in a background array over the larger box ``within``."""
    if box == within:
        return part
    out = _background([w.stop - w.start for w in within], classes)
    out[tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, within))] = part
    return out


@dataclass(frozen=True)
class ClassProbabilities:
    """A multi-class stage's ``(x, y, z, k)`` probabilities (background first), held on the box where
    anything was predicted: outside it every voxel is background (class 0 at 1). A scan's whole
    array costs more to build than most stages take; :meth:`full` builds it when asked."""

    part: np.ndarray
    box: Box
    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: np.ndarray) -> "ClassProbabilities":
        """A whole ``(x, y, z, k)`` array."""
        return cls(array, _whole(array.shape), tuple(array.shape[:3]))

    def full(self) -> np.ndarray:
        """The ``(x, y, z, k)`` array."""
        return _placed(self.part, self.box, _whole(self.shape), self.part.shape[-1])

    def foreground(self) -> np.ndarray:
        """The foreground's probabilities, ``1 - p(background)``."""
        prob = np.zeros(self.shape, np.float32)
        prob[self.box] = 1.0 - self.part[..., 0]
        return prob

    def labels(self, mask: np.ndarray) -> np.ndarray:
        """:func:`labels_from_classes` of ``mask``, without the whole array where the mask lies in the box."""
        mask = np.asarray(mask) != 0
        inside = bounding_box(mask)
        if inside is not None and any(m.start < b.start or m.stop > b.stop for m, b in zip(inside, self.box)):
            return labels_from_classes(mask, self.full())
        labels = np.zeros(self.shape, np.uint8)
        if inside is not None:
            labels[self.box] = labels_from_classes(mask[self.box], self.part)
        return labels


def _stage_probabilities(model: Net, view: str, channels: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                         settings: InferenceSettings, view_axes: str):
    """A network's probabilities for one volume's stage input ``channels`` (:func:`_channels`; full
    slices, or in ``"fast"`` mode only the earlier masks' rectangles): ``(box, probabilities on the
    box, pixels computed, n, h, w, crops)``; outside the box (the rectangles' bounding box)
    everything is background."""
    channel_slices = [to_slices(c, view, view_axes) for c in channels]
    n, h, w = channel_slices[0].shape[:3]
    crops = None
    if masks and settings.mode == "fast":
        align = pooling_factor(model)
        bucket = auto_bucket(align, model) if settings.bucket is None else int(settings.bucket)
        crops = roi_crops(masks, view, int(settings.margin), align, bucket, settings.full_fraction, view_axes) or None
    if crops is None:  # every slice at full size
        prob = predict_volume(model, _stacked(channels), view, settings.batch, settings.compiled, settings.fixed_batch,
                              view_axes)
        return _whole(channels[0].shape), prob, n * h * w, n, h, w, None
    in_slices = _crops_box(crops)
    box = list(in_slices[1:])
    box.insert(orientation_axis(view, view_axes), in_slices[0])  # the slicing axis back in its place
    box = tuple(box)
    out = _background([b.stop - b.start for b in box], output_classes(model))
    out_slices = to_slices(out, view, view_axes)  # the box's slices; its corner is at (i0, rows0, cols0)
    i0, rows0, cols0 = (b.start for b in in_slices)
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for i, r0, nr, c0, nc in crops:
        groups.setdefault((nr, nc), []).append((i, r0, c0))
    jobs = [(items[start:start + settings.batch], nr, nc) for (nr, nc), items in sorted(groups.items())
            for start in range(0, len(items), settings.batch)]  # batches of rectangles of one shape
    pixels = 0
    batches = _crop_batches(channel_slices, jobs)
    for (chunk, nr, nc), pred in zip(jobs, predict_batches(model, batches, True, settings.batch, settings.fixed_batch)):
        for (i, r0, c0), p in zip(chunk, pred):
            out_slices[i - i0, r0 - rows0:r0 - rows0 + nr, c0 - cols0:c0 - cols0 + nc] = p
        pixels += len(chunk) * nr * nc
    return box, out, pixels, n, h, w, crops


def probe_region(model: Net, view: str, inputs: np.ndarray, threshold: float, settings: InferenceSettings,
                 view_axes: str, connectivity: int = 26) -> tuple[list[np.ndarray], int]:
    """Where a first stage has to look, in fast mode: ``([region], pixels computed)``.

    The network predicts every ``settings.probe_step``-th slice of ``inputs`` (and the last) at full
    size; every voxel between two probed slices that either of them calls foreground at half the
    stage's threshold (generous on purpose) is a candidate, and the region is the candidates'
    components of at least :data:`PROBE_KEEP` of the largest one's size (the stage keeps its largest
    component, and what lies near it, which the margin covers). :func:`run_stage` then predicts only the
    rectangles around it within ``margin`` (:func:`~innerear.inference.kernels.roi_crops`), as the
    later stages do around the earlier masks. A probe that finds nothing gives no region (``[]``):
    the stage then predicts every slice at full size.
    """
    slices = to_slices(inputs, view, view_axes)
    n, h, w = slices.shape[:3]
    picked = np.unique(np.append(np.arange(0, n, int(settings.probe_step)), n - 1))
    pred = predict_slices(model, slices[picked], settings.batch, True, settings.fixed_batch)
    foreground = (1.0 - pred[..., 0] if pred.ndim == 4 else pred) >= 0.5 * threshold
    pixels = len(picked) * h * w
    if not foreground.any():
        return [], pixels
    stack = np.zeros((n, h, w), bool)
    for a, b, fa, fb in zip(picked[:-1], picked[1:], foreground[:-1], foreground[1:]):
        stack[a:b + 1] |= fa | fb
    return [major_components(from_slices(stack, view, view_axes), PROBE_KEEP, connectivity)], pixels


def mirror_agreement(prob: np.ndarray, mirrored: np.ndarray) -> dict[str, float | None]:
    """How far a stage's answer and its answer on the mirror image (mapped back) agree: the Dice of
    the foreground (``"inner_ear"``) and, for a multi-class network, of each class's most-likely
    voxels (keys ``"1"``, ``"2"``, ...; None where neither predicts that class)."""
    if prob.ndim == 4:
        # a voxel whose background probability is >= 0.5 is background for argmax (the classes sum to 1
        # and ties go to the first): only the box of voxels where either answer is below that can differ
        box = bounding_box(np.logical_or(prob[..., 0] < 0.5, mirrored[..., 0] < 0.5))
        if box is None:  # both all background
            return {"inner_ear": 1.0, **{str(k): None for k in range(1, prob.shape[-1])}}
        a = np.argmax(prob[box], axis=-1)
        b = a if mirrored is prob else np.argmax(mirrored[box], axis=-1)  # a stage that is its own mirror
        out: dict[str, float | None] = {"inner_ear": dice(a > 0, b > 0)}
        for k in range(1, prob.shape[-1]):
            ak, bk = a == k, b == k
            out[str(k)] = dice(ak, bk) if (ak.any() or bk.any()) else None
        return out
    return {"inner_ear": dice(prob >= 0.5, mirrored >= 0.5)}


def run_stage(model: Net, view: str, image_norm: np.ndarray, masks: Sequence[np.ndarray],
              threshold: float = 0.5, settings: InferenceSettings | None = None, *, view_axes: str = "ras",
              connectivity: int = 26, stats: dict | None = None, return_classes: bool = False,
              near_vox: float = 0.0, near_min_voxels: int = 0):
    """One stage on one volume: ``(probabilities, post-processed mask)``; the mask is the largest
    component, with ``near_vox`` and the pieces that close to it (:func:`postprocess`).

    The probabilities are the foreground's: a multi-class network's ``1 - p(background)``.
    With ``return_classes`` also its ``(x, y, z, k)`` class probabilities (``None`` for a
    binary network) as a third item. In ``"fast"`` mode a stage with earlier masks predicts
    only their region (see :mod:`innerear.inference.kernels`), the first stage only the region its
    probe found (:func:`probe_region`); with empty earlier masks, or a probe that found nothing,
    a stage predicts every slice at full size. A dict passed as ``stats``
    receives the stage's seconds and the fraction of pixels computed.
    """
    prob, mask, classes = _stage(model, view, image_norm, masks, threshold, settings or InferenceSettings(),
                                 view_axes, connectivity, stats, near_vox, near_min_voxels)
    if return_classes:
        return prob, mask, None if classes is None else classes.full()
    return prob, mask


def _stage(model: Net, view: str, image_norm: np.ndarray, masks: Sequence[np.ndarray], threshold: float,
           settings: InferenceSettings, view_axes: str, connectivity: int, stats: dict | None, near_vox: float,
           near_min_voxels: int) -> tuple[np.ndarray, np.ndarray, ClassProbabilities | None]:
    """:func:`run_stage`, its class probabilities on their box: ``(probabilities, mask, classes or None)``."""
    t0 = time.perf_counter()
    agreement, passes = None, 1
    channels = _channels(image_norm, masks)
    region, probed = list(masks), 0
    if not masks and settings.mode == "fast" and settings.probe_step > 1:
        region, probed = probe_region(model, view, _stacked(channels), threshold, settings, view_axes, connectivity)
    box, part, pixels, n, h, w, crops = _stage_probabilities(model, view, channels, region, settings, view_axes)
    pixels += probed
    classes = output_classes(model)
    if settings.mirror and orientation_axis(view, view_axes) == MIRROR_AXIS:
        # slices across the mirror axis: the mirror image's slices are these slices in reverse order,
        # so its answer mapped back is this answer, and their mean too (no second pass)
        agreement = mirror_agreement(part, part)
    elif settings.mirror:  # the same network on the left-right mirror image, mapped back and averaged
        flipped = [np.flip(np.asarray(m), MIRROR_AXIS) for m in region]
        box_m, part_m, pixels_m, *_ = _stage_probabilities(model, view, [np.flip(c, MIRROR_AXIS) for c in channels],
                                                           flipped, settings, view_axes)
        size = channels[0].shape[MIRROR_AXIS]
        box_m = tuple(slice(size - b.stop, size - b.start) if a == MIRROR_AXIS else b  # the box mapped back
                      for a, b in enumerate(box_m))
        union = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box, box_m))
        # outside the union both answers are background exactly, and so is their mean
        part, part_m = _placed(part, box, union, classes), _placed(np.flip(part_m, MIRROR_AXIS), box_m, union, classes)
        agreement = mirror_agreement(part, part_m)
        part, box = 0.5 * (part + part_m), union
        pixels += pixels_m
        passes = 2
        del part_m
    shape = tuple(channels[0].shape[:3])
    class_prob = None
    if classes > 1:  # a multi-class network: the foreground is every class but background
        class_prob = ClassProbabilities(part, box, shape)
        prob = class_prob.foreground()
    else:
        prob = _placed(part, box, _whole(shape), classes)
    del part
    mask = postprocess(prob, threshold, connectivity=connectivity, near_vox=near_vox, near_min_voxels=near_min_voxels)
    if stats is not None:
        stats.setdefault("stages", []).append({
            "view": view, "mode": settings.mode, "seconds": time.perf_counter() - t0,
            "pixel_fraction": pixels / float(n * h * w), "passes": passes,
            "slices": n if crops is None else len(crops),
            "shapes": 1 if crops is None else len({c[2:5:2] for c in crops}),
            "mirror_agreement": agreement,
        })
    return prob, mask, class_prob


def labels_from_classes(mask: np.ndarray, class_prob: np.ndarray | None) -> np.ndarray | None:
    """The label map inside ``mask``: each voxel's most likely structure class (1..k-1), 0 outside.

    ``None`` for a binary network (no class probabilities).
    """
    if class_prob is None:
        return None
    mask = np.asarray(mask) != 0
    labels = np.zeros(mask.shape, np.uint8)
    box = bounding_box(mask)
    if box is not None:  # the argmax only where the mask is (a small box of a large scan)
        inside = (np.argmax(class_prob[box][..., 1:], axis=-1) + 1).astype(np.uint8)
        labels[box] = np.where(mask[box], inside, 0)
    return labels


@dataclass
class Cascade:
    """A trained cascade: its stages (view, model), normaliser, grid and inference settings.

    Load one with :func:`load_cascade` (a run's deepest stage folder) or
    :func:`innerear.inference.segment.load_model_dir` (a model folder, cached); segment a prepared
    volume with :meth:`predict`.
    """

    stages: list[tuple[str, Net]]
    normalizer: Normalizer
    grid: int | None  # the reproduction's N^3 grid; None for a model in physical units
    threshold: float = 0.5
    batch_size: int | None = None
    info: dict = field(default_factory=dict)
    view_axes: str = "ras"
    connectivity: int = 26
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    voxel_mm: float | None = None  # the networks' voxel size (robust recipe), None for grid models
    anatomy_frame: dict | None = None  # the training phantoms' labyrinth frame (align.ANATOMY_FRAME), or None

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
                return_labels: bool = False, return_classes: bool = False, stats: dict | None = None, **settings):
        """Segment a prepared volume (resampled to the cascade's grid or voxel size, raw intensities).

        Returns ``(mask, probabilities)`` of the last stage; with ``return_labels`` also the
        structure label map (:func:`labels_from_classes`; ``None`` for a binary cascade), then,
        with ``return_stages``, the list of every stage's ``(probabilities, mask)``, then, with
        ``return_classes``, the last stage's ``(x, y, z, k)`` class probabilities (background
        first; ``None`` for a binary cascade), of which ``probabilities`` is ``1 - [..., 0]``. ``mode`` (default: the cascade's
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
        with quiet_retracing():
            stages, classes = self._stages(image, run, stats)
            mask, prob = stages[-1][1], stages[-1][0]
            if run.align and self.anatomy_frame and classes is not None:
                mask, prob, classes = self._realigned(image, mask, prob, classes, run, stats)
        out: tuple = (mask, prob)
        if return_labels:
            out += (None if classes is None else classes.labels(mask),)
        if return_stages:
            out += (stages,)
        if return_classes:
            out += (None if classes is None else classes.full(),)
        return out

    def _stages(self, image: np.ndarray, run: InferenceSettings, stats: dict | None):
        """Every stage on a normalised volume: ``(stages, last stage's ClassProbabilities or None)``."""
        masks: list[np.ndarray] = []
        stages = []
        class_prob = None
        voxel = self._voxel_mm
        gap = run.context_gap_mm / voxel if voxel else 0.0  # grid models: the paper's largest component
        least = int(np.ceil(run.context_min_mm3 / voxel ** 3)) if voxel else 0
        if not voxel:  # grid models (the reproduction): the paper's stage 1 sees every slice
            run = replace(run, probe_step=0)
        for k, (view, model) in enumerate(self.stages):
            last = k == len(self.stages) - 1
            prob, mask, classes = _stage(model, view, image, masks, self.threshold, run, self.view_axes,
                                         self.connectivity, stats, 0.0 if last else gap, least)
            if last:  # the class probabilities of the last stage only
                class_prob = classes
            del classes
            masks.append(mask)
            stages.append((prob, mask))
        return stages, class_prob

    def _realigned(self, image: np.ndarray, mask: np.ndarray, prob: np.ndarray, classes: ClassProbabilities,
                   run: InferenceSettings, stats: dict | None):
        """The final pass in the labyrinth's reference frame when the first pass (``mask``, ``prob``,
        ``classes``) found it turned (:mod:`innerear.inference.align`): ``(mask, probabilities, classes)``.

        A turned scan's first pass is its worst, so the turn read from it can be off by 20° or
        more; the frame is read again from each realigned pass and, while it moves by more than
        ``refine_above_deg``, the scan is segmented once more in the refined frame (at most
        ``max_passes`` realigned passes). When the frame never settles, the pass whose own frame
        moved least is kept. A turn within ``snap_within_deg`` of one of the cube's quarter turns
        is undone exactly by that quarter turn (no interpolation: the labyrinth is then left at a
        pose the training phantoms span); any other turn is interpolated. A first pass that shows
        no whole labyrinth in a field of view that could hold one starts from the first of the
        cube's turns whose pass shows one (:meth:`_searched`) and is realigned whatever its turn.
        The frame is read as a left and as a right ear and the smaller turn tried first; when no
        pass from it shows a whole labyrinth (a poor first pass can make the wrong side's turn the
        smaller), the other side's; when neither does, the cube's turns are searched as for a first
        pass that shows no labyrinth. When no realigned pass shows one, the first pass stands.
        """
        frame = self.anatomy_frame
        voxel = self._voxel_mm
        first = class_prob = classes
        turns = find_turns(classes.labels(mask), frame, voxel)
        limit, fov = (float(frame.get(key, ANATOMY_FRAME[key])) for key in ("realign_above_deg", "search_min_fov_mm"))
        record: dict = {"turn_deg": round(turns[0].angle_deg, 1) if turns else None, "realign_above_deg": limit,
                        "realigned": False, "passes": []}
        can_search = voxel is not None and min(image.shape) * voxel >= fov
        searched = False
        if not turns and can_search:
            turns, record["searched"], mask, class_prob = self._searched(image, run, stats, voxel, mask, class_prob)
            searched = bool(turns)  # the scan's first pass was no labyrinth: realign at any turn
        kept = None
        if turns and (searched or turns[0].angle_deg > limit):
            kept = self._refined(image, turns, mask, run, stats, record["passes"])
            if kept is None and not searched and can_search:  # the first pass's frame led nowhere
                turns, record["searched"], found, _ = self._searched(image, run, stats, voxel, mask, class_prob)
                kept = self._refined(image, turns, found, run, stats, record["passes"]) if turns else None
        if kept is not None:  # else no realigned pass showed a whole labyrinth: the first pass stands
            _, number, mask, class_prob, turn = kept
            record.update(realigned=True, side=turn.side, kept_pass=number)
        if class_prob is not first:  # another pass's
            prob = class_prob.foreground()
        if stats is not None:
            stats["alignment"] = record
        return mask, prob, class_prob

    def _refined(self, image: np.ndarray, turns: list, mask: np.ndarray, run: InferenceSettings, stats: dict | None,
                 passes: list[dict]):
        """Realigned passes from each of ``turns`` in order (the next only when no pass from the
        one before showed a whole labyrinth), each refined while its frame moves: the pass whose
        frame moved least, ``(frame moved, pass number, mask, class probabilities, turn)``, or None
        when no pass showed a whole labyrinth. Each pass is appended to ``passes``."""
        frame = self.anatomy_frame
        snap, refine, most = (float(frame.get(key, ANATOMY_FRAME[key])) for key in (
            "snap_within_deg", "refine_above_deg", "max_passes"))
        kept = None
        for turn in turns:
            for _ in range(int(most)):
                quarter = cube_turn(turn.rotation, within_deg=snap)
                turned_prob = self._in_frame(image, turn, quarter, run, stats, mask)
                turned_mask = postprocess(turned_prob.foreground(), self.threshold, connectivity=self.connectivity)
                refined = find_turn(turned_prob.labels(turned_mask), frame, self._voxel_mm)
                moved = None if refined is None else turn_between(turn.rotation, refined.rotation)
                passes.append({"turn_deg": round(turn.angle_deg, 1), "side": turn.side,
                               "exact_quarter_turn": quarter is not None,
                               "frame_moved_deg": None if moved is None else round(moved, 1)})
                if moved is not None and (kept is None or moved < kept[0]):
                    kept = (moved, len(passes), turned_mask, turned_prob, turn)
                if moved is None or moved <= refine:
                    break
                turn = refined
            if kept is not None:
                return kept
        return None

    def _searched(self, image: np.ndarray, run: InferenceSettings, stats: dict | None, voxel: float,
                  mask: np.ndarray, class_prob: ClassProbabilities):
        """The labyrinth's turns (:func:`align.find_turns`) read from the first of the cube's turns
        (:func:`align.search_turns`) whose pass, without mirroring, shows a whole labyrinth:
        ``(turns, what was tried, that pass's mask and class probabilities)``, or ``([], what was
        tried, mask, class_prob)`` when none does. The turns are read from that pass's labels mapped
        back to the scan's grid, so they are the scan's."""
        tried = []
        for name, quarter in search_turns():
            found_prob = self._in_frame(image, None, quarter, replace(run, mirror=False), stats)
            found = postprocess(found_prob.foreground(), self.threshold, connectivity=self.connectivity)
            turns = find_turns(found_prob.labels(found), self.anatomy_frame, voxel)
            tried.append({"turn": name, "labyrinth": bool(turns)})
            if turns:
                return turns, tried, found, found_prob
        return [], tried, mask, class_prob

    @property
    def _voxel_mm(self) -> float | None:
        """The networks' voxel size (mm) of a physical model, None for a grid model."""
        return self.voxel_mm if isinstance(self.voxel_mm, (int, float)) else None

    def _in_frame(self, image: np.ndarray, turn, quarter: np.ndarray | None, run: InferenceSettings,
                  stats: dict | None, mask: np.ndarray | None = None) -> ClassProbabilities:
        """The class probabilities of one pass in the turned frame, mapped to the scan's grid: exact
        for a quarter turn; otherwise cubic B-spline for the image, linear for the probabilities,
        on a cube about the labyrinth that holds ``mask`` (the pass that read the turn, needed for
        an interpolated turn) whatever the turn (:func:`align.frame_shape`)."""
        if quarter is not None:
            _, turned = self._stages(quarter_turn(image, quarter), run, stats)
            return ClassProbabilities.of(quarter_turn(turned.full(), quarter, back=True))
        frame = frame_shape(mask, turn.centre, self._voxel_mm or 1.0, self.pooling)
        _, turned = self._stages(turn_volume(image, turn, order=3, frame=frame), run, stats)
        turned = turned.full()
        return ClassProbabilities.of(np.stack([
            turn_volume(turned[..., k], turn, back=True, cval=1.0 if k == 0 else 0.0, frame=frame,
                        scan_shape=image.shape) for k in range(turned.shape[-1])], axis=-1))


def load_cascade(run_dir: str | os.PathLike, runtime: str = "keras") -> Cascade:
    """Load a trained cascade from a folder with ``cascade.json`` (a run's deepest stage folder or a
    model folder), read and checked by :func:`innerear.inference.modelfolder.read_model_folder`.

    ``runtime``: ``"keras"`` loads each stage's ``best.keras``; ``"onnx"`` its ``best.onnx`` in
    ONNX Runtime (Keras is not imported); ``"auto"`` ONNX where the folder has every export
    (:meth:`~innerear.inference.modelfolder.ModelFolder.runtime`). A stale export raises
    :class:`~innerear.inference.modelfolder.SegmentError` naming it."""
    model = read_model_folder(run_dir, search=False)
    spec = model.spec
    runtime = model.runtime(runtime)
    if runtime == "onnx":
        from innerear.nets.onnx import StaleExport, load_onnx  # lazy: ONNX Runtime only for this runtime

        try:
            stages = [(stage.view, load_onnx(stage.network)) for stage in model.stages]
        except StaleExport as exc:
            raise SegmentError(exc.path, exc.problem) from exc
    else:
        from innerear.nets.checkpoints import load_model  # lazy: Keras only for this runtime

        stages = [(stage.view, load_model(stage.network)) for stage in model.stages]
    return Cascade(stages=stages, normalizer=normalizer_from_dict(spec.normalizer), grid=spec.grid,
                   threshold=float(spec.threshold), info=dict(spec.to_dict(), runtime=runtime),
                   view_axes=spec.view_axes, connectivity=int(spec.connectivity), voxel_mm=spec.voxel_mm,
                   settings=InferenceSettings(mirror=bool(spec.mirror), align=spec.anatomy_frame is not None),
                   anatomy_frame=spec.anatomy_frame)
