"""Nearest-neighbour matching and cycle-consistency masks on the patch grid (pure functions).

Features are per-patch descriptors in flat-index order (`row * grid + col`), already normalised so
that a dot product is the similarity used for pseudo-labelling (½cos_SD + ½cos_DINO, or the DINO
cosine). Candidate sets are boolean masks over the grid. Every function accepts leading batch
dimensions; the matmuls cover only the candidates of each pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diysc.geometry import unflatten_index

CYCLE_MODES = ("none", "strict", "relaxed")


Features = torch.Tensor | Sequence[torch.Tensor]


def nearest_neighbours(
    feat_s: Features, feat_t: Features, cand_s: torch.Tensor, cand_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward nearest neighbours between two images, from one matmul per pair.

    feat_s, feat_t: (..., N, C) descriptors, or for a batch of B pairs also a sequence of B
    (N, C) tensors (so a batch need not be copied into one tensor); cand_s, cand_t: (..., N) bool
    candidate masks. Returns `forward` (..., N): for every source candidate, the flat index of
    the most similar *target candidate*; and `backward` (..., N): for every target candidate, the
    most similar *source candidate*. Entries outside the candidate sets, or where the searched
    set is empty (the caller checks `cand.any(-1)`), are 0. Ties go to the lowest flat index.

    Only the candidate rows and columns are multiplied (|S|·|T|·C FLOPs, not N²·C): the
    candidates are packed in ascending flat order, so "first maximum" is still "lowest flat
    index". Both directions come from the same |S|×|T| block, as the backward NN of a forward
    target searches exactly the source candidates. Pairs are multiplied one at a time: candidate
    counts vary several-fold between images, and padding them to a common size would waste more
    FLOPs than a batched matmul saves.
    """
    lead, n = cand_s.shape[:-1], cand_s.shape[-1]
    if isinstance(feat_s, torch.Tensor):
        feat_s, feat_t = (
            feat_s.reshape(-1, n, feat_s.shape[-1]),
            feat_t.reshape(-1, n, feat_t.shape[-1]),
        )
    cand_s, cand_t = cand_s.reshape(-1, n), cand_t.reshape(-1, n)
    forward = torch.zeros(cand_s.shape, dtype=torch.long, device=cand_s.device)
    backward = torch.zeros_like(forward)
    for b in range(cand_s.shape[0]):
        rows, cols = cand_s[b].nonzero().squeeze(1), cand_t[b].nonzero().squeeze(1)
        if rows.numel() == 0 or cols.numel() == 0:
            continue
        sim = feat_s[b].index_select(0, rows) @ feat_t[b].index_select(0, cols).T  # (|S|, |T|)
        forward[b, rows] = cols[sim.argmax(1)]
        backward[b, cols] = rows[sim.argmax(0)]
    return forward.reshape(*lead, n), backward.reshape(*lead, n)


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
