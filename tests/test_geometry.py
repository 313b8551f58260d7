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
    patch_centre,
    patch_corner,
    picture_on_grid,
    pixel_to_patch,
    unflatten_index,
)
from tests.conftest import ROOT


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


def test_mask_reduction_keeps_the_lanczos_ringing_beyond_the_edge():
    """A 960-px mask with the object left of column E, reduced to 480 px (grid 48, stride 10): patch
    column 10 is sampled at pixel 105 of the 480 frame, whose centre lies d = 105.5 − E/2 pixels
    beyond the edge. The reference keeps any value > 0 after LANCZOS (Lanczos-3: positive lobe
    for d < 1, negative for 1 < d < 2, positive again for 2 < d < 3)."""
    on_object = []
    for edge in (206, 208, 210, 212):  # d = 2.5, 1.5, 0.5, −0.5
        mask = np.zeros((960, 960), dtype=bool)
        mask[:, :edge] = True
        on_object.append(bool(mask_on_grid(mask, 480, 48)[20, 10]))
    assert on_object == [True, False, True, True]


def test_mask_on_grid_goes_through_the_padded_frame():
    mask = np.ones((10, 20), dtype=bool)  # a landscape image fully covered
    grid = mask_on_grid(mask, 40, 4, frame=40)  # padded to 40: rows 10..30 hold the picture
    assert grid.tolist() == [[False] * 4, [True] * 4, [True] * 4, [False] * 4]


def test_picture_on_grid_drops_padding_and_pure_black_pixels():
    img = np.full((10, 20, 3), 200, dtype=np.uint8)  # landscape: rows 10..30 of the 40 frame
    img[:, 10:15] = 0  # a pure-black band, columns 20..30 of the frame
    img[:, 15:] = (0, 0, 1)  # nearly black is still picture
    grid = picture_on_grid(Image.fromarray(img), 40, 4)  # centres at 5, 15, 25, 35
    assert grid.tolist() == [[False] * 4, [True, True, False, True], [True, True, False, True],
                             [False] * 4]  # fmt: skip


ODISE = ROOT / "tests" / "fixtures" / "spair_sample" / "extra" / "odise_masks"


def test_real_masks_reduce_as_the_reference_does():
    """The 12 real masks (ODISE, JPEG thresholded at 127): the grid equals the reference's own
    reduction of the 960-px mask file (RGB, LANCZOS to 840, NEAREST to 60, `argwhere(> 0)[::3]`);
    it contains every patch whose centre pixel is on the object and adds only patches within the
    Lanczos-3 support (3 px at 840, plus half a 960-px pixel) of it."""
    paths = sorted(ODISE.glob("*/*.jpg"))
    assert len(paths) == 12
    centre = (np.arange(60) * 14 + 7)[:, None], (np.arange(60) * 14 + 7)[None, :]
    added = 0
    for path in paths:
        mask = np.asarray(Image.open(path).convert("L")) > 127
        grid = mask_on_grid(mask, 840, 60)
        file = ResizePad(mask.shape[1], mask.shape[0], 960).image(
            Image.fromarray(mask.astype(np.uint8) * 255), Image.Resampling.NEAREST
        )
        small = file.convert("RGB").resize((840, 840), Image.Resampling.LANCZOS)
        rows_cols = np.argwhere(np.asarray(small.resize((60, 60), Image.Resampling.NEAREST)) > 0)
        reference = np.zeros((60, 60), dtype=bool)
        reference[tuple(rows_cols[::3, :2].T)] = True
        assert (grid == reference).all(), path.name
        at_840 = np.asarray(file.resize((840, 840), Image.Resampling.NEAREST)) > 0
        assert (grid >= at_840[centre]).all(), path.name
        near = np.zeros_like(at_840)
        ys, xs = np.nonzero(at_840)
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                if dx * dx + dy * dy <= 3.5**2:
                    near[np.clip(ys + dy, 0, 839), np.clip(xs + dx, 0, 839)] = True
        assert not (grid & ~near[centre]).any(), path.name
        added += int((grid & ~at_840[centre]).sum())
    assert added > 0  # the ringing does reach some patch centres on real masks
