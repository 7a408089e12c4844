"""Helpers shared by ``bench_inference.py`` and ``gpu_check.py`` (no TensorFlow import here).

* :func:`prepare_phantom`: a synthetic specimen (``innerear.data.phantom``) prepared to ``grid``³
  the way the pipeline prepares scans (cubic-spline image, signed-distance label).
* :func:`bench_weights`: weights for the three paper-size U-Nets that produce *realistic*
  masks, so that the region-of-interest path has something real to restrict to (random
  weights give noise or nothing). They are a quick fit — a few hundred Adam steps on 64 × 64
  crops of another phantom specimen, each stage on the earlier fitted stages' masks, as the
  cascade is trained — not a trained model of the paper; they are cached in
  ``benchmarks/.cache/`` as a ``.npz`` of arrays (loadable without h5py).
* :class:`PeakRSS`: peak resident memory of the process during a block.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CACHE = Path(os.environ.get("INNEREAR_BENCH_CACHE", ROOT / "benchmarks" / ".cache"))

WEIGHTS_VERSION = 1
from innerear.settings.views import PAPER_ORDER as PAPER_VIEWS  # noqa: E402  (numpy only: safe on the GPU box)
FIT = dict(train_index=1, test_index=0, seed=0, binning=4, steps=300, batch=16, crop=64, lr=1e-3,
           fg_share=0.6, bn_momentum=0.9)


def install_nibabel_stub() -> bool:
    """Let ``innerear.io`` / ``innerear.data.preprocess`` import where nibabel is missing (GPU box).

    Only reading/writing NIfTI and reorienting use nibabel; any use raises ImportError.
    Returns True when a stub was installed.
    """
    try:
        import nibabel  # noqa: F401
        return False
    except ImportError:
        stub = types.ModuleType("nibabel")

        def __getattr__(name):
            raise ImportError(f"nibabel is not installed (nibabel.{name} was needed)")

        stub.__getattr__ = __getattr__
        sys.modules["nibabel"] = stub
        return True


def dice(a, b) -> float:
    """:func:`innerear.metrics.dice` (its one home)."""
    from innerear.metrics import dice as _dice

    return _dice(a, b)


# --------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident set size during a ``with`` block (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, "5") and reads ``VmHWM``
    afterwards; where that is not allowed, samples ``VmRSS`` every 5 ms in a thread.
    ``peak_mib`` is the process's peak, ``delta_mib`` the peak minus the RSS at entry.
    """

    def __init__(self) -> None:
        self.start_mib = self.peak_mib = self.delta_mib = float("nan")
        self.method = ""
        self._stop = threading.Event()
        self._sampled = 0

    def __enter__(self):
        self.start_mib = (_status_kib("VmRSS") or 0) / 1024
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled"
            self._sampled = _status_kib("VmRSS") or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, _status_kib("VmRSS") or 0)

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.peak_mib = (_status_kib("VmHWM") or 0) / 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = self._sampled / 1024
        self.delta_mib = self.peak_mib - self.start_mib
        return False


# --------------------------------------------------------------------------- data
def prepare_phantom(index: int, grid: int = 256, seed: int = 0, binning: int = FIT["binning"],
                    use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Phantom specimen ``index`` (demo settings at ``binning``), resampled to ``grid``³.

    Returns ``(image float32, label uint8)``; cached in ``benchmarks/.cache``.
    """
    from dataclasses import replace

    path = CACHE / f"phantom_s{seed}_i{index}_b{binning}_g{grid}.npz"
    if use_cache and path.exists():
        with np.load(path) as z:
            return z["image"], z["label"]
    from innerear.settings.profiles import get_profile
    from innerear.data.phantom import generate_specimen
    from innerear.data.preprocess import resample_image, resample_label

    spec = generate_specimen(index, seed, replace(get_profile("demo").phantoms, binning=binning))
    image = resample_image(spec.image, grid)
    label = resample_label(spec.label, grid)
    if use_cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        from innerear.io import atomic_path

        with atomic_path(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, image=image, label=label)
    return image, label


# --------------------------------------------------------------------------- models
def paper_unets(seed: int = 0, bn_momentum: float = 0.9):
    """The three paper-size U-Nets (1, 2, 3 input channels), seeded."""
    import keras

    from innerear.nets.backbones import unet

    keras.utils.set_random_seed(seed)
    return [unet(channels=k, bn_momentum=bn_momentum, name=f"stage{k}") for k in (1, 2, 3)]


FIT_GRID = 256  # the weights are fitted at 256³; the networks are fully convolutional


def weights_path() -> Path:
    return CACHE / f"bench_unet_weights_v{WEIGHTS_VERSION}_g{FIT_GRID}.npz"


def save_weights(path: Path, models, meta: dict) -> None:
    arrays = {f"s{k}_{i:03d}": w for k, m in enumerate(models, 1) for i, w in enumerate(m.get_weights())}
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    from innerear.io import atomic_path

    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)


def load_weights(path: Path, models) -> dict:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        for k, m in enumerate(models, 1):
            n = len(m.get_weights())
            m.set_weights([z[f"s{k}_{i:03d}"] for i in range(n)])
    return meta


def _crops(inputs: np.ndarray, labels: np.ndarray, n: int, crop: int, fg_share: float, rng) -> tuple:
    """``n`` random ``crop``² patches of a slice stack; ``fg_share`` of them around label voxels."""
    ns, h, w = labels.shape
    fg = np.argwhere(labels)
    xs = np.empty((n, crop, crop, inputs.shape[-1]), np.float32)
    ys = np.empty((n, crop, crop, 1), np.float32)
    for j in range(n):
        if len(fg) and rng.random() < fg_share:
            i, r, c = fg[rng.integers(len(fg))]
            r = r + rng.integers(-crop // 3, crop // 3 + 1) - crop // 2
            c = c + rng.integers(-crop // 3, crop // 3 + 1) - crop // 2
        else:
            i, r, c = rng.integers(ns), rng.integers(h - crop + 1), rng.integers(w - crop + 1)
        r = int(np.clip(r, 0, h - crop))
        c = int(np.clip(c, 0, w - crop))
        xs[j] = inputs[i, r:r + crop, c:c + crop]
        ys[j, ..., 0] = labels[i, r:r + crop, c:c + crop]
    return xs, ys


def fit_bench_weights(grid: int = 256, verbose: bool = True, **overrides) -> tuple[list, dict]:
    """Fit the three paper-size stages quickly on phantom ``train_index`` (see module doc)."""
    import keras

    from innerear.inference.engine import run_stage, stage_inputs
    from innerear.data.normalize import fit_normalizer
    from innerear.settings.views import to_slices
    from innerear.nets.losses import bce_dice_loss

    cfg = dict(FIT, **overrides)
    t0 = time.perf_counter()
    image, label = prepare_phantom(cfg["train_index"], grid, cfg["seed"], cfg["binning"])
    norm = fit_normalizer([image])
    image_n = norm(image)
    models = paper_unets(cfg["seed"], cfg["bn_momentum"])
    rng = np.random.default_rng(cfg["seed"])
    masks: list[np.ndarray] = []
    info = {"stages": []}
    for k, (view, model) in enumerate(zip(PAPER_VIEWS, models), 1):
        ts = time.perf_counter()
        xs, ys = _crops(to_slices(stage_inputs(image_n, masks), view), to_slices(label, view),
                        cfg["steps"] * cfg["batch"], cfg["crop"], cfg["fg_share"], rng)
        model.compile(optimizer=keras.optimizers.Adam(cfg["lr"]), loss=bce_dice_loss)
        hist = model.fit(xs, ys, batch_size=cfg["batch"], epochs=1, shuffle=False, verbose=0)
        del xs, ys
        fit_s = time.perf_counter() - ts
        # the next stage trains on this stage's masks of the training specimen
        _, mask = run_stage(model, view, image_n, masks)
        masks.append(mask)
        d = dice(mask, label)
        info["stages"].append({"view": view, "loss": float(hist.history["loss"][-1]), "fit_s": fit_s,
                               "train_dice": d})
        if verbose:
            print(f"  fitted stage {k} ({view}): loss {hist.history['loss'][-1]:.3f}, "
                  f"train-specimen Dice {d:.3f}, {time.perf_counter() - ts:.0f} s", flush=True)
    meta = {"version": WEIGHTS_VERSION, "grid": grid, "fit": cfg, "normalizer": norm.to_dict(),
            "seconds": time.perf_counter() - t0, **info}
    return models, meta


def bench_weights(grid: int = 256, refit: bool = False, verbose: bool = True):
    """``(models, meta)``: the cached quick-fit stages (fitted at 256³ first if not cached);
    ``meta["grid"]`` is set to ``grid``, the size they are applied at."""
    path = weights_path()
    if path.exists() and not refit:
        models = paper_unets(FIT["seed"], FIT["bn_momentum"])
        meta = load_weights(path, models)
    else:
        if verbose:
            print(f"fitting the benchmark weights (once; cached in {path}) ...", flush=True)
        models, meta = fit_bench_weights(FIT_GRID, verbose)
        save_weights(path, models, meta)
    meta.update(cached=str(path), grid=grid)
    return models, meta


def bench_cascade(models, meta, batch_size: int | None = None):
    from innerear.inference.engine import Cascade
    from innerear.data.normalize import normalizer_from_dict

    norm = normalizer_from_dict(meta["normalizer"])
    return Cascade(stages=list(zip(PAPER_VIEWS, models)), normalizer=norm, grid=meta["grid"],
                   batch_size=batch_size)
