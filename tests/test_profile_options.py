"""Profile options that follow the authors' code where it differs from our defaults (issue 15):
connectivity of the largest-component step, ReduceLROnPlateau, the plain bottleneck."""
from __future__ import annotations

import json

import numpy as np
import pytest

from innerear.inference import engine as cs
from innerear.data import preprocess as pp
from innerear.nets.backbones import build
from innerear.settings.profiles import PROFILES, get_profile
from innerear.metrics import largest_component
from innerear.training.fit import SliceDataset, fit

from conftest import make_prepared_cases, make_tube_volume
from innerear.training import cascade as tc
from innerear.settings import layout
from innerear.data import normalize as norm


def _diagonal_pair() -> np.ndarray:
    """Two blocks that touch only along an edge (18- and 26-connected, not 6-connected),
    the larger one first, plus a corner-touching voxel (26-connected only)."""
    m = np.zeros((10, 10, 10), np.uint8)
    m[1:4, 1:4, 1:4] = 1          # 27 voxels
    m[4:6, 4:6, 1:4] = 1          # 12 voxels, shares only edges with the first block
    m[6, 6, 4] = 1                # touches the second block at a corner only
    return m


def test_connectivity_changes_the_kept_component():
    m = _diagonal_pair()
    assert cs.largest_component(m, 6).sum() == 27
    assert cs.largest_component(m, 18).sum() == 39
    assert cs.largest_component(m, 26).sum() == 40
    np.testing.assert_array_equal(cs.largest_component(m), cs.largest_component(m, 26))  # default 26
    assert largest_component(m, 6, return_count=True)[1] == 3 and largest_component(m, return_count=True)[1] == 1
    np.testing.assert_array_equal(largest_component(m, 6, return_count=True)[0], cs.largest_component(m, 6))
    np.testing.assert_array_equal(cs.postprocess(m * 0.9, connectivity=6), cs.largest_component(m, 6))
    with pytest.raises(ValueError, match="connectivity"):
        cs.largest_component(m, 8)


def test_profile_options_validated_and_defaults():
    assert all(p.connectivity == 26 and p.plain_bottleneck and p.lr_plateau is None for p in PROFILES.values())
    assert get_profile("paper", connectivity=6).connectivity == 6
    with pytest.raises(ValueError, match="connectivity"):
        get_profile("smoke", connectivity=4)
    with pytest.raises(ValueError, match="lr_plateau"):
        get_profile("smoke", lr_plateau=(1.5, 10))


def test_cascade_records_and_uses_the_profiles_connectivity(tmp_path):
    cases = make_prepared_cases()
    folds = pp.make_folds([c.case_id for c in cases], 4, 0)
    profile = get_profile("smoke", max_epochs=1, base_filters=2, depth=2, grid=16, connectivity=6)
    tc.train_cascade(cases, folds, 0, "unet", ("axial",), profile, tmp_path)
    folder = layout.stage_dir(tmp_path, profile, "unet", 0, ("axial",))
    assert json.loads((folder / "cascade.json").read_text())["connectivity"] == 6
    assert cs.load_cascade(folder).connectivity == 6
    # the run tree refuses the other connectivity instead of mixing the two
    with pytest.raises(RuntimeError, match="connectivity differ"):
        tc.train_cascade(cases, folds, 0, "unet", ("axial",), get_profile(
            "smoke", max_epochs=1, base_filters=2, depth=2, grid=16), tmp_path)


def test_runs_recorded_before_plain_bottleneck_existed_are_refused(tmp_path):
    """A fold.json without the field was trained with the bottleneck block (the old layout)."""
    cases = make_prepared_cases()
    folds = pp.make_folds([c.case_id for c in cases], 4, 0)
    profile = get_profile("smoke", max_epochs=1, base_filters=2, depth=2, grid=16)
    root = layout.fold_dir(tmp_path, profile, "res_unet", 0)
    root.mkdir(parents=True)
    train_ids, test_ids = pp.split_fold(sorted(c.case_id for c in cases), folds, 0)
    old = {k: v for k, v in profile.to_dict().items() if k not in ("plain_bottleneck", "connectivity", "lr_plateau")}
    (root / "fold.json").write_text(json.dumps({"train": train_ids, "test": test_ids, "profile": old}))
    with pytest.raises(RuntimeError, match="plain_bottleneck differ"):
        tc.train_cascade(cases, folds, 0, "res_unet", ("axial",), profile, tmp_path)


def test_lr_plateau_lowers_the_learning_rate(tmp_path):
    img, lab = make_tube_volume((16, 16, 16), seed=0)
    img = (img - img.mean()) / img.std()
    ds = SliceDataset([img[..., None]], [lab], "axial", batch_size=4, shuffle=False, seed=0)
    # Adam moves each weight by about the learning rate per step: at 1e-12 the training loss
    # (same batches every epoch, no dropout) cannot improve by the 1e-5 the callback asks
    # for, so with patience 1 the rate is halved after every epoch from the second on (the
    # history logs each epoch's rate before the cut); early stopping (patience 10) waits.
    net = lambda: build("unet", channels=1, size=None, base_filters=2, depth=1, dropout=0.0)  # noqa: E731
    res = fit(net, ds, tmp_path / "run", max_epochs=4, patience=10, learning_rate=1e-12, seed=0,
              lr_plateau=(0.5, 1))
    rates = [row["learning_rate"] for row in res.history]
    assert rates == pytest.approx([1e-12, 1e-12, 5e-13, 2.5e-13], rel=1e-5)
    assert json.loads((tmp_path / "run" / "done.json").read_text())["lr_plateau"] == [0.5, 1]
    res2 = fit(net, ds, tmp_path / "run2", max_epochs=2, patience=10, learning_rate=1e-12, seed=0)
    assert "learning_rate" not in res2.history[0]  # no callback: a constant rate, as the paper


def test_six_connectivity_splits_a_thin_oblique_tube():
    """Why the profiles keep 26: a thin canal running obliquely through a coarse grid has
    voxels that touch only at edges or corners; 6-connectivity cuts such a true structure
    into pieces (and the largest-component step would drop all but one), 26 keeps it whole."""
    g = np.indices((24, 24, 24)).reshape(3, -1).T.astype(float)
    direction = np.array([1.0, 0.8, 0.6]) / np.linalg.norm([1.0, 0.8, 0.6])
    along = g @ direction
    dist = np.linalg.norm(g - np.outer(along, direction), axis=1)
    tube = (dist <= 0.6).reshape(24, 24, 24).astype(np.uint8)
    assert tube.sum() > 20
    assert cs.largest_component(tube, 26).sum() == tube.sum()
    assert cs.largest_component(tube, 6).sum() < 0.5 * tube.sum()


@pytest.mark.parametrize("mode", ["full", "compiled", "fast"])
def test_every_engine_mode_uses_the_cascades_connectivity(mode):
    """A one-stage cascade whose network passes the image through: the mask is the image's
    largest component under the cascade's connectivity, in every mode of the engine."""
    import keras

    inp = keras.Input((None, None, 1))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    net = keras.Model(inp, conv(inp))
    conv.set_weights([np.full((1, 1, 1, 1), 10.0, np.float32), np.full(1, -5.0, np.float32)])
    volume = _diagonal_pair().astype(np.float32)  # 1 inside (p > 0.99), 0 outside (p < 0.01)
    for connectivity, expected in ((6, 27), (26, 40)):
        models = cs.Cascade([("axial", net)], norm.Normalizer(0.0, 1.0), 0, connectivity=connectivity)
        mask, _ = models.predict(volume, mode)
        assert int(mask.sum()) == expected
