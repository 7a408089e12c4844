"""Acquisition realism: how a specimen is scanned and stored (issue 13, part B).

An :class:`Acquisition` is a *concrete* acquisition: voxel size and field of view (centred
on the labyrinth or cropped around the cochlea), a style (``"microct"``: a small PSF of
0.8-1.2 voxel, counts, high SNR; ``"cbct"``: clinical cone-beam CT, a 0.3-0.4 mm FWHM PSF,
Hounsfield-like grey values, low soft-tissue/fluid contrast, more noise), the units the
image is stored in (``"uint16"`` counts, ``"hu"`` int16 Hounsfield units, ``"float"`` float32
with an arbitrary scale and offset), artefact strengths (0 off .. 1 strong) and label noise.
:func:`draw_acquisition` draws one from ranges.

``generate_specimen(..., acquisition=acq)`` uses it; everything random that it adds (the
field of view's offset, the style's grey values, the artefact patterns, the label jitter)
comes from sub-streams of ``[seed, index, 3]`` tagged ``0xAC9`` (the plain ``[seed, index, 3]``
stream is the surroundings'), so the draws of a specimen without an acquisition are untouched.

Internal grey values: ``"microct"`` renders the drawn counts; ``"cbct"`` renders HU + 1000
(air 0, water 1000). :class:`Scanner` applies the artefacts slab by slab and converts to
the stored units. CBCT values (HU): air ~-1000 and water 0 by the scale's definition; fluid
0-30 (**assumed** water-like); soft tissue +40-80 (soft tissues +20-65 HU in CT tables);
marrow -80-+120 and medium +20-60 (**not from a source**); trabecular bone +800-1300;
otic capsule +1500-2500 (normal capsule above the ~2045-2187 HU otosclerosis cut-offs of
10.1007/s00330-005-0128-7, 0.5 mm CT). Cone-beam grey values are not calibrated HU; see
``README.md`` next to this module for the sources. With the ~2 mm cochlear lumen (issue 21),
a 0.125 mm CBCT shows the scalae as one dark spiral (the 0.05-0.12 mm septum is gone in the
0.3-0.4 mm PSF) while 16-25 um micro-CT resolves the septum and spiral lamina.

``"synth"`` (training only, in the spirit of SynthSeg, Billot et al. 2023): every tissue's
grey value drawn independently from a wide range (:func:`_synth_imaging`), so that a network
cannot rely on any one contrast; a share of draws keeps the CT ordering (air < fluid < otic
capsule), the rest is free (bright lumen included).

Clinical overrides (the harder benchmark of issue 22 and its ablation): ``psf_fwhm_mm`` (the
effective resolution), ``cnr`` (contrast-to-noise: capsule minus fluid over the noise's s.d.),
``lumen_hu`` and ``capsule_hu`` (the fluid's and the otic capsule's grey values: a real
clinical CBCT cochlea read ~220 HU inside the lumen and ~1,000-1,500 HU in the capsule),
``side`` (the ear drawn, whatever the specimen's own draw) and ``pose_deg`` (the rotation of
the labyrinth about its drawn axis, up to any angle).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Sequence

import numpy as np

from innerear.data.phantom import artefacts as art
from innerear.data.phantom.params import ImagingParams, SpecimenParams
from innerear.data.phantom.raster import coarse_nodes, interp
from innerear.data.phantom.scene import View

STYLES = ("microct", "cbct", "synth")
UNITS = ("uint16", "hu", "float")
CENTRES = ("labyrinth", "cochlea")
ARTEFACTS = ("correlated_noise", "rings", "cupping", "streaks", "motion")
_TAG = 0xAC9  # sub-streams of [seed, index, 3]: [seed, index, 3, _TAG, purpose, ...]
_DRAW, _NOISE, _LABEL = 1, 2, 3


@dataclass(frozen=True)
class Acquisition:
    """One concrete acquisition (see the module docstring). Artefact strengths are 0..1."""

    voxel_mm: float = 0.1
    fov_mm: float | tuple[float, float, float] = 15.0
    centre: str = "labyrinth"
    style: str = "microct"
    units: str = "uint16"
    correlated_noise: float = 0.0
    rings: float = 0.0
    cupping: float = 0.0
    streaks: float = 0.0  # dark beam-hardening streaks between dense structures
    motion: float = 0.0  # a ghost (double contour) along one axis and random line streaks
    label_noise_vox: float = 0.0  # RMS boundary displacement of the label (voxels)
    misregistration_vox: float = 0.0  # a shift of the label (voxels; 0 = none)
    float_scale: float = 1.0  # units "float": value = internal * scale + offset
    float_offset: float = 0.0
    psf_fwhm_mm: float | None = None  # effective resolution (None: the style's own draw)
    cnr: float | None = None  # (capsule - fluid) / noise s.d. (None: the style's own draw)
    lumen_hu: float | None = None  # fluid grey value, HU (cbct style only; None: 0-30 HU)
    capsule_hu: float | None = None  # otic capsule grey value, HU (cbct style only; None: 1500-2500 HU)
    side: str | None = None  # "left" / "right" (None: the specimen's own draw)
    pose_deg: float | None = None  # rotation about the pose axis (None: the specimen's 3-20 degrees)

    def __post_init__(self) -> None:
        if not 0.016 - 1e-9 <= float(self.voxel_mm) <= 0.3 + 1e-9:
            raise ValueError(f"acquisition voxel_mm must be in [0.016, 0.3] mm, got {self.voxel_mm!r}")
        fov = np.broadcast_to(np.asarray(self.fov_mm, float), (3,))
        if not ((fov >= 8.0 - 1e-9) & (fov <= 30.0 + 1e-9)).all():
            raise ValueError(f"acquisition fov_mm must be in [8, 30] mm per axis, got {self.fov_mm!r}")
        for name, allowed in (("centre", CENTRES), ("style", STYLES), ("units", UNITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"acquisition {name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ARTEFACTS:
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"acquisition {name} strength must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("label_noise_vox", "misregistration_vox"):
            if not 0.0 <= float(getattr(self, name)) <= 5.0:
                raise ValueError(f"acquisition {name} must be in [0, 5] voxels, got {getattr(self, name)!r}")
        if not float(self.float_scale) > 0.0:
            raise ValueError(f"acquisition float_scale must be > 0, got {self.float_scale!r}")
        if self.psf_fwhm_mm is not None and not 0.0 < float(self.psf_fwhm_mm) <= 2.0:
            raise ValueError(f"acquisition psf_fwhm_mm must be in (0, 2] mm, got {self.psf_fwhm_mm!r}")
        if self.cnr is not None and not float(self.cnr) > 0.0:
            raise ValueError(f"acquisition cnr must be > 0, got {self.cnr!r}")
        if self.lumen_hu is not None and (self.style != "cbct" or not -1000.0 <= float(self.lumen_hu) <= 1500.0):
            raise ValueError(f"acquisition lumen_hu needs style 'cbct' and -1000..1500 HU, got {self.lumen_hu!r}")
        if self.capsule_hu is not None and (self.style != "cbct" or not 0.0 <= float(self.capsule_hu) <= 4000.0):
            raise ValueError(f"acquisition capsule_hu needs style 'cbct' and 0..4000 HU, got {self.capsule_hu!r}")
        if self.side not in (None, "left", "right"):
            raise ValueError(f"acquisition side must be 'left', 'right' or None, got {self.side!r}")

    @property
    def fov3(self) -> tuple[float, float, float]:
        """The field of view per axis (mm)."""
        return tuple(float(v) for v in np.broadcast_to(np.asarray(self.fov_mm, float), (3,)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record."""
        d = asdict(self)
        d["fov_mm"] = list(self.fov3)
        return d


def _pick(rng: np.random.Generator, choice: str | Sequence[str]) -> str:
    return choice if isinstance(choice, str) else str(choice[int(rng.integers(0, len(choice)))])


def _range(rng: np.random.Generator, r: float | tuple[float, float], log: bool = False) -> float:
    if isinstance(r, (int, float)):
        return float(r)
    lo, hi = float(r[0]), float(r[1])
    if log and lo > 0:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def draw_acquisition(rng: np.random.Generator, *, voxel_mm: float | tuple[float, float] = (0.016, 0.3),
                     fov_mm: float | tuple[float, float] = (8.0, 30.0),
                     centre: str | Sequence[str] = CENTRES, style: str | Sequence[str] = STYLES,
                     units: str | Sequence[str] = UNITS, artefacts: float | tuple[float, float] = (0.0, 1.0),
                     label_noise: float | tuple[float, float] = (0.0, 1.5),
                     misregistration_share: float = 0.2) -> Acquisition:
    """Draw one acquisition: voxel size log-uniform in ``voxel_mm``, one field of view
    uniform in ``fov_mm`` (the same on every axis), centre / style / units uniformly among
    the given ones, each artefact's strength uniform in ``artefacts``, label jitter uniform
    in ``label_noise`` voxels, and a 1-2 voxel misregistration with probability
    ``misregistration_share``. A number instead of a range fixes the value."""
    acq_voxel = _range(rng, voxel_mm, log=True)
    acq_fov = _range(rng, fov_mm)
    kw = dict(voxel_mm=acq_voxel, fov_mm=acq_fov, centre=_pick(rng, centre), style=_pick(rng, style),
              units=_pick(rng, units))
    for name in ARTEFACTS:
        kw[name] = _range(rng, artefacts)
    kw["label_noise_vox"] = _range(rng, label_noise)
    mis = rng.random() < misregistration_share
    shift = rng.uniform(1.0, 2.0)
    kw["misregistration_vox"] = shift if mis else 0.0
    kw["float_scale"] = float(math.exp(rng.uniform(math.log(1e-3), math.log(10.0))))
    kw["float_offset"] = float(rng.uniform(-1000.0, 1000.0))
    return Acquisition(**kw)


# ------------------------------------------------------------------ the specimen's parameters
def _cbct_imaging(imaging: ImagingParams, voxel_mm: float, rng: np.random.Generator) -> ImagingParams:
    """Clinical cone-beam CT: PSF 0.3-0.4 mm FWHM, grey values in HU + 1000, more noise."""
    u = rng.uniform
    lumen = 1000.0 + u(0.0, 30.0)
    values = dict(
        psf_sigma_vox=u(0.3, 0.4) / (2.0 * math.sqrt(2.0 * math.log(2.0))) / voxel_mm,
        noise_frac=u(0.02, 0.045),  # of capsule - fluid: ~40-100 HU
        i_capsule=1000.0 + u(1500.0, 2500.0),
        i_trabecular=1000.0 + u(800.0, 1300.0),  # bone between the pores (mixed: ~300-900)
        i_marrow=1000.0 + u(-80.0, 120.0),
        i_lumen=lumen,
        air_factor=u(0.0, 0.03),  # HU ~ -1000
        vessel_factor=(1000.0 + u(30.0, 60.0)) / lumen,
        i_soft=1000.0 + u(40.0, 80.0),
        i_medium=1000.0 + u(20.0, 60.0),
    )
    names = {f.name for f in fields(ImagingParams)}
    return replace(imaging, **{k: v for k, v in values.items() if k in names})


def _synth_imaging(imaging: ImagingParams, voxel_mm: float, rng: np.random.Generator) -> ImagingParams:
    """SynthSeg-style grey values: each tissue's value independent, in internal units 0-3000.

    Two draws in three keep the CT ordering that every real CT scan has (air darkest, the
    otic capsule brighter than the fluid by at least 300) with every other tissue anywhere;
    the rest draw the fluid and capsule freely too (at least 300 apart, either way round).
    Contrast-to-noise 2.5-50 (log-uniform), PSF 0.8-4 voxels FWHM, drift up to 30 %.
    """
    u = rng.uniform
    if rng.random() < 2.0 / 3.0:
        lumen = u(150.0, 2200.0)
        capsule = u(lumen + 300.0, 3000.0)
        air = u(0.0, 0.6) * lumen
    else:
        lumen, capsule = u(0.0, 3000.0, 2)
        if abs(capsule - lumen) < 300.0:
            capsule = lumen + 300.0 if lumen < 2700.0 else lumen - 300.0
        air = u(0.0, 3000.0)
    fwhm_vox = math.exp(u(math.log(0.8), math.log(4.0)))
    values = dict(
        psf_sigma_vox=fwhm_vox / (2.0 * math.sqrt(2.0 * math.log(2.0))),
        noise_frac=1.0 / math.exp(u(math.log(2.5), math.log(50.0))),
        bias_amp=u(0.0, 0.3),
        i_capsule=capsule, i_trabecular=u(0.0, 3000.0), i_marrow=u(0.0, 3000.0), i_lumen=lumen,
        air_factor=air / max(lumen, 1.0), vessel_factor=u(0.0, 3000.0) / max(lumen, 1.0),
        i_soft=u(0.0, 3000.0), i_medium=u(0.0, 3000.0),
    )
    names = {f.name for f in fields(ImagingParams)}
    return replace(imaging, **{k: v for k, v in values.items() if k in names})


def _clinical_overrides(imaging: ImagingParams, acq: Acquisition) -> ImagingParams:
    """The acquisition's fixed effective resolution, contrast-to-noise and fluid value."""
    changes: dict[str, float] = {}
    if acq.lumen_hu is not None:  # cbct internal units are HU + 1000
        changes["i_lumen"] = 1000.0 + float(acq.lumen_hu)
        changes["vessel_factor"] = imaging.vessel_factor * imaging.i_lumen / changes["i_lumen"]
        changes["air_factor"] = imaging.air_factor * imaging.i_lumen / changes["i_lumen"]
    if acq.capsule_hu is not None:  # trabecular bone keeps its share of the capsule's density
        changes["i_capsule"] = 1000.0 + float(acq.capsule_hu)
        changes["i_trabecular"] = 1000.0 + (imaging.i_trabecular - 1000.0) * float(acq.capsule_hu) / max(
            imaging.i_capsule - 1000.0, 1.0)
    if acq.psf_fwhm_mm is not None:
        changes["psf_sigma_vox"] = float(acq.psf_fwhm_mm) / (2.0 * math.sqrt(2.0 * math.log(2.0))) / float(acq.voxel_mm)
    if acq.cnr is not None:
        changes["noise_frac"] = 1.0 / float(acq.cnr)
    return replace(imaging, **changes) if changes else imaging


def acquisition_params(p: SpecimenParams, acq: Acquisition, index: int, seed: int
                       ) -> tuple[SpecimenParams, View, np.random.Generator]:
    """The specimen's parameters as this acquisition sees them (voxel size, style), its field
    of view, and the generator of the acquisition's remaining draws."""
    rng = np.random.default_rng([int(seed), int(index), 3, _TAG, _DRAW])
    offset = tuple(float(v) for v in rng.uniform(-1.0, 1.0, 3))
    imaging = p.imaging
    if acq.style == "cbct":
        imaging = _cbct_imaging(imaging, float(acq.voxel_mm), rng)
    elif acq.style == "synth":
        imaging = _synth_imaging(imaging, float(acq.voxel_mm), rng)
    imaging = _clinical_overrides(imaging, acq)
    changes: dict[str, Any] = {}
    if acq.side is not None:
        changes["side"] = acq.side
    if acq.pose_deg is not None:
        changes["pose"] = replace(p.pose, pose_deg=float(acq.pose_deg))
    p2 = replace(p, voxel_mm=float(acq.voxel_mm), imaging=imaging, **changes)
    return p2, View(float(acq.voxel_mm), acq.fov3, acq.centre, offset), rng


# ------------------------------------------------------------------ the scanner
@dataclass(frozen=True)
class Scanner:
    """An acquisition made concrete for one specimen: the drawn artefact patterns and the
    units conversion, applied slab by slab by :func:`~innerear.data.phantom.imaging.render`."""

    acq: Acquisition
    key: list[int]  # [seed, index, 3, _TAG]
    voxel: float
    dims: tuple[int, int, int]
    contrast: float  # capsule - fluid (internal units)
    noise_sd: float
    noise_length_vox: float
    axis_centre: tuple[float, float]  # rotation axis (x, y) in mm
    radius_mm: float  # object radius for cupping / noise growth
    ring_radii: np.ndarray
    ring_amps: np.ndarray  # internal units
    ring_width_mm: float
    streak_lines: list[tuple[np.ndarray, np.ndarray, float, float, float, float, float]]
    ghost_axis: int
    ghost_shift_vox: float
    dtype: np.dtype
    to_units: tuple[float, float]  # stored = internal * a + b
    clip: tuple[float, float] | None
    jitter: tuple[np.ndarray, np.ndarray, float] | None  # coarse displacement field (vox), origin, step
    shift: tuple[int, int, int]  # misregistration (voxels)
    info: dict

    @property
    def halo(self) -> int:
        """Planes of halo the label jitter needs."""
        return 8 if self.jitter is not None else 0

    @property
    def label_noise(self) -> bool:
        return self.jitter is not None or any(self.shift)

    def image_slab(self, img: np.ndarray, i0: int, i1: int, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray
                   ) -> np.ndarray:
        """Artefacts, noise and units for planes ``i0:i1`` (``img``: their noise-free image
        in internal units; ``xs``: their coordinates)."""
        a = self.acq
        img = art.ghost(img, self.ghost_axis, self.ghost_shift_vox, 0.3 * a.motion)
        r = art.axial_radius(xs, ys, self.axis_centre)
        for p0, d, width, half, amp, z0, z1 in self.streak_lines:
            band = art.line_band(xs, ys, p0, d, width, half if half > 0 else None)
            zw = ((zs >= z0) & (zs <= z1)).astype(np.float32)
            img += (np.float32(amp) * band)[:, :, None] * zw[None, None, :]
        if a.cupping > 0:
            img *= art.cupping_factor(r, self.radius_mm, 0.2 * a.cupping)[:, :, None]
        if a.rings > 0:
            img += art.ring_profile(r, self.ring_radii, self.ring_amps, self.ring_width_mm)[:, :, None]
        # noise: white + correlated (each plane from its own stream), stronger towards the axis
        h = int(math.ceil(4.0 * self.noise_length_vox)) + 1 if a.correlated_noise > 0 else 0
        lo, hi = max(0, i0 - h), min(self.dims[0], i1 + h)
        white = art.plane_noise(self.key + [_NOISE], lo, hi, len(ys), len(zs))
        noise = art.correlated_noise(white, a.correlated_noise, self.noise_length_vox)[i0 - lo: i1 - lo]
        del white
        grow = 1.0 + 0.6 * a.correlated_noise * (1.0 - np.minimum(r / self.radius_mm, 1.0) ** 2)
        img += noise * (np.float32(self.noise_sd) * grow.astype(np.float32))[:, :, None]
        del noise
        ka, kb = self.to_units
        out = img * np.float32(ka) + np.float32(kb)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
            out = np.rint(out)
        return out.astype(self.dtype)

    def label_slab(self, lab: np.ndarray, st: np.ndarray, sk: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                   zs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boundary jitter of a slab's label (with halo; ``sk``: its centreline voxels, kept):
        (noisy label, noisy structures)."""
        if self.jitter is None or not lab.any():
            return lab, st
        # only the label's bounding box (+ 8 voxels: the filters' reach) can change
        nz = [np.flatnonzero(lab.any(axis=tuple(k for k in range(3) if k != a))) for a in range(3)]
        box = tuple(slice(max(0, int(i[0]) - 8), int(i[-1]) + 9) for i in nz)
        field, g0, gs = self.jitter
        disp = interp(field, g0, gs, xs[box[0]], ys[box[1]], zs[box[2]])
        noisy = art.jitter_label(lab[box], disp)
        if len(sk):
            lo = np.array([b.start for b in box])
            hi = np.array([b.stop for b in box])
            k = sk[((sk >= lo) & (sk < hi)).all(1)] - lo
            noisy[k[:, 0], k[:, 1], k[:, 2]] = True
        from scipy import ndimage

        sub = st[box]
        grown = ndimage.maximum_filter(sub, size=7)
        st2 = np.zeros_like(st)
        st2[box] = np.where(noisy, np.where(sub > 0, sub, grown), 0)
        return st2 > 0, st2


def _shift_array(a: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """``a`` moved by ``shift`` voxels (zeros come in)."""
    out = np.zeros_like(a)
    src, dst = [], []
    for s, n in zip(shift, a.shape):
        if s >= 0:
            src.append(slice(0, n - s))
            dst.append(slice(s, n))
        else:
            src.append(slice(-s, n))
            dst.append(slice(0, n + s))
    out[tuple(dst)] = a[tuple(src)]
    return out


def misregister(label: np.ndarray, struct: np.ndarray, shift: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Label and structures shifted by ``shift`` voxels (the occasional misregistration)."""
    if not any(shift):
        return label, struct
    return _shift_array(label, shift), _shift_array(struct, shift)


def _units(acq: Acquisition, imaging: ImagingParams, rng: np.random.Generator
           ) -> tuple[np.dtype, tuple[float, float], tuple[float, float] | None, dict]:
    """dtype, linear map internal -> stored, clipping range and a record of the calibration."""
    if acq.units == "float":
        return np.dtype(np.float32), (acq.float_scale, acq.float_offset), None, {}
    if acq.style in ("cbct", "synth"):  # internal = HU + 1000 (synth: arbitrary, stored alike)
        if acq.units == "hu":
            return np.dtype(np.int16), (1.0, -1000.0), (-1024.0, 32767.0), {}
        return np.dtype(np.uint16), (1.0, 24.0), (0.0, 65535.0), {}  # HU + 1024, as scanners store it
    if acq.units == "uint16":
        return np.dtype(np.uint16), (1.0, 0.0), (0.0, 65535.0), {}
    # micro-CT counts calibrated to HU: fluid ~ water, capsule 1500-2500 HU
    hu_fluid, hu_capsule = rng.uniform(0.0, 30.0), rng.uniform(1500.0, 2500.0)
    k = (hu_capsule - hu_fluid) / (imaging.i_capsule - imaging.i_lumen)
    return (np.dtype(np.int16), (k, hu_fluid - k * imaging.i_lumen), (-1024.0, 32767.0),
            {"hu_fluid": hu_fluid, "hu_capsule": hu_capsule})


def _streak_lines(acq: Acquisition, world, contrast: float, rng: np.random.Generator) -> list:
    """Dark streaks between dense structures (pairs of points on the otic capsule, in the
    same axial range) and (motion) random bright/dark line streaks across the field of view."""
    grid = world.grid
    lo = np.array([ax[0] for ax in grid.axes])
    hi = np.array([ax[-1] for ax in grid.axes])
    lines = []
    if acq.streaks > 0:
        pts = world.labyrinth.lumen.c
        inside = ((pts >= lo) & (pts <= hi)).all(1)
        pts = pts[inside] if inside.sum() >= 2 else pts
        for _ in range(1 + int(round(3 * acq.streaks))):
            a = pts[int(rng.integers(0, len(pts)))]
            d2 = np.hypot(*(pts[:, :2] - a[:2]).T)
            far = np.nonzero((d2 > 2.5) & (np.abs(pts[:, 2] - a[2]) < 1.5))[0]
            if not len(far):
                continue
            b = pts[int(far[rng.integers(0, len(far))])]
            d = (b[:2] - a[:2]) / np.linalg.norm(b[:2] - a[:2])
            zc, zh = 0.5 * (a[2] + b[2]), 0.5 + 0.5 * abs(a[2] - b[2])
            lines.append((0.5 * (a[:2] + b[:2]), d, max(1.2 * grid.voxel, 0.12),
                          0.5 * float(np.linalg.norm(b[:2] - a[:2])) + 1.0,
                          -0.12 * acq.streaks * contrast, zc - zh, zc + zh))
    if acq.motion > 0:
        for _ in range(int(round(6 * acq.motion))):
            p0 = lo[:2] + rng.random(2) * (hi[:2] - lo[:2])
            ang = rng.uniform(0.0, math.pi)
            z0 = rng.uniform(lo[2], hi[2])
            z1 = min(hi[2], z0 + rng.uniform(0.2, 1.0) * (hi[2] - lo[2]))
            lines.append((p0, np.array([math.cos(ang), math.sin(ang)]), 0.7 * grid.voxel, 0.0,
                          float(rng.choice([-1.0, 1.0])) * 0.06 * acq.motion * contrast, z0, z1))
    return lines


def prepare_scanner(acq: Acquisition, world, index: int, seed: int, rng: np.random.Generator) -> Scanner:
    """Draw the acquisition's patterns for this specimen (from ``rng``, the stream of
    :func:`acquisition_params`, and its jitter sub-stream)."""
    grid, imaging = world.grid, world.params.imaging
    voxel = float(grid.voxel)
    dims = tuple(int(d) for d in grid.dims)
    lo = np.array([ax[0] for ax in grid.axes])
    hi = np.array([ax[-1] for ax in grid.axes])
    size = hi - lo + voxel
    contrast = float(imaging.i_capsule - imaging.i_lumen)
    noise_sd = float(imaging.noise_frac * contrast)
    centre_xy = 0.5 * (lo[:2] + hi[:2]) + rng.normal(0.0, 0.05, 2) * size[:2]
    radius = 0.5 * float(np.hypot(size[0], size[1]))
    # rings: irregularly spaced radii (detector elements out of calibration), signed amplitudes
    gaps = rng.uniform(3.0, 12.0, 400) * voxel
    radii = np.cumsum(gaps)
    radii = radii[radii < radius * 1.2]
    amps = rng.normal(0.0, 1.0, len(radii)) * 0.05 * acq.rings * contrast
    ring_width = float(rng.uniform(0.5, 1.0)) * voxel
    noise_length = float(rng.uniform(1.0, 3.0))
    ghost_axis = int(rng.integers(1, 3))
    ghost_shift = float(rng.uniform(1.5, 4.0)) * acq.motion
    lines = _streak_lines(acq, world, contrast, rng)
    dtype, to_units, clip, calib = _units(acq, imaging, rng)
    # label noise: a smooth random displacement (voxels) on a coarse grid, and a shift
    jitter = None
    if acq.label_noise_vox > 0:
        jr = np.random.default_rng([int(seed), int(index), 3, _TAG, _LABEL])
        step = 4.0 * voxel
        g0 = lo - step
        n = coarse_nodes(lo, hi, step)
        from scipy import ndimage

        f = ndimage.gaussian_filter(jr.standard_normal(tuple(n)), 1.0, mode="wrap")
        f *= acq.label_noise_vox / max(float(f.std()), 1e-9)
        jitter = (f.astype(np.float32), g0, step)
    shift = (0, 0, 0)
    if acq.misregistration_vox > 0:
        u = rng.normal(0.0, 1.0, 3)
        v = np.rint(acq.misregistration_vox * u / np.abs(u).max()).astype(int)
        shift = tuple(int(s) for s in v)
    info = {**acq.to_dict(), "psf_sigma_vox": float(imaging.psf_sigma_vox), "noise_sd": noise_sd,
            "noise_length_vox": noise_length, "axis_centre_mm": [float(c) for c in centre_xy],
            "object_radius_mm": radius, "n_rings": int(len(radii)), "n_streaks": len(lines),
            "ghost_axis": ghost_axis, "ghost_shift_vox": ghost_shift, "label_shift_vox": list(shift),
            "dtype": dtype.name, "to_units": list(to_units), **calib}
    return Scanner(acq, [int(seed), int(index), 3, _TAG], voxel, dims, contrast, noise_sd, noise_length,
                   (float(centre_xy[0]), float(centre_xy[1])), radius, radii, amps, ring_width, lines,
                   ghost_axis, ghost_shift, dtype, to_units, clip, jitter, shift, info)
