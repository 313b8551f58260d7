"""Pictures of results: keypoint matches (correct green, wrong red) and PCK curves.

matplotlib with the non-interactive Agg backend; every figure is written atomically and closed.
Every picture has a title; those of a preset whose figures are not results also carry a note
saying so (`figure_note`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from diysc.io import atomic_path  # noqa: E402

CORRECT, WRONG = "#22c55e", "#ef4444"
NOTE_COLOUR = "#b45309"
# Presets that run the code on synthetic data or random weights: their figures measure nothing.
NOT_RESULT_PRESETS = ("tiny", "smoke")


def figure_note(preset: str) -> str:
    """The note on a figure of `preset`: empty, or that its figures are not results."""
    if preset in NOT_RESULT_PRESETS:
        return f"{preset} preset: a pipeline check, not a result"
    return ""


def draw_matches(
    src: Image.Image,
    trg: Image.Image,
    src_xy: np.ndarray,
    pred_xy: np.ndarray,
    out: str | Path,
    correct: np.ndarray | None = None,
    gt_xy: np.ndarray | None = None,
    title: str = "",
    note: str = "",
) -> None:
    """Two images side by side, a line from each source point to its predicted target point.

    With `correct` ((K,) bool) lines are green or red; without it, each match has its own colour.
    `gt_xy` marks the ground-truth target points (white rings) where known. `title` is wrapped to
    the pictures' width, `note` set below it.
    """
    src_xy, pred_xy = np.asarray(src_xy, float), np.asarray(pred_xy, float)
    gap = 8
    height = max(src.height, trg.height)
    canvas = Image.new("RGB", (src.width + gap + trg.width, height), "white")
    canvas.paste(src.convert("RGB"), (0, 0))
    canvas.paste(trg.convert("RGB"), (src.width + gap, 0))
    shift = np.array([src.width + gap, 0.0])
    if correct is not None:
        colours = [CORRECT if c else WRONG for c in np.asarray(correct, bool)]
    else:
        cmap = plt.get_cmap("hsv")
        colours = [cmap(i / max(len(src_xy), 1)) for i in range(len(src_xy))]

    dpi, line_px = 100, 14  # a 9-point line at 100 dpi, with its spacing
    width_chars = max(20, canvas.width // 8)  # about 7 px per character at 9 points
    lines = [*textwrap.wrap(title, width_chars), *textwrap.wrap(note, width_chars)]
    title_px = line_px * len(lines) + (8 if lines else 0)
    fig = plt.figure(figsize=(canvas.width / dpi, (canvas.height + title_px) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, canvas.height / (canvas.height + title_px)))
    ax.imshow(canvas, aspect="auto", extent=(0, canvas.width, canvas.height, 0))
    ax.set_xlim(0, canvas.width)
    ax.set_ylim(canvas.height, 0)
    ax.set_axis_off()
    if gt_xy is not None:
        gt = np.asarray(gt_xy, float) + shift
        ax.scatter(gt[:, 0], gt[:, 1], s=60, facecolors="none", edgecolors="white", linewidths=1.5)
    for p, q, colour in zip(src_xy, pred_xy + shift, colours, strict=True):
        ax.plot([p[0], q[0]], [p[1], q[1]], color=colour, linewidth=1.2, alpha=0.9)
        ax.scatter(
            [p[0], q[0]],
            [p[1], q[1]],
            s=18,
            color=colour,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
    note_from = len(textwrap.wrap(title, width_chars))
    for i, line in enumerate(lines):
        top = 1 - (4 + i * line_px) / (canvas.height + title_px)
        colour = NOTE_COLOUR if i >= note_from else "black"
        fig.text(0.5, top, line, fontsize=9, ha="center", va="top", color=colour)
    _save(fig, out)


def plot_pck_vs_alpha(
    alphas: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    out: str | Path,
    ylabel: str = "PCK (%)",
    note: str = "",
) -> None:
    """One line per method and average: PCK against the threshold α."""
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    _title(ax, "PCK against the threshold α", note)
    order = np.argsort(alphas)
    for name, values in curves.items():
        ax.plot(np.asarray(alphas)[order], np.asarray(values)[order], marker="o", label=name)
    ax.set_xlabel("α (fraction of the target bbox's longer side)")
    _finish_pck_plot(fig, ax, ylabel, out)


def plot_pck_vs_azimuth(
    labels: Sequence[str],
    curves: Mapping[str, Sequence[float | None]],
    out: str | Path,
    ylabel: str = "PCK@0.1 per image (%)",
    note: str = "",
) -> None:
    """One line per method: PCK against the circular azimuth-bin difference (paper Tab. 1)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=100)
    _title(ax, "PCK against the viewpoint change (Tab. 1)", note)
    x = np.arange(len(labels))
    for name, values in curves.items():
        y = np.array([np.nan if v is None else v for v in values], float)
        ax.plot(x, y, marker="o", label=name)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("viewpoint change Δv")
    _finish_pck_plot(fig, ax, ylabel, out)


def _title(ax, title: str, note: str) -> None:
    ax.set_title(title, fontsize=10, loc="center", pad=16 if note else 6)
    if note:
        ax.text(
            0.5,
            1.02,
            note,
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            fontsize=8,
            color=NOTE_COLOUR,
        )


def _finish_pck_plot(fig, ax, ylabel: str, out: str | Path) -> None:
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, pck_axis_top([y for line in ax.get_lines() for y in line.get_ydata()]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)


def pck_axis_top(values: Sequence[float]) -> float:
    """Top of a PCK axis: just above the highest value (at most 100, at least 1).

    A fixed 0–100 axis would flatten the small PCKs of a short run onto the floor."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return min(100.0, max(1.0, 1.15 * max(finite, default=0.0)))


def _save(fig, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
