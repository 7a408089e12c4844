"""A seed draws the same phantom on every CPU.

numpy picks its vector kernels by CPU at run time, and an AVX2 and an AVX-512 machine can disagree in
the last bit of a sum or product. The generator must not turn that into a different phantom: version
2 sized a coarse texture grid from ``ceil(extent / step)`` where the extent was exactly a whole number
of steps, got one node more on one kind of CPU than on the other, and so drew a different texture for
the same seed (the golden test failed on an AVX-512 machine with every voxel moved).
"""
from __future__ import annotations

import os
import subprocess
import sys
import numpy as np
import pytest

from innerear.data.phantom.raster import coarse_nodes
from innerear.reporting.performance import cpu_flags


@pytest.mark.parametrize("step", [0.1, 0.15, 0.3, 0.468])
@pytest.mark.parametrize("k", [1, 33, 200])
def test_a_whole_number_of_steps_counts_alike_whatever_its_last_bit(k, step):
    exact = k * step
    for extent in (np.nextafter(exact, 0.0), exact, np.nextafter(exact, np.inf)):
        assert coarse_nodes(np.zeros(3), np.full(3, extent), step).tolist() == [k + 3] * 3


def test_a_fraction_of_a_step_still_adds_a_node():
    assert coarse_nodes(np.zeros(1), np.array([3.05]), 0.1).tolist() == [31 + 3]
    assert coarse_nodes(np.zeros(1), np.array([0.0]), 0.3).tolist() == [3]


_DRAW = """
import hashlib, sys
from innerear.data import phantom as ph
from innerear.settings.profiles import get_profile
for i in range(2):
    s = ph.generate_specimen(i, 0, get_profile("smoke").phantoms)
    print(hashlib.sha256(s.image.tobytes()).hexdigest(), hashlib.sha256(s.label.tobytes()).hexdigest())
"""


@pytest.mark.skipif(not cpu_flags().get("avx512f", False), reason="needs a CPU with AVX-512 to compare numpy's kernels with and without it")
def test_smoke_phantoms_are_the_same_with_and_without_avx512_kernels():
    def draw(disable: str | None) -> str:
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        env.pop("NPY_DISABLE_CPU_FEATURES", None)
        if disable:
            env["NPY_DISABLE_CPU_FEATURES"] = disable
        return subprocess.run([sys.executable, "-c", _DRAW], env=env, capture_output=True, text=True,
                              check=True).stdout

    assert draw(None) == draw("X86_V4 AVX512_ICL AVX512_SPR")
