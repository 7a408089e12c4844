"""Segmenting many scans with one model (``innerear segment DIR -o OUTDIR``).

:func:`find_scans` lists the scans of a folder (volume files by name, and sub-folders holding a
DICOM series or TIFF slices); :func:`segment_batch` segments each with one
:class:`~innerear.inference.segment.Segmenter` (the model is loaded once), writing
``OUTDIR/<name>_mask.nii.gz`` and ``OUTDIR/<name>_report.json`` (and, when asked for,
``_labels.nii.gz``, ``_probabilities.nii.gz``, ``_mesh.stl``) per scan, all or none of a scan's
files. A scan whose outputs all exist is skipped unless ``force`` (its row is read back from its
report); a scan that fails is recorded with its one-line error and the batch goes on.
:func:`write_summary` writes ``OUTDIR/summary.csv``, one row per scan (:data:`SUMMARY_COLUMNS`),
atomically; it is the batch's index and is rewritten by every batch run.
"""
from __future__ import annotations

import csv
import io as _io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from innerear.inference.segment import Outputs, Segmenter
from innerear.io import (METAIMAGE_SUFFIXES, NIFTI_SUFFIXES, NRRD_SUFFIXES, TIFF_SUFFIXES, atomic_path,
                         sweep_temporaries)
from innerear.io.common import folder_contents, one_line
from innerear.settings.structures import STRUCTURE_NAMES

#: the file names a folder's scans are recognised by (sub-folders are DICOM series or TIFF slices)
SCAN_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + METAIMAGE_SUFFIXES + TIFF_SUFFIXES
SUMMARY = "summary.csv"
SUMMARY_COLUMNS = ("file", "status", "error", "inner_ear_mm3",
                   *(f"{name}_mm3" for name in STRUCTURE_NAMES.values()),
                   "duct_length_mm", "turns", "qc_flags", "seconds")
#: the errors a batch records for a scan and goes on (the command line's one-line errors)
SCAN_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, RuntimeError, OSError, MemoryError)


def scan_name(path: Path) -> str:
    """A scan's name without its volume suffix (``ear.nii.gz`` -> ``ear``; a folder's own name)."""
    lower = path.name.lower()
    for suffix in sorted(SCAN_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and not path.is_dir():
            return path.name[: -len(suffix)]
    return path.name


def _tiff_pages(path: Path) -> int:
    import tifffile  # lazy: only for folders holding TIFF files

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages)
    except Exception:  # noqa: BLE001 - an unreadable TIFF is the reader's to report, not this guess's
        return 1


def is_scan_folder(path: Path) -> bool:
    """Whether a folder is itself one scan (a DICOM series, a stack of TIFF slices or one multipage TIFF).

    Not when it also holds scans of other kinds (NIfTI, NRRD or MetaImage files, or sub-folders
    that are scans) or several multipage TIFFs: that is a folder of scans, each a scan of its own."""
    tiffs, dicoms = folder_contents(path)
    if not (tiffs or dicoms):
        return False
    others = NIFTI_SUFFIXES + NRRD_SUFFIXES + METAIMAGE_SUFFIXES
    for entry in path.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and any(folder_contents(entry)):
            return False
        if entry.is_file() and entry.name.lower().endswith(others):
            return False
    return not (len(tiffs) > 1 and _tiff_pages(tiffs[0]) > 1)


def find_scans(folder: Path) -> list[Path]:
    """The scans in ``folder``, sorted: files named like a volume (:data:`SCAN_SUFFIXES`; hidden files
    and the ``.raw`` of a MetaImage header are not scans) and sub-folders (DICOM series, TIFF slices)."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.name.lower().endswith(SCAN_SUFFIXES):
            found.append(entry)
    return found


def is_batch(scans: Sequence[Path], out: Path) -> bool:
    """Whether ``innerear segment SCAN... -o OUT`` is a batch: several scans, a folder of scans (not
    itself a DICOM series or TIFF stack), or an existing folder as ``OUT``."""
    if len(scans) > 1 or out.is_dir():
        return True
    return scans[0].is_dir() and not is_scan_folder(scans[0])


@dataclass(frozen=True)
class BatchOptions:
    """Which files a batch writes per scan besides the mask and the report, and how."""

    labels: bool = False
    probabilities: bool = False
    mesh: bool = False
    force: bool = False
    allow_empty: bool = False
    spacing: tuple[float, float, float] | None = None

    def outputs(self, scan: Path, out_dir: Path) -> Outputs:
        """``scan``'s output files in ``out_dir``."""
        stem = out_dir / scan_name(scan)
        return Outputs(Path(f"{stem}_mask.nii.gz"), labels=Path(f"{stem}_labels.nii.gz") if self.labels else None,
                       probabilities=Path(f"{stem}_probabilities.nii.gz") if self.probabilities else None,
                       mesh=Path(f"{stem}_mesh.stl") if self.mesh else None, report=Path(f"{stem}_report.json"))


@dataclass(frozen=True)
class BatchRow:
    """One scan of a batch: ``status`` is ``"ok"``, ``"skipped"`` (its outputs existed) or ``"failed"``
    (``error`` holds the one-line reason); the measures come from its report."""

    file: str
    status: str
    error: str = ""
    inner_ear_mm3: float | None = None
    structures_mm3: tuple[float | None, ...] = ()
    duct_length_mm: float | None = None
    turns: float | None = None
    qc_flags: str = ""
    seconds: float | None = None

    @classmethod
    def from_report(cls, file: str, status: str, report: dict, seconds: float | None) -> "BatchRow":
        structures = report.get("structures") or {}
        cochlea = report.get("cochlea") or {}
        return cls(file, status, "", report["inner_ear"]["volume_mm3"],
                   tuple((structures.get(name) or {}).get("volume_mm3") for name in STRUCTURE_NAMES.values()),
                   cochlea.get("duct_length_mm"), cochlea.get("turns"), "; ".join(report.get("warnings", [])),
                   seconds)

    def to_dict(self) -> dict[str, object]:
        """The row of ``summary.csv`` (:data:`SUMMARY_COLUMNS`)."""
        structures = self.structures_mm3 or (None,) * len(STRUCTURE_NAMES)
        values = (self.file, self.status, self.error, self.inner_ear_mm3, *structures, self.duct_length_mm,
                  self.turns, self.qc_flags, None if self.seconds is None else round(self.seconds, 3))
        return dict(zip(SUMMARY_COLUMNS, values))


def _one_line_error(scan: Path, exc: BaseException) -> str:
    text = one_line(exc, 1000)
    return text if scan.name in text else f"{scan}: {text}"


def _skipped(scan: Path, paths: Outputs) -> BatchRow:
    """The row of a scan whose outputs exist, read back from its report."""
    try:
        report = json.loads(paths.report.read_text())
        return BatchRow.from_report(str(scan), "skipped", report, None)
    except (OSError, ValueError, KeyError, TypeError):
        return BatchRow(str(scan), "skipped", qc_flags="its report could not be read")


def segment_one(segmenter: Segmenter, scan: Path, out_dir: Path, options: BatchOptions) -> BatchRow:
    """Segment one scan of a batch into ``out_dir``; a problem becomes a ``"failed"`` row."""
    t0 = time.perf_counter()
    paths = options.outputs(scan, out_dir)
    if not options.force and all(p.exists() for p in paths.present()):
        return _skipped(scan, paths)
    try:
        report = segmenter.segment_to_files(scan, paths.mask, labels=paths.labels, probabilities=paths.probabilities,
                                            mesh=paths.mesh, report=paths.report, spacing=options.spacing,
                                            force=options.force, allow_empty=options.allow_empty)
    except SCAN_ERRORS as exc:
        return BatchRow(str(scan), "failed", _one_line_error(scan, exc), seconds=time.perf_counter() - t0)
    return BatchRow.from_report(str(scan), "ok", report, time.perf_counter() - t0)


def _unique(scans: Sequence[Path]) -> list[tuple[Path, str | None]]:
    """Each scan with the reason it cannot be segmented in this batch (its output names are taken), or None."""
    seen: dict[str, Path] = {}
    out = []
    for scan in scans:
        name = scan_name(scan)
        first = seen.setdefault(name, scan)
        out.append((scan, None if first is scan else
                    f"{scan}: its outputs ({name}_mask.nii.gz, ...) would be those of {first}; rename one of them"))
    return out


def segment_batch(segmenter: Segmenter, scans: Sequence[Path], out_dir: Path, options: BatchOptions,
                  on_row: Callable[[BatchRow], None] | None = None) -> list[BatchRow]:
    """Segment ``scans`` into ``out_dir`` with one model and write ``out_dir/summary.csv``; every scan
    gets a row (``on_row`` is called with each as it is done), whatever happens to the others. Temporaries
    left in ``out_dir`` by a batch that was killed are removed first."""
    sweep_temporaries(out_dir, recursive=False)
    rows = []
    for scan, clash in _unique(scans):
        row = BatchRow(str(scan), "failed", clash) if clash else segment_one(segmenter, scan, out_dir, options)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    write_summary(out_dir / SUMMARY, rows)
    return rows


def summary_text(rows: Sequence[BatchRow]) -> str:
    """The CSV text of the rows (:data:`SUMMARY_COLUMNS`; empty cells for what a scan lacks)."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.to_dict().items()})
    return buffer.getvalue()


def write_summary(path: Path, rows: Sequence[BatchRow]) -> Path:
    """Write ``summary.csv`` atomically (it replaces the previous batch's: it indexes the folder)."""
    with atomic_path(path) as tmp:
        tmp.write_text(summary_text(rows))
    return path
