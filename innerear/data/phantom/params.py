"""The per-specimen parameter draw, as typed frozen dataclasses.

:func:`draw_params` draws everything that varies between specimens (side, protocol, size,
anatomy, pose, surroundings, imaging) from ``numpy.random.default_rng([seed, index, 1])``.
:func:`draw_specimen_params` returns the same draw as a flat, JSON-able ``dict`` (the
record callers and tests read or tweak); :meth:`SpecimenParams.from_dict` reads it back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from innerear.data.phantom.geometry import rand_unit
from innerear.settings.profiles import PhantomSettings

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # Kronecker sequences: balanced sides / protocols
_SILVER = math.sqrt(2.0) - 1.0

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class AnatomyParams:
    """The labyrinth's shape (mm, at scale 1): cochlea, vestibule and semicircular canals."""

    turns: float
    cochlea_A: float  # basal-turn diameter
    cochlea_k: float  # spiral decay
    cochlea_r_apex: float
    cochlea_height: float
    scala_h_base: float
    scala_h_half: float
    scala_h_apex: float
    scala_width_ratio: float
    hook_mm: float
    helicotrema_deg: float  # the spiral lamina stops this far short of the apex
    vestibule_semi: Vec3
    len_anterior: float
    len_posterior: float
    len_lateral: float
    canal_radius: float
    ampulla_factor: float
    crus_mm: float


@dataclass(frozen=True)
class PoseParams:
    """Where the specimen sits in the scanner: rotation, field of view, offset in it."""

    pose_axis: Vec3
    pose_deg: float
    fov_mm: Vec3
    offset_frac: Vec3


@dataclass(frozen=True)
class SurroundingsParams:
    """What lies around the labyrinth: capsule, trabecular pores and dark look-alikes."""

    capsule_mm: float
    n_air_cells: int
    n_vessels: int
    iac_radius: float
    cut_face: bool
    pore_mm: float
    pore_threshold: float


@dataclass(frozen=True)
class ImagingParams:
    """Point-spread function, noise, drift and the grey values of each tissue."""

    psf_sigma_vox: float
    noise_frac: float
    bias_amp: float
    i_capsule: float
    i_trabecular: float
    i_marrow: float
    i_lumen: float
    air_factor: float
    vessel_factor: float
    i_soft: float
    i_medium: float


@dataclass(frozen=True)
class AnatomyRealism:
    """Opt-in anatomy realism (issue 13): what real temporal bones have and the plain phantoms
    leave out. Everything is off by default; :meth:`full` turns everything on. None of these
    changes the label; the per-specimen strengths are drawn by :mod:`.realism`.

    * ``attached_iac``: the internal auditory canal's fundus reaches the cochlea and vestibule
      (the cochlear and vestibular nerve canals), so it touches the label;
    * ``aqueducts``: cochlear aqueduct (from the basal turn near the round window, thin,
      widening medially) and vestibular aqueduct (from the vestibule, running posteriorly);
    * ``windows``: round and oval windows opening the basal turn and vestibule to a middle-ear
      air cavity lateral to the labyrinth;
    * ``scalae``: a thin brighter septum (osseous spiral lamina and basilar membrane) dividing
      the cochlear lumen into two scalae in the image;
    * ``bubbles``: the share of specimens with air bubbles or a partial fluid filling in the lumen;
    * ``air_darker``: air (cells, middle ear, bubbles) darker than the fluid of the lumen;
    * ``honeycomb``: a connected mastoid air-cell network with thin bony septa in place of
      the 3 to 12 isolated spherical air cells.
    """

    attached_iac: bool = False
    aqueducts: bool = False
    windows: bool = False
    scalae: bool = False
    bubbles: float = 0.0
    air_darker: bool = False
    honeycomb: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.bubbles) <= 1.0:
            raise ValueError(f"AnatomyRealism.bubbles must be a share in [0, 1], got {self.bubbles!r}")

    @classmethod
    def full(cls) -> AnatomyRealism:
        """Everything on at typical strengths (half of the specimens with air in the lumen)."""
        return cls(attached_iac=True, aqueducts=True, windows=True, scalae=True, bubbles=0.5,
                   air_darker=True, honeycomb=True)


_GROUPS = {"anatomy": AnatomyParams, "pose": PoseParams, "surroundings": SurroundingsParams,
           "imaging": ImagingParams}


@dataclass(frozen=True)
class SpecimenParams:
    """Everything drawn for one specimen."""

    index: int
    side: str  # "left" or "right"
    protocol_index: int
    protocol_um: float
    binning: int
    voxel_mm: float
    scale: float  # size factor applied to the anatomy
    anatomy: AnatomyParams
    pose: PoseParams
    surroundings: SurroundingsParams
    imaging: ImagingParams

    def to_dict(self) -> dict[str, Any]:
        """The flat record (one key per field, groups flattened, vectors as lists)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _GROUPS}
        for group in _GROUPS:
            for f in fields(getattr(self, group)):
                value = getattr(getattr(self, group), f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SpecimenParams:
        """Read back a :meth:`to_dict` record (possibly with some values changed)."""
        names = {f.name for f in fields(cls) if f.name not in _GROUPS}
        for typ in _GROUPS.values():
            names |= {f.name for f in fields(typ)}
        missing, unknown = sorted(names - set(record)), sorted(set(record) - names)
        if missing or unknown:
            raise ValueError(f"phantom parameters: missing {missing}, unknown {unknown}")

        def value(name: str) -> Any:
            v = record[name]
            return tuple(v) if isinstance(v, list) else v

        groups = {g: typ(**{f.name: value(f.name) for f in fields(typ)}) for g, typ in _GROUPS.items()}
        top = {f.name: value(f.name) for f in fields(cls) if f.name not in _GROUPS}
        return cls(**top, **groups)


# ---------------------------------------------------------------- the draw (the order of the
# draws below is the random stream: reordering them changes every phantom)
def _draw_anatomy(rng: np.random.Generator) -> AnatomyParams:
    """Lengths at scale 1: the specimen's ``scale`` (0.9-1.1) multiplies them all (volumes by
    its cube), so each range is centred on the reference value and kept narrower than the
    reference spread by the share that the scale already brings. The sources are those of
    ``innerear/metrics/reference/morphometry.csv`` (README.md there)."""
    u = rng.uniform
    return AnatomyParams(
        # turns base to cupula 2.57 +- 0.28, Ahmadi 2021 (10.1038/s41598-021-82716-0)
        turns=u(2.2, 2.55),  # measured from the basal end (hook included): ~0.15 turn more
        # A value 9.0 +- 0.5 mm, Dhanasingh 2021 micro-CT: measured A reads ~5 % above this
        # parameter (taken past the hook), so 8.15-8.75 measures ~8.6-9.2 at scale 1
        cochlea_A=u(8.15, 8.75),
        # B value 6.7 +- 0.4 (B/A ~0.74), Dhanasingh 2021; lateral-wall CDL 33.0 (28.2-36.4) mm,
        # Curtis 2023: a faster decay than the earlier 0.15-0.18 shortens both (faster than
        # ~0.27 the basal turn is nearly all of the spiral and the modiolar axis is ill-defined)
        cochlea_k=u(0.22, 0.26),
        cochlea_r_apex=u(0.45, 0.6),  # with a 0.3 mm columella, the apical lumen stays ~0.3-0.6 wide
        # cochlear height 5.14 (2.8-6.9) mm, Curtis 2023; anatomy._stacked raises it (by up to
        # 1.5 mm) until the turns keep 0.35 mm of bone: the phantoms measure ~5-7 mm, median ~6
        cochlea_height=u(4.9, 5.3),
        # basal-turn lumen height 1.96 (1.77-2.56) mm, Curtis 2023 (10.1016/j.ijporl.2023.111659),
        # and the whole-lumen area at the base ~1.6x that at 180 deg (scala tympani 2.29 -> 1.38
        # mm2 from 0 to 180 deg, PMID 36893208): ~2.3 mm at the round window, ~1.9 at the half turn
        scala_h_base=u(2.25, 2.4),
        scala_h_half=u(1.85, 1.95),
        scala_h_apex=u(0.45, 0.6),
        # basal-turn lumen diameter 2.09 (1.7-2.2) vs height 1.96 mm, Curtis 2023, and whole-lumen
        # area at the half turn 3.22 (2.36-4.42) mm2 (DERIVED row; scala tympani alone 1.38 +-
        # 0.13 mm2 at 180 deg, PMID 36893208): ~2.3 x 1.9 mm, the width at the top of Curtis's
        # range, which the whole-cochlea volume (74.5 +- 15.3 mm3, DERIVED) needs
        scala_width_ratio=u(1.2, 1.28),
        hook_mm=u(0.7, 1.2),  # counted in the measured CDL (from the basal end): kept short
        # helicotrema angular length 67.8 +- 37.9 deg, Helpard 2020 (10.1186/s40463-019-0398-8):
        # the spiral lamina stops this far short of the apex
        helicotrema_deg=u(40.0, 100.0),
        # vestibule (semi-axes: lateral, anterior, superior) width 2.47 +- 0.36, length
        # 5.89 +- 0.34, height 5.10 +- 0.32 mm, Hou & Wang 2013 (10.3760/cma.j.issn.1005-1201.2013.06.004);
        # the width is kept at the band's upper part (~2.7 mm): narrower, the canals' mouths
        # (lumen ~0.85, ampullae ~1.7 mm) touch each other around the ellipsoid's lateral wall
        vestibule_semi=(u(1.25, 1.4), u(2.8, 3.05), u(2.4, 2.6)),
        # canal lengths anterior 15-20, posterior 18-22, lateral 12-15 mm, Gray's Anatomy 1918 p. 1049
        len_anterior=u(15.0, 20.0),
        len_posterior=u(18.0, 22.0),
        len_lateral=u(12.8, 15.0),  # measured mouth to mouth it reads ~0.5 mm shorter
        # canal lumen diameter 0.9 (0.8-1.0) mm (UNVERIFIED row), Gray's 1918 p. 1049 "about 0.8 mm"
        # (wider canals touch each other's mouths on the narrower vestibule)
        canal_radius=u(0.41, 0.45),
        ampulla_factor=u(1.8, 2.1),
        crus_mm=u(1.6, 2.2),
    )


def _draw_pose(rng: np.random.Generator) -> PoseParams:
    u = rng.uniform
    return PoseParams(
        pose_axis=tuple(rand_unit(rng).tolist()),
        pose_deg=u(3.0, 20.0),
        fov_mm=tuple(u(13.0, 18.0) for _ in range(3)),
        offset_frac=tuple(u(0.0, 1.0) for _ in range(3)),
    )


def _draw_surroundings(rng: np.random.Generator) -> SurroundingsParams:
    u = rng.uniform
    return SurroundingsParams(
        capsule_mm=u(1.3, 2.2),
        n_air_cells=int(rng.integers(3, 13)),
        n_vessels=int(rng.integers(2, 6)),
        iac_radius=u(1.6, 2.1),
        cut_face=bool(rng.random() < 0.5),
        pore_mm=u(0.22, 0.4),
        pore_threshold=u(-0.4, 0.2),
    )


def _draw_imaging(rng: np.random.Generator) -> ImagingParams:
    u = rng.uniform
    return ImagingParams(
        psf_sigma_vox=u(0.8, 1.2),
        noise_frac=u(0.035, 0.07),
        bias_amp=u(0.04, 0.12),
        i_capsule=u(25500.0, 28500.0),
        i_trabecular=u(19000.0, 23000.0),
        i_marrow=u(9000.0, 12500.0),
        i_lumen=u(3800.0, 5200.0),
        air_factor=u(1.0, 1.25),
        vessel_factor=u(0.9, 1.1),
        i_soft=u(8000.0, 11000.0),
        i_medium=u(6500.0, 9000.0),
    )


def draw_params(index: int, seed: int, settings: PhantomSettings) -> SpecimenParams:
    """The per-specimen draw (side, protocol, size, pose, imaging...), cheap and geometry-free.

    Specimen ``index`` gets the same parameters whatever the size of the set. Sides and
    protocols follow low-discrepancy sequences with a seed-dependent start, so any 17
    consecutive specimens hold both sides and (for a share >= 1/17) both protocols.
    """
    index, seed = int(index), int(seed)
    offs = np.random.default_rng([seed, 0x5EED]).random(2)
    rng = np.random.default_rng([seed, index, 1])
    side = "left" if (offs[0] + index * _SILVER) % 1.0 < 0.5 else "right"
    protocols = tuple(float(p) for p in settings.protocols_um)
    second = len(protocols) > 1 and (offs[1] + index * _GOLDEN) % 1.0 < settings.second_protocol_share
    protocol_index = 1 if second else 0
    scale = rng.uniform(0.9, 1.1)
    anatomy = _draw_anatomy(rng)
    pose = _draw_pose(rng)
    surroundings = _draw_surroundings(rng)
    imaging = _draw_imaging(rng)
    return SpecimenParams(
        index=index, side=side, protocol_index=protocol_index, protocol_um=protocols[protocol_index],
        binning=int(settings.binning), voxel_mm=protocols[protocol_index] * int(settings.binning) / 1000.0,
        scale=scale, anatomy=anatomy, pose=pose, surroundings=surroundings, imaging=imaging)


def draw_specimen_params(index: int, seed: int, settings: PhantomSettings) -> dict[str, Any]:
    """:func:`draw_params` as a flat JSON-able record (see :meth:`SpecimenParams.to_dict`)."""
    return draw_params(index, seed, settings).to_dict()
