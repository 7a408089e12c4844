"""The quality checks of ``innerear segment``: is the mask plausible, is the scan like the training data?

:func:`volume_check` compares the segmented volume with the plausible inner-ear volumes
(:data:`PLAUSIBLE_VOLUME`, a lower bound :data:`PLAUSIBLE_CUT_MIN` when the field of view cuts the
labyrinth, or the bounds the model states); :func:`intensity_check` compares the scan's normalised
intensity histogram with the model's (:data:`HISTOGRAM_WARN_DISTANCE`).
"""
from __future__ import annotations

import numpy as np

from innerear.data.normalize import histogram_distance, normalised_histogram, normalised_sample
from innerear.settings.structures import CLASS_NAMES

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
        sample = normalised_sample(cascade.normalizer, prepared, core)  # the voxels the histogram reads
        hist = normalised_histogram(sample, bins=edges, max_samples=None)
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


#: below this mirror agreement of a structure (the Dice between the last stage's answer and its
#: answer on the left-right mirror image, mapped back) the report says the model is unsure of it.
#: Calibrated on phantoms (the shipped model on the 60 scans of ``benchmarks/bench_clinical.py``'s
#: matrix and ablation, per-scan ``agreement_*`` in their records, 2026-12-03): every structure
#: segmented with Dice >= 0.8 agreed at least 0.846 (5th percentile 0.88-0.91 per structure); of the
#: 33 structures below Dice 0.8 (mostly canals cut by cochlea-centred crops), 20 agreed less than 0.85
AGREEMENT_MIN = 0.85
#: a predicted cochlea smaller than this (mm³) is missing or partial
COCHLEA_PARTIAL_MM3 = {
    "min": 25.0,
    "source": ("Half the smallest whole cochlear lumen of the project's reference band (50.1 mm^3, "
               "innerear/metrics/reference/morphometry.csv, derived) and about the smallest scala tympani "
               "alone (23 uL, Dhanasingh et al. 2021); a scan that holds a human cochlea and gives less has "
               "missed part of it (or its field of view cuts it)."),
}


def confidence_check(agreement: dict | None, structures: dict | None, labels: np.ndarray | None) -> dict:
    """Is the model sure of what it found? ``passed`` is False (with a one-line ``reason``) when
    a structure's mirror agreement is below :data:`AGREEMENT_MIN`, or the predicted cochlea is
    missing or below :data:`COCHLEA_PARTIAL_MM3` (``cut_by_field_of_view`` says whether it
    touches the scan's border). ``agreement`` is the engine's (``"inner_ear"``, ``"1"``...)."""
    out: dict = {"check": "the model agrees with itself on the mirror image, and the cochlea is whole",
                 "agreement_min": AGREEMENT_MIN, "cochlea_min_mm3": COCHLEA_PARTIAL_MM3["min"],
                 "source": COCHLEA_PARTIAL_MM3["source"], "mirror_agreement": None, "passed": True, "reason": None}
    doubts = []
    if agreement:
        named = {("inner_ear" if k == "inner_ear" else CLASS_NAMES[int(k)]): v for k, v in agreement.items()}
        out["mirror_agreement"] = {k: (None if v is None else round(float(v), 4)) for k, v in named.items()}
        low = {k: v for k, v in named.items() if v is not None and v < AGREEMENT_MIN}
        if low:
            doubts.append("unsure of the " + ", ".join(f"{k} (mirror agreement {v:.2f})" for k, v in low.items()))
    if structures is not None and "cochlea" in structures:
        volume = float(structures["cochlea"]["volume_mm3"])
        cut = bool(labels is not None and touches_border(np.asarray(labels) == 1))
        out.update(cochlea_mm3=round(volume, 3), cut_by_field_of_view=cut)
        if volume < COCHLEA_PARTIAL_MM3["min"]:
            where = ", cut by the field of view" if cut else ""
            doubts.append(f"cochlea missing or partial ({volume:.3g} mm^3 < {COCHLEA_PARTIAL_MM3['min']:g}{where})")
    if doubts:
        out["passed"] = False
        out["reason"] = "; ".join(doubts) + ": check the mask"
    return out
