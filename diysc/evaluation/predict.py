"""Keypoint transfer: similarity rows → predicted target positions.

A source keypoint is looked up at its patch (`pixel_to_patch`); its similarity row over the target
grid gives the prediction, either the hard argmax or the reference's *window soft-argmax*: take
the argmax, keep a `window`×`window` box around it (truncated at the grid border), multiply every
entry outside the box by 0 (as the reference does: 0, not −∞), softmax the row with temperature
β, and return the expected (col, row) (`expected_position`, centred on the argmax for fp32
precision), clamped to the grid. A patch position maps to a pixel at the
patch centre (`patch_centre`).
"""

from __future__ import annotations

import torch

from diysc.geometry import (
    expected_position,
    grid_coords,
    patch_centre,
    pixel_to_patch,
    unflatten_index,
)


def hard_argmax(sim: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, grid²) similarity rows → (N, 2) float (col, row) of each row's maximum."""
    _check_rows(sim, grid)
    return unflatten_index(sim.argmax(dim=1), grid).to(sim.dtype)


def window_soft_argmax(
    sim: torch.Tensor, grid: int, window: int = 15, beta: float = 0.02
) -> torch.Tensor:
    """(N, grid²) similarity rows → (N, 2) float (col, row), the windowed soft-argmax."""
    _check_rows(sim, grid)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1, got {window}")
    coords = grid_coords(grid).to(sim)  # (grid², 2) (col, row)
    peak = unflatten_index(sim.argmax(dim=1), grid).to(sim)  # (N, 2)
    inside = ((coords[None] - peak[:, None]).abs() <= window // 2).all(dim=-1)  # (N, grid²)
    weights = torch.softmax(sim * inside / beta, dim=1)
    return expected_position(weights, peak, grid).clamp(0, grid - 1)


def transfer(
    desc_src: torch.Tensor,
    desc_trg: torch.Tensor,
    src_xy: torch.Tensor,
    size: int,
    grid: int,
    soft: bool = True,
    window: int = 15,
    beta: float = 0.02,
) -> torch.Tensor:
    """Predict where (N, 2) padded-frame source points land in the target image.

    `desc_src`, `desc_trg`: (grid², C) L2-normalised descriptors in flat-index order (cosine rows).
    Returns (N, 2) padded-frame (x, y) in the target image.
    """
    src_patch = pixel_to_patch(src_xy, size, grid)  # (N, 2) (col, row)
    rows = desc_src[src_patch[:, 1] * grid + src_patch[:, 0]]  # (N, C)
    sim = rows @ desc_trg.T  # (N, grid²)
    colrow = window_soft_argmax(sim, grid, window, beta) if soft else hard_argmax(sim, grid)
    return patch_centre(colrow, size, grid)


def _check_rows(sim: torch.Tensor, grid: int) -> None:
    if sim.ndim != 2 or sim.shape[1] != grid * grid:
        raise ValueError(
            f"expected similarity rows of shape (N, {grid * grid}), got {tuple(sim.shape)}"
        )
