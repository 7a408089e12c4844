"""A profile's cohort: its prepared specimens and their cross-validation folds, in one call.

Every caller of the paper recipe (``innerear run``/``train``/``reproduce``, the notebooks,
:func:`innerear.training.paper.train_run`) starts the same way: prepare (or load from the
cache) the data folder's specimens at the profile's grid, then split them into the profile's
folds with the run's seed. :func:`load_cohort` is that step; nothing here imports Keras.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from innerear.data.preprocess import PreparedCase, make_folds, prepare_dataset, split_fold
from innerear.settings.layout import cache_dir
from innerear.settings.profiles import Profile, default_data_dir, get_profile, is_synthetic, project_root


@dataclass(frozen=True)
class Cohort:
    """The specimens a profile trains and tests on, prepared at its grid, and its folds."""

    profile: Profile
    seed: int  # the seed the folds were drawn with
    data_dir: Path
    cases: tuple[PreparedCase, ...]
    folds: list[list[str]]  # held-out specimens of each fold

    @property
    def by_id(self) -> dict[str, PreparedCase]:
        """The prepared specimens by case id."""
        return {c.case_id: c for c in self.cases}

    @property
    def ids(self) -> list[str]:
        """The case ids, sorted."""
        return sorted(c.case_id for c in self.cases)

    @property
    def synthetic(self) -> bool:
        """True when the data folder holds the project's generated phantoms."""
        return is_synthetic(self.data_dir)

    def split(self, fold: int) -> tuple[list[str], list[str]]:
        """``(train_ids, test_ids)`` of one fold."""
        return split_fold(self.ids, self.folds, fold)


def load_cohort(profile: Profile | str, seed: int = 0, root: str | os.PathLike | None = None, *,
                data_dir: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                progress: bool = False, label_values: Sequence[int] | None = None) -> Cohort:
    """Prepare (or load cached) a data folder's specimens at ``profile``'s grid and draw its folds.

    ``data_dir`` defaults to the project's data (:func:`~innerear.settings.profiles.default_data_dir`
    under ``root``, default :func:`~innerear.settings.profiles.project_root`), ``cache`` to
    ``<root>/data/cache/<profile>-<grid>``. ``label_values`` picks the foreground of multi-label
    maps (:func:`innerear.data.preprocess.binary_label`).
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    if data_dir is None or cache is None:
        root = Path(root) if root is not None else project_root()
    data = Path(data_dir) if data_dir is not None else default_data_dir(profile.name, root)
    cache = Path(cache) if cache is not None else cache_dir(root, profile)
    cases = prepare_dataset(data, profile.grid, cache, progress=progress, label_values=label_values)
    folds = make_folds([c.case_id for c in cases], profile.n_folds, seed)
    return Cohort(profile, seed, data, tuple(cases), folds)
