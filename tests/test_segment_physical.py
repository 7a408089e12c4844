"""Issue 13 (D): `innerear segment` in physical units.

Per-scan percentile normalisation, the prepared grid at a model's voxel size (antialiased,
padded to the networks' multiple, mapped back to the scan's grid), the histogram distance,
the structure label map and the plausible-volume check of a cut labyrinth.

The model used here is a real Keras cascade of one stage whose weights are set by hand, not
trained: a fully convolutional network with two 2x2 poolings (so every slice side must be a
multiple of 4) that calls a voxel foreground when its normalised intensity is below 0.5. Dark
lumen in bright bone is then segmented whatever the scan's units, which is what the pipeline
around the networks must preserve.
"""
import json

import numpy as np
import pytest

from innerear import cli
from innerear.io import read_volume, write_volume
from innerear.metrics import dice
from innerear.data.normalize import (Normalizer, PercentileNormalizer, histogram_distance, normalised_histogram,
                                     normalised_sample, normalizer_from_dict, strided_sample)
from innerear.data.scan import map_to_scan, prepare_scan_physical
from innerear.inference.checks import HISTOGRAM_WARN_DISTANCE, plausible_volume, touches_border, volume_check
from innerear.inference.modelfolder import SegmentError, read_model_folder
from innerear.inference.segment import segment_scan

pytest.importorskip("SimpleITK")
VOXEL_MM = 0.15
MULTIPLE = 4


def _rotation(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _affine(direction, spacing, origin=(3.0, -2.0, 1.0)):
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction, float) @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


AFFINES = {
    "isotropic": _affine(np.eye(3), (0.1, 0.1, 0.1)),
    "anisotropic": _affine(np.eye(3), (0.08, 0.12, 0.1)),
    "oblique mirrored": _affine(_rotation((1, 2, 0.5), 17) @ np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0.0]]),
                                (0.11, 0.09, 0.13)),
    "mirrored": _affine(np.diag([-1.0, 1.0, -1.0]), (0.1, 0.07, 0.12)),
}


def _world(shape, affine):
    ijk = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3, None]).T.reshape(*shape, 3)


def _planted(shape, affine, centre_shift=(0.0, 0.0, 0.0)):
    """An elongated, tilted ellipsoid (semi-axes 1.6, 1.0, 0.8 mm) in world coordinates."""
    world = _world(shape, affine)
    centre = world.reshape(-1, 3).mean(0) + np.asarray(centre_shift)
    rel = (world - centre) @ _rotation((0.3, 1, 0.2), 25)
    return (((rel / [1.6, 1.0, 0.8]) ** 2).sum(-1) <= 1).astype(np.uint8)


def _scan(mask, seed=0, lumen=1000.0, bone=3000.0, noise=60.0):
    """Bright bone with dark lumen where ``mask``, mild blur and noise (float32)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = np.where(mask > 0, lumen, bone).astype(np.float32)
    return (ndimage.gaussian_filter(image, 0.7) + rng.normal(0, noise, mask.shape)).astype(np.float32)


# --------------------------------------------------------------------------- normalisers
def test_percentile_normalisation_ignores_units_and_offsets():
    mask = _planted((40, 36, 30), AFFINES["isotropic"])
    image = _scan(mask)  # 800..3200
    as_uint16 = np.round(image * 10 + 5000).astype(np.uint16)
    as_hu = np.round(image - 2000).astype(np.int16)  # lumen about -1000, bone about 1000
    as_float = (image * 0.0137 - 4.2).astype(np.float32)
    norm = PercentileNormalizer()
    ref = norm(image)
    span = np.percentile(image, 99.5) - np.percentile(image, 0.5)
    for other in (as_uint16, as_hu, as_float):
        out = norm(other)
        assert out.dtype == np.float32 and out.shape == image.shape
        # equal up to the rounding of the conversion (half an integer unit of the span)
        np.testing.assert_allclose(out, ref, atol=2.0 / span)
    # the z-score of the paper's recipe is not invariant: the point of the new normaliser
    zscore = Normalizer(mean=float(image.mean()), std=float(image.std()))
    assert np.abs(zscore(as_hu) - zscore(image)).mean() > 0.5
    # the percentiles map to 0 and 1; far values are compressed softly within soft_clip
    assert np.percentile(ref, [0.5, 99.5]) == pytest.approx([0.0, 1.0], abs=1e-3)
    far = norm(np.concatenate([image.ravel(), [1e6, -1e6]]).astype(np.float32))
    assert far.max() <= 1.5 and far.min() >= -0.5


def test_percentiles_come_from_a_subsample_of_big_volumes():
    rng = np.random.default_rng(3)
    big = rng.gamma(2.0, 500.0, (96, 96, 96)).astype(np.float32)
    small = PercentileNormalizer(max_samples=20_000)
    exact = np.percentile(big, [0.5, 99.5])
    assert small.percentiles(big) == pytest.approx(exact, abs=0.01 * (exact[1] - exact[0]))  # 1 % of the span
    assert small.percentiles(big) == small.percentiles(big)  # a regular stride: the same every time


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float64])
def test_percentile_normalisation_is_the_same_on_one_core_or_in_slabs(dtype, monkeypatch):
    """The mapping runs in slabs on the cores side by side; voxel for voxel it is the one-core answer,
    which is the formula written out (soft-clipped beyond the percentiles)."""
    rng = np.random.default_rng(4)
    image = rng.gamma(2.0, 400.0, (23, 17, 11)) - (1000 if dtype == np.int16 else 0)
    image = image.astype(dtype)
    norm = PercentileNormalizer()
    monkeypatch.setenv("INNEREAR_THREADS", "1")
    one = norm(image)
    monkeypatch.setenv("INNEREAR_THREADS", "3")  # three slabs of unequal thickness
    np.testing.assert_array_equal(norm(image), one)
    lo, hi = norm.percentiles(image)
    linear = (image.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    c = np.float32(norm.soft_clip)
    expected = np.where(linear < 0, -c * np.tanh(-linear / c), np.where(linear > 1, 1 + c * np.tanh((linear - 1) / c),
                                                                        linear))
    np.testing.assert_allclose(one, expected, atol=1e-6)
    assert one.dtype == np.float32 and (one < 0).any() and (one > 1).any()


def test_normalizer_dicts_of_both_kinds():
    z = Normalizer(mean=10.0, std=2.0)
    p = PercentileNormalizer(low=1.0, high=99.0, soft_clip=None)
    assert z.to_dict()["kind"] == "zscore" and p.to_dict()["kind"] == "percentile"
    assert normalizer_from_dict(z.to_dict()) == z and normalizer_from_dict(p.to_dict()) == p
    assert normalizer_from_dict({"mean": 1.0, "std": 3.0}) == Normalizer(1.0, 3.0)  # written before "kind"
    assert normalizer_from_dict({"kind": "percentile"}) == PercentileNormalizer()
    for bad, words in (({"kind": "minmax"}, "unknown normalizer kind"), ({"mean": 1.0}, "lacks std"),
                       ({"kind": "percentile", "lo": 1}, "unknown fields"),
                       ({"kind": "percentile", "low": 60, "high": 40}, "percentiles")):
        with pytest.raises(ValueError, match=words):
            normalizer_from_dict(bad)


def test_histogram_distance_is_zero_for_the_same_scan_and_large_for_an_inverted_one():
    mask = _planted((40, 36, 30), AFFINES["isotropic"])
    image = _scan(mask)
    norm = PercentileNormalizer()
    edges, density = normalised_histogram(norm(image))
    assert density.shape == (len(edges) - 1,) and np.sum(density * np.diff(edges)) == pytest.approx(1.0)
    ref = {"edges": edges.tolist(), "density": density.tolist()}  # as a model card holds it
    assert histogram_distance((edges, density), ref) == pytest.approx(0.0, abs=1e-9)
    other_seed = normalised_histogram(norm(_scan(mask, seed=5)), bins=edges)
    assert histogram_distance(other_seed, ref) < 0.02
    in_hu = normalised_histogram(norm(np.round(image - 2000).astype(np.int16)), bins=edges)
    assert histogram_distance(in_hu, ref) < 0.02
    inverted = normalised_histogram(norm(image.max() - image), bins=edges)
    assert histogram_distance(inverted, ref) > 3 * HISTOGRAM_WARN_DISTANCE
    # a shift by d moves all the mass by d
    shifted = (edges + 0.2, density)
    assert histogram_distance(shifted, (edges, density)) == pytest.approx(0.2, abs=1e-6)


def test_histogram_distance_is_scipys_wasserstein_distance_of_the_bin_centres():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(3)
    for _ in range(20):  # bins that differ in number, width and range, some of them empty
        ea = np.sort(rng.uniform(-1, 2, rng.integers(2, 40)))
        eb = np.sort(rng.uniform(-0.5, 3, rng.integers(2, 60)))
        da, db = rng.random(len(ea) - 1) * (rng.random(len(ea) - 1) > 0.2), rng.random(len(eb) - 1)
        if not da.any():
            da[0] = 1.0
        expected = wasserstein_distance(0.5 * (ea[1:] + ea[:-1]), 0.5 * (eb[1:] + eb[:-1]), da * np.diff(ea),
                                        db * np.diff(eb))
        assert histogram_distance((ea, da), (eb, db)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("name", sorted(AFFINES))
def test_prepare_and_map_back_round_trip(name):
    affine = AFFINES[name]
    shape = (52, 47, 41)
    mask = _planted(shape, affine)
    prepared = prepare_scan_physical(mask.astype(np.float32), affine, VOXEL_MM, MULTIPLE)
    assert all(n % MULTIPLE == 0 for n in prepared.volume.shape)
    np.testing.assert_allclose(prepared.spacing_mm, [VOXEL_MM] * 3, rtol=1e-9)
    # the core covers the scan's extent: no more than one voxel and the multiple's rounding of padding
    extent = np.asarray(shape) * np.linalg.norm(affine[:3, :3], axis=0)
    core = np.array([sl.stop - sl.start for sl in prepared.core])
    assert np.all(np.abs(np.sort(core) - np.sort(extent / VOXEL_MM)) <= 1.0)
    assert np.all(np.array(prepared.padding()) < MULTIPLE + 1)
    back = map_to_scan(prepared.outside_zeroed(prepared.volume), prepared.affine, shape, affine, 0.5)
    assert back.shape == shape and back.dtype == np.uint8
    assert dice(back, mask) > 0.95
    # nearest-neighbour mapping of a label map keeps its values and its place
    labels = np.where(prepared.volume >= 0.5, 2, 0).astype(np.uint8)
    labels_back = map_to_scan(labels, prepared.affine, shape, affine, None, order=0)
    assert labels_back.dtype == np.uint8 and set(np.unique(labels_back)) <= {0, 2}
    assert dice(labels_back > 0, mask) > 0.9


def test_padding_repeats_the_edge_and_yields_no_foreground():
    affine = AFFINES["anisotropic"]
    shape = (30, 25, 22)  # 2.4 x 3.0 x 2.2 mm: 16, 20, 15 voxels -> 16, 20, 16
    mask = np.zeros(shape, np.uint8)
    mask[:, :, -4:] = 1  # a dark slab on the last face: its edge values fill the padding
    image = _scan(mask)
    prepared = prepare_scan_physical(image, affine, VOXEL_MM, 8)
    assert prepared.volume.shape == (16, 24, 16) and prepared.padding()[1] == [2, 2]
    vol = prepared.volume
    core = vol[prepared.core]
    assert vol.min() >= image.min() - 100 and vol.max() <= image.max() + 100  # no invented intensities
    # edge values: the pad next to an axis' first core voxel repeats (about) it
    np.testing.assert_allclose(vol[:, :2], np.repeat(vol[:, 2:3], 2, axis=1), atol=0.05 * np.ptp(image))
    norm = PercentileNormalizer()
    assert norm.percentiles(vol) == pytest.approx(norm.percentiles(core), rel=0.05)
    # a model that segments dark voxels finds the slab in the padding too; the pipeline drops it
    found = (norm(vol) < 0.5).astype(np.uint8)
    outside = found.copy()
    outside[prepared.core] = 0
    assert outside.any()
    cleaned = prepared.outside_zeroed(found)
    assert not cleaned[~_core_mask(prepared)].any() and np.array_equal(cleaned[prepared.core], found[prepared.core])
    back = map_to_scan(cleaned, prepared.affine, shape, affine, 0.5)
    assert dice(back, mask) > 0.9


def _core_mask(prepared):
    inside = np.zeros(prepared.volume.shape, bool)
    inside[prepared.core] = True
    return inside


def test_antialiasing_removes_the_noise_of_a_10x_downsampled_scan():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (160, 160, 160)).astype(np.float32)  # white noise, 16 um voxels, 2.56 mm
    affine = np.diag([0.016, 0.016, 0.016, 1.0])
    sharp = prepare_scan_physical(noise, affine, 0.16, MULTIPLE, antialias=False)
    smooth = prepare_scan_physical(noise, affine, 0.16, MULTIPLE)
    assert smooth.volume.shape == sharp.volume.shape == (16, 16, 16)
    assert smooth.antialias_sigma == pytest.approx((4.5, 4.5, 4.5)) and sharp.antialias_sigma == (0.0, 0.0, 0.0)
    assert sharp.volume.std() > 0.5  # a spline through every 10th voxel keeps the full noise
    assert smooth.volume.std() < 0.1 * sharp.volume.std()
    # shrinking by less than 1.5 times is left alone
    mild = prepare_scan_physical(noise[:40, :40, :40], np.diag([0.12, 0.12, 0.12, 1.0]), 0.15, MULTIPLE)
    assert mild.antialias_sigma == (0.0, 0.0, 0.0)


def test_plausible_volume_of_a_cut_labyrinth():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[3:6, 3:6, 3:6] = 1
    assert not touches_border(mask)
    mask[3:6, 3:6, 0] = 1
    assert touches_border(mask)
    bounds = plausible_volume(None)
    assert bounds["min"] == 20.0 and bounds["min_cut"] < bounds["min"] and "source_cut" in bounds
    whole = volume_check(10.0, 100, bounds)
    cut = volume_check(10.0, 100, bounds, cut=True)
    assert not whole["passed"] and cut["passed"] and cut["cut_by_field_of_view"]
    assert cut["range_mm3"] == [20.0, 1000.0] and cut["applied_range_mm3"] == [bounds["min_cut"], 1000.0]
    speck = volume_check(0.5, 5, bounds, cut=True)
    assert not speck["passed"] and "field of view cuts" in speck["reason"]
    assert not volume_check(2000.0, 10, bounds, cut=True)["passed"]  # the upper bound still holds
    assert not volume_check(0.0, 0, bounds, cut=True)["passed"]
    assert plausible_volume({"min": 30, "max": 900, "min_cut": 8})["min_cut"] == 8


# --------------------------------------------------------------------------- a physical model folder
def _threshold_network(channels, depth=2):
    import keras

    x = keras.Input((None, None, channels))
    pooled = x
    for _ in range(depth):
        pooled = keras.layers.MaxPooling2D(2)(pooled)
    context = keras.layers.UpSampling2D(2**depth)(pooled)  # shapes agree only for sides that are multiples
    both = keras.layers.Concatenate()([x, context])
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="threshold")(both)
    model = keras.Model(x, out)
    weights = np.zeros((1, 1, 2 * channels, 1), np.float32)
    weights[0, 0, 0, 0] = -40.0  # the image channel: dark (normalised < 0.5) is foreground
    model.get_layer("threshold").set_weights([weights, np.array([20.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def physical_model(tmp_path_factory):
    """A model folder of the physical kind: voxel_mm, percentile normaliser, no grid."""
    from innerear.settings.profiles import import_backend

    import_backend()
    folder = tmp_path_factory.mktemp("models") / "physical"
    (folder / "stage1_axial").mkdir(parents=True)
    _threshold_network(1).save(folder / "stage1_axial" / "best.keras")
    (folder / "stage1_axial" / "stage.json").write_text(json.dumps({"view": "axial", "stage": 1, "channels": 1,
                                                                     "voxel_mm": VOXEL_MM}))
    norm = PercentileNormalizer()
    affine = AFFINES["isotropic"]
    train = _scan(_planted((50, 50, 50), affine), seed=11)
    prepared = prepare_scan_physical(train, affine, VOXEL_MM, MULTIPLE)
    edges, density = normalised_histogram(norm(prepared.volume[prepared.core]))
    spec = {"format_version": 2, "stages": ["stage1_axial"], "order": ["axial"], "normalizer": norm.to_dict(),
            "voxel_mm": VOXEL_MM, "threshold": 0.5, "backbone": "unet", "profile": "hand-set threshold network (test)",
            "intensity_histogram": {"edges": edges.tolist(), "density": density.tolist()},
            "plausible_inner_ear_volume_mm3": {"min": 2.0, "max": 100.0, "source": "test model: a 5 mm^3 ellipsoid"}}
    (folder / "cascade.json").write_text(json.dumps(spec))
    (folder / "model_card.json").write_text(json.dumps({"data": "none: the weights are set by hand"}))
    return folder


def test_physical_model_folder_is_checked(physical_model, tmp_path):
    import shutil

    spec = read_model_folder(physical_model).spec.to_dict()
    assert spec["voxel_mm"] == VOXEL_MM and "grid" not in spec
    for change, words in (({"voxel_mm": None}, "grid or voxel_mm"), ({"voxel_mm": 5.0}, "voxel_mm 5.0"),
                          ({"normalizer": {"kind": "other"}}, "unknown normalizer kind")):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(physical_model, bad)
        spec_bad = {k: v for k, v in dict(spec, **change).items() if v is not None}
        (bad / "cascade.json").write_text(json.dumps(spec_bad))
        with pytest.raises(SegmentError, match=words):
            read_model_folder(bad)


def _write_scan(path, image, affine):
    write_volume(path, image, affine)
    return path


@pytest.mark.parametrize("name", ["oblique mirrored", "anisotropic"])
def test_segment_with_a_physical_model_in_any_units(tmp_path, physical_model, capsys, name):
    affine = AFFINES[name]
    shape = (58, 51, 47)
    mask = _planted(shape, affine)
    image = _scan(mask, seed=2)
    masks = {}
    for units, stored in (("uint16", np.round(image * 10 + 5000).astype(np.uint16)),
                          ("hu", np.round(image - 2000).astype(np.int16)),
                          ("float", (image * 0.0137 - 4.2).astype(np.float32))):
        scan = _write_scan(tmp_path / f"{units}.nii.gz", stored, affine)
        out, report = tmp_path / f"{units}_mask.nii.gz", tmp_path / f"{units}.json"
        code = cli.main(["segment", str(scan), "-o", str(out), "--model", str(physical_model), "--report",
                         str(report), "--quiet"])
        assert code == 0, capsys.readouterr().err
        got, _, back_affine = read_volume(out)
        assert got.shape == shape
        np.testing.assert_allclose(back_affine, affine, atol=1e-5)
        assert dice(got, mask) > 0.9, units
        masks[units] = got
        rep = json.loads(report.read_text())
        assert rep["model"]["voxel_mm"] == [VOXEL_MM] * 3 and rep["model"]["grid"] is None
        assert rep["input"]["spacing_mm"] == pytest.approx(np.linalg.norm(affine[:3, :3], axis=0).tolist(), rel=1e-5)
        assert rep["prepared"]["spacing_mm"] == pytest.approx([VOXEL_MM] * 3)
        assert all(n % MULTIPLE == 0 for n in rep["prepared"]["grid"])
        assert 0 <= rep["intensity_histogram_distance"] < HISTOGRAM_WARN_DISTANCE and not rep["warnings"]
        assert rep["structures"] is None and rep["cochlea"] is None and rep["checks"]["inner_ear_volume"]["passed"]
    assert dice(masks["uint16"], masks["hu"]) > 0.99 and dice(masks["uint16"], masks["float"]) > 0.99


def test_inverted_scan_is_reported_far_from_the_training_intensities(tmp_path, physical_model):
    affine = AFFINES["isotropic"]
    image = _scan(_planted((50, 48, 44), affine), seed=3)
    scan = _write_scan(tmp_path / "inverted.nii.gz", (image.max() - image).astype(np.float32), affine)
    _, _, rep = segment_scan(scan, physical_model)
    check = rep["checks"]["intensity"]
    assert rep["intensity_histogram_distance"] > HISTOGRAM_WARN_DISTANCE and not check["passed"]
    assert any("histogram distance" in w for w in rep["warnings"])


def test_labels_refused_for_a_binary_model(tmp_path, physical_model, capsys):
    affine = AFFINES["isotropic"]
    scan = _write_scan(tmp_path / "scan.nii.gz", _scan(_planted((50, 48, 44), affine)), affine)
    capsys.readouterr()
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "ear.nii.gz"), "--labels",
                     str(tmp_path / "ear_labels.nii.gz"), "--model", str(physical_model), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "ear_labels.nii.gz" in err[0] and "no structure labels" in err[0] and "omit --labels" in err[0]
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "ear.nii.gz"), "--labels",
                     str(tmp_path / "ear_labels.png"), "--model", str(physical_model), "--quiet"])
    assert code == 1 and "the label map must end with" in capsys.readouterr().err


class _StructureEngine:
    """The engine's multi-class output, stubbed for this test: the loaded cascade's mask, split
    along the first canonical axis into cochlea / vestibule / canals thirds."""

    n_classes = 4

    def __init__(self, cascade):
        self._cascade = cascade

    def __getattr__(self, name):
        return getattr(self._cascade, name)

    def predict(self, volume, mode=None, *, return_labels=False, **kw):
        mask, prob = self._cascade.predict(volume, mode, **kw)
        if not return_labels:
            return mask, prob
        idx = np.nonzero(mask)
        cuts = np.percentile(idx[0], [33, 67]) if len(idx[0]) else [0, 0]
        labels = np.zeros(mask.shape, np.uint8)
        labels[idx] = 1 + np.searchsorted(cuts, idx[0])
        return mask, prob, labels


def test_labels_structures_and_cochlea_measures(tmp_path, physical_model, monkeypatch, capsys):
    import innerear.inference.segment as seg

    cascade = _StructureEngine(seg.load_model_dir(physical_model))
    monkeypatch.setattr(seg, "load_model_dir", lambda *a, **k: cascade)
    calls = []

    class Measures:  # the interface of innerear.metrics.cochlea (helper `cochlea`), stubbed in this test only
        def __init__(self, mask, affine):
            calls.append((mask.shape, np.asarray(affine)))
            self.volume_mm3 = float(mask.sum() * abs(np.linalg.det(affine[:3, :3])))
            self.duct_length_mm, self.turns, self.method = 31.5, 2.6, "stub"

        def to_dict(self):
            return dict(vars(self))

    monkeypatch.setattr("innerear.inference.report.measure_cochlea", Measures)
    affine = AFFINES["oblique mirrored"]
    shape = (58, 51, 47)
    scan = _write_scan(tmp_path / "scan.nrrd", _scan(_planted(shape, affine)), affine)
    capsys.readouterr()
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "ear.nii.gz"), "--labels",
                     str(tmp_path / "ear_labels.nrrd"), "--report", str(tmp_path / "ear.json"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mm^3, cochlea " in printed and ", vestibule " in printed and "labels " in printed, printed
    mask, _, _ = read_volume(tmp_path / "ear.nii.gz")
    labels, _, lab_affine = read_volume(tmp_path / "ear_labels.nrrd")
    np.testing.assert_allclose(lab_affine, affine, atol=1e-5)
    assert labels.shape == shape and set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.array_equal(labels > 0, mask > 0)  # every mask voxel has a structure, none outside
    rep = json.loads((tmp_path / "ear.json").read_text())
    voxel = abs(np.linalg.det(affine[:3, :3]))
    total = sum(s["volume_mm3"] for s in rep["structures"].values())
    assert total == pytest.approx(rep["inner_ear"]["volume_mm3"])
    assert rep["structures"]["cochlea"]["voxels"] == int((labels == 1).sum())
    assert rep["structures"]["vestibule"]["volume_mm3"] == pytest.approx((labels == 2).sum() * voxel)
    assert rep["model"]["structures"] is True and rep["output"]["labels"].endswith("ear_labels.nrrd")
    cochlea = rep["cochlea"]
    assert cochlea["available"] and cochlea["duct_length_mm"] == 31.5 and cochlea["method"] == "stub"
    assert cochlea["volume_mm3"] == pytest.approx((labels == 1).sum() * voxel)
    (crop_shape, crop_affine), = calls
    assert all(c <= s for c, s in zip(crop_shape, shape))  # measured on the cochlea's bounding box


def test_grid_models_keep_their_path(monkeypatch):
    """A grid model (the shipped one) never reaches the physical preparation."""
    import innerear.inference.segment as seg

    class GridCascade:
        grid = 16
        info = {"grid": 16}

    assert seg.model_voxel_mm(GridCascade()) is None

    class PhysicalCascade:
        grid = None
        info = {"voxel_mm": 0.2}

    assert seg.model_voxel_mm(PhysicalCascade()) == (0.2, 0.2, 0.2)


def test_intensity_check_uses_the_models_threshold(physical_model):
    from innerear.inference.checks import intensity_check
    import innerear.inference.segment as seg

    cascade = seg.load_model_dir(physical_model)
    reference = read_model_folder(physical_model).spec.intensity_histogram
    image = _scan(_planted((50, 48, 44), AFFINES["isotropic"]), seed=3)
    inverted = (image.max() - image).astype(np.float32)
    assert not intensity_check(cascade, inverted, reference)["passed"]
    reference = dict(reference, warn_above=10.0)
    check = intensity_check(cascade, inverted, reference)
    assert check["passed"] and check["warn_above"] == 10.0 and check["distance"] > HISTOGRAM_WARN_DISTANCE
    no_histogram = intensity_check(cascade, image, None)
    assert no_histogram["distance"] is None and no_histogram["passed"] and "no intensity_histogram" in no_histogram["note"]


def test_readme_states_the_segmenters_constants():
    from pathlib import Path

    from innerear.inference.checks import PLAUSIBLE_CUT_MIN

    text = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert f"with a warning above {HISTOGRAM_WARN_DISTANCE:g}" in text
    assert f"`min_cut` ({PLAUSIBLE_CUT_MIN['min_cut']:g} mm³" in text
    assert "--labels" in text and "1 cochlea, 2 vestibule, 3 semicircular canals" in text


# --------------------------------------------------------------------------- a multi-class model (the engine's labels)
CENTRES = {1: 0.05, 2: 0.25, 3: 0.45, 0: 0.9}  # normalised intensity of each class's lumen (0: bone)


def _class_network(depth=2, sharpness=200.0):
    """Softmax over background, cochlea, vestibule, canals by the nearest class intensity
    (logits ``2 m x - m**2``: the nearest of the centres ``m`` wins)."""
    import keras

    x = keras.Input((None, None, 1))
    pooled = x
    for _ in range(depth):
        pooled = keras.layers.MaxPooling2D(2)(pooled)
    both = keras.layers.Concatenate()([x, keras.layers.UpSampling2D(2**depth)(pooled)])
    out = keras.layers.Conv2D(4, 1, activation="softmax", name="classes")(both)
    model = keras.Model(x, out)
    m = np.array([CENTRES[k] for k in range(4)], np.float32)
    weights = np.zeros((1, 1, 2, 4), np.float32)
    weights[0, 0, 0] = sharpness * 2 * m
    model.get_layer("classes").set_weights([weights, -sharpness * m**2])
    return model


def test_multi_class_model_writes_its_label_map(tmp_path, physical_model, monkeypatch):
    import shutil

    import innerear.inference.engine as cs
    import innerear.inference.segment as seg

    if "return_labels" not in __import__("inspect").signature(cs.Cascade.predict).parameters:
        pytest.skip("the engine has no multi-class output yet")
    folder = tmp_path / "multi"
    shutil.copytree(physical_model, folder)
    _class_network().save(folder / "stage1_axial" / "best.keras")
    affine = AFFINES["oblique mirrored"]
    shape = (60, 54, 50)
    world = _world(shape, affine)
    centre = world.reshape(-1, 3).mean(0)
    truth = np.zeros(shape, np.uint8)
    for code, shift, axes in ((3, (1.6, 0, 0), (1.0, 0.5, 0.5)), (2, (0, 0, 0), (1.0, 0.9, 0.9)),
                              (1, (-1.6, 0, 0), (1.0, 0.8, 0.8))):
        inside = ((((world - centre - shift) / axes) ** 2).sum(-1) <= 1)
        truth[inside & (truth == 0)] = code
    lo, hi = 1000.0, 3000.0  # cochlea lumen and bone; the others between, at their class's intensity
    value = {0: hi, **{k: lo + (hi - lo) * CENTRES[k] for k in (1, 2, 3)}}
    image = np.vectorize(value.get)(truth).astype(np.float32) + np.random.default_rng(0).normal(0, 20, shape)
    scan = _write_scan(tmp_path / "scan.nii.gz", image.astype(np.float32), affine)
    labels_path = tmp_path / "labels.nii.gz"
    rep = seg.segment_to_files(scan, tmp_path / "ear.nii.gz", folder, labels=labels_path,
                               report=tmp_path / "ear.json")
    labels, _, _ = read_volume(labels_path)
    mask, _, _ = read_volume(tmp_path / "ear.nii.gz")
    assert labels.shape == shape and np.array_equal(labels > 0, mask > 0)
    from scipy import ndimage

    for code in (1, 2, 3):  # the boundaries' partial volume looks like the other classes: the interiors
        interior = ndimage.binary_erosion(truth == code, iterations=2)
        assert np.mean(labels[interior] == code) > 0.95, code
    assert dice(mask, truth > 0) > 0.9
    assert rep["structures"]["cochlea"]["voxels"] == int((labels == 1).sum())
    assert rep["cochlea"]["available"] is False and "not a spiral" in rep["cochlea"]["reason"]  # an ellipsoid


def test_a_field_of_view_too_large_for_the_model_is_refused(tmp_path, physical_model, capsys):
    big = np.random.default_rng(0).integers(0, 4000, (40, 40, 40)).astype(np.uint16)
    scan = _write_scan(tmp_path / "head.nii", big, np.diag([2.0, 2.0, 2.0, 1.0]))  # 80 mm at 0.15 mm: 534^3
    capsys.readouterr()
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "ear.nii.gz"), "--model", str(physical_model),
                     "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "head.nii" in err[0] and "too large" in err[0] and "crop" in err[0], err
    assert [p.name for p in tmp_path.iterdir()] == ["head.nii"]


def test_a_scan_at_the_models_voxel_size_is_only_padded():
    from innerear.data.resample import resample_image_bounded
    from innerear.data.scan import physical_geometry

    rng = np.random.default_rng(4)
    image = rng.normal(1000, 200, (37, 30, 25)).astype(np.float32)
    affine = _affine(np.diag([-1.0, 1.0, 1.0]), (VOXEL_MM,) * 3)
    prepared = prepare_scan_physical(image, affine, VOXEL_MM, 8)
    canonical = image[::-1]  # the mirrored first axis, in RAS+ order
    assert prepared.volume.shape == (40, 32, 32) and prepared.padding() == [[1, 2], [1, 1], [3, 4]]
    np.testing.assert_array_equal(prepared.volume[prepared.core], canonical)
    # the same as the spline through the samples
    grid, steps, starts, _, _ = physical_geometry(canonical.shape, np.diag([VOXEL_MM] * 3 + [1.0]), VOXEL_MM, 8)
    spline = resample_image_bounded(canonical, grid, steps=steps, starts=starts)
    np.testing.assert_allclose(prepared.volume, spline, atol=1e-2)


def test_cochlea_centred_crops_of_phantoms_pass_the_cut_bound():
    from innerear.settings.profiles import get_profile
    from innerear.data.phantom import generate_specimen

    bounds = plausible_volume(None)
    for index in range(2):
        spec = generate_specimen(index, 0, get_profile("demo").phantoms)
        voxel = abs(np.linalg.det(spec.affine[:3, :3]))
        centre = np.array(np.nonzero(spec.structures == 1)).mean(1).astype(int)
        half = int(4.0 / spec.spacing[0])  # an 8 mm field of view centred on the cochlea
        crop = spec.label[tuple(slice(max(0, c - half), c + half) for c in centre)]
        assert touches_border(crop)
        check = volume_check(float(crop.sum() * voxel), int(crop.sum()), bounds, cut=True)
        assert check["passed"] and check["volume_mm3"] > 2 * bounds["min_cut"], check


def test_a_cochlea_that_is_no_spiral_is_reported_not_fatal(tmp_path, physical_model, monkeypatch):
    """The real measurement refuses the planted block-shaped "cochlea": the report says why, exit 0."""
    import innerear.inference.segment as seg

    cascade = _StructureEngine(seg.load_model_dir(physical_model))
    monkeypatch.setattr(seg, "load_model_dir", lambda *a, **k: cascade)
    affine = AFFINES["oblique mirrored"]
    scan = _write_scan(tmp_path / "scan.nrrd", _scan(_planted((58, 51, 47), affine)), affine)
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "ear.nii.gz"), "--labels",
                     str(tmp_path / "ear_labels.nii.gz"), "--report", str(tmp_path / "ear.json"), "--quiet"])
    assert code == 0
    cochlea = json.loads((tmp_path / "ear.json").read_text())["cochlea"]
    assert cochlea["available"] is False and "could not be measured" in cochlea["reason"]


def test_a_normalised_sample_is_the_sample_of_the_normalised_scan():
    rng = np.random.default_rng(5)
    volume = rng.normal(1000.0, 300.0, (41, 37, 30)).astype(np.float32)
    volume[2, 3, 4], volume[20, 20, 20], volume[30, 1, 1] = np.nan, np.inf, -np.inf  # soft clip maps ±inf
    box = (slice(3, 38), slice(2, 35), slice(1, 29))
    for normalizer in (PercentileNormalizer(), Normalizer(1000.0, 300.0)):
        for samples in (1 << 21, 4000):  # every voxel, and a stride of 3
            expected = strided_sample(normalizer(volume)[box], samples)
            np.testing.assert_array_equal(normalised_sample(normalizer, volume, box, samples), expected)
    assert normalised_sample(PercentileNormalizer(), volume, box, 4000).size < 4000
