"""Connected components: the largest one (the cascade's post-processing) and topology (components,
cavities, tunnels), for every mask the package measures."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

CONNECTIVITY = {6: 1, 18: 2, 26: 3}  # 3D neighbourhood -> scipy's generate_binary_structure rank


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel of a boolean array, as slices (None when it has none)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _labelled(m: np.ndarray, connectivity: int) -> tuple[tuple[slice, ...], np.ndarray, int, np.ndarray]:
    """A non-empty mask's components on its foreground's bounding box: ``(box, labels, n, sizes)``
    (``sizes[0]`` is 0, the background)."""
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    box = bounding_box(m)
    crop = m[box]
    structure = ndimage.generate_binary_structure(m.ndim, CONNECTIVITY[connectivity])
    try:  # 2 bytes per voxel while there are fewer than 65536 components (almost always)
        labels, n = ndimage.label(crop, structure=structure, output=np.uint16)
    except RuntimeError:
        labels, n = ndimage.label(crop, structure=structure)
    sizes = np.zeros(n + 1, np.int64)
    if n > 1:
        step = max(1, (1 << 22) // max(1, labels[0].size))  # bincount casts to int64: a slab at a time
        for i in range(0, len(labels), step):
            sizes += np.bincount(labels[i:i + step].ravel(), minlength=n + 1)
        sizes[0] = 0
    elif n == 1:
        sizes[1] = np.count_nonzero(crop)
    return box, labels, int(n), sizes


def largest_component(mask: ArrayLike, connectivity: int = 26,
                      return_count: bool = False) -> NDArray[np.uint8] | tuple[NDArray[np.uint8], int]:
    """Keep the largest 3D connected component of a binary volume (empty stays empty).

    ``connectivity`` is 26 (faces, edges and corners touch: the cascade's post-processing),
    18 or 6 (faces only). Labelling runs on the foreground's bounding box only, so a large
    scan with a small mask needs little memory. With ``return_count`` also returns the number
    of components there were. Ties keep the component with the lowest label (first in
    C order).
    """
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    m = np.asarray(mask)  # labelled as it is: any non-zero voxel is foreground (no boolean copy)
    out = np.zeros(m.shape, np.uint8)
    n = 0
    if m.any():
        box, labels, n, sizes = _labelled(m, connectivity)
        if n <= 1:
            out[box] = labels != 0
        else:
            np.equal(labels, int(np.argmax(sizes)), out=out[box].view(bool))
    return (out, int(n)) if return_count else out


def major_components(mask: ArrayLike, fraction: float, connectivity: int = 26) -> NDArray[np.bool_]:
    """Every 3D connected component of at least ``fraction`` of the largest one's voxels (boolean;
    empty stays empty): the largest component and its rivals."""
    m = np.asarray(mask)
    out = np.zeros(m.shape, bool)
    if m.any():
        box, labels, n, sizes = _labelled(m, connectivity)
        if n <= 1:
            out[box] = labels != 0
        else:
            keep = np.flatnonzero(sizes >= fraction * sizes.max())
            out[box] = np.isin(labels, keep[keep > 0])
    return out


def near_largest(mask: ArrayLike, within_vox: float, connectivity: int = 26,
                 min_voxels: int = 0) -> NDArray[np.uint8]:
    """The largest 3D connected component and every other component of at least ``min_voxels``
    that comes within ``within_vox`` voxels (Euclidean, between nearest voxels) of it;
    ``within_vox`` 0 is :func:`largest_component`. A labyrinth that a stage split by a thin missed
    layer (a cochlear turn cut off the vestibule) keeps both pieces; a false positive elsewhere in
    the scan, or a speck beside the labyrinth, is dropped."""
    m = np.asarray(mask)
    if within_vox <= 0 or not m.any():
        return largest_component(m, connectivity)
    out = np.zeros(m.shape, np.uint8)
    box, labels, n, sizes = _labelled(m, connectivity)
    if n <= 1:
        out[box] = labels != 0
        return out
    largest = int(np.argmax(sizes))
    if not np.any(np.delete(sizes, [0, largest]) >= max(1, min_voxels)):  # no other piece could be kept
        out[box] = labels == largest
        return out
    on_largest = labels == largest
    reach = int(np.ceil(within_vox))  # only a component within the largest's box plus this can be near
    near = []
    for i in range(labels.ndim):
        idx = np.flatnonzero(on_largest.any(axis=tuple(j for j in range(labels.ndim) if j != i)))
        near.append(slice(max(0, int(idx[0]) - reach), int(idx[-1]) + reach + 1))
    near = tuple(near)
    local = labels[near]
    distance = ndimage.distance_transform_edt(~on_largest[near])  # 0 on the largest
    present = np.unique(local[(local != 0) & (distance <= within_vox)])
    present = present[(sizes[present] >= min_voxels) | (present == largest)]
    out[box] = np.isin(labels, present)
    return out


def topology(mask: np.ndarray) -> dict[str, int]:
    """Components (26-connected), cavities and tunnels (handles) of a binary mask.

    Uses the 3D Euler characteristic chi = components - tunnels + cavities (26-connectivity
    for the object, 6 for the background).
    """
    from skimage.measure import euler_number

    m = np.pad(np.asarray(mask, bool), 1)
    _, comps = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    _, bg = ndimage.label(~m)  # 6-connected background
    cavities = bg - 1
    chi = int(euler_number(m, connectivity=3))
    return {"components": int(comps), "cavities": int(cavities), "tunnels": int(comps + cavities - chi),
            "euler": chi}
