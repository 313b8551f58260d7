"""`datasets.spair.source: local`: a small SPair-71k-layout directory as the dataset (smoke preset).

Separate from the download path (`diysc.datasets.spair.download.prepare_spair`): nothing is fetched,
and the full-dataset checks (18 categories, official pair counts) do not apply. The directory is
read through the real reader (`SPairDataset`), its layout checked, and the data stage's output is
built from it:

- every annotated image and its annotation, copied unchanged;
- with `datasets.spair.local.mirror` and a split to build (below), a horizontally mirrored copy of
  each image, `<stem>_mirror`: pixels and bbox flipped, keypoint x → width − x, each left/right
  keypoint slot swapped with its counterpart (`diysc.data.spair.SPAIR_COUNTERPARTS`), azimuth bin
  b → 7 − b (SPair's bins are 45° sectors from 0°, and a mirror maps θ to 360° − θ), pose
  "Left" ↔ "Right";
- masks as `Segmentation/<cat>/<stem>.png` (value > 0 = object, what `masks.source: dataset` reads):
  the directory's own `Segmentation/`, or with `datasets.spair.local.masks` a folder of per-image
  foreground masks (`<cat>/<stem>.png|.jpg`, > 127 = object, e.g. predicted masks), mirrored
  alongside;
- pair splits: a split the directory has pairs for is copied unchanged (the evaluation's test pairs
  stay the official ones); a split it has none for gets every ordered pair of distinct images of a
  category (originals and mirrors), which gives pseudo-labels and adapter validation images in
  several azimuth bins. Such splits share images with the others: figures from them are not results.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diysc.azimuth import AZIMUTH_BINS
from diysc.config.schema import LocalParams
from diysc.data.spair import (
    NUM_KEYPOINTS,
    SPAIR_COUNTERPARTS,
    SPLITS,
    DatasetError,
    SPairDataset,
)
from diysc.io import atomic_dir

MIRROR_SUFFIX = "_mirror"
MASK_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_THRESHOLD = 127  # a stored mask (possibly JPEG-compressed) is object above this grey level
POSE_MIRROR = {"Left": "Right", "Right": "Left"}


def prepare_local(out: str | Path, params: LocalParams) -> dict[str, int]:
    """Build the data stage's output at `out` from `params.path`; returns pair counts per split."""
    out, source = Path(out), Path(params.path)
    if not source.is_dir():
        raise DatasetError(f"{source}: datasets.spair.local.path is not a directory")
    dataset = SPairDataset(source)
    dataset.check_layout()  # folders, every pair's files and image sizes; no expected counts
    if not dataset.categories:
        raise DatasetError(f"{source}: no category folders under ImageAnnotation/")
    # Mirrors only feed the splits built here: a directory with all three splits is used as is.
    mirror = params.mirror and any(not dataset.pair_files(split) for split in SPLITS)
    if mirror:
        unknown = [c for c in dataset.categories if c not in SPAIR_COUNTERPARTS]
        if unknown:
            raise DatasetError(
                f"{source}: categories {unknown} have no left/right keypoint table, so their "
                "images cannot be mirrored; set datasets.spair.local.mirror=false"
            )
    masks = source / params.masks if params.masks else source / "Segmentation"
    if params.masks and not masks.is_dir():
        raise DatasetError(f"{masks}: datasets.spair.local.masks is not a directory")
    with atomic_dir(out) as tmp:
        pool: dict[str, list[str]] = {}
        for category in dataset.categories:
            pool[category] = _copy_images(dataset, category, tmp, masks, params.masks, mirror)
        for split in SPLITS:
            given = dataset.pair_files(split)
            if given:
                folder = tmp / "PairAnnotation" / split
                folder.mkdir(parents=True, exist_ok=True)
                for path in given:
                    shutil.copy2(path, folder / path.name)
                names = [p.stem for p in given]
            else:
                names = _write_all_pairs(tmp, split, pool)
            layout = tmp / "Layout" / "large" / f"{split}.txt"
            layout.parent.mkdir(parents=True, exist_ok=True)
            layout.write_text("".join(f"{n}\n" for n in names))
        try:
            counts = SPairDataset(tmp).check_layout()
        except DatasetError as err:  # name the output, not its temporary twin
            raise DatasetError(str(err).replace(str(tmp), str(out))) from None
    return counts


def mirror_annotation(raw: dict, category: str, stem: str) -> dict:
    """The per-image annotation of the horizontally mirrored image (see the module docstring)."""
    width = raw["image_width"]
    swap = {i: i for i in range(NUM_KEYPOINTS)}
    for i, j in SPAIR_COUNTERPARTS[category]:
        swap[i], swap[j] = j, i
    kps = {}
    for slot in raw["kps"]:
        xy = raw["kps"].get(str(swap[int(slot)]))
        kps[slot] = None if xy is None else [width - xy[0], xy[1]]
    x1, y1, x2, y2 = raw["bndbox"]
    mirrored = {
        **raw,
        "filename": f"{stem}{MIRROR_SUFFIX}.jpg",
        "bndbox": [width - x2, y1, width - x1, y2],
        "kps": kps,
        "mirror_of": f"{stem}.jpg",
    }
    if raw.get("azimuth_id") is not None:
        mirrored["azimuth_id"] = AZIMUTH_BINS - 1 - raw["azimuth_id"]
    if "pose" in raw:
        mirrored["pose"] = POSE_MIRROR.get(raw["pose"], raw["pose"])
    return mirrored


def _copy_images(
    dataset: SPairDataset, category: str, out: Path, masks: Path, mask_folder: str, mirror: bool
) -> list[str]:
    """Copy (and mirror) a category's images, annotations and masks; returns the stems written."""
    written = []
    for folder in ("JPEGImages", "ImageAnnotation", "Segmentation"):
        (out / folder / category).mkdir(parents=True, exist_ok=True)
    for stem in dataset.images(category):
        record = dataset.image(category, stem)
        image = dataset.image_path(category, stem)
        dataset.check_image_size(category, stem)
        shutil.copy2(image, out / "JPEGImages" / category / image.name)
        shutil.copy2(
            dataset.annotation_path(category, stem),
            out / "ImageAnnotation" / category / f"{stem}.json",
        )
        mask = _read_mask(masks, category, stem, (record.width, record.height), mask_folder != "")
        if mask is not None:
            mask.save(out / "Segmentation" / category / f"{stem}.png")
        written.append(stem)
        if not mirror:
            continue
        name = f"{stem}{MIRROR_SUFFIX}"
        raw = json.loads(dataset.annotation_path(category, stem).read_text())
        annotation = out / "ImageAnnotation" / category / f"{name}.json"
        annotation.write_text(json.dumps(mirror_annotation(raw, category, stem)))
        flipped = ImageOps.mirror(dataset.load_image(category, stem))
        flipped.save(out / "JPEGImages" / category / f"{name}.jpg", quality=95)
        if mask is not None:
            ImageOps.mirror(mask).save(out / "Segmentation" / category / f"{name}.png")
        written.append(name)
    return written


def _read_mask(
    folder: Path, category: str, stem: str, size: tuple[int, int], required: bool
) -> Image.Image | None:
    """The image's mask as an 8-bit PNG-ready picture (255 = object), or None when there is none
    and none is required (a tree without Segmentation/ then leaves masks to SAM or the bbox)."""
    found = [p for s in MASK_SUFFIXES if (p := folder / category / f"{stem}{s}").is_file()]
    if not found:
        if required:
            raise DatasetError(f"{folder / category / stem}.png|.jpg: mask file not found")
        return None
    try:
        with Image.open(found[0]) as img:
            values = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"{found[0]}: cannot decode mask ({err})") from None
    if values.shape[::-1] != size:
        raise DatasetError(
            f"{found[0]}: mask is {values.shape[1]}x{values.shape[0]} px, image is "
            f"{size[0]}x{size[1]}"
        )
    # A segmentation PNG marks the object by any value > 0; a grey mask by > 127.
    threshold = 0 if found[0].suffix == ".png" and not required else MASK_THRESHOLD
    return Image.fromarray(((values > threshold) * 255).astype(np.uint8), mode="L")


def _write_all_pairs(out: Path, split: str, pool: dict[str, list[str]]) -> list[str]:
    """Every ordered pair of distinct images per category, in SPair's pair-file format."""
    folder = out / "PairAnnotation" / split
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for category, stems in pool.items():
        annotations = {
            s: json.loads((out / "ImageAnnotation" / category / f"{s}.json").read_text())
            for s in stems
        }
        for src, trg in itertools.permutations(stems, 2):
            a, b = annotations[src], annotations[trg]
            common = [k for k in sorted(a["kps"], key=int) if a["kps"][k] and b["kps"].get(k)]
            if not common:  # as in SPair: a pair shares at least one keypoint
                continue
            name = f"{len(names):06d}-{src}-{trg}:{category}"
            pair = {
                "pair_id": len(names),
                "filename": name,
                "src_imname": f"{src}.jpg",
                "trg_imname": f"{trg}.jpg",
                "src_imsize": [a["image_width"], a["image_height"], 3],
                "trg_imsize": [b["image_width"], b["image_height"], 3],
                "src_bndbox": a["bndbox"],
                "trg_bndbox": b["bndbox"],
                "category": category,
                "src_kps": [a["kps"][k] for k in common],
                "trg_kps": [b["kps"][k] for k in common],
                "kps_ids": common,
            }
            (folder / f"{name}.json").write_text(json.dumps(pair))
            names.append(name)
    return names
