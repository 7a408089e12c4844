"""The Keras backend's global switches: seeds (and deterministic ops), CPU threads, and its log."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the backend; on TensorFlow also ask for deterministic ops."""
    import keras  # lazy: an ONNX-only segmentation imports this module without Keras

    keras.utils.set_random_seed(int(seed))
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # backend-specific switch, only when that backend is active

        tf.config.experimental.enable_op_determinism()


def set_threads(n: int) -> None:
    """Limit the backend's CPU threads (call before the first model is built; JAX sizes its pool by the
    cores the process may use, so pin the process instead)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError:  # the runtime is already initialised in this process
            pass
    elif keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(n)


@contextlib.contextmanager
def quiet_retracing() -> Iterator[None]:
    """Within the block, TensorFlow's Python log shows errors only, then its level is restored.

    The cascade predicts rectangles of many sizes through one shape-generic predict step per
    network, and three networks (six with mirroring) trace it a few times per scan; TensorFlow then
    logs "N out of the last M calls ... triggered tf.function retracing", advice meant for a
    training loop that retraces every step, which a reader of the Python-API page took for a fault.
    """
    log = logging.getLogger("tensorflow")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(level)
