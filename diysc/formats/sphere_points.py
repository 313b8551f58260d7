"""Per-patch sphere-point files: writer and reader.

Layout: `<root>/<cat>.safetensors`, key `<stem>` → float32 (grid², 3) unit vectors in flat-index
order (`row * grid + col`), computed by `diysc.sphere.points`. As in DIY-SC, no mask is applied:
every patch gets a point.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diysc.io import Shard, atomic_dir, save_shard


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
