"""Rejection filters of pseudo-labels: each keeps or drops the matches of every emitted pair.

Generation applies those `diysc.filter_steps.REJECTIONS` names, in order, as
`function(matches, settings) -> (B, P, N) bool` (True: keep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Matches:
    """A batch's correspondences per ordered pair of each chain, as a rejection filter sees them."""

    src: torch.Tensor  # (B, P, N) patch in the pair's first image of each row
    trg: torch.Tensor  # (B, P, N) patch in its second image
    first: torch.Tensor  # (P,) chain position of each pair's first image
    second: torch.Tensor  # (P,) and of its second
    spheres: torch.Tensor | None  # (B, K, N, 3) sphere points of the chain's images, if loaded

    def sphere_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, N, 3) sphere points at each row's source and target patch."""
        if self.spheres is None:
            raise ValueError("the sphere points were not loaded (sphere_filter is off)")
        return _take(self.spheres[:, self.first], self.src), _take(
            self.spheres[:, self.second], self.trg
        )


def sphere_keep(points_s: torch.Tensor, points_t: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep a match iff the geodesic angle between its unit sphere points is ≤ threshold·π.

    points_*: (..., 3) unit vectors. Inclusive, as the reference (`acos` of the clamped cosine);
    computed in float64 so that boundary angles such as π/2 compare exactly.
    """
    cos = (points_s.double() * points_t.double()).sum(-1).clamp(-1.0, 1.0)
    return torch.acos(cos) <= threshold * math.pi


def reject_by_sphere(matches: Matches, settings) -> torch.Tensor:
    """The sphere filter (paper Eq. 5) at `settings.sphere_threshold`."""
    return sphere_keep(*matches.sphere_points(), settings.sphere_threshold)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, P, N, D), index (B, P, M) → (B, P, M, D)."""
    return values.gather(2, index.unsqueeze(-1).expand(*index.shape, values.shape[-1]))
