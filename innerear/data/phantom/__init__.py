"""Synthetic micro-CT phantoms of a human temporal bone's inner ear (the default data set).

The real Hear-EU scans cannot be downloaded here, so the pipeline runs on phantoms that
are hard in the same way as real scans: the labyrinth is a thin, dark, tortuous lumen in
bright bone, and dark look-alikes (mastoid air cells, vessels, nerve canals) sit close to it,
so that a single 2D slice is ambiguous while the 3D shape is not.

Anatomy (mm), built in an anatomical frame (x lateral, y anterior, z superior, origin at the
vestibule centre), then scaled, mirrored (left/right) and posed in the scanner frame:

* cochlea: a tapering spiral tube (radius r_apex + (r0 - r_apex) exp(-k phi)) of about 2.2-2.55
  turns, rising along its modiolar axis (calibrated against human morphometry, issue 21:
  A ~9, B ~6.7, height ~5-7, lateral-wall duct ~30-37, lumen ~60 mm3; scala ~2.3 high at
  the base, ~1.9 at the half turn, a little wider than high, kept 0.3 mm off the axis), its
  turns raised until 0.35 mm of bone separates them; its basal end (a short straight hook,
  narrowing into its mouth) opens into the vestibule; a faint osseous spiral lamina inside
  the scala, ending at the helicotrema (image only);
* vestibule: a ~2.5 x 5.9 x 5 ellipsoid (width, length, height);
* three semicircular canals in near-orthogonal planes (84-94 degrees), lumen ~0.85, an
  ampulla ~2x wider next to the vestibule, arc lengths anterior 15-20, posterior 18-22,
  lateral 12-15 (its radius ~25 % smaller); the anterior and posterior canals leave the top
  of a common crus (a web fills the narrow crotch between them). Each canal leaves and
  re-enters the vestibule, so canals + vestibule hold exactly three tunnels;
* surroundings: dense otic-capsule bone in a wobbly shell (1.3-2.2 mm) around the lumen,
  lighter trabecular bone with marrow pores, mastoid air cells (dark, round, 0.5-5 mm,
  3-12, one to three within 2-3.5 voxels of the labyrinth but never touching it), thin
  vessels (dark, 0.3-0.8 mm) passing 1.5 voxels to 1 mm from it, an internal auditory canal
  (soft tissue) along the modiolar axis, sometimes a cut face of the specimen block
  (embedding medium). No air, vessel or nerve voxel is label or 26-adjacent to it;
* imaging: voxel size = protocol (16.3 / 19.5 um) x ``binning``, per-specimen field of view
  (13-18 mm per axis or what the labyrinth needs), pose (rotation 3-20 degrees, offset),
  size (+-10 %), side (right = mirror image of left), Gaussian PSF (0.8-1.2 voxel), Gaussian
  noise, a smooth multiplicative drift; stored as uint16 (capsule ~26000-28000, trabecular
  bone ~10000-23000, lumen and air ~4000-6500, soft tissue / medium ~6500-11000).

The label is the geometry (voxel centre inside the union of the tubes' elliptical
sections and the vestibule), not a threshold of the image; where the lumen is thinner than
a voxel (coarse smoke settings) the voxels on the centreline are added so that the label
stays one 26-connected component, and voxel-sized bone pockets enclosed by lumen are
filled. ``structures`` holds 1 cochlea, 2 vestibule, 3 canals; with ``with_tissue=True``
a tissue map (see ``TISSUES``) says what every voxel was drawn as.

With ``realism=AnatomyRealism(...)`` (off by default; :meth:`AnatomyRealism.full` turns
everything on) a specimen also has what real temporal bones have and these phantoms leave
out, none of it label: dark structures attached to the labyrinth (the fundus of the internal
auditory canal, the cochlear and vestibular aqueducts, the round and oval windows opening to
a middle-ear air cavity), a septum between the two scalae, air in the lumen, air darker than
fluid, and a connected mastoid air-cell honeycomb (see :mod:`.realism`; the tissue map codes
them as ``aqueduct``, ``middle_ear_air``, ``septum``, ``lumen_air``; ``meta["realism"]``
records what was drawn).

The anatomy is measured back from the voxels by :mod:`innerear.metrics.anatomy` (turns,
handedness, topology, the canals' loops).

Volumes are built in slabs along axis 0 (each with a halo for the blur), so that a
paper-sized specimen (``binning=1``, e.g. ``shape=(618, 892, 600)``) needs only its uint16 /
uint8 output arrays plus a few hundred MB. Everything is deterministic from ``seed``:
specimen ``i`` draws from ``numpy.random.default_rng([seed, i, ...])`` whatever the set size,
and written files are byte-identical for the same seed.

The package, one module per concern (in the order a specimen is made):

* :mod:`.params`: the per-specimen draw as frozen dataclasses (``SpecimenParams`` with
  ``AnatomyParams``, ``PoseParams``, ``SurroundingsParams``, ``ImagingParams``);
* :mod:`.geometry`: vector helpers, tubes and ellipsoids;
* :mod:`.anatomy`: the labyrinth in its anatomical frame, with the layout checks;
* :mod:`.scene`: the grid and the labyrinth posed in the scanner;
* :mod:`.surroundings`: cut face, internal auditory canal, vessels, air cells;
* :mod:`.realism`: opt-in anatomy realism (attached structures, scalae, air, honeycomb);
* :mod:`.world`: the typed :class:`~.world.World` of one specimen, built in one place;
* :mod:`.raster`: rasterising tubes, ellipsoids and spheres, interpolating coarse fields;
* :mod:`.imaging`: smooth fields and the slab-by-slab renderer;
* :mod:`.measure`: measurements from the voxels alone;
* :mod:`.acquisition`, :mod:`.artefacts`: an optional acquisition (field of view, voxel,
  micro-CT or cone-beam CT style, units, artefacts, label noise);
* :mod:`.write`: NIfTI and manifest files;
* :mod:`.specimen`: the :class:`Specimen` record and the label and tissue codes.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from innerear.data.phantom.acquisition import (
    Acquisition,
    acquisition_params,
    draw_acquisition,
    misregister,
    prepare_scanner,
)
from innerear.data.phantom.imaging import render
from innerear.data.phantom.params import (
    AnatomyParams,
    AnatomyRealism,
    ImagingParams,
    PoseParams,
    SpecimenParams,
    SurroundingsParams,
    draw_params,
    draw_specimen_params,
)
from innerear.data.phantom.specimen import (
    GENERATOR,
    PHANTOM_VERSION,
    T_AIR,
    T_BONE,
    T_LUMEN,
    T_MEDIUM,
    T_NERVE,
    T_VESSEL,
    TISSUES,
    Specimen,
    jsonable,
    specimen_id,
)
from innerear.data.phantom.truth import cochlea_truth
from innerear.data.phantom.world import World, build_world
from innerear.data.phantom.write import (
    PARTIAL,
    entry_files_exist,
    finish_set,
    resume_set,
    set_key,
    specimen_files,
    write_specimen,
)
from innerear.io.files import write_json
from innerear.settings.profiles import PhantomSettings
from innerear.settings.structures import CANALS, COCHLEA, VESTIBULE

__all__ = [
    "Acquisition", "AnatomyParams", "AnatomyRealism", "GENERATOR", "ImagingParams",
    "PHANTOM_VERSION", "PoseParams", "draw_acquisition",
    "Specimen", "SpecimenParams", "SurroundingsParams", "TISSUES", "T_AIR", "T_BONE", "T_LUMEN",
    "T_MEDIUM", "T_NERVE", "T_VESSEL", 
    "draw_params", "draw_specimen_params", "generate_specimen", "specimen_files",
    "specimen_id", "write_phantom_set", "write_specimen",
]

# voxels per slab (plus halo); read when a specimen is generated, so a test can shrink it
_SLAB_VOXELS = 16_000_000


def generate_specimen(index: int, seed: int, settings: PhantomSettings,
                      shape: tuple[int, int, int] | None = None, with_tissue: bool = False, *,
                      realism: AnatomyRealism | None = None, acquisition: Acquisition | None = None) -> Specimen:
    """Generate specimen ``index`` of the set drawn from ``seed``.

    ``shape`` fixes the grid (e.g. ``(618, 892, 600)`` with ``binning=1`` for a paper-sized
    specimen); the labyrinth is then oriented to fit and, if it still does not fit, shrunk
    (``meta["fit_scale"]``). ``with_tissue`` also returns the map of what each voxel was drawn
    as (see ``TISSUES``). The parameters go through :func:`draw_specimen_params`, the flat
    record, so that a change made there is what is generated. ``realism`` (off by default)
    adds the anatomy of real temporal bones that the plain phantoms leave out (see
    :class:`AnatomyRealism`; recorded in ``meta["realism"]``). ``acquisition`` (see
    :mod:`.acquisition`) scans the specimen with its field of view, voxel size, style,
    artefacts, units and label noise (``clean_label`` / ``clean_structures`` then hold the truth).
    """
    t0 = time.perf_counter()
    params = SpecimenParams.from_dict(draw_specimen_params(index, seed, settings))
    view = scanner = None
    if acquisition is not None:
        params, view, acq_rng = acquisition_params(params, acquisition, index, seed)
    world = build_world(index, seed, params, shape, view, realism)
    if acquisition is not None:
        scanner = prepare_scanner(acquisition, world, index, seed, acq_rng)
    image, label, struct, tissue, clean = render(world, with_tissue, index, seed, slab_voxels=_SLAB_VOXELS,
                                                 scanner=scanner)
    struct = _absorb_specks(struct)
    if scanner is not None:
        label, struct = misregister(label, struct, scanner.shift)
    meta = _meta(world, seed, label)
    if world.realism is not None:
        meta["realism"] = world.realism.info
        if world.realism.honeycomb is not None:  # the spheres were drawn (stream 3) but not rendered
            meta["n_air_cells"], meta["air_cells"] = 0, []
    if scanner is not None:
        meta["acquisition"] = scanner.info
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    voxel = world.grid.voxel
    return Specimen(specimen_id(index), image, label, struct, world.grid.affine.copy(), (voxel, voxel, voxel),
                    jsonable(meta), tissue, *(clean or (None, None)))


def _absorb_specks(struct: np.ndarray, max_voxels: int = 8) -> np.ndarray:
    """Canal or cochlea voxels in a speck of at most ``max_voxels`` that touches the vestibule
    (a tube grazing the vestibule's wall beside its mouth) become vestibule: the label is
    unchanged, the structures keep one piece per structure."""
    eight = np.ones((3, 3, 3), bool)
    for code in (CANALS, COCHLEA):
        lab, n = ndimage.label(struct == code, structure=eight)
        if n < 2:
            continue
        small = np.flatnonzero(np.bincount(lab.ravel())[1:] <= max_voxels) + 1
        if len(small) == 0:
            continue
        speck = np.isin(lab, small)
        near_vest = ndimage.binary_dilation(struct == VESTIBULE, structure=eight)
        part, _ = ndimage.label(speck, structure=eight)
        touching = np.unique(part[speck & near_vest])
        struct = np.where(np.isin(part, touching[touching > 0]), np.uint8(VESTIBULE), struct).astype(struct.dtype)
    return struct


def _meta(world: World, seed: int, label: np.ndarray) -> dict[str, Any]:
    """The specimen's record: what was drawn, where it sits and what it contains."""
    p, grid, surr, laby = world.params, world.grid, world.surroundings, world.labyrinth
    meta: dict[str, Any] = {
        "generator": GENERATOR,
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "index": int(p.index),
        "side": p.side,
        "protocol_um": p.protocol_um,
        "binning": p.binning,
        "voxel_mm": grid.voxel,
        "shape": [int(s) for s in grid.dims],
        "fov_mm": [float(d * grid.voxel) for d in grid.dims],
        "scale": p.scale,
        "fit_scale": world.fit_scale,
        "turns": p.anatomy.turns,
        "pose_deg": p.pose.pose_deg,
        "pose_axis": p.pose.pose_axis,
        "anatomy_to_world": world.lin,
        "modiolus_base_world": laby.modiolus,
        "modiolar_axis_world": laby.modiolar_axis,
        "vestibule_centre_world": laby.vest.centre,
        "anatomy": world.anatomy.info,
        "cochlea_truth": cochlea_truth(world.anatomy, world.scale),
        "n_air_cells": int(len(surr.air_r)),
        "air_cells": surr.air_info,
        "n_vessels": len(surr.vessel_info),
        "vessels": surr.vessel_info,
        "internal_auditory_canal": surr.iac_info,
        "cut_face": surr.cut is not None,
        "imaging": {k: getattr(p.imaging, k) for k in ("psf_sigma_vox", "noise_frac", "bias_amp", "i_capsule",
                                                       "i_trabecular", "i_marrow", "i_lumen", "i_soft", "i_medium")},
        "label_voxels": int(np.count_nonzero(label)),
    }
    if label.size <= 64_000_000:
        _, ncomp = ndimage.label(label, structure=np.ones((3, 3, 3), bool))
        meta["label_components"] = int(ncomp)
    return meta


def write_phantom_set(out_dir: Path, settings: PhantomSettings, seed: int, n: int | None = None,
                      progress: bool = False) -> dict:
    """Write ``n`` specimens (default ``settings.n_specimens``) and ``manifest.json`` to ``out_dir``.

    A folder that already holds this very set (same generator version, settings, seed and
    n) is left as it is (missing files are rewritten). A folder holding anything else raises
    :class:`FileExistsError`. An interrupted run resumes where it stopped.
    """
    n = int(settings.n_specimens if n is None else n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = set_key(settings, seed, n)
    complete, done = resume_set(out_dir, key)
    if complete is not None:
        return complete
    entries = []
    t_all = time.perf_counter()
    for i in range(n):
        sid = specimen_id(i)
        entry = done.get(sid)
        if entry is None or not entry_files_exist(out_dir, entry):
            t0 = time.perf_counter()
            spec = generate_specimen(i, seed, settings)
            entry = write_specimen(spec, out_dir)
            del spec
            if progress:
                print(f"[phantoms] {i + 1}/{n} {sid} {tuple(entry['shape'])} {entry['meta']['side']} "
                      f"{entry['meta']['protocol_um']} um ({time.perf_counter() - t0:.1f} s)",
                      file=sys.stderr, flush=True)
        entries.append(entry)
        write_json(out_dir / PARTIAL, {**key, "specimens": entries}, indent=1)
    manifest = finish_set(out_dir, key, entries)
    if progress:
        print(f"[phantoms] {n} specimens in {out_dir} ({time.perf_counter() - t_all:.1f} s)",
              file=sys.stderr, flush=True)
    return manifest
