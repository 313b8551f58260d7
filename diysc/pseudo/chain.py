"""Match propagation along image chains, back-tracked to aligned per-image index lists.

A chain is K images I0 … I(K-1). Link k matches the points that survived link k-1 (for k = 0: the
candidates of I0) to the candidates of I(k+1) by nearest neighbour; the backward NN of the cycle
check searches only that surviving set, as in the reference. A point that fails any link is
removed from every list (back-tracking), so row m of the K lists is one chain of correspondences
I0[m] ↔ I1[m] ↔ … ↔ I(K-1)[m]; the ordered pair (i, j) gets the composed correspondences
list_i ↔ list_j.

Rows are tracked by their starting patch in I0: each link is a function of the patch index alone,
so carrying the I0 identity through the chain and dropping failed rows is exactly the reference's
`isin` back-tracking, including duplicates (several rows may reach the same patch of a later image).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from diysc.pseudo.matching import Features, cycle_mask, nearest_neighbours


def match_link(
    feat_s: Features,
    feat_t: Features,
    sources: torch.Tensor,
    cand_t: torch.Tensor,
    cycle: str,
    grid: int,
    r_max: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One link for every source patch at once.

    feat_*: (B, N, C), or B (N, C) tensors; sources, cand_t: (B, N) bool. Returns `target`
    (B, N): the NN of each source patch among the target candidates (0 off `sources`), and
    `consistent` (B, N): whether the patch is a source whose match passes the cycle check
    (backward NN searched among `sources`) and the target has any candidate. Only sources ×
    target candidates are multiplied.
    """
    forward, backward = nearest_neighbours(feat_s, feat_t, sources, cand_t)
    back = backward.gather(-1, forward)
    patches = torch.arange(forward.shape[-1], device=forward.device).expand_as(forward)
    consistent = cycle_mask(cycle, patches, back, grid, r_max) & sources
    consistent &= cand_t.any(-1, keepdim=True)
    return forward, consistent


def propagate(
    feats: torch.Tensor | Sequence[Sequence[torch.Tensor]],
    cands: torch.Tensor,
    cycle: str,
    grid: int,
    r_max: int,
    first_link: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propagate matches along a batch of chains.

    feats: (B, K, N, C) similarity descriptors, or B chains of K (N, C) tensors (a batch of
    cached images need not be copied into one tensor); cands: (B, K, N) bool candidate masks.
    Returns `positions` (B, K, N): the patch in image k reached by the row that starts at patch n
    of I0 (meaningful where the row is alive), and `alive` (B, N): rows that start on a candidate
    of I0 and pass every link.

    `first_link`: the (target, consistent) that `match_link` gives for I0 → I1 with every
    candidate of I0 as a source, when the caller already has it (the first link depends on the
    two images alone, and a pair of images starts many chains of a category).
    """
    b, k, n = cands.shape
    pos = torch.arange(n, device=cands.device).expand(b, n)
    alive = cands[:, 0].clone()
    positions = [pos]
    for link in range(k - 1):
        # The surviving set of image `link` (an OR-scatter: several rows may share a patch).
        sources = torch.zeros(b, n, dtype=torch.int32, device=cands.device)
        sources = sources.scatter_add_(1, pos, alive.int()) > 0
        if link == 0 and first_link is not None:
            target, consistent = first_link
        else:
            target, consistent = match_link(
                [chain[link] for chain in feats],
                [chain[link + 1] for chain in feats],
                sources,
                cands[:, link + 1],
                cycle,
                grid,
                r_max,
            )
        alive = alive & consistent.gather(1, pos)
        pos = target.gather(1, pos)
        positions.append(pos)
    return torch.stack(positions, dim=1), alive


def aligned_lists(positions: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """(K, N) positions and (N,) alive of one chain → (K, M) aligned index lists of survivors."""
    return positions[:, alive]


def ordered_pairs(k: int) -> list[tuple[int, int]]:
    """All K·(K-1) ordered pairs (i, j), i ≠ j, of a K-chain."""
    return list(itertools.permutations(range(k), 2))
