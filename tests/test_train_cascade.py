"""Trainer (overfit, resume, determinism) and cascade (wiring, orders, end-to-end) tests."""
import json
from pathlib import Path

import numpy as np
import pytest

from innerear.inference import engine as cs
from innerear.data import preprocess as pp
from innerear.nets.backbones import build
from innerear.settings.profiles import get_profile
from innerear.inference.kernels import predict_volume
from innerear.metrics import dice
from innerear.training.fit import SliceDataset, fit, read_history
from conftest import make_prepared_cases, make_tube_volume
from innerear.training import cascade as tc
from innerear.settings import layout
from innerear.settings import views
from innerear.data import normalize as norm


def _tiny_build(channels=1):
    return lambda: build("unet", channels=channels, size=None, base_filters=4, depth=2, bn_momentum=0.9)


def _data(n=2, shape=(16, 16, 16)):
    vols = [make_tube_volume(shape, seed=i) for i in range(n)]
    imgs = [(v - v.mean()) / v.std() for v, _ in vols]
    return imgs, [lab for _, lab in vols]


@pytest.mark.slow  # trains networks
def test_model_overfits_a_tiny_batch(tmp_path):
    imgs, labs = _data(1)
    ds = SliceDataset([imgs[0][..., None]], labs, "axial", batch_size=2, seed=0)
    res = fit(_tiny_build(), ds, tmp_path / "run", max_epochs=15, patience=15, learning_rate=1e-2, seed=0)
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < 0.5 * losses[0]
    prob = predict_volume(res.model, imgs[0][..., None], "axial")
    assert dice(prob >= 0.5, labs[0]) > 0.6


@pytest.mark.slow  # trains networks
def test_resume_continues_from_saved_epoch(tmp_path):
    imgs, labs = _data(1)
    ds = SliceDataset([imgs[0][..., None]], labs, "coronal", batch_size=8, seed=0)
    run = tmp_path / "run"
    fit(_tiny_build(), ds, run, max_epochs=2, patience=10, learning_rate=1e-3, seed=0, checkpoint_seconds=0)
    # simulate an interruption after epoch 2 of a 4-epoch run: remove the "finished" marker
    # and bring back a last checkpoint, as a killed run would have left them
    import shutil

    (run / "done.json").unlink()
    shutil.copy(run / "best.keras", run / "last.keras")
    res = fit(_tiny_build(), ds, run, max_epochs=4, patience=10, learning_rate=1e-3, seed=0)
    assert res.resumed_from == 2
    hist = read_history(run)
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3]
    assert json.loads((run / "state.json").read_text())["epoch"] == 3
    # a finished run is loaded, not retrained
    again = fit(_tiny_build(), ds, run, max_epochs=4, patience=10, learning_rate=1e-3, seed=0)
    assert again.epochs == 4 and again.resumed_from is None


@pytest.mark.slow  # trains networks
def test_same_seed_gives_identical_losses(tmp_path):
    imgs, labs = _data(1)
    losses = []
    for name in ("a", "b"):
        ds = SliceDataset([imgs[0][..., None]], labs, "axial", batch_size=8, seed=5)
        res = fit(_tiny_build(), ds, tmp_path / name, max_epochs=2, patience=5, learning_rate=1e-3, seed=7)
        losses.append([r["loss"] for r in res.history])
    assert losses[0] == losses[1]


@pytest.mark.slow  # trains networks
def test_many_steps_per_compiled_call_train_exactly_like_one(tmp_path, monkeypatch):
    from innerear.training import fit as fit_module

    imgs, labs = _data(1)
    runs = []
    for name, steps in (("one", 1), ("many", fit_module.STEPS_PER_EXECUTION)):
        monkeypatch.setattr(fit_module, "STEPS_PER_EXECUTION", steps)
        ds = SliceDataset([imgs[0][..., None]], labs, "axial", batch_size=4, seed=5)
        assert len(ds) > 1
        res = fit(_tiny_build(), ds, tmp_path / name, max_epochs=2, patience=5, learning_rate=1e-3, seed=7)
        assert res.model.steps_per_execution == steps or steps == 1
        runs.append(res)
    assert [r["loss"] for r in runs[0].history] == [r["loss"] for r in runs[1].history]
    for wa, wb in zip(runs[0].model.get_weights(), runs[1].model.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.slow  # trains networks
def test_pooled_network_trains_exactly_like_a_new_one(tmp_path):
    from innerear.training.fit import ModelPool

    imgs, labs = _data(2)
    data = [SliceDataset([imgs[i][..., None]], [labs[i]], "axial", batch_size=8, seed=3) for i in range(2)]
    fresh = [fit(_tiny_build(), data[i], tmp_path / f"fresh{i}", max_epochs=2, patience=5, learning_rate=1e-3,
                 seed=11 + i) for i in range(2)]
    pool = ModelPool()
    pooled = [fit(_tiny_build(), data[i], tmp_path / f"pooled{i}", max_epochs=2, patience=5, learning_rate=1e-3,
                  seed=11 + i, pool=pool) for i in range(2)]
    assert len(pool) == 1 and pooled[0].model is pooled[1].model  # the second training reused the first network
    for a, b in zip(fresh, pooled):
        assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    for wa, wb in zip(fresh[1].model.get_weights(), pooled[1].model.get_weights()):  # (the pool holds the last)
        np.testing.assert_array_equal(wa, wb)


def test_slice_dataset_arrays():
    imgs, labs = _data(2, (8, 10, 12))
    ds = SliceDataset([np.stack([i, i], -1) for i in imgs], labs, "sagittal", batch_size=5, seed=0)
    assert len(ds) == int(np.ceil(16 / 5))
    x, y = ds.arrays()
    assert x.shape == (20, 10, 12, 2) and y.shape == (20, 10, 12, 1)  # padded to whole batches
    np.testing.assert_array_equal(x[3, ..., 0], imgs[0][3])
    np.testing.assert_array_equal(y[9, ..., 0], labs[1][1])
    np.testing.assert_array_equal(x[16:], x[:4])  # padding repeats the first slices
    with pytest.raises(ValueError):
        SliceDataset([imgs[0][..., None]], [labs[0][:4]], "axial")


def test_prediction_reassembles_in_the_right_orientation():
    # an "identity" network (1x1 conv passing channel 0 through a sigmoid) on a known volume
    import keras

    inp = keras.Input((None, None, 1))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="ones", bias_initializer="zeros")(inp)
    model = keras.Model(inp, out)
    vol = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    for view in ("sagittal", "coronal", "axial"):
        prob = predict_volume(model, vol[..., None], view, batch_size=4)
        np.testing.assert_allclose(prob, 1 / (1 + np.exp(-vol)), rtol=1e-5, atol=1e-6)


def test_largest_component_on_constructed_volume():
    m = np.zeros((20, 20, 20), np.uint8)
    m[2:8, 2:8, 2:8] = 1  # 216 voxels
    m[12:15, 12:15, 12:15] = 1  # 27 voxels
    m[9, 9, 9] = 1  # touches nothing
    out = cs.largest_component(m)
    assert out.sum() == 216 and out[3, 3, 3] == 1 and out[13, 13, 13] == 0
    assert cs.largest_component(m, return_count=True)[1] == 3
    # diagonal (26-)neighbours belong to the same component; with 6-connectivity they do not
    m2 = np.zeros((5, 5, 5), np.uint8)
    m2[1, 1, 1] = m2[2, 2, 2] = m2[3, 3, 3] = 1
    m2[3, 3, 4] = 1  # a face neighbour of (3, 3, 3)
    assert cs.largest_component(m2).sum() == 4
    six, n6 = cs.largest_component(m2, connectivity=6, return_count=True)
    assert n6 == 3 and six.sum() == 2 and six[3, 3, 3] == six[3, 3, 4] == 1
    assert cs.largest_component(np.zeros((4, 4, 4))).sum() == 0
    with pytest.raises(ValueError, match="connectivity"):
        cs.largest_component(m2, connectivity=8)
    prob = np.where(m > 0, 0.9, 0.1)
    np.testing.assert_array_equal(cs.postprocess(prob), out)


def test_stage_inputs_wiring():
    img = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    m1 = np.zeros((2, 3, 4), np.uint8)
    m1[0] = 1
    m2 = np.ones((2, 3, 4), np.uint8)
    x = cs.stage_inputs(img, [m1, m2])
    assert x.shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(x[..., 0], img)
    np.testing.assert_array_equal(x[..., 1], m1)
    np.testing.assert_array_equal(x[..., 2], m2)
    with pytest.raises(ValueError):
        cs.stage_inputs(img, [np.zeros((3, 3, 3))])


def test_check_order():
    assert views.check_order(["axial"]) == ("axial",)
    for bad in ([], ["axial", "axial"], ["axial", "coronal", "sagittal", "axial"], ["oblique"]):
        with pytest.raises(ValueError):
            views.check_order(bad)


@pytest.mark.slow  # trains networks
def test_cascade_channel_wiring_and_orientation(tmp_path, monkeypatch):
    order = ("axial", "coronal", "sagittal")
    """Stage k receives exactly image + k-1 masks, sliced along its own view."""
    seen = []
    real_ds = SliceDataset

    class Spy(real_ds):
        def __init__(self, inputs, labels, orientation, *a, **kw):
            seen.append((orientation, inputs[0].shape[-1], inputs[0].copy()))
            super().__init__(inputs, labels, orientation, *a, **kw)

    monkeypatch.setattr(tc, "SliceDataset", Spy)
    profile = get_profile("smoke", max_epochs=1, base_filters=2, depth=2)
    cases = make_prepared_cases(4)
    folds = pp.make_folds([c.case_id for c in cases], 4, 0)
    summary = tc.train_cascade(cases, folds, 0, "unet", order, profile, tmp_path, seed=0)
    assert [s[0] for s in seen] == list(order)
    assert [s[1] for s in seen] == [1, 2, 3]
    train_ids, _ = pp.split_fold([c.case_id for c in cases], folds, 0)
    first = train_ids[0]
    for k in range(1, 3):
        prev_dir = layout.stage_dir(tmp_path, profile, "unet", 0, order[:k])
        with np.load(prev_dir / "pred" / f"{first}.npz") as z:
            np.testing.assert_array_equal(seen[k][2][..., k], z["mask"])  # mask k in channel k
    assert len(summary["stages"]) == 3
    casc = cs.load_cascade(layout.stage_dir(tmp_path, profile, "unet", 0, order))
    assert casc.order == tuple(order)
    mask, prob = casc.predict(cases[0].image)
    assert mask.shape == prob.shape == cases[0].image.shape


@pytest.mark.parametrize("order", __import__("innerear.settings.views", fromlist=["ALL_ORDERS"]).ALL_ORDERS)
def test_six_orders_give_correctly_oriented_outputs(order):
    """Hand-built stages that pass the image channel through: every order must return the
    thresholded image itself on a non-cubic volume (a wrong slicing or reassembly could not)."""
    import keras

    def passthrough(channels):
        inp = keras.Input((None, None, channels))
        w = np.zeros((1, 1, channels, 1), np.float32)
        w[0, 0, 0, 0] = 10.0
        conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
        out = conv(inp)
        conv.set_weights([w, np.zeros(1, np.float32)])
        return keras.Model(inp, out)

    rng = np.random.default_rng(0)
    vol = rng.normal(size=(9, 11, 13)).astype(np.float32)
    vol[2:7, 3:9, 1:12] = 3.0  # one big bright block: the largest component
    models = cs.Cascade([(v, passthrough(k + 1)) for k, v in enumerate(order)], norm.Normalizer(0.0, 1.0), 0)
    mask, prob, stages = models.predict(vol, return_stages=True)
    expected = cs.largest_component(vol > 0)
    assert mask.shape == vol.shape
    for _, m in stages:
        np.testing.assert_array_equal(m, expected)


@pytest.mark.slow  # trains networks
def test_prefix_tree_reuses_shared_stages(tmp_path):
    profile = get_profile("smoke", max_epochs=1, base_filters=2, depth=2)
    cases = make_prepared_cases(4)
    folds = pp.make_folds([c.case_id for c in cases], 4, 0)
    tc.train_cascade(cases, folds, 0, "unet", ("coronal",), profile, tmp_path)
    stamp = (layout.stage_dir(tmp_path, profile, "unet", 0, ("coronal",)) / "best.keras").stat().st_mtime_ns
    tc.train_cascade(cases, folds, 0, "unet", ("coronal", "axial"), profile, tmp_path)
    assert (layout.stage_dir(tmp_path, profile, "unet", 0, ("coronal",)) / "best.keras").stat().st_mtime_ns == stamp
    assert (layout.stage_dir(tmp_path, profile, "unet", 0, ("coronal", "axial")) / "stage.json").exists()


@pytest.mark.slow  # trains networks
def test_changed_settings_never_mix_into_an_existing_run_tree(tmp_path):
    profile = get_profile("smoke", max_epochs=1, base_filters=2, depth=2)
    cases = make_prepared_cases(4)
    folds = pp.make_folds([c.case_id for c in cases], 4, 0)
    tc.train_cascade(cases, folds, 0, "unet", ("coronal",), profile, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(RuntimeError, match="max_epochs differ"):
        tc.train_cascade(cases, folds, 0, "unet", ("coronal", "axial"), get_profile("smoke", max_epochs=2,
                         base_filters=2, depth=2), tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing trained or rewritten


@pytest.mark.slow  # trains networks
def test_smoke_cascade_segments_a_phantom_well_above_chance(tmp_path):
    from dataclasses import replace

    from innerear.data.phantom import write_phantom_set

    profile = get_profile("smoke", max_epochs=10, patience=10, base_filters=8, depth=2, grid=32, learning_rate=3e-3)
    assert profile.bn_momentum == 0.9
    data = tmp_path / "data"
    data.mkdir()
    write_phantom_set(data, replace(profile.phantoms, binning=16), seed=0, n=4)
    cases = pp.prepare_dataset(data, profile.grid)
    folds = pp.make_folds([c.case_id for c in cases], 4, 0)
    order = ("coronal", "sagittal", "axial")
    summary = tc.train_cascade(cases, folds, 0, "unet", order, profile, tmp_path / "runs")
    final = summary["stages"][-1]["mean_test_dice"]
    test_case = folds[0][0]
    by_id = {c.case_id: c for c in cases}
    truth = by_id[test_case].label
    # chance: a random mask with the truth's foreground fraction has an expected Dice equal to that fraction
    chance = float(truth.mean())
    assert final > max(0.5, 10 * chance), (final, chance)
    casc = cs.load_cascade(layout.stage_dir(tmp_path / "runs", profile, "unet", 0, order))
    mask, _ = casc.predict(by_id[test_case].image)
    assert dice(mask, truth) == pytest.approx(summary["stages"][-1]["test_dice"][test_case])


@pytest.mark.slow  # trains networks
def test_relative_min_delta_stops_on_a_slow_plateau(tmp_path):
    """A loss that still falls, but by less than min_delta per epoch, ends the run by patience."""
    imgs, labs = _data(1)
    ds = SliceDataset([imgs[0][..., None]], labs, "axial", batch_size=4, seed=0)
    strict = fit(_tiny_build(), ds, tmp_path / "strict", max_epochs=12, patience=1, learning_rate=1e-3, seed=0,
                 min_delta=0.5)
    assert strict.stopped_by == "patience" and strict.epochs < 12
    done = json.loads((tmp_path / "strict" / "done.json").read_text())
    assert done["stopped_by"] == "patience" and done["min_delta"] == 0.5
    capped = fit(_tiny_build(), ds, tmp_path / "capped", max_epochs=3, patience=10, learning_rate=1e-3, seed=0)
    assert capped.stopped_by == "max_epochs" and capped.epochs == 3
    # the best weights still follow every improvement, however small
    losses = [r["loss"] for r in strict.history]
    assert strict.best_epoch == int(np.argmin(losses))


def test_output_prior_sets_the_final_bias_to_the_foreground_logit():
    from innerear.training.fit import set_output_prior

    model = set_output_prior(_tiny_build()(), 0.05)
    bias = np.asarray(model.get_layer("mask").bias)
    assert np.allclose(bias, np.log(0.05 / 0.95))
    # a constant input gives a constant-ish feature map; the output starts near the prior, far below 0.5
    prob = np.asarray(model(np.zeros((1, 16, 16, 1), np.float32), training=False))
    assert prob.mean() < 0.25


def test_drop_context_erases_about_the_share_and_never_adds():
    mask = np.zeros((40, 40, 40), np.uint8)
    mask[5:35, 10:20, 10:30] = 1
    out = tc.drop_context(mask, 0.3, np.random.default_rng(0))
    removed = 1 - out.sum() / mask.sum()
    assert 0.3 <= removed < 0.6
    assert not (out > mask).any()
    assert np.array_equal(tc.drop_context(mask, 0.0, np.random.default_rng(0)), mask)
    again = tc.drop_context(mask, 0.3, np.random.default_rng(0))
    assert np.array_equal(out, again)  # seeded


def _write_tubes(folder, n=4):
    from innerear.io import write_volume

    folder.mkdir()
    for i in range(n):
        img, lab = make_tube_volume((16, 16, 16), seed=i)
        write_volume(folder / f"c{i}_image.nii.gz", img, np.diag([0.1, 0.1, 0.1, 1.0]))
        write_volume(folder / f"c{i}_label.nii.gz", lab, np.diag([0.1, 0.1, 0.1, 1.0]))


def test_cohort_is_the_prepared_cases_and_the_seeded_folds(tmp_path):
    from innerear.data.cohort import load_cohort

    _write_tubes(tmp_path / "data")
    profile = get_profile("smoke", grid=16)
    cohort = load_cohort(profile, 3, data_dir=tmp_path / "data", cache=tmp_path / "cache")
    ids = [c.case_id for c in pp.prepare_dataset(tmp_path / "data", 16)]
    assert cohort.ids == sorted(ids) == sorted(cohort.by_id)
    assert cohort.folds == pp.make_folds(ids, profile.n_folds, 3)
    assert cohort.split(1) == pp.split_fold(ids, cohort.folds, 1)
    assert not cohort.synthetic and (tmp_path / "cache" / "c0.npz").exists()


def _cohort(profile, seed=0):
    from innerear.data.cohort import Cohort

    cases = make_prepared_cases(4)
    return Cohort(profile, seed, Path("data"), tuple(cases),
                  pp.make_folds([c.case_id for c in cases], profile.n_folds, seed))


def test_train_run_refuses_a_cohort_of_another_seed_or_grid(tmp_path):
    from innerear.training.paper import train_run

    profile = get_profile("smoke", max_epochs=1, base_filters=2, depth=2)
    with pytest.raises(ValueError, match="does not match"):
        train_run(profile, 0, "unet", ("axial",), 1, runs=tmp_path / "runs", cohort=_cohort(profile, seed=0))
    with pytest.raises(ValueError, match="does not match"):
        train_run(get_profile("smoke", grid=64), 0, "unet", ("axial",), 0, runs=tmp_path / "runs",
                  cohort=_cohort(profile))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # trains networks
def test_train_run_returns_the_run_that_train_cascade_wrote(tmp_path):
    from innerear.training.paper import train_run

    profile = get_profile("smoke", max_epochs=1, base_filters=2, depth=2)
    order = ("coronal", "axial")
    result = train_run(profile, 0, "unet", order, 0, runs=tmp_path / "runs", cohort=_cohort(profile))
    assert (result.profile, result.backbone, result.fold, result.order) == ("smoke", "unet", 0, order)
    assert result.folder == layout.stage_dir(tmp_path / "runs", profile, "unet", 0, order)
    assert json.loads(result.cascade.read_text())["order"] == list(order)
    for k, st in enumerate(result.stages):
        folder = layout.stage_dir(tmp_path / "runs", profile, "unet", 0, order[: k + 1])
        assert st == json.loads((folder / "stage.json").read_text())


@pytest.mark.slow  # trains a tiny network
def test_extra_callbacks_see_every_epoch_and_the_replay_rule_is_fits(tmp_path):
    """``fit(callbacks=...)`` runs them at every epoch the run trains, and the rule
    ``benchmarks/bench_stopping.py`` applies to a replayed loss curve stops where ``fit`` stopped."""
    import sys

    import keras

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_stopping import kept_epoch, stop_epoch

    seen: list[int] = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    imgs, labs = _data(1)
    ds = SliceDataset([imgs[0][..., None]], labs, "axial", batch_size=4, seed=0)
    run = fit(_tiny_build(), ds, tmp_path / "run", max_epochs=12, patience=2, learning_rate=1e-3, seed=0,
              min_delta=0.02, callbacks=[Count()])
    assert seen == list(range(run.epochs))
    losses = [r["loss"] for r in run.history]
    assert stop_epoch(losses, 0.02, 2, 12) == run.epochs
    assert kept_epoch(losses, run.epochs) == run.best_epoch
    # a curve that never plateaus runs to the cap; one flat from the start stops after `patience`
    assert stop_epoch([1.0, 0.9, 0.8, 0.7], 0.05, 2, 4) == 4
    assert stop_epoch([1.0, 0.99, 0.98, 0.97, 0.96], 0.05, 2, 5) == 3
