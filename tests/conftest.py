"""Shared fixtures: quiet TensorFlow, small synthetic volumes."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_tube_volume(shape=(40, 36, 32), radius=2.5, seed=0):
    """A dark tube (label) bent through bright 'bone', with a dark look-alike blob beside it."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    cx = shape[0] / 2 + 6 * np.sin(z / shape[2] * np.pi)
    label = ((x - cx) ** 2 + (y - shape[1] / 2) ** 2 <= radius**2).astype(np.uint8)
    blob = (x - 6) ** 2 + (y - 6) ** 2 + (z - shape[2] / 2) ** 2 <= 9
    image = np.full(shape, 2000.0) - 1500.0 * label - 1500.0 * blob + rng.normal(0, 50, shape)
    return image.astype(np.float32), label
