"""Faster cascade inference: the same cascade, computed only where it can matter.

:func:`innerear.cascade.segment` (the authors' way) predicts every slice of every stage at
full size: three stages of 256 slices of 256 × 256 pixels for a paper-size volume.
:func:`segment_fast` has the same contract and differs in two ways:

1. **Compiled prediction.** Slices go through ``model.predict_on_batch`` (the backend's
   compiled predict step: a ``tf.function`` on TensorFlow, ``jax.jit`` on JAX) instead of an
   eager ``model(x)`` call; on TensorFlow the compiled graph fuses convolution, bias,
   batch normalisation and ReLU. Same arithmetic, up to float rounding.
2. **Region of interest for stages 2 and 3.** Stage *k* ≥ 2 only predicts, in each of its
   slices, the smallest rectangle that holds the earlier stages' masks within ``margin``
   voxels (in 3D: the rectangle is the bounding box of that slice of the masks' union dilated
   by a cube of half-width ``margin``); slices with nothing there are skipped, and
   everything outside the rectangles is background (probability 0). Rectangles start at and
   measure multiples of the network's pooling factor ``2**depth`` (so the pooling grid is
   the one of the full slice and the network accepts the size), rounded up to multiples of
   ``bucket`` so that few shapes occur (one compilation each on JAX), and a rectangle that
   would cover ``full_fraction`` of the slice becomes the full slice.

Why this gives (almost) the same masks, and where it does not:

* Each stage's output is thresholded and reduced to its largest connected component
  (26-connected unless the cascade says otherwise).
  Foreground that the full-size stage would find farther than ``margin`` from the earlier
  masks is dropped here. It is dropped there too when it is not connected to the main
  component (a false positive elsewhere); it is *not* equivalent when the later stage grows
  the structure by more than ``margin`` (for instance a canal that stage 1 missed), or when
  the earlier mask is so poor that the later stage's largest component lies elsewhere.
* A 2D CNN with zero ("same") padding sees zeros at the rectangle's border where the full
  slice has image content, so values near the border differ. The paper-size U-Net's
  receptive field reaches about ±46 pixels (a change of one input pixel changes outputs up
  to 46 pixels away), more than a useful margin, but the influence decays fast with the
  distance; how much margin is enough is measured (``benchmarks/bench_inference.py``
  reports the Dice between this and :func:`~innerear.cascade.segment`, which has to stay
  ≥ 0.995), not assumed.
* An empty earlier mask gives no region: the stage is then predicted at full size, exactly
  as :func:`~innerear.cascade.segment` does.

The probabilities returned for the last stage are 0 outside the rectangles (the full-size
stage has small, sub-threshold values there); the mask is what the contract is about.
"""
from __future__ import annotations

import time
from typing import Sequence

import keras
import numpy as np
from scipy import ndimage

from .cascade import Cascade, postprocess, stage_inputs
from .preprocess import from_slices, orientation_axis, to_slices

__all__ = ["pooling_factor", "predict_slices", "predict_volume_fast", "roi_crops", "run_stage_fast",
           "segment_fast", "DEFAULT_MARGIN"]

DEFAULT_MARGIN = 16


def pooling_factor(model: keras.Model) -> int:
    """``2**depth``: the product of the model's pooling strides (a slice side must be a multiple)."""
    factor = 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.MaxPooling2D):
            strides = layer.strides if layer.strides is not None else layer.pool_size
            factor *= int(strides[0])
    return factor


def _auto_bucket(align: int) -> int:
    # TensorFlow compiles one shape-generic predict step (reduce_retracing), so any rectangle
    # size is cheap; JAX compiles once per shape, so few shapes pay off
    return 64 if keras.backend.backend() == "jax" else align


def _auto_fixed_batch() -> bool:
    # one compiled program per input shape on JAX: pad the last batch instead of compiling again
    return keras.backend.backend() == "jax"


def predict_slices(model: keras.Model, slices: np.ndarray, batch_size: int = 8, compiled: bool = True,
                   fixed_batch: bool | None = None) -> np.ndarray:
    """Predict a stack of slices ``(n, h, w, c)``; returns ``(n, h, w)`` float32 probabilities.

    ``compiled`` uses ``model.predict_on_batch`` (the backend's compiled predict step),
    otherwise an eager ``model(x, training=False)`` call as :func:`innerear.train.predict_volume`.
    ``fixed_batch`` pads the last batch to ``batch_size`` (default: on JAX only).
    """
    slices = np.asarray(slices)
    n = slices.shape[0]
    out = np.empty(slices.shape[:3], np.float32)
    if n == 0:
        return out
    batch_size = max(1, int(batch_size))
    fixed_batch = _auto_fixed_batch() if fixed_batch is None else fixed_batch
    for start in range(0, n, batch_size):
        batch = np.ascontiguousarray(slices[start:start + batch_size], dtype=np.float32)
        m = batch.shape[0]
        if fixed_batch and m < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - m,) + batch.shape[1:], np.float32)])
        if compiled:
            pred = model.predict_on_batch(batch)
        else:
            pred = model(batch, training=False)
        out[start:start + m] = np.asarray(keras.ops.convert_to_numpy(pred), np.float32)[:m, ..., 0]
    return out


def predict_volume_fast(model: keras.Model, inputs: np.ndarray, orientation: str, batch_size: int = 8,
                        compiled: bool = True, fixed_batch: bool | None = None) -> np.ndarray:
    """Every slice of a ``(x, y, z, c)`` volume, like :func:`innerear.train.predict_volume`."""
    slices = to_slices(np.asarray(inputs, np.float32), orientation)
    return from_slices(predict_slices(model, slices, batch_size, compiled, fixed_batch), orientation)


def _round_up(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def _span(lo: int, hi: int, size: int, align: int, bucket: int) -> tuple[int, int]:
    """An interval ``[start, start + length)`` within ``[0, size)`` that holds ``[lo, hi)``,
    with ``start`` a multiple of ``align`` and ``length`` a multiple of ``bucket`` (or ``size``)."""
    start = max(0, lo) // align * align
    stop = min(size, _round_up(max(hi, start + 1), align))
    length = min(size, _round_up(stop - start, bucket))
    extra = length - (stop - start)
    start = max(0, start - (extra // 2) // align * align)
    start = min(start, size - length)
    return start, length


def roi_crops(masks: Sequence[np.ndarray], orientation: str, margin: int, align: int = 8, bucket: int = 8,
              full_fraction: float = 0.75) -> list[tuple[int, int, int, int, int]]:
    """The rectangles a later stage predicts: ``(slice, row0, rows, col0, cols)`` per slice.

    The region is the union of ``masks`` dilated by a cube of half-width ``margin``; a slice
    gets the bounding box of its part of the region (see the module docstring for the
    rounding); slices without region get no rectangle. An empty union gives an empty list.
    """
    union = np.zeros(np.asarray(masks[0]).shape, bool)
    for m in masks:
        union |= np.asarray(m) != 0
    stack = to_slices(union, orientation)
    n, h, w = stack.shape
    if h % align or w % align:  # the network needs multiples of align: only full slices work
        align = bucket = 1
        full_fraction = 0.0
    bucket = _round_up(max(bucket, align), align)
    rows = stack.any(axis=2)
    cols = stack.any(axis=1)
    if margin > 0:  # dilation along the slicing axis (the in-plane one is added below)
        rows = ndimage.maximum_filter1d(rows.view(np.uint8), 2 * margin + 1, axis=0, mode="constant") > 0
        cols = ndimage.maximum_filter1d(cols.view(np.uint8), 2 * margin + 1, axis=0, mode="constant") > 0
    crops = []
    for i in np.flatnonzero(rows.any(axis=1)):
        r = np.flatnonzero(rows[i])
        c = np.flatnonzero(cols[i])
        r0, nr = _span(r[0] - margin, r[-1] + 1 + margin, h, align, bucket)
        c0, nc = _span(c[0] - margin, c[-1] + 1 + margin, w, align, bucket)
        if nr * nc >= full_fraction * h * w:
            r0, nr, c0, nc = 0, h, 0, w
        crops.append((int(i), int(r0), int(nr), int(c0), int(nc)))
    return crops


def run_stage_fast(model: keras.Model, view: str, image_norm: np.ndarray, masks: Sequence[np.ndarray],
                   threshold: float = 0.5, margin: int | None = DEFAULT_MARGIN, batch_size: int = 8,
                   bucket: int | None = None, full_fraction: float = 0.75, compiled: bool = True,
                   fixed_batch: bool | None = None, stats: dict | None = None,
                   connectivity: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """One stage on one volume, restricted to the earlier masks' region: ``(probabilities, mask)``.

    Without earlier masks (stage 1), with ``margin=None`` or with empty earlier masks the
    stage predicts every slice at full size.
    """
    t0 = time.perf_counter()
    inputs = stage_inputs(image_norm, masks)
    slices = to_slices(inputs, view)
    n, h, w = slices.shape[:3]
    crops = None
    if masks and margin is not None:
        align = pooling_factor(model)
        bucket = _auto_bucket(align) if bucket is None else int(bucket)
        crops = roi_crops(masks, view, int(margin), align, bucket, full_fraction)
        if not crops:  # nothing found before: predict everything, as the full-size path does
            crops = None
    if crops is None:
        prob = predict_volume_fast(model, inputs, view, batch_size, compiled, fixed_batch)
        pixels = n * h * w
    else:
        out = np.zeros((n, h, w), np.float32)
        groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for i, r0, nr, c0, nc in crops:
            groups.setdefault((nr, nc), []).append((i, r0, c0))
        pixels = 0
        for (nr, nc), items in sorted(groups.items()):
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                batch = np.stack([slices[i, r0:r0 + nr, c0:c0 + nc] for i, r0, c0 in chunk])
                pred = predict_slices(model, batch, batch_size, compiled, fixed_batch)
                for (i, r0, c0), p in zip(chunk, pred):
                    out[i, r0:r0 + nr, c0:c0 + nc] = p
                pixels += len(chunk) * nr * nc
        prob = from_slices(out, view)
    mask = postprocess(prob, threshold, connectivity=connectivity)
    if stats is not None:
        stats.setdefault("stages", []).append({
            "view": view, "seconds": time.perf_counter() - t0, "pixel_fraction": pixels / float(n * h * w),
            "slices": n if crops is None else len(crops), "shapes": 1 if crops is None else len({c[2:5:2] for c in crops}),
        })
    return prob, mask


def segment_fast(volume: np.ndarray, models: Cascade, margin: int | None = DEFAULT_MARGIN, batch_size: int = 8,
                 bucket: int | None = None, full_fraction: float = 0.75, compiled: bool = True,
                 fixed_batch: bool | None = None, return_stages: bool = False, stats: dict | None = None):
    """:func:`innerear.cascade.segment`, faster: same arguments first, same return values.

    ``margin`` (voxels) is the region kept around the earlier stages' masks (``None``: no
    region, every stage at full size, only the compiled prediction); ``batch_size`` slices
    per call; ``bucket`` rounds the rectangles' sides (default: the pooling factor on
    TensorFlow, 64 on JAX, where every new shape is a compilation); ``full_fraction`` turns a rectangle
    that large into the full slice; ``compiled`` chooses ``predict_on_batch`` over eager calls;
    ``fixed_batch`` pads the last batch (default on JAX). A dict passed as ``stats`` receives
    per-stage timings and the fraction of pixels computed.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    for view in models.order:
        orientation_axis(view)
    image = models.normalizer(volume)
    masks: list[np.ndarray] = []
    stages = []
    for view, model in models.stages:
        prob, mask = run_stage_fast(model, view, image, masks, models.threshold, margin, batch_size, bucket,
                                    full_fraction, compiled, fixed_batch, stats, models.connectivity)
        masks.append(mask)
        stages.append((prob, mask))
    mask, prob = stages[-1][1], stages[-1][0]
    return (mask, prob, stages) if return_stages else (mask, prob)
