"""The engine's fast mode (innerear.inference.kernels kernels) gives the masks of the full-size mode, computing less."""
import keras
import numpy as np
import pytest
from conftest import make_tube_volume

from innerear.nets.backbones import unet
from innerear.inference.engine import Cascade, InferenceSettings, run_stage
from innerear.inference.kernels import pooling_factor, predict_slices, roi_crops
from innerear.metrics import dice
from innerear.data.normalize import fit_normalizer
from innerear.settings.views import to_slices

VIEWS = ("coronal", "sagittal", "axial")


def designed_stage(channels: int, bias: float = 0.0) -> keras.Model:
    """A small fully convolutional net with pooling whose output is informative without training.

    Foreground where the 3x3-smoothed (z-scored) image is dark, pushed up by the earlier masks;
    a pooled branch widens the receptive field to about ±5 pixels, so crops see zero padding
    at their borders as a real network does.
    """
    inp = keras.Input((None, None, channels))
    a = keras.layers.Conv2D(1, 3, padding="same", name="smooth")(inp)
    p = keras.layers.MaxPooling2D(2)(a)
    p = keras.layers.Conv2D(1, 3, padding="same", name="coarse")(p)
    u = keras.layers.UpSampling2D(2)(p)
    x = keras.layers.Concatenate()([a, u])
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="out")(x)
    model = keras.Model(inp, out)
    k = np.zeros((3, 3, channels, 1), np.float32)
    k[:, :, 0, 0] = 1 / 9
    k[:, :, 1:, 0] = -0.5 / 9  # an earlier mask makes a voxel look darker (more likely foreground)
    model.get_layer("smooth").set_weights([k, np.zeros(1, np.float32)])
    model.get_layer("coarse").set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32), np.zeros(1, np.float32)])
    model.get_layer("out").set_weights([np.array([[[[-5.0], [-1.0]]]], np.float32), np.array([-18.0 + bias], np.float32)])
    return model


def tube_cascade(volume, stage1_bias=0.0):
    models = [designed_stage(k + 1, stage1_bias if k == 0 else 0.0) for k in range(3)]
    return Cascade(stages=list(zip(VIEWS, models)), normalizer=fit_normalizer([volume]), grid=volume.shape[0],
                   batch_size=8)


@pytest.fixture(scope="module")
def tube():
    return make_tube_volume(shape=(40, 36, 32))


@pytest.fixture(scope="module")
def tube_reference(tube):
    """The designed cascade and its full-size result (computed once)."""
    casc = tube_cascade(tube[0])
    return casc, casc.predict(tube[0], "full", return_stages=True)


def test_fast_matches_segment_and_computes_less(tube, tube_reference):
    image, label = tube
    casc, (ref_mask, ref_prob, ref_stages) = tube_reference
    stats = {}
    mask, prob, stages = casc.predict(image, margin=4, bucket=8, batch_size=8, return_stages=True, stats=stats)
    assert mask.shape == ref_mask.shape == image.shape and prob.shape == image.shape
    assert mask.dtype == ref_mask.dtype and len(stages) == 3
    assert dice(ref_mask, label) > 0.8  # the designed nets do segment the tube
    for (_, m_fast), (_, m_ref) in zip(stages, ref_stages):
        assert dice(m_fast, m_ref) >= 0.995
    assert dice(mask, ref_mask) >= 0.995
    fractions = [s["pixel_fraction"] for s in stats["stages"]]
    assert fractions[0] == 1.0 and max(fractions[1:]) < 0.8  # stages 2 and 3 compute much less
    # inside the computed region the probabilities are those of the full-size path
    inside = prob > 0
    assert np.abs(prob[inside] - ref_prob[inside]).max() < 0.2


def test_without_region_is_the_full_size_path(tube, tube_reference):
    image, _ = tube
    casc, (ref_mask, ref_prob, _) = tube_reference
    mask, prob = casc.predict(image, "compiled")
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(prob, ref_prob, atol=1e-5)


def test_empty_first_stage_falls_back_to_full_slices(tube):
    image, _ = tube
    casc = tube_cascade(image, stage1_bias=-100.0)  # stage 1 finds nothing
    ref_mask, _, ref_stages = casc.predict(image, "full", return_stages=True)
    stats = {}
    mask, _, stages = casc.predict(image, "fast", margin=4, bucket=8, return_stages=True, stats=stats)
    assert not stages[0][1].any() and not ref_stages[0][1].any()
    assert stats["stages"][1]["pixel_fraction"] == 1.0  # no region: stage 2 predicted everything
    np.testing.assert_array_equal(mask, ref_mask)


def test_everything_empty():
    image = np.full((16, 16, 16), 2000.0, np.float32) + np.random.default_rng(0).normal(0, 1, (16,) * 3)
    models = [designed_stage(k + 1, -100.0) for k in range(3)]
    casc = Cascade(list(zip(VIEWS, models)), fit_normalizer([image]), 16)
    mask, prob = casc.predict(image, margin=4, bucket=8)
    assert mask.shape == image.shape and not mask.any() and prob.shape == image.shape


def test_roi_crops_geometry(rng):
    mask = np.zeros((24, 64, 48), np.uint8)
    mask[10:12, 20:23, 30:33] = 1
    mask[3, 5, 5] = 1
    margin, align, bucket = 3, 8, 16
    crops = roi_crops([mask], "sagittal", margin, align, bucket, full_fraction=1.1)
    dilated = np.zeros_like(mask, bool)
    for i, j, k in np.argwhere(mask):
        dilated[max(0, i - margin):i + margin + 1, max(0, j - margin):j + margin + 1, max(0, k - margin):k + margin + 1] = True
    have = {c[0] for c in crops}
    assert have == {i for i in range(mask.shape[0]) if dilated[i].any()}
    for i, r0, nr, c0, nc in crops:
        assert r0 % align == 0 and c0 % align == 0
        assert (nr % bucket == 0 or nr == 64) and (nc % bucket == 0 or nc == 48)
        assert r0 + nr <= 64 and c0 + nc <= 48
        inside = np.zeros((64, 48), bool)
        inside[r0:r0 + nr, c0:c0 + nc] = True
        assert not (dilated[i] & ~inside).any()  # the rectangle holds the region
    # large rectangles become full slices; empty masks give no rectangles
    full = roi_crops([np.ones((4, 16, 16), np.uint8)], "sagittal", 1, 8, 8)
    assert all(c[1:] == (0, 16, 0, 16) for c in full)
    assert roi_crops([np.zeros((4, 16, 16), np.uint8)], "axial", 2) == []


def test_predict_slices_compiled_eager_and_padded(rng):
    model = unet(channels=2, base_filters=4, depth=2)
    x = rng.normal(size=(5, 16, 24, 2)).astype(np.float32)
    eager = predict_slices(model, x, batch_size=2, compiled=False)
    compiled = predict_slices(model, x, batch_size=2, compiled=True)
    padded = predict_slices(model, x, batch_size=4, compiled=True, fixed_batch=True)
    assert eager.shape == (5, 16, 24)
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    np.testing.assert_allclose(padded, eager, atol=1e-5)


def test_unet_crops_respect_the_pooling_factor(rng):
    model = unet(channels=2, base_filters=4, depth=3)
    assert pooling_factor(model) == 8
    image = rng.normal(size=(8, 48, 40)).astype(np.float32)
    prior = np.zeros(image.shape, np.uint8)
    prior[3:5, 20:22, 17:19] = 1
    stats = {}
    prob, mask = run_stage(model, "sagittal", image, [prior], 0.5,
                           InferenceSettings(margin=2, bucket=8, full_fraction=1.1), stats=stats)
    assert prob.shape == image.shape and mask.shape == image.shape
    assert stats["stages"][0]["pixel_fraction"] < 0.5
    computed = to_slices(prob, "sagittal")
    assert not computed[0].any() and not computed[7].any()  # slices far from the mask: skipped
