"""Contact sheet of an SPair-layout dataset: one row per category, keypoints drawn.

Works on the real dataset and the synthetic one alike. Each thumbnail is the image resized and
padded as the pipeline sees it (`diysc.geometry.ResizePad`), with the bbox, the mask outline (when
`Segmentation/` has one) and the visible keypoints: one colour per slot; where the annotation lists
`symmetry_pairs`, the left keypoint is a filled dot and its right counterpart a ring of the same
colour. The caption gives the stem and the azimuth bin.
"""

from __future__ import annotations

import colorsys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from diysc.data.spair import NUM_KEYPOINTS, SPairDataset
from diysc.geometry import ResizePad

CAPTION = 14  # px below each thumbnail
SLOT_COLOURS = [
    tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / NUM_KEYPOINTS * 0.97, 1.0, 1.0))
    for i in range(NUM_KEYPOINTS)
]


def pick_images(
    dataset: SPairDataset, category: str, count: int, split: str | None = None
) -> list[str]:
    """Up to `count` stems spread over the azimuth bins (round-robin over bins, then by name)."""
    stems = dataset.split_images(split, category) if split else dataset.images(category)
    by_bin: dict[int, list[str]] = defaultdict(list)
    for stem in stems:
        azimuth = dataset.image(category, stem).azimuth_id
        by_bin[-1 if azimuth is None else azimuth].append(stem)
    queues = [sorted(by_bin[b]) for b in sorted(by_bin)]
    picked: list[str] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


def thumbnail(dataset: SPairDataset, category: str, stem: str, size: int) -> Image.Image:
    record = dataset.image(category, stem)
    frame = ResizePad(record.width, record.height, size)
    img = frame.image(dataset.load_image(category, stem)).convert("RGB")
    draw = ImageDraw.Draw(img)
    seg = dataset.segmentation_path(category, stem)
    if seg.is_file():
        with Image.open(seg) as mask:
            mask = frame.image(mask.convert("L"), Image.Resampling.NEAREST)
        edges = np.asarray(mask.point(lambda v: 255 if v > 0 else 0).filter(ImageFilter.FIND_EDGES))
        pixels = np.asarray(img).copy()
        pixels[edges > 0] = (255, 255, 255)
        img = Image.fromarray(pixels)
        draw = ImageDraw.Draw(img)
    draw.rectangle(tuple(frame.bbox(record.bbox)), outline=(255, 255, 0))
    right_slots = {j for _, j in record.extra.get("symmetry_pairs", [])}
    partner = {j: i for i, j in record.extra.get("symmetry_pairs", [])}
    radius = max(2.0, size / 64)
    for slot in np.flatnonzero(record.visible):
        x, y = frame.points(record.keypoints[slot][None])[0]
        colour = SLOT_COLOURS[partner.get(slot, slot)]
        box = (x - radius, y - radius, x + radius, y + radius)
        if slot in right_slots:
            draw.ellipse(box, outline=colour, width=2)
        else:
            draw.ellipse(box, fill=colour, outline=(0, 0, 0))
    return img


def contact_sheet(
    root: str | Path,
    categories: Sequence[str] = (),
    split: str | None = None,
    per_category: int = 8,
    size: int = 192,
) -> Image.Image:
    """One row per category (all categories when none are given), `per_category` columns."""
    dataset = SPairDataset(root)
    categories = list(categories) or list(dataset.categories)
    unknown = [c for c in categories if c not in dataset.categories]
    if unknown:
        raise ValueError(
            f"{root}: no category {unknown[0]!r} (has {', '.join(dataset.categories)})"
        )
    sheet = Image.new(
        "RGB", (per_category * size, len(categories) * (size + CAPTION)), (32, 32, 32)
    )
    draw = ImageDraw.Draw(sheet)
    for row, category in enumerate(categories):
        for col, stem in enumerate(pick_images(dataset, category, per_category, split)):
            x, y = col * size, row * (size + CAPTION)
            sheet.paste(thumbnail(dataset, category, stem, size), (x, y))
            azimuth = dataset.image(category, stem).azimuth_id
            draw.text((x + 3, y + size + 1), f"{stem}  az {azimuth}", fill=(230, 230, 230))
    return sheet
