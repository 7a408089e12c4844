"""Loading saved networks: Keras' safe mode, the package's custom layers and losses registered."""
from __future__ import annotations
import os
import keras


def load_model(path: str | os.PathLike, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file with Keras' safe mode on (``compile=False``: without loss and optimizer)."""
    from innerear.nets import backbones  # noqa: F401  (registers the custom layers)

    return keras.saving.load_model(str(path), safe_mode=True, compile=compile)


def save_for_inference(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy a trained ``.keras`` file without its optimizer state (a third of the size for Adam)."""
    model = load_model(src, compile=False)
    model.save(str(dest))
