"""How many cores this process may use: one answer for every part that works side by side."""
from __future__ import annotations

import os


def cores() -> int:
    """The cores this process may use: ``$INNEREAR_THREADS``, else its CPU affinity (else the CPU count)."""
    threads = int(os.environ.get("INNEREAR_THREADS", "0") or 0)
    if threads:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
