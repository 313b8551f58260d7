"""How well a sphere separates what it must: figures from keypoint ground truth.

For the images of one category, each visible keypoint is looked up at its patch:
- *same keypoint*: the angle between the sphere points of one keypoint slot in two different
  images. Small is good; `keypoint_kept` is the share within the pseudo-label sphere filter's
  threshold (`pseudo.sphere_threshold`·π, inclusive as the filter).
- *counterparts*: the angle between the sphere points of the two members of a left/right pair
  (slots [i, j] of the annotation's `symmetry_pairs`), one in each of two different images — the
  wrong matches the sphere filter must reject. `counterpart_separated` is the share beyond it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from diysc.geometry import ResizePad, flat_index, pixel_to_patch


def angles_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (radians) between unit vectors along the last dimension."""
    return torch.arccos((a * b).sum(-1).clamp(-1, 1))


def same_keypoint_angles(points: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """points (M, K, 3), visible (M, K) → angles of each slot over every pair of images i < j."""
    cos = torch.einsum("ikd,jkd->ijk", points, points).clamp(-1, 1)
    m = points.shape[0]
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool), diagonal=1)
    valid = visible[:, None, :] & visible[None, :, :] & upper[:, :, None]
    return torch.arccos(cos[valid])


def counterpart_angles(
    points: torch.Tensor, visible: torch.Tensor, pairs: torch.Tensor
) -> torch.Tensor:
    """Angles between slot i in image a and slot j in image b ≠ a, for each pair [i, j] (Q, 2)."""
    if pairs.numel() == 0:
        return torch.zeros(0)
    left, right = points[:, pairs[:, 0]], points[:, pairs[:, 1]]  # (M, Q, 3)
    cos = torch.einsum("aqd,bqd->abq", left, right).clamp(-1, 1)
    m = points.shape[0]
    other = ~torch.eye(m, dtype=torch.bool)
    valid = visible[:, pairs[:, 0]][:, None, :] & visible[:, pairs[:, 1]][None, :, :]
    return torch.arccos(cos[valid & other[:, :, None]])


def summarise(
    same: torch.Tensor, counterpart: torch.Tensor, threshold: float
) -> dict[str, float | int | None]:
    """Means in degrees and the shares on either side of `threshold`·π."""
    limit = threshold * math.pi

    def mean_deg(x: torch.Tensor) -> float | None:  # None (JSON null) when nothing to measure
        return float(torch.rad2deg(x.double().mean())) if x.numel() else None

    def share(x: torch.Tensor) -> float | None:
        return float(x.double().mean()) if x.numel() else None

    return {
        "keypoint_angle_deg": mean_deg(same),
        "keypoint_kept": share(same <= limit),
        "keypoint_pairs": int(same.numel()),
        "counterpart_angle_deg": mean_deg(counterpart),
        "counterpart_separated": share(counterpart > limit),
        "counterpart_pairs": int(counterpart.numel()),
    }


def keypoint_patches(record, size: int, grid: int) -> np.ndarray:
    """Flat patch index of each of the record's keypoint slots (0 where not visible)."""
    xy = ResizePad(record.width, record.height, size).points(np.nan_to_num(record.keypoints))
    return flat_index(pixel_to_patch(xy, size, grid), grid)


def symmetry_pairs(records: Iterable) -> torch.Tensor:
    """(Q, 2) left/right slot pairs named by the records' `symmetry_pairs` field (i < j, unique)."""
    pairs = set()
    for record in records:
        for i, j in record.extra.get("symmetry_pairs", []):
            pairs.add((min(int(i), int(j)), max(int(i), int(j))))
    return torch.tensor(sorted(pairs), dtype=torch.long).view(-1, 2)


def sphere_quality(
    dataset,
    images: dict[str, list[str]],
    points: Callable[[str, str], torch.Tensor],
    size: int,
    grid: int,
    threshold: float,
) -> dict[str, float | int | None]:
    """Figures over `images` (category → stems) of an `SPairDataset`, pooled over categories.

    `points(cat, stem)` gives the image's (grid², 3) sphere points; `threshold` (× π) is the
    pseudo-label sphere filter's. Categories without symmetry
    pairs in their annotations contribute to the same-keypoint figures only.
    """
    same, counterpart = [], []
    for cat, stems in images.items():
        records = [dataset.image(cat, stem) for stem in stems]
        if len(records) < 2:
            continue
        patches = torch.as_tensor(np.stack([keypoint_patches(r, size, grid) for r in records]))
        visible = torch.as_tensor(np.stack([r.visible for r in records]))
        sphere = torch.stack([points(cat, stem).float() for stem in stems])  # (M, N, 3)
        at_keypoints = torch.gather(sphere, 1, patches[..., None].expand(-1, -1, 3))
        same.append(same_keypoint_angles(at_keypoints, visible))
        counterpart.append(counterpart_angles(at_keypoints, visible, symmetry_pairs(records)))
    flat = [torch.cat(x) if x else torch.zeros(0) for x in (same, counterpart)]
    return summarise(*flat, threshold=threshold)
