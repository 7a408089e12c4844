"""The ``innerear`` command line (also ``python -m innerear``).

Every failure ends with one line ``innerear: error: <file>: <problem>`` and a non-zero exit.
Exit statuses: 0 done; 1 an error or a refusal (bad input, implausible result, a file that
exists, ...); 2 a usage error (unknown option, a value out of range); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM). Interrupted or terminated runs leave no partial files.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from innerear.settings.layout import cache_dir
from innerear.settings.profiles import (BACKBONES, PROFILES, RUNTIMES, default_data_dir, get_profile, import_backend,
                                       project_root)
from innerear.settings.views import PAPER_ORDER, check_order

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler, so that cleanup (``finally`` blocks, temporary files)
    runs as it does for Ctrl-C."""


# --------------------------------------------------------------------------- option types
def _number(kind: type, low: float, what: str, strict: bool = False):
    """An argparse ``type`` accepting finite ``kind`` values >= ``low`` (> with ``strict``);
    argparse's message names the option."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        finite = value == value and value not in (float("inf"), float("-inf"))
        if not finite or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, 1, "a positive integer")
non_negative_int = _number(int, 0, "an integer >= 0")
positive_float = _number(float, 0.0, "a positive number", strict=True)


def label_values(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``: the label values that are the inner ear."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,3, got {text!r}") from None
    if len(set(values)) != len(values) or 0 in values:
        raise argparse.ArgumentTypeError(f"expected distinct non-zero values (0 is background), got {text!r}")
    return values


def view_order(text: str) -> tuple[str, ...]:
    """``"coronal,sagittal,axial"`` -> a checked view order."""
    try:
        return check_order(text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _profile(args: argparse.Namespace):
    """The named profile with the training settings given on the command line replaced."""
    fields = ("grid", "max_epochs", "patience", "base_filters")  # positive integers (argparse checked)
    overrides = {field: getattr(args, field) for field in fields if getattr(args, field, None) is not None}
    pooling = 2 ** get_profile(args.profile).depth
    if overrides.get("grid", pooling) % pooling:
        raise ValueError(f"--grid must be divisible by {pooling} (the networks' pooling), got {overrides['grid']}")
    return get_profile(args.profile, **overrides)


def _cmd_phantoms(args: argparse.Namespace) -> int:
    # lazy: the data floor loads SciPy (about 0.8 s), which `innerear --help` does without
    from innerear.data.phantom import generate_specimen, write_phantom_set, write_specimen

    profile = get_profile(args.profile)
    settings = profile.phantoms
    if args.binning is not None:
        settings = replace(settings, binning=args.binning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.shape:
        spec = generate_specimen(args.index, args.seed, settings, shape=tuple(args.shape))
        entry = write_specimen(spec, out)
        print(json.dumps(entry, indent=2, default=str))
    else:
        manifest = write_phantom_set(out, settings, seed=args.seed, n=args.n, progress=not args.quiet)
        print(f"{len(manifest['specimens'])} phantoms in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    # lazy: the data floor loads SciPy (about 0.8 s), which `innerear --help` does without
    from innerear.data.preprocess import prepare_dataset

    profile = get_profile(args.profile)
    root = project_root()
    data_dir = Path(args.data) if args.data else default_data_dir(profile.name, root)
    cache = cache_dir(root, profile)
    cases = prepare_dataset(data_dir, profile.grid, cache, progress=not args.quiet)
    print(f"{len(cases)} cases prepared at {profile.grid}^3 in {cache}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    # lazy: the data floor loads SciPy (about 0.8 s), which `innerear --help` does without
    from innerear.data.cohort import load_cohort

    profile = _profile(args)
    jobs = [_parse_job(j) for j in args.job] if args.job else [(args.fold, list(args.order))]
    root = project_root()
    cohort = load_cohort(profile, args.seed, root, data_dir=args.data or None)
    import_backend()  # the inputs are fine: now the deep-learning stack
    _threads_from_env()
    # lazy: the training floor imports Keras/TensorFlow, loaded only once the inputs are checked
    from innerear.training.fit import ModelPool
    from innerear.training.paper import train_run  # lazy: Keras/TensorFlow, as above

    pool = ModelPool()  # runs in one process share compiled networks (identical results)
    for fold, views in jobs:
        if len(jobs) > 1:
            print(f"run: fold {fold}, {' -> '.join(views)}", flush=True)
        result = train_run(profile, fold, args.backbone, views, args.seed, root=root, runs=args.runs or None,
                           cohort=cohort, verbose=True, pool=pool)
        for st in result.stages:
            print(f"stage {st['stage']} ({st['view']}): held-out Dice {st['mean_test_dice']:.3f}")
    return 0


def _parse_job(text: str) -> tuple[int, list[str]]:
    """``"2:coronal,sagittal,axial"`` -> ``(2, ["coronal", "sagittal", "axial"])``."""
    fold, sep, views = text.partition(":")
    if not sep or not fold.strip().isdigit() or not views:
        raise ValueError(f"--job must look like FOLD:VIEW[,VIEW...], got {text!r}")
    return int(fold), views.split(",")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    # lazy: the pipeline loads the data floor and SciPy (about 0.8 s), which `innerear --help` does without
    from innerear.reporting.pipeline import reproduce

    times = reproduce(args.profile, seed=args.seed, book=not args.no_book, only=args.only, site=args.site,
                      workers=args.workers, scheduler=args.scheduler)
    print("seconds per step:")
    for k, v in times.items():
        print(f"  {k:<45} {v:8.1f}")
    return 0


def _threads_from_env() -> None:
    """Apply ``INNEREAR_THREADS`` (imports the deep-learning stack: call after checking inputs)."""
    if os.environ.get("INNEREAR_THREADS"):
        # lazy: the nets floor imports Keras/TensorFlow, loaded only once the inputs are checked
        from innerear.nets.backend import set_threads

        set_threads(int(os.environ["INNEREAR_THREADS"]))


#: an output option given without a file name (``--labels``): in a batch, write each scan's
BARE = ""
_NAMED_OUTPUTS = ("labels", "probabilities", "mesh", "report")


def _usage_error(message: str) -> int:
    print(f"innerear: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_segment(args: argparse.Namespace) -> int:
    # lazy: the inference floor loads the data floor and SciPy, which `innerear --help` does without
    from innerear.inference.batch import is_batch

    scans = [Path(s) for s in args.scan]
    if is_batch(scans, Path(args.out)):
        return _cmd_segment_batch(args, scans)
    bare = [f"--{name}" for name in _NAMED_OUTPUTS if getattr(args, name) == BARE]
    if bare:
        return _usage_error(f"{bare[0]} needs a file name for one scan (without one it is for batches: several scans "
                            f"or a folder of scans, -o OUTDIR)")
    return _segment_one(args)


def _segment_one(args: argparse.Namespace) -> int:
    """``innerear segment SCAN -o MASK``."""
    # lazy: the inference floor imports Keras/TensorFlow, which `innerear --help` does without
    from innerear.inference.segment import segment_to_files

    scan = args.scan[0]
    rep = segment_to_files(scan, args.out, args.model, mesh=args.mesh, report=args.report,
                           labels=args.labels, probabilities=args.probabilities, spacing=args.spacing,
                           force=args.force, progress=not args.quiet, allow_empty=args.allow_empty,
                           dicom_seg=args.dicom_seg, runtime=args.runtime)
    ear = rep["inner_ear"]
    for warning in rep["warnings"]:
        print(f"innerear: warning: {scan}: {warning}", file=sys.stderr)
    extra = "".join(f", {name} {getattr(args, name)}" for name in _NAMED_OUTPUTS if getattr(args, name))
    if args.dicom_seg:
        extra += f", DICOM SEG {args.dicom_seg}"
    parts = "".join(f", {name} {s['volume_mm3']:.2f}" for name, s in (rep.get("structures") or {}).items())
    print(f"{args.out}: inner ear {ear['volume_mm3']:.2f} mm^3{parts} ({ear['voxels']} voxels of "
          f"{'x'.join(map(str, rep['input']['shape']))}, {ear['components']} component(s) before cleanup)"
          f"{extra} in {rep['total_s']:.1f} s")
    return 0


def _batch_scans(inputs: list[Path]) -> list[Path]:
    """The scans of a batch: each path given, a folder of scans replaced by its scans."""
    # lazy: see _cmd_segment
    from innerear.inference.batch import find_scans, is_scan_folder

    scans: list[Path] = []
    for path in inputs:
        if path.is_dir() and not is_scan_folder(path):
            found = find_scans(path)
            if not found:
                raise FileNotFoundError(f"{path}: no scans in this folder (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, "
                                        f".tif/.tiff files, or folders holding a DICOM series or TIFF slices)")
            scans += found
        else:
            scans.append(path)  # a missing or unreadable one becomes a failed row
    return scans


def _print_row(row) -> None:
    if row.status == "failed":
        print(f"innerear: error: {row.error}", file=sys.stderr)
    elif row.status == "skipped":
        print(f"{row.file}: skipped (its outputs exist; --force redoes it)")
    else:
        print(f"{row.file}: inner ear {row.inner_ear_mm3:.2f} mm^3 in {row.seconds:.1f} s")


def _cmd_segment_batch(args: argparse.Namespace, inputs: list[Path]) -> int:
    """``innerear segment DIR|SCAN... -o OUTDIR``: every scan with the model loaded once."""
    # lazy: the inference floor imports Keras/TensorFlow, which `innerear --help` does without
    from innerear.inference.batch import SUMMARY, BatchOptions, segment_batch
    # lazy: as above
    from innerear.inference.segment import Segmenter

    if args.dicom_seg is not None:
        return _usage_error("--dicom-seg is for one DICOM series at a time, not for a batch")
    named = [f"--{name}" for name in _NAMED_OUTPUTS if getattr(args, name) not in (None, BARE)]
    if named:
        return _usage_error(f"{named[0]} takes no file name in a batch: each scan's goes to OUTDIR/<name>_"
                            f"{named[0][2:]}... (the report is always written)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; a batch writes into a folder (-o OUTDIR)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: its parent folder {out.parent} does not exist")
    scans = _batch_scans(inputs)
    options = BatchOptions(labels=args.labels is not None, probabilities=args.probabilities is not None,
                           mesh=args.mesh is not None, force=args.force, allow_empty=args.allow_empty,
                           spacing=tuple(args.spacing) if args.spacing else None)
    segmenter = Segmenter(args.model, load=False, progress=not args.quiet, runtime=args.runtime)
    segmenter.load()  # once, and before any output: a model that cannot be loaded stops the batch here
    out.mkdir(exist_ok=True)
    rows = segment_batch(segmenter, scans, out, options, on_row=_print_row)
    counts = {status: sum(r.status == status for r in rows) for status in ("ok", "skipped", "failed")}
    print(f"{out / SUMMARY}: {len(rows)} scans, {counts['ok']} segmented, {counts['skipped']} skipped, "
          f"{counts['failed']} failed")
    if counts["failed"]:
        print(f"innerear: error: {out / SUMMARY}: {counts['failed']} of {len(rows)} scans failed", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _cmd_upgrade_model(args: argparse.Namespace) -> int:
    # lazy: the inference floor loads the data floor and SciPy, which `innerear --help` does without
    from innerear.inference.modelfolder import FORMAT_VERSION, upgrade_model

    folder = upgrade_model(args.model_dir)
    print(f"{folder}: converted to model folder format version {FORMAT_VERSION}")
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    # lazy: the inference floor loads the data floor and SciPy, which `innerear --help` does without
    from innerear.inference.modelfolder import export_onnx_folder

    import_backend()  # the export reads the .keras networks
    written = export_onnx_folder(args.model_dir, force=args.force)
    for path in written:
        print(f"{path}: exported (answers checked against {path.with_suffix('.keras').name})")
    if not written:
        print(f"{args.model_dir}: every stage's best.onnx is current (--force exports again)")
    return 0


def _add_export_onnx(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a model folder's networks to ONNX (fast segmentation on a CPU)",
                       description="Write best.onnx beside each stage's best.keras (Keras' ONNX export), check "
                                   "that each answers like its network, and record which .keras file it came "
                                   "from; innerear segment then runs them in ONNX Runtime without importing "
                                   "TensorFlow. Exports that are current are kept unless --force.")
    p.add_argument("model_dir", help="the model folder (with cascade.json)")
    p.add_argument("--force", action="store_true", help="export every stage again")
    p.set_defaults(func=_cmd_export_onnx)


def _add_upgrade_model(sub) -> None:
    p = sub.add_parser("upgrade-model", help="convert a model folder of an older format to the current one",
                       description="Convert a model folder (cascade.json, stage folders, model_card.json) written "
                                   "by an older innerear to the current format, in place; the networks are not "
                                   "touched. A folder already in the current format is refused.")
    p.add_argument("model_dir", help="the model folder (with cascade.json)")
    p.set_defaults(func=_cmd_upgrade_model)


def _cmd_train_recipe(args: argparse.Namespace) -> int:
    """``innerear train --recipe robust --out WORK``: the shipped segmenter's recipe on generated phantoms."""
    if args.data_dir is not None:
        raise ValueError(f"{args.data_dir}: --recipe {args.recipe} trains on phantoms it generates; "
                         "give no data folder")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: its parent folder {out.parent} does not exist")
    import_backend()  # the inputs are fine: now the deep-learning stack
    _threads_from_env()
    # lazy: the training floor imports Keras/TensorFlow, loaded only once the inputs are checked
    from innerear.training.robust import get_recipe, train_robust

    last = train_robust(get_recipe(args.recipe, seed=args.seed), out, verbose=not args.quiet)
    print(f"cascade: {last / 'cascade.json'}  (innerear segment SCAN -o MASK --model {last}; "
          f"innerear export-onnx {last} first makes it run without TensorFlow)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    # lazy: the data floor loads SciPy (about 0.8 s), which `innerear --help` does without
    from innerear.data.cohort import load_cohort

    if args.recipe is not None:
        return _cmd_train_recipe(args)
    if args.data_dir is None:
        raise ValueError("innerear train: give a data folder of labelled scans, or --recipe robust")
    profile = _profile(args)
    order = args.order
    data_dir, out = Path(args.data_dir), Path(args.out)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data folder not found")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: its parent folder {out.parent} does not exist")
    if not args.all and not 0 <= args.fold < profile.n_folds:  # before anything is prepared or cached
        raise ValueError(f"--fold must be in 0..{profile.n_folds - 1}, got {args.fold}")
    cohort = load_cohort(profile, args.seed, data_dir=data_dir, cache=cache_dir(out, profile, under="cache"),
                         progress=not args.quiet, label_values=args.label_values)
    folds = cohort.folds
    todo = range(len(folds)) if args.all else [args.fold]
    import_backend()  # the inputs are fine: now the deep-learning stack
    _threads_from_env()
    # lazy: the training floor imports Keras/TensorFlow, loaded only once the inputs are checked
    from innerear.training.fit import ModelPool
    from innerear.training.paper import train_run  # lazy: Keras/TensorFlow, as above

    pool = ModelPool()
    for fold in todo:
        result = train_run(profile, fold, args.backbone, order, args.seed, runs=out, cohort=cohort,
                           verbose=not args.quiet, pool=pool)
        print(f"fold {fold}: held out {', '.join(folds[fold])}")
        for st in result.stages:
            print(f"  stage {st['stage']} ({st['view']}): held-out Dice {st['mean_test_dice']:.3f}")
        print(f"  cascade: {result.cascade}  (innerear segment SCAN -o MASK --model {result.folder})")
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other failure."""

    def error(self, message: str):  # noqa: D102
        sub = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"innerear: error: {sub}{message} (see `{self.prog} --help`)\n")


def _add_training_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training settings (default: the profile's)")
    g.add_argument("--grid", type=positive_int, default=None, help="prepared volume size, N^3 voxels")
    g.add_argument("--epochs", dest="max_epochs", type=positive_int, default=None, help="most epochs per stage")
    g.add_argument("--patience", type=positive_int, default=None, help="early-stopping patience in epochs")
    g.add_argument("--base-filters", dest="base_filters", type=positive_int, default=None,
                   help="filters of the networks' first level")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``innerear`` command."""
    parser = _Parser(prog="innerear", description="AutoCasNet inner-ear segmentation, reproduced.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_phantoms(sub)
    _add_prepare(sub)
    _add_run(sub)
    _add_segment(sub)
    _add_upgrade_model(sub)
    _add_export_onnx(sub)
    _add_train(sub)
    _add_reproduce(sub)
    return parser


def _add_phantoms(sub) -> None:
    """The ``phantoms`` command's options."""

    p = sub.add_parser("phantoms", help="write synthetic inner-ear micro-CT phantoms (NIfTI + manifest)")
    p.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=positive_int, default=None, help="number of specimens (default: the profile's)")
    p.add_argument("--binning", type=positive_int, default=None, help="voxel binning (1 = full 16.3/19.5 um resolution)")
    p.add_argument("--shape", type=positive_int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="write ONE specimen of this exact shape (e.g. 618 892 600 with --binning 1)")
    p.add_argument("--index", type=non_negative_int, default=0, help="specimen index with --shape")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_phantoms)


def _add_prepare(sub) -> None:
    """The ``prepare`` command's options."""
    p = sub.add_parser("prepare", help="resample a data folder to the profile's grid (cached)")
    p.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    p.add_argument("--data", default=None, help="data folder (default: data/hear-eu if present, else the phantoms)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_prepare)


def _add_run(sub) -> None:
    """The ``run`` command's options."""
    p = sub.add_parser("run", help="train one cascade (or single-view baseline) on one fold")
    p.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    p.add_argument("--fold", type=non_negative_int, default=0)
    p.add_argument("--backbone", default="unet", choices=BACKBONES)
    p.add_argument("--order", type=view_order, default=PAPER_ORDER,
                   help="views, comma-separated (one view = baseline)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--data", default=None)
    p.add_argument("--runs", default=None, help="runs folder (default: runs/)")
    p.add_argument("--job", action="append", default=None, metavar="FOLD:VIEWS",
                   help="train several runs of this backbone in one process, e.g. --job 0:axial "
                        "--job 0:coronal,sagittal,axial (replaces --fold/--order)")
    _add_training_overrides(p)
    p.set_defaults(func=_cmd_run)


def _add_segment(sub) -> None:
    """The ``segment`` command's options."""
    p = sub.add_parser("segment", help="segment the inner ear in your own scan (NIfTI, NRRD, MetaImage, DICOM, TIFF), "
                                        "or in every scan of a folder",
                       description="Segment the inner ear in one scan and write the mask on the scan's own grid; or, "
                                   "given several scans or a folder of scans and -o OUTDIR, segment each with the "
                                   "model loaded once (OUTDIR/<name>_mask.nii.gz, <name>_report.json, summary.csv). "
                                   "Without --model the shipped model is used, which was trained on SYNTHETIC "
                                   "phantoms.")
    p.add_argument("scan", nargs="+", help="a .nii/.nii.gz, .nrrd, .mha/.mhd or multipage .tif file, or a folder "
                                           "holding a DICOM series or 2D TIFF slices; several of them, or a folder "
                                           "of scans, for a batch")
    p.add_argument("-o", "--out", required=True, help="mask to write: .nii.gz, .nii, .nrrd or .mha; for a batch "
                                                      "the output folder")
    p.add_argument("--model", default=None, help="model folder with cascade.json (default: the shipped phantom model)")
    p.add_argument("--mesh", nargs="?", const=BARE, default=None, metavar="OUT",
                   help="also write the mask's surface as STL (world mm)")
    p.add_argument("--report", nargs="?", const=BARE, default=None, metavar="OUT",
                   help="also write a JSON report (volume, bounding box, structures, intensity check, timings); "
                        "a batch always writes one per scan")
    p.add_argument("--labels", nargs="?", const=BARE, default=None, metavar="OUT",
                   help="also write the structure label map on the scan's grid (0 background, 1 cochlea, "
                        "2 vestibule, 3 semicircular canals): .nii.gz, .nii, .nrrd or .mha, or .seg.nrrd for a 3D "
                        "Slicer segmentation (named, coloured segments); needs a model with structures")
    p.add_argument("--probabilities", nargs="?", const=BARE, default=None, metavar="OUT",
                   help="also write the probabilities on the scan's grid as float32 compressed NIfTI (.nii.gz): "
                        "one volume per structure (4D) for a model with structures, else the inner ear's")
    p.add_argument("--dicom-seg", default=None, metavar="OUT.dcm",
                   help="also write a DICOM SEG object referencing the input DICOM series (one segment per "
                        "structure, with standard codes); only for a DICOM series as input, one scan at a time")
    p.add_argument("--spacing", type=positive_float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                   help="voxel size in mm along the array axes (TIFF: column, row, slice); required for TIFF "
                        "stacks that do not record it, overrides the header otherwise")
    p.add_argument("--force", action="store_true", help="overwrite existing output files (a batch: redo the scans "
                                                         "whose outputs exist instead of skipping them)")
    p.add_argument("--allow-empty", action="store_true",
                   help="write the mask even when it is empty or its volume is implausible for a human inner ear "
                        "(by default that ends with exit status 1 and nothing written)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="how the networks run: onnx (ONNX Runtime, the model folder's best.onnx exports; no "
                        "TensorFlow import), keras (the .keras networks), or auto (default: onnx when the folder "
                        "has every export, as the shipped models do)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_segment)


def _add_train(sub) -> None:
    """The ``train`` command's options."""
    p = sub.add_parser("train", help="train a cascade on a folder of labelled scans (<id>_image / <id>_label), "
                                      "or the shipped segmenter's robust recipe on generated phantoms (--recipe)")
    p.add_argument("data_dir", nargs="?", default=None, help="folder of <id>_image.<ext> and <id>_label.<ext> pairs")
    p.add_argument("--recipe", choices=("robust", "robust-smoke"), default=None,
                   help="train the segmenter's robust recipe (innerear.training.robust) on domain-randomised phantoms "
                        "instead of a profile on a data folder")
    p.add_argument("--out", required=True, help="folder for the run tree (and its cache)")
    p.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--fold", type=non_negative_int, default=0, help="held-out fold to train (default 0)")
    group.add_argument("--all", action="store_true", help="train every fold")
    p.add_argument("--backbone", default="unet", choices=BACKBONES)
    p.add_argument("--order", type=view_order, default=PAPER_ORDER, help="views, comma-separated")
    p.add_argument("--label-values", type=label_values, default=None, metavar="V1,V2,...",
                   help="label values that are the inner ear, for multi-label maps (e.g. 1,2,3: every other value "
                        "is background); default: the labels must be binary (0 and one foreground value)")
    _add_training_overrides(p)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)


def _add_reproduce(sub) -> None:
    """The ``reproduce`` command's options."""
    p = sub.add_parser("reproduce", help="the whole pipeline for a profile, ending with the built book")
    p.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-book", action="store_true", help="skip the book build")
    p.add_argument("--only", nargs="*", default=None, help="only notebooks whose name starts with these")
    p.add_argument("--site", default=None, help="where executed pages and the HTML go (default: the project)")
    p.add_argument("--workers", type=positive_int, default=None, help="training processes run at once on this machine (default: one per core)")
    p.add_argument("--scheduler", default=None, help="address of a Dask scheduler (tcp://host:8786) to train on")
    p.set_defaults(func=_cmd_reproduce)


def _terminate(signum, frame):  # noqa: ARG001
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported in one line
        return int(exc.code or 0)
    previous = None
    try:  # SIGTERM cleans up like Ctrl-C (only the main thread may install handlers)
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:
        pass
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, RuntimeError, OSError) as exc:
        print(f"innerear: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Terminated:
        print("innerear: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("innerear: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
