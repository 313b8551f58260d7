"""A literal restatement of the released code's chain propagation, the baseline of
`bench/pseudo_labels.py`.

Per link, the surviving source list (duplicates kept) is matched to the target's candidates by one
matmul, and the matched targets are matched back to the source list by a second matmul; the
relaxed check compares the patches' top-left corners in pixels (`stride · (row, col)`, as int)
with `‖·‖ ≤ r_max · stride`. The four aligned lists are then back-tracked with `torch.isin`.
Written from the description of the algorithm, for timing and for checking diysc's output; not
used by the package.
"""

from __future__ import annotations

import torch


def nn_indices(feat_i: torch.Tensor, feat_j: torch.Tensor) -> torch.Tensor:
    """For every row of feat_i, the row of feat_j with the largest dot product."""
    return torch.argmax(feat_i @ feat_j.T, dim=-1)


def cycle_consistent_link(
    feats: torch.Tensor,
    i1: int,
    i2: int,
    sources: torch.Tensor,
    targets: torch.Tensor,
    kps_grid: torch.Tensor,
    rej_th: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One link: forward NN of `sources` among `targets`, backward NN among `sources`, relaxed
    check. Returns the kept (source, target) flat indices, aligned."""
    matched = targets[nn_indices(feats[i1, sources], feats[i2, targets])]
    back = sources[nn_indices(feats[i2, matched], feats[i1, sources])]
    distance = torch.norm(kps_grid[sources].float() - kps_grid[back].float(), dim=1)
    keep = distance <= rej_th
    return sources[keep], matched[keep]


def reference_chain(
    feats: torch.Tensor, candidates: list[torch.Tensor], grid: int, stride: float, r_max: int
) -> list[torch.Tensor]:
    """feats (K, N, C), candidates: K ascending flat-index tensors → K aligned index lists."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), dim=-1
    ).reshape(-1, 2)
    kps_grid = (stride * coords.float()).to(torch.int)
    k = len(candidates)
    links, sources = [], candidates[0]
    for i in range(k - 1):
        kept_s, sources = cycle_consistent_link(
            feats, i, i + 1, sources, candidates[i + 1], kps_grid, r_max * stride
        )
        links.append((kept_s, sources))
    final = [None] * k
    final[-2], final[-1] = links[-1]
    for i in range(-2, -k, -1):
        kept_s, kept_t = links[i]
        final[i - 1] = kept_s[torch.isin(kept_t, final[i])]
    return final
