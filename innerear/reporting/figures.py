"""Figures for the notebooks: slices with overlays, look-alike panels, curves, prediction grids.

Surfaces and STL files live in :mod:`innerear.io.mesh` (no matplotlib there, for the command
line); they are re-exported here for the notebooks.

Functions return matplotlib figures and never call ``plt.show()``; slices are drawn with
the first in-plane axis vertical, in the axis convention of :mod:`innerear.data.preprocess`.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import ndimage

from innerear.metrics.literature import UNIT_TEXT, quantity_title
from innerear.settings.views import ORIENTATIONS, orientation_axis, to_slices

COLORS = {"truth": "#2ca02c", "pred": "#d62728", "lookalike": "#ff7f0e", "stage": "#1f77b4"}


def _show(ax, img: np.ndarray, title: str | None = None, aspect: float = 1.0) -> None:
    lo, hi = np.percentile(img, [1, 99])
    ax.imshow(np.asarray(img).T, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _contour(ax, mask: np.ndarray, color: str, lw: float = 1.0) -> None:
    mask = np.asarray(mask)
    if mask.any() and not mask.all():
        ax.contour(mask.T.astype(float), levels=[0.5], colors=[color], linewidths=lw, origin="lower")


def slice_aspect(spacing: Sequence[float], orientation: str) -> float:
    """Display aspect of a slice (vertical over horizontal voxel size)."""
    axes = [a for a in range(3) if a != orientation_axis(orientation)]
    return float(spacing[axes[1]] / spacing[axes[0]])


def orthogonal_views(image: np.ndarray, label: np.ndarray | None = None, spacing: Sequence[float] = (1, 1, 1),
                     center: Sequence[int] | None = None, title: str = "") -> plt.Figure:
    """Sagittal, coronal and axial slices through ``center`` (default: the label's centroid)."""
    if center is None:
        center = (np.round(ndimage.center_of_mass(label)).astype(int) if label is not None and label.any()
                  else np.array(image.shape) // 2)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, view, idx in zip(axes, ORIENTATIONS, center):
        _show(ax, to_slices(image, view)[idx], f"{view} {idx}", slice_aspect(spacing, view))
        if label is not None:
            _contour(ax, to_slices(label, view)[idx], COLORS["truth"])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def lookalike_mask(image: np.ndarray, label: np.ndarray, level: float = 0.15, min_voxels: int = 4) -> np.ndarray:
    """Dark structures outside the label that are as dark as the lumen: air cells, vessels, canals.

    A voxel is a look-alike when the lightly smoothed image is below ``lumen + level ×
    (bone − lumen)``, where ``lumen`` is the 10th percentile of the label's voxels (the
    lumen's dark core; thin canals are blurred) and ``bone`` the median of a shell around it,
    it lies at least two voxels from the label, and its 3D component has ``min_voxels``.
    """
    label = np.asarray(label) != 0
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), 1.0)
    shell = ndimage.binary_dilation(label, iterations=3) & ~ndimage.binary_dilation(label, iterations=1)
    lumen = np.percentile(smooth[label], 10)
    bone = np.median(smooth[shell]) if shell.any() else np.median(smooth)
    dark = (smooth < lumen + level * (bone - lumen)) & ~ndimage.binary_dilation(label, iterations=2)
    comp, n = ndimage.label(dark)
    if n:
        sizes = np.bincount(comp.ravel())
        dark &= sizes[comp] >= min_voxels
    return dark


def lookalike_panel(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], n: int = 3,
                    orientation: str = "axial", title: str = "") -> plt.Figure:
    """Slices where dark look-alike structures sit beside the labelled lumen (cf. the paper's Fig. 1).

    Top row: the image alone, as a single-slice network sees it; bottom row: the truth
    (green) and the look-alikes (orange).
    """
    look = lookalike_mask(image, label)
    lab_s = to_slices(label, orientation)
    look_s = to_slices(look, orientation)
    score = np.minimum(lab_s.reshape(len(lab_s), -1).sum(1), look_s.reshape(len(look_s), -1).sum(1))
    candidates = np.argsort(score)[::-1]
    picks: list[int] = []
    for c in candidates:
        if score[c] == 0 or len(picks) == n:
            break
        if all(abs(int(c) - p) > len(lab_s) // (3 * n) for p in picks):
            picks.append(int(c))
    picks = sorted(picks) or [len(lab_s) // 2]
    img_s = to_slices(image, orientation)
    fig, axes = plt.subplots(2, len(picks), figsize=(3.2 * len(picks), 6.4), squeeze=False)
    aspect = slice_aspect(spacing, orientation)
    for j, idx in enumerate(picks):
        _show(axes[0, j], img_s[idx], f"{orientation} slice {idx}", aspect)
        _show(axes[1, j], img_s[idx], "truth (green), look-alikes (orange)", aspect)
        _contour(axes[1, j], lab_s[idx], COLORS["truth"])
        _contour(axes[1, j], look_s[idx], COLORS["lookalike"])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_histories(histories: dict[str, list[dict]], key: str = "loss", title: str = "") -> plt.Figure:
    """Training curves (one line per run) of ``key`` against epoch."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, rows in histories.items():
        if rows:
            ax.plot([r["epoch"] + 1 for r in rows], [r[key] for r in rows], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def structure_dice_plot(per_volume, structures: Sequence[str] = ("cochlea", "vestibule", "canals"),
                        methods: Sequence[str] | None = None, title: str = "") -> plt.Figure:
    """Per-structure Dice per method: one group of bars per method, one bar per structure
    (mean over held-out volumes), each volume's value as a dot on its bar."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(per_volume["method"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(methods)), 3.6))
    width = 0.8 / len(structures)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, name in enumerate(structures):
        col = f"dice_{name}"
        for i, method in enumerate(methods):
            values = per_volume.loc[per_volume["method"] == method, col].astype(float).to_numpy()
            x = i + (j - (len(structures) - 1) / 2) * width
            ax.bar(x, np.nanmean(values) if values.size else np.nan, width, color=colors[j % len(colors)],
                   alpha=0.75, label=name if i == 0 else None)
            ax.plot(np.full(values.size, x), values, "k.", ms=3)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("Dice per structure")
    ax.set_ylim(0, 1.12)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(structures), loc="upper center", frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def prediction_grid(image: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray],
                    spacing: Sequence[float], orientation: str = "axial", indices: Sequence[int] | None = None,
                    n: int = 3) -> plt.Figure:
    """Rows of slices: image, truth and each named prediction (contours on the image)."""
    img_s = to_slices(image, orientation)
    tru_s = to_slices(truth, orientation)
    if indices is None:
        counts = tru_s.reshape(len(tru_s), -1).sum(1)
        nz = np.flatnonzero(counts)
        indices = [int(nz[int(q * (len(nz) - 1))]) for q in np.linspace(0.2, 0.8, n)] if len(nz) else [len(img_s) // 2]
    cols = 2 + len(predictions)
    aspect = slice_aspect(spacing, orientation)
    fig, axes = plt.subplots(len(indices), cols, figsize=(2.3 * cols, 2.4 * len(indices)), squeeze=False)
    for i, idx in enumerate(indices):
        _show(axes[i, 0], img_s[idx], f"image ({orientation} {idx})" if i == 0 else None, aspect)
        _show(axes[i, 1], img_s[idx], "truth" if i == 0 else None, aspect)
        _contour(axes[i, 1], tru_s[idx], COLORS["truth"])
        for j, (name, pred) in enumerate(predictions.items()):
            ax = axes[i, 2 + j]
            _show(ax, img_s[idx], name if i == 0 else None, aspect)
            _contour(ax, tru_s[idx], COLORS["truth"], 0.8)
            _contour(ax, to_slices(pred, orientation)[idx], COLORS["pred"], 1.0)
    fig.tight_layout()
    return fig


def channel_panel(channels: np.ndarray, label: np.ndarray, spacing: Sequence[float], orientation: str,
                  index: int, names: Sequence[str]) -> plt.Figure:
    """The input channels one stage sees for one slice, and the slice's truth."""
    ch_s = to_slices(channels, orientation)[index]
    lab_s = to_slices(label, orientation)[index]
    k = ch_s.shape[-1]
    fig, axes = plt.subplots(1, k + 1, figsize=(2.6 * (k + 1), 2.8), squeeze=False)
    aspect = slice_aspect(spacing, orientation)
    for c in range(k):
        _show(axes[0, c], ch_s[..., c], names[c], aspect)
    _show(axes[0, k], lab_s.astype(float), "target (truth)", aspect)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 3D surfaces
def plotly_surfaces(meshes: dict[str, tuple[np.ndarray, np.ndarray]], colors: dict[str, str] | None = None,
                    intensity: dict[str, np.ndarray] | None = None, opacity: dict[str, float] | None = None,
                    title: str = "", cmax: float | None = None):
    """An interactive plotly figure of named surfaces (``Mesh3d``), optionally colour-mapped."""
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = ["#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
    for i, (name, (v, f)) in enumerate(meshes.items()):
        if len(f) == 0:
            continue
        kw = dict(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], name=name, showlegend=True,
                  opacity=(opacity or {}).get(name, 1.0), flatshading=False,
                  lighting=dict(ambient=0.45, diffuse=0.8, specular=0.2))
        if intensity and name in intensity:
            kw.update(intensity=intensity[name], colorscale="Turbo", cmin=0, cmax=cmax,
                      colorbar=dict(title="mm", len=0.6))
        else:
            kw.update(color=(colors or {}).get(name, palette[i % len(palette)]))
        fig.add_trace(go.Mesh3d(**kw))
    fig.update_layout(title=title, scene=dict(aspectmode="data", xaxis_title="x (mm)", yaxis_title="y (mm)",
                                              zaxis_title="z (mm)"),
                      margin=dict(l=0, r=0, t=40 if title else 0, b=0), height=520,
                      legend=dict(itemclick="toggle"))
    return fig


def offline_html(fig, include_plotlyjs: bool = True) -> str:
    """HTML of a plotly figure with plotly.js embedded (no CDN), for offline pages."""
    return fig.to_html(include_plotlyjs=include_plotlyjs, full_html=False, config={"displaylogo": False})


def render_views(verts: np.ndarray, faces: np.ndarray, views: Sequence[tuple[float, float]] = ((20, -60), (20, 30), (80, 0), (-10, 150)),
                 color: str = "#d9a441", title: str = "", max_faces: int = 60000) -> plt.Figure:
    """Static multi-view renders of one surface (cf. the paper's Figure 5)."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if len(faces) > max_faces:  # keep the figure light: every k-th face
        faces = faces[:: int(np.ceil(len(faces) / max_faces))]
    tri = verts[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, 0.3, 0.9]) / np.linalg.norm([0.3, 0.3, 0.9])
    shade = 0.35 + 0.65 * np.abs(normals @ light)
    base = np.array(matplotlib_colors_to_rgb(color))
    facecolors = np.clip(shade[:, None] * base[None, :], 0, 1)
    fig = plt.figure(figsize=(3.2 * len(views), 3.4))
    lo, hi = verts.min(0), verts.max(0)
    for i, (elev, azim) in enumerate(views):
        ax = fig.add_subplot(1, len(views), i + 1, projection="3d")
        ax.add_collection3d(Poly3DCollection(tri, facecolors=facecolors, edgecolor="none"))
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
        ax.set_box_aspect(hi - lo)
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        ax.set_title(f"elev {elev}°, azim {azim}°", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def matplotlib_colors_to_rgb(color: str) -> tuple[float, float, float]:
    """A matplotlib colour as an RGB triple in [0, 1]."""
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def live_view(image: np.ndarray, label: np.ndarray | None = None):
    """An itkwidgets volume view for JupyterLab (opt-in; it loads its viewer from the network).

    Returns the viewer, or ``None`` with a printed explanation when itkwidgets is missing.
    """
    try:
        from itkwidgets import view  # type: ignore[import-not-found]
    except Exception as exc:  # not installed, or its viewer cannot load
        print(f"itkwidgets is not available ({type(exc).__name__}: {exc}). Install the optional extra with "
              "`pip install -e '.[itk]'` and run this cell in JupyterLab with network access.")
        return None
    return view(image=image, label_image=label)


def morphometry_table(comparisons) -> pd.DataFrame:
    """Phantoms beside the literature, one row per quantity, with column names for people
    (``comparisons``: :func:`innerear.metrics.literature.compare`)."""
    def num(x: float) -> str:
        return f"{x:.3g}" if np.isfinite(x) else "not measured"

    def short(source: str, width: int = 32) -> str:
        return source if len(source) <= width else source[: width - 1].rstrip(" ,(") + "…"

    rows = []
    for c in comparisons:
        band = f"{num(c.band[0])}–{num(c.band[1])}, {c.band_kind.replace('+-', '±')}" if c.band else "no spread"
        # a source that gives a range only has no mean: say so, not "not measured"
        literature = (f"{num(c.reference_mean)} ({band})" if np.isfinite(c.reference_mean)
                      else f"range only ({band})")
        rows.append({"quantity": quantity_title(c.quantity), "unit": UNIT_TEXT.get(c.unit, c.unit),
                     "phantoms: median (range)": f"{num(c.median)} ({num(c.low)}–{num(c.high)})",
                     "literature: mean (band)": literature,
                     "median in band": {True: "yes", False: "NO", None: "no band"}[c.median_in_band],
                     "source": short(c.source)})
    return pd.DataFrame(rows).set_index("quantity")


def morphometry_figure(comparisons, measured, ncols: int = 3) -> plt.Figure:
    """One panel per quantity: the literature's band (dark) and limits (light) as spans, the
    phantoms as dots (``measured``: objects with ``values()``, e.g. ``Morphometry``)."""
    values = [m.values() for m in measured]
    nrows = max(1, int(np.ceil(len(comparisons) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 1.5 * nrows), squeeze=False)
    for ax, c in zip(axes.ravel(), comparisons):
        v = np.array([float(r.get(c.quantity, np.nan)) for r in values])
        v = v[np.isfinite(v)]
        if c.limits:
            ax.axvspan(*c.limits, color="#c6dbef", label="published range ± 10 %")
        if c.band:
            ax.axvspan(*c.band, color="#6baed6", label="published band")
        ax.axvline(c.reference_mean, color="#08519c", lw=1)
        jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(v))
        ax.plot(v, jitter, "o", ms=3, color="#d62728", label="phantoms")
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        unit = "" if c.unit == "turns" else f" ({UNIT_TEXT.get(c.unit, c.unit)})"
        ax.set_title(f"{quantity_title(c.quantity)}{unit}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(comparisons):]:
        ax.axis("off")
    handles = [Patch(color="#6baed6", label="published band (mean ± SD, IQR or range)"),
               Patch(color="#c6dbef", label="published range ± 10 %"),
               Line2D([], [], color="#08519c", label="published mean"),
               Line2D([], [], marker="o", ls="", ms=3, color="#d62728", label="phantoms (synthetic)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
