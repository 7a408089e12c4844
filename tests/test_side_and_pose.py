"""Left and right ears, turned scans, clinical CBCT draws (issue 22).

A left ear and its mirror image are the same anatomy: the shipped segmenter must give
mirror-image masks (test-time mirroring makes every stage equivariant to the left-right
flip). The training mixture's new draws (synthetic contrasts, clinical CBCT grey values,
any pose, the cube's symmetries) are checked here from what they generate.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from innerear.data import phantom as ph
from innerear.data.phantom.acquisition import Acquisition, _synth_imaging
from innerear.inference.engine import ClassProbabilities, InferenceSettings, run_stage
from innerear.metrics import dice
from innerear.nets.backbones import build
from innerear.settings.profiles import get_profile
from innerear.training.robust import _reoriented, cube_symmetry, PreparedScan, reorient


def _header_mirrored(affine: np.ndarray, nx: int) -> np.ndarray:
    """The same voxels with the header's first axis mirrored (the array stays in place)."""
    out = np.array(affine, float)
    out[:3, 3] = affine[:3, 3] + affine[:3, 0] * (nx - 1)
    out[:3, 0] *= -1.0
    return out


def test_cube_symmetries_are_48_distinct_and_the_core_follows():
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    seen = {reorient(vol, i).tobytes() + bytes(reorient(vol, i).shape) for i in range(48)}
    assert len(seen) == 48
    assert cube_symmetry(0) == ((0, 1, 2), (False, False, False))
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 11, 13)).astype(np.float32)
    classes = (rng.random((9, 11, 13)) < 0.3).astype(np.uint8)
    core = (slice(1, 7), slice(2, 11), slice(0, 10))
    scan = PreparedScan("s", image, classes, np.eye(4), core)
    for i in (5, 17, 33, 47):
        turned = _reoriented(scan, i)
        assert turned.image.shape == reorient(image, i).shape
        inside = np.zeros(image.shape, bool)
        inside[core] = True
        assert np.array_equal(reorient(inside, i), np.pad(np.ones([s.stop - s.start for s in turned.core], bool),
                                                           [(s.start, n - s.stop) for s, n in
                                                            zip(turned.core, turned.image.shape)]))


def test_synthetic_contrasts_keep_ct_ordering_in_two_of_three_and_free_otherwise():
    base = ph.draw_params(0, 0, get_profile("smoke").phantoms).imaging
    draws = [_synth_imaging(base, 0.1, np.random.default_rng(i)) for i in range(300)]
    ct = [d.i_lumen < d.i_capsule and d.i_lumen * d.air_factor < d.i_lumen for d in draws]
    assert 0.6 < np.mean(ct) < 0.85  # the CT ordering, plus free draws that happen to keep it
    assert any(d.i_lumen > d.i_capsule for d in draws)  # bright lumen: inversions are trained on
    assert all(abs(d.i_capsule - d.i_lumen) >= 300.0 - 1e-6 for d in draws)
    cnr = np.array([1.0 / d.noise_frac for d in draws])
    assert cnr.min() >= 2.5 - 1e-6 and cnr.max() <= 50.0 + 1e-6 and np.median(cnr) < 15.0


def test_clinical_overrides_set_grey_values_resolution_noise_side_and_pose():
    acq = Acquisition(style="cbct", voxel_mm=0.25, fov_mm=9.0, centre="cochlea", units="hu", lumen_hu=200.0,
                      capsule_hu=1200.0, cnr=5.0, psf_fwhm_mm=0.4, side="right", pose_deg=120.0)
    spec = ph.generate_specimen(0, 5, get_profile("smoke").phantoms, realism=ph.AnatomyRealism.full(),
                                acquisition=acq)
    assert spec.meta["side"] == "right" and spec.meta["pose_deg"] == pytest.approx(120.0)
    info = spec.meta["acquisition"]
    assert info["psf_sigma_vox"] == pytest.approx(0.4 / 2.3548 / 0.25, rel=1e-3)
    assert info["noise_sd"] == pytest.approx((1200.0 - 200.0) / 5.0, rel=1e-3)
    image = spec.image.astype(float)
    deep = ph_deep_lumen(spec.label)
    assert abs(np.median(image[deep]) - 200.0) < 150.0  # the fluid reads as asked (noise s.d. 200)
    for bad in (dict(lumen_hu=100.0, style="microct"), dict(side="both"), dict(cnr=0.0), dict(psf_fwhm_mm=3.0)):
        with pytest.raises(ValueError, match="acquisition"):
            Acquisition(**{**dict(style="cbct"), **bad})


def ph_deep_lumen(label: np.ndarray) -> np.ndarray:
    """Label voxels at least two voxels from the lumen's wall (no partial volume)."""
    from scipy import ndimage

    return ndimage.binary_erosion(label > 0, iterations=2)


def test_test_time_mirroring_makes_a_stage_equivariant_to_the_left_right_flip():
    net = build("unet", channels=2, size=None, base_filters=4, depth=2, n_classes=4)
    rng = np.random.default_rng(1)
    image = rng.normal(size=(20, 16, 24)).astype(np.float32)
    context = np.zeros(image.shape, np.uint8)
    context[4:12, 3:13, 5:20] = 1
    for mode in ("fast", "full"):
        settings = InferenceSettings(mode=mode, mirror=True)
        p, m, c = run_stage(net, "axial", image, [context], 0.5, settings, return_classes=True)
        pf, mf, cf = run_stage(net, "axial", image[::-1].copy(), [context[::-1].copy()], 0.5, settings,
                               return_classes=True)
        np.testing.assert_allclose(pf[::-1], p, atol=1e-5)
        np.testing.assert_allclose(cf[::-1], c, atol=1e-5)
        assert np.array_equal(mf[::-1], m)
    plain = run_stage(net, "axial", image, [context], 0.5, InferenceSettings(mode="full"))[0]
    flipped = run_stage(net, "axial", image[::-1].copy(), [context[::-1].copy()], 0.5,
                        InferenceSettings(mode="full"))[0]
    assert np.abs(flipped[::-1] - plain).max() > 1e-4  # without mirroring a network is not symmetric


@pytest.mark.slow
def test_shipped_segmenter_gives_a_left_ear_and_its_mirror_the_same_anatomy():
    from innerear.inference.segment import Segmenter

    seg = Segmenter()
    assert seg.load().settings.mirror, "the shipped model should mirror at test time"
    acq = Acquisition(style="cbct", voxel_mm=0.2, fov_mm=18.0, centre="labyrinth", units="hu", side="left")
    spec = ph.generate_specimen(3, 9101, get_profile("demo").phantoms, realism=ph.AnatomyRealism.full(),
                                acquisition=acq)
    image, affine = spec.image, spec.affine
    stored = seg.segment(image, affine=affine, probabilities=False).mask
    assert dice(stored, spec.label) > 0.7
    array_mirror = seg.segment(np.ascontiguousarray(image[::-1]), affine=affine, probabilities=False).mask[::-1]
    header_mirror = seg.segment(image, affine=_header_mirrored(affine, image.shape[0]), probabilities=False).mask
    assert dice(stored, array_mirror) >= 0.98
    assert dice(stored, header_mirror) >= 0.98


def test_header_mirror_helper_keeps_the_voxels_in_place():
    affine = np.diag([0.2, 0.3, 0.4, 1.0])
    affine[:3, 3] = [5.0, -2.0, 1.0]
    out = _header_mirrored(affine, 10)
    first, last = out @ [0, 0, 0, 1], out @ [9, 0, 0, 1]
    assert first[0] == pytest.approx(affine[0, 3] + 9 * 0.2) and last[0] == pytest.approx(affine[0, 3])
    assert dataclasses.is_dataclass(InferenceSettings())


def _ball_labyrinth(radius: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Three balls on a 48³ grid where the reference frame puts the cochlea (1), vestibule (2) and
    canals (3): ``(labels, centre)``."""
    from innerear.inference.align import ANATOMY_FRAME

    labels = np.zeros((48, 48, 48), np.uint8)
    centre = np.array([24.0, 24.0, 24.0])
    idx = np.indices(labels.shape).reshape(3, -1).T
    for code, direction, dist in ((2, [0, 0, 0], 0.0), (1, ANATOMY_FRAME["cochlea"], 9.0),
                                  (3, ANATOMY_FRAME["canals"], 9.0)):
        c = centre + dist * np.asarray(direction)
        labels.reshape(-1)[np.linalg.norm(idx - c, axis=1) <= radius] = code
    return labels, centre


def test_find_turn_reads_a_turned_labyrinth_and_turn_volume_undoes_it():
    from scipy.spatial.transform import Rotation

    from innerear.inference.align import ANATOMY_FRAME, find_turn, turn_volume

    labels, centre = _ball_labyrinth()
    upright = find_turn(labels, ANATOMY_FRAME)
    assert upright is not None and upright.angle_deg < 1.0 and upright.side == "left"
    mirrored = find_turn(labels[::-1].copy(), ANATOMY_FRAME)
    assert mirrored.angle_deg < 1.0 and mirrored.side == "right"  # a mirror is a side, not a turn
    assert find_turn(labels, ANATOMY_FRAME, voxel_mm=0.1) is None  # 4-voxel balls at 0.1 mm: too small
    turned = np.rint(turn_volume(labels, type(upright)(Rotation.from_euler("z", 90, degrees=True).as_matrix(),
                                                       90.0, centre, "left"), back=True, order=0)).astype(np.uint8)
    found = find_turn(turned, ANATOMY_FRAME)
    assert abs(found.angle_deg - 90.0) < 5.0
    upright_again = np.rint(turn_volume(turned, found, order=0)).astype(np.uint8)
    assert find_turn(upright_again, ANATOMY_FRAME).angle_deg < 5.0  # turned into the reference frame
    round_trip = np.rint(turn_volume(upright_again, found, back=True, order=0)).astype(np.uint8)
    assert dice(round_trip == 1, turned == 1) > 0.9 and dice(round_trip == 3, turned == 3) > 0.9


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_a_turn_in_slabs_side_by_side_is_the_turn_in_one_call(threads, monkeypatch):
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    from innerear.inference.align import _affine

    monkeypatch.setenv("INNEREAR_THREADS", threads)
    vol = ndimage.gaussian_filter(np.random.default_rng(4).random((30, 26, 22)), 1.5).astype(np.float32)
    rot = Rotation.from_euler("zx", [50, 20], degrees=True).as_matrix()
    offset = np.array([15.0, 13.0, 11.0]) - rot @ np.array([17.5, 17.5, 17.5])
    for order in (0, 1, 3):
        for mode, cval in (("nearest", 0.0), ("constant", 0.25)):
            expected = ndimage.affine_transform(vol, rot, offset=offset, output_shape=(36, 36, 36), order=order,
                                                mode=mode, cval=cval, output=np.float32)
            got = _affine(vol, rot, offset, (36, 36, 36), order, mode, cval)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"order {order}, {mode}")


def test_quarter_turns_are_exact_and_found_near_a_turn():
    from scipy.spatial.transform import Rotation

    from innerear.inference.align import cube_turn, quarter_turn

    vol = np.random.default_rng(0).normal(size=(4, 5, 6, 2)).astype(np.float32)
    for axis in "xyz":
        r = Rotation.from_euler(axis, 90, degrees=True).as_matrix()
        q = cube_turn(Rotation.from_euler(axis, 97, degrees=True).as_matrix())
        np.testing.assert_allclose(q, np.rint(r))
        assert np.array_equal(quarter_turn(quarter_turn(vol, q), q, back=True), vol)
    assert cube_turn(Rotation.from_euler("z", 45, degrees=True).as_matrix()) is None
    q = cube_turn(Rotation.from_euler("z", 90, degrees=True).as_matrix())
    assert np.array_equal(quarter_turn(vol[..., 0], q), np.rot90(vol[..., 0], 1, (0, 1)))


def test_search_turns_are_the_cubes_nine_turns_about_one_axis_quarters_first():
    from innerear.inference.align import search_turns, turn_between

    turns = search_turns()
    assert len(turns) == 9 and len({name for name, _ in turns}) == 9
    angles = [turn_between(np.eye(3), q) for _, q in turns]
    assert angles == pytest.approx([90.0] * 6 + [180.0] * 3)
    assert all(np.isclose(np.linalg.det(q), 1.0) and np.array_equal(q, np.rint(q)) for _, q in turns)


def test_a_first_pass_showing_no_labyrinth_is_searched_through_the_cubes_turns():
    """A stand-in network that finds the whole labyrinth only within 40° of the training frame (and
    only the vestibule otherwise): a scan turned a quarter turn about z gives no frame at first,
    the search finds the quarter turn that shows the labyrinth, and the final labels are the scan's."""
    from innerear.inference.align import ANATOMY_FRAME, find_turn
    from innerear.inference.engine import Cascade

    class PoseBound(Cascade):
        def _stages(self, image, run, stats):
            labels = np.rint(image).astype(np.intp)
            turn = find_turn(labels, ANATOMY_FRAME)
            seen = labels if turn is not None and turn.angle_deg < 40.0 else np.where(labels == 2, 2, 0)
            classes = np.eye(4, dtype=np.float32)[seen]
            return [(1.0 - classes[..., 0], seen > 0)], ClassProbabilities.of(classes)

    labels, _ = _ball_labyrinth(radius=5.0)  # touching balls: one component
    turned = np.ascontiguousarray(np.rot90(labels, 1, (0, 1)))
    cascade = PoseBound(stages=[], normalizer=None, grid=None, voxel_mm=0.5, anatomy_frame=dict(ANATOMY_FRAME))
    stats: dict = {}
    [(_, first)], classes = cascade._stages(turned.astype(np.float32), InferenceSettings(), stats)
    assert find_turn(np.where(first, 2, 0), ANATOMY_FRAME) is None  # the first pass: no frame
    mask, _, classes = cascade._realigned(turned.astype(np.float32), first, classes.foreground(), classes,
                                          InferenceSettings(), stats)
    record = stats["alignment"]
    assert record["searched"][-1]["labyrinth"] and record["searched"][-1]["turn"].endswith("about z")
    assert record["realigned"] and record["passes"][0]["exact_quarter_turn"]
    assert np.array_equal(np.argmax(classes.full(), axis=-1), turned)
    assert dice(mask, turned > 0) == 1.0


def test_no_search_in_a_field_of_view_too_small_for_a_labyrinth():
    from innerear.inference.align import ANATOMY_FRAME
    from innerear.inference.engine import Cascade

    class Blind(Cascade):
        def _stages(self, image, run, stats):
            raise AssertionError("searched a 9.6 mm field of view")

    labels, _ = _ball_labyrinth(radius=5.0)
    only_vestibule = np.eye(4, dtype=np.float32)[np.where(labels == 2, 2, 0)]
    cascade = Blind(stages=[], normalizer=None, grid=None, voxel_mm=0.2, anatomy_frame=dict(ANATOMY_FRAME))
    stats: dict = {}
    cascade._realigned(labels.astype(np.float32), labels == 2, 1.0 - only_vestibule[..., 0],
                       ClassProbabilities.of(only_vestibule), InferenceSettings(), stats)
    assert "searched" not in stats["alignment"] and not stats["alignment"]["realigned"]


def test_a_turn_on_the_labyrinths_own_cube_loses_nothing_at_the_scans_edge():
    """A labyrinth filling its field of view, turned 45° about its centre on the scan's own grid,
    loses its corners; on :func:`frame_shape`'s cube it keeps them, and the turn back restores it."""
    from scipy.spatial.transform import Rotation

    from innerear.inference.align import Turn, frame_shape, turn_volume

    labels, centre = _ball_labyrinth(radius=5.0)
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(labels))  # the balls touch every edge
    tight = np.ascontiguousarray(labels[box])
    centre = centre - np.array([b.start for b in box], float)
    turn = Turn(Rotation.from_euler("z", 45, degrees=True).as_matrix(), 45.0, centre, "left")
    own = turn_volume(tight > 0, turn, cval=0.0).sum()
    frame = frame_shape(tight > 0, centre, voxel_mm=0.5, multiple=8)
    assert frame[0] % 8 == 0 and frame[0] > max(tight.shape)
    cube = turn_volume(tight > 0, turn, cval=0.0, frame=frame)
    kept = np.count_nonzero(tight)
    # linear interpolation against the zeros outside the scan costs the edge voxels a little either way
    assert cube.sum() >= 0.95 * kept and own <= cube.sum() - 0.08 * kept, (kept, own, cube.sum())
    back = turn_volume(cube, turn, back=True, cval=0.0, frame=frame, scan_shape=tight.shape) > 0.5
    assert dice(back, tight > 0) > 0.95  # two linear interpolations of 5-voxel balls


def test_find_turns_reads_both_sides_the_smaller_turn_first():
    from scipy.spatial.transform import Rotation

    from innerear.inference.align import ANATOMY_FRAME, Turn, find_turn, find_turns, turn_volume

    labels, centre = _ball_labyrinth()
    turned = np.rint(turn_volume(labels, Turn(Rotation.from_euler("x", 60, degrees=True).as_matrix(), 60.0, centre,
                                              "left"), back=True, order=0)).astype(np.uint8)
    turns = find_turns(turned, ANATOMY_FRAME)
    assert [t.side for t in turns] in (["left", "right"], ["right", "left"]) and len(turns) == 2
    assert turns[0].angle_deg <= turns[1].angle_deg and turns[0] is not None
    assert find_turn(turned, ANATOMY_FRAME).angle_deg == turns[0].angle_deg
    assert find_turns(np.where(labels == 2, 2, 0), ANATOMY_FRAME) == []


def _decoy_cascade(voxel_mm: float, decoy_for: np.ndarray):
    """A stand-in network that finds the whole labyrinth only within 40° of the training frame,
    only the vestibule elsewhere, and on ``decoy_for`` (the scan's first pass) a false labyrinth,
    cochlea and canals swapped, whose frame leads nowhere."""
    from innerear.inference.align import ANATOMY_FRAME, find_turn
    from innerear.inference.engine import Cascade

    class Decoyed(Cascade):
        @property
        def pooling(self) -> int:  # no networks: any interpolated grid will do
            return 1

        def _stages(self, image, run, stats):
            labels = np.rint(image).astype(np.intp)
            if np.array_equal(image, decoy_for):
                seen = np.choose(labels, [0, 3, 2, 1])
            else:
                turn = find_turn(labels, ANATOMY_FRAME)
                seen = labels if turn is not None and turn.angle_deg < 40.0 else np.where(labels == 2, 2, 0)
            classes = np.eye(4, dtype=np.float32)[seen]
            return [(1.0 - classes[..., 0], seen > 0)], ClassProbabilities.of(classes)

    return Decoyed(stages=[], normalizer=None, grid=None, voxel_mm=voxel_mm, anatomy_frame=dict(ANATOMY_FRAME))


def test_a_first_pass_whose_frame_leads_nowhere_tries_the_other_side_then_the_search():
    """Demo phantom 7 acquired 45° further turned: its first pass read a turn from which no
    realigned pass, as a left or a right ear, showed a labyrinth (0.72 Dice). The engine then
    searches the cube's turns as for a first pass with no labyrinth, and realigns from there."""
    labels, _ = _ball_labyrinth(radius=5.0)
    turned = np.ascontiguousarray(np.rot90(labels, 1, (0, 1))).astype(np.float32)
    cascade = _decoy_cascade(0.5, turned)
    stats: dict = {}
    [(_, first)], classes = cascade._stages(turned, InferenceSettings(), stats)
    mask, _, classes = cascade._realigned(turned, first, classes.foreground(), classes, InferenceSettings(), stats)
    record = stats["alignment"]
    nowhere = [p for p in record["passes"] if p["frame_moved_deg"] is None]
    assert {p["side"] for p in nowhere} == {"left", "right"}  # both sides' turns were tried first
    assert record["searched"][-1]["labyrinth"] and record["realigned"]
    assert np.array_equal(np.argmax(classes.full(), axis=-1), turned.astype(np.intp))


def test_when_no_realigned_pass_shows_a_labyrinth_the_first_pass_stands():
    labels, _ = _ball_labyrinth(radius=5.0)
    turned = np.ascontiguousarray(np.rot90(labels, 1, (0, 1))).astype(np.float32)
    cascade = _decoy_cascade(0.2, turned)  # 9.6 mm: too small a field of view to search
    cascade.anatomy_frame["min_mm3"] = {}  # balls of 4 mm³ at 0.2 mm still give a frame
    stats: dict = {}
    [(_, first)], classes = cascade._stages(turned, InferenceSettings(), stats)
    mask, _, kept = cascade._realigned(turned, first, classes.foreground(), classes, InferenceSettings(), stats)
    assert not stats["alignment"]["realigned"] and "searched" not in stats["alignment"]
    assert len(stats["alignment"]["passes"]) == 2 and kept is classes and np.array_equal(mask, first)
