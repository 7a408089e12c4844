"""The synthetic inner-ear phantoms: anatomy, look-alikes, imaging, determinism, files."""
from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from innerear.data import phantom as ph
from innerear.settings.profiles import PhantomSettings, get_profile, is_synthetic
from innerear.metrics.anatomy import canal_tunnels, cochlear_handedness, count_cochlear_turns, topology, voxel_centres
from innerear.settings.structures import CANALS, COCHLEA, VESTIBULE

SMOKE = get_profile("smoke").phantoms
FINE = PhantomSettings(n_specimens=3, binning=10)  # ~0.16-0.2 mm voxels: canals 4-5 voxels wide
SEED = 11


@pytest.fixture(scope="module")
def fine_specimens():
    return [ph.generate_specimen(i, SEED, FINE, with_tissue=True) for i in range(2)]


def _dilated(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool))


# --------------------------------------------------------------------------- anatomy
def test_label_is_one_component_and_matches_structures(fine_specimens):
    for sp in fine_specimens:
        assert sp.image.dtype == np.uint16 and sp.label.dtype == np.uint8 and sp.structures.dtype == np.uint8
        assert sp.image.shape == sp.label.shape == sp.structures.shape
        assert set(np.unique(sp.label)) == {0, 1}
        assert set(np.unique(sp.structures)) == {0, 1, 2, 3}
        np.testing.assert_array_equal(sp.label, sp.structures > 0)
        topo = topology(sp.label)
        assert topo["components"] == 1 and topo["cavities"] == 0
        assert sp.meta["label_components"] == 1
        # 6-connected as well
        assert ndimage.label(sp.label)[1] == 1
        # the labyrinth lies inside the field of view with bone around it
        idx = np.argwhere(sp.label)
        assert (idx.min(0) >= 2).all() and (idx.max(0) <= np.array(sp.label.shape) - 3).all()


def test_each_canal_closes_a_loop_through_the_vestibule(fine_specimens):
    for sp in fine_specimens:
        st = sp.structures
        # canals + vestibule: three tunnels, one per canal (anterior and posterior share the crus)
        assert canal_tunnels(st) == 3
        # the cochlea adds none (its turns never touch)
        assert topology(sp.label)["tunnels"] == 3
        # without the vestibule the canals are open arcs: anterior+posterior (joined by the
        # common crus) and the lateral canal, no loop left
        canals = topology(st == CANALS)
        assert canals["components"] == 2 and canals["tunnels"] == 0
        # every canal piece meets the vestibule at two places at least (both of its ends)
        lab, n = ndimage.label(st == CANALS, structure=np.ones((3, 3, 3), bool))
        vest_zone = _dilated(st == VESTIBULE)
        for k in range(1, n + 1):
            ends = ndimage.label(vest_zone & (lab == k), structure=np.ones((3, 3, 3), bool))[1]
            assert ends >= 2


def test_cochlear_turns_measured_from_voxels(fine_specimens):
    for sp in fine_specimens:
        turns = count_cochlear_turns(sp.structures, sp.affine)
        assert 2.15 <= turns <= 2.65, turns
        assert abs(turns - sp.meta["turns"]) <= 0.08
        assert 2.2 <= sp.meta["turns"] <= 2.55  # issue 21: 2.57 +- 0.28 measured from the hook


def test_cochlea_and_canal_dimensions(fine_specimens):
    for sp in fine_specimens:
        scale = sp.meta["scale"] * sp.meta["fit_scale"]
        pts = voxel_centres(np.argwhere(sp.structures == COCHLEA), sp.affine)
        pts -= pts.mean(0)
        _, vecs = np.linalg.eigh(np.cov(pts.T))
        a, b, h = (np.ptp(pts @ vecs[:, k]) / scale for k in (2, 1, 0))
        assert 8.0 <= a <= 10.0  # basal-turn diameter ~8.75
        assert 6.0 <= b <= 8.0  # width
        assert 4.5 <= h <= 7.5  # height ~5-7 (issue 21: 5.14, 2.8-6.9)
        anat = sp.meta["anatomy"]
        assert 18.0 <= anat["spiral_length_mm"] <= 30.0  # the centreline of a ~2 mm lumen
        lengths = anat["canal_arc_length_mm"]
        assert 15.0 <= lengths["anterior"] <= 20.1 and 18.0 <= lengths["posterior"] <= 22.1
        assert 12.8 <= lengths["lateral"] <= 15.1
        rc = anat["canal_radius_of_curvature_mm"]
        assert rc["lateral"] < 0.9 * min(rc["anterior"], rc["posterior"])
        assert all(84.0 <= v <= 94.0 for v in anat["canal_plane_angles_deg"].values())
        assert anat["canal_lumen_diameter_mm"] == pytest.approx(0.86, abs=0.05)
        # lumen ~0.8 mm from the voxels: twice the distance to the wall on the canals' medial
        # ridge (away from the vestibule; ampullae are short)
        canals = sp.structures == CANALS
        dt = ndimage.distance_transform_edt(canals, sampling=sp.spacing)
        ridge = canals & (ndimage.maximum_filter(dt, size=3) == dt)
        ridge &= ndimage.distance_transform_edt(sp.structures != VESTIBULE, sampling=sp.spacing) > 1.5
        assert 0.5 <= 2 * np.median(dt[ridge]) / scale <= 1.2


def test_left_and_right_ears_are_mirror_images():
    sides = {}
    for i in range(8):
        side = ph.draw_specimen_params(i, SEED, SMOKE)["side"]
        sides.setdefault(side, i)
    assert set(sides) == {"left", "right"}
    coarse = replace(FINE, binning=12)
    specs = {s: ph.generate_specimen(i, SEED, coarse) for s, i in sides.items()}
    hand = {s: cochlear_handedness(sp.structures, sp.affine) for s, sp in specs.items()}
    assert hand["left"] == -hand["right"] != 0


# --------------------------------------------------------------------------- look-alikes
def test_air_cells_and_vessels_never_touch_the_label(fine_specimens):
    for sp in fine_specimens:
        near = _dilated(sp.label > 0)
        for t in (ph.T_AIR, ph.T_VESSEL, ph.T_NERVE):
            assert not np.any((sp.tissue == t) & near)
        assert np.all((sp.tissue == ph.T_LUMEN) == (sp.label > 0))
        assert 3 <= sp.meta["n_air_cells"] <= 12 and np.any(sp.tissue == ph.T_AIR)
        assert sp.meta["n_vessels"] >= 1 and np.any(sp.tissue == ph.T_VESSEL)
        # some are close: within a few voxels of the labyrinth (one or two voxels of bone between)
        dist = ndimage.distance_transform_edt(sp.label == 0, sampling=sp.spacing)
        assert dist[sp.tissue == ph.T_AIR].min() <= 5 * sp.spacing[0]
        assert dist[sp.tissue == ph.T_VESSEL].min() <= 1.5
        assert all(c["gap_mm"] > 0 for c in sp.meta["air_cells"])
        assert all(v["gap_mm"] > 0 for v in sp.meta["vessels"])
        assert all(0.5 <= c["diameter_mm"] <= 5.6 for c in sp.meta["air_cells"])
        assert all(0.3 <= v["diameter_mm"] <= 0.9 for v in sp.meta["vessels"])


def test_look_alikes_are_as_dark_as_the_lumen(fine_specimens):
    for sp in fine_specimens:
        img = sp.image.astype(float)
        core = lambda m: ndimage.binary_erosion(m)  # noqa: E731 (away from the partial-volume rim)
        lumen = img[core(sp.label > 0)].mean()
        air = img[core(sp.tissue == ph.T_AIR)].mean()
        bone = img[sp.tissue == ph.T_BONE].mean()
        assert abs(air - lumen) <= 0.25 * lumen
        assert lumen < 0.5 * bone and air < 0.5 * bone
        assert img[sp.tissue == ph.T_VESSEL].mean() < 0.8 * bone  # thin: partly blurred
        assert 15000 <= bone <= 30000 and 2000 <= lumen <= 9000
        # the capsule next to the lumen is denser than the bone further out
        dist = ndimage.distance_transform_edt(sp.label == 0, sampling=sp.spacing)
        bone_mask = sp.tissue == ph.T_BONE
        assert img[bone_mask & (dist > 0.5) & (dist < 1.0)].mean() > img[bone_mask & (dist > 4.0)].mean()


# --------------------------------------------------------------------------- imaging
def test_parameter_draw_covers_both_sides_and_protocols():
    for seed in (0, 1, 2, 123, 2024):
        params = [ph.draw_specimen_params(i, seed, get_profile("demo").phantoms) for i in range(17)]
        assert {p["side"] for p in params} == {"left", "right"}
        assert {p["protocol_um"] for p in params} == {16.3, 19.5}
        assert 2 <= sum(p["protocol_um"] == 19.5 for p in params) <= 6
        for p in params:
            assert p["voxel_mm"] == pytest.approx(p["protocol_um"] * 8 / 1000)
            assert 0.9 <= p["scale"] <= 1.1 and 3 <= p["pose_deg"] <= 20 and 2.2 <= p["turns"] <= 2.55
        # specimen i does not depend on how many are drawn
        assert ph.draw_specimen_params(16, seed, SMOKE) == ph.draw_specimen_params(16, seed, SMOKE)


def test_smoke_specimens_vary_and_carry_their_geometry():
    specs = [ph.generate_specimen(i, SEED, SMOKE) for i in range(4)]
    assert len({s.image.shape for s in specs}) > 1
    for s in specs:
        voxel = s.meta["protocol_um"] * SMOKE.binning / 1000
        assert s.spacing == pytest.approx((voxel,) * 3)
        np.testing.assert_allclose(np.linalg.norm(s.affine[:3, :3], axis=0), s.spacing)
        assert s.meta["label_components"] == 1
        json.dumps(s.meta)  # JSON-serialisable
        assert 8.0 <= min(s.meta["fov_mm"]) and max(s.meta["fov_mm"]) <= 25.0


def test_shape_override_and_slabs():
    spec = ph.generate_specimen(1, SEED, SMOKE, shape=(30, 44, 30))
    assert spec.image.shape == (30, 44, 30)
    assert 0.2 < spec.meta["fit_scale"] <= 1.0
    assert topology(spec.label)["components"] == 1
    with pytest.raises(ValueError):
        ph.generate_specimen(1, SEED, SMOKE, shape=(8, 8, 8))


def test_slab_by_slab_equals_whole_volume(monkeypatch):
    settings = replace(FINE, binning=16)
    draw = ph.draw_specimen_params

    def quiet(*args, **kwargs):
        p = draw(*args, **kwargs)
        p["noise_frac"] = 0.0  # noise is drawn per slab
        return p

    monkeypatch.setattr(ph, "draw_specimen_params", quiet)
    whole = ph.generate_specimen(2, SEED, settings, with_tissue=True)
    monkeypatch.setattr(ph, "_SLAB_VOXELS", 1)  # slabs of a few planes, each with its halo
    slabs = ph.generate_specimen(2, SEED, settings, with_tissue=True)
    for name in ("image", "label", "structures", "tissue"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(slabs, name))


def test_same_seed_same_arrays_other_seed_different():
    a = ph.generate_specimen(2, SEED, SMOKE)
    b = ph.generate_specimen(2, SEED, SMOKE)
    c = ph.generate_specimen(2, SEED + 1, SMOKE)
    for name in ("image", "label", "structures", "affine"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert {k: v for k, v in a.meta.items() if k != "seconds"} == {k: v for k, v in b.meta.items() if k != "seconds"}
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


# --------------------------------------------------------------------------- files
def test_written_files_are_reproducible_with_the_right_affine(tmp_path):
    spec = ph.generate_specimen(0, SEED, SMOKE)
    e1 = ph.write_specimen(spec, tmp_path / "a")
    e2 = ph.write_specimen(ph.generate_specimen(0, SEED, SMOKE), tmp_path / "b")
    e3 = ph.write_specimen(ph.generate_specimen(0, SEED + 1, SMOKE), tmp_path / "c")
    assert e1 == e2
    for key in ("image", "label", "structures"):
        assert (tmp_path / "a" / e1[key]).read_bytes() == (tmp_path / "b" / e2[key]).read_bytes()
    assert (tmp_path / "a" / e1["image"]).read_bytes() != (tmp_path / "c" / e3["image"]).read_bytes()
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp files left
    for key, arr in (("image", spec.image), ("label", spec.label), ("structures", spec.structures)):
        img = nib.load(str(tmp_path / "a" / e1[key]))
        np.testing.assert_allclose(img.affine, spec.affine, atol=1e-6)
        np.testing.assert_allclose(img.header.get_zooms(), spec.spacing, rtol=1e-6)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), spec.affine, atol=1e-5)
        data = np.asanyarray(img.dataobj)
        assert data.dtype == arr.dtype
        np.testing.assert_array_equal(data, arr)
    assert e1["shape"] == list(spec.image.shape) and e1["spacing"] == pytest.approx(list(spec.spacing))


def test_phantom_set_manifest_noop_and_refusals(tmp_path):
    out = tmp_path / "set"
    m = ph.write_phantom_set(out, SMOKE, seed=SEED, n=2)
    assert m["synthetic"] and m["seed"] == SEED and m["n"] == 2 and len(m["specimens"]) == 2
    assert is_synthetic(out)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["manifest.json"] + [f"phantom_00{i}_{k}.nii.gz" for i in range(2)
                                                for k in ("image", "label", "structures")])
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert ph.write_phantom_set(out, SMOKE, seed=SEED, n=2) == m  # no-op
    assert stamp == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="different"):
        ph.write_phantom_set(out, SMOKE, seed=SEED + 1, n=2)
    with pytest.raises(FileExistsError):
        ph.write_phantom_set(out, replace(SMOKE, binning=20), seed=SEED, n=2)
    # a missing file is rewritten, identical
    label = out / "phantom_001_label.nii.gz"
    before = label.read_bytes()
    label.unlink()
    assert ph.write_phantom_set(out, SMOKE, seed=SEED, n=2) == m
    assert label.read_bytes() == before
    # a folder with other things in it is not touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "scan.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty"):
        ph.write_phantom_set(other, SMOKE, seed=SEED, n=1)
    # specimen i is the same whatever n is
    m3 = ph.write_phantom_set(tmp_path / "three", SMOKE, seed=SEED, n=3)
    assert m3["specimens"][1] == m["specimens"][1]
    name = "phantom_001_image.nii.gz"
    assert (tmp_path / "three" / name).read_bytes() == (out / name).read_bytes()


def test_topology_helper_on_simple_shapes():
    x, y, z = np.mgrid[-12:13, -12:13, -6:7]
    torus = (np.sqrt(x**2 + y**2) - 7) ** 2 + z**2 <= 9
    assert topology(torus) == {"components": 1, "cavities": 0, "tunnels": 1, "euler": 0}
    r = np.sqrt(x**2 + y**2 + (2 * z) ** 2)
    shell = (r >= 5) & (r <= 8)
    assert topology(shell)["cavities"] == 1 and topology(shell)["tunnels"] == 0
