"""A stage network as ONNX: exported from its ``.keras`` file, run with ONNX Runtime.

``innerear segment`` on a CPU spends most of its start-up importing TensorFlow (about 4 s on a
2-core machine) and loading and tracing three Keras models (2-3 s): more than the 30 mm block's
whole goal of 5 s (issue 25). A model folder can therefore hold, beside each stage's
``best.keras``, the same network exported with Keras' own ``model.export(format="onnx")``
(``best.onnx``); ONNX Runtime loads it in milliseconds and predicts without importing Keras.

The export takes a multi-class network's closing softmax over the last axis, after tf2onnx's
layout transpose (:func:`softmax_last`): the same probabilities bit for bit, at a third of the cost.

The ONNX file records the SHA-256 of the ``.keras`` file it was exported from, the network's
pooling factor and output classes (ONNX metadata). :func:`load_onnx` refuses a file whose
``.keras`` has changed since: an answer from a stale export would not be the model's.
The Keras network stays the source of truth (training, the notebooks, a GPU); the ONNX
copy is how the shipped segmenter runs on a CPU. A test checks that both give the same
probabilities (to 1e-4) and masks.

Each network is opened as :data:`SESSIONS` sessions that share the cores (two 1-thread sessions
on a 2-core machine) and take a stage's batches side by side (:meth:`OnnxNet.submit`):
ONNX Runtime's threads within one convolution scale poorly on the small rectangles that later
stages predict, two batches at once keep both cores busy. The answers do not depend on it (each
batch is computed whole by one session).
"""
from __future__ import annotations

import hashlib
import os
import queue
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from innerear.settings.threads import cores

__all__ = ["OnnxNet", "StaleExport", "check_export", "export_onnx", "load_onnx", "onnx_path", "onnxruntime_available",
           "recorded_sha256", "sha256", "softmax_last"]

#: ONNX Runtime sessions per network, each with its share of the cores, that predict a stage's batches
#: side by side: on a 2-core machine two 1-thread sessions ran the 30 mm block's 129 batches in 1.89 s
#: where one 2-thread session took 2.23 s (median of 5, interleaved; 2026-12-05): intra-op threads
#: scale poorly on the small rectangles of the later stages
SESSIONS = 2
#: the largest difference of a probability between a network and its export that :func:`check_export` accepts
EXPORT_TOLERANCE = 1e-4

#: the ONNX file of a stage beside its ``best.keras``
ONNX_NAME = "best.onnx"


class StaleExport(ValueError):
    """An ONNX file that was not exported from the ``.keras`` file beside it (or has no record of it)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def onnx_path(keras_path: str | os.PathLike) -> Path:
    """Where a stage's ONNX export lives: ``best.onnx`` beside ``best.keras``."""
    return Path(keras_path).with_name(ONNX_NAME)


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(keras_path: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Export a saved stage network to ONNX (``best.onnx`` beside it unless ``dest``), written atomically.

    Uses Keras' ``model.export(format="onnx")`` (tf2onnx under TensorFlow) with dynamic batch
    and slice sizes; the file's metadata records the source's SHA-256, pooling factor and classes.
    The export is checked before it is renamed into place: its probabilities must be those of the
    network within :data:`EXPORT_TOLERANCE` (:class:`StaleExport` otherwise, nothing written).
    """
    import keras
    import onnx

    from innerear.io import atomic_path  # lazy: only an export writes
    from innerear.nets.checkpoints import load_model  # lazy: Keras, which running an export does without
    from innerear.nets.shape import output_classes, pooling_factor  # lazy: as above

    keras_path = Path(keras_path)
    dest = Path(dest) if dest is not None else onnx_path(keras_path)
    model = load_model(keras_path, compile=False)
    pooling = pooling_factor(model)
    # Keras exports only a network that has been called
    model(np.zeros((1, 2 * pooling, 2 * pooling, _channels(model)), np.float32), training=False)
    meta = {"innerear_keras_sha256": sha256(keras_path), "innerear_pooling": str(pooling),
            "innerear_classes": str(output_classes(model)), "innerear_backend": keras.backend.backend()}
    with atomic_path(dest, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter's deprecation notices about TensorFlow and NumPy
        model.export(str(tmp), format="onnx", verbose=False)
        proto = onnx.load(str(tmp))
        softmax_last(proto)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        _check(model, _session(tmp), pooling, dest, keras_path)
    return dest


def softmax_last(proto) -> bool:
    """Move a multi-class network's closing softmax behind its layout transpose, in place: ``True``
    if the graph was changed.

    tf2onnx computes the network in channels-first layout and ends it with ``Softmax(axis=1)`` and a
    ``Transpose`` back to channels-last. ONNX Runtime computes a softmax over a middle axis by
    transposing to it and back, which made the softmax over 4 classes 14 % of a stage network's time
    (53 of 380 ms for 8 slices of 208² on one AVX2 core, 2026-12-06). Transposing first and taking
    the softmax over the last axis gives the same numbers, since each pixel's softmax sees the same
    four values in the same order, for about a third of the cost.
    """
    from onnx import helper

    nodes = proto.graph.node
    outputs = {o.name for o in proto.graph.output}
    for k in range(len(nodes) - 1):
        softmax, transpose = nodes[k], nodes[k + 1]
        if (softmax.op_type != "Softmax" or transpose.op_type != "Transpose"
                or list(transpose.input) != [softmax.output[0]] or transpose.output[0] not in outputs
                or _attribute(softmax, "axis") != 1 or _attribute(transpose, "perm") != [0, 2, 3, 1]
                or sum(softmax.output[0] in n.input for n in nodes) != 1):
            continue
        logits, between, probabilities = softmax.input[0], softmax.output[0], transpose.output[0]
        first = helper.make_node("Transpose", [logits], [between], name=transpose.name, perm=[0, 2, 3, 1])
        second = helper.make_node("Softmax", [between], [probabilities], name=softmax.name, axis=3)
        nodes[k].CopyFrom(first)
        nodes[k + 1].CopyFrom(second)
        return True
    return False


def _attribute(node, name: str):
    """A node attribute's value (a list for a list attribute; None if the node has none of that name)."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return list(value) if isinstance(value, (list, tuple)) else value
    return None


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 of the ``.keras`` file an ONNX export records (None: no record)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}.get("innerear_keras_sha256")


def _channels(model) -> int:
    return int(model.inputs[0].shape[-1])


def _check(model, session, pooling: int, path: Path, keras_path: Path, seed: int = 0) -> float:
    """The largest difference between the network's and an ONNX session's probabilities on random
    slices of two sizes; raises :class:`StaleExport` (naming ``path``) above :data:`EXPORT_TOLERANCE`."""
    import keras

    rng = np.random.default_rng(seed)
    name = session.get_inputs()[0].name
    worst = 0.0
    for h, w in ((2 * pooling, 3 * pooling), (5 * pooling, 4 * pooling)):
        x = rng.standard_normal((2, h, w, _channels(model))).astype(np.float32)
        ref = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float32)
        worst = max(worst, float(np.abs(session.run(None, {name: x})[0] - ref).max()))
    if worst > EXPORT_TOLERANCE:
        raise StaleExport(path, f"answers differ from {keras_path.name} by {worst:.2g} (tolerance "
                                f"{EXPORT_TOLERANCE:g})")
    return worst


def check_export(keras_path: str | os.PathLike, seed: int = 0) -> float:
    """The largest difference between a saved network's and its ONNX export's probabilities (the
    export beside it, which must record it); raises :class:`StaleExport` above :data:`EXPORT_TOLERANCE`."""
    from innerear.nets.checkpoints import load_model  # lazy: Keras, which running an export does without

    net = load_onnx(keras_path)
    return _check(load_model(keras_path, compile=False), net.session, net.pooling, net.path, Path(keras_path), seed)


@dataclass
class OnnxNet:
    """A stage network in ONNX Runtime, with the few things the engine asks of a Keras model:
    ``predict_on_batch`` (and a call) on ``(n, h, w, c)`` float32 slices, its pooling factor,
    output classes and input channels; and :meth:`submit`, which starts a batch on the next free
    one of its sessions (``session`` and ``workers``, sessions of the same file) and returns at once,
    so that the caller prepares the next batches while the sessions compute."""

    session: Any
    path: Path
    pooling: int
    classes: int
    channels: int
    workers: tuple = ()
    _pool: ThreadPoolExecutor = field(init=False, repr=False, compare=False)
    _free: queue.SimpleQueue = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sessions = (self.session, *self.workers)
        self._free = queue.SimpleQueue()
        for session in sessions:
            self._free.put(session)
        # one thread per session (started on the first submit): a task always finds a session free
        self._pool = ThreadPoolExecutor(len(sessions), thread_name_prefix=f"onnx-{self.path.parent.name}")

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, h, w, classes)`` for a batch of slices."""
        return _run(self.session, batch)

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        return self.predict_on_batch(batch)

    def submit(self, batch: np.ndarray) -> Future:
        """Start predicting a batch on the next free session; the future holds its probabilities.
        ONNX Runtime releases the GIL while it runs, so the sessions compute side by side."""
        return self._pool.submit(self._on_free_session, batch)

    def _on_free_session(self, batch: np.ndarray) -> np.ndarray:
        session = self._free.get()
        try:
            return _run(session, batch)
        finally:
            self._free.put(session)


def _run(session, batch: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def _session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime session on the CPU with ``threads`` intra-op threads (None: ONNX Runtime's default,
    all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_onnx(keras_path: str | os.PathLike, threads: int | None = None, sessions: int | None = None) -> OnnxNet:
    """The ONNX export beside ``keras_path`` in ONNX Runtime: ``sessions`` sessions (default
    :data:`SESSIONS`, at most one per core) sharing ``threads`` cores (default ``$INNEREAR_THREADS``
    or all this process may use). Raises :class:`StaleExport` when the export does not record
    ``keras_path``'s current SHA-256."""
    keras_path = Path(keras_path)
    path = onnx_path(keras_path)
    threads = int(threads or cores())
    count = max(1, min(int(sessions or SESSIONS), threads))
    each = max(1, threads // count)  # intra-op threads per session
    session = _session(path, each)
    meta = session.get_modelmeta().custom_metadata_map
    recorded = meta.get("innerear_keras_sha256")
    if recorded is None:
        raise StaleExport(path, "no record of the .keras file it was exported from; export it again "
                                "(innerear export-onnx FOLDER) or delete it")
    if recorded != sha256(keras_path):
        raise StaleExport(path, f"exported from a different {keras_path.name} than the one beside it; "
                                "export it again (innerear export-onnx FOLDER) or delete it")
    channels = int(session.get_inputs()[0].shape[-1])
    workers = tuple(_session(path, each) for _ in range(count - 1))
    return OnnxNet(session, path, int(meta["innerear_pooling"]), int(meta["innerear_classes"]), channels, workers)
