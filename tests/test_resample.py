"""Memory-bounded resampling: same result as scipy zoom (order 3), and it is the pipeline's resampler."""
import numpy as np
import pytest
from scipy import ndimage

from innerear.data.resample import plan_slabs, resample_axis, resample_image_bounded


def resample_image(v, grid):
    """The pipeline's former resampler: ``scipy.ndimage.zoom`` on the whole array (the reference)."""
    grid = (grid,) * 3 if isinstance(grid, int) else tuple(grid)
    zoom = [g / s for g, s in zip(grid, v.shape)]
    return ndimage.zoom(np.asarray(v, np.float32), zoom, order=3, mode="nearest", grid_mode=True)


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


def test_prepare_and_segment_use_the_bounded_resampler_on_a_mapped_scan(tmp_path):
    """prepare_case and innerear segment's prepare_scan read an uncompressed NIfTI memory-mapped
    and resample it in slabs; the result equals the former whole-array path (to_canonical copy +
    ndimage.zoom) up to float32 rounding."""
    import nibabel as nib

    from innerear.data import preprocess as pp
    from innerear.io import read_volume
    from innerear.data.resample import _base_mmap, value_range
    from innerear.data.scan import prepare_scan

    v = _smooth_volume((30, 26, 22), seed=2)
    affine = np.array([[0, 0, -0.05, 1.0], [0.04, 0, 0, 2.0], [0, -0.06, 0, 3.0], [0, 0, 0, 1]])  # not RAS order
    path = tmp_path / "a_image.nii"
    nib.save(nib.Nifti1Image(v, affine), path)
    nib.save(nib.Nifti1Image((v > 30000).astype(np.uint8), affine), tmp_path / "a_label.nii")
    image, _, aff = read_volume(path, mmap=True)
    assert _base_mmap(image) is not None  # mapped, not read
    assert value_range(image) == (float(v.min()), float(v.max()))
    canon, canon_aff = pp.to_canonical(v, affine)
    old = resample_image(canon, 16)
    prepared, prepared_aff = prepare_scan(image, aff, 16)
    case = pp.prepare_case(pp.discover_pairs(tmp_path)[0], 16)
    for new in (prepared, case.image):
        assert np.abs(new - old).max() / np.ptp(v) < 1e-5
    np.testing.assert_allclose(prepared_aff, pp.resampled_affine(canon_aff, canon.shape, (16,) * 3), atol=1e-6)
    np.testing.assert_allclose(case.affine, prepared_aff, atol=1e-6)
