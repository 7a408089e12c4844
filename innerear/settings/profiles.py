"""Named profiles: one set of sizes per use (smoke tests, CPU demo, the paper's settings).

Every notebook, the command line and the tests pick a profile by name with
:func:`get_profile`; nothing else in the package hard-codes a size.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

BACKBONES = ("unet", "res_unet", "se_unet")
CONNECTIVITIES = (6, 18, 26)
#: how a model folder's networks run when segmenting: auto, ONNX Runtime, Keras
#: (:meth:`innerear.inference.modelfolder.ModelFolder.runtime`)
RUNTIMES = ("auto", "onnx", "keras")
BACKBONE_LABELS: dict[str, str] = {"unet": "U-Net", "res_unet": "ResU-Net", "se_unet": "SEU-Net"}
SE_MODES = ("authors", "standard")  # the SE block: the authors' scalar gate, or Hu et al.'s


def backbone_label(backbone: str, se_mode: str = "authors") -> str:
    """Row name of a backbone: ``"U-Net"``, ``"ResU-Net"``, ``"SEU-Net"``; an SEU-Net with the
    standard SE block (not the authors' network) is ``"SEU-Net (standard SE)"``."""
    try:
        label = BACKBONE_LABELS[backbone]
    except KeyError:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONE_LABELS)}") from None
    if backbone == "se_unet" and se_mode != "authors":
        if se_mode not in SE_MODES:
            raise ValueError(f"se_mode must be one of {SE_MODES}, got {se_mode!r}")
        label += f" ({se_mode} SE)"
    return label


@dataclass(frozen=True)
class PhantomSettings:
    """How the synthetic specimens are generated for a profile."""

    n_specimens: int
    # The phantoms carry the two protocols' voxel sizes (16.3 / 19.5 um) multiplied by
    # ``binning``: binning=1 is a full-resolution, paper-sized specimen.
    binning: int
    protocols_um: tuple[float, ...] = (16.3, 19.5)
    # share of specimens acquired with the second protocol (4 of 17 in Hear-EU)
    second_protocol_share: float = 4 / 17


@dataclass(frozen=True)
class Profile:
    """Sizes and training settings for one use of the pipeline."""

    name: str
    grid: int  # prepared volumes are grid**3 voxels
    base_filters: int
    depth: int
    batch_size: int
    max_epochs: int
    patience: int
    learning_rate: float
    phantoms: PhantomSettings
    n_folds: int = 4
    loss: str = "bce"  # "bce" (paper text) or "bce_dice" (authors' code)
    monitor: str = "loss"  # best model by training loss, as the paper did
    # Early stopping counts an epoch as an improvement only when the monitored loss falls
    # by more than min_delta (absolute, as Keras' EarlyStopping) below its value at the last
    # improvement; 0 = any fall. The best weights follow every fall regardless.
    min_delta: float = 0.0
    # Start each network's output at the training labels' foreground share (final bias =
    # logit of it) instead of 0.5; False = Keras' zero bias, as the authors' code.
    prior_bias: bool = False
    # Share of each earlier-stage mask erased (random balls) in the *training* inputs of
    # stages 2 and 3 (0 = the paper's plain masks); see cascade.drop_context.
    context_dropout: float = 0.0
    dropout: float = 0.2
    # The authors' SE block squeezes every level through one channel and learns too slowly
    # for the short CPU profiles (held-out Dice 0 in 5 of 8 demo runs); they use the
    # standard block of the paper's text.
    se_mode: str = "authors"  # "authors" (scalar gate) or "standard" (Hu et al.)
    # BatchNorm moving-average momentum: Keras' 0.99 needs hundreds of steps before the
    # inference-time statistics settle; the short CPU profiles use 0.9.
    bn_momentum: float = 0.99
    # ResU-Net / SEU-Net bottleneck: the plain U-Net block, as in the authors' code
    # (``resunet``/``senet`` in ``model_final.py``) and the paper's text (residual and SE
    # blocks "in down- and up-sampling layers"). False puts the residual / SE block there too.
    plain_bottleneck: bool = True
    # Largest-component step: 26 (face, edge or corner neighbours; our default, so that a
    # thin canal touching its neighbour only diagonally stays attached) or 6 (faces only:
    # scipy's default, which the authors' code uses through nipy's ``largest_cc``).
    connectivity: int = 26
    # Learning rate times ``factor`` after ``patience`` epochs without a lower training loss
    # (Keras' ReduceLROnPlateau); None: constant, as the paper's text. The authors' code:
    # (0.9, 10).
    lr_plateau: tuple[float, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.connectivity not in CONNECTIVITIES:
            raise ValueError(f"profile {self.name!r}: connectivity must be one of {CONNECTIVITIES} "
                             f"(3D neighbours), got {self.connectivity!r}")
        if self.lr_plateau is not None:
            factor, patience = self.lr_plateau
            if not 0.0 < float(factor) < 1.0 or int(patience) < 1:
                raise ValueError(f"profile {self.name!r}: lr_plateau must be (factor in (0, 1), "
                                 f"patience >= 1), got {self.lr_plateau!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for manifests and run records."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", grid=32, base_filters=4, depth=2, batch_size=20, max_epochs=2,
        patience=2, learning_rate=1e-3, bn_momentum=0.9, se_mode="standard",
        phantoms=PhantomSettings(n_specimens=8, binning=24),
    ),
    # demo: 64^3 is the smallest grid whose resampled labels keep Dice >= 0.90 against the
    # native ones (notebook 01 computes it); stages train until the training loss has not
    # fallen by 0.008 in 2 epochs (the cap of 40 is a safeguard, not the stopping rule).
    # Why (0.008, 2) and not (0.002, 3), which trains more than twice the epochs: most of the
    # held-out Dice comes in the first epochs while the loss keeps falling slowly. Demo stages replayed
    # epoch by epoch on their recorded inputs (benchmarks/bench_stopping.py, rendered on the
    # Performance page) measure what each rule's kept network scores; a full paired training
    # (benchmarks/bench_recipe.py) checks the per-method mean Dice. The faster rule is what fits
    # make reproduce into 30 minutes on two cores; it costs some methods about 0.01 of mean Dice
    # (the Performance page renders the paired record).
    "demo": Profile(
        name="demo", grid=64, base_filters=8, depth=3, batch_size=20, max_epochs=40,
        patience=2, min_delta=8e-3, learning_rate=1e-3, bn_momentum=0.9, se_mode="standard",
        prior_bias=True, context_dropout=0.3,
        phantoms=PhantomSettings(n_specimens=12, binning=8),
    ),
    "paper": Profile(
        name="paper", grid=256, base_filters=32, depth=3, batch_size=20, max_epochs=200,
        patience=10, learning_rate=1e-4,
        phantoms=PhantomSettings(n_specimens=17, binning=2),
    ),
}


def get_profile(name: str, **overrides: Any) -> Profile:
    """Return the named profile, optionally with some fields replaced."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
    return replace(profile, **overrides) if overrides else profile


# --------------------------------------------------------------------------- locations
def project_root(start: str | None = None) -> Path:
    """The project folder: ``$INNEREAR_HOME``, else the nearest parent holding ``_config.yml``
    and ``innerear/``, else the current folder (so notebooks work from ``notebooks/``)."""
    env = os.environ.get("INNEREAR_HOME")
    if env:
        return Path(env).resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").exists() and (folder / "innerear").is_dir():
            return folder
    return here


def default_data_dir(profile: str, root: Path | None = None) -> Path:
    """Real Hear-EU scans in ``data/hear-eu`` when present, else ``data/phantoms/<profile>``."""
    root = project_root() if root is None else root
    hear_eu = root / "data" / "hear-eu"
    if hear_eu.is_dir() and any(hear_eu.glob("*_label.*")):
        return hear_eu
    return root / "data" / "phantoms" / profile


def is_synthetic(data_dir: Path) -> bool:
    """True when ``data_dir`` holds the project's generated phantoms (it has their manifest)."""
    manifest = data_dir / "manifest.json"
    return manifest.exists() and json.loads(manifest.read_text()).get("synthetic", False)


def import_backend() -> None:
    """Import Keras and its TensorFlow backend without their native start-up lines on stderr.

    TensorFlow's C++ runtime writes absl/oneDNN notices ("All log messages before
    absl::InitializeLog() ...") to file descriptor 2 while it loads, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says; they are discarded here (Python's own errors are not
    affected: an import error is raised as usual). Later warnings are left alone.
    """
    import sys

    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
