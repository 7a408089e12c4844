"""The paper recipe's one training entry point: :func:`train_run` trains one run.

A *run* is one (profile, backbone, fold, stage order): a single-view baseline (one view) or
an auto-context cascade (several). :func:`train_run` loads the profile's cohort (prepared
specimens and folds, :func:`innerear.data.cohort.load_cohort`) unless given one, trains or
resumes the run with :func:`innerear.training.cascade.train_cascade` and returns a typed
:class:`RunResult`. Every caller of the paper recipe goes through it:

* ``innerear run`` and ``innerear train`` (:mod:`innerear.cli`);
* ``innerear reproduce``: its training tasks (:func:`innerear.reporting.pipeline.train_all`) start
  ``innerear run --job ...`` in a fresh process per group of runs, which calls it;
* the notebooks ``02_backbones`` and ``03_cascade_training``.

The shipped segmenter's robust recipe has its own single entry point,
:func:`innerear.training.robust.train_robust`. :func:`~innerear.training.cascade.train_cascade`
stays the mechanism underneath (given prepared cases and folds; the tests call it directly).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from innerear.data.cohort import Cohort, load_cohort
from innerear.settings.layout import runs_root, stage_dir
from innerear.settings.profiles import Profile, project_root
from innerear.training.cascade import train_cascade
from innerear.training.fit import ModelPool


@dataclass(frozen=True)
class RunResult:
    """One trained run: where it lies and each stage's record (its ``stage.json``)."""

    profile: str
    backbone: str
    fold: int
    order: tuple[str, ...]
    folder: Path  # the deepest stage's folder, holding cascade.json
    stages: tuple[dict[str, Any], ...]  # per stage: view, epochs, test_dice, mean_test_dice, seconds, ...

    @property
    def cascade(self) -> Path:
        """The run's ``cascade.json`` (what ``innerear segment --model`` loads)."""
        return self.folder / "cascade.json"


def _check_cohort(cohort: Cohort, profile: Profile, seed: int) -> None:
    """Refuse a cohort prepared for another grid or split with other folds than the run's."""
    theirs = (cohort.profile.grid, cohort.profile.n_folds, cohort.seed)
    if theirs != (profile.grid, profile.n_folds, seed):
        raise ValueError(f"the cohort (grid {theirs[0]}, {theirs[1]} folds, seed {theirs[2]}) does not match "
                         f"the run (grid {profile.grid}, {profile.n_folds} folds, seed {seed})")


def train_run(profile: Profile, fold: int, backbone: str, order: Sequence[str], seed: int = 0, *,
              root: str | os.PathLike | None = None, runs: str | os.PathLike | None = None,
              cohort: Cohort | None = None, verbose: bool = False, pool: ModelPool | None = None) -> RunResult:
    """Train (or resume, or just load) one run of the paper recipe and return its result.

    ``root`` is the project folder (default: :func:`~innerear.settings.profiles.project_root`);
    the run tree goes to ``runs`` (default ``<root>/runs``). ``cohort`` reuses specimens
    already loaded (several runs in one process); it must match ``profile`` and ``seed``. A
    shared ``pool`` reuses compiled networks (:class:`~innerear.training.fit.ModelPool`).
    """
    if cohort is None:
        cohort = load_cohort(profile, seed, root)
    _check_cohort(cohort, profile, seed)
    if runs is None:
        runs = runs_root(root if root is not None else project_root())
    summary = train_cascade(list(cohort.cases), cohort.folds, fold, backbone, order, profile, runs, seed=seed,
                            verbose=verbose, pool=pool)
    order = tuple(summary["order"])
    return RunResult(profile.name, backbone, fold, order, stage_dir(runs, profile, backbone, fold, order),
                     tuple(summary["stages"]))
