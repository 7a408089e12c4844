"""Scanner artefacts as fields on a slab of the voxel grid (world mm): correlated noise, ring
artefacts, cupping (beam hardening), dark streaks between dense structures, motion ghosts and
line streaks; and label noise (boundary jitter).

Every function is pure: the random patterns are drawn beforehand (see
:class:`~innerear.data.phantom.acquisition.Scanner`) or, for noise, from per-plane streams, so a
volume built slab by slab equals the volume built at once. The scanner's rotation axis is
the z axis (axis 2): the axial plane is (x, y), the slabs run along x (axis 0).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, special


def plane_noise(key: list[int], i0: int, i1: int, ny: int, nz: int) -> np.ndarray:
    """White standard-normal noise of planes ``i0:i1`` (each plane from its own stream
    ``key + [plane + 1]``, so any slab of the volume gets the same numbers)."""
    out = np.empty((i1 - i0, ny, nz), np.float32)
    for k, i in enumerate(range(i0, i1)):
        out[k] = np.random.default_rng([*key, i + 1]).standard_normal((ny, nz), dtype=np.float32)
    return out


def correlated_noise(white: np.ndarray, share: float, length_vox: float) -> np.ndarray:
    """Unit-variance noise: ``sqrt(1 - share^2)`` white plus ``share`` Gaussian-filtered
    (correlation length ``length_vox``, normalised to unit variance) noise."""
    if share <= 0.0:
        return white
    smooth = ndimage.gaussian_filter(white, length_vox, mode="nearest", truncate=4.0)
    smooth *= np.float32((4.0 * math.pi * length_vox**2) ** 0.75)  # sd of filtered unit white noise
    return np.float32(math.sqrt(max(0.0, 1.0 - share**2))) * white + np.float32(share) * smooth


def axial_radius(xs: np.ndarray, ys: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Distance (mm) from the rotation axis in the axial plane, shape (len(xs), len(ys))."""
    return np.hypot((xs - centre[0])[:, None], (ys - centre[1])[None, :]).astype(np.float32)


def ring_profile(r: np.ndarray, radii: np.ndarray, amps: np.ndarray, width_mm: float) -> np.ndarray:
    """Rings: a sum of narrow Gaussian ridges (signed amplitudes) at ``radii`` (mm)."""
    out = np.zeros(r.shape, np.float32)
    for rk, ak in zip(radii, amps):
        near = np.abs(r - rk) < 4.0 * width_mm
        if near.any():
            out[near] += np.float32(ak) * np.exp(-0.5 * ((r[near] - rk) / width_mm) ** 2).astype(np.float32)
    return out


def cupping_factor(r: np.ndarray, radius_mm: float, depth: float) -> np.ndarray:
    """Beam hardening: a multiplicative drop ``depth`` at the axis, 0 at ``radius_mm``."""
    rr = np.minimum(r / radius_mm, 1.0)
    return (1.0 - depth * (1.0 - rr * rr)).astype(np.float32)


def line_band(xs: np.ndarray, ys: np.ndarray, p0: np.ndarray, direction: np.ndarray, width_mm: float,
              half_length_mm: float | None = None) -> np.ndarray:
    """A thin band along the line through ``p0`` (x, y) with unit ``direction`` in the axial
    plane: Gaussian across it, optionally tapered (Gaussian) along it. Shape (len(xs), len(ys))."""
    dx = (xs - p0[0])[:, None]
    dy = (ys - p0[1])[None, :]
    across = dx * direction[1] - dy * direction[0]
    band = np.exp(-0.5 * (across / width_mm) ** 2)
    if half_length_mm is not None:
        along = dx * direction[0] + dy * direction[1]
        band = band * np.exp(-0.5 * (along / half_length_mm) ** 2)
    return band.astype(np.float32)


def ghost(img: np.ndarray, axis: int, shift_vox: float, weight: float) -> np.ndarray:
    """Motion: ``(1 - weight) img + weight img`` shifted by ``shift_vox`` (linear interpolation
    of two integer shifts, edge values repeated) along ``axis`` (1 or 2)."""
    if weight <= 0.0 or shift_vox == 0.0:
        return img
    n = img.shape[axis]
    k = int(math.floor(shift_vox))
    f = np.float32(shift_vox - k)
    idx0 = np.clip(np.arange(n) - k, 0, n - 1)
    idx1 = np.clip(np.arange(n) - k - 1, 0, n - 1)
    shifted = (1 - f) * np.take(img, idx0, axis=axis) + f * np.take(img, idx1, axis=axis)
    return np.float32(1.0 - weight) * img + np.float32(weight) * shifted


def jitter_label(lab: np.ndarray, disp_vox: np.ndarray, sigma_vox: float = 1.0) -> np.ndarray:
    """Boundary jitter: move the label's boundary outwards by ``disp_vox`` voxels (negative:
    inwards), through the smoothed indicator ``G * lab`` ~ ``Phi(d / sigma)`` of the signed
    distance ``d``: a voxel is kept where ``G * lab > Phi(-disp / sigma)``."""
    smooth = ndimage.gaussian_filter(lab.astype(np.float32), sigma_vox, mode="nearest", truncate=4.0)
    d = np.clip(disp_vox, -2.0 * sigma_vox, 2.0 * sigma_vox)  # at most ~2 voxels
    return smooth > special.ndtr(-d / sigma_vox).astype(np.float32)
