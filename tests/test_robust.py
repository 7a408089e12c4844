"""The robust recipe's building blocks: multi-class networks in the engine, augmentation, patches."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from innerear.training import robust as rb  # noqa: E402
from innerear.nets.backbones import build  # noqa: E402
from innerear.inference.engine import Cascade, labels_from_classes  # noqa: E402
from innerear.data.normalize import Normalizer  # noqa: E402
from innerear.nets.losses import cce_dice_loss  # noqa: E402
from innerear.training.fit import set_output_prior


def _net(channels: int, n_classes: int):
    return build("unet", channels=channels, size=None, base_filters=4, depth=2, dropout=0.0, n_classes=n_classes)


def test_multiclass_network_outputs_softmax_over_classes():
    model = _net(1, 4)
    out = np.asarray(model.predict_on_batch(np.random.default_rng(0).normal(size=(2, 16, 12, 1)).astype("float32")))
    assert out.shape == (2, 16, 12, 4)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="n_classes"):
        _net(1, 0)


def test_softmax_prior_sets_log_class_shares():
    model = set_output_prior(_net(1, 4), [0.9, 0.05, 0.03, 0.02])
    bias = np.asarray(model.get_layer("mask").bias)
    np.testing.assert_allclose(np.exp(bias) / np.exp(bias).sum(), [0.9, 0.05, 0.03, 0.02], rtol=1e-5)
    with pytest.raises(ValueError, match="classes"):
        set_output_prior(_net(1, 4), [0.5, 0.5])


def test_cce_dice_loss_prefers_the_truth():
    y = np.zeros((1, 8, 8, 1), "float32")
    y[0, 2:5, 2:5, 0] = 2
    good = keras.ops.one_hot(keras.ops.cast(y[..., 0], "int32"), 4) * 0.97 + 0.01
    bad = keras.ops.one_hot(keras.ops.zeros((1, 8, 8), "int32"), 4) * 0.97 + 0.01
    assert float(cce_dice_loss(y, good)) < float(cce_dice_loss(y, bad))


def test_engine_returns_a_label_map_inside_the_mask_for_multiclass_and_none_for_binary():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(16, 12, 8)).astype("float32")
    casc = Cascade(stages=[("coronal", _net(1, 4)), ("sagittal", _net(2, 4))], normalizer=Normalizer(0.0, 1.0),
                   grid=None, voxel_mm=0.2)
    for model in (m for _, m in casc.stages):  # make the background unlikely so there is a mask
        model.get_layer("mask").bias.assign(np.array([-5.0, 1.0, 0.0, 0.5], "float32"))
    mask, prob, labels = casc.predict(volume, "full", return_labels=True)
    assert casc.n_classes == 4 and labels.shape == mask.shape and labels.dtype == np.uint8
    assert mask.any()
    assert set(np.unique(labels[mask > 0])) <= {1, 2, 3}
    assert not labels[mask == 0].any()
    binary = Cascade(stages=[("coronal", _net(1, 1))], normalizer=Normalizer(0.0, 1.0), grid=16)
    assert binary.predict(volume, "full", return_labels=True)[2] is None
    assert len(binary.predict(volume, "full")) == 2


def test_structure_labels_pick_the_most_likely_structure():
    p = np.zeros((2, 1, 1, 4), "float32")
    p[0, 0, 0] = [0.1, 0.2, 0.6, 0.1]
    p[1, 0, 0] = [0.9, 0.0, 0.0, 0.1]
    assert labels_from_classes(np.array([[[1]], [[0]]]), p).ravel().tolist() == [2, 0]
    assert labels_from_classes(np.ones((2, 1, 1)), None) is None


def test_monotone_curve_never_inverts_and_augmentation_keeps_dark_below_bright():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rb.monotone_curve(rng, 6, 1.0)
        assert np.all(np.diff(y) > 0) and y[0] == 0 and y[-1] == 1
    img = np.zeros((48, 48), "float32")
    img[:, 24:] = 1.0
    aug = rb.Augmentation(probability=1.0, noise=(0.0, 0.0), correlated_noise=(0.0, 0.0), bias=0.0, blur=(0.0, 0.0))
    for seed in range(10):
        out = rb.augment_image(img, aug, np.random.default_rng(seed))
        assert out[:, 24:].mean() > out[:, :24].mean()
        assert not np.allclose(out, img)


def test_patch_dataset_is_repeatable_and_pads_small_slices():
    rng = np.random.default_rng(0)
    image = rng.random((10, 20, 20, 2)).astype("float32")
    classes = np.zeros((10, 20, 20), np.uint8)
    classes[4:6, 8:12, 8:12] = 3
    recipe = rb.get_recipe("robust-smoke", patch=32, batch_size=4)
    ds = rb.PatchDataset([image], [classes], "axial", recipe, seed=5)
    x1, y1 = ds[0]
    x2, y2 = rb.PatchDataset([image], [classes], "axial", recipe, seed=5)[0]
    assert x1.shape == (4, 32, 32, 2) and y1.shape == (4, 32, 32, 1)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(y1)) <= {0, 3}
    ds.on_epoch_end()
    assert not np.array_equal(ds[0][0], x1)


def test_class_map_gives_every_label_voxel_a_structure():
    label = np.zeros((6, 6, 6), np.uint8)
    label[1:5, 1:5, 1:5] = 1
    structures = np.zeros_like(label)
    structures[1:3, 1:5, 1:5] = 1
    structures[3:4, 1:5, 1:5] = 3  # row 4 is label without a structure
    out = rb.class_map(label, structures)
    assert set(np.unique(out[label > 0])) <= {1, 3} and not out[label == 0].any()
    assert (out[4] == 3)[1:5, 1:5].all()


@pytest.mark.slow
def test_robust_smoke_recipe_trains_exports_and_segments_a_hounsfield_crop(tmp_path):
    """`innerear train --recipe robust-smoke`, exported, then `innerear segment --labels` on a
    cone-beam-CT-style cochlea crop stored in Hounsfield units: the whole physical path runs."""
    import json

    from innerear import cli
    from innerear.data import phantom as ph
    from innerear.settings.profiles import get_profile
    from innerear.io import read_volume
    from innerear.data.phantom.acquisition import Acquisition
    from innerear.inference.modelfolder import export_model, read_model_folder

    assert cli.main(["train", "--recipe", "robust-smoke", "--out", str(tmp_path / "work"), "--quiet"]) == 0
    last = tmp_path / "work" / "run" / "coronal" / "sagittal" / "axial"
    spec = json.loads((last / "cascade.json").read_text())
    assert spec["voxel_mm"] == 0.3 and spec["n_classes"] == 4 and spec["normalizer"]["kind"] == "percentile"
    hist = spec["intensity_histogram"]
    assert len(hist["density"]) == len(hist["edges"]) - 1 and hist["warn_above"] >= 0.1
    model = export_model(last, tmp_path / "model")
    assert read_model_folder(model).spec.intensity_histogram == hist
    trained, shipped = last.parents[1] / "best.keras", model / "stage1_coronal" / "best.keras"
    assert shipped.stat().st_size < 0.8 * trained.stat().st_size  # exported without the optimizer state
    acq = Acquisition(style="cbct", voxel_mm=0.25, fov_mm=9.0, centre="cochlea", units="hu", rings=0.5)
    scan = ph.generate_specimen(0, 5, get_profile("demo").phantoms, realism=ph.AnatomyRealism.full(), acquisition=acq)
    entry = ph.write_specimen(scan, tmp_path / "scan")
    assert scan.image.dtype == np.int16
    out, labels, report = tmp_path / "ear.nii.gz", tmp_path / "labels.nii.gz", tmp_path / "ear.json"
    code = cli.main(["segment", str(tmp_path / "scan" / entry["image"]), "-o", str(out), "--labels", str(labels),
                     "--report", str(report), "--model", str(model), "--allow-empty", "--quiet"])
    assert code == 0
    mask, _, affine = read_volume(out)
    lab, _, _ = read_volume(labels)
    assert mask.shape == lab.shape == scan.image.shape
    np.testing.assert_allclose(affine, scan.affine, atol=1e-6)
    assert np.array_equal(lab > 0, mask > 0)
    rep = json.loads(report.read_text())
    assert rep["model"]["voxel_mm"] == [0.3, 0.3, 0.3] and isinstance(rep["intensity_histogram_distance"], float)
    assert set(rep["structures"]) == {"cochlea", "vestibule", "canals"}
