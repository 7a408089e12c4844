"""innerear.metrics against independent brute-force computations on small volumes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from innerear import metrics as M

ANISO = (0.5, 1.0, 2.0)


# ----------------------------------------------------------------------------- brute force
def brute_confusion(x, y):
    tp = fp = fn = tn = 0
    for a, b in zip(np.asarray(x).ravel().tolist(), np.asarray(y).ravel().tolist()):
        a, b = a != 0, b != 0
        tp += a and b
        fp += a and not b
        fn += b and not a
        tn += not a and not b
    return tp, fp, fn, tn


def points_mm(mask, spacing):
    return np.array([[i * spacing[0], j * spacing[1], k * spacing[2]]
                     for i, j, k in zip(*np.nonzero(mask))], dtype=float).reshape(-1, 3)


def brute_surface(mask):
    """Foreground voxels with a 6-neighbour in the background, by explicit neighbour loops."""
    mask = np.asarray(mask) != 0
    out = np.zeros_like(mask)
    steps = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    for idx in zip(*np.nonzero(mask)):
        for step in steps:
            n = tuple(i + s for i, s in zip(idx, step))
            if any(c < 0 or c >= dim for c, dim in zip(n, mask.shape)) or not mask[n]:
                out[idx] = True
                break
    return out


def brute_hausdorff(x, y, spacing, use_kdtree=False):
    """Set Hausdorff over ALL foreground voxel centres (no surface shortcut)."""
    px, py = points_mm(x, spacing), points_mm(y, spacing)
    if use_kdtree:
        return max(cKDTree(py).query(px)[0].max(), cKDTree(px).query(py)[0].max())
    d = cdist(px, py)
    return max(d.min(axis=1).max(), d.min(axis=0).max())


def brute_surface_metrics(x, y, spacing):
    sx, sy = brute_surface(x), brute_surface(y)
    d = cdist(points_mm(sx, spacing), points_mm(sy, spacing))
    d_xy, d_yx = d.min(axis=1), d.min(axis=0)
    hd95 = np.percentile(np.concatenate([d_xy, d_yx]), 95)  # pooled directions (MedPy's hd95)
    assd = (d_xy.sum() + d_yx.sum()) / (d_xy.size + d_yx.size)
    return hd95, assd


def brute_auc(p, t):
    p, t = np.asarray(p).ravel(), np.asarray(t).ravel() != 0
    wins = 0.0
    for a in p[t]:
        for b in p[~t]:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (t.sum() * (~t).sum())


def random_blob(rng, shape, fraction, sigma=1.5):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f > np.quantile(f, 1 - fraction)


# ----------------------------------------------------------------------------- overlap
@pytest.mark.parametrize("seed", range(4))
def test_overlap_metrics_match_explicit_counts(seed):
    rng = np.random.default_rng(seed)
    x = rng.random((7, 8, 9)) < 0.3
    y = (rng.random((7, 8, 9)) < 0.3).astype(np.uint8) * 3  # integer labels: != 0 counts
    tp, fp, fn, tn = brute_confusion(x, y)
    r = M.evaluate(x, y, ANISO)
    assert r["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["jaccard"] == pytest.approx(tp / (tp + fp + fn))
    assert r["accuracy"] == pytest.approx((tp + tn) / x.size)
    assert r["precision"] == pytest.approx(tp / (tp + fp))
    assert r["recall"] == pytest.approx(tp / (tp + fn))
    assert r["specificity"] == pytest.approx(tn / (tn + fp))
    assert r["auc_paper"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert M.confusion_counts(x, y) == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def test_evaluate_keys_and_types():
    x = np.zeros((5, 5, 5), bool)
    x[1:3, 1:3, 1:3] = True
    r = M.evaluate(x, x, (1, 1, 1))
    assert tuple(r) == M.METRIC_KEYS
    assert r["auc_roc"] is None
    assert all(type(v) is float for k, v in r.items() if k != "auc_roc")
    assert r["dice"] == 1.0 and r["hausdorff_mm"] == 0.0 and r["hd95_mm"] == 0.0


# ----------------------------------------------------------------------------- ROC AUC
@pytest.mark.parametrize("seed", range(3))
def test_roc_auc_matches_pair_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    t = rng.random((6, 5, 4)) < 0.35
    p = np.round(np.clip(rng.random(t.shape) * 0.7 + 0.3 * t, 0, 1), 1)  # many ties
    x = p > 0.5
    r = M.evaluate(x, t, (1, 1, 1), probabilities=p)
    assert r["auc_roc"] == pytest.approx(brute_auc(p, t), abs=1e-12)
    # the smaller class is the negatives here: the other branch of the implementation
    assert M.roc_auc(1 - p, ~t) == pytest.approx(brute_auc(1 - p, ~t), abs=1e-12)


def test_roc_auc_float32_large_matches_rank_formula():
    rng = np.random.default_rng(7)
    t = rng.random((40, 40, 40)) < 0.02
    p = np.clip(rng.random(t.shape) + 0.2 * t, 0, 1).astype(np.float32)
    # independent: average ranks (scipy.stats.rankdata) and the Mann-Whitney U formula
    from scipy.stats import rankdata
    ranks = rankdata(p.ravel())
    n_pos, n_neg = t.sum(), (~t).sum()
    expected = (ranks[t.ravel()].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert M.roc_auc(p, t) == pytest.approx(expected, abs=1e-12)


def test_auc_paper_equals_roc_auc_of_the_binary_mask():
    rng = np.random.default_rng(3)
    t = rng.random((8, 8, 8)) < 0.3
    x = rng.random((8, 8, 8)) < 0.3
    r = M.evaluate(x, t, (1, 1, 1), probabilities=x.astype(np.float32))
    assert r["auc_roc"] == pytest.approx(r["auc_paper"], abs=1e-12)
    assert r["auc_paper"] == pytest.approx((r["recall"] + r["specificity"]) / 2)


def test_roc_auc_one_class_is_nan():
    t = np.zeros((3, 3, 3), bool)
    assert math.isnan(M.roc_auc(np.full(t.shape, 0.3), t))
    assert math.isnan(M.roc_auc(np.full(t.shape, 0.3), ~t))


# ----------------------------------------------------------------------------- distances
@pytest.mark.parametrize("method", ["auto", "kdtree", "edt"])
@pytest.mark.parametrize("seed", range(3))
def test_distances_match_brute_force_random_shapes(seed, method):
    rng = np.random.default_rng(seed)
    y = random_blob(rng, (12, 14, 10), 0.15)
    x = random_blob(rng, (12, 14, 10), 0.12) | (y & (rng.random(y.shape) < 0.5))
    r = M.surface_distances(x, y, ANISO, method=method)
    hd95, assd = brute_surface_metrics(x, y, ANISO)
    assert r["hausdorff_mm"] == pytest.approx(brute_hausdorff(x, y, ANISO), abs=1e-9)
    assert r["hd95_mm"] == pytest.approx(hd95, abs=1e-9)
    assert r["assd_mm"] == pytest.approx(assd, abs=1e-9)


def test_distances_medium_volume_kdtree_brute_force():
    rng = np.random.default_rng(11)
    y = random_blob(rng, (30, 28, 26), 0.05, sigma=2.5)
    x = random_blob(rng, (30, 28, 26), 0.05, sigma=2.5)
    r = M.evaluate(x, y, ANISO)
    assert r["hausdorff_mm"] == pytest.approx(brute_hausdorff(x, y, ANISO, use_kdtree=True),
                                              abs=1e-9)


def test_two_single_voxels_anisotropic():
    x = np.zeros((10, 10, 10), bool)
    y = np.zeros_like(x)
    x[1, 2, 3] = True
    y[4, 7, 5] = True
    expected = math.sqrt((3 * 0.5) ** 2 + (5 * 1.0) ** 2 + (2 * 2.0) ** 2)
    r = M.evaluate(x, y, ANISO)
    for key in ("hausdorff_mm", "hd95_mm", "assd_mm"):
        assert r[key] == pytest.approx(expected)
    assert r["dice"] == 0.0 and r["precision"] == 0.0 and r["recall"] == 0.0


def test_nested_cubes_known_distance():
    x = np.zeros((12, 12, 12), bool)
    y = np.zeros_like(x)
    x[2:8, 2:8, 2:8] = True  # 6^3
    y[4:6, 4:6, 4:6] = True  # 2^3 in the middle
    r = M.evaluate(x, y, ANISO)
    # farthest voxel of X from Y: a corner, 2 voxels away along every axis
    assert r["hausdorff_mm"] == pytest.approx(math.sqrt(1.0 + 4.0 + 16.0))
    assert r["precision"] == pytest.approx(8 / 216) and r["recall"] == 1.0


def test_shifted_cube():
    x = np.zeros((16, 16, 16), bool)
    x[3:9, 3:9, 3:9] = True
    y = np.roll(x, 2, axis=2)
    r = M.evaluate(x, y, ANISO)
    assert r["hausdorff_mm"] == pytest.approx(2 * 2.0)
    hd95, assd = brute_surface_metrics(x, y, ANISO)
    assert r["hd95_mm"] == pytest.approx(hd95) and r["assd_mm"] == pytest.approx(assd)


def test_interior_point_is_the_hausdorff_maximum():
    """Ball X inside a hollow shell Y: the set Hausdorff is attained at X's centre."""
    c = np.indices((21, 21, 21)) - 10
    rr = np.sqrt((c**2).sum(axis=0))
    x = rr <= 8
    y = (rr >= 7) & (rr <= 8)
    r = M.evaluate(x, y, (1, 1, 1))
    expected = brute_hausdorff(x, y, (1, 1, 1))
    assert expected >= 6.0  # the centre is ~7 voxels from the shell
    assert r["hausdorff_mm"] == pytest.approx(expected)
    # a boundary-only evaluation would have given 0 for the X -> Y direction
    assert M.surface_distances(x, y, (1, 1, 1), method="edt")["hausdorff_mm"] == pytest.approx(
        expected)


def test_auto_many_far_points_uses_distance_transform_path():
    x = np.zeros((40, 40, 40), bool)
    y = np.zeros_like(x)
    x[15:40, 15:40, 15:40] = True  # 15625 voxels, most more than 10 voxels from y
    y[0:2, 0:2, 0:2] = True
    expected_h = math.sqrt(3 * (39 - 1) ** 2)
    for method in ("auto", "kdtree", "edt"):
        r = M.surface_distances(x, y, (1, 1, 1), method=method)
        assert r["hausdorff_mm"] == pytest.approx(expected_h)
    a = M.surface_distances(x, y, ANISO, method="auto")
    e = M.surface_distances(x, y, ANISO, method="edt")
    assert a == pytest.approx(e)


def test_surface_matches_neighbour_loops():
    rng = np.random.default_rng(5)
    m = random_blob(rng, (9, 10, 11), 0.3)
    m[0, :, :] |= rng.random((10, 11)) < 0.5  # touching the array border
    np.testing.assert_array_equal(M.surface(m), brute_surface(m))


def test_one_voxel_objects_identical():
    x = np.zeros((5, 6, 7), bool)
    x[2, 3, 4] = True
    r = M.evaluate(x, x.astype(np.int16), ANISO)
    assert r["dice"] == 1.0 and r["hausdorff_mm"] == 0.0 and r["assd_mm"] == 0.0


# ----------------------------------------------------------------------------- edge cases
def test_both_empty():
    z = np.zeros((4, 4, 4), bool)
    r = M.evaluate(z, z, (1, 1, 1), probabilities=np.zeros(z.shape))
    assert r["dice"] == 1.0 and r["jaccard"] == 1.0
    assert r["accuracy"] == 1.0 and r["specificity"] == 1.0
    assert math.isnan(r["precision"]) and math.isnan(r["recall"])
    assert math.isnan(r["auc_paper"]) and math.isnan(r["auc_roc"])
    assert r["hausdorff_mm"] == 0.0 and r["hd95_mm"] == 0.0 and r["assd_mm"] == 0.0


def test_empty_prediction():
    y = np.zeros((4, 4, 4), bool)
    y[1, 1, 1] = True
    r = M.evaluate(np.zeros_like(y), y, (1, 1, 1))
    assert r["dice"] == 0.0 and r["jaccard"] == 0.0 and r["recall"] == 0.0
    assert math.isnan(r["precision"])
    assert r["specificity"] == 1.0 and r["auc_paper"] == 0.5
    assert all(r[k] == math.inf for k in ("hausdorff_mm", "hd95_mm", "assd_mm"))


def test_empty_truth():
    x = np.zeros((4, 4, 4), bool)
    x[1, 1, 1] = True
    r = M.evaluate(x, np.zeros_like(x), (1, 1, 1))
    assert r["dice"] == 0.0 and r["precision"] == 0.0
    assert math.isnan(r["recall"]) and math.isnan(r["auc_paper"])
    assert r["specificity"] == pytest.approx(63 / 64)
    assert all(r[k] == math.inf for k in ("hausdorff_mm", "hd95_mm", "assd_mm"))


def test_truth_fills_volume():
    y = np.ones((3, 3, 3), bool)
    x = y.copy()
    x[0, 0, 0] = False
    r = M.evaluate(x, y, (1, 1, 1))
    assert math.isnan(r["specificity"]) and math.isnan(r["auc_paper"])
    assert r["recall"] == pytest.approx(26 / 27) and r["precision"] == 1.0
    assert r["hausdorff_mm"] == 1.0


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pred=np.zeros((3, 3, 4)), truth=np.zeros((3, 3, 3))),  # shapes differ
        dict(pred=np.zeros((3, 3)), truth=np.zeros((3, 3))),  # 2D
        dict(spacing=(1, 1)),
        dict(spacing=(1, 0, 1)),
        dict(spacing=(1, -1, 1)),
        dict(spacing=(1, float("nan"), 1)),
        dict(spacing="abc"),
        dict(probabilities=np.full((3, 3, 3), 1.5)),
        dict(probabilities=np.full((3, 3, 3), np.nan)),
        dict(probabilities=np.zeros((3, 3, 2))),
        dict(pred=np.array([["a"] * 3] * 3 * 3).reshape(3, 3, 3)),
    ],
)
def test_invalid_input_raises_value_error(kwargs):
    args = dict(pred=np.zeros((3, 3, 3)), truth=np.zeros((3, 3, 3)), spacing=(1, 1, 1))
    args.update(kwargs)
    with pytest.raises(ValueError):
        M.evaluate(**args)


# ----------------------------------------------------------------------------- fragmentation
def test_fragmentation_constructed():
    truth = np.zeros((10, 12, 12), bool)
    truth[1:9, 3:9, 3:9] = True  # one square in slices 1..8 along axis 0
    pred = truth.copy()
    pred[2, :, 6] = False  # slice 2: square cut in two
    pred[5, 6, :] = False  # slice 5: cut in two
    pred[7, 0, 0] = True  # slice 7: an extra speck
    pred[0, 10, 10] = True  # slice 0: truth empty, prediction has a piece
    pred[4, 10, 10] = pred[4, 11, 11] = True  # slice 4: diagonal pair = ONE extra piece
    pred[8] = False  # slice 8: missed entirely (fewer pieces)
    pred[3, 3:9, 3:9] = False
    pred[3, 3, 3] = pred[3, 4, 4] = True  # slice 3: diagonal pixels, one piece (8-conn.)
    r = M.fragmentation(pred, truth, axis=0)
    assert r["n_slices"] == 9  # slices 0..8
    assert r["n_fragmented"] == 5  # slices 0, 2, 4, 5, 7
    assert r["n_fewer"] == 1  # slice 8
    assert r["fraction_fragmented"] == pytest.approx(5 / 9)
    np.testing.assert_array_equal(r["truth_components"], [0] + [1] * 8 + [0])
    np.testing.assert_array_equal(r["pred_components"], [1, 1, 2, 1, 2, 2, 1, 2, 0, 0])


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_components_per_slice_matches_2d_labelling(axis):
    rng = np.random.default_rng(axis + 10)
    m = rng.random((7, 8, 9)) < 0.3
    counts = M.components_per_slice(m, axis)
    moved = np.moveaxis(m, axis, 0)
    expected = [ndimage.label(s, structure=np.ones((3, 3)))[1] for s in moved]
    np.testing.assert_array_equal(counts, expected)


def test_fragmentation_all_empty_is_nan():
    z = np.zeros((3, 4, 5), bool)
    r = M.fragmentation(z, z, axis=1)
    assert r["n_slices"] == 0 and math.isnan(r["fraction_fragmented"])
    with pytest.raises(ValueError):
        M.fragmentation(z, z, axis=3)


def test_auto_few_far_points_unbounded_tree_path():
    x = np.zeros((30, 30, 30), bool)
    x[2:8, 2:8, 2:8] = True
    y = x.copy()
    x[27, 28, 29] = True  # one far false-positive speck, > 10 voxels from y
    expected = brute_hausdorff(x, y, ANISO)
    hd95, assd = brute_surface_metrics(x, y, ANISO)
    r = M.surface_distances(x, y, ANISO, method="auto")
    assert r["hausdorff_mm"] == pytest.approx(expected)
    assert r["hd95_mm"] == pytest.approx(hd95) and r["assd_mm"] == pytest.approx(assd)


# ----------------------------------------------------------------------------- MedPy's convention
@pytest.mark.parametrize("seed", range(6))
def test_hd95_is_medpys_pooled_percentile(seed):
    """``hd95_mm`` is MedPy's ``hd95`` (installed by the ``dev`` extra, pinned): the 95th
    percentile of both directions' surface distances pooled, not the larger directed one."""
    from medpy.metric import binary  # the dev extra pins it; a missing MedPy fails, not skips
    rng = np.random.default_rng(seed)
    shape = (18, 16, 14)
    x = random_blob(rng, shape, 0.12, sigma=1.2)
    y = random_blob(rng, shape, 0.15, sigma=1.8)
    spacing = ANISO if seed % 2 else (0.3, 0.3, 0.3)
    ours = M.surface_distances(x, y, spacing)["hd95_mm"]
    assert ours == pytest.approx(binary.hd95(x, y, voxelspacing=spacing), rel=1e-12, abs=1e-12)
    # the other convention (larger directed percentile) gives a larger number on these shapes,
    # so this test tells the two apart
    directed_distances = getattr(binary, "__surface_distances")
    d_xy, d_yx = directed_distances(x, y, spacing, 1), directed_distances(y, x, spacing, 1)
    assert ours < max(np.percentile(d_xy, 95), np.percentile(d_yx, 95)) - 1e-6
