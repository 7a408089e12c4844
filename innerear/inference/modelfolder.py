"""The model-folder format: what a trained cascade is made of on disk, read and checked in one place.

A model folder (a shipped model, an exported one, or a run's deepest stage folder)::

    cascade.json              the cascade (:class:`ModelSpec`): format_version, stage folders, normaliser,
                              grid or voxel_mm, threshold, connectivity, classes, the checks' references
    <stage>/stage.json        one stage (:class:`StageSpec`: view, stage, channels, grid or voxel_mm)
                              and its training record
    <stage>/best.keras        the stage's network
    <stage>/best.onnx         optional: the same network exported to ONNX (:mod:`innerear.nets.onnx`),
                              which ``innerear segment`` runs without importing Keras (``runtime``)
    model_card.json           provenance only (recipe, data, training, measurements); never read to load

:func:`read_model_folder` is the one loader: it reads and validates every file (a problem raises
:class:`SegmentError` naming the file, the field and both values) and is used by ``innerear segment``
and by :func:`innerear.inference.engine.load_cascade`. :func:`ModelSpec.write` is the one writer
(training and :func:`export_model`). A folder without ``format_version`` is format 1 (before
:data:`FORMAT_VERSION`); :func:`upgrade_model` (``innerear upgrade-model DIR``) converts it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from innerear.data.normalize import normalizer_from_dict
from innerear.inference.checks import PLAUSIBLE_VOLUME
from innerear.io import VOXEL_MM_RANGE, atomic_path, json_round_trip, write_json
from innerear.nets.onnx import ONNX_NAME, onnxruntime_available
from innerear.settings.profiles import RUNTIMES
from innerear.settings.views import ORIENTATIONS

#: the model-folder format this innerear reads and writes (a folder without one is format 1)
FORMAT_VERSION = 2
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: the shipped segmenter: the robust recipe (physical units, structures; see innerear.training.robust)
DEFAULT_MODEL = MODELS_DIR / "robust_cascade"
#: the earlier shipped model of the paper recipe (64³ grid, fixed z-score): the benchmark's baseline
PAPER_RECIPE_MODEL = MODELS_DIR / "phantom_cascade"
#: what format 1 kept in the model card (or repeated there) and format 2 keeps in cascade.json only
_CARD_FACTS = ("grid", "voxel_mm", "order", "backbone", "fold", "normalizer", "profile", "classes", "n_classes",
               "intensity_histogram", "plausible_inner_ear_volume_mm3")


class SegmentError(ValueError):
    """A problem with a model folder or an output path; the message names it."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")


@dataclass(frozen=True)
class ModelSpec:
    """A cascade's ``cascade.json``: everything needed to load and run it, and the references of
    ``innerear segment``'s checks. ``stages`` are folders relative to the model folder; a *grid*
    model has ``grid`` (every scan resampled to N³), a *physical* one ``voxel_mm``. ``recipe`` is
    a run's training recipe (provenance; :func:`export_model` moves it into the model card)."""

    stages: tuple[str, ...]
    normalizer: dict[str, Any]
    grid: int | None = None
    voxel_mm: float | tuple[float, ...] | None = None
    order: tuple[str, ...] | None = None
    threshold: float = 0.5
    connectivity: int = 26
    view_axes: str = "ras"
    backbone: str | None = None
    fold: int | None = None
    profile: str | None = None
    n_classes: int | None = None
    classes: tuple[str, ...] | None = None
    intensity_histogram: dict[str, Any] | None = None
    plausible_inner_ear_volume_mm3: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    mirror: bool | None = None  # test-time mirroring (see InferenceSettings.mirror); None: off
    anatomy_frame: dict[str, Any] | None = None  # realign turned scans (innerear.inference.align); None: off
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``cascade.json`` (fields that are None are left out)."""
        return {k: json_round_trip(v) for k, v in dataclasses.asdict(self).items() if v is not None}

    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/cascade.json`` atomically; returns its path."""
        return write_json(Path(folder) / "cascade.json", self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> ModelSpec:
        """Check a format-2 ``cascade.json`` object (``path`` names it in errors) and type it."""
        if not isinstance(data, dict):
            raise SegmentError(path, "model folder incomplete: cascade.json is not a JSON object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SegmentError(path, f"cascade.json has unknown fields {unknown}")
        missing = [k for k in ("stages", "normalizer") if k not in data]
        if data.get("grid") is None and data.get("voxel_mm") is None:
            missing.append("grid or voxel_mm")
        if missing or not isinstance(data.get("stages"), list) or not data["stages"]:
            raise SegmentError(path, f"model folder incomplete: cascade.json lacks {missing or ['stages']}")
        try:
            normalizer_from_dict(data["normalizer"])
        except (TypeError, ValueError) as exc:
            raise SegmentError(path, f"model folder incomplete: cascade.json's normalizer: {exc}") from None
        if data.get("grid") is None:
            check_model_voxel(path, data.get("voxel_mm"))
        order = data.get("order")
        if order is not None and len(order) != len(data["stages"]):
            raise SegmentError(path, f"model folder inconsistent: {len(data['stages'])} stages but order {order}")
        if data.get("mirror") is not None and not isinstance(data["mirror"], bool):
            raise SegmentError(path, f"cascade.json's mirror must be true or false, got {data['mirror']!r}")
        tuples = {k: tuple(data[k]) for k in ("stages", "order", "classes") if data.get(k) is not None}
        voxel = data.get("voxel_mm")
        return cls(**dict(data, **tuples, voxel_mm=tuple(voxel) if isinstance(voxel, list) else voxel))


@dataclass(frozen=True)
class StageSpec:
    """What the loader reads from a stage's ``stage.json`` (the rest is the stage's training record)."""

    folder: Path
    view: str
    stage: int
    channels: int

    @property
    def network(self) -> Path:
        """The stage's Keras network (``best.keras``)."""
        return self.folder / "best.keras"

    @property
    def onnx(self) -> Path:
        """The stage's ONNX export (``best.onnx``; optional)."""
        return self.folder / ONNX_NAME


@dataclass(frozen=True)
class ModelFolder:
    """A model folder that passed :func:`read_model_folder`: its place, cascade and stages."""

    folder: Path
    spec: ModelSpec
    stages: tuple[StageSpec, ...]

    @property
    def files(self) -> list[Path]:
        """The files whose change changes the loaded model."""
        return ([self.folder / "cascade.json"] + [s.network for s in self.stages]
                + [s.onnx for s in self.stages if s.onnx.is_file()])

    def runtime(self, requested: str = "auto") -> str:
        """Which runtime loads the networks: ``"keras"``, or ``"onnx"`` (ONNX Runtime, no Keras import).

        ``"auto"`` takes ONNX when every stage has ``best.onnx`` and ONNX Runtime is installed;
        ``"onnx"`` requires both (:class:`SegmentError` naming what is missing)."""
        if requested not in RUNTIMES:
            raise SegmentError(self.folder, f"unknown runtime {requested!r}; use one of {list(RUNTIMES)}")
        if requested == "keras":
            return "keras"
        missing = [s.onnx for s in self.stages if not s.onnx.is_file()]
        if requested == "auto":
            return "onnx" if not missing and onnxruntime_available() else "keras"
        if missing:
            raise SegmentError(missing[0], "no ONNX export of this stage (innerear export-onnx FOLDER exports one)")
        if not onnxruntime_available():
            raise SegmentError(self.folder, "runtime onnx needs the onnxruntime package (pip install onnxruntime)")
        return "onnx"


def check_model_voxel(path: Path, voxel_mm: Any) -> None:
    """Refuse a physical model's ``voxel_mm`` that is not a positive size within the scan range."""
    try:
        sizes = [float(v) for v in np.atleast_1d(np.asarray(voxel_mm, float))]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) not in (1, 3) or not all(VOXEL_MM_RANGE[0] <= v <= VOXEL_MM_RANGE[1] for v in sizes):
        raise SegmentError(path, f"model folder incomplete: voxel_mm {voxel_mm!r} is not one or three sizes "
                                 f"within {VOXEL_MM_RANGE[0]:g}-{VOXEL_MM_RANGE[1]:g} mm")


def find_cascade(model_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding ``cascade.json``: ``model_dir`` itself, or its only descendant
    holding one (so the ``--out`` folder of ``innerear train`` works). Default: the shipped model."""
    model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL
    if not model_dir.is_dir():
        raise SegmentError(model_dir, "model folder not found")
    if (model_dir / "cascade.json").is_file():
        return model_dir
    found = sorted(p.parent for p in model_dir.rglob("cascade.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise SegmentError(model_dir, "model folder incomplete: no cascade.json in it")
    raise SegmentError(model_dir, f"holds {len(found)} cascades; pass one of them, e.g. {found[0]}")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SegmentError(path, f"model folder incomplete: {what} unreadable ({exc})") from exc


def _check_version(folder: Path, data: dict[str, Any]) -> None:
    version = data.get("format_version", 1) if isinstance(data, dict) else 1
    if version == FORMAT_VERSION:
        return
    if version == 1:
        raise SegmentError(folder, f"model folder format version 1 (cascade.json has no format_version); this "
                                   f"innerear reads version {FORMAT_VERSION}: convert it with "
                                   f"`innerear upgrade-model {folder}`")
    raise SegmentError(folder / "cascade.json", f"model folder format version {version!r}; this innerear reads "
                                                f"version {FORMAT_VERSION} (a newer innerear wrote it?)")


def _differ(path: Path, key: str, theirs: Any, ours: Any, spec_path: Path) -> None:
    if theirs is not None and ours is not None and json_round_trip(theirs) != json_round_trip(ours):
        raise SegmentError(path, f"model folder inconsistent: {key} is {theirs!r} here but {ours!r} in {spec_path}")


def check_stage(path: Path, info: dict[str, Any], k: int, spec: ModelSpec, spec_path: Path) -> StageSpec:
    """Check stage ``k`` (0-based)'s ``stage.json`` object against ``spec``: it states its view,
    stage number, input channels and the model's grid or voxel size, and agrees with
    ``cascade.json`` on each of them (and on the backbone and fold where it states those)."""
    kind = "grid" if spec.grid is not None else "voxel_mm"
    missing = [key for key in ("view", "stage", "channels", kind) if info.get(key) is None]
    if missing:
        raise SegmentError(path, f"model folder incomplete: stage.json lacks {missing}")
    if info["view"] not in ORIENTATIONS:
        raise SegmentError(path, f"unknown stage view {info['view']!r}")
    _differ(path, "view", info["view"], spec.order[k] if spec.order else None, spec_path)
    for key, ours in (("stage", k + 1), ("channels", k + 1), ("grid", spec.grid), ("voxel_mm", spec.voxel_mm),
                      ("backbone", spec.backbone), ("fold", spec.fold)):
        _differ(path, key, info.get(key), ours, spec_path)
    return StageSpec(path.parent, str(info["view"]), int(info["stage"]), int(info["channels"]))


def read_model_folder(model_dir: str | os.PathLike | None = None, *, search: bool = True) -> ModelFolder:
    """Read and validate a model folder without loading its networks (the one loader's first half;
    :func:`innerear.inference.engine.load_cascade` loads the networks). ``search``: ``model_dir`` may
    hold the cascade in a sub-folder (:func:`find_cascade`). Raises :class:`SegmentError` naming
    the missing, broken or inconsistent file."""
    if search:
        folder = find_cascade(model_dir)
    else:
        folder = Path(model_dir)
        if not (folder / "cascade.json").is_file():
            raise SegmentError(folder, "model folder incomplete: no cascade.json in it")
    spec_path = folder / "cascade.json"
    data = _read_json(spec_path, "cascade.json")
    _check_version(folder, data)
    spec = ModelSpec.from_dict(data, spec_path)
    stages = []
    for k, rel in enumerate(spec.stages):
        stage = (folder / rel).resolve()
        for name in ("best.keras", "stage.json"):
            if not (stage / name).is_file():
                raise SegmentError(stage / name, "model folder incomplete: file missing")
        info = _read_json(stage / "stage.json", "stage.json")
        stages.append(check_stage(stage / "stage.json", info, k, spec, spec_path))
    return ModelFolder(folder, spec, tuple(stages))


# --------------------------------------------------------------------------- provenance
def read_model_card(folder: str | os.PathLike) -> dict[str, Any]:
    """The model card next to ``cascade.json`` (``model_card.json``), or a summary of the stages
    (provenance for a report; nothing that loads or checks a model reads it)."""
    folder = Path(folder)
    card = folder / "model_card.json"
    if card.is_file():
        return json.loads(card.read_text())
    spec = json.loads((folder / "cascade.json").read_text())
    return {"stages": [stage_summary(json.loads(((folder / rel) / "stage.json").read_text()))
                       for rel in spec["stages"]]}


def stage_summary(info: dict[str, Any]) -> dict[str, Any]:
    """A stage's training record for the model card."""
    keys = ("stage", "view", "channels", "epochs", "best_epoch", "train_seconds", "mean_test_dice", "test_dice",
            "train_ids", "test_ids")
    return {k: info[k] for k in keys if k in info}


# --------------------------------------------------------------------------- writing
def export_model(cascade_dir: str | os.PathLike, dest: str | os.PathLike, card: dict | None = None) -> Path:
    """Copy a trained cascade (a run's deepest stage folder) into a self-contained model folder.

    ``dest`` gets ``stage<k>_<view>/{best.keras,best.onnx,stage.json}`` per stage (the networks without
    their optimizer state, and their ONNX exports), a ``cascade.json`` (format :data:`FORMAT_VERSION`) whose stage paths
    are relative to ``dest`` and which states the plausible volumes (:data:`PLAUSIBLE_VOLUME`
    unless the run states its own), and a ``model_card.json`` of provenance: the stages'
    held-out Dice and training record, the run's recipe, plus ``card`` (which must not repeat
    what ``cascade.json`` states). Written to a temporary folder and renamed; an existing
    ``dest`` is replaced.
    """
    # lazy: Keras loads only when a model is exported, not when `innerear segment` checks a folder
    from innerear.nets.checkpoints import save_for_inference
    from innerear.nets.onnx import export_onnx  # lazy: as above

    repeated = sorted(set(card or {}) & set(_CARD_FACTS))
    if repeated:
        raise ValueError(f"the model card must not repeat what cascade.json states: {repeated}")
    model = read_model_folder(cascade_dir)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, folder=True) as tmp:
        names, summaries = [], []
        for stage in model.stages:
            name = f"stage{stage.stage}_{stage.view}"
            (tmp / name).mkdir()
            save_for_inference(stage.network, tmp / name / "best.keras")  # no optimizer state
            export_onnx(tmp / name / "best.keras")
            shutil.copy2(stage.folder / "stage.json", tmp / name / "stage.json")
            names.append(name)
            summaries.append(stage_summary(json.loads((stage.folder / "stage.json").read_text())))
        spec = dataclasses.replace(model.spec, stages=tuple(names), recipe=None,
                                   plausible_inner_ear_volume_mm3=model.spec.plausible_inner_ear_volume_mm3
                                   or PLAUSIBLE_VOLUME)
        spec.write(tmp)
        write_json(tmp / "model_card.json", {
            "stages": summaries,
            "held_out_dice_per_stage": {f"stage{s['stage']}_{s['view']}": s.get("mean_test_dice") for s in summaries},
            "exported_from": str(model.folder),
            **({"recipe": model.spec.recipe} if model.spec.recipe is not None else {}),
            **(card or {}),
        })
        for path in tmp.rglob("*"):  # a model folder is shared: readable by all
            path.chmod(0o755 if path.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest


def export_onnx_folder(model_dir: str | os.PathLike, force: bool = False) -> list[Path]:
    """Export every stage's ``best.keras`` of a model folder to ``best.onnx`` (:func:`innerear.nets.onnx.export_onnx`,
    which checks that each export answers like its network); returns the files written. A stage whose
    export is current (it records its ``.keras`` file's SHA-256) is skipped unless ``force``."""
    # lazy: the export imports Keras, which reading a model folder does without
    from innerear.nets.onnx import export_onnx, recorded_sha256, sha256

    return [export_onnx(stage.network) for stage in read_model_folder(model_dir).stages
            if force or not stage.onnx.is_file() or recorded_sha256(stage.onnx) != sha256(stage.network)]


def _upgraded(folder: Path, old: dict[str, Any], card: dict[str, Any] | None
              ) -> tuple[ModelSpec, dict[str, Any] | None]:
    """Format 1's ``cascade.json`` and card as format 2: the facts the loader needs move from the card
    into ``cascade.json`` (where it lacks them), the card keeps provenance only."""
    data = dict(old, format_version=FORMAT_VERSION)
    if card is not None:
        for key in ("grid", "voxel_mm", "order", "backbone", "fold", "normalizer"):
            _differ(folder / "model_card.json", key, card.get(key), data.get(key), folder / "cascade.json")
        card = dict(card)
        for key in ("intensity_histogram", "plausible_inner_ear_volume_mm3"):
            if card.get(key) is not None and data.get(key) is None:
                data[key] = card[key]
        if data.get("recipe") is not None:
            card.setdefault("recipe", data.pop("recipe"))
        for key in _CARD_FACTS:
            card.pop(key, None)
    data.setdefault("plausible_inner_ear_volume_mm3", PLAUSIBLE_VOLUME)
    return ModelSpec.from_dict(data, folder / "cascade.json"), card


def upgrade_model(model_dir: str | os.PathLike) -> Path:
    """Convert a format-1 model folder in place to format :data:`FORMAT_VERSION`; returns the folder.

    ``cascade.json`` gets ``format_version`` and the checks' references the card held; each
    ``stage.json`` states its stage number, input channels and the model's grid or voxel size
    where it did not; the card loses what ``cascade.json`` states. The networks are not touched.
    Everything is checked before anything is written (each file atomically, ``cascade.json``
    last). Refuses a folder that is already current (:class:`SegmentError`)."""
    folder = find_cascade(model_dir)
    spec_path = folder / "cascade.json"
    old = _read_json(spec_path, "cascade.json")
    if isinstance(old, dict) and "format_version" in old:
        if old["format_version"] == FORMAT_VERSION:
            raise SegmentError(folder, f"already model folder format version {FORMAT_VERSION}; nothing to convert")
        _check_version(folder, old)
    card_path = folder / "model_card.json"
    card = _read_json(card_path, "model_card.json") if card_path.is_file() else None
    spec, card = _upgraded(folder, old, card)
    stages = {}
    kind = {"grid": spec.grid} if spec.grid is not None else {"voxel_mm": json_round_trip(spec.voxel_mm)}
    for k, rel in enumerate(spec.stages):
        path = (folder / rel).resolve() / "stage.json"
        info = _read_json(path, "stage.json")
        stages[path] = {**{"stage": k + 1, "channels": k + 1, **kind}, **info}
        check_stage(path, stages[path], k, spec, spec_path)
    for path, info in stages.items():
        write_json(path, info)
    if card is not None:
        write_json(card_path, card)
    spec.write(folder)
    read_model_folder(folder, search=False)
    return folder
