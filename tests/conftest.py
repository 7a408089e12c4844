"""Shared fixtures: quiet TensorFlow, small synthetic volumes."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the tests in one worker process per core (pytest-xdist): one thread each,
    # as `innerear reproduce` runs its training workers, so the workers do not oversubscribe the cores
    for _var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

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


def make_prepared_cases(n=4, shape=(16, 16, 16)):
    """``n`` tube volumes as prepared cases c0..c{n-1} (0.1 mm voxels, no structure map)."""
    from innerear.data import preprocess as pp

    cases = []
    for i in range(n):
        img, lab = make_tube_volume(shape, seed=i)
        cases.append(pp.PreparedCase(f"c{i}", img, lab, None, (0.1, 0.1, 0.1), np.diag([0.1, 0.1, 0.1, 1]),
                                     shape, np.eye(4)))
    return cases
