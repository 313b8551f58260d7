"""Patch-grid and frame conventions, hand-computed."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from diysc.geometry import (
    ResizePad,
    flat_index,
    grid_coords,
    mask_on_grid,
    mask_to_grid,
    patch_centre,
    patch_corner,
    pixel_to_patch,
    unflatten_index,
    valid_on_grid,
)


def test_pixel_patch_round_trip_at_840():
    # stride 14: pixel 27.9 is in patch 1, 28 in patch 2; the image border clamps to the grid
    xy = np.array([[27.9, 0.0], [28.0, 839.9], [840.0, -3.0]])
    assert pixel_to_patch(xy, 840, 60).tolist() == [[1, 0], [2, 59], [59, 0]]
    assert pixel_to_patch(torch.tensor(xy), 840, 60).tolist() == [[1, 0], [2, 59], [59, 0]]
    assert patch_centre(np.array([0, 59]), 840, 60).tolist() == [7.0, 833.0]  # 14 p + 7
    assert patch_corner(np.array([2, 3]), 840, 60).tolist() == [28.0, 42.0]  # 14 p


def test_flat_index_is_row_major():
    colrow = torch.tensor([[0, 0], [5, 0], [0, 1], [59, 59]])
    idx = flat_index(colrow, 60)
    assert idx.tolist() == [0, 5, 60, 3599]
    assert unflatten_index(idx, 60).tolist() == colrow.tolist()
    assert unflatten_index(np.array([61]), 60).tolist() == [[1, 1]]
    coords = grid_coords(3)
    assert coords[4].tolist() == [1.0, 1.0] and coords[5].tolist() == [2.0, 1.0]


def test_resize_pad_image_places_the_picture_in_the_centre():
    img = Image.new("RGB", (100, 50), (255, 255, 255))
    frame = ResizePad(100, 50, 20)
    assert frame.new_size == (20, 10) and frame.offset == (0, 5)
    out = np.asarray(frame.image(img))
    assert out[:5].max() == 0 and out[15:].max() == 0 and out[5:15].min() == 255
    assert frame.valid_area()[5:15].all() and not frame.valid_area()[:5].any()


def test_mask_reduction_samples_patch_centres():
    mask = np.zeros((28, 28), dtype=bool)
    mask[7, 21] = True  # the centre pixel of patch (col 1, row 0) for grid 2 (stride 14)
    assert mask_to_grid(mask, 2).tolist() == [[False, True], [False, False]]
    mask[:] = False
    mask[0, 14] = True  # a corner pixel: not sampled
    assert not mask_to_grid(mask, 2).any()


def test_mask_on_grid_goes_through_the_padded_frame():
    mask = np.ones((10, 20), dtype=bool)  # a landscape image fully covered
    grid = mask_on_grid(mask, 40, 4)  # padded to 40: rows 10..30 hold the picture
    assert grid.tolist() == [[False] * 4, [True] * 4, [True] * 4, [False] * 4]
    assert valid_on_grid(20, 10, 40, 4).tolist() == grid.tolist()
