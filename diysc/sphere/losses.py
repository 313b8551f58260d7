"""The four SphericalMaps training losses, as pure functions on tensors.

Shapes: `sphere` (B, N, 3) with unit vectors on foreground patches and zero vectors on background
(the mapper output times the mask), `fg` (B, N) bool, `coords` (N, 2) image positions of the
patches as (row, col): the reference's order, which fixes which of the two mirror-image spheres
the orientation loss selects.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diysc.azimuth import AZIMUTH_BINS
from diysc.geometry import grid_coords


def prototype_loss(
    features: torch.Tensor, reconstruction: torch.Tensor, fg: torch.Tensor
) -> torch.Tensor:
    """Mean 1 − cos(feature, reconstruction) over the foreground patches of the batch."""
    cos = F.cosine_similarity(features[fg], reconstruction[fg], dim=-1)
    return (1 - cos).mean() if cos.numel() else reconstruction.sum() * 0


def viewpoint_loss(
    sphere: torch.Tensor, azimuth: torch.Tensor, bins: int = AZIMUTH_BINS
) -> torch.Tensor:
    """MSE between m_i·m_j and cos(2π(a_i − a_j)/bins) over all pairs of the batch.

    m_i is the normalised mean of image i's sphere points (background zeros included in the mean,
    as the reference; the normalisation makes them matter only through the direction).
    """
    mean = F.normalize(sphere.mean(dim=1), dim=-1)
    predicted = mean @ mean.T
    angle = 2 * math.pi * azimuth.to(sphere.dtype) / bins
    target = torch.cos(angle[:, None] - angle[None, :])
    return F.mse_loss(predicted, target)


def sample_triplets(
    fg: torch.Tensor, count: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` random foreground patch triplets per image, drawn uniformly with replacement.

    Returns (image index (T,), patch indices (T, 3)); images without foreground give none.
    """
    images = torch.nonzero(fg.any(dim=1)).squeeze(1)
    if images.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=fg.device)
        return empty, empty.view(0, 3)
    weights = fg[images].float()
    patches = torch.multinomial(weights.cpu(), 3 * count, replacement=True, generator=generator)
    patches = patches.to(fg.device).view(-1, count, 3)
    return images.repeat_interleave(count), patches.reshape(-1, 3)


def _gather(sphere: torch.Tensor, image: torch.Tensor, patches: torch.Tensor):
    """Sphere points of each triplet member: three (T, 3) tensors."""
    points = sphere[image[:, None], patches]  # (T, 3, 3)
    return points.unbind(1)


def triplet_distance_loss(
    sphere: torch.Tensor,
    coords: torch.Tensor,
    image: torch.Tensor,
    patches: torch.Tensor,
    margin: float = 0.5,
) -> torch.Tensor:
    """Relative distances: the patch nearer the anchor in the image must be nearer on the sphere.

    Hinge mean of d(a, p) − d(a, n) + margin with the cosine distance d = 1 − cos; p is the member
    nearer to the anchor in the image (the second member on ties).
    """
    if image.numel() == 0:
        return sphere.sum() * 0
    a, b, c = _gather(sphere, image, patches)
    ia, ib, ic = coords[patches].unbind(1)
    b_nearer = ((ib - ia) ** 2).sum(-1) < ((ic - ia) ** 2).sum(-1)
    positive = torch.where(b_nearer[:, None], b, c)
    negative = torch.where(b_nearer[:, None], c, b)
    d_pos = 1 - F.cosine_similarity(a, positive, dim=-1)
    d_neg = 1 - F.cosine_similarity(a, negative, dim=-1)
    return (d_pos - d_neg + margin).clamp(min=0).mean()


def triplet_orientation_loss(
    sphere: torch.Tensor,
    coords: torch.Tensor,
    image: torch.Tensor,
    patches: torch.Tensor,
    threshold: float = 1.0,
    min_det: float = 0.7,
) -> torch.Tensor:
    """Triplets must keep their handedness from the image to the sphere (no mirrored sphere).

    For an image triplet (a, b, c) whose unit directions a→b, a→c are far from parallel
    (|det| > `min_det`), order the other two members (d1, d2) so that det(a→d1, a→d2) > 0. On the
    sphere, project d1 − a and d2 − a onto the tangent plane at a, normalise them, and take
    s = (t1 × t2)·a, the signed sine of the angle between them. The loss is mean((threshold − s)₊²):
    with threshold 1 it is 0 only for a correctly oriented right angle, about 1 for collapsed
    points and 4 for a mirrored right angle.
    """
    if image.numel() == 0:
        return sphere.sum() * 0
    ia, ib, ic = coords[patches].unbind(1)
    u = F.normalize(ib - ia, dim=-1)
    v = F.normalize(ic - ia, dim=-1)
    det = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    strong = det.abs() > min_det
    if not strong.any():
        return sphere.sum() * 0
    a, b, c = _gather(sphere, image[strong], patches[strong])
    positive = (det[strong] > 0)[:, None]
    d1, d2 = torch.where(positive, b, c), torch.where(positive, c, b)

    def tangent(d: torch.Tensor) -> torch.Tensor:
        t = d - a
        return F.normalize(t - a * (a * t).sum(-1, keepdim=True), dim=-1)

    signed_sine = (torch.cross(tangent(d1), tangent(d2), dim=-1) * a).sum(-1)
    return (threshold - signed_sine).clamp(min=0).pow(2).mean()


def patch_coords(grid: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(grid², 2) (row, col) of every patch in flat-index order, scaled to [0, 1] as the reference."""
    row_col = grid_coords(grid).flip(-1)
    return (row_col / max(grid - 1, 1)).to(device)
