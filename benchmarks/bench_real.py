"""Real scans in, figures out: the shipped segmenter scored on a folder of scans with expert labels.

    .venv/bin/python benchmarks/bench_real.py --data FOLDER [--model DIR] [--labels-map JSON] \
        [--out JSON] [--n-max N]

**The folder.** Scans and their expert labels, in any format :func:`innerear.io.read_volume` reads
(NIfTI, NRRD, MetaImage, DICOM series folders, TIFF stacks; what ``innerear segment DIR`` takes
as scans, :func:`innerear.inference.batch.find_scans`). A scan is paired with its label by name,
as the training data is (:data:`innerear.data.preprocess.IMAGE_SUFFIXES` / ``LABEL_SUFFIXES``):

* ``case.nii.gz`` (or ``case_image.nii.gz``, ``_img``, ``_ct``) with ``case_label.nii.gz``
  (or ``_seg``, ``_mask``, or a Slicer ``case.seg.nrrd``), in any of the formats above; or
* ``case.nii.gz`` with ``labels/case.<ext>``, a file (or DICOM folder) of the same name in a
  ``labels/`` sub-folder.

A scan without a label, a label without a scan, a label that cannot be read or that does not lie
on its scan's grid (same shape; voxel centres within a tenth of a voxel) gets a row with its
one-line reason, and the run goes on.

**Which label values are which structure.** A JSON file (``--labels-map``, else ``labels.json``
in the folder) maps structures to label values, e.g. ``{"cochlea": [1, 2], "vestibule": [3],
"canals": [4]}`` (scala tympani = 1 and scala vestibuli = 2 are both cochlea). Values it does not
name are background. A structure none of whose values occur in a label file is *not labelled*
there (no score, not a Dice of 0). Without a map, any non-zero value is the inner ear and there
are no per-structure scores.

**Per scan.** The scan is read once and segmented with :class:`innerear.Segmenter` (the model
loaded once), as stored and with its header mirrored (:func:`mirrored_affine`: the first array
axis's direction reversed and the origin moved so that the volume stays in place; the same
voxels, now read as the other side's ear). Each is scored on the scan's own grid against the
expert label (:func:`score`): Dice and HD95 (:func:`innerear.metrics.surface_distances`) of the
inner ear, restricted to the labelled structures (with only the cochlea labelled, the predicted
cochlea against the expert's), the same per structure, volume errors (mm³ and %), and the
cochlea's duct length and turns (:func:`innerear.metrics.cochlea.measure_cochlea`) on the
predicted and on the expert cochlea. ``side as read`` is the winding of the expert's cochlea (the
predicted one's where the cochlea is not labelled) in the header's world frame, named by the
phantoms' convention (:data:`SIDE_BY_HANDEDNESS`). A scan the segmenter raises for is recorded
with its one-line reason; a mask ``innerear segment`` would refuse (its plausible-volume check)
is scored anyway (as ``--allow-empty``) and the refusal recorded.

The record goes to ``--out`` (default ``benchmarks/results/bench_real.json``) through
:func:`innerear.reporting.performance.write_record`; the book's Performance page shows it when
that file exists. Commit only records of real scans there, never of phantoms.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from innerear.data.preprocess import IMAGE_SUFFIXES, LABEL_SUFFIXES  # noqa: E402
from innerear.data.scan import crop_to_mask  # noqa: E402
from innerear.inference.batch import SCAN_ERRORS, find_scans, scan_name  # noqa: E402
from innerear.io import VolumeError, read_volume, spacing_from_affine  # noqa: E402
from innerear.io.common import one_line  # noqa: E402
from innerear.metrics import dice, surface_distances  # noqa: E402
from innerear.metrics.cochlea import measure_cochlea  # noqa: E402
from innerear.reporting import performance as perf  # noqa: E402
from innerear.settings.structures import COCHLEA, STRUCTURE_NAMES  # noqa: E402

KIND = perf.REAL_SCANS  # the record's name: benchmarks/results/bench_real.json
LABELS_JSON = "labels.json"
LABELS_FOLDER = "labels"
#: the label file's name ends with one of these (a Slicer ``case.seg.nrrd`` reads as ``case.seg``)
LABEL_MARKERS = LABEL_SUFFIXES + (".seg",)
#: the side whose cochlea winds this way about its axis from base to apex in RAS world coordinates,
#: by the phantom generator's convention (``tests/test_bench_real.py`` checks it on phantoms)
SIDE_BY_HANDEDNESS = {1: "right", -1: "left"}
GRID_TOLERANCE_VOXELS = 0.1
INNER_EAR = "inner ear"


# --------------------------------------------------------------------------- the label map
@dataclass(frozen=True)
class LabelMap:
    """Which expert label values are which structure; empty ``structures``: any non-zero value is the
    inner ear (no per-structure scores). ``source`` names the JSON file (or says it is the default)."""

    structures: dict[str, tuple[int, ...]] = field(default_factory=dict)
    source: str = "default: any non-zero value is the inner ear"

    @property
    def per_structure(self) -> bool:
        return bool(self.structures)


def _label_values(path: Path, name: str, value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise ValueError(f"{path}: {name!r} must map to a label value or a list of them (integers), got {value!r}")
    if any(v == 0 for v in items):
        raise ValueError(f"{path}: {name!r} lists 0, which is background")
    return tuple(items)


def parse_label_map(obj: Any, path: Path) -> LabelMap:
    """A :class:`LabelMap` from the JSON object read from ``path`` (named in every error)."""
    known = tuple(STRUCTURE_NAMES.values())
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected an object mapping structures ({', '.join(known)}) to label values")
    structures: dict[str, tuple[int, ...]] = {}
    owner: dict[int, str] = {}
    for name, value in obj.items():
        if name not in known:
            raise ValueError(f"{path}: unknown structure {name!r} (known: {', '.join(known)})")
        values = _label_values(path, name, value)
        for v in values:
            if v in owner:
                raise ValueError(f"{path}: label value {v} is mapped to both {owner[v]!r} and {name!r}")
            owner[v] = name
        structures[name] = values
    return LabelMap(structures, str(path))


def read_label_map(path: Path) -> LabelMap:
    """Read and check a label-map JSON file."""
    try:
        obj = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    return parse_label_map(obj, path)


def resolve_label_map(folder: Path, given: Path | None) -> LabelMap:
    """``given``, else the folder's ``labels.json``, else the default map."""
    path = given if given is not None else folder / LABELS_JSON
    if given is None and not path.exists():
        return LabelMap()
    return read_label_map(path)


@dataclass(frozen=True, eq=False)
class Expert:
    """An expert label mapped: ``structures`` (0, 1 cochlea, 2 vestibule, 3 canals; None for the default
    map), the inner ear, the structures it labels and the label values it holds."""

    structures: np.ndarray | None
    inner_ear: np.ndarray
    labelled: tuple[str, ...]
    values: tuple[int, ...]


def apply_label_map(label: np.ndarray, label_map: LabelMap, path: Path) -> Expert:
    """Map an expert label array; raises ValueError (naming ``path``) for non-integer values or a label
    holding none of the mapped values."""
    lab = np.asarray(label)
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.array_equal(lab, np.round(lab)):
            raise ValueError(f"{path}: the label holds non-integer values (is it a scan, not a label?)")
        lab = lab.astype(np.int64)
    values = tuple(int(v) for v in np.unique(lab))
    if not label_map.per_structure:
        inner = lab != 0
        if not inner.any():
            raise ValueError(f"{path}: the label is empty (every voxel is 0)")
        return Expert(None, inner, (), values)
    codes = {name: code for code, name in STRUCTURE_NAMES.items()}
    structures = np.zeros(lab.shape, np.uint8)
    for name, wanted in label_map.structures.items():
        structures[np.isin(lab, wanted)] = codes[name]
    labelled = tuple(name for code, name in STRUCTURE_NAMES.items() if np.any(structures == code))
    if not labelled:
        raise ValueError(f"{path}: the label holds none of the values {label_map.source} maps "
                         f"(it holds {', '.join(map(str, values[:12]))})")
    return Expert(structures, structures > 0, labelled, values)


# --------------------------------------------------------------------------- pairing
@dataclass(frozen=True)
class Pair:
    """One case of the folder: its scan and label (either may be missing: ``problem`` says why)."""

    case: str
    scan: Path | None
    label: Path | None
    problem: str | None = None


def _role(name: str) -> tuple[str, str]:
    """``("label" | "scan", case id)`` from a scan name without its suffix."""
    lower = name.lower()
    for marker in LABEL_MARKERS:
        if lower.endswith(marker) and len(name) > len(marker):
            return "label", name[: -len(marker)]
    for marker in IMAGE_SUFFIXES:
        if lower.endswith(marker) and len(name) > len(marker):
            return "scan", name[: -len(marker)]
    return "scan", name


def find_pairs(folder: Path) -> list[Pair]:
    """The cases of ``folder`` (see the module's docstring), sorted by case id."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: data folder not found")
    found: dict[str, dict[str, list[Path]]] = {}
    for entry in find_scans(folder):
        if entry.is_dir() and entry.name == LABELS_FOLDER:
            continue
        role, case = _role(scan_name(entry))
        found.setdefault(case, {"scan": [], "label": []})[role].append(entry)
    if (folder / LABELS_FOLDER).is_dir():
        for entry in find_scans(folder / LABELS_FOLDER):
            found.setdefault(scan_name(entry), {"scan": [], "label": []})["label"].append(entry)
    return [_pair(case, files["scan"], files["label"]) for case, files in sorted(found.items())]


def _pair(case: str, scans: list[Path], labels: list[Path]) -> Pair:
    scan, label = (scans or [None])[0], (labels or [None])[0]
    if len(scans) > 1:
        return Pair(case, scan, label, f"{scans[1]}: a second scan of case {case} (also {scan.name})")
    if len(labels) > 1:
        return Pair(case, scan, label, f"{labels[1]}: a second label of case {case} (also {label})")
    if label is None:
        return Pair(case, scan, None, f"{scan}: no expert label (expected {case}_label.<ext> or "
                                      f"{LABELS_FOLDER}/{case}.<ext>)")
    if scan is None:
        return Pair(case, None, label, f"{label}: a label without a scan (expected {case}.<ext>)")
    return Pair(case, scan, label)


# --------------------------------------------------------------------------- geometry
def mirrored_affine(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The header mirrored along the first array axis: its direction reversed and the origin moved to
    the other end, so that the voxels occupy the same place in the world (voxel ``i`` sits where voxel
    ``n - 1 - i`` was) and the anatomy reads as its mirror image."""
    out = np.array(affine, float)
    out[:3, 3] = out[:3, 3] + out[:3, 0] * (int(shape[0]) - 1)
    out[:3, 0] = -out[:3, 0]
    return out


def _corners(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    ijk = np.array(np.meshgrid(*[(0, int(n) - 1) for n in shape], indexing="ij")).reshape(3, -1)
    return (np.asarray(affine, float)[:3, :3] @ ijk).T + np.asarray(affine, float)[:3, 3]


def grid_problem(scan_shape: Sequence[int], scan_affine: np.ndarray, label_shape: Sequence[int],
                 label_affine: np.ndarray) -> str | None:
    """Why a label does not lie on its scan's grid (shape, or corner voxel centres more than
    :data:`GRID_TOLERANCE_VOXELS` of a voxel apart), or None."""
    if tuple(scan_shape) != tuple(label_shape):
        return f"the label's shape {tuple(label_shape)} differs from the scan's {tuple(scan_shape)}"
    worst = float(np.max(np.linalg.norm(_corners(scan_affine, scan_shape) - _corners(label_affine, label_shape),
                                        axis=1)))
    voxel = min(spacing_from_affine(scan_affine))
    if worst > GRID_TOLERANCE_VOXELS * voxel:
        return (f"the label's header places its voxels up to {worst:.3g} mm from the scan's (more than "
                f"{GRID_TOLERANCE_VOXELS:g} voxel): not the scan's grid")
    return None


# --------------------------------------------------------------------------- scores
def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class MaskScore:
    """A predicted mask against the expert's, on the scan's grid: Dice, HD95 (mm; None where one
    mask is empty), volumes (mm³) and the volume error (predicted − expert: mm³ and % of expert)."""

    dice: float
    hd95_mm: float | None
    volume_mm3: float
    expert_volume_mm3: float
    volume_error_mm3: float
    volume_error_pct: float | None


def score_masks(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray) -> MaskScore:
    """:class:`MaskScore` of two masks of one grid (``affine``: its voxel-to-world matrix)."""
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))
    v_pred = int(np.count_nonzero(pred)) * voxel_mm3
    v_true = int(np.count_nonzero(truth)) * voxel_mm3
    hd95 = surface_distances(pred, truth, spacing_from_affine(affine))["hd95_mm"]
    return MaskScore(dice(pred, truth), _finite(hd95), v_pred, v_true, v_pred - v_true,
                     100.0 * (v_pred - v_true) / v_true if v_true else None)


@dataclass(frozen=True)
class CochleaMeasure:
    """Duct length along the lateral wall (mm), turns and winding (+1/-1) of a cochlea mask, or why
    it could not be measured (``reason``)."""

    duct_length_mm: float | None = None
    turns: float | None = None
    handedness: int | None = None
    reason: str | None = None


def measure(cochlea: np.ndarray, affine: np.ndarray) -> CochleaMeasure:
    """:func:`innerear.metrics.cochlea.measure_cochlea` on the mask's bounding box, or the reason."""
    if not np.any(cochlea):
        return CochleaMeasure(reason="no cochlea")
    crop, _, crop_affine = crop_to_mask(np.asarray(cochlea, bool), affine)
    try:
        m = measure_cochlea(crop, crop_affine)
    except ValueError as exc:
        return CochleaMeasure(reason=one_line(exc))
    return CochleaMeasure(m.duct_length_mm, m.turns, int(m.handedness))


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass(frozen=True)
class Scores:
    """One segmentation (as stored or mirrored) against the expert label.

    ``inner_ear`` compares the structures in ``compared`` (the labelled ones; ``"inner ear"`` for the
    default map or a model without structures); ``structures`` each labelled structure's predicted
    label against the expert's; the cochlea measured on both; ``refusal`` the reason ``innerear
    segment`` would refuse this mask (scored anyway), else None."""

    inner_ear: MaskScore
    compared: tuple[str, ...]
    structures: dict[str, MaskScore]
    cochlea_predicted: CochleaMeasure
    cochlea_expert: CochleaMeasure | None
    cdl_difference_mm: float | None
    turns_difference: float | None
    refusal: str | None
    seconds: float


def score(mask: np.ndarray, labels: np.ndarray | None, expert: Expert, affine: np.ndarray,
          refusal: str | None = None, seconds: float = 0.0) -> Scores:
    """Score a predicted ``mask`` (and structure ``labels``, None for a binary model) against ``expert``
    on the grid of ``affine``."""
    codes = {name: code for code, name in STRUCTURE_NAMES.items()}
    if expert.structures is not None and labels is not None:
        wanted = [codes[name] for name in expert.labelled]
        whole, compared = np.isin(labels, wanted), expert.labelled
        per = {name: score_masks(labels == codes[name], expert.structures == codes[name], affine)
               for name in expert.labelled}
    else:
        whole, compared, per = np.asarray(mask) != 0, (INNER_EAR,), {}
    predicted = measure(labels == COCHLEA, affine) if labels is not None else CochleaMeasure(
        reason="the model has no structure labels")
    coch = None
    if expert.structures is not None and "cochlea" in expert.labelled:
        coch = measure(expert.structures == COCHLEA, affine)
    return Scores(score_masks(whole, expert.inner_ear, affine), compared, per, predicted, coch,
                  _difference(predicted.duct_length_mm, coch.duct_length_mm if coch else None),
                  _difference(predicted.turns, coch.turns if coch else None), refusal, round(seconds, 3))


# --------------------------------------------------------------------------- one case
@dataclass
class CaseRow:
    """One row of the record: the case, its files and grid, and its scores as stored and mirrored
    (None where it could not be scored: ``reason`` says why)."""

    case: str
    scan: str | None
    label: str | None
    shape: list[int] | None = None
    voxel_mm: list[float] | None = None
    label_values: list[int] | None = None
    labelled: list[str] | None = None
    side_as_read: str | None = None
    reason: str | None = None
    as_stored: Scores | None = None
    mirrored: Scores | None = None
    dice_difference: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (non-finite numbers as None)."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def side_as_read(scores: Scores) -> str | None:
    """The side the header makes of the ear: the expert cochlea's winding, else the predicted one's."""
    for m in (scores.cochlea_expert, scores.cochlea_predicted):
        if m is not None and m.handedness is not None:
            return f"{SIDE_BY_HANDEDNESS[m.handedness]} ({m.handedness:+d})"
    return None


def _reason(path: Path, exc: BaseException) -> str:
    """The one-line error, naming the file (an array's ``<array>`` replaced by it)."""
    text = one_line(str(exc).replace("<array>", str(path)), 1000)
    return text if path.name in text else f"{path}: {text}"


def _segment(segmenter, image: np.ndarray, affine: np.ndarray, expert: Expert) -> Scores:
    t0 = time.perf_counter()
    result = segmenter.segment(image, affine=affine, probabilities=False)
    check = result.report.checks["inner_ear_volume"]
    return score(result.mask, result.labels, expert, affine, None if check["passed"] else check["reason"],
                 time.perf_counter() - t0)


def run_case(segmenter, pair: Pair, label_map: LabelMap) -> CaseRow:
    """Read, check, segment (as stored and mirrored) and score one case; a problem, or a refusal of
    ``innerear segment``, becomes the row's one-line ``reason``."""
    t0 = time.perf_counter()
    row = CaseRow(pair.case, str(pair.scan) if pair.scan else None, str(pair.label) if pair.label else None)
    if pair.problem:
        row.reason = pair.problem
        return row
    error = None
    try:
        image, spacing, affine = read_volume(pair.scan, mmap=True)
        row.shape, row.voxel_mm = [int(n) for n in image.shape], [round(float(s), 6) for s in spacing]
        label, _, label_affine = read_volume(pair.label)
        problem = grid_problem(image.shape, affine, label.shape, label_affine)
        if problem:
            raise VolumeError(pair.label, problem)
        expert = apply_label_map(label, label_map, pair.label)
        del label
        row.label_values, row.labelled = list(expert.values[:32]), list(expert.labelled) or [INNER_EAR]
        row.as_stored = _segment(segmenter, image, affine, expert)
        row.mirrored = _segment(segmenter, image, mirrored_affine(affine, image.shape), expert)
    except SCAN_ERRORS as exc:
        failed = pair.label if isinstance(exc, VolumeError) and exc.path == pair.label else pair.scan
        error = _reason(failed, exc)
    if row.as_stored is not None:
        row.side_as_read = side_as_read(row.as_stored)
    if row.mirrored is not None:
        row.dice_difference = row.mirrored.inner_ear.dice - row.as_stored.inner_ear.dice
    row.reason = "; ".join(_notes(row, error)) or None
    row.seconds = round(time.perf_counter() - t0, 3)
    return row


def _notes(row: CaseRow, error: str | None) -> list[str]:
    """The row's reasons: the error (of the mirrored run where the stored one was scored) and the
    refusals of ``innerear segment`` (scored anyway)."""
    notes = []
    for name, scores in (("as stored", row.as_stored), ("with the header mirrored", row.mirrored)):
        if scores is not None and scores.refusal:
            notes.append(f"{name}, innerear segment would refuse the mask ({scores.refusal}); scored anyway")
    if error:
        notes.append(error if row.as_stored is None else f"with the header mirrored: {error}")
    return notes


# --------------------------------------------------------------------------- the run
def summary(rows: Sequence[CaseRow]) -> dict[str, Any]:
    """Scans scored, and the median of the main scores over them."""
    scored = [r for r in rows if r.as_stored is not None]

    def median(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.median(kept)) if kept else None

    return {"cases": len(rows), "scored": len(scored), "not_scored": len(rows) - len(scored),
            "median_dice_as_stored": median([r.as_stored.inner_ear.dice for r in scored]),
            "median_dice_mirrored": median([r.mirrored.inner_ear.dice for r in scored if r.mirrored]),
            "median_hd95_mm": median([r.as_stored.inner_ear.hd95_mm for r in scored]),
            "median_volume_error_pct": median([r.as_stored.inner_ear.volume_error_pct for r in scored])}


def run(folder: Path, model: Path | None, label_map: LabelMap, n_max: int | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Score every case of ``folder`` (the first ``n_max``) with one model; the record's payload."""
    from innerear import Segmenter  # lazy: loads the inference floor

    t0 = time.perf_counter()
    pairs = find_pairs(folder)[:n_max]
    segmenter = Segmenter(model)
    rows = []
    for i, pair in enumerate(pairs, 1):
        rows.append(run_case(segmenter, pair, label_map))
        if progress:
            r = rows[-1]
            print(f"[{i}/{len(pairs)}] {pair.case}: "
                  + (f"Dice {r.as_stored.inner_ear.dice:.3f}" if r.as_stored else "not scored")
                  + (f" ({r.reason})" if r.reason else "") + f", {r.seconds:.1f} s", file=sys.stderr, flush=True)
    return {"what": "the shipped segmenter on labelled scans, each scored on its own grid as stored and with its "
                    "header mirrored (the first array axis reversed, the volume in place)",
            "data": str(folder), "model": str(segmenter.folder), "label_map": {"source": label_map.source,
                                                                              "structures": label_map.structures},
            "cases": [r.to_dict() for r in rows], "summary": summary(rows),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder of scans and their expert labels")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--labels-map", type=Path, default=None,
                    help=f"JSON mapping structures to label values (default: FOLDER/{LABELS_JSON} if present, "
                         f"else any non-zero value is the inner ear)")
    ap.add_argument("--out", "--json", type=Path, default=None,
                    help="record path (default benchmarks/results/bench_real.json)")
    ap.add_argument("--n-max", type=int, default=None, help="score at most this many cases")
    args = ap.parse_args(argv)
    if args.n_max is not None and args.n_max < 1:
        ap.error(f"--n-max must be at least 1, got {args.n_max}")
    try:
        if not args.data.is_dir():
            raise FileNotFoundError(f"{args.data}: data folder not found")
        label_map = resolve_label_map(args.data, args.labels_map)
        doc = run(args.data, args.model, label_map, args.n_max)  # a case's problem is its row's; this is the model's
    except (ValueError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    out = perf.write_record(args.out or perf.results_path(ROOT, KIND), KIND, doc)
    print(perf.real_scans_markdown(perf.read_record(out)))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
