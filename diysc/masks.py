"""Object masks, one per image, stored in the original image frame.

Sources (`masks.source`):
- `dataset`: the dataset's `Segmentation/<cat>/<stem>.png` (value > 0 = object; of an RGBA or LA
  file, the alpha channel when it is not uniform, else the largest colour channel);
- `sam`: box-prompted SAM through `transformers`' `SamModel`, as the paper. The image is resized and
  centre-padded to `masks.sam_size` (960 in the reference), the annotation bbox is mapped into that
  frame, `multimask_output=False`; the mask logits are cropped to the picture, resized bilinearly
  to the image and thresholded at 0;
- `bbox`: the annotation bbox, filled.

Output: one shard per category (layout and reader: `diysc.formats.masks`). An empty mask is an error
naming the image; one that covers the whole image is kept with a warning naming it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from diysc.config.schema import MasksParams
from diysc.data.spair import SPairDataset
from diysc.formats.masks import MaskError
from diysc.geometry import ResizePad
from diysc.launch import Workers
from diysc.partial_shards import PartialShards, fingerprint
from diysc.provenance import code_digest


def dataset_mask(path: str | Path, width: int, height: int) -> np.ndarray:
    """Boolean (H, W) from a segmentation PNG (any value > 0 is object)."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(
            f"{path}: segmentation file not found (masks.source=dataset needs the dataset's "
            "Segmentation/ folder; use masks.source=sam or bbox otherwise)"
        )
    try:
        with Image.open(path) as img:
            values, bands = np.asarray(img), img.getbands()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MaskError(f"{path}: cannot decode segmentation ({err})") from None
    if values.ndim == 3:
        values = _object_channel(values, bands)
    if values.shape != (height, width):
        raise MaskError(
            f"{path}: segmentation is {values.shape[::-1]} (w, h), image is {(width, height)}"
        )
    return values > 0


def _object_channel(values: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """(H, W) of a multi-channel segmentation (RGB, RGBA, LA): its alpha when that varies (the
    object drawn in transparency), else the largest colour channel (colour-coded objects)."""
    if "A" in bands:
        alpha = values[..., bands.index("A")]
        if alpha.min() != alpha.max():
            return alpha
    return values[..., [i for i, band in enumerate(bands) if band != "A"]].max(axis=-1)


def bbox_mask(bbox: Sequence[float], width: int, height: int) -> np.ndarray:
    """Boolean (H, W), true on the pixels whose indices lie in [x1, x2] × [y1, y2] (inclusive)."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    mask = np.zeros((height, width), dtype=bool)
    c0, c1 = max(math.ceil(x1), 0), min(math.floor(x2), width - 1)
    r0, r1 = max(math.ceil(y1), 0), min(math.floor(y2), height - 1)
    mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


class SamMasker:
    """Box-prompted SAM: (images, original-frame xyxy boxes) → boolean masks in the original frame."""

    def __init__(self, reference: str, size: int, device: torch.device | str = "cpu"):
        from transformers import SamModel, SamProcessor

        from diysc.backbones import hub, tiny

        self.model, self.processor = hub.load_pretrained(
            "masks.sam_model",
            reference,
            tiny.resolve(reference, "sam"),
            "SAM",
            lambda source, local: (
                SamModel.from_pretrained(source, local_files_only=local, dtype=torch.float32),
                SamProcessor.from_pretrained(source, local_files_only=local),
            ),
            MaskError,
        )
        self.device = torch.device(device)
        self.model = self.model.eval().requires_grad_(False).to(self.device)
        self.size = size

    @torch.no_grad()
    def __call__(
        self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        frames = [ResizePad(img.width, img.height, self.size) for img in images]
        padded = [frame.image(img) for frame, img in zip(frames, images, strict=True)]
        prompts = [[frame.bbox(box).tolist()] for frame, box in zip(frames, boxes, strict=True)]
        inputs = self.processor(images=padded, input_boxes=prompts, return_tensors="pt")
        out = self.model(
            pixel_values=inputs["pixel_values"].to(self.device),
            input_boxes=inputs["input_boxes"].to(self.device, torch.float32),
            multimask_output=False,
        )
        logits = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(),
            inputs["original_sizes"],
            inputs["reshaped_input_sizes"],
            binarize=False,
        )  # per image (1, 1, size, size) in the padded frame
        masks = []
        for frame, logit in zip(frames, logits, strict=True):
            (ox, oy), (w, h) = frame.offset, frame.new_size
            picture = logit[:, :, oy : oy + h, ox : ox + w].float()
            original = F.interpolate(
                picture, size=(frame.height, frame.width), mode="bilinear", align_corners=False
            )
            masks.append(original[0, 0].numpy() > 0)
        return masks


def compute_masks(
    dataset: SPairDataset,
    params: MasksParams,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    progress: bool = True,
    workers: Workers | None = None,
) -> dict[str, int]:
    """Write one mask shard per category; returns {category: images}. Resumable per category.
    Among several `workers`, this one computes its share and only rank 0 publishes."""
    workers = workers or Workers()
    categories = list(dataset.categories)
    with workers.leader_first():
        sam = (
            SamMasker(params.sam_model, params.sam_size, device) if params.source == "sam" else None
        )
    partial = PartialShards(out_dir)
    counts = {cat: len(dataset.images(cat)) for cat in categories}
    keys = {}
    for cat in categories:
        stems = dataset.images(cat)
        files = [dataset.annotation_path(cat, s) for s in stems]
        if params.source == "sam":
            files += [dataset.image_path(cat, s) for s in stems]
        if params.source == "dataset":
            files += [p for s in stems if (p := dataset.segmentation_path(cat, s)).is_file()]
        keys[cat] = fingerprint(dataclasses.asdict(params), files, code_digest(__name__))
    mine = workers.mine(categories, [counts[cat] for cat in categories])
    total = sum(counts[cat] for cat in mine)
    bar = tqdm(total=total, desc=f"masks ({params.source})", unit="img", disable=not progress)
    for cat in mine:
        stems = dataset.images(cat)
        key = keys[cat]
        rel = f"{cat}.safetensors"
        if partial.done(rel, key):
            bar.update(len(stems))
            continue
        bar.set_postfix_str(cat)
        shard = {}
        for start in range(0, len(stems), batch_size):
            chunk = stems[start : start + batch_size]
            records = [dataset.image(cat, s) for s in chunk]
            if params.source == "dataset":
                masks = [
                    dataset_mask(dataset.segmentation_path(cat, r.name), r.width, r.height)
                    for r in records
                ]
            elif params.source == "bbox":
                masks = [bbox_mask(r.bbox, r.width, r.height) for r in records]
            else:
                images = [dataset.load_image(cat, r.name) for r in records]
                for img, r in zip(images, records, strict=True):
                    if img.size != (r.width, r.height):
                        raise MaskError(
                            f"{dataset.image_path(cat, r.name)}: image is {img.size}, its "
                            f"annotation says {(r.width, r.height)}"
                        )
                masks = sam(images, [r.bbox for r in records])
            for r, mask in zip(records, masks, strict=True):
                if not mask.any():
                    raise MaskError(
                        f"{dataset.image_path(cat, r.name)}: the {params.source} mask is empty"
                    )
                if mask.all():
                    print(
                        f"warning: {dataset.image_path(cat, r.name)}: the {params.source} mask "
                        f"covers the whole image ({r.width}x{r.height} px)",
                        file=sys.stderr,
                    )
                shard[r.name] = torch.from_numpy(mask.astype(np.uint8))
            bar.update(len(chunk))
        partial.save(rel, shard, key)
    bar.close()
    workers.wait_all()
    if workers.leader:
        rels = {f"{cat}.safetensors": keys[cat] for cat in categories}
        partial.publish(list(rels), {}, rels)
    return counts
