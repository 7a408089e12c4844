"""The one inference engine: its modes agree on a TRAINED cascade, and every caller uses it."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from innerear.inference import engine as cs
from innerear.data import preprocess as pp
from innerear.settings.profiles import get_profile
from innerear.settings.layout import stage_dir
from innerear.metrics import dice
from innerear.settings.views import PAPER_ORDER, VIEW_AXES, from_slices, orientation_axis, to_slices
from innerear.training import cascade as tc
from innerear.data import normalize as norm


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A smoke-size cascade trained for a few epochs on 48^3 phantoms (not random weights)."""
    from innerear.data.phantom import write_phantom_set

    tmp = tmp_path_factory.mktemp("engine")
    profile = get_profile("smoke", max_epochs=4, patience=4, base_filters=8, depth=2, grid=48, learning_rate=3e-3)
    data = tmp / "data"
    data.mkdir()
    write_phantom_set(data, replace(profile.phantoms, binning=16), seed=0, n=4)
    cases = pp.prepare_dataset(data, profile.grid)
    folds = pp.make_folds([c.case_id for c in cases], 4, 0)
    summary = tc.train_cascade(cases, folds, 0, "unet", PAPER_ORDER, profile, tmp / "runs")
    casc = cs.load_cascade(stage_dir(tmp / "runs", profile, "unet", 0, PAPER_ORDER))
    by_id = {c.case_id: c for c in cases}
    return casc, by_id[folds[0][0]], summary, by_id


@pytest.mark.slow
def test_modes_give_the_same_masks_on_a_trained_cascade(trained):
    casc, case, summary, by_id = trained
    assert summary["stages"][0]["inference_mode"] == "fast"  # training's stage predictions use the engine
    full_mask, full_prob, full_stages = casc.predict(case.image, "full", return_stages=True)
    assert dice(full_mask, case.label) > 0.3  # trained: the stages do find the ear
    compiled_mask, compiled_prob = casc.predict(case.image, "compiled")
    np.testing.assert_array_equal(compiled_mask, full_mask)
    np.testing.assert_allclose(compiled_prob, full_prob, atol=1e-4)
    # the default (fast) mode at the default margin: the same masks at every stage
    stats: dict = {}
    fast_mask, _, fast_stages = casc.predict(case.image, return_stages=True, stats=stats)
    assert [s["mode"] for s in stats["stages"]] == ["fast"] * 3
    assert stats["stages"][1]["pixel_fraction"] < 1.0  # the region of interest did crop
    for (_, a), (_, b) in zip(fast_stages, full_stages):
        np.testing.assert_array_equal(a, b)
    # a region of interest that really crops (small margin, no full-slice rounding) computes less,
    # and its masks stay close (zero padding at the crop edges: not exact, measured)
    stats = {}
    roi_mask, _ = casc.predict(case.image, margin=4, full_fraction=1.1, stats=stats)
    assert max(s["pixel_fraction"] for s in stats["stages"][1:]) < 1.0
    assert dice(roi_mask, full_mask) > 0.95


@pytest.mark.slow
def test_saved_stage_predictions_are_the_engine_s(trained):
    casc, case, summary, _ = trained
    mask, _ = casc.predict(case.image)
    assert dice(mask, case.label) == pytest.approx(summary["stages"][-1]["test_dice"][case.case_id])


def test_inference_settings_validate():
    with pytest.raises(ValueError, match="inference mode"):
        cs.InferenceSettings(mode="quick")
    assert cs.InferenceSettings().batch == 8 and cs.InferenceSettings(mode="full").batch == 32


def test_view_axes_conventions(rng):
    vol = rng.normal(size=(4, 5, 6))
    assert [orientation_axis(v) for v in ("sagittal", "coronal", "axial")] == [0, 1, 2]
    # the authors' code: stage 1 (coronal) along the last stored axis, stage 3 (axial) along the first
    assert [orientation_axis(v, "authors") for v in PAPER_ORDER] == [2, 1, 0]
    for conv in VIEW_AXES:
        for v in PAPER_ORDER:
            s = to_slices(vol, v, conv)
            assert s.shape[0] == vol.shape[orientation_axis(v, conv)]
            np.testing.assert_array_equal(from_slices(s, v, conv), vol)
    with pytest.raises(ValueError, match="view_axes"):
        orientation_axis("axial", "lps")


def test_engine_slices_by_the_cascade_s_convention(rng):
    """A pass-through cascade sliced in the authors' convention returns the thresholded image."""
    import keras

    inp = keras.Input((None, None, 1))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inp, conv(inp))
    conv.set_weights([np.full((1, 1, 1, 1), 10.0, np.float32), np.zeros(1, np.float32)])
    vol = rng.normal(size=(9, 11, 13)).astype(np.float32)
    vol[2:7, 3:9, 1:12] = 3.0
    for conv_name in VIEW_AXES:
        casc = cs.Cascade([("coronal", model)], norm.Normalizer(0.0, 1.0), 0, view_axes=conv_name)
        mask, _ = casc.predict(vol)
        np.testing.assert_array_equal(mask, cs.largest_component(vol > 0))


def _blobs() -> np.ndarray:
    """A large block, a smaller one 2 voxels off it and a third one far away."""
    vol = np.zeros((40, 20, 20), np.uint8)
    vol[2:12, 2:12, 2:12] = 1  # the largest (1000 voxels)
    vol[14:18, 2:8, 2:8] = 1  # 144 voxels, 2 empty layers (x = 12, 13) from the largest: 3 voxels apart
    vol[30:36, 10:16, 10:16] = 1  # 216 voxels, far away
    return vol


def test_near_largest_keeps_pieces_within_the_gap_only():
    from innerear.metrics import near_largest

    vol = _blobs()
    near = near_largest(vol, 3.0)
    assert near[2:12, 2:12, 2:12].all() and near[14:18, 2:8, 2:8].all()
    assert not near[30:].any()
    np.testing.assert_array_equal(near_largest(vol, 2.9), cs.largest_component(vol))  # 3 voxels apart
    np.testing.assert_array_equal(near_largest(vol, 3.0, min_voxels=145), cs.largest_component(vol))  # a speck
    np.testing.assert_array_equal(near_largest(vol, 3.0, min_voxels=144), near)
    np.testing.assert_array_equal(near_largest(vol, 0.0), cs.largest_component(vol))
    assert near_largest(np.zeros((4, 4, 4)), 3.0).sum() == 0
    only = np.zeros_like(vol)
    only[3:5, 3:5, 3:5] = 1
    np.testing.assert_array_equal(near_largest(only, 3.0), only)


def test_a_physical_cascade_hands_later_stages_the_pieces_near_the_largest():
    """Stage 1's pieces within ``context_gap_mm`` of its largest component reach stage 2 as context
    (a model in physical units only; a grid model keeps the paper's largest component), and the
    last stage's mask is still one component."""
    import keras

    def passthrough(channels: int) -> keras.Model:
        inp = keras.Input((None, None, channels))
        conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
        model = keras.Model(inp, conv(inp))
        conv.set_weights([np.array([10.0] + [0.0] * (channels - 1), np.float32).reshape(1, 1, channels, 1),
                          np.full(1, -5.0, np.float32)])
        return model

    vol = _blobs().astype(np.float32)
    stages = [("coronal", passthrough(1)), ("sagittal", passthrough(2))]
    for voxel_mm, gap_kept in ((0.5, True), (None, False)):
        casc = cs.Cascade(stages, norm.Normalizer(0.0, 1.0), None if voxel_mm else 40, voxel_mm=voxel_mm,
                          settings=cs.InferenceSettings(mode="full", context_gap_mm=1.5))  # 3 voxels of 0.5 mm
        mask, _, stage_out = casc.predict(vol, return_stages=True)
        first = stage_out[0][1]
        assert bool(first[14:18, 2:8, 2:8].all()) is gap_kept
        assert not first[30:].any()
        np.testing.assert_array_equal(mask, cs.largest_component(vol))
    casc = cs.Cascade(stages, norm.Normalizer(0.0, 1.0), None, voxel_mm=0.5,
                      settings=cs.InferenceSettings(mode="full", context_gap_mm=0.0))
    np.testing.assert_array_equal(casc.predict(vol, return_stages=True)[2][0][1], cs.largest_component(vol))


class _PixelNet:
    """A stand-in network without context: foreground probability 1 where the image channel is
    above 0.5 (so cropping cannot change its answer); counts the pixels it is asked for."""

    pooling, classes, session = 4, 1, None

    def __init__(self) -> None:
        self.pixels = 0

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        self.pixels += int(np.prod(batch.shape[:3]))
        return (batch[..., :1] > 0.5).astype(np.float32)


def _labyrinth_and_specks() -> np.ndarray:
    vol = np.zeros((64, 48, 40), np.float32)
    vol[20:44, 14:34, 10:30] = 1.0  # the structure
    vol[3, 3, 3] = vol[60, 44, 36] = vol[5, 40, 33] = 1.0  # a first stage's scattered false positives
    return vol


def test_probe_region_holds_the_major_components_and_drops_specks():
    from innerear.metrics import major_components

    vol = _labyrinth_and_specks()
    net = _PixelNet()
    [region], pixels = cs.probe_region(net, "coronal", vol[..., None], 0.5, cs.InferenceSettings(), "ras")
    assert region[20:44, 14:34, 10:30].all()  # probed every 4th slice, filled between: the whole block
    assert not region[3, 3, 3] and not region[60, 44, 36]
    assert pixels == net.pixels < vol.size  # the probe saw a quarter of the slices (and the last)
    two = np.zeros((20, 20, 20), bool)
    two[1:9, 1:9, 1:9] = True  # 512
    two[12:16, 12:16, 12:16] = True  # 64: an eighth of the largest
    np.testing.assert_array_equal(major_components(two, 0.1), two)
    np.testing.assert_array_equal(major_components(two, 0.2), cs.largest_component(two) > 0)
    assert not major_components(np.zeros((3, 3, 3)), 0.1).any()


def test_probed_first_stage_gives_the_full_stage_s_mask_for_a_network_without_context():
    vol = _labyrinth_and_specks()
    masks, computed = {}, {}
    for step in (0, 4):
        net = _PixelNet()
        stats: dict = {}
        settings = cs.InferenceSettings(probe_step=step, mirror=True, margin=2)
        _, masks[step] = cs.run_stage(net, "coronal", vol, [], settings=settings, stats=stats)
        computed[step] = stats["stages"][0]["pixel_fraction"]
    np.testing.assert_array_equal(masks[4], masks[0])
    assert computed[0] == 2.0 and computed[4] < 1.0  # mirrored: two full passes, or the probe and two regions
    net = _PixelNet()  # a probe that finds nothing: every slice at full size
    _, empty = cs.run_stage(net, "coronal", np.zeros_like(vol), [], settings=cs.InferenceSettings())
    n, h, w = to_slices(vol, "coronal").shape
    probed = len(range(0, n, 4)) + (1 if (n - 1) % 4 else 0)  # every 4th slice and the last
    assert not empty.any() and net.pixels == vol.size + probed * h * w


def test_grid_cascades_keep_the_paper_s_first_stage():
    vol = _labyrinth_and_specks()
    for voxel, expected in ((None, 1.0), (0.15, None)):
        stats: dict = {}
        casc = cs.Cascade([("coronal", _PixelNet())], norm.Normalizer(0.0, 1.0), None if voxel else 64,
                          voxel_mm=voxel)
        casc.predict(vol, stats=stats, margin=2)
        fraction = stats["stages"][0]["pixel_fraction"]
        assert fraction == expected if expected else fraction < 1.0


class _ClassNet:
    """A stand-in 4-class network without context: soft class probabilities from the image channel's
    value, certain background below 0.5 (as outside a stage's region), so that cropping cannot change
    its answer."""

    pooling, classes, session = 4, 4, None

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        value = batch[..., 0]
        k = np.where(value > 0.5, np.clip(np.round(value), 1, 3), 0).astype(int)
        out = np.full(value.shape + (4,), 0.1, np.float32)
        np.put_along_axis(out, k[..., None], 0.7, axis=-1)
        out[k == 0] = (1.0, 0.0, 0.0, 0.0)
        return out


@pytest.mark.parametrize("view", ["coronal", "sagittal", "axial"])
def test_a_stage_s_region_and_its_mirror_give_the_full_slices_answer(view):
    vol = np.zeros((48, 40, 36), np.float32)  # off-centre along x: the mirrored region lies elsewhere
    vol[4:14, 10:30, 8:20] = 1.0
    vol[8:12, 12:20, 10:14] = 2.0
    vol[6:9, 22:28, 14:18] = 3.0
    region = vol > 0
    out = {}
    for mode in ("fast", "compiled"):  # the region's rectangles, or every slice at full size
        stats: dict = {}
        settings = cs.InferenceSettings(mode=mode, mirror=True, margin=2)
        out[mode] = cs.run_stage(_ClassNet(), view, vol, [region], settings=settings, stats=stats,
                                 return_classes=True)
        out[mode + " pixels"] = stats["stages"][0]["pixel_fraction"]
    for fast, full in zip(out["fast"], out["compiled"]):
        np.testing.assert_array_equal(fast, full)
    assert out["fast"][2].shape == vol.shape + (4,) and out["fast"][1].sum() == region.sum()
    passes = 1 if orientation_axis(view) == cs.MIRROR_AXIS else 2  # sagittal: its mirror is itself
    assert out["fast pixels"] < 1.0 and out["compiled pixels"] == passes


class _SidedNet:
    """A stand-in binary network that is not mirror-symmetric in its slice: the probability grows
    along the slice's rows and columns, so a slice and its mirror image get different answers;
    counts the pixels it is asked for."""

    pooling, classes, session = 4, 1, None

    def __init__(self) -> None:
        self.pixels = 0

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        self.pixels += int(np.prod(batch.shape[:3]))
        n, h, w = batch.shape[:3]
        ramp = np.add.outer(np.linspace(0.0, 0.2, h), np.linspace(0.0, 0.3, w)).astype(np.float32)
        return np.clip(0.3 * batch[..., :1] + ramp[None, :, :, None], 0.0, 1.0)


@pytest.mark.parametrize("view", ["coronal", "sagittal", "axial"])
def test_mirroring_is_the_mean_of_both_passes_and_the_sagittal_stage_needs_one(view):
    rng = np.random.default_rng(3)
    vol = rng.random((24, 20, 16)).astype(np.float32)
    earlier = [vol > 0.7]
    settings = cs.InferenceSettings(mode="compiled", mirror=False)
    plain, _ = cs.run_stage(_SidedNet(), view, vol, earlier, settings=settings)
    flipped, _ = cs.run_stage(_SidedNet(), view, np.flip(vol, cs.MIRROR_AXIS).copy(),
                              [np.flip(m, cs.MIRROR_AXIS).copy() for m in earlier], settings=settings)
    expected = 0.5 * (plain + np.flip(flipped, cs.MIRROR_AXIS))  # the two passes, done by hand
    net, stats = _SidedNet(), {}
    mirrored, _ = cs.run_stage(net, view, vol, earlier, settings=replace(settings, mirror=True), stats=stats)
    np.testing.assert_array_equal(mirrored, expected)
    across = orientation_axis(view) == cs.MIRROR_AXIS
    assert np.array_equal(expected, plain) == across  # only slices across the mirror axis give one answer
    assert net.pixels == (1 if across else 2) * vol.size  # and there the engine predicts them once
    assert stats["stages"][0]["passes"] == (1 if across else 2)
    assert stats["stages"][0]["mirror_agreement"]["inner_ear"] == 1.0 or not across


def test_class_probabilities_on_a_box_are_the_whole_array_s():
    rng = np.random.default_rng(0)
    part = rng.dirichlet(np.ones(4), size=(5, 6, 7)).astype(np.float32)
    boxed = cs.ClassProbabilities(part, (slice(2, 7), slice(1, 7), slice(3, 10)), (9, 8, 12))
    whole = boxed.full()
    assert whole.shape == (9, 8, 12, 4) and np.array_equal(whole[2:7, 1:7, 3:10], part)
    assert np.all(whole[0] == (1, 0, 0, 0)) and np.array_equal(boxed.foreground(), 1.0 - whole[..., 0])
    inside = np.zeros((9, 8, 12), bool)
    inside[3:6, 2:5, 4:9] = True
    across = inside.copy()
    across[0, 0, 0] = True  # a mask voxel outside the box: the whole array's rule (class 1 on a tie)
    for mask in (inside, across, np.zeros_like(inside)):
        np.testing.assert_array_equal(boxed.labels(mask), cs.labels_from_classes(mask, whole))
    assert cs.ClassProbabilities.of(whole).box == (slice(0, 9), slice(0, 8), slice(0, 12))


class _Submitting(_SidedNet):
    """:class:`_SidedNet` taking batches as an ONNX export does (``submit`` returns a future at once),
    its two workers finishing them out of order; records how many batches it held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.pool, self.held, self.most_held, self.calls = ThreadPoolExecutor(2), 0, 0, 0
        self.lock = threading.Lock()

    def submit(self, batch: np.ndarray):
        with self.lock:
            self.held += 1
            self.calls += 1
            self.most_held = max(self.most_held, self.held)
            delay = 0.004 * (self.calls % 3)  # later batches often finish first

        def run() -> np.ndarray:
            time.sleep(delay)
            with self.lock:
                out = self.predict_on_batch(batch)
            return out

        future = self.pool.submit(run)
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self.lock:
            self.held -= 1


@pytest.mark.parametrize("view", ["coronal", "axial"])
def test_batches_handed_ahead_give_the_answers_of_batches_in_turn(view):
    """An export's sessions are handed batches ahead (:func:`predict_batches` streams them); the answers
    come back in order, and in fast mode the rectangles built from the separate channels are the stacked
    inputs' rectangles: the same probabilities and mask as one batch at a time, with and without mirroring."""
    from innerear.inference.kernels import IN_FLIGHT, predict_batches

    rng = np.random.default_rng(5)
    vol = rng.random((40, 36, 32)).astype(np.float32)
    earlier = [(vol > 0.8).astype(np.uint8), np.zeros(vol.shape, np.uint8)]
    earlier[1][10:30, 5:20, 8:24] = 1
    for mirror in (False, True):
        settings = cs.InferenceSettings(mode="fast", mirror=mirror, margin=2, batch_size=3)
        plain = cs.run_stage(_SidedNet(), view, vol, earlier, settings=settings)
        net = _Submitting()
        streamed = cs.run_stage(net, view, vol, earlier, settings=settings)
        for a, b in zip(plain, streamed):
            np.testing.assert_array_equal(a, b)
        assert net.calls > IN_FLIGHT + 1 and net.most_held <= IN_FLIGHT + 1
    read = []

    def batches():
        for i in range(20):
            read.append(i)
            yield np.full((1, 8, 8, 1), i / 20, np.float32)

    net = _Submitting()
    out = predict_batches(net, batches(), batch_size=1)
    first = next(out)
    assert len(read) == IN_FLIGHT + 1  # read lazily: a volume is never copied whole into batches
    rest = [first, *out]
    np.testing.assert_array_equal([r[0, 0, 0] for r in rest], [_SidedNet().predict_on_batch(
        np.full((1, 8, 8, 1), i / 20, np.float32))[0, 0, 0, 0] for i in range(20)])
