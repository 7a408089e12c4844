"""The Keras backend's global switches: seeds (and deterministic ops) and CPU threads."""
from __future__ import annotations

import os

import keras


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the backend; on TensorFlow also ask for deterministic ops."""
    keras.utils.set_random_seed(int(seed))
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # backend-specific switch, only when that backend is active

        tf.config.experimental.enable_op_determinism()


def set_threads(n: int) -> None:
    """Limit the backend's CPU threads (call before the first model is built)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError:  # the runtime is already initialised in this process
            pass
