"""Intensity normalisers: z-scoring with the training fold's statistics (the paper), per-scan percentile
normalisation (the robust recipe), their JSON form, and histograms of normalised scans (the
segmenter's check of a scan against its training data)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from innerear.settings.threads import cores


@dataclass(frozen=True)
class Normalizer:
    """Z-scoring with statistics from the training volumes of one fold only."""

    mean: float
    std: float

    def __call__(self, volume: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """``volume`` z-scored (the statistics are the training fold's: ``reference`` changes nothing)."""
        return ((np.asarray(volume, np.float32) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": "zscore", "mean": self.mean, "std": self.std}


def fit_normalizer(volumes: Iterable[np.ndarray]) -> Normalizer:
    """Mean and standard deviation over all voxels of the given (training) volumes."""
    n = 0
    s = 0.0
    ss = 0.0
    for v in volumes:
        v = np.asarray(v, np.float64)
        n += v.size
        s += float(v.sum())
        ss += float(np.square(v).sum())
    if n == 0:
        raise ValueError("no training volumes to fit the normaliser on")
    mean = s / n
    std = float(np.sqrt(max(ss / n - mean * mean, 0.0)))
    if std == 0:
        raise ValueError("training volumes are constant; cannot z-score")
    return Normalizer(mean=float(mean), std=std)


#: voxels :class:`PercentileNormalizer` and :func:`normalised_histogram` read at most (a regular stride)
PERCENTILE_SAMPLES = 1 << 21


def strided_sample(volume: np.ndarray, max_samples: int | None = PERCENTILE_SAMPLES) -> np.ndarray:
    """At most about ``max_samples`` voxels of ``volume`` on a regular grid (every ``k``-th voxel
    along each axis), as a flat float32 array; the whole volume when it is that small or
    ``max_samples`` is None. Non-finite voxels are left out.

    A regular stride reads a memory-mapped scan without copying it whole and, unlike a random
    draw, gives the same sample on every call."""
    sample = np.asarray(strided_view(volume, max_samples), np.float32).ravel()
    return sample[np.isfinite(sample)]


def strided_view(volume: np.ndarray, max_samples: int | None = PERCENTILE_SAMPLES) -> np.ndarray:
    """The regular grid of voxels :func:`strided_sample` reads (every ``k``-th along each axis; every
    voxel when ``max_samples`` is None), as a view of ``volume``, non-finite voxels included."""
    volume = np.asanyarray(volume)
    if max_samples is None:
        return volume
    k = max(1, int(np.ceil((volume.size / max(1, max_samples)) ** (1.0 / max(1, volume.ndim)))))
    return volume[(slice(None, None, k),) * volume.ndim]


def normalised_sample(normalizer, volume: np.ndarray, box: tuple[slice, ...] | None = None,
                      max_samples: int = PERCENTILE_SAMPLES) -> np.ndarray:
    """``strided_sample(normalizer(volume)[box], max_samples)`` without normalising the whole volume:
    the sample's voxels, normalised with the whole volume's statistics (the same numbers; a check
    of a 208³ scan's histogram normalised 9 million voxels to read 1 million)."""
    part = volume if box is None else np.asanyarray(volume)[box]
    return strided_sample(normalizer(strided_view(part, max_samples), reference=volume), None)


@dataclass(frozen=True)
class PercentileNormalizer:
    """Per-scan robust normalisation: the scan's ``low`` and ``high`` percentiles map to
    ``low_value`` and ``high_value`` (0 and 1), so neither the intensity units nor an offset
    (uint16 counts, Hounsfield units, float) changes the result.

    The percentiles come from a regular subsample of at most ``max_samples`` voxels
    (:func:`strided_sample`; memory stays small on big scans). With ``soft_clip`` (in output
    units) values beyond the ``[low_value, high_value]`` span are compressed smoothly,
    ``excess -> soft_clip * tanh(excess / soft_clip)``, so metal or air far outside the
    percentiles stays within ``soft_clip`` of the span; ``None`` leaves the mapping linear.
    """

    low: float = 0.5
    high: float = 99.5
    low_value: float = 0.0
    high_value: float = 1.0
    soft_clip: float | None = 0.5
    max_samples: int = PERCENTILE_SAMPLES

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")
        if not self.low_value < self.high_value:
            raise ValueError(f"low_value must be below high_value, got {self.low_value}, {self.high_value}")
        if self.soft_clip is not None and not self.soft_clip > 0:
            raise ValueError(f"soft_clip must be positive or None, got {self.soft_clip}")

    def percentiles(self, volume: np.ndarray) -> tuple[float, float]:
        """The scan's ``(low, high)`` percentile intensities (from the subsample)."""
        sample = strided_sample(volume, self.max_samples)
        if sample.size == 0:
            raise ValueError("cannot normalise a volume without finite voxels")
        lo, hi = np.percentile(sample, [self.low, self.high])
        if not hi > lo:  # a volume mostly of one value: fall back to the full range
            lo, hi = float(sample.min()), float(sample.max())
        if not hi > lo:
            raise ValueError("cannot normalise a constant volume")
        return float(lo), float(hi)

    def __call__(self, volume: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """``volume`` normalised with its own percentiles, or with those of ``reference`` (the scan that
        ``volume`` is a part or a sample of)."""
        lo, hi = self.percentiles(volume if reference is None else reference)
        volume = np.asarray(volume)
        out = np.empty(volume.shape, np.float32)
        # voxel by voxel: slabs of the first axis on the cores side by side (NumPy releases the GIL)
        parts = min(cores(), len(volume)) if volume.ndim else 1
        if parts <= 1:
            self._map(volume, out, lo, hi)
            return out
        bounds = np.linspace(0, len(volume), parts + 1).astype(int)
        with ThreadPoolExecutor(parts) as pool:
            list(pool.map(lambda a, b: self._map(volume[a:b], out[a:b], lo, hi), bounds[:-1], bounds[1:]))
        return out

    def _map(self, volume: np.ndarray, out: np.ndarray, lo: float, hi: float) -> None:
        """:meth:`__call__`'s mapping of ``volume`` into ``out`` (float32, the same shape)."""
        scale = (self.high_value - self.low_value) / (hi - lo)
        np.subtract(volume, np.float32(lo), out=out, dtype=np.float32, casting="unsafe")
        out *= np.float32(scale)
        out += np.float32(self.low_value)
        if self.soft_clip is not None:
            c = np.float32(self.soft_clip)
            flat = out.reshape(-1)
            below = np.flatnonzero(flat < self.low_value)
            flat[below] = self.low_value - c * np.tanh((self.low_value - flat[below]) / c)
            above = np.flatnonzero(flat > self.high_value)
            flat[above] = self.high_value + c * np.tanh((flat[above] - self.high_value) / c)

    def to_dict(self) -> dict:
        return {"kind": "percentile", "low": self.low, "high": self.high, "low_value": self.low_value,
                "high_value": self.high_value, "soft_clip": self.soft_clip, "max_samples": self.max_samples}


NORMALIZER_KINDS = ("zscore", "percentile")


def normalizer_from_dict(d: dict) -> Normalizer | PercentileNormalizer:
    """The normaliser a ``to_dict()`` describes: ``"kind"`` ``"percentile"`` or ``"zscore"`` (a
    dict without ``"kind"``, as written before it existed, is the z-score ``{"mean", "std"}``).
    Raises :class:`ValueError` naming what is wrong."""
    if not isinstance(d, dict):
        raise ValueError(f"normalizer must be a JSON object, got {type(d).__name__}")
    fields = {k: v for k, v in d.items() if k != "kind"}
    kind = d.get("kind", "zscore")
    if kind == "zscore":
        missing = [k for k in ("mean", "std") if k not in fields]
        if missing:
            raise ValueError(f"z-score normalizer lacks {'/'.join(missing)}")
        return Normalizer(mean=float(fields["mean"]), std=float(fields["std"]))
    if kind == "percentile":
        unknown = sorted(set(fields) - set(PercentileNormalizer.__dataclass_fields__))
        if unknown:
            raise ValueError(f"percentile normalizer has unknown fields {unknown}")
        return PercentileNormalizer(**fields)
    raise ValueError(f"unknown normalizer kind {kind!r}; expected one of {list(NORMALIZER_KINDS)}")


#: the normalised-intensity range :func:`normalised_histogram` covers (the percentile span is 0..1)
HISTOGRAM_RANGE = (-0.5, 1.5)


def normalised_histogram(volume_norm: np.ndarray, bins: int | Sequence[float] = 80,
                         value_range: tuple[float, float] = HISTOGRAM_RANGE,
                         max_samples: int | None = PERCENTILE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, density)`` of a normalised volume's intensities (``np.histogram(density=True)``).

    ``bins`` is a number of equal bins over ``value_range`` or the edges themselves; values
    beyond the range count in the first or last bin, so the density always integrates to 1.
    Read from a regular subsample (:func:`strided_sample`). Training writes it into the model
    card (``"intensity_histogram": {"edges", "density"}``), ``innerear segment`` compares the
    scan's with it (:func:`histogram_distance`).
    """
    sample = strided_sample(volume_norm, max_samples)
    edges = np.linspace(*value_range, int(bins) + 1) if np.ndim(bins) == 0 else np.asarray(bins, float)
    if sample.size == 0:
        raise ValueError("no finite voxel to make a histogram of")
    density, edges = np.histogram(np.clip(sample, edges[0], edges[-1]), bins=edges, density=True)
    return edges, density


def _histogram_pair(h) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(h, dict):
        h = (h["edges"], h["density"])
    edges, density = (np.asarray(a, float) for a in h)
    if edges.ndim != 1 or density.shape != (len(edges) - 1,) or np.any(np.diff(edges) <= 0) or np.any(density < 0):
        raise ValueError("a histogram needs increasing edges and one non-negative density per bin")
    return edges, density


def histogram_distance(a, b) -> float:
    """The 1-D Wasserstein (earth mover's) distance between two normalised-intensity
    histograms, each ``(edges, density)`` or ``{"edges", "density"}`` (their bins may differ).

    It is the mean distance, in normalised intensity (1 = the span between the scan's 0.5th and
    99.5th percentiles), that intensity mass must move to turn one distribution into the other:
    0 for the same distribution, about the shift for a shifted one, and finite and graded
    where the two do not overlap (where KL or chi-squared distances are infinite or saturate).
    Bin masses sit at the bin centres; the distance is the area between the two cumulative
    distributions (what ``scipy.stats.wasserstein_distance`` computes, without importing
    ``scipy.stats``, half a second of every ``innerear segment``; a test compares the two).
    """
    (ea, da), (eb, db) = _histogram_pair(a), _histogram_pair(b)
    wa, wb = da * np.diff(ea), db * np.diff(eb)
    if wa.sum() <= 0 or wb.sum() <= 0:
        raise ValueError("an empty histogram has no distance")
    ca, cb = 0.5 * (ea[1:] + ea[:-1]), 0.5 * (eb[1:] + eb[:-1])  # increasing, as the edges are
    points = np.union1d(ca, cb)

    def cdf(centres: np.ndarray, weights: np.ndarray) -> np.ndarray:  # at each point but the last
        cumulative = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
        return cumulative[np.searchsorted(centres, points[:-1], side="right")]

    return float(np.sum(np.abs(cdf(ca, wa) - cdf(cb, wb)) * np.diff(points)))
