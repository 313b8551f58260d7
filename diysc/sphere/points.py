"""Per-patch sphere points: the mapper applied to cached DINO features, stored per category.

Layout: `<root>/<cat>.safetensors`, key `<stem>` → float32 (grid², 3) unit vectors in flat-index
order (`row * grid + col`). As in DIY-SC, no mask is applied: every patch gets a point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from diysc.io import Shard, atomic_dir, save_shard
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


def write_points(root: str | Path, points: dict[str, dict[str, torch.Tensor]]) -> None:
    """Replace `root` with one shard per category, atomically."""
    with atomic_dir(root) as tmp:
        for cat, by_stem in points.items():
            save_shard(tmp / f"{cat}.safetensors", by_stem)


class SpherePoints:
    """Reader: `SpherePoints(root).points(cat, stem)` → float32 (grid², 3)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no sphere points folder")
        self._shards: dict[str, Shard] = {}

    def points(self, category: str, stem: str) -> torch.Tensor:
        if category not in self._shards:
            self._shards[category] = Shard(self.root / f"{category}.safetensors")
        return self._shards[category][stem]
