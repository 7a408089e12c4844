"""Issue 24, cases 1 and 3, with the shipped segmenter: inverted intensities and turned scans.

Case 1: a demo phantom with inverted intensities (a bright lumen) used to give exit 0 and a 5 mm³
speck (Dice 0.000) with no warning. Now it must be segmented (the shipped model is trained on
SynthSeg-style contrasts, bright lumen included) or doubted by a check in the report.
Case 3: the same phantom turned 90° (about z, about x, or the array rotated) gave Dice 0.79-0.86
instead of 0.95. Specimen micro-CT is mounted in any orientation: the shipped model is trained
on turned and mirrored scans (the cube's 48 symmetries and poses up to 180°), and the engine
turns a scan whose labyrinth it finds turned by more than 35° into the training phantoms' frame
for a second pass (:mod:`innerear.inference.align`), reading the frame again from each realigned
pass and repeating it while the frame moves by more than 5° (the first pass of a turned scan is its
worst, and the frame read from it was 15-25° off). The issue's goal is a Dice change below 0.02.
Measured (2026-12-04, after the realignment was given a grid large enough to hold the turned
labyrinth): phantom 2 0.944 as acquired; array turned 90° about z 0.945 and about x 0.946;
acquired 45° further turned 0.937 (before: 0.929, when the turn moved part of the labyrinth out of
the scan's grid). Phantom 5, whose labyrinth fills its field of view: 0.967 as acquired; turned
90° about z 0.967 (its first pass shows too little cochlea to read a frame from, so the engine
tries the cube's turns until one shows the whole labyrinth; before: 0.691); acquired 45° further
turned 0.965 (before: 0.923, the frame estimate never settling). Phantom 0: 0.954 as acquired,
0.953 / 0.953 / 0.953. Phantom 7 acquired 45° further turned gave 0.845 against 0.918 as acquired
(cochlea 0.59): its realigned stage 1 cut the upper cochlear turns off the vestibule by 0.6 mm, and
the later stages, handed only stage 1's largest component, never found them again (with the
generator's exact turn too: 0.812). A model in physical units now hands later stages the pieces
of at least 2 mm³ within 1 mm of that component (``InferenceSettings.context_gap_mm``). With that,
phantom 7's first pass at 45° read a turn from which no realigned pass showed a labyrinth, as a
left or as a right ear (0.72), and phantom 6's first pass without it showed no labyrinth, and the
search found a turn below 35° that was then not realigned (0.77). The engine now tries the other
side's turn, then searches the cube's turns, and realigns whatever turn a search finds: phantom 7
0.942 as acquired, 0.940 at 45°; phantom 6 0.956 at 45°. All 12 demo phantoms, both settings side
by side: ``benchmarks/bench_turns.py`` (the Performance page).
"""
from __future__ import annotations

import numpy as np
import pytest

from innerear.data import phantom as ph
from innerear.data.phantom.acquisition import Acquisition
from innerear.inference.segment import Segmenter
from innerear.metrics import dice
from innerear.settings.profiles import get_profile

TURN_BOUND = 0.02  # the goal; measured changes at most 0.007 (docstring)
pytestmark = pytest.mark.slow  # each test segments a few scans with the shipped model


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter()


@pytest.fixture(scope="module")
def base(segmenter):
    """The phantom as acquired and its Dice (segmented once for the module)."""
    spec = _phantom()
    return spec, dice(segmenter.segment(spec.image, affine=spec.affine, probabilities=False).mask, spec.label)


def _phantom(pose_deg: float | None = None, index: int = 2):
    acq = Acquisition(style="microct", voxel_mm=0.15, fov_mm=20.0, centre="labyrinth", units="uint16",
                      pose_deg=pose_deg)
    return ph.generate_specimen(index, 9301, get_profile("demo").phantoms, realism=ph.AnatomyRealism.full(),
                                acquisition=acq)


def test_inverted_intensities_are_segmented_or_doubted(segmenter, base):
    spec = base[0]
    image = spec.image.astype(np.float32)
    inverted = (image.max() + image.min() - image).astype(np.uint16)  # bright lumen, dark bone
    result = segmenter.segment(inverted, affine=spec.affine, probabilities=False)
    score = dice(result.mask, spec.label)
    assert score >= 0.8 or result.report.warnings, (score, result.report.warnings)


@pytest.mark.parametrize("turn", ["array rot90 (x, y)", "array rot90 (y, z)"])
def test_a_quarter_turn_changes_dice_little(segmenter, base, turn):
    spec, plain = base
    axes = (0, 1) if "x, y" in turn else (1, 2)
    turned_image = np.ascontiguousarray(np.rot90(spec.image, 1, axes))
    turned_label = np.rot90(spec.label, 1, axes)
    turned = dice(segmenter.segment(turned_image, affine=spec.affine, probabilities=False).mask, turned_label)
    assert plain > 0.85
    assert abs(turned - plain) < TURN_BOUND, (plain, turned)


def test_a_45_degree_turn_changes_dice_little(segmenter, base):
    spec, plain = base
    turned = _phantom(pose_deg=float(spec.meta["pose_deg"]) + 45.0)
    score = dice(segmenter.segment(turned.image, affine=turned.affine, probabilities=False).mask, turned.label)
    assert plain > 0.85
    assert abs(score - plain) < TURN_BOUND, (plain, score)


@pytest.fixture(scope="module")
def base5(segmenter):
    """Demo phantom 5, whose labyrinth fills its 20 mm field of view, and its Dice as acquired."""
    spec = _phantom(index=5)
    return spec, dice(segmenter.segment(spec.image, affine=spec.affine, probabilities=False).mask, spec.label)


def test_a_quarter_turn_that_hides_the_labyrinth_from_the_first_pass(segmenter, base5):
    """Phantom 5 turned a quarter turn about z: the first pass finds too little cochlea to read a
    frame from, so the engine tries the cube's turns until a pass shows the whole labyrinth."""
    spec, plain = base5
    turned_image = np.ascontiguousarray(np.rot90(spec.image, 1, (0, 1)))
    result = segmenter.segment(turned_image, affine=spec.affine, probabilities=False)
    turned = dice(result.mask, np.rot90(spec.label, 1, (0, 1)))
    alignment = result.report.prepared["alignment"]
    # before the pieces near stage 1's largest component reached the later stages, this first pass
    # showed no labyrinth and the cube's turns were searched; now it may show one: either way realigned
    assert alignment["realigned"] and alignment.get("searched", [{"labyrinth": True}])[-1]["labyrinth"], alignment
    assert abs(turned - plain) < TURN_BOUND, (plain, turned)


def test_a_45_degree_turn_of_a_labyrinth_that_fills_the_field_of_view(segmenter, base5):
    """Turned about its centre, phantom 5's labyrinth would leave the scan's grid: the realigned
    pass runs on a cube about the labyrinth large enough to hold it."""
    spec, plain = base5
    turned = _phantom(pose_deg=float(spec.meta["pose_deg"]) + 45.0, index=5)
    result = segmenter.segment(turned.image, affine=turned.affine, probabilities=False)
    score = dice(result.mask, turned.label)
    assert result.report.prepared["alignment"]["realigned"]
    assert abs(score - plain) < TURN_BOUND, (plain, score)


def test_a_45_degree_turn_whose_first_stage_cuts_the_cochlea_off(segmenter):
    """Demo phantom 7 at 45°: realigned, stage 1 leaves the upper cochlear turns 0.6 mm off the
    vestibule; they reach the later stages as context, so the turn costs less than the goal."""
    spec = _phantom(index=7)
    plain = dice(segmenter.segment(spec.image, affine=spec.affine, probabilities=False).mask, spec.label)
    turned = _phantom(pose_deg=float(spec.meta["pose_deg"]) + 45.0, index=7)
    result = segmenter.segment(turned.image, affine=turned.affine, probabilities=False)
    score = dice(result.mask, turned.label)
    assert result.report.prepared["alignment"]["realigned"]
    assert plain > 0.9 and abs(score - plain) < TURN_BOUND, (plain, score)
