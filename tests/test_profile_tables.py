"""The profile tables of the README and the book say what config.PROFILES says."""
import re
from pathlib import Path

import pytest

from innerear.settings.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page", ["README.md", "book/reproducing.md"])
def test_profile_table_matches_the_profiles(page):
    rows = {}
    for line in (ROOT / page).read_text().splitlines():
        m = re.match(r"\| `(\w+)` \| (\d+)³ \| (\d+) \| (\d+) \| (\d+) \|", line)
        if m:
            rows[m.group(1)] = tuple(int(v) for v in m.groups()[1:])
    assert set(rows) == set(PROFILES), f"{page} lists profiles {sorted(rows)}"
    for name, p in PROFILES.items():
        assert rows[name] == (p.grid, p.base_filters, p.max_epochs, p.phantoms.n_specimens), (page, name)
