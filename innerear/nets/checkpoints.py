"""Loading saved networks: Keras' safe mode, with the package's custom layers and losses registered.

Importing :mod:`innerear.nets.backbones` and :mod:`innerear.nets.losses` registers their
serialisable objects with Keras, so a saved ``.keras`` file loads by name, compiled or not.
"""
from __future__ import annotations

import os
from pathlib import Path

import keras

from innerear.nets import losses  # noqa: F401  (registers the losses a compiled network was saved with)
from innerear.nets.backbones import build_for_profile
from innerear.settings.profiles import Profile


def load_model(path: str | os.PathLike, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file with Keras' safe mode on (``compile=False``: without loss and optimizer)."""
    return keras.saving.load_model(str(path), safe_mode=True, compile=compile)


def save_for_inference(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy a trained ``.keras`` file without its optimizer state (a third of the size for Adam)."""
    model = load_model(src, compile=False)
    model.save(str(dest))


def run_network(run_dir: str | os.PathLike, backbone: str, channels: int, profile: Profile) -> tuple[keras.Model, str]:
    """The network a run trained, and where it came from.

    The run's own saved model (``best.keras``, which holds its configuration) when the run
    exists; otherwise the network the profile would build, and the second value says so.
    """
    path = Path(run_dir) / "best.keras"
    if path.exists():
        return load_model(path), f"the saved model of this run (`{path.name}` in `{Path(run_dir).name}/`)"
    return (build_for_profile(backbone, channels, profile),
            f"built from profile `{profile.name}`'s configuration (no trained run found)")
