"""Timing the engine: seconds to segment a volume, for the book's runtime section.

These functions run networks (they import Keras through :mod:`innerear.inference.engine`); the
results code (:mod:`innerear.evaluation.results`) does not. ``benchmarks/`` holds the longer,
interleaved measurements (``bench_inference.py``) behind ``book/performance.md``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from innerear.data.normalize import Normalizer
from innerear.inference.engine import Cascade, InferenceSettings, load_cascade, postprocess
from innerear.inference.kernels import predict_volume
from innerear.io import save_npz
from innerear.nets.backbones import build
from innerear.nets.backend import set_seed
from innerear.nets.checkpoints import load_model
from innerear.settings.views import PAPER_ORDER, orientation_axis


def time_segmentation(cascade_dir: str | os.PathLike, cache_file: str | os.PathLike, repeats: int = 1,
                      mode: str | None = None) -> dict:
    """Seconds to segment one volume with the engine (``mode``: default ``"fast"``), counting
    the loading of the prepared volume and models."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with np.load(cache_file) as z:
            volume = z["image"]
        models = load_cascade(cascade_dir)
        t1 = time.perf_counter()
        models.predict(volume, mode)
        t2 = time.perf_counter()
        times.append((t2 - t0, t1 - t0, t2 - t1))
    total, load, seg = (float(np.median([t[i] for t in times])) for i in range(3))
    return {"total_s": total, "load_s": load, "segment_s": seg, "shape": tuple(volume.shape), "repeats": repeats,
            "mode": mode or models.settings.mode}


def time_paper_size(grid: int = 256, seed: int = 0, backbone: str = "unet", slices: int | None = None,
                    mode: str = "compiled") -> dict:
    """Seconds to segment a ``grid``³ volume with a paper-size cascade (untrained weights).

    ``mode`` is the engine's (:meth:`~innerear.inference.engine.Cascade.predict`); the default
    ``"compiled"`` predicts every slice of every stage, as the ``"fast"`` default does when
    the region of interest saves nothing: untrained weights give no meaningful masks to
    restrict to, so this is the fast path's upper bound (``"full"``: the authors' eager way).

    The three paper-size networks (base 32 filters, three pooling levels; 1, 2 and 3 input
    channels) are saved and loaded like trained ones; the weights do not change the time.
    Counts the loading of the models and of a prepared volume, as in the paper.

    With ``slices`` (fewer than ``grid``) each stage predicts only that many of its ``grid``
    slices, through the same slice-by-slice path, and the network time is scaled up to the
    whole volume (it is linear in the number of slices); the 3D post-processing is always
    timed on the whole volume. ``"method"`` in the result says which was done.
    """
    import tempfile


    set_seed(seed, deterministic=False)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(3):
            path = Path(tmp) / f"stage{k + 1}.keras"
            build(backbone, channels=k + 1, size=None, base_filters=32, depth=3).save(path)
            paths.append(path)
        vol_path = save_npz(Path(tmp) / "volume.npz", image=rng.normal(size=(grid,) * 3).astype(np.float32))
        t0 = time.perf_counter()
        with np.load(vol_path) as z:
            volume = z["image"]
        models = Cascade([(v, load_model(p)) for v, p in zip(PAPER_ORDER, paths)], Normalizer(0.0, 1.0), grid)
        t1 = time.perf_counter()
        settings = InferenceSettings(mode=mode)
        if slices is None or slices >= grid:
            models.predict(volume, mode)
            seg, method = time.perf_counter() - t1, f"all {grid} slices of each stage"
        else:
            seg = 0.0
            for k, (view, model) in enumerate(models.stages):
                shape = [grid] * 3
                shape[orientation_axis(view)] = slices
                part = np.ascontiguousarray(volume[: shape[0], : shape[1], : shape[2], None].repeat(k + 1, axis=-1))
                t = time.perf_counter()  # the first call of a network costs extra once: counted once
                predict_volume(model, part, view, settings.batch, settings.compiled)
                seg += time.perf_counter() - t
                t = time.perf_counter()
                prob = predict_volume(model, part, view, settings.batch, settings.compiled)
                seg += (time.perf_counter() - t) * (grid / slices - 1)
                whole = np.zeros(volume.shape, np.float32)  # the slab's output, zero elsewhere
                whole[: shape[0], : shape[1], : shape[2]] = prob
                t = time.perf_counter()
                postprocess(whole)
                seg += time.perf_counter() - t
            method = f"{slices} of {grid} slices per stage run, network time scaled to {grid}"
        method += f" ({mode} mode)"
    return {"total_s": (t1 - t0) + seg, "load_s": t1 - t0, "segment_s": seg, "shape": (grid,) * 3, "repeats": 1,
            "method": method, "mode": mode}
