"""Slice-prediction kernels of the cascade engine (:meth:`innerear.inference.engine.Cascade.predict`).

The engine predicts a stage's slices in one of three modes (``mode=``):

``"full"``
    The authors' way: every slice of every stage at full size, eager ``model(x)`` calls.
    (A stage network may also be an ONNX export in ONNX Runtime, :mod:`innerear.nets.onnx`: the
    same probabilities to 1e-4, no compilation, no TensorFlow; its sessions take the batches
    side by side, :func:`predict_batches`.)
``"compiled"``
    Every slice at full size through ``model.predict_on_batch`` (the backend's compiled
    predict step: a ``tf.function`` on TensorFlow, ``jax.jit`` on JAX; on TensorFlow the
    graph fuses convolution, bias, batch normalisation and ReLU). Same arithmetic up to
    float rounding: the same masks (a test checks it on a trained cascade).
``"fast"`` (the default)
    Compiled, and **region of interest for stages 2 and 3**: stage *k* ≥ 2 only predicts, in
    each of its slices, the smallest rectangle that holds the earlier stages' masks within
    ``margin`` voxels (in 3D: the rectangle is the bounding box of that slice of the masks'
    union dilated by a cube of half-width ``margin``); slices with nothing there are skipped
    and everything outside the rectangles is background (probability 0). Rectangles start at
    and measure multiples of the network's pooling factor ``2**depth`` (so the pooling grid
    is the one of the full slice and the network accepts the size), rounded up to multiples
    of ``bucket`` so that few shapes occur (one compilation each on JAX), and a rectangle
    that would cover ``full_fraction`` of the slice becomes the full slice. A model in physical
    units (the shipped segmenter) also restricts its **first stage** this way, to the region
    that a probe of every 4th slice found (:func:`innerear.inference.engine.probe_region`;
    measured by ``benchmarks/bench_probe.py``); grid models (the reproduction) predict every
    first-stage slice.

Where ``"fast"`` is **not exact**, and why the masks still (almost always) agree:

* Each stage's output is thresholded and reduced to its largest connected component
  (26-connected unless the cascade says otherwise).
  Foreground that the full-size stage would find farther than ``margin`` from the earlier
  masks is dropped here. It is dropped there too when it is not connected to the main
  component (a false positive elsewhere); it is *not* equivalent when the later stage grows
  the structure by more than ``margin`` (for instance a canal that stage 1 missed), or when
  the earlier mask is so poor that the later stage's largest component lies elsewhere.
* **Zero padding at crop edges**: a 2D CNN with zero ("same") padding sees zeros at the
  rectangle's border where the full slice has image content, so values near the border
  differ. The paper-size U-Net's receptive field reaches about ±46 pixels, more than a
  useful margin, but the influence decays fast with the distance; how much margin is
  enough is measured, not assumed: ``benchmarks/bench_inference.py`` writes the Dice
  between ``"fast"`` and ``"full"`` masks to its JSON (it has to stay ≥ 0.995), and a test
  checks the modes' masks on a trained smoke cascade.
* An empty earlier mask gives no region: the stage is then predicted at full size.

The probabilities returned for a fast stage are 0 outside the rectangles (the full-size
stage has small, sub-threshold values there); the mask is what the contract is about.
"""
from __future__ import annotations

import collections
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from innerear.nets.shape import output_classes, pooling_factor
from innerear.settings.views import from_slices, to_slices

__all__ = ["output_classes", "pooling_factor", "predict_batches", "predict_slices", "predict_volume", "roi_crops",
           "auto_bucket", "DEFAULT_MARGIN", "IN_FLIGHT"]

DEFAULT_MARGIN = 16
#: batches an ONNX export's sessions are handed ahead of the one :func:`predict_batches` yields: enough
#: for them to work side by side, few enough that a full-size volume is not copied whole into batches
IN_FLIGHT = 8


def _compiles_per_shape(model) -> bool:
    """Whether predicting ``model`` compiles once per input shape: a Keras model on JAX (an ONNX
    export and TensorFlow's shape-generic predict step do not; an ONNX-only run never imports Keras)."""
    if hasattr(model, "session"):
        return False
    import keras

    return keras.backend.backend() == "jax"


def auto_bucket(align: int, model=None) -> int:
    """Rectangle sides' rounding in fast mode: few shapes (64) where each shape compiles, else ``align``."""
    return 64 if _compiles_per_shape(model) else align


def predict_batches(model, batches: Iterable[np.ndarray], compiled: bool = True, batch_size: int = 8,
                    fixed_batch: bool | None = None) -> Iterator[np.ndarray]:
    """Predict batches of slices ``(n, h, w, c)`` (each at most ``batch_size``), in order: per batch
    ``(n, h, w)`` float32 probabilities (``(n, h, w, k)`` class probabilities for a network with
    ``k > 1`` output classes).

    ``compiled`` uses ``model.predict_on_batch`` (the backend's compiled predict step), otherwise
    an eager ``model(x, training=False)`` call (the authors' way). An ONNX export
    (:class:`innerear.nets.onnx.OnnxNet`) is handed each batch as soon as it is read
    (:meth:`~innerear.nets.onnx.OnnxNet.submit`), at most :data:`IN_FLIGHT` ahead of the one
    yielded: its sessions compute side by side while this thread reads the next batches from
    ``batches`` and the caller places the answers (a generator is never read whole, so a volume
    is not copied into batches at once). ``fixed_batch`` pads a short batch to ``batch_size``
    (default: on JAX only).
    """
    classes = output_classes(model)
    fixed_batch = _compiles_per_shape(model) if fixed_batch is None else fixed_batch  # pad: no new compile

    def feed(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if fixed_batch and len(batch) < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:], np.float32)])
        return batch

    def answer(pred, n: int) -> np.ndarray:
        if not isinstance(pred, np.ndarray):  # a backend tensor (an ONNX export gives NumPy)
            import keras

            pred = keras.ops.convert_to_numpy(pred)
        pred = np.asarray(pred, np.float32)[:n]
        return pred[..., 0] if classes == 1 else pred

    submit = getattr(model, "submit", None) if compiled else None
    if submit is None:
        for batch in batches:
            pred = model.predict_on_batch(feed(batch)) if compiled else model(feed(batch), training=False)
            yield answer(pred, len(batch))
        return
    pending: collections.deque = collections.deque()
    for batch in batches:
        pending.append((submit(feed(batch)), len(batch)))
        if len(pending) > IN_FLIGHT:
            future, n = pending.popleft()
            yield answer(future.result(), n)
    while pending:
        future, n = pending.popleft()
        yield answer(future.result(), n)


def predict_slices(model, slices: np.ndarray, batch_size: int = 8, compiled: bool = True,
                   fixed_batch: bool | None = None) -> np.ndarray:
    """Predict a stack of slices ``(n, h, w, c)`` in batches of ``batch_size`` (:func:`predict_batches`);
    returns ``(n, h, w)`` float32 probabilities (``(n, h, w, k)`` for ``k > 1`` output classes)."""
    slices = np.asarray(slices)
    classes = output_classes(model)
    out = np.empty(slices.shape[:3] + ((classes,) if classes > 1 else ()), np.float32)
    batch_size = max(1, int(batch_size))
    starts = range(0, slices.shape[0], batch_size)
    preds = predict_batches(model, (slices[i:i + batch_size] for i in starts), compiled, batch_size, fixed_batch)
    for i, pred in zip(starts, preds):
        out[i:i + len(pred)] = pred
    return out


def predict_volume(model, inputs: np.ndarray, orientation: str, batch_size: int = 8,
                   compiled: bool = True, fixed_batch: bool | None = None, view_axes: str = "ras") -> np.ndarray:
    """Predict every slice of a ``(x, y, z, c)`` volume along ``orientation``; ``(x, y, z)`` probabilities."""
    slices = to_slices(np.asarray(inputs, np.float32), orientation, view_axes)
    return from_slices(predict_slices(model, slices, batch_size, compiled, fixed_batch), orientation, view_axes)


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
              full_fraction: float = 0.75, view_axes: str = "ras") -> list[tuple[int, int, int, int, int]]:
    """The rectangles a later stage predicts: ``(slice, row0, rows, col0, cols)`` per slice.

    The region is the union of ``masks`` dilated by a cube of half-width ``margin``; a slice
    gets the bounding box of its part of the region (see the module docstring for the
    rounding); slices without region get no rectangle. An empty union gives an empty list.
    """
    union = np.zeros(np.asarray(masks[0]).shape, bool)
    for m in masks:
        union |= np.asarray(m) != 0
    stack = to_slices(union, orientation, view_axes)
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
