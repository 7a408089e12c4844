"""Fitting a 2D network on slices of 3D volumes, with checkpoints that survive interruption.

A run folder holds ``last.keras`` (weights and optimizer state after the latest epoch),
``best.keras`` (the best epoch by the monitored loss), ``state.json`` (epoch, best value,
epochs without improvement), ``history.csv`` and, once finished, ``done.json``. Calling
:func:`fit` again on an unfinished folder resumes after the last completed epoch; on a
finished one it only loads the result.
"""
from __future__ import annotations

import csv
import io as _io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from innerear.io import atomic_path, sweep_temporaries, write_json
from innerear.nets.backend import set_seed
from innerear.nets.checkpoints import load_model
from innerear.nets.losses import make_loss
from innerear.settings.views import to_slices

# --------------------------------------------------------------------------- data
class SliceDataset:
    """The 2D training slices (h, w, channels) of 3D volumes, and their labels.

    ``inputs`` are (x, y, z, channels) float32 arrays, ``labels`` (x, y, z) binary arrays.
    :meth:`arrays` stacks every slice along ``orientation`` into two arrays for
    ``model.fit``, padded (by repeating the first slices) to a whole number of batches so
    that every batch has the same shape and the training step is compiled only once.
    """

    def __init__(
        self,
        inputs: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        orientation: str,
        batch_size: int = 20,
        shuffle: bool = True,
        seed: int = 0,
        view_axes: str = "ras",
    ) -> None:
        if len(inputs) != len(labels) or not inputs:
            raise ValueError("need the same, non-zero number of input volumes and labels")
        self.inputs = [to_slices(np.asarray(v, np.float32), orientation, view_axes) for v in inputs]
        self.labels = [to_slices(np.asarray(v, np.uint8), orientation, view_axes) for v in labels]
        for x, y in zip(self.inputs, self.labels):
            if x.shape[:3] != y.shape:
                raise ValueError(f"input slices {x.shape[:3]} and label slices {y.shape} differ")
        self.orientation = orientation
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)

    @property
    def n_slices(self) -> int:
        return sum(x.shape[0] for x in self.inputs)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        return int(np.ceil(self.n_slices / self.batch_size))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All slices as ``(x, y)`` arrays, padded to a whole number of batches."""
        x = np.concatenate(self.inputs, axis=0)
        y = np.concatenate(self.labels, axis=0)[..., None].astype(np.float32)
        pad = len(self) * self.batch_size - len(x)
        if pad and len(x) >= pad:
            x = np.concatenate([x, x[:pad]])
            y = np.concatenate([y, y[:pad]])
        return np.ascontiguousarray(x), np.ascontiguousarray(y)


# --------------------------------------------------------------------------- checkpoints
def _save_model_atomic(model: keras.Model, path: Path) -> None:
    with atomic_path(path, suffix=".tmp.keras") as tmp:
        model.save(tmp)


def _write_history(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0].keys())
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def read_history(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch history of a run folder (empty if none yet)."""
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


class RunKeeper(keras.callbacks.Callback):
    """Keeps the best weights, writes checkpoints, history and state; stops early on a plateau.

    Writing a ``.keras`` file takes about a second on a CPU, so checkpoints are written when
    ``checkpoint_seconds`` have passed since the last one (every epoch when epochs are long,
    as at the paper's sizes) and when training stops. An interrupted run resumes from the
    last checkpoint; the epochs after it are trained again.
    """

    def __init__(self, run_dir: Path, monitor: str, patience: int, state: dict, history: list[dict],
                 max_epochs: int, verbose: bool, checkpoint_seconds: float, min_delta: float = 0.0) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.state = state
        self.history = history
        self.max_epochs = max_epochs
        self.verbose = verbose
        self.checkpoint_seconds = checkpoint_seconds
        self.best_weights: list[np.ndarray] | None = None
        self._t0 = time.perf_counter()
        self._last_save = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = dict(logs or {})
        seconds = time.perf_counter() - self._t0
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}, "seconds": seconds})
        value = float(logs.get(self.monitor, np.inf))
        improved = value < self.state["best"]
        if improved:  # the best weights follow every improvement ...
            self.state.update(best=value, best_epoch=epoch)
            self.best_weights = self.model.get_weights()
        # ... but only a fall by ``min_delta`` below the last such improvement restarts the count
        ref = self.state.get("ref", self.state["best"] if not improved else np.inf)
        if not np.isfinite(ref) or value < ref - self.min_delta:
            self.state.update(ref=value, wait=0)
        else:
            self.state["wait"] += 1
        self.state["epoch"] = epoch
        stopping = self.state["wait"] >= self.patience or epoch + 1 >= self.max_epochs
        if stopping or time.perf_counter() - self._last_save >= self.checkpoint_seconds:
            self.checkpoint()
        if self.verbose:
            mark = " *" if improved else ""
            print(f"  epoch {epoch + 1}/{self.max_epochs} {self.monitor}={value:.4f} ({seconds:.1f} s){mark}", flush=True)
        if self.state["wait"] >= self.patience:
            self.model.stop_training = True

    def checkpoint(self) -> None:
        """Write best.keras, last.keras, history and state (state last, so it never runs ahead)."""
        if self.best_weights is not None:
            current = self.model.get_weights()
            self.model.set_weights(self.best_weights)
            _save_model_atomic(self.model, self.run_dir / "best.keras")
            self.model.set_weights(current)
        _save_model_atomic(self.model, self.run_dir / "last.keras")
        _write_history(self.run_dir / "history.csv", self.history)
        write_json(self.run_dir / "state.json", self.state)
        self._last_save = time.perf_counter()


@dataclass
class FitResult:
    """What :func:`fit` leaves behind."""

    model: keras.Model  # the best model, loaded from best.keras
    history: list[dict]
    epochs: int
    best_epoch: int
    seconds: float
    resumed_from: int | None
    stopped_by: str = "patience"  # or "max_epochs": the cap ended training, not the plateau


def set_output_prior(model: keras.Model, foreground_share: float | Sequence[float], layer: str = "mask") -> keras.Model:
    """Start the output at the data's class shares instead of 0.5 (or 1/k).

    A sigmoid output gets the bias logit(``foreground_share``) (the prior initialisation of
    Lin et al., focal loss, ICCV 2017); a softmax output over k classes gets
    log(share of each class), given as a sequence of k shares. With a zero bias every
    voxel starts at probability 0.5 and the first tens of epochs are spent learning that
    most voxels are background; with the prior they are not. Weights are unchanged.
    """
    bias = model.get_layer(layer).bias
    if np.ndim(foreground_share) == 0:
        share = float(np.clip(foreground_share, 1e-4, 0.5))
        values = np.full(bias.shape, np.log(share / (1.0 - share)))
    else:
        shares = np.clip(np.asarray(foreground_share, float), 1e-4, None)
        if shares.shape != tuple(bias.shape):
            raise ValueError(f"{len(shares)} class shares for an output of {bias.shape[0]} classes")
        values = np.log(shares / shares.sum())
    bias.assign(values.astype("float32"))
    return model


#: training steps run inside one compiled call: the backend loops over the batches itself
#: instead of returning to Python after each (a demo epoch at one thread: 3.63 s instead of
#: 3.99 s on this 2-core CPU, ``benchmarks/bench_train_speed.py``; bit-identical weights: the
#: same batches in the same order). Only per-batch callbacks would notice; training uses per-epoch ones.
STEPS_PER_EXECUTION = 64


def compile_for_training(model: keras.Model, learning_rate: float, loss: str) -> keras.Model:
    """Compile with Adam and ``loss``, and create the optimizer's slots right away.

    Creating the slots now, not inside the first traced step, saves the backend a second
    trace of the whole training step (~6 s per network on a CPU). Up to
    :data:`STEPS_PER_EXECUTION` steps run per compiled call.
    """
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=make_loss(loss),
                  steps_per_execution=STEPS_PER_EXECUTION)
    model.optimizer.build(model.trainable_variables)
    return model


class ModelPool:
    """Compiled networks kept for reuse by later trainings in the same process.

    Tracing a training step costs seconds per network on a CPU, more than a few epochs of a
    small one. Trainings of the same architecture (the same model config: another fold, or
    another stage with as many input channels) and optimizer settings reuse one compiled
    network: its variables are overwritten with a freshly built, seeded network's and the
    optimizer's state is zeroed, so the result is the same as training a new network (a
    test checks that the losses are identical).
    """

    def __init__(self) -> None:
        self._models: dict[tuple, keras.Model] = {}

    def get(self, fresh: keras.Model, learning_rate: float, loss: str) -> keras.Model:
        """A compiled network holding ``fresh``'s weights (``fresh`` itself the first time)."""
        key = (json.dumps(fresh.get_config(), sort_keys=True, default=str), float(learning_rate), loss)
        model = self._models.get(key)
        if model is None:
            self._models[key] = compile_for_training(fresh, learning_rate, loss)
            return fresh
        for target, source in zip(model.variables, fresh.variables):
            target.assign(source)
        for var in model.optimizer.variables:  # step count and moments to zero, the same rate
            is_rate = var.path.endswith("learning_rate")
            var.assign(keras.ops.full(var.shape, learning_rate if is_rate else 0, var.dtype))
        model.stop_training = False
        return model

    def __len__(self) -> int:
        return len(self._models)


def fit(
    build: Callable[[], keras.Model],
    train_data: SliceDataset | keras.utils.PyDataset,
    run_dir: str | os.PathLike,
    *,
    max_epochs: int,
    patience: int,
    learning_rate: float = 1e-4,
    loss: str = "bce",
    monitor: str = "loss",
    val_data: SliceDataset | None = None,
    seed: int = 0,
    verbose: bool = False,
    checkpoint_seconds: float = 30.0,
    pool: ModelPool | None = None,
    min_delta: float = 0.0,
    lr_plateau: tuple[float, int] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FitResult:
    """Train (or resume, or just load) a network in ``run_dir`` and return the best model.

    ``monitor="loss"`` keeps the epoch with the lowest training loss, as the paper did;
    ``"val_loss"`` needs ``val_data``. Training stops after ``patience`` epochs in which the
    monitored loss did not fall by more than ``min_delta`` (absolute, in the loss's units, as
    Keras' ``EarlyStopping``) below its value at the last such improvement, or at ``max_epochs``;
    ``done.json`` records which (``stopped_by``: ``"patience"`` or ``"max_epochs"``). With a ``pool`` a compiled network of the same
    architecture is reused instead of tracing a new one.
    ``lr_plateau=(factor, patience)`` multiplies the learning rate by ``factor`` after
    ``patience`` epochs without a lower training loss (Keras' ``ReduceLROnPlateau``, as the
    authors' code with (0.9, 10)); the lowered rate is saved with the optimizer, the plateau
    counter restarts on resume. ``callbacks`` run after the run's own at every epoch (e.g. to
    score each epoch's network, as ``benchmarks/bench_stopping.py`` does).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(run_dir, recursive=False)  # a killed run's half-written checkpoints
    if (run_dir / "done.json").exists():
        return _finished(run_dir)
    if monitor == "val_loss" and val_data is None:
        raise ValueError("monitor='val_loss' needs val_data")
    t0 = time.perf_counter()
    model, state, history, initial_epoch, resumed_from = _start_or_resume(
        build, run_dir, seed, monitor, learning_rate, loss, pool, verbose)
    keeper = RunKeeper(run_dir, monitor, patience, state, history, max_epochs, verbose, checkpoint_seconds,
                       min_delta)
    if state["wait"] < patience and initial_epoch < max_epochs:
        _run_epochs(model, train_data, val_data, [keeper, *callbacks], max_epochs, initial_epoch, lr_plateau)
    if keeper.best_weights is not None:
        model.set_weights(keeper.best_weights)
        _save_model_atomic(model, run_dir / "best.keras")
    else:  # resumed and never improved: the best model is the one on disk
        model = load_model(run_dir / "best.keras")
    state["seconds"] = state.get("seconds", 0.0) + time.perf_counter() - t0
    write_json(run_dir / "state.json", state)
    stopped_by = "patience" if state["wait"] >= patience else "max_epochs"
    write_json(run_dir / "done.json", {
        "epochs": state["epoch"] + 1, "best_epoch": state["best_epoch"], "best": state["best"], "monitor": monitor,
        "seconds": state["seconds"], "seed": seed, "learning_rate": learning_rate, "loss": loss, "patience": patience,
        "min_delta": min_delta, "max_epochs": max_epochs, "stopped_by": stopped_by,
        "lr_plateau": None if lr_plateau is None else list(lr_plateau)})
    (run_dir / "last.keras").unlink(missing_ok=True)  # the finished run keeps only its best model
    return FitResult(model, history, state["epoch"] + 1, state["best_epoch"], state["seconds"], resumed_from,
                     stopped_by)


def _finished(run_dir: Path) -> FitResult:
    """The result of a finished run folder (``done.json``), loaded."""
    info = json.loads((run_dir / "done.json").read_text())
    return FitResult(load_model(run_dir / "best.keras"), read_history(run_dir), info["epochs"],
                     info["best_epoch"], info["seconds"], None, info.get("stopped_by", "unknown"))


def _start_or_resume(build: Callable[[], keras.Model], run_dir: Path, seed: int, monitor: str, learning_rate: float,
                     loss: str, pool: ModelPool | None, verbose: bool):
    """``(model, state, history, initial_epoch, resumed_from)``: the checkpoint after the last
    completed epoch when the folder has one, else a freshly built, seeded and compiled network."""
    state_path = run_dir / "state.json"
    if state_path.exists() and (run_dir / "last.keras").exists() and (run_dir / "best.keras").exists():
        state = json.loads(state_path.read_text())
        set_seed(seed + 1000 * (state["epoch"] + 1))
        model = load_model(run_dir / "last.keras")
        history = read_history(run_dir)[: state["epoch"] + 1]
        initial_epoch = state["epoch"] + 1
        if verbose:
            print(f"  resuming {run_dir} after epoch {initial_epoch}", flush=True)
        return model, state, history, initial_epoch, initial_epoch
    set_seed(seed)
    model = build()
    model = pool.get(model, learning_rate, loss) if pool is not None else compile_for_training(model, learning_rate, loss)
    state = {"epoch": -1, "best": float("inf"), "best_epoch": -1, "wait": 0, "monitor": monitor, "seconds": 0.0}
    return model, state, [], 0, None


def _run_epochs(model: keras.Model, train_data, val_data: SliceDataset | None,
                callbacks: list[keras.callbacks.Callback], max_epochs: int, initial_epoch: int,
                lr_plateau: tuple[float, int] | None) -> None:
    """Keras' training loop from ``initial_epoch``, with the keeper (checkpoints, early stopping) first."""
    streamed = isinstance(train_data, keras.utils.PyDataset)  # batches made on the fly (augmented)
    x, y = (train_data, None) if streamed else train_data.arrays()
    validation = val_data.arrays() if val_data is not None else None
    callbacks = list(callbacks)
    if lr_plateau is not None:  # first, so that the epoch's log (history.csv) holds the rate
        factor, lr_patience = lr_plateau
        callbacks.insert(0, keras.callbacks.ReduceLROnPlateau(
            monitor="loss", factor=float(factor), patience=int(lr_patience), min_delta=1e-5, mode="min"))
    if streamed:
        model.fit(x, validation_data=validation, epochs=max_epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=0)
    else:
        model.fit(x, y, batch_size=train_data.batch_size, shuffle=train_data.shuffle, validation_data=validation,
                  epochs=max_epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=0)
