"""Imaging: the smooth fields (capsule edge, drift, trabecular texture) and the renderer that
turns a :class:`~innerear.data.phantom.world.World` into image, label, structures and tissue.

Volumes are built in slabs along axis 0, each with a halo for the blur, so that a
paper-sized specimen needs only its output arrays plus a few hundred MB.

Grey values (micro-CT counts, uint16; :class:`~innerear.data.phantom.params.ImagingParams`):
otic capsule 25500-28500 > trabecular bone 19000-23000 > marrow 9000-12500 ~ soft tissue
8000-11000 > embedding medium 6500-9000 > fluid (lumen) 3800-5200, air 1.0-1.25 x the fluid
(darker with ``AnatomyRealism.air_darker``). Only the ordering follows CT physics (air <
fluid ~ water < soft tissue < bone, capsule the densest bone); the counts themselves are
**not from a source** (``README.md`` next to this module has the sourced HU relations used by
the CBCT style of :mod:`.acquisition`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from innerear.data.phantom.params import ImagingParams, SurroundingsParams
from innerear.data.phantom.raster import coarse_nodes, ellipsoid_mask, interp, raster, spheres_mask
from innerear.data.phantom.realism import paint_dark, slab_tissue
from innerear.data.phantom.scene import Grid, Labyrinth
from innerear.data.phantom.specimen import (
    T_AIR,
    T_AQUEDUCT,
    T_BONE,
    T_LUMEN,
    T_LUMEN_AIR,
    T_MEDIUM,
    T_MIDDLE_EAR,
    T_NERVE,
    T_SEPTUM,
    T_VESSEL,
)
from innerear.settings.structures import COCHLEA, VESTIBULE

if TYPE_CHECKING:
    from innerear.data.phantom.acquisition import Scanner
    from innerear.data.phantom.world import World

_COARSE_MM = 0.3  # grid of the smooth fields (distance to the lumen, bias, capsule edge)
_TEXTURE_MM = 0.1  # finest grid of the trabecular texture


@dataclass(frozen=True)
class Fields:
    """Smooth fields on coarse grids (origin, step): capsule margin and drift, texture."""

    coarse: np.ndarray  # float32 (2, ...): capsule margin (mm, > 0 inside the capsule), bias
    cg0: np.ndarray
    cg: float
    texture: np.ndarray  # float32, unit variance
    tg0: np.ndarray
    tg: float


def smooth_fields(surr: SurroundingsParams, imaging: ImagingParams, grid: Grid, lab: Labyrinth, scale: float,
                  index: int, seed: int) -> Fields:
    """Coarse fields (distance to the lumen, capsule edge wobble, bias) and the trabecular texture."""
    rng = np.random.default_rng([int(seed), int(index), 4])
    lo = np.array([a[0] for a in grid.axes])
    hi = np.array([a[-1] for a in grid.axes])
    cg = _COARSE_MM
    cg0 = lo - cg
    n = coarse_nodes(lo, hi, cg)
    gx, gy, gz = (cg0[a] + cg * np.arange(n[a]) for a in range(3))
    # distance to the labyrinth: Euclidean distance transform of its coarse footprint
    foot = ellipsoid_mask(lab.vest, gx, gy, gz)
    ijk = np.rint((lab.lumen.c - cg0) / cg).astype(np.int64)
    ok = ((ijk >= 0) & (ijk < n)).all(1)
    foot[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]] = True
    dist = np.maximum(ndimage.distance_transform_edt(~foot) * cg - 0.35 * scale, 0.0)
    wobble = ndimage.gaussian_filter(rng.standard_normal(tuple(n)), 1.0 / cg, mode="wrap")
    wobble /= max(float(wobble.std()), 1e-9)
    # smooth drift: a random quadratic in normalised coordinates
    xn = [(g - (lo[a] + hi[a]) / 2) / max((hi[a] - lo[a]) / 2, 1e-6) for a, g in enumerate((gx, gy, gz))]
    X, Y, Z = np.meshgrid(*xn, indexing="ij")
    terms = [X, Y, Z, X * X, Y * Y, Z * Z, X * Y, X * Z, Y * Z]
    coef = rng.normal(0.0, 1.0, len(terms))
    poly = sum(c * t for c, t in zip(coef, terms))
    poly -= poly.mean()
    poly /= max(float(np.abs(poly).max()), 1e-9)
    bias = 1.0 + imaging.bias_amp * poly
    # capsule margin (mm, > 0 inside the dense otic capsule; its edge wobbles) and drift
    margin = surr.capsule_mm * scale * (1.0 + 0.25 * wobble) - dist
    coarse = np.stack([margin, bias]).astype(np.float32)
    # trabecular texture: smoothed noise, thresholded into bone and pores later
    tg = max(_TEXTURE_MM, grid.voxel)
    nt = coarse_nodes(lo, hi, tg)
    tex = rng.standard_normal(tuple(nt), dtype=np.float32)
    tex = ndimage.gaussian_filter(tex, surr.pore_mm * scale / tg, mode="wrap")
    tex /= max(float(tex.std()), 1e-9)
    return Fields(coarse, cg0, cg, tex, lo - tg, tg)


# =========================================================================== one slab
def _fill_pockets(st: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """No bone islands inside the lumen: fill tiny enclosed pockets (voxel-scale slivers where
    a tube leaves the vestibule obliquely). Returns (structures, label)."""
    bg, nbg = ndimage.label(~lab)
    if nbg > 1:
        open_ = np.unique(np.concatenate([bg[0].ravel(), bg[-1].ravel(), bg[:, 0].ravel(), bg[:, -1].ravel(),
                                          bg[:, :, 0].ravel(), bg[:, :, -1].ravel()]))
        sizes = np.bincount(bg.ravel())
        pocket = np.zeros(nbg + 1, bool)
        pocket[1:] = sizes[1:] <= 64
        pocket[open_] = False
        if pocket.any():
            fill = pocket[bg]
            st = np.where(fill, ndimage.maximum_filter(st, size=3), st)
            lab = st > 0
    return st, lab


def _slab_structures(world: World, xs, ys, zs, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Structure codes and label of the planes ``a:b``: tubes, vestibule, centreline voxels."""
    laby, levels = world.labyrinth, world.grid.levels
    code = raster(laby.lumen, xs, ys, zs, levels)
    vest = ellipsoid_mask(laby.vest, xs, ys, zs)
    st = np.where(vest, np.int8(VESTIBULE), code)
    sel = slice(np.searchsorted(laby.sk_idx[:, 0], a), np.searchsorted(laby.sk_idx[:, 0], b))
    sk, skc = laby.sk_idx[sel], laby.sk_code[sel]
    if len(sk):
        cur = st[sk[:, 0] - a, sk[:, 1], sk[:, 2]]
        st[sk[:, 0] - a, sk[:, 1], sk[:, 2]] = np.where(cur > 0, cur, skc)
    return _fill_pockets(st, st > 0)


def _slab_tissue(world: World, lab: np.ndarray, xs, ys, zs, cap_margin: np.ndarray) -> np.ndarray:
    """What each voxel is drawn as (see ``TISSUES``); nothing dark touches the labyrinth
    (with anatomy realism: except the structures attached to it, see :mod:`.realism`)."""
    surr, levels, real = world.surroundings, world.grid.levels, world.realism
    near = ndimage.maximum_filter(lab.view(np.uint8), size=3).astype(bool)
    tis = np.zeros(lab.shape, np.uint8)
    if surr.cut is not None:
        n, d = surr.cut
        tis[(n[0] * xs[:, None, None] + n[1] * ys[None, :, None] + n[2] * zs[None, None, :]) > d] = T_MEDIUM
    tis[raster(surr.iac, xs, ys, zs, levels) > 0] = T_NERVE
    if surr.vessels is not None:
        tis[raster(surr.vessels, xs, ys, zs, levels) > 0] = T_VESSEL
    if len(surr.air_r) and (real is None or real.honeycomb is None):
        tis[spheres_mask(surr.air_c, surr.air_r, xs, ys, zs)] = T_AIR
    if real is not None:
        paint_dark(real, tis, cap_margin, xs, ys, zs)
    tis[near & (tis != T_MEDIUM)] = T_BONE  # nothing dark touches the labyrinth
    tis[lab] = T_LUMEN
    return tis


def _slab_image(world: World, st: np.ndarray, lab: np.ndarray, tis: np.ndarray, cap_margin: np.ndarray,
                xs, ys, zs, pv: np.ndarray | None = None) -> np.ndarray:
    """Noise-free grey values of the slab (with its halo), blurred by the PSF (float32)."""
    p, fields = world.params.imaging, world.fields
    i_cap, i_trab, i_marrow, i_lumen = p.i_capsule, p.i_trabecular, p.i_marrow, p.i_lumen
    # bone: dense capsule near the lumen, trabecular bone with pores further out
    tex = interp(fields.texture, fields.tg0, fields.tg, xs, ys, zs)
    wcap = np.clip(cap_margin / 0.5 + 0.5, 0.0, 1.0)
    pore_threshold = world.params.surroundings.pore_threshold
    trab = i_marrow + (i_trab - i_marrow) * 0.5 * (1.0 + np.tanh((tex - pore_threshold) / 0.2))
    img = trab * (1.0 - wcap) + (i_cap * (1.0 + 0.015 * tex)) * wcap
    del tex, trab, wcap
    real = world.realism
    i_air = i_lumen * p.air_factor if real is None or real.i_air is None else real.i_air
    img[tis == T_MEDIUM] = p.i_medium
    img[tis == T_NERVE] = p.i_soft if real is None or real.i_iac is None else real.i_iac
    img[tis == T_VESSEL] = i_lumen * p.vessel_factor
    img[tis == T_AIR] = i_air
    if real is not None:
        img[tis == T_MIDDLE_EAR] = i_air
        aq = tis == T_AQUEDUCT  # fluid canals, partial volume where thinner than a voxel
        img[aq] += (i_lumen - img[aq]) * pv[aq]
    img[lab] = i_lumen
    lam = (raster(world.labyrinth.lamina, xs, ys, zs, world.grid.levels) > 0) & (st == COCHLEA)
    img[lam] += world.labyrinth.lamina_weight * 0.6 * (i_cap - i_lumen)
    if real is not None:
        img[tis == T_SEPTUM] += real.septum_add
        img[tis == T_LUMEN_AIR] = i_air
    return ndimage.gaussian_filter(img.astype(np.float32, copy=False), p.psf_sigma_vox, mode="nearest", truncate=4.0)


def render(world: World, with_tissue: bool, index: int, seed: int, slab_voxels: int,
           scanner: Scanner | None = None):
    """Image (uint16), label, structures, (``with_tissue``) tissue arrays and the clean
    ``(label, structures)`` (None without label noise), built in slabs of about
    ``slab_voxels`` voxels (noise is drawn per slab from ``[seed, index, 5, slab]``). A
    ``scanner`` (an acquisition) applies its artefacts, noise, units and label noise instead."""
    p = world.params.imaging
    X, Y, Z = (int(d) for d in world.grid.dims)
    image = np.empty((X, Y, Z), np.uint16 if scanner is None else scanner.dtype)
    label = np.empty((X, Y, Z), np.uint8)
    struct = np.empty((X, Y, Z), np.uint8)
    tissue = np.empty((X, Y, Z), np.uint8) if with_tissue else None
    noisy = scanner is not None and scanner.label_noise
    clean = (np.empty((X, Y, Z), np.uint8), np.empty((X, Y, Z), np.uint8)) if noisy else None
    halo = max(int(4.0 * p.psf_sigma_vox + 0.5) + 1, 0 if scanner is None else scanner.halo)
    depth = max(4 * halo, slab_voxels // max(Y * Z, 1), 1)
    xs_all, ys, zs = world.grid.axes
    noise_sd = p.noise_frac * (p.i_capsule - p.i_lumen)
    fields = world.fields
    for slab, i0 in enumerate(range(0, X, depth)):
        i1 = min(X, i0 + depth)
        a, b = max(0, i0 - halo), min(X, i1 + halo)
        xs = xs_all[a:b]
        st, lab = _slab_structures(world, xs, ys, zs, a, b)
        cap_margin, bias = interp(fields.coarse, fields.cg0, fields.cg, xs, ys, zs)
        tis = _slab_tissue(world, lab, xs, ys, zs, cap_margin)
        pv = None
        if world.realism is not None:
            tis, pv = slab_tissue(world.realism, tis, lab, st, cap_margin, xs, ys, zs, world.grid.levels, a)
        img = _slab_image(world, st, lab, tis, cap_margin, xs, ys, zs, pv)
        del cap_margin
        c0, c1 = i0 - a, i1 - a
        out = img[c0:c1] * bias[c0:c1]
        if scanner is not None:
            image[i0:i1] = scanner.image_slab(out, i0, i1, xs[c0:c1], ys, zs)
            if noisy:
                clean[0][i0:i1] = lab[c0:c1]
                clean[1][i0:i1] = st[c0:c1]
                sk = world.labyrinth.sk_idx
                sk = sk[np.searchsorted(sk[:, 0], a):np.searchsorted(sk[:, 0], b)] - np.array([a, 0, 0])
                lab, st = scanner.label_slab(lab, st, sk, xs, ys, zs)
        else:
            noise = np.random.default_rng([int(seed), int(index), 5, slab]).standard_normal(out.shape,
                                                                                            dtype=np.float32)
            out += noise * np.float32(noise_sd)
            del noise
            np.clip(out, 0.0, 65535.0, out=out)
            image[i0:i1] = np.rint(out).astype(np.uint16)
        label[i0:i1] = lab[c0:c1]
        struct[i0:i1] = st[c0:c1]
        if tissue is not None:
            tissue[i0:i1] = tis[c0:c1]
    return image, label, struct, tissue, clean
