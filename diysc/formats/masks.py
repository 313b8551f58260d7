"""Object-mask files and their reader.

Layout: `<root>/<cat>.safetensors`, key `<stem>` → uint8 (H, W) in the original image frame,
1 = object (written by `diysc.masks.compute_masks`). Reduced to the patch grid only by
`diysc.geometry.mask_on_grid`. An empty mask is an error naming the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diysc.errors import UserError
from diysc.formats.category_shards import CategoryShards
from diysc.geometry import mask_on_grid


class MaskError(UserError, ValueError):
    """A mask is missing, malformed or empty; the message names the file or image."""


class MaskStore(CategoryShards):
    """Reader of a masks directory written by `diysc.masks.compute_masks`."""

    def __init__(self, root: str | Path):
        super().__init__(root, "masks", MaskError)

    def mask(self, category: str, stem: str) -> np.ndarray:
        """Boolean (H, W) in the original image frame."""
        mask = self.shard(category)[stem].numpy() > 0
        if not mask.any():
            raise MaskError(f"{self.root / category}.safetensors: mask of {stem!r} is empty")
        return mask

    def on_grid(self, category: str, stem: str, size: int, grid: int) -> np.ndarray:
        """Boolean (grid, grid): the mask reduced to the patch grid as the reference does
        (`mask_on_grid`: LANCZOS to the padded `size` frame, patch centres, any value > 0)."""
        return mask_on_grid(self.mask(category, stem), size, grid)
