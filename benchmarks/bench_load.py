"""A batch under load: ``--n`` scans (default 50) in mixed formats, ``--bad`` of them (default 5) corrupt
or implausible, through one ``innerear segment DIR -o OUTDIR`` process.

The good scans are phantoms of ``--profile`` (default smoke) written as ``.nii.gz``, ``.nrrd``,
``.mha``, DICOM series folders (2) and TIFF stacks (3, a multipage ``.tif`` with its voxel size);
the bad ones are a truncated ``.nii.gz``, an ``.nrrd`` with a wrong header, a constant image, a
4 × 4 × 4 volume and an image holding NaNs. Expected: a mask and a report for every good scan,
a ``failed`` row with its reason in ``summary.csv`` for every bad one, and a non-zero exit status.
Memory: the batch process's ``VmHWM`` (peak resident set so far) and ``VmRSS``, read from ``/proc``
while it runs, at the moment it reports scans 1, 25 and 50 (every row is recorded). The product is
not changed for this: the rows are the batch's own per-scan output lines.

The record goes to ``--json`` (default ``benchmarks/results/bench_load.json``) through
:func:`innerear.reporting.performance.write_record`.

    .venv/bin/python benchmarks/bench_load.py [--n 50] [--bad 5] [--profile smoke|demo]
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

BAD = ("truncated.nii.gz", "wrong_header.nrrd", "constant.nii.gz", "tiny.nii.gz", "nans.nii.gz")


def write_dicom_series(folder: Path, volume: np.ndarray, spacing) -> None:
    """An int16 (x, y, z) volume as a CT DICOM series (one file per z) with SimpleITK."""
    import SimpleITK as sitk

    from innerear.io import keep_locale

    folder.mkdir()
    img = sitk.GetImageFromArray(np.transpose(volume, (2, 1, 0)).astype(np.int16))
    img.SetSpacing([float(s) for s in spacing])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = f"1.2.826.0.1.3680043.2.1125.1.{abs(hash(folder.name)) % 10**8}"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k + 1)),
                           ("0008|0018", f"{uid}.3.{k + 1}"), ("0018|0050", f"{spacing[2]:.6f}"),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))))):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        with keep_locale():
            writer.Execute(sl)


def write_scans(folder: Path, n: int, n_bad: int, profile: str, seed: int) -> dict[str, str]:
    """The batch: ``{scan name: kind}`` (a format for a good scan, ``bad: <what>`` for the others)."""
    from innerear.data.phantom import generate_specimen
    from innerear.io import write_tiff_stack, write_volume
    from innerear.settings.profiles import get_profile

    settings = get_profile(profile).phantoms
    n_good = n - n_bad
    kinds = ["dicom"] * 2 + ["tiff"] * 3
    cycle = ("nii.gz", "nrrd", "mha")
    kinds += [cycle[i % 3] for i in range(max(0, n_good - len(kinds)))]
    kinds = kinds[:n_good]
    # spread the unusual formats through the batch
    order = sorted(range(n_good), key=lambda i: (i * 7919) % n_good)
    kinds = [kinds[i] for i in order]
    out: dict[str, str] = {}
    for i, kind in enumerate(kinds):
        spec = generate_specimen(i, seed, settings)
        spacing = tuple(float(v) for v in np.abs(np.diag(spec.affine)[:3]))
        name = f"scan{i:02d}"
        if kind == "dicom":
            write_dicom_series(folder / name, spec.image, spacing)
            out[name] = "DICOM series folder"
        elif kind == "tiff":
            write_tiff_stack(folder / f"{name}.tif", spec.image, spacing=spacing)
            out[f"{name}.tif"] = "TIFF stack (multipage)"
        else:
            write_volume(folder / f"{name}.{kind}", spec.image, spec.affine)
            out[f"{name}.{kind}"] = kind
    spec = generate_specimen(0, seed + 1, settings)
    bad = {}
    path = write_volume(folder / "bad_truncated.nii.gz", spec.image, spec.affine)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    bad["bad_truncated.nii.gz"] = "truncated file (half of a .nii.gz)"
    path = write_volume(folder / "bad_wrong_header.nrrd", spec.image, spec.affine)
    text = path.read_bytes()
    path.write_bytes(text.replace(b"sizes:", b"sizes: 999", 1))
    bad["bad_wrong_header.nrrd"] = "wrong header (NRRD sizes that do not match the data)"
    write_volume(folder / "bad_constant.nii.gz", np.full(spec.image.shape, 1000, np.uint16), spec.affine)
    bad["bad_constant.nii.gz"] = "constant image"
    write_volume(folder / "bad_tiny.nii.gz", spec.image[:4, :4, :4].copy(), spec.affine)
    bad["bad_tiny.nii.gz"] = "tiny volume (4 x 4 x 4)"
    nans = spec.image.astype(np.float32)
    nans[::3] = np.nan
    write_volume(folder / "bad_nans.nii.gz", nans, spec.affine)
    bad["bad_nans.nii.gz"] = "NaNs in a third of the slices"
    out.update(dict(list(bad.items())[:n_bad]))
    for extra in list(bad)[n_bad:]:
        (folder / extra).unlink()
    return out


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(line.split()[1])
    except OSError:
        pass
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="scans in the batch (default 50)")
    parser.add_argument("--bad", type=int, default=5, help="corrupt or implausible scans among them (default 5, at most 5)")
    parser.add_argument("--profile", default="smoke", choices=("smoke", "demo"), help="phantom size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="record path (default benchmarks/results/bench_load.json)")
    args = parser.parse_args(argv)
    from innerear.reporting.performance import results_path, write_record

    n_bad = min(args.bad, len(BAD))
    work = Path(tempfile.gettempdir()) / f"bench_load_{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "scans").mkdir(parents=True)
    try:
        kinds = write_scans(work / "scans", args.n, n_bad, args.profile, args.seed)
        print(f"{len(kinds)} scans written ({n_bad} bad)", flush=True)
        # OUTDIR made beforehand (the batch makes it otherwise); before the fix of is_scan_folder a new OUTDIR
        # and a folder holding .tif files made one "TIFF stack" of the whole folder
        (work / "out").mkdir()
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, "-m", "innerear", "segment", str(work / "scans"), "-o", str(work / "out"), "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        memory: list[dict] = []  # one per reported scan: seconds, VmHWM, VmRSS (MiB)
        last = {"VmHWM": 0, "VmRSS": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                values = _status(proc.pid)
                if values:
                    last.update(values)

        def rows(stream, label: str, lines: list[str]) -> None:
            for line in stream:
                lines.append(line.rstrip("\n"))
                is_row = (label == "out" and re.search(r": (inner ear|skipped)", line)) or \
                    (label == "err" and line.startswith("innerear: error: ") and " scans failed" not in line)
                if is_row:
                    values = _status(proc.pid) or last
                    memory.append({"scan": len(memory) + 1, "seconds": round(time.perf_counter() - t0, 2),
                                   "vm_hwm_mib": round(values.get("VmHWM", 0) / 1024, 1),
                                   "vm_rss_mib": round(values.get("VmRSS", 0) / 1024, 1),
                                   "line": line.strip()[:160]})

        out_lines: list[str] = []
        err_lines: list[str] = []
        threads = [threading.Thread(target=sample, daemon=True),
                   threading.Thread(target=rows, args=(proc.stdout, "out", out_lines), daemon=True),
                   threading.Thread(target=rows, args=(proc.stderr, "err", err_lines), daemon=True)]
        for t in threads:
            t.start()
        rc = proc.wait()
        stop.set()
        for t in threads:
            t.join(10)
        seconds = time.perf_counter() - t0
        if not (work / "out" / "summary.csv").exists():
            raise RuntimeError(f"the batch wrote no summary.csv (exit {rc}):\n" + "\n".join((out_lines + err_lines)[-15:]))
        with open(work / "out" / "summary.csv", newline="") as fh:
            summary = list(csv.DictReader(fh))
        by_name = {Path(r["file"]).name: r for r in summary}
        good = [k for k, v in kinds.items() if not k.startswith("bad_")]
        bad = [k for k in kinds if k.startswith("bad_")]

        def stem(name: str) -> str:
            for suffix in (".nii.gz", ".nrrd", ".mha", ".tif"):
                if name.endswith(suffix):
                    return name[: -len(suffix)]
            return name

        good_ok = [k for k in good if by_name.get(k, {}).get("status") == "ok"
                   and (work / "out" / f"{stem(k)}_mask.nii.gz").exists()
                   and (work / "out" / f"{stem(k)}_report.json").exists()]
        bad_failed = {k: by_name.get(k, {}).get("error", "") for k in bad if by_name.get(k, {}).get("status") == "failed"}
        unexpected = {k: (by_name.get(k, {}).get("status"), by_name.get(k, {}).get("error", "")[:200])
                      for k in kinds if (k in good) != (k in good_ok) or (k in bad) != (k in bad_failed)}
        at = {}
        for k in (1, (len(kinds) + 1) // 2, len(kinds)):
            row = memory[k - 1] if len(memory) >= k else None
            at[str(k)] = row and {"vm_hwm_mib": row["vm_hwm_mib"], "vm_rss_mib": row["vm_rss_mib"], "seconds": row["seconds"]}
        scan_seconds = [float(r["seconds"]) for r in summary if r["status"] == "ok" and r["seconds"]]
        record = {
            "settings": {"n": len(kinds), "bad": len(bad), "profile": args.profile, "seed": args.seed,
                         "formats": {v: sum(1 for x in kinds.values() if x == v) for v in sorted(set(kinds.values()))},
                         "model": "shipped (robust_cascade)", "threads": os.environ.get("INNEREAR_THREADS")},
            "exit_status": rc, "seconds": seconds,
            "good_with_mask_and_report": len(good_ok), "good": len(good),
            "bad_reported_failed": len(bad_failed), "bad_reasons": bad_failed,
            "bad_kinds": {k: kinds[k] for k in bad},
            "unexpected": unexpected, "summary_rows": len(summary),
            "median_scan_s": float(np.median(scan_seconds)) if scan_seconds else None,
            "peak_rss_at_scan": at,
            "rows": [{k: v for k, v in m.items() if k != "line"} for m in memory],
            "passed": rc != 0 and len(good_ok) == len(good) and len(bad_failed) == len(bad) and not unexpected
                      and len(summary) == len(kinds) and len(memory) == len(kinds),
            "note": "peak_rss_at_scan: the batch process's VmHWM (peak resident set so far) and VmRSS from /proc, "
                    "read when it printed that scan's row (rows are in the order the batch ran them, sorted by name)",
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_record(args.json or results_path(ROOT, "bench_load"), "bench_load", record)
    print(f"exit {rc}; {len(good_ok)}/{len(good)} good scans with mask and report; {len(bad_failed)}/{len(bad)} bad "
          f"ones failed with a reason; {seconds:.0f} s")
    for k, reason in bad_failed.items():
        print(f"  {k}: {reason[:150]}")
    if unexpected:
        print(f"  unexpected: {unexpected}")
    print("peak RSS (VmHWM) at scans " + ", ".join(f"{k}: {v['vm_hwm_mib'] if v else '?'} MiB" for k, v in at.items()))
    print(f"{'PASSED' if record['passed'] else 'FAILED'}; {path}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
