"""The quality checks of ``innerear segment``: is the mask plausible, is the scan like the training data?

:func:`volume_check` compares the segmented volume with the plausible inner-ear volumes
(:data:`PLAUSIBLE_VOLUME`, a lower bound :data:`PLAUSIBLE_CUT_MIN` when the field of view cuts the
labyrinth, or the bounds the model states); :func:`intensity_check` compares the scan's normalised
intensity histogram with the model's (:data:`HISTOGRAM_WARN_DISTANCE`).
"""
from __future__ import annotations

import numpy as np

from innerear.data.normalize import histogram_distance, normalised_histogram

#: inner-ear volumes (mm³) a segmentation may have; :func:`~innerear.inference.modelfolder.export_model`
#: writes it into every ``cascade.json`` (``plausible_inner_ear_volume_mm3``); it applies to folders that state none
PLAUSIBLE_VOLUME = {
    "min": 20.0,
    "max": 1000.0,
    "source": ("Generous bounds, not a normal range: below 20 mm^3 is less than the scala tympani alone in "
               "the smallest of 30 human temporal bones measured by micro-CT (23-50 uL, mean 34.2 uL; "
               "Dhanasingh et al. 2021, https://pmc.ncbi.nlm.nih.gov/articles/PMC8514755/), and the whole "
               "cochlear perilymph space is about 93 uL (Ekdale 2016, micro-CT); 1000 mm^3 (1 mL) is several "
               "times a whole labyrinth (cochlea, vestibule and semicircular canals), so a larger mask has "
               "grown into bone, air cells or the background. tests/test_refusals.py checks that the "
               "project's phantoms lie within it."),
}
#: the lower bound (mm³) instead of ``PLAUSIBLE_VOLUME["min"]`` when the mask touches the scan's border,
#: i.e. the field of view cuts the labyrinth (a cochlea-centred crop); ``cascade.json`` may state ``"min_cut"``
PLAUSIBLE_CUT_MIN = {
    "min_cut": 5.0,
    "source_cut": ("When the mask touches the border of the field of view the labyrinth is cut and only part of it "
                   "is in the scan, so the whole-labyrinth lower bound does not apply; 5 mm^3 is about a fifth of the "
                   "smallest scala tympani (23 uL, Dhanasingh et al. 2021) and less than any field of view in scope "
                   "(8 mm or more, centred on the labyrinth or the cochlea) holds of a labyrinth; a smaller mask is a "
                   "speck, not a cut labyrinth. The upper bound still applies. tests/test_segment_physical.py checks "
                   "that 8 mm cochlea-centred crops of the project's phantoms lie above it."),
}
#: the 1-D Wasserstein distance (normalised intensity, 1 = the 0.5-99.5 percentile span) between the
#: scan's normalised histogram and the model's (``cascade.json``) above which the report warns
HISTOGRAM_WARN_DISTANCE = 0.1


def plausible_volume(stated: dict | None) -> dict:
    """The bounds a model states (``cascade.json``'s ``plausible_inner_ear_volume_mm3``: ``min``, ``max``,
    ``source`` and optionally ``min_cut``, ``source_cut``), or :data:`PLAUSIBLE_VOLUME` for a model
    that states none; :data:`PLAUSIBLE_CUT_MIN` fills a missing ``min_cut``."""
    if stated:
        out = {"min": float(stated["min"]), "max": float(stated["max"]), "source": stated.get("source", "the model")}
        if "min_cut" in stated:
            out.update(min_cut=float(stated["min_cut"]), source_cut=stated.get("source_cut", "the model"))
    else:
        out = dict(PLAUSIBLE_VOLUME)
    return {**PLAUSIBLE_CUT_MIN, **out}


def touches_border(mask: np.ndarray) -> bool:
    """Does the mask reach a face of its array (the scan's field of view)?"""
    mask = np.asarray(mask)
    return any(bool(np.take(mask, i, axis=a).any()) for a in range(mask.ndim) for i in (0, -1))


def volume_check(volume_mm3: float, voxels: int, bounds: dict, cut: bool = False) -> dict:
    """Is the segmented inner ear non-empty and of a plausible size? A JSON-able record with
    ``passed`` and, when it failed, a one-line ``reason``.

    ``cut`` (the mask touches the field of view's border, :func:`touches_border`): the scan
    holds part of the labyrinth, so the lower bound is ``bounds["min_cut"]`` instead of the
    whole labyrinth's ``min``; the upper bound is the same."""
    lo, hi = bounds["min"], bounds["max"]
    applied = float(bounds.get("min_cut", lo)) if cut else lo
    reason = None
    if voxels == 0:
        reason = "no inner ear found: the mask is empty"
    elif not applied <= volume_mm3 <= hi:
        what = ("the part of a human inner ear a field of view cuts" if cut else "a human inner ear")
        reason = f"implausible inner-ear volume {volume_mm3:.4g} mm^3 ({what} is within {applied:g}-{hi:g} mm^3)"
    out = {"check": "the mask is non-empty and its volume is within the plausible range",
           "range_mm3": [lo, hi], "source": bounds["source"], "cut_by_field_of_view": bool(cut),
           "applied_range_mm3": [applied, hi], "volume_mm3": volume_mm3, "passed": reason is None, "reason": reason}
    if cut:
        out["source_cut"] = bounds.get("source_cut")
    return out


def intensity_check(cascade, prepared: np.ndarray, reference: dict | None,
                    core: tuple[slice, ...] = (slice(None),) * 3) -> dict:
    """How far the scan's normalised intensities are from the model's training intensities.

    The 1-D Wasserstein distance (:func:`innerear.data.preprocess.histogram_distance`) between the
    normalised histogram of the prepared scan (normalised as the networks see it, then the
    voxels within the scan, ``core``; the reference's bins) and ``reference`` (``cascade.json``'s
    ``"intensity_histogram"``); ``passed`` is False above :data:`HISTOGRAM_WARN_DISTANCE` or the
    histogram's own ``"warn_above"`` (a training recipe may state the spread of its own scans).
    Without a reference ``distance`` is None."""
    ref = reference
    out = {"check": "the scan's normalised intensity histogram is close to the training data's",
           "metric": "1-D Wasserstein distance, normalised intensity (1 = the span the normaliser maps to 0..1)",
           "warn_above": HISTOGRAM_WARN_DISTANCE, "distance": None, "passed": True, "reason": None}
    if not ref:
        out["note"] = "the model (cascade.json) has no intensity_histogram"
        return out
    try:
        edges = np.asarray(ref["edges"], float)
        hist = normalised_histogram(cascade.normalizer(prepared)[core], bins=edges)
        distance = histogram_distance(hist, ref)
    except (KeyError, TypeError, ValueError) as exc:
        out["note"] = f"the model's intensity_histogram is unusable ({exc})"
        return out
    warn = float(ref.get("warn_above", HISTOGRAM_WARN_DISTANCE)) if isinstance(ref, dict) else HISTOGRAM_WARN_DISTANCE
    out["distance"], out["warn_above"] = round(distance, 4), warn
    if distance > warn:
        out["passed"] = False
        out["reason"] = (f"the scan's normalised intensities are far from the training data's (histogram distance "
                         f"{distance:.3f} > {warn:g}): other contrast, inverted intensities or strong artefacts? "
                         f"Check the mask")
    return out
