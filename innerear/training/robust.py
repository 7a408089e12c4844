"""The robust recipe: the segmenter shipped with ``innerear segment``, trained for scans unlike any phantom.

The paper reproduction (profiles ``smoke``/``demo``/``paper``) resamples every scan to N³ and
z-scores it with the training fold's statistics, as the paper did. A model made that way
depends on the field of view and the intensity units of its training scans. The robust
recipe makes a model that works in physical units instead, in the spirit of SynthSeg
(Billot et al., Medical Image Analysis 2023): networks trained only on synthetic images
whose contrast, resolution and artefacts are randomised.

* **Physical voxel size.** Every scan, in training and in ``innerear segment``, is resampled
  to :attr:`RobustRecipe.voxel_mm` (antialiased when it shrinks), whatever its field of view,
  and padded to a multiple of the networks' pooling factor. The networks are fully
  convolutional 2D U-Nets, so any field of view works.
* **Per-scan normalisation.** The scan's 0.5th and 99.5th percentiles map to 0 and 1
  (:class:`innerear.data.preprocess.PercentileNormalizer`), so units and offsets do not matter.
* **Domain-randomised phantoms.** The training phantoms draw their acquisition (voxel
  size, field of view, cochlea crops, micro-CT or cone-beam CT style, units, artefacts, label
  noise) from :attr:`RobustRecipe.mixture` and carry the anatomy realism of
  :class:`innerear.data.phantom.AnatomyRealism` (attached canals and aqueducts, windows to
  middle-ear air, scalae, bubbles, an air-cell honeycomb).
* **Augmentation on the fly.** Every training patch gets a random monotone (inversion-free)
  remapping of its intensities, gamma, contrast, a smooth bias field, white and correlated
  noise and blur (:func:`augment_image`).
* **Structures.** The networks output four classes (background, cochlea, vestibule,
  semicircular canals) with a softmax; the cascade's mask is everything but background, so
  ``innerear segment`` can write a structure label map.

The cascade itself is the paper's (coronal, sagittal, axial stages; largest 3D component
between stages; context dropout as in the demo profile) and runs on the one engine
(:class:`innerear.inference.engine.Cascade`). A run folder::

    <work>/phantoms/   training specimens (NIfTI image, label, structures; manifest.json)
    <work>/prepared/   the same resampled to voxel_mm and normalised (.npz)
    <work>/run/<view1>/<view2>/<view3>/   stage folders (best.keras, stage.json), cascade.json
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
from scipy import ndimage

from innerear.data import phantom as ph
from innerear.data.normalize import PercentileNormalizer, histogram_distance, normalised_histogram
from innerear.data.scan import map_to_scan, prepare_scan_physical
from innerear.inference.align import ANATOMY_FRAME
from innerear.inference.engine import InferenceSettings, run_stage, stage_inputs
from innerear.inference.modelfolder import ModelSpec
from innerear.io import save_npz, write_json
from innerear.metrics import structure_labels
from innerear.nets.backbones import build
from innerear.settings.profiles import get_profile
from innerear.settings.structures import CLASS_NAMES
from innerear.settings.views import PAPER_ORDER, check_order, to_slices
from innerear.training.cascade import drop_context, stage_lock
from innerear.training.fit import fit, set_output_prior


# --------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class TrainingMixture:
    """The acquisitions the training phantoms are drawn from (ranges; see
    :func:`innerear.data.phantom.draw_acquisition`). The benchmark's held-out cells lie outside
    them: Hounsfield units, voxels below ``voxel_mm[0]``, strong artefacts."""

    voxel_mm: tuple[float, float] = (0.06, 0.3)
    fov_mm: tuple[float, float] = (14.0, 28.0)  # blocks around the labyrinth
    crop_fov_mm: tuple[float, float] = (8.5, 12.0)  # crops centred on the cochlea
    crop_share: float = 0.3
    style: tuple[str, ...] = ("microct", "cbct")  # drawn uniformly: repeat a style to weight it
    units: tuple[str, ...] = ("uint16", "float")
    # clinical CBCT (issue 22): the share of cbct scans whose fluid, capsule, resolution and
    # contrast-to-noise are drawn from the ranges below instead of the style's own (a real
    # CBCT cochlea read ~220 HU in the lumen, 1,000-1,500 HU in the capsule, CNR ~5)
    clinical_share: float = 0.0
    lumen_hu: tuple[float, float] = (-50.0, 500.0)
    capsule_hu: tuple[float, float] = (800.0, 2500.0)
    cnr: tuple[float, float] = (2.5, 40.0)  # log-uniform
    psf_fwhm_mm: tuple[float, float] = (0.2, 0.5)  # at least 1.2 voxels
    any_pose_share: float = 0.0  # scans turned by any angle (else the specimen's 3-20 degrees)
    reorient_share: float = 0.0  # prepared scans turned/mirrored by one of the cube's 48 symmetries
    artefacts: tuple[float, float] = (0.0, 0.6)
    # voxels of boundary jitter; more erases the thin apical turn at coarse voxels (measured
    # with innerear.metrics.cochlea), which would teach the networks to miss it
    label_noise: tuple[float, float] = (0.0, 0.3)
    misregistration_share: float = 0.1  # labels shifted by 1-2 voxels


@dataclass(frozen=True)
class Augmentation:
    """Random intensity changes of each training patch (image channel only)."""

    remap_points: int = 6  # control points of the monotone intensity curve
    remap_jitter: float = 0.6  # 0: identity; 1: free monotone curve
    gamma: tuple[float, float] = (0.6, 1.6)
    contrast: tuple[float, float] = (0.75, 1.3)
    shift: tuple[float, float] = (-0.15, 0.15)
    bias: float = 0.2  # amplitude of the smooth multiplicative field
    noise: tuple[float, float] = (0.0, 0.08)  # white noise s.d. (normalised units)
    correlated_noise: tuple[float, float] = (0.0, 0.06)
    blur: tuple[float, float] = (0.0, 1.2)  # Gaussian sigma, pixels
    probability: float = 0.9  # share of patches augmented at all


@dataclass(frozen=True)
class RobustRecipe:
    """Everything that defines the shipped segmenter's training."""

    voxel_mm: float = 0.15
    backbone: str = "unet"
    order: tuple[str, ...] = tuple(PAPER_ORDER)
    base_filters: int = 8
    depth: int = 4
    dropout: float = 0.1
    bn_momentum: float = 0.9
    n_classes: int = 4
    patch: int = 96
    batch_size: int = 16
    steps_per_epoch: int = 80
    max_epochs: int = 30
    patience: int = 4
    min_delta: float = 0.005
    learning_rate: float = 1e-3
    loss: str = "cce_dice"
    context_dropout: float = 0.3
    foreground_share: float = 0.6  # share of patches centred on a labyrinth voxel
    n_phantoms: int = 64
    mirror: bool = False  # test-time mirroring in the shipped cascade (InferenceSettings.mirror)
    align: bool = False  # realign turned scans to the labyrinth's axes (innerear.inference.align)
    seed: int = 0
    connectivity: int = 26
    normalizer: tuple[float, float] = (0.5, 99.5)  # percentiles mapped to 0 and 1
    mixture: TrainingMixture = field(default_factory=TrainingMixture)
    augmentation: Augmentation = field(default_factory=Augmentation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> RobustRecipe:
        from dataclasses import replace

        return replace(self, **changes)


def get_recipe(name: str = "robust", **overrides: Any) -> RobustRecipe:
    """The named recipe (``"robust"``: the shipped model's; ``"robust-v1"``: the one shipped before
    issue 22, without synthetic contrasts, clinical CBCT draws, any pose or test-time mirroring;
    ``"robust-smoke"``: seconds, for tests)."""
    if name == "robust":
        recipe = RobustRecipe(
            n_phantoms=96, mirror=True, align=True,
            mixture=TrainingMixture(style=("microct", "cbct", "cbct", "synth"), crop_share=0.4, clinical_share=0.7,
                                    any_pose_share=0.3, reorient_share=0.5))
    elif name == "robust-v1":  # the model shipped before issue 22 (recorded for the ablation)
        recipe = RobustRecipe()
    elif name == "robust-smoke":
        recipe = RobustRecipe(voxel_mm=0.3, base_filters=4, depth=2, patch=32, batch_size=8, steps_per_epoch=3,
                              max_epochs=2, patience=2, n_phantoms=3, mirror=True,
                              mixture=TrainingMixture(voxel_mm=(0.25, 0.3), fov_mm=(12.0, 16.0), crop_fov_mm=(9.0, 10.0),
                                                      style=("cbct", "synth"), clinical_share=1.0, any_pose_share=0.5,
                                                      reorient_share=0.5))
    else:
        raise ValueError(f"unknown recipe {name!r}; use 'robust', 'robust-v1' or 'robust-smoke'")
    return recipe.replace(**overrides) if overrides else recipe


# --------------------------------------------------------------------------- augmentation
def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, nodes: int = 4) -> np.ndarray:
    """A smooth random field in about [-1, 1] (a coarse grid of random values, cubic zoom)."""
    coarse = rng.uniform(-1.0, 1.0, (nodes, nodes))
    return ndimage.zoom(coarse, (shape[0] / nodes, shape[1] / nodes), order=3, mode="nearest")[: shape[0], : shape[1]]


def monotone_curve(rng: np.random.Generator, points: int, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Control points of a random increasing intensity curve on [0, 1] (inversion-free remapping).

    The increments are the identity's (1/points each) blended with random positive ones, so
    the curve never turns back: dark stays darker than bright, but how much darker varies.
    """
    x = np.linspace(0.0, 1.0, points + 1)
    steps = (1.0 - jitter) / points + jitter * rng.dirichlet(np.ones(points))
    y = np.concatenate([[0.0], np.cumsum(steps)])
    return x, y / y[-1]


def augment_image(image: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Randomly changed intensities of one normalised 2D patch (about 0 = dark, 1 = bright)."""
    if rng.random() >= aug.probability:
        return image
    x = np.asarray(image, np.float32)
    cx, cy = monotone_curve(rng, aug.remap_points, aug.remap_jitter)
    # beyond [0, 1] the curve continues with slope 1 (the outer 0.5 % of each scan)
    inside = np.clip(x, 0.0, 1.0)
    x = np.interp(inside, cx, cy).astype(np.float32) + (x - inside)
    g = math.exp(rng.uniform(math.log(aug.gamma[0]), math.log(aug.gamma[1])))
    x = np.sign(x) * np.abs(x) ** g
    x = x * rng.uniform(*aug.contrast) + rng.uniform(*aug.shift)
    x = x * (1.0 + aug.bias * rng.uniform(0, 1) * _smooth_field(x.shape, rng))
    sigma = rng.uniform(*aug.blur, 2)  # anisotropic: each in-plane axis its own
    if sigma.max() > 0.3:
        x = ndimage.gaussian_filter(x, np.where(sigma > 0.3, sigma, 0.0))
    x = x + rng.normal(0.0, rng.uniform(*aug.noise), x.shape)
    c = rng.uniform(*aug.correlated_noise)
    if c > 0:
        n = ndimage.gaussian_filter(rng.normal(0.0, 1.0, x.shape), rng.uniform(0.8, 2.0))
        x = x + c * n / max(float(n.std()), 1e-6)
    return x.astype(np.float32)


# --------------------------------------------------------------------------- patches
@dataclass
class PreparedScan:
    """One training specimen at the recipe's voxel size: normalised image, class labels."""

    case_id: str
    image: np.ndarray  # float32, normalised
    classes: np.ndarray  # uint8: 0 background, 1 cochlea, 2 vestibule, 3 canals
    affine: np.ndarray
    core: tuple[slice, slice, slice] | None = None  # the voxels inside the scan (the rest is padding)


class PatchDataset(keras.utils.PyDataset):
    """Random 2D patches of one view for one stage, augmented, as Keras batches.

    ``inputs`` are ``(x, y, z, channels)`` volumes (image first, then earlier masks),
    ``classes`` the matching class maps. A share ``foreground_share`` of patches is centred on
    a labyrinth voxel; the rest anywhere. Slices smaller than the patch are padded (image:
    edge values; masks and labels: 0). Batch ``i`` of epoch ``e`` is drawn from the random
    stream ``[seed, e, i]``, so training is repeatable.
    """

    def __init__(self, inputs: Sequence[np.ndarray], classes: Sequence[np.ndarray], view: str, recipe: RobustRecipe,
                 seed: int, view_axes: str = "ras") -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.inputs = [to_slices(np.asarray(v, np.float32), view, view_axes) for v in inputs]
        self.classes = [to_slices(np.asarray(c, np.uint8), view, view_axes) for c in classes]
        self.fg = [np.argwhere(c > 0) for c in self.classes]
        self.recipe = recipe
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return int(self.recipe.steps_per_epoch)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def _patch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.recipe.patch
        v = int(rng.integers(len(self.inputs)))
        x, y = self.inputs[v], self.classes[v]
        if len(self.fg[v]) and rng.random() < self.recipe.foreground_share:
            i, r, c = self.fg[v][rng.integers(len(self.fg[v]))]
            r0, c0 = r - p // 2 + int(rng.integers(-p // 4, p // 4 + 1)), c - p // 2 + int(rng.integers(-p // 4, p // 4 + 1))
        else:
            i = int(rng.integers(x.shape[0]))
            r0 = int(rng.integers(min(0, x.shape[1] - p), max(1, x.shape[1] - p + 1)))
            c0 = int(rng.integers(min(0, x.shape[2] - p), max(1, x.shape[2] - p + 1)))
        h, w = x.shape[1:3]
        rs, cs = slice(max(r0, 0), min(r0 + p, h)), slice(max(c0, 0), min(c0 + p, w))
        pad = ((rs.start - r0, r0 + p - rs.stop), (cs.start - c0, c0 + p - cs.stop))
        img = np.pad(x[i, rs, cs, 0], pad, mode="edge")
        ctx = [np.pad(x[i, rs, cs, k], pad) for k in range(1, x.shape[3])]
        lab = np.pad(y[i, rs, cs], pad)
        img = augment_image(img, self.recipe.augmentation, rng)
        return np.stack([img, *ctx], axis=-1), lab

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        pairs = [self._patch(rng) for _ in range(self.recipe.batch_size)]
        x = np.stack([a for a, _ in pairs]).astype(np.float32)
        y = np.stack([b for _, b in pairs])[..., None].astype(np.float32)
        return x, y


# --------------------------------------------------------------------------- training data
def class_map(label: np.ndarray, structures: np.ndarray) -> np.ndarray:
    """Class codes from a binary label and its structure map (1 cochlea, 2 vestibule, 3 canals);
    a label voxel without a structure takes its nearest one's (as ``innerear segment`` does)."""
    return structure_labels(np.asarray(structures), np.asarray(label))


def resample_classes(classes: np.ndarray, affine: np.ndarray, shape: Sequence[int],
                     target_affine: np.ndarray, n_classes: int) -> np.ndarray:
    """A class map moved onto another grid: per-class indicators, smoothed where the grid
    shrinks (antialiasing), linearly sampled at the target voxel centres, arg-max."""
    src_vox = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    dst_vox = np.linalg.norm(np.asarray(target_affine, float)[:3, :3], axis=0)
    sigma = np.maximum(0.0, (dst_vox.mean() / src_vox - 1.0) * 0.4)
    best = np.zeros(tuple(int(s) for s in shape), np.float32)
    out = np.zeros(best.shape, np.uint8)
    for k in range(n_classes):
        ind = (np.asarray(classes) == k).astype(np.float32)
        if np.any(sigma > 0):
            ind = ndimage.gaussian_filter(ind, sigma)
        vals = map_to_scan(ind, affine, shape, target_affine, threshold=None)
        better = vals > best
        out[better], best[better] = k, vals[better]
    return out


def _draw_specimen(recipe: RobustRecipe, index: int):
    """Training specimen ``index``: anatomy realism on, an acquisition drawn from the mixture."""
    m = recipe.mixture
    rng = np.random.default_rng([recipe.seed, index, 0xAC0])
    crop = bool(rng.random() < m.crop_share)
    acq = ph.draw_acquisition(rng, voxel_mm=m.voxel_mm, fov_mm=m.crop_fov_mm if crop else m.fov_mm,
                              centre="cochlea" if crop else "labyrinth", style=m.style, units=m.units,
                              artefacts=m.artefacts, label_noise=m.label_noise,
                              misregistration_share=m.misregistration_share)
    acq = _clinical_draws(acq, m, rng)
    return ph.generate_specimen(index, recipe.seed, get_profile("demo").phantoms, realism=ph.AnatomyRealism.full(),
                                acquisition=acq), acq


def _clinical_draws(acq: ph.Acquisition, m: TrainingMixture, rng: np.random.Generator) -> ph.Acquisition:
    """The mixture's clinical CBCT grey values and resolution, and any pose, drawn into ``acq``."""
    from dataclasses import replace

    changes: dict[str, Any] = {}
    if acq.style == "cbct" and rng.random() < m.clinical_share:
        lumen = rng.uniform(*m.lumen_hu)
        changes.update(lumen_hu=lumen, capsule_hu=max(rng.uniform(*m.capsule_hu), lumen + 400.0),
                       cnr=math.exp(rng.uniform(math.log(m.cnr[0]), math.log(m.cnr[1]))),
                       psf_fwhm_mm=max(rng.uniform(*m.psf_fwhm_mm), 1.2 * acq.voxel_mm))
    if rng.random() < m.any_pose_share:
        changes["pose_deg"] = rng.uniform(0.0, 180.0)
    return replace(acq, **changes) if changes else acq


def cube_symmetry(index: int) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Symmetry ``index`` (0-47) of the cube: an axis permutation and flips (0: identity)."""
    from itertools import permutations

    perm = list(permutations(range(3)))[index // 8]
    return perm, tuple(bool(index >> k & 1) for k in range(3))


def reorient(volume: np.ndarray, index: int) -> np.ndarray:
    """``volume`` (3D, or 4D with channels last) under cube symmetry ``index``."""
    perm, flips = cube_symmetry(index)
    out = np.transpose(volume, perm + tuple(range(3, volume.ndim)))
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out)


def _reoriented(scan: PreparedScan, index: int) -> PreparedScan:
    """A prepared scan turned or mirrored (its core follows; the affine is kept as provenance)."""
    if index == 0:
        return scan
    shape = scan.image.shape
    core = scan.core or tuple(slice(0, n) for n in shape)
    perm, flips = cube_symmetry(index)
    new_core = []
    for axis in range(3):
        src = perm[axis]
        sl, n = core[src], shape[src]
        new_core.append(slice(n - sl.stop, n - sl.start) if flips[axis] else sl)
    return PreparedScan(scan.case_id, reorient(scan.image, index), reorient(scan.classes, index), scan.affine,
                        tuple(new_core))


def prepare_training_scan(image: np.ndarray, affine: np.ndarray, label: np.ndarray, structures: np.ndarray,
                          recipe: RobustRecipe, case_id: str) -> PreparedScan:
    """A specimen as ``innerear segment`` would see it (same resampling and normalisation)."""
    prepared = prepare_scan_physical(image, affine, recipe.voxel_mm, 2 ** recipe.depth)
    norm = PercentileNormalizer(*recipe.normalizer)
    classes = resample_classes(class_map(label, structures), affine, prepared.volume.shape, prepared.affine,
                               recipe.n_classes)
    return PreparedScan(case_id, norm(prepared.volume), classes, prepared.affine, prepared.core)


def prepare_training_set(recipe: RobustRecipe, work: Path, verbose: bool = False) -> list[PreparedScan]:
    """Generate (or reuse) the training specimens and prepare them; cached under ``work/prepared``."""
    out = Path(work) / "prepared"
    out.mkdir(parents=True, exist_ok=True)
    key = json.dumps({"recipe": recipe.to_dict()}, sort_keys=True, default=str)
    scans = []
    for i in range(recipe.n_phantoms):
        path = out / f"specimen_{i:03d}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    core = tuple(slice(int(a), int(b)) for a, b in z["core"])
                    scans.append(PreparedScan(f"specimen_{i:03d}", z["image"], z["classes"], z["affine"], core))
                    continue
        t0 = time.perf_counter()
        spec, acq = _draw_specimen(recipe, i)
        scan = prepare_training_scan(spec.image, spec.affine, spec.label, spec.structures, recipe, f"specimen_{i:03d}")
        save_npz(path, image=scan.image.astype(np.float32), classes=scan.classes, affine=scan.affine,
                 core=np.array([[sl.start, sl.stop] for sl in scan.core]), key=np.array(key))
        scans.append(scan)
        if verbose:
            print(f"[robust] specimen {i + 1}/{recipe.n_phantoms}: {acq.style} {acq.voxel_mm:.3f} mm "
                  f"{spec.image.shape} -> {scan.image.shape} ({time.perf_counter() - t0:.1f} s)", flush=True)
        del spec
    return [_reoriented(s, _symmetry_draw(recipe, i)) for i, s in enumerate(scans)]


def _symmetry_draw(recipe: RobustRecipe, index: int) -> int:
    """The cube symmetry training specimen ``index`` is seen in (0, the scan as acquired, with
    probability 1 - ``reorient_share``)."""
    rng = np.random.default_rng([recipe.seed, index, 0x5E7])
    return int(rng.integers(1, 48)) if rng.random() < recipe.mixture.reorient_share else 0


# --------------------------------------------------------------------------- training
def _class_shares(scans: Sequence[PreparedScan], n_classes: int) -> list[float]:
    counts = np.zeros(n_classes)
    for s in scans:
        counts += np.bincount(s.classes.ravel(), minlength=n_classes)[:n_classes]
    return (counts / counts.sum()).tolist()


def _stage_folder(work: Path, order: Sequence[str], k: int) -> Path:
    return Path(work, "run", *order[: k + 1])


def train_robust(recipe: RobustRecipe, work: str | os.PathLike, verbose: bool = False,
                 scans: Sequence[PreparedScan] | None = None) -> Path:
    """Train (or resume) the robust cascade in ``work``; returns the deepest stage folder
    (with ``cascade.json``), ready for :func:`innerear.inference.modelfolder.export_model`."""
    work = Path(work)
    order = check_order(recipe.order)
    if scans is None:
        scans = prepare_training_set(recipe, work, verbose)
    shares = _class_shares(scans, recipe.n_classes)
    masks: dict[str, list[np.ndarray]] = {s.case_id: [] for s in scans}
    inference = InferenceSettings(mode="fast", mirror=bool(recipe.mirror))  # as the shipped cascade predicts
    stages = []
    for k, view in enumerate(order):
        folder = _stage_folder(work, order, k)
        folder.mkdir(parents=True, exist_ok=True)
        with stage_lock(folder, verbose):
            info_path = folder / "stage.json"
            stage_seed = int(recipe.seed) * 1000 + k
            rng = np.random.default_rng([recipe.seed, k, 0xD20])
            inputs = [stage_inputs(s.image, [drop_context(m, recipe.context_dropout, rng) for m in masks[s.case_id]])
                      for s in scans]
            data = PatchDataset(inputs, [s.classes for s in scans], view, recipe, seed=stage_seed)
            del inputs

            def network(channels: int = 1 + k) -> keras.Model:
                model = build(recipe.backbone, channels=channels, size=None, base_filters=recipe.base_filters,
                              depth=recipe.depth, dropout=recipe.dropout, bn_momentum=recipe.bn_momentum,
                              n_classes=recipe.n_classes)
                return set_output_prior(model, shares)

            t0 = time.perf_counter()
            if verbose:
                print(f"[robust] stage {k + 1}/{len(order)} ({view}) -> {folder}", flush=True)
            result = fit(network, data, folder, max_epochs=recipe.max_epochs, patience=recipe.patience,
                         learning_rate=recipe.learning_rate, loss=recipe.loss, seed=stage_seed, verbose=verbose,
                         min_delta=recipe.min_delta)
            train_seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            for s in scans:
                _, mask = run_stage(result.model, view, s.image, masks[s.case_id], 0.5, inference,
                                    connectivity=recipe.connectivity)
                masks[s.case_id].append(mask)
            info = {"view": view, "stage": k + 1, "channels": 1 + k, "order": list(order[: k + 1]),
                    "epochs": result.epochs, "best_epoch": result.best_epoch, "stopped_by": result.stopped_by,
                    "max_epochs": recipe.max_epochs, "train_seconds": round(train_seconds, 1),
                    "predict_seconds": round(time.perf_counter() - t1, 1), "recipe": "robust",
                    "voxel_mm": recipe.voxel_mm, "n_classes": recipe.n_classes, "view_axes": "ras",
                    "train_ids": [s.case_id for s in scans], "test_ids": []}
            if not info_path.exists():
                write_json(info_path, info)
            stages.append(folder)
            keras.backend.clear_session()
    last = stages[-1]
    edges, density, warn_above = _training_histogram(scans)
    ModelSpec(stages=tuple(os.path.relpath(f, last) for f in stages), order=tuple(order),
              normalizer=PercentileNormalizer(*recipe.normalizer).to_dict(), voxel_mm=recipe.voxel_mm, threshold=0.5,
              connectivity=recipe.connectivity, view_axes="ras", backbone=recipe.backbone, profile="robust",
              mirror=bool(recipe.mirror) or None, anatomy_frame=dict(ANATOMY_FRAME) if recipe.align else None,
              n_classes=recipe.n_classes, classes=tuple(CLASS_NAMES[: recipe.n_classes]), recipe=recipe.to_dict(),
              intensity_histogram={"edges": edges, "density": density, "warn_above": warn_above,
                                   "warn_above_rule": "1.5 x the largest distance of a training scan's histogram "
                                                      "from the pooled one (at least 0.1)"}).write(last)
    return last


def _training_histogram(scans: Sequence[PreparedScan]) -> tuple[list[float], list[float], float]:
    """The training scans' normalised-intensity distribution (before augmentation), pooled over
    the voxels inside each scan (as ``innerear segment`` measures a scan: not its padding), and
    the distance above which a scan's histogram is called unlike the training ones."""
    parts = []
    for s in scans:
        core = s.image[s.core] if s.core is not None else s.image
        parts.append((normalised_histogram(core), core.size))
    edges = parts[0][0][0]
    density = sum(d * n for (_, d), n in parts) / sum(n for _, n in parts)
    spread = max(histogram_distance((edges, d), (edges, density)) for (_, d), _ in parts)
    return [float(v) for v in edges], [float(v) for v in density], round(max(0.1, 1.5 * spread), 3)
