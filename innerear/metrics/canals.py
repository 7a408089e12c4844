"""The three semicircular canals, separated and measured from a structure label map.

:func:`measure_canals` finds the canals from the voxels alone (any voxel size and pose):

1. **Mouths.** A canal opens into the vestibule where canal voxels touch vestibule voxels
   (26-neighbours); each touching patch is one mouth (a patch of fewer than 8 voxels joins
   the nearest larger one: a wide ampulla can graze the vestibule beside its mouth). The
   pieces are the canals label's 26-connected pieces away from the vestibule (off the voxels
   touching it), each mouth voxel then joined to the nearest piece, so two canals whose
   mouths touch on the vestibule's wall stay apart.
2. **Arcs.** Each 26-connected piece of the canals label is an arc between its mouths: the
   minimal path inside it from mouth centre to mouth centre, with a cost that keeps it on the
   lumen's medial axis (``(voxel / distance to the wall)^2``), smoothed. A piece with two
   mouths is one canal (the lateral canal). A piece with three is the anterior and posterior
   canals joined by the common crus: the crus is the shortest leg of the "Y" and each canal
   runs from its own mouth to the crus's mouth (the crus belongs to both).
3. **Names.** The lateral canal is the one that does not share the crus. Of the two that do,
   the anterior canal is the one whose own (ampullated) mouth lies further towards the
   cochlea from the vestibule's centre (the cochlea and both ampullae of the anterior and
   lateral canals are anterior; the posterior ampulla is posterior-inferior); without a
   cochlea label, the one whose mouth is more superior (RAS z; the scan is then assumed
   roughly in anatomical orientation). Where no crus is found (three separate arcs), the
   lateral canal is the one whose plane normal is closest to RAS z (same assumption), and
   the note says so.
4. **Geometry per canal.** The arc's *free part* is its centreline at least
   :data:`MOUTH_MARGIN_MM` (1 mm) away from the vestibule and off the common crus: it
   leaves out the ampulla and the flared mouths. The plane is the free part's best-fit
   (least-squares) plane, the radius of curvature that of the least-squares circle fitted to
   the free part in that plane (to the lumen centre, as Spoor & Zonneveld 1998's R; refitted
   once without the points far off the first circle, such as a limb bending towards an
   ampulla, up to five times), the lumen diameter the median over the free part of ``2 * sqrt(area / pi)``, the
   local cross-section area being the lumen volume nearest a centreline point over its share
   of the centreline's length (unbiased by the voxel size, unlike 2 x the distance transform,
   which reads up to a voxel off on 4-voxel-wide canals; the median leaves out flared ends), and the
   arc length the centreline's length from mouth to mouth (the crus included for the
   anterior and posterior canals). Plane angles are between plane normals, 0-90 degrees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.graph import MCP_Geometric

from innerear.settings.structures import CANALS, COCHLEA, VESTIBULE

MOUTH_MARGIN_MM = 1.0  # centreline closer than this to the vestibule: ampulla or mouth, left out of the fits
_MIN_MOUTH_VOXELS = 8  # a vestibule contact smaller than this joins the nearest mouth
CANAL_NAMES = ("asc", "psc", "lsc")  # anterior (superior), posterior, lateral (horizontal)
_NAN = float("nan")


@dataclass(frozen=True)
class CanalArc:
    """One canal's centreline and what was measured on it (world mm)."""

    centreline: np.ndarray  # (m, 3) from mouth to mouth, smoothed
    free: np.ndarray  # bool (m,): the part away from the vestibule and the crus
    lumen_diameter_mm: float
    radius_mm: float
    arc_length_mm: float
    normal: np.ndarray  # unit normal of the best-fit plane of the free part
    shares_crus: bool


@dataclass(frozen=True)
class Canals:
    """The three canals by name (``None`` where not found) and why any is missing."""

    arcs: dict[str, CanalArc | None]
    notes: dict[str, str] = field(default_factory=dict)
    naming: str = ""  # how the canals were told apart

    def angle(self, a: str, b: str) -> float:
        """Angle between two canals' planes (degrees, 0-90); NaN if either is missing."""
        x, y = self.arcs.get(a), self.arcs.get(b)
        if x is None or y is None or not (np.isfinite(x.normal).all() and np.isfinite(y.normal).all()):
            return _NAN
        return plane_angle(x.normal, y.normal)


# =========================================================================== geometry helpers
def plane_angle(n1: np.ndarray, n2: np.ndarray) -> float:
    """Angle between two planes given by their normals (degrees, 0-90)."""
    c = abs(float(np.dot(n1, n2)) / (np.linalg.norm(n1) * np.linalg.norm(n2)))
    return math.degrees(math.acos(min(1.0, c)))


def fit_plane(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares plane of ``points`` (n, 3): (centroid, unit normal)."""
    centre = points.mean(0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    return centre, vt[2]


def _circle_lsq(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares circle through 3D ``points`` in their best-fit plane (algebraic fit,
    refined by Gauss-Newton on the geometric distances): (radius, centre, unit normal)."""
    centre, normal = fit_plane(points)
    e1 = np.linalg.svd(points - centre, full_matrices=False)[2][0]
    e2 = np.cross(normal, e1)
    xy = np.stack([(points - centre) @ e1, (points - centre) @ e2], axis=1)
    a = np.column_stack([2 * xy, np.ones(len(xy))])
    (cx, cy, c), *_ = np.linalg.lstsq(a, (xy ** 2).sum(1), rcond=None)
    c0 = np.array([cx, cy])
    r = math.sqrt(max(c + cx * cx + cy * cy, 0.0))
    for _ in range(20):
        d = xy - c0
        rho = np.maximum(np.linalg.norm(d, axis=1), 1e-12)
        jac = np.column_stack([-d / rho[:, None], -np.ones(len(xy))])
        step, *_ = np.linalg.lstsq(jac, -(rho - r), rcond=None)
        c0, r = c0 + step[:2], r + step[2]
        if np.abs(step).max() < 1e-9:
            break
    return float(abs(r)), centre + c0[0] * e1 + c0[1] * e2, normal


def fit_circle(points: np.ndarray, trim: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Circle fitted to 3D ``points`` (see :func:`_circle_lsq`): (radius, centre, unit normal of
    the fitted points' plane). With ``trim``, refitted (up to 5 times) without the points lying
    more than twice the median distance (and at least 2 % of the radius) off the last circle
    and plane, keeping at least half of them: a limb that leaves the arc towards an ampulla
    does not bend the fit."""
    keep = np.ones(len(points), bool)
    r, c, n = _circle_lsq(points)
    for _ in range(5 if trim else 0):
        rel = points - c
        off = np.hypot(np.linalg.norm(rel - np.outer(rel @ n, n), axis=1) - r, rel @ n)
        new = off <= max(2.0 * float(np.median(off[keep])), 0.02 * r)
        if new.sum() < max(8, len(points) // 2) or (new == keep).all():
            break
        keep = new
        r, c, n = _circle_lsq(points[keep])
    return r, c, n


def polyline_length(points: np.ndarray) -> float:
    """Length of a polyline (n, 3)."""
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum()) if len(points) > 1 else 0.0


# =========================================================================== mouths and arcs
@dataclass(frozen=True)
class _Grid:
    """The cropped maps the arcs are traced on."""

    canal: np.ndarray  # bool
    affine: np.ndarray  # voxel -> world of the crop
    spacing: np.ndarray
    wall: np.ndarray  # distance to the canal's wall (mm), 0 outside
    to_vest: np.ndarray  # distance to the vestibule (mm)

    def world(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(idx, float) @ self.affine[:3, :3].T + self.affine[:3, 3]


def _grid(structures: np.ndarray, affine: np.ndarray) -> _Grid:
    canal, vest = structures == CANALS, structures == VESTIBULE
    idx = np.argwhere(canal | vest)
    lo, hi = np.maximum(idx.min(0) - 2, 0), np.minimum(idx.max(0) + 3, structures.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = lo
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    canal, vest = canal[box], vest[box]
    return _Grid(canal, affine @ shift, spacing, ndimage.distance_transform_edt(canal, sampling=spacing),
                 ndimage.distance_transform_edt(~vest, sampling=spacing))


def _merge_small(patches: list[np.ndarray], g: _Grid) -> list[np.ndarray]:
    """Patches of fewer than :data:`_MIN_MOUTH_VOXELS` voxels joined to the nearest larger
    patch (a wide ampulla grazing a curved vestibule beside its mouth is not a mouth)."""
    big = [p for p in patches if len(p) >= _MIN_MOUTH_VOXELS]
    if not big or len(big) == len(patches):
        return patches
    trees = [cKDTree(g.world(p)) for p in big]
    out = [list([p]) for p in big]
    for p in patches:
        if len(p) < _MIN_MOUTH_VOXELS:
            k = int(np.argmin([t.query(g.world(p))[0].min() for t in trees]))
            out[k].append(p)
    return [np.concatenate(v) for v in out]


def _mouths(g: _Grid, piece: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Mouths of one canal piece: the centre (voxel index) of each patch touching the
    vestibule, and the mask of all touching voxels. A piece with one patch (both ends of a
    canal fused at the vestibule, on coarse voxels) has it split in two about its long axis."""
    touch = piece & (g.to_vest <= float(np.linalg.norm(g.spacing)) + 1e-6)
    lab, n = ndimage.label(touch, structure=np.ones((3, 3, 3), bool))
    patches = _merge_small([np.argwhere(lab == k + 1) for k in range(n)], g)
    n = len(patches)
    if n == 1 and len(patches[0]) >= 4:
        w = g.world(patches[0])
        u = np.linalg.svd(w - w.mean(0), full_matrices=False)[2][0]
        side = (w - w.mean(0)) @ u > 0
        patches = [patches[0][side], patches[0][~side]]
    centres = [p[np.argmin(np.linalg.norm(g.world(p) - g.world(p).mean(0), axis=1))] for p in patches]
    return centres, touch


def _trace(g: _Grid, piece: np.ndarray, start: np.ndarray, ends: list[np.ndarray],
           blocked: np.ndarray) -> list[np.ndarray]:
    """Minimal medial paths (voxel indices) inside ``piece`` from ``start`` to each end, off the
    ``blocked`` voxels (the mouths, so that no path runs along the vestibule's surface)."""
    voxel = float(g.spacing.min())
    cost = np.where(piece & ~blocked, (voxel / np.maximum(g.wall, 0.5 * voxel)) ** 2, np.inf)
    for v in [start, *ends]:
        cost[tuple(int(x) for x in v)] = 1.0
    mcp = MCP_Geometric(cost, sampling=tuple(float(s) for s in g.spacing))
    mcp.find_costs([tuple(int(v) for v in start)])
    out = []
    for e in ends:  # an end the piece does not join to the start (off the mouths): no path
        try:
            out.append(np.array(mcp.traceback(tuple(int(v) for v in e))))
        except ValueError:
            out.append(np.zeros((0, 3), int))
    return out


def _smoothed(g: _Grid, path: np.ndarray) -> np.ndarray:
    """World centreline of a voxel path, smoothed over about two voxels (ends kept)."""
    pts = g.world(path)
    if len(pts) < 5:
        return pts
    sm = ndimage.gaussian_filter1d(pts, 2.0, axis=0, mode="nearest")
    sm[0], sm[-1] = pts[0], pts[-1]
    return sm


def _arc(g: _Grid, piece: np.ndarray, path: np.ndarray, crus: np.ndarray | None) -> CanalArc:
    """Measure one canal on its voxel path (``crus``: the voxels of the shared crus path)."""
    line = _smoothed(g, path)
    free = g.to_vest[tuple(path.T)] >= MOUTH_MARGIN_MM
    if crus is not None:
        free &= cKDTree(crus).query(path)[0] > 1.5
    nan3 = np.full(3, np.nan)
    if free.sum() < 8:
        return CanalArc(line, free, _NAN, _NAN, polyline_length(line), nan3, crus is not None)
    radius, _, normal = fit_circle(line[free])
    return CanalArc(line, free, _lumen_diameter(g, piece, line, free), radius, polyline_length(line), normal,
                    crus is not None)


def _lumen_diameter(g: _Grid, piece: np.ndarray, line: np.ndarray, free: np.ndarray) -> float:
    """Median over the free part of the equivalent diameter ``2 sqrt(area / pi)``, the area at a
    centreline point being the volume of the lumen voxels nearest to it over its share of the
    centreline's length (the median leaves out the flared ends of the free part)."""
    idx = np.argwhere(piece)
    dist, near = cKDTree(line).query(g.world(idx))
    reach = 2.0 * float(np.percentile(g.wall[tuple(idx.T)], 95)) + float(g.spacing.max())
    count = np.bincount(near[dist <= reach], minlength=len(line)).astype(float)
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    share = 0.5 * (np.concatenate([[0.0], seg]) + np.concatenate([seg, [0.0]]))
    inner = free.copy()
    inner[[0, -1]] = False  # the ends' nearest voxels include everything beyond them
    inner &= share > 0
    if inner.sum() < 3:
        return _NAN
    # a point's share of voxels is noisy: pool each with its neighbours (about 5 points)
    k = np.ones(5)
    area = np.convolve(count, k, "same") / np.maximum(np.convolve(share, k, "same"), 1e-12)
    area *= abs(float(np.linalg.det(g.affine[:3, :3])))
    return 2.0 * math.sqrt(float(np.median(area[inner])) / math.pi)


def _piece_arcs(g: _Grid, piece: np.ndarray) -> tuple[list[tuple[CanalArc, np.ndarray]], str]:
    """The canal arcs of one piece, each with its own mouth (voxel index; for a crus canal the
    mouth that is not the crus's): ([(arc, mouth)], note when the piece is not one or a Y)."""
    mouths, touch = _mouths(g, piece)
    if len(mouths) == 2:
        path = _trace(g, piece, mouths[0], [mouths[1]], touch)[0]
        if not np.isfinite(polyline_length(g.world(path))) or len(path) < 3:
            return [], "a canal piece's two vestibule contacts are not joined through it"
        return [(_arc(g, piece, path, None), mouths[1])], ""
    if len(mouths) != 3:
        return [], f"a canal piece of {int(piece.sum())} voxels opens into the vestibule {len(mouths)} times"
    paths = {(i, j): p for i in range(3) for j, p in zip([k for k in range(3) if k > i],
                                                         _trace(g, piece, mouths[i], mouths[i + 1:], touch))}
    if any(len(p) < 3 for p in paths.values()):
        return [], "a canal piece's three vestibule contacts are not all joined through it"
    length = {k: polyline_length(g.world(p)) for k, p in paths.items()}

    def d(i: int, j: int) -> float:
        return length[(min(i, j), max(i, j))]

    legs = [0.5 * (d(i, (i + 1) % 3) + d(i, (i + 2) % 3) - d((i + 1) % 3, (i + 2) % 3)) for i in range(3)]
    c = int(np.argmin(legs))
    a, b = [k for k in range(3) if k != c]
    pa, pb = _trace(g, piece, mouths[c], [mouths[a], mouths[b]], touch)
    apart = cKDTree(pb).query(pa)[0] > 1.0  # the crus: the two paths' common start
    crus = pa[: int(np.argmax(apart)) if apart.any() else len(pa)]
    return [(_arc(g, piece, p, crus), mouths[k]) for p, k in ((pa, a), (pb, b))], ""


def _name(found: list[tuple[CanalArc, np.ndarray]], structures: np.ndarray,
          affine: np.ndarray) -> tuple[dict[str, CanalArc | None], str]:
    """Name three arcs (each with its own mouth, world mm): (arcs by name, how they were told
    apart)."""
    crus = [(a, m) for a, m in found if a.shares_crus]
    up = np.array([0.0, 0.0, 1.0])
    if len(crus) == 2:
        lsc = next(a for a, _ in found if not a.shares_crus)
        vest = np.argwhere(structures == VESTIBULE) @ affine[:3, :3].T + affine[:3, 3]
        coch = np.argwhere(structures == COCHLEA)
        if len(coch):
            toward = (coch @ affine[:3, :3].T + affine[:3, 3]).mean(0) - vest.mean(0)
            how = "lateral: the canal not sharing the crus; anterior: the crus canal whose mouth lies towards the cochlea"
        else:
            toward = up
            how = ("lateral: the canal not sharing the crus; anterior: the crus canal whose mouth is more superior "
                   "(RAS z; no cochlea label, so the scan is assumed in anatomical orientation)")
        score = [float((m - vest.mean(0)) @ toward) for _, m in crus]
        asc, psc = (crus[0][0], crus[1][0]) if score[0] >= score[1] else (crus[1][0], crus[0][0])
        return {"asc": asc, "psc": psc, "lsc": lsc}, how
    arcs = [a for a, _ in found]
    tilt = [abs(float(a.normal @ up)) if np.isfinite(a.normal).all() else -1.0 for a in arcs]
    lsc = arcs.pop(int(np.argmax(tilt)))
    # of the two vertical canals, the anterior is the one further anterior (RAS y)
    arcs.sort(key=lambda a: -float(a.centreline[:, 1].mean()))
    how = ("no common crus found: lateral = the canal whose plane normal is closest to RAS z, anterior = the "
           "more anterior (RAS y) of the other two (assumes the scan is in anatomical orientation)")
    return {"asc": arcs[0], "psc": arcs[1], "lsc": lsc}, how


def _pieces(g: _Grid) -> tuple[np.ndarray, int]:
    """The canal pieces (labels, count): 26-connected away from the vestibule (off the voxels
    that touch it), every mouth voxel then joined to the nearest piece, so that two canals
    whose mouths touch each other on the vestibule's wall stay apart."""
    eight = np.ones((3, 3, 3), bool)
    core = g.canal & (g.to_vest > float(np.linalg.norm(g.spacing)) + 1e-6)
    lab, n = ndimage.label(core, structure=eight)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = np.flatnonzero(sizes[1:] >= 8) + 1
    if len(keep) == 0:
        return ndimage.label(g.canal, structure=eight)
    relabel = np.zeros(n + 1, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    lab = relabel[lab]
    near = ndimage.distance_transform_edt(lab == 0, sampling=g.spacing, return_distances=False, return_indices=True)
    out = np.where(g.canal, lab[tuple(near)], 0)
    return out, len(keep)


def canal_arcs(structures: np.ndarray, affine: np.ndarray) -> tuple[list[tuple[CanalArc, np.ndarray]], list[str]]:
    """Every canal arc of a label map, unnamed, each with its own mouth (world mm), and what
    could not be read (pieces that are neither one arc nor a "Y")."""
    g = _grid(structures, affine)
    lab, n = _pieces(g)
    found: list[tuple[CanalArc, np.ndarray]] = []
    problems = []
    for k in range(n):
        piece = lab == k + 1
        if piece.sum() < 8:
            continue
        try:
            arcs, why = _piece_arcs(g, piece)
        except ValueError:  # scikit-image finds no path between two mouths (too coarse a grid)
            arcs, why = [], f"a canal piece of {int(piece.sum())} voxels has mouths not joined through it"
        found += [(arc, g.world(m)) for arc, m in arcs]
        if why:
            problems.append(why)
    return found, problems


def measure_canals(structures: np.ndarray, affine: np.ndarray) -> Canals:
    """Separate and measure the three semicircular canals of a structure label map (see the
    module's docstring). Never raises for anatomy it cannot read: missing canals are ``None``
    with a note."""
    none = dict.fromkeys(CANAL_NAMES)
    if not (structures == CANALS).any():
        return Canals(none, {"canals": "no semicircular-canal voxels (label 3)"})
    if not (structures == VESTIBULE).any():
        return Canals(none, {"canals": "no vestibule voxels (label 2): the canals' ends are undefined"})
    found, problems = canal_arcs(structures, affine)
    if len(found) != 3:
        why = "; ".join(problems) or "the canal pieces do not form three arcs"
        return Canals(none, {"canals": f"found {len(found)} canal arcs, not 3 ({why})"})
    arcs, how = _name(found, structures, affine)
    notes = {name: "fewer than 8 centreline points away from the vestibule and the crus: no plane or radius"
             for name, a in arcs.items() if not np.isfinite(a.radius_mm)}
    return Canals(arcs, notes, how)
