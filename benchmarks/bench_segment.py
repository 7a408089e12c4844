"""Peak memory and seconds of ``innerear segment`` itself on a large scan.

Writes a large synthetic scan as an **uncompressed NIfTI** (the format Hear-EU ships, and the
one the segmenter reads memory-mapped): a demo phantom generated at a coarse binning and
enlarged to the requested shape by repeating voxels (written slab by slab, so this script
never holds the whole scan either), then runs ``python -m innerear segment SCAN -o MASK
--report R.json`` in a fresh process and reads that process's peak resident memory
(``ru_maxrss`` of the child). The scan's pages that the kernel maps in are counted while
they are resident; the resampler releases them slab by slab.

Default: 300 × 446 × 309 voxels (a quarter of the paper's smallest Hear-EU scan per axis
pair). ``--large`` uses 618 × 892 × 600, that scan's full size (330 M voxels, 660 MB);
``--shape X Y Z`` any other. The record goes to ``--json`` (default
``benchmarks/results/bench_segment.json``, written by :func:`innerear.reporting.performance.write_record`
with the machine, date and versions) with the report's timings.

    .venv/bin/python benchmarks/bench_segment.py [--large] [--shape 1500 1500 1500]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

LARGE = (618, 892, 600)


def write_large_scan(path: Path, shape: tuple[int, int, int], seed: int = 0, binning: int = 4) -> dict:
    """A demo phantom enlarged to ``shape`` by voxel repetition, written as uncompressed NIfTI."""
    from dataclasses import replace

    import nibabel as nib

    from innerear.settings.profiles import get_profile
    from innerear.data.phantom import generate_specimen

    settings = replace(get_profile("demo").phantoms, binning=binning)
    spec = generate_specimen(0, seed, settings)
    small = np.asarray(spec.image)
    factor = [s / t for s, t in zip(small.shape, shape)]  # small voxels per large voxel
    affine = np.asarray(spec.affine, float) @ np.diag([*factor, 1.0])
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint16)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    hdr.set_slope_inter(1.0, 0.0)
    offset = 352
    hdr["vox_offset"] = offset
    with open(path, "wb") as fh:
        fh.write(hdr.binaryblock)
        fh.write(b"\0" * (offset - len(hdr.binaryblock)))
        fh.truncate(offset + int(np.prod(shape)) * 2)
    data = np.memmap(path, np.uint16, "r+", offset=offset, shape=shape, order="F")
    idx = [np.minimum((np.arange(n) * f).astype(int), s - 1) for n, f, s in zip(shape, factor, small.shape)]
    plane = small[np.ix_(idx[0], idx[1])]  # (X, Y, small z)
    for z0 in range(0, shape[2], 16):  # slabs along the last (outermost, Fortran order) axis
        zs = idx[2][z0:z0 + 16]
        data[:, :, z0:z0 + len(zs)] = np.clip(plane[:, :, zs], 0, 65535).astype(np.uint16)
    data.flush()
    del data
    return {"shape": list(shape), "bytes": path.stat().st_size, "voxel_mm": [float(v) for v in
                                                                          np.linalg.norm(affine[:3, :3], axis=0)]}


def run_segment(scan: Path, out_dir: Path, model: str | None, package_root: Path = ROOT) -> dict:
    """``innerear segment`` in a fresh process; its peak RSS from the parent's ``RUSAGE_CHILDREN``."""
    mask, report = out_dir / "mask.nii.gz", out_dir / "report.json"
    cmd = [sys.executable, "-m", "innerear", "segment", str(scan), "-o", str(mask), "--report", str(report),
           "--quiet", "--force"] + (["--model", model] if model else [])
    probe = ("import resource, subprocess, sys, json, time\n"
             "t = time.perf_counter()\n"
             f"rc = subprocess.run({cmd!r}).returncode\n"
             "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t,"
             " 'peak_rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    # run from the package's checkout: ``python -m`` puts the working folder first on sys.path
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=package_root)
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"innerear segment failed:\n{proc.stderr[-2000:]}") from None
    if res["rc"] != 0:
        raise RuntimeError(f"innerear segment exited {res['rc']}:\n{proc.stderr[-2000:]}")
    res["report"] = json.loads(report.read_text())
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--large", action="store_true", help=f"scan of {LARGE[0]} x {LARGE[1]} x {LARGE[2]} voxels")
    ap.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"))
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--workdir", default=None, help="where the scan is written (default: a temporary folder)")
    ap.add_argument("--compare", default=None, metavar="CHECKOUT",
                    help="also run the innerear package of another checkout (e.g. an older commit) on the same scan")
    ap.add_argument("--json", default=None, help="record (default: benchmarks/results/bench_segment.json)")
    args = ap.parse_args(argv)
    shape = tuple(args.shape) if args.shape else LARGE if args.large else (300, 446, 309)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        scan_info = write_large_scan(tmp / "scan.nii", shape)
        print(f"scan {shape} written ({scan_info['bytes'] / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s",
              flush=True)
        res = run_segment(tmp / "scan.nii", tmp, args.model)
        other = run_segment(tmp / "scan.nii", tmp, args.model, Path(args.compare)) if args.compare else None
    rep = res.pop("report")
    out = {"what": "peak resident memory and seconds of `innerear segment` (its own path: memory-mapped "
                   "uncompressed NIfTI, bounded resampling, engine in fast mode, map back in slabs)",
           "scan": scan_info, "peak_rss_mib": res["peak_rss_kib"] / 1024, "seconds": res["seconds"],
           "scan_mib": scan_info["bytes"] / 2**20, "timings_s": rep.get("timings_s"),
           "inner_ear_voxels": rep["inner_ear"]["voxels"]}
    if other is not None:
        other_rep = other.pop("report")
        out["compare"] = {"checkout": args.compare, "peak_rss_mib": other["peak_rss_kib"] / 1024,
                          "seconds": other["seconds"], "timings_s": other_rep.get("timings_s"),
                          "inner_ear_voxels": other_rep["inner_ear"]["voxels"]}
        print(f"  {args.compare}: peak RSS {out['compare']['peak_rss_mib']:.0f} MiB, {other['seconds']:.1f} s; "
              f"steps {other_rep.get('timings_s')}")
    print(f"innerear segment on {'x'.join(map(str, shape))}: peak RSS {out['peak_rss_mib']:.0f} MiB "
          f"(scan {out['scan_mib']:.0f} MiB on disk), {res['seconds']:.1f} s; steps {rep.get('timings_s')}")
    from innerear.reporting.performance import results_path, write_record

    print(f"wrote {write_record(args.json or results_path(ROOT, 'bench_segment'), 'bench_segment', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
