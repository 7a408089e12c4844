"""Write the domain-shift matrix (``benchmarks/results/domain_shift.json``) and the clinical CBCT
matrix (``clinical_matrix.json``) into README.md.

    .venv/bin/python tools/update_readme.py

``tests/test_readme_matrix.py`` fails when the README's block differs from what this writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from innerear.reporting.performance import readme_block, replace_readme_block


def main() -> int:
    block = readme_block(ROOT)
    if block is None:
        print("no benchmarks/results/domain_shift.json: run benchmarks/bench_domain_shift.py first", file=sys.stderr)
        return 1
    readme = ROOT / "README.md"
    readme.write_text(replace_readme_block(readme.read_text(), block))
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
