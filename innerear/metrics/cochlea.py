"""Cochlear duct length and number of turns, measured from a binary cochlea mask.

Clinicians plan cochlear implants from the cochlea's size: the cochlear duct length along
the lateral wall (CDL_LW) and the number of turns. :func:`measure_cochlea` measures both
from the voxels of a cochlea mask alone, at any voxel size (16 um to 0.3 mm), pose and side.

The method ("lateral-wall spiral unwrapping"):

1. The mask's largest 26-connected component is kept (scans finer than about 0.04 mm are
   block-averaged to about 0.06 mm voxels first: the measurement does not need more).
2. **Centreline.** The two ends of the duct are the ends of the mask's longest geodesic
   path (the voxel farthest inside the mask from any voxel, then the voxel farthest from
   that one; where turns touch, on the mask without the contacts: see below). The voxels are ordered by their geodesic distance from one end; the
   centreline is the centroid of each thin distance shell.
3. **Modiolar axis.** The axis the centreline winds around: its direction starts as the
   centreline's mean binormal or its best-fitting plane's normal and its position as the pole
   of the first or the last turn (four starts; the best fit wins); both are then refined until the centreline's distance from the axis and its height along the axis vary
   smoothly with the angle about it (a once-per-turn wobble in either means the axis is
   off-centre or tilted; :func:`fit_modiolar_axis`). The apex is the end nearer the axis.
4. **Unwrapping.** Every voxel gets its angle about the axis, unwrapped along the duct
   (the branch nearest the angle of its centreline shell), so that the basal, middle and
   apical turns, which overlap in angle, stay apart.
5. **Lateral wall.** In 1-degree bins of unwrapped angle, the lateral wall is the outermost
   voxel centre's distance from the axis in a window of at least 3 degrees and 1.5 voxels of
   arc (plus 0.1 voxel), at the window's mean height; its distance from the axis is made
   non-increasing from base to apex (an isotonic fit: the duct spirals inwards), which
   removes voxel jitter. CDL_LW is the 3D length of that curve between the two ends.
6. **Ends.** The duct runs from the centre of its basal end (where, in a labyrinth, the
   cochlea opens into the vestibule; the round window lies in this hook region) to the
   centre of its apical end. The basal end is where the duct's section (voxels per degree)
   first reaches half its largest size: the centre of an oblique end face. The apical end
   is the lumen's largest angle less the angle its half-width subtends there (the rounded
   tip extends half a lumen width beyond the centreline's end). The number of turns is the
   angle swept about the axis between the two ends / 360 degrees; the centreline (the
   section's centre per degree, smoothed the same way) is measured between the same ends.

**Touching turns.** At clinical cone-beam CT resolution (0.1-0.3 mm voxels) the bone between
two turns is often thinner than a voxel and the turns touch in the mask; a geodesic from one
end then jumps across the contact to the next turn and a turn or more is lost. Before step 2
the mask's course is traced along its *widest path* (:func:`duct_course`): the maximum
spanning tree of the voxels' 26-neighbour links, weighted by the distance to the mask's edge,
keeps of every loop the links with the most lumen around them, so a loop closed by a contact
between two turns (narrower than the duct) is cut at the contact; the path between the tree's
two ends follows the duct. Every voxel takes the position of its geodesically nearest voxel on
that path. Neighbours whose positions lie farther apart along the path than the lumen is wide,
and clearly farther than the straight distance between their places on it, lie on two turns:
those voxels are the contact (``touching_turns``, ``contact_voxels``), and the duct is ordered
on the mask without them (their voxels take the shell of the nearest voxel left). It is also
ordered by the positions along the widest path; where the two orderings disagree by more than a
quarter turn, one of them crossed a contact (a contact as wide as the lumen is not cut; the
widest path crosses where the apical turn is thinner than the contact), and the one with more
turns is kept, with a ``warning``; else the geodesic one, unless its lateral wall wobbles more
than 0.75 voxel about an inward spiral (voxels of a wide contact on the wrong turn) and the
other's less (``merged_turns`` says the widest path's ordering was used). On a mask whose
turns do not touch, nothing changes.

Limits: only the largest component is measured (``kept_fraction``); a mask that has lost
part of the duct (e.g. a thin apical turn) gives the length of what is left; where turns merge
over contacts as wide as the lumen and the apical turn is about a voxel thin (0.3 mm voxels and
an over-grown label), the turns can come out a quarter to half a turn short: such results carry
a ``warning``. An over-grown label (an expert's outline drawn on a blurred scan) moves the
lateral wall out, and its duct length reads long by about the growth x 2 pi x turns; a ragged
outline reads longer still (the lateral wall is the outermost voxel).

The phantoms' truth (``meta["cochlea_truth"]``, see
:func:`innerear.data.phantom.truth.cochlea_truth`) follows the same convention, from the
generator's own spiral.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import isotonic_regression

from innerear.metrics.components import bounding_box, largest_component, topology

METHOD_NAME = "lateral-wall spiral unwrapping"
METHOD = (f"{METHOD_NAME}: the modiolar axis is fitted to the mask's geodesic centreline (where turns touch, "
          "on the mask less the contacts found along its widest path), every voxel's "
          "angle about it is unwrapped along the duct, and the lateral wall (outermost lumen radius per "
          "angle bin) is integrated in 3D from the centre of the basal end to the centre of the apical end.")

_WORK_VOXEL_MM = 0.06  # finer scans are block-averaged to about this voxel size
_MIN_VOXELS = 30
_MIN_TURNS = 0.75  # less than this about the fitted axis: not a spiral
_DUCT = 3.0  # a course shorter than this many lumen widths is no duct: no contacts between turns sought


@dataclass(frozen=True)
class CochleaMeasures:
    """What :func:`measure_cochlea` measured (world mm, the mask's affine)."""

    volume_mm3: float  # the measured component's volume
    duct_length_mm: float  # CDL along the lateral wall, basal end to apex
    turns: float  # angle swept about the modiolar axis from the basal end to the apex / 360 deg
    centreline_length_mm: float  # the duct's centreline between the same ends
    method: str  # name: one-sentence description
    modiolar_axis: tuple[float, float, float]  # unit vector, from the basal turn towards the apex
    modiolus_point: tuple[float, float, float]  # a point on the axis (level with the basal end)
    basal_end: tuple[float, float, float]  # centre of the basal end
    apex: tuple[float, float, float]  # centre of the apical end
    handedness: int  # +1: winds right-handed about the axis from base to apex (left/right ears differ)
    axis_residual_mm: float  # rms wobble left in the centreline's radius and height about the axis
    kept_fraction: float  # share of the mask's voxels in the measured component
    tunnels: int  # handles of the measured component: 0 for a duct; more where turns touch
    voxel_mm: float  # the working voxel size (mean over axes)
    touching_turns: bool = False  # two turns touch in the mask (contacts found and cut before ordering the duct)
    contact_voxels: int = 0  # voxels on those contacts
    merged_turns: bool = False  # the duct was ordered along its widest path (turns merged over wide contacts)
    warning: str | None = None  # why the turns and length are doubtful (None: no doubt found)

    def to_dict(self) -> dict:
        """Plain JSON-able values."""
        return asdict(self)


# =========================================================================== preparing the mask
def _working_grid(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` (already cropped, its corner at voxel 0 of ``affine``), block-averaged to about
    0.06 mm where its voxels are finer than about 0.04 mm (a voxel is inside when at least
    half of its block is): (mask, affine)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    f = np.maximum(1, np.round(_WORK_VOXEL_MM / spacing)).astype(int)
    if (f == 1).all():
        return mask, affine
    padded = np.zeros(tuple(int(np.ceil(s / k)) * k for s, k in zip(mask.shape, f)), bool)
    padded[tuple(slice(0, s) for s in mask.shape)] = mask
    shape = [x for s, k in zip(padded.shape, f) for x in (s // k, k)]
    work = 2 * padded.reshape(shape).sum(axis=(1, 3, 5), dtype=np.int32) >= int(np.prod(f))
    step = np.diag(np.append(f.astype(float), 1.0))
    step[:3, 3] = (f - 1) / 2.0
    return work, affine @ step


def _world(index: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.asarray(index, float) @ affine[:3, :3].T + affine[:3, 3]


# =========================================================================== centreline
def geodesic_distance(mask: np.ndarray, spacing: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Geodesic distance (mm) inside ``mask`` from the voxels ``starts`` ((n, 3) indices);
    ``inf`` outside the mask and where it cannot be reached."""
    from skimage.graph import MCP_Geometric

    mcp = MCP_Geometric(np.where(mask, 1.0, np.inf), sampling=tuple(float(s) for s in spacing))
    dist, _ = mcp.find_costs([tuple(int(v) for v in s) for s in np.atleast_2d(starts)])
    return dist


def shell_centreline(world: np.ndarray, dist: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of the shells ``floor(dist / step)`` of points ``world``, in distance order:
    (centreline (m, 3), each point's row in it (n,))."""
    bins = np.floor(dist / step).astype(np.int64)
    counts = np.bincount(bins)
    keep = counts > 0
    path = np.stack([np.bincount(bins, weights=world[:, k])[keep] / counts[keep] for k in range(3)], axis=1)
    row = np.cumsum(keep) - 1
    return path, row[bins]


def spiral_binormal(path: np.ndarray) -> np.ndarray:
    """Mean binormal of a path: the axis it winds around (right-handed winding)."""
    tang = np.diff(path, axis=0)
    b = np.sum(np.cross(tang[:-1], tang[1:]), axis=0)
    n = float(np.linalg.norm(b))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError("cochlea mask is not a spiral: its centreline does not wind about any axis")
    return b / n


# =========================================================================== touching turns
def neighbour_pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mask's voxels ((n, 3) indices) and every pair of 26-neighbours among them (rows a, b)."""
    ids = np.full(mask.shape, -1, np.int32 if mask.size < 2 ** 31 else np.int64)
    idx = np.argwhere(mask)
    ids[tuple(idx.T)] = np.arange(len(idx))
    a, b = [], []
    for off in np.ndindex(3, 3, 3):
        if off <= (1, 1, 1):  # each pair once: the 13 offsets after the centre
            continue
        d = np.subtract(off, 1)
        src = ids[tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(d, mask.shape))]
        dst = ids[tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(d, mask.shape))]
        both = (src >= 0) & (dst >= 0)
        a.append(src[both])
        b.append(dst[both])
    return idx, np.concatenate(a), np.concatenate(b)


def _graph(n: int, a: np.ndarray, b: np.ndarray, weight: np.ndarray):
    from scipy import sparse

    return sparse.coo_matrix((weight, (a, b)), shape=(n, n)).tocsr()


@dataclass(frozen=True)
class DuctCourse:
    """The duct's course through a mask whose turns may touch (what :func:`duct_course` returns)."""

    voxels: np.ndarray  # (n, 3) indices of the mask's voxels
    path: np.ndarray  # rows of the widest path's voxels, from one end of the duct to the other
    position: np.ndarray  # (n,) each voxel's position along the path (mm; nan where not reached)
    width: float  # the lumen's largest diameter on the path (mm)
    contact: np.ndarray  # (n,) True where two turns touch


def duct_course(mask: np.ndarray, spacing: np.ndarray) -> DuctCourse:
    """The duct's course through a mask whose turns may touch, and the contacts between turns.

    The course is the widest path (:func:`_widest_path`). Each voxel's position along it is
    that of its geodesically nearest voxel on it (:func:`_positions`). Two turns touch where
    26-neighbours lie far apart along the course but near in space (:func:`_contacts`).
    """
    idx, a, b = neighbour_pairs(mask)
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1][tuple(idx.T)]
    pts = idx * spacing
    path = _widest_path(pts, a, b, depth)
    course = ndimage.gaussian_filter1d(pts[path], 3.0, axis=0, mode="nearest")
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(course, axis=0), axis=1))])
    width = 2.0 * float(depth[path].max())
    node = _positions(pts, a, b, path, arc, width)
    position = np.where(node >= 0, arc[np.maximum(node, 0)], np.nan)
    contact = np.zeros(len(idx), bool)
    if arc[-1] >= _DUCT * width:  # else no duct: a blob has no turns to touch
        contact = _contacts(a, b, position, course[np.maximum(node, 0)], width, len(idx))
    return DuctCourse(idx, path, position, width, contact)


def _widest_path(pts: np.ndarray, a: np.ndarray, b: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Rows of the path between the two ends of the voxels' widest-path tree: the maximum
    spanning tree of the links ``(a, b)`` weighted by the smaller ``depth`` (distance to the
    mask's edge) of their two voxels, which keeps of every loop the links with the most lumen
    around them, so a loop closed by a contact between two turns (narrower than the duct) is cut
    at the contact. A contact thicker than the duct's thinnest stretch on its loop is not cut:
    there the path takes the shortcut. The ends: farthest along the tree from the voxel nearest
    the centre, then from that end."""
    from scipy.sparse import csgraph

    n = len(pts)
    lo, hi = np.minimum(depth[a], depth[b]), np.maximum(depth[a], depth[b])
    top = float(depth.max())
    # the maximum spanning tree (ties: the deeper other end) as a minimum one on positive weights
    tree = csgraph.minimum_spanning_tree(_graph(n, a, b, 1.0 + (top - lo) + 1e-3 * (top - hi))).tocoo()
    tree = _graph(n, tree.row, tree.col, np.linalg.norm(pts[tree.row] - pts[tree.col], axis=1))
    far = int(np.argmin(np.linalg.norm(pts - pts.mean(0), axis=1)))
    for _ in range(2):
        d, pred = csgraph.dijkstra(tree, directed=False, indices=far, return_predecessors=True)
        start, far = far, int(np.argmax(np.where(np.isfinite(d), d, -1.0)))
    path = [far]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    return np.asarray(path[::-1])


def _positions(pts: np.ndarray, a: np.ndarray, b: np.ndarray, path: np.ndarray, arc: np.ndarray,
               width: float) -> np.ndarray:
    """Each voxel's place on the path (its row in ``path``; -1: not reached): the geodesically
    nearest path voxel at least half a width from the path's ends (at an end the path heads for
    a corner of the end face, not along the duct)."""
    from scipy.sparse import csgraph

    inner = (arc >= 0.5 * width) & (arc <= arc[-1] - 0.5 * width)
    sources = path[inner] if inner.sum() >= 2 else path
    links = _graph(len(pts), a, b, np.linalg.norm(pts[a] - pts[b], axis=1))
    _, _, nearest = csgraph.dijkstra(links, directed=False, indices=sources, min_only=True, return_predecessors=True)
    row = np.full(len(pts), -1)
    row[path] = np.arange(len(path))
    return np.where(nearest >= 0, row[np.maximum(nearest, 0)], -1)


def _contacts(a: np.ndarray, b: np.ndarray, position: np.ndarray, place: np.ndarray, width: float,
              n: int) -> np.ndarray:
    """Voxels where two turns touch: neighbours ``(a, b)`` farther apart along the course
    (``position``) than the lumen is wide and clearly farther than the straight distance
    between their places on it (``place``). In one section of the duct neighbours lie closer
    along it; across the wide, oblique basal end the course runs straight and neighbours can lie
    a width apart along it, but a turn apart the course between them bends round."""
    chord = np.linalg.norm(place[a] - place[b], axis=1)
    with np.errstate(invalid="ignore"):
        along = np.abs(position[a] - position[b])
        jump = (along > width) & (along > 1.25 * chord)
    contact = np.zeros(n, bool)
    contact[a[jump]] = contact[b[jump]] = True
    return contact


# =========================================================================== modiolar axis
def _basis(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e1 = np.cross(w, [1.0, 0.0, 0.0] if abs(w[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(w, e1)


def _cylindrical(pts: np.ndarray, centre: np.ndarray, w: np.ndarray):
    """(x, y, height, unwrapped angle, radius) of an ordered path about the axis (centre, w)."""
    e1, e2 = _basis(w)
    rel = pts - centre
    x, y, h = rel @ e1, rel @ e2, rel @ w
    theta = np.unwrap(np.arctan2(y, x))
    return x, y, h, theta, np.hypot(x, y)


def _last_turn_pole(path: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Start for the axis position: the mean of the path's last full turn (by tangent rotation)."""
    e1, e2 = _basis(w)
    xy = np.stack([path @ e1, path @ e2], axis=1)
    t2 = np.diff(xy, axis=0)
    turn = np.arctan2(t2[:-1, 0] * t2[1:, 1] - t2[:-1, 1] * t2[1:, 0], np.sum(t2[:-1] * t2[1:], axis=1))
    back = np.abs(np.cumsum(turn[::-1]))
    m = len(xy) - 2 - int(np.searchsorted(back, 2 * math.pi)) if back[-1] >= 2 * math.pi else 0
    seg = np.linalg.norm(t2[m:], axis=1)
    mid = 0.5 * (xy[m:-1] + xy[m + 1:])
    pole = (mid * seg[:, None]).sum(0) / max(float(seg.sum()), 1e-12)
    h = float(np.mean(path @ w))
    return pole[0] * e1 + pole[1] * e2 + h * w


def _poly(theta: np.ndarray, degree: int) -> np.ndarray:
    span = max(float(np.ptp(theta)), 1e-9)
    u = 2.0 * (theta - theta.min()) / span - 1.0
    return np.stack([u ** k for k in range(degree + 1)], axis=1)


def fit_modiolar_axis(path: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray, float]:
    """The modiolar axis of a spiral centreline ``path`` (ordered, world mm): (point, unit
    direction, rms residual mm).

    Starting from the mean binormal or the normal of the path's best-fitting plane, and from
    the pole of the path's first or last turn (the path may run either way; from the basal
    turn's pole the fit can lock onto a wrong axis: one demo phantom in 100 read 1.04 turns),
    the axis is moved and tilted until the path's radius and height about it are smooth
    functions of the unwrapped angle (a quartic and a cubic); the start with the smallest
    residual wins. An off-centre axis adds a once-per-turn wobble
    ``a cos(theta) + b sin(theta)`` to the radius, a tilted one ``g . (x, y)`` to the height,
    and the least-squares fit of those terms is the correction.
    """
    best = (float("inf"), None, None)
    for w in _axis_starts(path):
        for ordered in (path, path[::-1]):  # the pole of either end's last turn
            best = min(best, _refine_axis(ordered, w, iterations), key=lambda b: b[0])
    return best[1], best[2], best[0]


def _axis_starts(path: np.ndarray) -> list[np.ndarray]:
    """Starting directions for the axis: the path's mean binormal, and the normal of its
    best-fitting plane (the cochlea is flatter along its axis than across it) turned the
    binormal's way."""
    w = spiral_binormal(path)
    normal = np.linalg.svd(path - path.mean(0), full_matrices=False)[2][-1]
    normal = normal if normal @ w >= 0 else -normal
    return [w, normal] if abs(float(normal @ w)) < 0.999 else [w]


def _refine_axis(path: np.ndarray, w: np.ndarray, iterations: int) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`fit_modiolar_axis` from one starting direction: (rms residual, point, direction)."""
    centre = _last_turn_pole(path, w)
    best = (float("inf"), centre, w)
    for _ in range(iterations):
        e1, e2 = _basis(w)
        x, y, h, theta, r = _cylindrical(path, centre, w)
        a_r = np.column_stack([_poly(theta, 4), np.cos(theta), np.sin(theta)])
        c_r, *_ = np.linalg.lstsq(a_r, r, rcond=None)
        a_h = np.column_stack([_poly(theta, 3), x, y])
        c_h, *_ = np.linalg.lstsq(a_h, h, rcond=None)
        resid = float(np.sqrt(np.mean(np.concatenate([r - a_r @ c_r, h - a_h @ c_h]) ** 2)))
        if resid < best[0]:
            best = (resid, centre, w)
        # damped steps: at most a fifth of the median radius, and 0.1 rad of tilt
        shift, tilt = c_r[-2:], c_h[-2:]
        shift = shift * min(1.0, 0.2 * float(np.median(r)) / max(float(np.hypot(*shift)), 1e-12))
        tilt = tilt * min(1.0, 0.1 / max(float(np.hypot(*tilt)), 1e-12))
        if np.hypot(*shift) < 1e-5 and np.hypot(*tilt) < 1e-6:
            break
        centre = centre + shift[0] * e1 + shift[1] * e2
        w = w - tilt[0] * e1 - tilt[1] * e2
        w = w / np.linalg.norm(w)
    return best


# =========================================================================== lateral wall
def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter1d(values, sigma, mode="nearest") if sigma > 0 else values


def _curve_length(pts: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


def _clip_by_angle(theta: np.ndarray, values: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Rows of ``values`` (sampled at increasing ``theta``) between t0 and t1, with the ends
    interpolated."""
    inner = (theta > t0) & (theta < t1)
    ends = [np.array([np.interp(t, theta, values[:, k]) for k in range(values.shape[1])]) for t in (t0, t1)]
    return np.concatenate([ends[0][None], values[inner], ends[1][None]])


# =========================================================================== the measurement
@dataclass(frozen=True)
class _Spiral:
    """The duct in cylindrical coordinates about its modiolar axis."""

    centre: np.ndarray  # a point on the axis
    w: np.ndarray  # axis, from the basal turn towards the apex
    e1: np.ndarray
    e2: np.ndarray
    theta0: float  # angle of the centreline's basal end in (e1, e2)
    sign: int  # +1: the angle grows from base to apex (right-handed about w)
    theta: np.ndarray  # the centreline's unwrapped angle from its basal end (grows to the apex)
    radius: np.ndarray  # the centreline's distance from the axis (smoothed)
    residual: float

    def rc(self, t: np.ndarray) -> np.ndarray:
        """The centreline's distance from the axis at unwrapped angles ``t``."""
        return np.interp(t, self.theta, self.radius)

    def world(self, t: np.ndarray, radius: np.ndarray, height: np.ndarray) -> np.ndarray:
        """World points at unwrapped angle, distance from the axis and height along it."""
        ang = self.theta0 + self.sign * t
        return (self.centre + (radius * np.cos(ang))[:, None] * self.e1 + (radius * np.sin(ang))[:, None] * self.e2
                + height[:, None] * self.w)


def _prepare(cochlea_mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Checks; the largest component on the working grid: (mask, affine, volume mm3, kept share)."""
    mask = np.asarray(cochlea_mask)
    if mask.ndim != 3:
        raise ValueError(f"cochlea mask must be a 3D array, got shape {mask.shape}")
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("cochlea mask affine must be a finite, invertible 4x4 matrix")
    mask = mask != 0
    n_all = int(np.count_nonzero(mask))
    if n_all == 0:
        raise ValueError("cochlea mask is empty: nothing to measure")
    box = bounding_box(mask)
    comp = largest_component(mask[box]).view(bool)
    n_kept = int(np.count_nonzero(comp))
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box]
    work, waff = _working_grid(comp, affine @ shift)
    work = largest_component(work).view(bool)
    n = int(np.count_nonzero(work))
    if n < _MIN_VOXELS:
        raise ValueError(f"cochlea mask has only {n} voxels at {_fmt_voxel(waff)} mm: too small to measure")
    return work, waff, n_kept * abs(float(np.linalg.det(affine[:3, :3]))), n_kept / n_all


def _cut_ordering(work: np.ndarray, waff: np.ndarray, course: DuctCourse) -> tuple[np.ndarray, np.ndarray]:
    """Voxels ((m, 3) indices) and their geodesic distance along the duct from one of its ends
    (farthest geodesically from the centre, then from that end), in the mask less the contacts
    between its turns (if the largest piece left holds at least half of it)."""
    core = work
    if course.contact.any():
        core = largest_component(_scatter(work.shape, course.voxels[~course.contact])).view(bool)
        if 2 * np.count_nonzero(core) < np.count_nonzero(work):
            core = work
    spacing = np.linalg.norm(waff[:3, :3], axis=0)
    cidx = np.argwhere(core)
    cworld = _world(cidx, waff)
    seed = cidx[np.argmin(np.linalg.norm(cworld - cworld.mean(0), axis=1))]
    d0 = geodesic_distance(core, spacing, seed)[tuple(cidx.T)]
    end = cidx[int(np.argmax(np.where(np.isfinite(d0), d0, -1.0)))]
    return cidx, geodesic_distance(core, spacing, end)[tuple(cidx.T)]


def _scatter(shape: tuple[int, ...], idx: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[tuple(idx.T)] = True
    return out


def _shell_step(spacing: np.ndarray) -> float:
    return max(1.5 * float(spacing.max()), 0.1)


def _centreline(work: np.ndarray, waff: np.ndarray, ordering: tuple[np.ndarray, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centres (world), the centreline (centroids of the ``ordering``'s distance shells),
    and each voxel's row in it (a voxel left out of the ordering: its nearest ordered voxel's)."""
    spacing = np.linalg.norm(waff[:3, :3], axis=0)
    cidx, dist = ordering
    ok = np.isfinite(dist)
    cworld, dist = _world(cidx[ok], waff), dist[ok]
    path, row = shell_centreline(cworld, dist, _shell_step(spacing))
    if len(path) < 8:
        raise ValueError(f"cochlea mask is not a spiral: its longest path is only {dist.max():.2f} mm")
    world = _world(np.argwhere(work), waff)
    if len(cworld) < len(world):
        from scipy.spatial import cKDTree

        row = row[cKDTree(cworld).query(world)[1]]
    else:
        world = cworld
    return world, np.stack([_smooth(path[:, k], 1.0) for k in range(3)], axis=1), row


def _spiral(path: np.ndarray, row: np.ndarray) -> tuple[_Spiral, np.ndarray]:
    """The modiolar axis and the centreline about it, oriented base to apex (the apex is the
    end nearer the axis): (spiral, each voxel's row in the oriented centreline)."""
    centre, w, resid = fit_modiolar_axis(path)
    r = _cylindrical(path, centre, w)[4]
    n_end = max(2, len(path) // 20)
    if np.mean(r[:n_end]) < np.mean(r[-n_end:]):
        path, row = path[::-1], len(path) - 1 - row
    if (path[-1] - path[0]) @ w < 0:
        w = -w
    _, _, _, theta, r = _cylindrical(path, centre, w)
    sign = 1 if theta[-1] >= theta[0] else -1
    rel = sign * (theta - theta[0])
    if not np.isfinite(rel[-1]) or rel[-1] < 2 * math.pi * _MIN_TURNS:
        raise ValueError(f"cochlea mask is not a spiral: it sweeps only {max(rel[-1], 0.0) / (2 * math.pi):.2f} "
                         f"turns about its best axis (at least {_MIN_TURNS} needed)")
    e1, e2 = _basis(w)
    return _Spiral(centre, w, e1, e2, float(theta[0]), sign, rel, _smooth(r, 2.0), resid), row


@dataclass(frozen=True)
class UnwrappedCochlea:
    """A cochlea mask's voxels about its modiolar axis (what :func:`unwrap_cochlea` returns):
    the measures, and every voxel of the measured component on the working grid."""

    measures: CochleaMeasures
    world: np.ndarray  # (n, 3) voxel centres (mm)
    theta: np.ndarray  # unwrapped angle about the axis (rad; 0 = the centreline's basal end, grows to the apex)
    radius: np.ndarray  # distance from the modiolar axis (mm)
    height: np.ndarray  # height along the axis above ``measures.modiolus_point`` (mm)
    basal_angle: float  # unwrapped angle of the basal end (rad)
    apical_angle: float  # unwrapped angle of the apical end (rad)
    voxel_volume_mm3: float  # volume of one working-grid voxel
    affine: np.ndarray  # the working grid's voxel -> world affine


def measure_cochlea(cochlea_mask: np.ndarray, affine: np.ndarray) -> CochleaMeasures:
    """Cochlear duct length along the lateral wall, number of turns and volume of a binary
    cochlea mask (any voxel size, pose and side); see the module's docstring for the method.

    Only the mask's largest 26-connected component is measured (``kept_fraction`` says how
    much of the mask it holds). Raises ``ValueError`` for an empty mask, a mask too small to
    measure, or one that does not wind about an axis (less than 0.75 turns).
    """
    return unwrap_cochlea(cochlea_mask, affine).measures


def unwrap_cochlea(cochlea_mask: np.ndarray, affine: np.ndarray) -> UnwrappedCochlea:
    """:func:`measure_cochlea`, with every measured voxel's unwrapped angle, distance from the
    modiolar axis and height along it (for sections and diameters about the axis)."""
    affine = np.asarray(affine, float)
    work, waff, volume, kept = _prepare(cochlea_mask, affine)
    course = duct_course(work, np.linalg.norm(waff[:3, :3], axis=0))
    length = float(np.nanmax(course.position)) if np.isfinite(course.position).any() else 0.0
    if length < _DUCT * course.width:  # a blob: any axis found for it would be arbitrary
        raise ValueError(f"cochlea mask is not a spiral: its course ({length:.2f} mm) is shorter than {_DUCT:g} "
                         f"lumen widths ({course.width:.2f} mm each)")
    u, merged, warning = _unwrap_along_course(work, waff, course)
    middle = u.middle
    measures = CochleaMeasures(
        volume_mm3=volume, duct_length_mm=_curve_length(u.lateral), turns=(u.t1 - u.t0) / (2 * math.pi),
        centreline_length_mm=_curve_length(middle), method=METHOD, modiolar_axis=_tup(u.sp.w),
        modiolus_point=_tup(u.sp.centre + ((middle[0] - u.sp.centre) @ u.sp.w) * u.sp.w),
        basal_end=_tup(middle[0]), apex=_tup(middle[-1]), handedness=u.sp.sign, axis_residual_mm=u.sp.residual,
        kept_fraction=kept, tunnels=_tunnels(work), voxel_mm=float(np.mean(np.linalg.norm(waff[:3, :3], axis=0))),
        touching_turns=bool(course.contact.any()), contact_voxels=int(np.count_nonzero(course.contact)),
        merged_turns=merged, warning=warning)
    base = measures.modiolus_point
    return UnwrappedCochlea(measures, u.world, u.theta, u.radius, (u.world - np.asarray(base)) @ u.sp.w, u.t0, u.t1,
                            abs(float(np.linalg.det(waff[:3, :3]))), waff)


@dataclass(frozen=True)
class _Unwrapped:
    """One unwrapping of the working mask (what :func:`_unwrap` returns)."""

    sp: _Spiral
    world: np.ndarray  # voxel centres
    theta: np.ndarray  # their unwrapped angle
    radius: np.ndarray  # their distance from the axis
    t0: float  # basal end's angle
    t1: float  # apical end's angle
    lateral: np.ndarray  # the lateral wall, basal end to apex (world mm)
    middle: np.ndarray  # the section's centre, basal end to apex
    wobble: float  # rms of the lateral wall's distance from the axis about its non-increasing fit (mm)

    @property
    def turns(self) -> float:
        return (self.t1 - self.t0) / (2 * math.pi)


def _unwrap(work: np.ndarray, waff: np.ndarray, ordering: tuple[np.ndarray, np.ndarray]) -> _Unwrapped:
    """Axis, unwrapped angles, lateral wall and ends of the mask, its duct ordered by ``ordering``."""
    voxel = float(np.mean(np.linalg.norm(waff[:3, :3], axis=0)))
    world, path, row = _centreline(work, waff, ordering)
    sp, row = _spiral(path, row)
    # every voxel's unwrapped angle: the branch nearest its centreline shell's angle
    rel = world - sp.centre
    shell = sp.theta[row]
    vtheta = shell + _wrap(sp.sign * (np.arctan2(rel @ sp.e2, rel @ sp.e1) - sp.theta0) - shell)
    vr = np.hypot(rel @ sp.e1, rel @ sp.e2)
    wall = _lateral_wall(vtheta, vr - sp.rc(vtheta), rel @ sp.w, sp.rc, voxel)
    t0, t1 = _basal_end(wall), _apical_end(vtheta, vr, sp.rc)
    lateral = _spiral_curve(sp, wall.theta, wall.offset + sp.rc(wall.theta), wall.height, t0, t1)
    middle = _spiral_curve(sp, wall.theta, wall.middle + sp.rc(wall.theta), wall.height, t0, t1)
    if not (np.isfinite(lateral).all() and np.isfinite(middle).all()):
        raise ValueError("cochlea mask is not a spiral: its lateral wall could not be traced about the axis")
    return _Unwrapped(sp, world, vtheta, vr, t0, t1, lateral, middle,
                      _wobble(wall.theta, wall.offset + sp.rc(wall.theta), t0, t1))


_AGREE_TURNS = 0.25  # two orderings of a touching cochlea that differ by more: one crossed a contact
_WOBBLE_VOXELS = 0.75  # a lateral wall that departs more (rms) from an inward spiral: doubtful ordering


def _unwrap_along_course(work: np.ndarray, waff: np.ndarray, course: DuctCourse
                         ) -> tuple[_Unwrapped, bool, str | None]:
    """The unwrapping, whether it is ordered along the widest path, and a warning where the
    turns are doubtful.

    Where no turns touch, the duct is ordered geodesically. Where they touch, it is ordered
    twice: geodesically on the mask less the contacts (precise, but a contact as wide as the
    lumen is not cut and the geodesic takes the shortcut) and by each voxel's position along the
    widest path (which takes the shortcut only where the duct is thinner than the contact); one
    is chosen by :func:`_choose`."""
    if not course.contact.any():
        return _unwrap(work, waff, _cut_ordering(work, waff, course)), False, None
    found: dict[bool, _Unwrapped] = {}
    errors: list[str] = []
    for merged in (False, True):
        try:
            order = (course.voxels, course.position) if merged else _cut_ordering(work, waff, course)
            found[merged] = _unwrap(work, waff, order)
        except ValueError as err:
            errors.append(str(err))
    if not found:
        raise ValueError(errors[0])
    if len(found) == 1:
        merged, u = next(iter(found.items()))
        return u, merged, f"turns touch and one ordering of the duct failed ({errors[0]}): turns and length are doubtful"
    return _choose(found[False], found[True], float(np.mean(np.linalg.norm(waff[:3, :3], axis=0))))


def _choose(geo: _Unwrapped, wide: _Unwrapped, voxel: float) -> tuple[_Unwrapped, bool, str | None]:
    """Of the geodesic and the widest-path unwrappings of a cochlea whose turns touch: a
    shortcut loses turns, so where the two differ by more than :data:`_AGREE_TURNS` the one with
    more turns, with a warning; else the geodesic one, unless its lateral wall wobbles about an
    inward spiral by more than :data:`_WOBBLE_VOXELS` (voxels of a wide contact on the wrong
    turn, or an axis pulled off by them) and the other's less. (unwrapping, whether it is the
    widest path's, warning)"""
    if abs(geo.turns - wide.turns) > _AGREE_TURNS:
        merged = wide.turns > geo.turns
        return (wide if merged else geo), merged, (
            f"turns touch and the duct's two orderings differ by {abs(geo.turns - wide.turns):.2f} turns (one crossed "
            f"a contact between turns; the larger, {max(geo.turns, wide.turns):.2f}, is reported): turns and length "
            "are doubtful")
    if geo.wobble > _WOBBLE_VOXELS * voxel and wide.wobble < geo.wobble:
        return wide, True, None
    return geo, False, None


@dataclass(frozen=True)
class _Wall:
    """The lumen's lateral wall by unwrapped angle (1 degree bins)."""

    theta: np.ndarray  # bin centres (rad, 0 = the centreline's basal end)
    offset: np.ndarray  # lateral wall's radius minus the centreline's (mm)
    middle: np.ndarray  # the section's centre's radius minus the centreline's (mm)
    height: np.ndarray  # mean height along the axis (mm)
    count: np.ndarray  # voxels in the bin


_BIN = math.radians(1.0)
_GAP = 0.1  # the outermost voxel centre lies this many voxels inside the wall, on average


def _windows(theta: np.ndarray, rc: np.ndarray, voxel: float) -> np.ndarray:
    """Half-width (bins) of the window about each bin: 3 degrees, or 1.5 voxels of arc at the
    centreline's radius, at most 30 degrees."""
    half = np.clip(1.5 * voxel / np.maximum(rc, voxel), math.radians(3.0), math.radians(30.0))
    return np.ceil(half / _BIN).astype(int)


def _smooth_steps(v: np.ndarray, j0: np.ndarray, j1: np.ndarray) -> np.ndarray:
    """The running mean of ``v`` over the windows ``[j0, j1)``."""
    cs = np.concatenate([[0.0], np.cumsum(v)])
    return (cs[j1] - cs[j0]) / (j1 - j0)


def _lateral_wall(vtheta: np.ndarray, voff: np.ndarray, vh: np.ndarray, rc, voxel: float) -> _Wall:
    """The lateral wall in 1-degree bins of unwrapped angle ``vtheta``: the outermost voxel
    centre (``voff``: radius minus the centreline's) in a window about the bin, plus a
    sampling correction; the window's mean height (``vh``)."""
    lo = float(vtheta.min())
    b = np.floor((vtheta - lo) / _BIN).astype(np.int64)
    nb = int(b.max()) + 1
    omax = np.full(nb, -np.inf)
    np.maximum.at(omax, b, voff)
    cnt = np.bincount(b, minlength=nb).astype(float)
    csum = np.concatenate([[0.0], np.cumsum(cnt)])
    hsum = np.concatenate([[0.0], np.cumsum(np.bincount(b, weights=vh, minlength=nb))])
    osum = np.concatenate([[0.0], np.cumsum(np.bincount(b, weights=voff, minlength=nb))])
    o2sum = np.concatenate([[0.0], np.cumsum(np.bincount(b, weights=voff * voff, minlength=nb))])
    theta = lo + (np.arange(nb) + 0.5) * _BIN
    k = _windows(theta, rc(theta), voxel)
    j0, j1 = np.maximum(np.arange(nb) - k, 0), np.minimum(np.arange(nb) + k + 1, nb)
    seen = csum[j1] - csum[j0] > 0  # a window with no voxel (a gap in a segmented duct) is bridged

    def bridged(v: np.ndarray) -> np.ndarray:  # across empty windows, linear in angle
        return v if seen.all() else np.interp(theta, theta[seen], v[seen])

    offset = bridged(np.array([omax[a:b].max() for a, b in zip(j0, j1)]))
    # where the lumen narrows along the duct (the apical turn), the window's outermost voxel
    # lies at its basal side: take it again, each bin's outermost voxel moved along the
    # wall's own slope to the bin's angle
    slope = np.gradient(_smooth_steps(offset, j0, j1), theta)
    offset = bridged(np.array([np.max(omax[a:b] + s * (t - theta[a:b])) for a, b, s, t in zip(j0, j1, slope, theta)]))
    offset = offset + _GAP * voxel
    n = np.maximum(csum[j1] - csum[j0], 1.0)
    height = bridged((hsum[j1] - hsum[j0]) / n)
    mean = bridged((osum[j1] - osum[j0]) / n)
    var = bridged(np.maximum((o2sum[j1] - o2sum[j0]) / n - mean ** 2, 0.0))
    # angle bins are wedges: their voxels' mean radius lies var / radius outside the section's centre
    middle = mean - var / np.maximum(rc(theta) + mean, voxel)

    def boxcar(v: np.ndarray) -> np.ndarray:  # the running max and mean step with the window: smooth them
        return _smooth_steps(v, j0, j1)

    return _Wall(theta, boxcar(offset), boxcar(middle), boxcar(height), boxcar(cnt))


def _basal_end(wall: _Wall) -> float:
    """Where the duct's section (voxels per angle, smoothed) first reaches half its largest
    value within the first 60 degrees: the centre of an oblique end face."""
    first = wall.theta <= wall.theta[0] + math.radians(60.0)
    half = 0.5 * float(wall.count[first].max())
    j = int(np.argmax(wall.count >= half))
    if j == 0:
        return float(wall.theta[0] - 0.5 * _BIN)
    c0, c1 = wall.count[j - 1], wall.count[j]
    return float(wall.theta[j - 1] + _BIN * (half - c0) / max(c1 - c0, 1e-9))


def _apical_end(vtheta: np.ndarray, vr: np.ndarray, rc) -> float:
    """The centre of the rounded apical tip: the lumen's largest angle (voxels at least half
    the centreline's radius from the axis) less the angle its last half-width subtends."""
    rv = rc(vtheta)
    far = vr >= 0.5 * rv
    tmax = float(vtheta[far].max())
    near = far & (vtheta >= tmax - math.radians(90.0)) & (vtheta <= tmax - math.radians(30.0))
    if near.sum() < 3:
        near = far & (vtheta >= tmax - math.radians(120.0))
    r_c = float(rc(np.array([tmax]))[0])
    rho = 0.5 * float(np.ptp(vr[near])) if near.any() else 0.0
    return tmax - math.asin(min(1.0, rho / max(r_c, 1e-9)))


def _spiral_curve(sp: _Spiral, theta: np.ndarray, radius: np.ndarray, height: np.ndarray, t0: float,
                  t1: float) -> np.ndarray:
    """World points of a curve given by (distance from the axis, height) per unwrapped angle,
    from t0 to t1. Its distance from the axis is made non-increasing from base to apex (the
    duct spirals inwards): the isotonic fit removes voxel jitter and the partial sections of
    an oblique basal end."""
    c = _clip_by_angle(theta, np.stack([theta, radius, height], 1), t0, t1)
    return sp.world(c[:, 0], isotonic_regression(c[:, 1], increasing=False).x, c[:, 2])


def _wobble(theta: np.ndarray, radius: np.ndarray, t0: float, t1: float) -> float:
    """How far (rms, mm) a wall's distance from the axis departs from its non-increasing fit
    between t0 and t1: small for a spiral about the right axis with its voxels on the right turn."""
    r = _clip_by_angle(theta, radius[:, None], t0, t1)[:, 0]
    return float(np.sqrt(np.mean((r - isotonic_regression(r, increasing=False).x) ** 2)))


def _tunnels(mask: np.ndarray) -> int:
    """Handles of a one-component mask (a clean duct has none; a bridge between two turns
    makes one, and the geodesic centreline may then take the shortcut)."""

    return int(topology(mask)["tunnels"])


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _tup(v) -> tuple[float, float, float]:
    return tuple(float(x) for x in v)


def _fmt_voxel(affine: np.ndarray) -> str:
    return f"{float(np.mean(np.linalg.norm(affine[:3, :3], axis=0))):.3g}"
