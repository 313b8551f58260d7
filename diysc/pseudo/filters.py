"""Spherical rejection of pseudo-labels."""

from __future__ import annotations

import math

import torch


def sphere_keep(points_s: torch.Tensor, points_t: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep a match iff the geodesic angle between its unit sphere points is ≤ threshold·π.

    points_*: (..., 3) unit vectors. Inclusive, as the reference (`acos` of the clamped cosine);
    computed in float64 so that boundary angles such as π/2 compare exactly.
    """
    cos = (points_s.double() * points_t.double()).sum(-1).clamp(-1.0, 1.0)
    return torch.acos(cos) <= threshold * math.pi
