"""Per-patch sphere points: the mapper applied to cached DINO features (files and reader:
`diysc.formats.sphere_points`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from diysc.sphere.model import SphereMapper


@torch.no_grad()
def map_features(mapper: SphereMapper, features: torch.Tensor) -> torch.Tensor:
    """(B, D, grid, grid) DINO feature maps → (B, grid², 3) float32 unit vectors."""
    tokens = features.flatten(2).transpose(1, 2)
    param = next(mapper.parameters())
    return mapper(tokens.to(param.device, param.dtype)).float().cpu()


def compute_points(
    mapper: SphereMapper,
    load: Callable[[str, str], torch.Tensor],
    images: Iterable[tuple[str, str]],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Sphere points of (cat, stem) images; `load(cat, stem)` gives (D, grid, grid) features."""
    mapper.eval()
    images = list(images)
    points: dict[str, dict[str, torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = torch.stack([load(cat, stem).float() for cat, stem in chunk])
        for (cat, stem), p in zip(chunk, map_features(mapper, batch), strict=True):
            points.setdefault(cat, {})[stem] = p
        if progress is not None:
            progress(len(chunk))
    return points
