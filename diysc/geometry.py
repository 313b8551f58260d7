"""The one owner of image-frame and patch-grid conventions.

Frames:
- *original*: pixel coordinates of the image file, (x, y), origin at the top-left pixel corner.
- *padded*: the image resized so its long side is `size` (aspect kept, short side rounded), then
  zero-padded, centred, to a `size`×`size` square. All keypoints, bboxes and predictions live here.
- *patch grid*: a `grid`×`grid` lattice over the padded square, `stride = size / grid` pixels per
  patch; patch (row, col) has flat index `row * grid + col`.

Conventions (from the reference implementation):
- a pixel position maps to the patch `floor(xy / stride)` (clamped to the grid);
- a patch is *predicted* at its centre `stride * p + stride / 2`;
- pseudo-label coordinates are stored at the patch's top-left corner `stride * p`;
- a mask or image is reduced to the grid by nearest sampling at patch centres, after the
  reference's LANCZOS resize to the padded frame (`mask_on_grid`, `picture_on_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class ResizePad:
    """How an image of `width`×`height` maps into the padded `size`×`size` frame."""

    width: int
    height: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.width, self.height)

    @property
    def new_size(self) -> tuple[int, int]:
        """(w, h) after resizing, before padding: the long side is `size`, the short one rounded."""
        if self.width >= self.height:
            return self.size, round(self.height * self.scale)
        return round(self.width * self.scale), self.size

    @property
    def offset(self) -> tuple[int, int]:
        """(x, y) position of the resized image inside the square (centred, floor)."""
        new_w, new_h = self.new_size
        return (self.size - new_w) // 2, (self.size - new_h) // 2

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Map (N, 2) original-frame (x, y) points into the padded frame."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy * self.scale + np.asarray(self.offset, dtype=np.float64)

    def bbox(self, box: np.ndarray) -> np.ndarray:
        """Map an [x1, y1, x2, y2] box into the padded frame."""
        box = np.asarray(box, dtype=np.float64).reshape(2, 2)
        return self.points(box).reshape(4)

    def image(self, img: Image.Image, resample: int = Image.Resampling.LANCZOS) -> Image.Image:
        """Resize and centre-pad a PIL image (zeros outside the picture)."""
        if img.size != (self.width, self.height):
            raise ValueError(f"image is {img.size}, expected {(self.width, self.height)}")
        resized = img.resize(self.new_size, resample)
        canvas = Image.new(img.mode, (self.size, self.size))
        canvas.paste(resized, self.offset)
        return canvas


def bbox_threshold(box_padded: np.ndarray) -> float:
    """PCK threshold base: the longer side of a padded-frame [x1, y1, x2, y2] box."""
    x1, y1, x2, y2 = np.asarray(box_padded, dtype=np.float64)
    return float(max(x2 - x1, y2 - y1))


# --- patch grid -------------------------------------------------------------------------------


def stride(size: int, grid: int) -> float:
    return size / grid


def pixel_to_patch(xy: torch.Tensor | np.ndarray, size: int, grid: int):
    """(…, 2) padded-frame (x, y) → (…, 2) integer patch (col, row), clamped to the grid."""
    if isinstance(xy, np.ndarray):
        return np.clip(np.floor(xy * (grid / size)), 0, grid - 1).astype(np.int64)
    return torch.clamp(torch.floor(xy * (grid / size)), 0, grid - 1).long()


def patch_centre(colrow, size: int, grid: int):
    """(…, 2) patch (col, row), possibly fractional → padded-frame pixel (x, y) of its centre."""
    s = size / grid
    return colrow * s + s / 2


def patch_corner(colrow, size: int, grid: int):
    """(…, 2) patch (col, row) → padded-frame pixel (x, y) of its top-left corner."""
    return colrow * (size / grid)


def flat_index(colrow, grid: int):
    """(…, 2) patch (col, row) → flat row-major index."""
    return colrow[..., 1] * grid + colrow[..., 0]


def unflatten_index(index, grid: int):
    """Flat row-major index → (…, 2) patch (col, row)."""
    if isinstance(index, np.ndarray):
        return np.stack([index % grid, index // grid], axis=-1)
    return torch.stack([index % grid, torch.div(index, grid, rounding_mode="floor")], dim=-1)


def grid_coords(grid: int) -> torch.Tensor:
    """(grid*grid, 2) float (col, row) of every patch, in flat-index order."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1).float()


def expected_position(weights: torch.Tensor, centre: torch.Tensor, grid: int) -> torch.Tensor:
    """(…, grid²) weights summing to 1, (…, 2) patch (col, row) → the expected (col, row).

    Computed as `centre + Σ w·(coords − centre)`: with `centre` at the weights' mode the offsets
    are small where the mass is, and fp32 agrees with fp64 to ~1e-5 patch, where averaging the
    absolute coordinates 0…grid−1 loses ~1e-3. Equal to `Σ w·coords` (and to its gradient) in
    exact arithmetic, as Σ w = 1.
    """
    offsets = grid_coords(grid).to(weights) - centre.unsqueeze(-2)  # (…, grid², 2)
    return centre + (weights.unsqueeze(-1) * offsets).sum(-2)


# The reference saves SAM masks as 0/255 PNGs in the padded 960-px frame of the SD input (§1.5).
MASK_FRAME = 960


def mask_on_grid(mask: np.ndarray, size: int, grid: int, frame: int = MASK_FRAME) -> np.ndarray:
    """Original-frame boolean mask → patch-grid boolean mask, exactly as the reference reduces its
    mask files.

    The mask is first put in the padded `frame`-px square the reference's masks are stored in
    (nearest, 0/255); then, as the reference: resized to `size` with LANCZOS (a square, so no
    padding), to `grid` with NEAREST (the pixel at each patch centre), and any value > 0 is
    object. LANCZOS ringing makes "> 0" reach 2–3 px beyond the object's edge, so patches whose
    centre lies just outside the mask count as object.
    """
    h, w = mask.shape
    padded = ResizePad(w, h, frame).image(
        Image.fromarray(mask.astype(np.uint8) * 255), Image.Resampling.NEAREST
    )
    return _nearest_on_grid(padded.resize((size, size), Image.Resampling.LANCZOS), grid) > 0


def picture_on_grid(image: Image.Image, size: int, grid: int) -> np.ndarray:
    """Patch-grid boolean map of the candidates without a mask, as the reference: the image
    resized and padded to `size` (LANCZOS), sampled at patch centres (NEAREST), and kept where
    its RGB sum is > 0 — padding, and also pure-black pixels of the picture itself, are left out."""
    rgb = image.convert("RGB")
    padded = ResizePad(rgb.width, rgb.height, size).image(rgb)
    return _nearest_on_grid(padded, grid).astype(np.int64).sum(-1) > 0


def _nearest_on_grid(img: Image.Image, grid: int) -> np.ndarray:
    """A square PIL image → (grid, grid[, channels]) array of its pixels at the patch centres."""
    return np.asarray(img.resize((grid, grid), Image.Resampling.NEAREST))
