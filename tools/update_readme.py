"""Write the domain-shift matrix into README.md from ``benchmarks/results/domain_shift.json``.

    .venv/bin/python tools/update_readme.py

``tests/test_readme_matrix.py`` fails when the README's block differs from what this writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from innerear.reporting.performance import (domain_shift_markdown, read_record, replace_readme_block, results_path,
                                            shipped_speed)


def main() -> int:
    record = read_record(results_path(ROOT, "domain_shift"))
    if record is None:
        print("no benchmarks/results/domain_shift.json: run benchmarks/bench_domain_shift.py first", file=sys.stderr)
        return 1
    readme = ROOT / "README.md"
    readme.write_text(replace_readme_block(readme.read_text(), domain_shift_markdown(record, shipped_speed(ROOT))))
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
