"""Memory-bounded resampling: same result as preprocess.resample_image (scipy zoom, order 3)."""
import numpy as np
import pytest
from scipy import ndimage

from innerear.preprocess import resample_image
from innerear.resample import plan_slabs, resample_axis, resample_image_bounded


def _smooth_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random(shape).astype(np.float32) * 60000, 1.2)
    return v.astype(np.uint16)


@pytest.mark.parametrize("shape,grid", [
    ((40, 50, 30), (16, 16, 16)),   # downsampling
    ((12, 10, 9), (24, 20, 30)),    # upsampling
    ((20, 17, 33), (32, 8, 40)),    # mixed, odd sizes
    ((24, 24, 24), (24, 12, 24)),   # some axes unchanged
])
def test_matches_scipy_zoom(shape, grid):
    v = _smooth_volume(shape)
    ref = resample_image(v, grid)
    out = resample_image_bounded(v, grid)
    assert out.shape == tuple(grid) and out.dtype == np.float32
    rel = np.abs(out - ref).max() / np.ptp(v)
    assert rel < 1e-5, rel  # separable passes = the same tensor-product spline


def test_int_grid_and_small_slabs_give_the_same_result():
    v = _smooth_volume((30, 26, 22), seed=1)
    ref = resample_image(v, 16)
    # a budget that allows only a few planes per slab still gives the same numbers
    budget = plan_slabs(v.shape, (16,) * 3, 0, 2, 1 << 40)[2]
    slab, chunk, _ = plan_slabs(v.shape, (16,) * 3, 0, 2, int(budget * 0.2))
    assert slab < v.shape[0]
    out = resample_image_bounded(v, 16, max_bytes=int(budget * 0.2))
    assert np.abs(out - ref).max() / np.ptp(v) < 1e-5


def test_memmap_path_and_fortran_order(tmp_path):
    v = _smooth_volume((26, 30, 18), seed=2)
    ref = resample_image(v, (13, 12, 20))
    path = tmp_path / "scan.npy"
    np.save(path, v)
    for source in (path, str(path), np.load(path, mmap_mode="r"), np.asfortranarray(v)):
        out = resample_image_bounded(source, (13, 12, 20))
        assert np.abs(out - ref).max() / np.ptp(v) < 1e-5
    fpath = tmp_path / "scan_f.npy"
    np.save(fpath, np.asfortranarray(v))  # e.g. a NIfTI's storage order: slabs along the last axis
    out = resample_image_bounded(np.load(fpath, mmap_mode="r"), (13, 12, 20))
    assert np.abs(out - ref).max() / np.ptp(v) < 1e-5


def test_constant_and_polynomial_volumes():
    const = np.full((20, 18, 16), 1234, np.uint16)
    assert np.allclose(resample_image_bounded(const, 8), 1234, atol=1e-3)
    # a cubic B-spline reproduces a linear ramp away from the borders
    x = np.arange(64, dtype=np.float64)
    ramp = np.broadcast_to(x[:, None, None], (64, 4, 4)).astype(np.float32)
    out = resample_axis(ramp, 0, 32)
    centres = (np.arange(32) + 0.5) * 2 - 0.5
    assert np.allclose(out[4:-4, 0, 0], centres[4:-4], atol=1e-6)


def test_bad_arguments():
    v = _smooth_volume((10, 10, 10))
    with pytest.raises(ValueError, match="3D"):
        resample_image_bounded(v[0], 4)
    with pytest.raises(ValueError, match="order"):
        resample_image_bounded(v, 4, order=1)
    with pytest.raises(ValueError, match="too small"):
        resample_image_bounded(v, 4, max_bytes=1000)
