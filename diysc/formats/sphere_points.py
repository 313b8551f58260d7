"""Per-patch sphere-point files: writer and reader.

Layout: `<root>/<cat>.safetensors`, key `<stem>` → float32 (grid², 3) unit vectors in flat-index
order (`row * grid + col`), computed by `diysc.sphere.points`. As in DIY-SC, no mask is applied:
every patch gets a point.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diysc.errors import UserError
from diysc.formats.category_shards import CategoryShards
from diysc.io import atomic_dir, save_shard


def write_points(root: str | Path, points: dict[str, dict[str, torch.Tensor]]) -> None:
    """Replace `root` with one shard per category, atomically."""
    with atomic_dir(root) as tmp:
        for cat, by_stem in points.items():
            save_shard(tmp / f"{cat}.safetensors", by_stem)


class SpherePointsError(UserError, ValueError):
    """A sphere-points directory or file is missing; the message names it."""


class SpherePoints(CategoryShards):
    """Reader: `SpherePoints(root).points(cat, stem)` → float32 (grid², 3)."""

    def __init__(self, root: str | Path):
        super().__init__(root, "sphere points", SpherePointsError)

    def points(self, category: str, stem: str) -> torch.Tensor:
        return self.shard(category)[stem]
