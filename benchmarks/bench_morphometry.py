"""The phantoms' anatomy against human morphometry (issue 21).

Generates ``--n`` phantoms (seed ``--seed``) at the demo profile's resolution, measures each
with :func:`innerear.metrics.morphometry.measure_morphometry`, prints the
phantoms-vs-literature table (:func:`innerear.metrics.literature.compare`) and writes
``benchmarks/results/morphometry.json`` (with its machine context).

Usage::

    .venv/bin/python benchmarks/bench_morphometry.py [--n 100] [--seed 0] [--workers 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from innerear.data import phantom as ph  # noqa: E402
from innerear.metrics.literature import compare, format_comparisons, mean_only, near_mean  # noqa: E402
from innerear.metrics.morphometry import measure_morphometry  # noqa: E402
from innerear.reporting.performance import results_path, write_record  # noqa: E402
from innerear.settings.profiles import get_profile  # noqa: E402


def measure_one(args: tuple[int, int]) -> dict:
    """One phantom: its draw's side and scale, and every morphometric quantity."""
    index, seed = args
    sp = ph.generate_specimen(index, seed, get_profile("demo").phantoms)
    m = measure_morphometry(sp.structures, sp.affine)
    return {"index": index, "side": sp.meta["side"], "scale": sp.meta["scale"], "voxel_mm": sp.meta["voxel_mm"],
            "values": m.values(), "notes": m.notes}


def _clean(x):
    return None if isinstance(x, float) and not np.isfinite(x) else x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as ex:
        rows = list(ex.map(measure_one, [(i, args.seed) for i in range(args.n)]))
    seconds = time.perf_counter() - t0
    comps = compare([r["values"] for r in rows])
    print(format_comparisons(comps))
    far = [c.quantity for c in mean_only(comps) if not near_mean(c)]  # a mean only: near it
    failing = [c.quantity for c in comps if c.median_in_band is False or c.all_within_limits is False] + far
    print(f"\n{args.n} phantoms in {seconds:.0f} s; failing: {failing or 'none'}")
    payload = {"n": args.n, "seed": args.seed, "profile": "demo", "seconds": seconds, "failing": failing,
               "comparisons": [{k: _clean(v) for k, v in asdict(c).items()} for c in comps],
               "phantoms": [{**r, "values": {k: _clean(v) for k, v in r["values"].items()}} for r in rows]}
    write_record(results_path(ROOT, "morphometry"), "bench_morphometry", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
