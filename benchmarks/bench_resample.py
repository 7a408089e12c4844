"""Time and peak memory of resampling a paper-sized scan to 256³ (cubic spline).

Compares ``scipy.ndimage.zoom`` on the whole scan in memory (what the pipeline did before
it was wired to the bounded resampler) with :func:`innerear.data.resample.resample_image_bounded`
(separable passes over slabs of a memory-mapped ``.npy``; what
:func:`innerear.data.preprocess.resample_image`, ``prepare_case`` and ``innerear segment`` now call). Each run is a fresh subprocess;
its peak resident memory is that process's ``VmHWM`` (high-water mark of its resident set,
file-mapped pages included), read at the end of the work, so it includes the Python
interpreter and the imported libraries (reported separately as "baseline"); the kernel's
``ru_maxrss`` from ``os.wait4`` is recorded as a cross-check (it can include the parent's
memory at the spawn, which is why the test volumes are written by yet another process).
Runs of the two methods alternate; the table gives medians.

Cases:

(a) ``618 × 892 × 600`` uint16 (the smallest scan size the paper gives), both methods, and the largest
    difference between their outputs relative to the intensity range;
(b) ``--large``: ``1500³`` uint16 (6.75 GB on disk, written here and deleted afterwards), the
    bounded method only: ``zoom`` needs about 16–18 bytes per source voxel (a float32 copy,
    the padded copy and the float64 spline coefficients), some 55–60 GB, more than this
    machine has, so it is not run.

Usage::

    .venv/bin/python benchmarks/bench_resample.py            # case (a)
    .venv/bin/python benchmarks/bench_resample.py --large    # cases (a) and (b)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 2**30


def write_volume(path: Path, shape: tuple[int, int, int], seed: int = 0, slab: int = 16) -> float:
    """A smooth uint16 test volume with noise, written slab by slab as a ``.npy``; seconds."""
    t0 = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    rng = np.random.default_rng(seed)
    y = np.arange(shape[1], dtype=np.float32)[:, None]
    z = np.arange(shape[2], dtype=np.float32)[None, :]
    yz = 6000 * np.sin(y / 41.0) * np.cos(z / 29.0) + 3000 * np.cos((y + 2 * z) / 97.0)
    noise = rng.normal(0, 800, (slab,) + tuple(shape[1:])).astype(np.float32)  # shifted per slab (cheap)
    for start in range(0, shape[0], slab):
        stop = min(shape[0], start + slab)
        x = np.arange(start, stop, dtype=np.float32)[:, None, None]
        shifted = np.roll(noise, (37 * start) % shape[1], axis=1)[: stop - start]
        block = 24000 + yz[None] + 5000 * np.sin(x / 53.0) + shifted
        out[start:stop] = np.clip(block, 0, 65535).astype(np.uint16)
    out.flush()
    del out
    return time.perf_counter() - t0


def _write_in_child(path: Path, shape) -> float:
    """Write the test volume in another process (its mapped pages never count here)."""
    code = ("import sys; sys.path.insert(0, %r); import bench_resample as b; from pathlib import Path; "
            "print(b.write_volume(Path(%r), %r))" % (str(Path(__file__).parent), str(path), tuple(shape)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(method: str, src: str, grid: int, max_bytes: int, out: str) -> None:
    """Runs in the subprocess: resample ``src`` with ``method``; prints one JSON line."""
    import innerear.data.preprocess as pre  # noqa: F401  (same imports for both methods)
    from innerear.data.resample import resample_image_bounded

    baseline = _status_mib("VmRSS")
    t0 = time.perf_counter()
    if method == "zoom":
        from scipy import ndimage

        scan = np.load(src)  # the scan read into memory, as the pipeline did
        result = ndimage.zoom(scan.astype(np.float32), [grid / s for s in scan.shape], order=3, mode="nearest",
                              grid_mode=True)
    else:
        result = resample_image_bounded(src, grid, max_bytes=max_bytes)
    seconds = time.perf_counter() - t0
    peak = _status_mib("VmHWM")  # this process's own high-water mark (see run_child)
    np.save(out, result)
    print(json.dumps({"seconds": seconds, "baseline_mib": baseline, "vmhwm_mib": peak}), flush=True)


def run_child(method: str, src: Path, grid: int, max_bytes: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(src), str(grid), str(max_bytes), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
    _, status, usage = os.wait4(proc.pid, 0)
    stdout = proc.stdout.read()
    stderr = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"method": method, "error": (stderr or stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"],
                "peak_mib": usage.ru_maxrss / 1024}
    info = json.loads(stdout.strip().splitlines()[-1])
    # The child's own VmHWM at the end of the work. ru_maxrss (KiB on Linux) is kept as a
    # cross-check: it can include the parent's memory at the time of the spawn (vfork), so
    # the volumes are written by a separate process and the parent stays small.
    info.update(method=method, peak_mib=info["vmhwm_mib"], ru_maxrss_mib=usage.ru_maxrss / 1024)
    return info


def _fmt_row(cols, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))


def bench_case(name: str, shape, grid: int, methods, repeats: int, max_bytes: int, workdir: Path) -> dict:
    nbytes = int(np.prod(shape)) * 2
    free = shutil.disk_usage(workdir).free
    if free < nbytes + 2 * GIB:
        return {"case": name, "skipped": f"not enough disk in {workdir}: {free / GIB:.1f} GiB free, "
                                         f"{(nbytes + 2 * GIB) / GIB:.1f} GiB needed"}
    src = workdir / f"{name}.npy"
    outs = {m: workdir / f"{name}_{m}.npy" for m in methods}
    try:
        write_s = _write_in_child(src, shape)
        print(f"  wrote {shape} uint16 ({nbytes / GIB:.2f} GiB) in {write_s:.0f} s", flush=True)
        runs = {m: [] for m in methods}
        for r in range(repeats):
            order = methods if r % 2 == 0 else methods[::-1]  # alternate which method goes first
            for m in order:
                res = run_child(m, src, grid, max_bytes, outs[m])
                runs[m].append(res)
                msg = res.get("error") or f"{res['seconds']:.1f} s, peak {res['peak_mib'] / 1024:.2f} GiB"
                print(f"  run {r + 1} {m}: {msg}", flush=True)
        result = {"case": name, "shape": list(shape), "grid": grid, "source_gib": nbytes / GIB, "methods": {}}
        for m in methods:
            ok = [x for x in runs[m] if "error" not in x]
            if not ok:
                result["methods"][m] = {"error": runs[m][0]["error"]}
                continue
            result["methods"][m] = {
                "seconds_median": float(np.median([x["seconds"] for x in ok])),
                "seconds": [x["seconds"] for x in ok],
                "peak_gib_median": float(np.median([x["peak_mib"] for x in ok])) / 1024,
                "baseline_gib": float(np.median([x["baseline_mib"] for x in ok])) / 1024,
                "ru_maxrss_gib": [x["ru_maxrss_mib"] / 1024 for x in ok],
            }
        if len(methods) == 2 and all(outs[m].exists() for m in methods):
            a, b = (np.load(outs[m]) for m in methods)
            v = np.load(src, mmap_mode="r")
            rng_ = float(v.max()) - float(v.min()) if v.size <= 2**29 else 65535.0
            result["max_abs_diff_rel_range"] = float(np.abs(a - b).max() / rng_)
        return result
    finally:
        for p in [src, *outs.values()]:
            p.unlink(missing_ok=True)


def print_table(results: list[dict]) -> None:
    widths = (26, 9, 9, 13, 14, 16)
    print(_fmt_row(("case / method", "seconds", "runs", "peak RSS GiB", "baseline GiB", "bytes/src voxel"), widths))
    for res in results:
        if "skipped" in res:
            print(f"{res['case']}: skipped ({res['skipped']})")
            continue
        nvox = float(np.prod(res["shape"]))
        for m, r in res["methods"].items():
            label = f"{res['case']} {'zoom' if m == 'zoom' else 'bounded'}"
            if "error" in r:
                print(_fmt_row((label, "failed", "", "", "", ""), widths), r["error"])
                continue
            per_voxel = (r["peak_gib_median"] - r["baseline_gib"]) * GIB / nvox
            print(_fmt_row((label, f"{r['seconds_median']:.1f}", len(r["seconds"]), f"{r['peak_gib_median']:.2f}",
                            f"{r['baseline_gib']:.2f}", f"{per_voxel:.2f}"), widths))
        if "max_abs_diff_rel_range" in res:
            print(f"  {res['case']}: max |bounded - zoom| / intensity range = {res['max_abs_diff_rel_range']:.2e}")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs=5, metavar=("METHOD", "SRC", "GRID", "MAX_BYTES", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--grid", type=int, default=256)
    ap.add_argument("--shape", default="618,892,600", help="case (a) shape")
    ap.add_argument("--repeats", type=int, default=2, help="runs per method in case (a)")
    ap.add_argument("--large", action="store_true", help="also case (b): 1500^3 uint16, bounded method only")
    ap.add_argument("--large-size", type=int, default=1500)
    ap.add_argument("--only-large", action="store_true", help="case (b) only")
    ap.add_argument("--max-bytes", type=float, default=2.0, help="GiB for resample_image_bounded")
    ap.add_argument("--workdir", default=None, help="where the test volumes go (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/bench_resample.json)")
    args = ap.parse_args(argv)
    if args.worker:
        m, src, grid, max_bytes, out = args.worker
        worker(m, src, int(grid), int(max_bytes), out)
        return []
    max_bytes = int(args.max_bytes * GIB)
    shape = tuple(int(s) for s in args.shape.split(","))
    base = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(dir=base, prefix="bench_resample_") as tmp:
        tmp = Path(tmp)
        if not args.only_large:
            print(f"(a) {shape} uint16 -> {args.grid}^3, zoom vs bounded (max_bytes {args.max_bytes:g} GiB), "
                  f"{args.repeats} run(s) each, alternating", flush=True)
            results.append(bench_case("a", shape, args.grid, ["bounded", "zoom"], args.repeats, max_bytes, tmp))
        if args.large or args.only_large:
            n = args.large_size
            print(f"(b) {n}^3 uint16 -> {args.grid}^3, bounded only (zoom would need ~20 bytes per "
                  f"source voxel, ~{20 * n**3 / GIB:.0f} GiB: not run)", flush=True)
            results.append(bench_case("b", (n, n, n), args.grid, ["bounded"], 1, max_bytes, tmp))
    print()
    print(f"resampling to {args.grid}^3 (cubic B-spline), {os.cpu_count()} CPU(s); peak RSS = VmHWM of the run's process")
    print_table(results)
    from innerear.reporting.performance import results_path, write_record

    path = write_record(args.json or results_path(ROOT, "bench_resample"), "bench_resample",
                        {"cases": results, "settings": {"grid": args.grid, "max_bytes_gib": args.max_bytes}})
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
