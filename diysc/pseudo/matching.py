"""Nearest-neighbour matching and cycle-consistency masks on the patch grid (pure functions).

Features are per-patch descriptors in flat-index order (`row * grid + col`), already normalised so
that a dot product is the similarity used for pseudo-labelling (½cos_SD + ½cos_DINO, or the DINO
cosine). Candidate sets are boolean masks over the grid. Every function accepts a leading batch
dimension, so a batch of image pairs is one batched matmul.
"""

from __future__ import annotations

import torch

from diysc.geometry import unflatten_index

CYCLE_MODES = ("none", "strict", "relaxed")


def nearest_neighbours(
    feat_s: torch.Tensor, feat_t: torch.Tensor, cand_s: torch.Tensor, cand_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward nearest neighbours between two images, from one matmul.

    feat_s, feat_t: (..., N, C) descriptors; cand_s, cand_t: (..., N) bool candidate masks.
    Returns `forward` (..., N): for every source patch, the flat index of the most similar *target
    candidate*; and `backward` (..., N): for every target patch, the most similar *source
    candidate*. Entries are meaningful only where the searched set is non-empty (the caller
    checks `cand.any(-1)`); ties go to the lowest flat index.
    """
    sim = feat_s @ feat_t.transpose(-1, -2)  # (..., N_s, N_t)
    ninf = torch.tensor(float("-inf"), dtype=sim.dtype, device=sim.device)
    forward = torch.where(cand_t.unsqueeze(-2), sim, ninf).argmax(-1)
    # The forward pass is done with `sim`; reuse its storage for the backward search.
    backward = sim.masked_fill_(~cand_s.unsqueeze(-1), ninf).argmax(-2)
    return forward, backward


def strict_cycle_mask(source: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """Keep a match iff the back-match returns exactly to its source patch (mutual NN)."""
    return source == back


def relaxed_cycle_mask(
    source: torch.Tensor, back: torch.Tensor, grid: int, r_max: int
) -> torch.Tensor:
    """Keep a match iff the back-match lies within `r_max` patches of the source (Euclidean on
    the patch grid, inclusive): dx² + dy² ≤ r_max², evaluated exactly in integers."""
    d = unflatten_index(source, grid) - unflatten_index(back, grid)
    return (d * d).sum(-1) <= r_max * r_max


def cycle_mask(
    mode: str, source: torch.Tensor, back: torch.Tensor, grid: int, r_max: int
) -> torch.Tensor:
    """Dispatch on the `cycle` toggle: none keeps every match."""
    if mode == "none":
        return torch.ones_like(source, dtype=torch.bool)
    if mode == "strict":
        return strict_cycle_mask(source, back)
    if mode == "relaxed":
        return relaxed_cycle_mask(source, back, grid, r_max)
    raise ValueError(f"unknown cycle mode {mode!r}; expected one of {CYCLE_MODES}")
