"""Figures for the notebooks: slices with overlays, look-alike panels, curves, prediction grids.

Functions return matplotlib figures and never call ``plt.show()``; slices are drawn with
the first in-plane axis vertical, in the axis convention of :mod:`innerear.preprocess`.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage

from .preprocess import to_slices

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
    axes = [a for a in range(3) if a != {"sagittal": 0, "coronal": 1, "axial": 2}[orientation]]
    return float(spacing[axes[1]] / spacing[axes[0]])


def orthogonal_views(image: np.ndarray, label: np.ndarray | None = None, spacing: Sequence[float] = (1, 1, 1),
                     center: Sequence[int] | None = None, title: str = "") -> plt.Figure:
    """Sagittal, coronal and axial slices through ``center`` (default: the label's centroid)."""
    if center is None:
        center = (np.round(ndimage.center_of_mass(label)).astype(int) if label is not None and label.any()
                  else np.array(image.shape) // 2)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, view, idx in zip(axes, ("sagittal", "coronal", "axial"), center):
        _show(ax, to_slices(image, view)[idx], f"{view} {idx}", slice_aspect(spacing, view))
        if label is not None:
            _contour(ax, to_slices(label, view)[idx], COLORS["truth"])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def lookalike_mask(image: np.ndarray, label: np.ndarray, margin: float = 0.35) -> np.ndarray:
    """Dark voxels outside the label that are as dark as the lumen: air cells, vessels, canals.

    A voxel is a look-alike when its intensity is below the midpoint between the lumen's
    median and the surrounding bone's median (shifted by ``margin`` towards the lumen) and it
    is not within one voxel of the label.
    """
    label = np.asarray(label) != 0
    near = ndimage.binary_dilation(label, iterations=3) & ~label
    lumen = np.median(image[label])
    bone = np.median(image[near]) if near.any() else np.median(image)
    threshold = lumen + (bone - lumen) * (0.5 - margin / 2)
    dark = image < threshold
    return dark & ~ndimage.binary_dilation(label, iterations=1)


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
