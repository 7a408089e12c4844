"""Memory-bounded cubic-spline resampling of large scans.

:func:`innerear.data.preprocess.resample_image` calls ``scipy.ndimage.zoom`` on a float copy of the
whole scan; scipy pads it and computes the spline coefficients of the whole padded volume in
float64, so the peak memory is about 16–18 bytes per *source* voxel: some 6 GB for the
smallest scan size the paper gives (618 × 892 × 600) and some 60 GB for a 1500³ one.

:func:`resample_image_bounded` computes the same result in separable 1D passes:

1. the scan is read in slabs along its outermost axis in memory (axis 0 of a C-ordered array,
   axis 2 of a Fortran-ordered one), so that a slab is a contiguous piece of the file; each
   slab is resampled along its two other axes and stored in a float32 intermediate of
   ``n0 × g1 × g2`` voxels (393 MB for 1500 → 256);
2. the intermediate is resampled along the slab axis, in chunks.

A tensor-product B-spline is separable: zoom's prefilter (the 1D recursive filter along each
axis) and its interpolation (a 4-tap cubic B-spline along each axis) are linear operators that
act on different axes, so they commute, and "prefilter + interpolate along axis 0, then along
axis 1, then along axis 2" is the same operator as "prefilter along all axes, then
interpolate". Each pass reproduces zoom's geometry (``grid_mode=True``: voxel edges coincide,
new voxel ``i`` samples old continuous index ``(i + 0.5) * n / g - 0.5``) and its boundary
treatment (``mode="nearest"``: 12 edge voxels of padding before the prefilter, as
``scipy.ndimage.zoom`` does), in float64 within a pass. The only difference is the rounding
of the intermediate to float32 between passes (relative differences around 1e-7 of the
intensity range).

Memory: a ``np.memmap`` opened read-only (or a path to a ``.npy`` file, which is opened so)
is read slab by slab, and the pages of the mapping are released after each slab, so the
resident memory never holds more than one slab of the scan.
"""
from __future__ import annotations

import mmap
import os
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["resample_image_bounded", "resample_axis", "antialias_sigma", "plan_slabs", "value_range",
           "DEFAULT_MAX_BYTES", "ANTIALIAS_MIN_FACTOR"]

NPAD = 12  # scipy.ndimage.zoom pads this many edge voxels before the spline prefilter ("nearest")
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB
#: shrinking an axis by more than this factor low-passes it first when antialiasing is asked for
ANTIALIAS_MIN_FACTOR = 1.5


def _grid(grid: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(grid, (int, np.integer)):
        return (int(grid),) * 3
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3:
        raise ValueError(f"grid must be an int or three ints, got {grid}")
    return grid


def _bspline3_weights(t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cubic B-spline weights of the taps ``floor(x) - 1 .. floor(x) + 2`` for ``t = x - floor(x)``."""
    t2, t3 = t * t, t * t * t
    w0 = (1.0 - t) ** 3 / 6.0
    w1 = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
    w2 = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
    w3 = t3 / 6.0
    return w0, w1, w2, w3


def antialias_sigma(step: float, min_factor: float = ANTIALIAS_MIN_FACTOR) -> float:
    """Gaussian prefilter width (source voxels) for shrinking by ``step`` source voxels per new
    voxel: ``(step - 1) / 2`` (scikit-image's choice) when ``step > min_factor``, else 0."""
    return (step - 1.0) / 2.0 if step > min_factor else 0.0


def resample_axis(x: np.ndarray, axis: int, size: int, out_dtype=np.float64, *, step: float | None = None,
                  start: float | None = None, antialias: bool = False) -> np.ndarray:
    """Resample ``x`` along one axis to ``size`` samples, as ``scipy.ndimage.zoom`` does along
    that axis (cubic B-spline, ``mode="nearest"``, ``grid_mode=True``).

    The other axes are left alone. An axis that already has ``size`` samples is returned
    unchanged (converted to ``out_dtype``). ``step`` and ``start`` (source voxels) place new
    sample ``i`` at source index ``start + i * step`` instead (default: zoom's geometry,
    ``step = n / size``, ``start = step / 2 - 0.5``); samples beyond the source take the edge
    values (``mode="nearest"``). ``antialias`` low-passes the axis first with a Gaussian of
    :func:`antialias_sigma` ``(step)`` source voxels when it shrinks by more than
    :data:`ANTIALIAS_MIN_FACTOR`, so that detail finer than the new voxel is averaged, not aliased.
    """
    x = np.asarray(x)
    axis = axis % x.ndim
    n = x.shape[axis]
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    custom = step is not None or start is not None
    step = float(n / size if step is None else step)
    start = float(0.5 * step - 0.5 if start is None else start)
    sigma = antialias_sigma(step) if antialias else 0.0
    if n == size and (not custom or (step == 1.0 and start == 0.0)) and sigma == 0:
        return x.astype(out_dtype, copy=False)
    # edge-pad NPAD voxels along the axis into a float64 buffer, then prefilter it in place
    padded_shape = list(x.shape)
    padded_shape[axis] = n + 2 * NPAD
    coef = np.empty(padded_shape, np.float64)
    idx = [slice(None)] * x.ndim

    def at(sl):
        idx[axis] = sl
        return tuple(idx)

    coef[at(slice(NPAD, NPAD + n))] = x
    coef[at(slice(0, NPAD))] = x[at(slice(0, 1))]
    coef[at(slice(NPAD + n, None))] = x[at(slice(n - 1, n))]
    if sigma > 0:  # the padding repeats the edge voxels: the same as the filter's own "nearest" mode
        ndimage.gaussian_filter1d(coef, sigma, axis=axis, output=coef, mode="nearest")
    ndimage.spline_filter1d(coef, order=3, axis=axis, output=coef, mode="nearest")
    if custom:  # beyond the padded edge the spline of repeated edge values is the edge value
        pos = np.clip(start + np.arange(size, dtype=np.float64) * step, 2.0 - NPAD, n - 3.0 + NPAD) + NPAD
    else:  # zoom's geometry: new sample i sits at old continuous index (i + 0.5) * n / size - 0.5
        pos = (np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5 + NPAD
    base = np.floor(pos).astype(np.intp)
    t = pos - base
    shape = [1] * x.ndim
    shape[axis] = size
    out = None
    for k, w in enumerate(_bspline3_weights(t)):
        term = np.take(coef, base + (k - 1), axis=axis)
        term *= w.reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    del coef
    return out.astype(out_dtype, copy=False)


# --------------------------------------------------------------------------- reading slabs
def _base_mmap(array: np.ndarray):
    """The read-only ``mmap`` behind ``array`` (a ``np.memmap`` or a view of one), else None.

    Dropping pages is only safe where nothing private can be lost: read-only mappings
    (``mode="r"``), as :func:`innerear.io.read_volume` opens them with ``mmap=True``.
    """
    a = array
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap) and getattr(a, "mode", None) == "r" and getattr(a, "_mmap", None) is not None:
            return a._mmap
        a = a.base
    return None


class _Source:
    """Read slabs of a 3D array along one axis, releasing a read-only mapping's pages afterwards."""

    def __init__(self, array) -> None:
        if isinstance(array, (str, os.PathLike)):
            array = np.load(os.fspath(array), mmap_mode="r")
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        if array.ndim != 3:
            raise ValueError(f"expected a 3D volume, got shape {array.shape}")
        self.array = array
        mm = _base_mmap(array)
        self._mmap = mm if (mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")) else None
        # slab along the outermost axis in memory, so a slab is one contiguous piece of the file
        strides = [abs(s) if n > 1 else 0 for s, n in zip(array.strides, array.shape)]
        self.axis = int(np.argmax(strides))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def slab(self, start: int, stop: int) -> np.ndarray:
        idx = [slice(None)] * 3
        idx[self.axis] = slice(start, stop)
        out = np.array(self.array[tuple(idx)])  # a private in-memory copy of the slab
        self.release()
        return out

    def release(self) -> None:
        if self._mmap is not None:
            try:
                self._mmap.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # pragma: no cover - platform without madvise
                self._mmap = None


def value_range(array, slab_bytes: int = 64 << 20) -> tuple[float, float]:
    """``(min, max)`` of a 3D array read slab by slab (a memory-mapped scan stays mostly on disk)."""
    src = _Source(array)
    n = src.shape[src.axis]
    per = max(1, int(np.prod(src.shape)) // max(1, n) * src.array.dtype.itemsize)
    step = max(1, slab_bytes // per)
    lo, hi = np.inf, -np.inf
    for start in range(0, n, step):
        x = src.slab(start, min(n, start + step))
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return lo, hi


def plan_slabs(shape: Sequence[int], grid: Sequence[int], axis: int, itemsize: int,
               max_bytes: int) -> tuple[int, int, int]:
    """Slab thickness for the first passes, chunk size for the last one, and the estimated peak
    (bytes of arrays allocated by :func:`resample_image_bounded`)."""
    shape = [int(s) for s in shape]
    grid = [int(g) for g in grid]
    others = [a for a in range(3) if a != axis]
    inter = shape[axis] * grid[others[0]] * grid[others[1]] * 4
    out = int(np.prod(grid)) * 4
    fixed = inter + out
    # first passes, per plane of the slab: the raw slab, a float64 copy, the padded float64
    # coefficients along the first axis, its four taps and their sum (at the smaller size)
    a, b = shape[others[0]], shape[others[1]]
    per_plane = a * b * (itemsize + 8) + a * (b + 2 * NPAD) * 8 + 3 * a * grid[others[1]] * 8 \
        + (a + 2 * NPAD) * grid[others[1]] * 8 + 2 * grid[others[0]] * grid[others[1]] * 8
    # last pass, per line of the chunk: padded coefficients, the taps, the float32 result
    per_line = (shape[axis] + 2 * NPAD) * grid[others[1]] * 8 + 3 * grid[axis] * grid[others[1]] * 8
    budget = max_bytes - fixed
    if budget < max(per_plane, per_line):
        raise ValueError(
            f"max_bytes={max_bytes / 2**30:.2f} GiB is too small for {tuple(shape)} -> {tuple(grid)}: "
            f"the intermediate and output arrays alone need {fixed / 2**30:.2f} GiB and one slab "
            f"{max(per_plane, per_line) / 2**30:.2f} GiB more")
    slab = int(max(1, min(shape[axis], budget // per_plane)))
    chunk = int(max(1, min(grid[others[0]], budget // per_line)))
    peak = fixed + max(slab * per_plane, chunk * per_line)
    return slab, chunk, peak


def resample_image_bounded(array, grid: int | Sequence[int], max_bytes: int = DEFAULT_MAX_BYTES,
                           order: int = 3, *, steps: Sequence[float] | None = None,
                           starts: Sequence[float] | None = None, antialias: bool = False) -> np.ndarray:
    """Resample a 3D image to ``grid`` voxels with a cubic B-spline within ``max_bytes`` of memory.

    Same result as :func:`innerear.data.preprocess.resample_image` (``scipy.ndimage.zoom``,
    ``order=3``, ``mode="nearest"``, ``grid_mode=True``) up to float32 rounding, for any
    input: an array, a ``np.memmap`` or the path of a ``.npy`` file (opened memory-mapped).
    ``max_bytes`` bounds the arrays allocated here (intermediate, output and one slab's
    working copies); the process also holds the interpreter and whatever the caller holds.
    Returns a float32 array of shape ``grid``.

    ``steps`` and ``starts`` (per axis, source voxels; see :func:`resample_axis`) sample
    another grid than zoom's, e.g. a fixed voxel size with a margin beyond the scan (edge
    values there); ``antialias`` low-passes each axis shrunk by more than
    :data:`ANTIALIAS_MIN_FACTOR` (a Gaussian, see :func:`antialias_sigma`). Both default off.
    """
    if order != 3:
        raise ValueError("only the cubic B-spline (order=3) is implemented")
    src = _Source(array)
    grid = _grid(grid)
    shape = src.shape
    if any(g < 1 for g in grid):
        raise ValueError(f"grid must be positive, got {grid}")
    geometry = [dict(step=None if steps is None else float(steps[a]),
                     start=None if starts is None else float(starts[a]), antialias=antialias) for a in range(3)]
    axis = src.axis
    others = [a for a in range(3) if a != axis]
    slab, chunk, _ = plan_slabs(shape, grid, axis, src.array.dtype.itemsize, int(max_bytes))

    inter_shape = list(grid)
    inter_shape[axis] = shape[axis]
    inter = np.empty(inter_shape, np.float32)
    # the inner axis (smaller stride) first: it shrinks the slab before the strided pass
    inner = sorted(others, key=lambda a: abs(src.array.strides[a]))
    for start in range(0, shape[axis], slab):
        stop = min(shape[axis], start + slab)
        x = src.slab(start, stop)
        for a in inner:
            x = resample_axis(x, a, grid[a], **geometry[a])
        idx = [slice(None)] * 3
        idx[axis] = slice(start, stop)
        inter[tuple(idx)] = x
        del x
    src.release()

    out = np.empty(grid, np.float32)
    along = others[0]
    for start in range(0, grid[along], chunk):
        idx = [slice(None)] * 3
        idx[along] = slice(start, min(grid[along], start + chunk))
        out[tuple(idx)] = resample_axis(inter[tuple(idx)], axis, grid[axis], out_dtype=np.float32,
                                      **geometry[axis])
    return out
