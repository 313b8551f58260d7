"""Reader for the SPair-71k layout (the real dataset and the synthetic one alike).

```
<root>/JPEGImages/<cat>/<stem>.jpg        <root>/ImageAnnotation/<cat>/<stem>.json
<root>/Segmentation/<cat>/<stem>.png      <root>/PairAnnotation/<split>/<NNNNNN>-<src>-<trg>:<cat>.json
<root>/Layout/large/<split>.txt
```

Keypoints come from the per-image annotations (30 slots, `null` = not visible), as in the
reference evaluation; the pair file's own keypoint lists are not used. Every parse error names
the file it came from. Annotations are validated as they are read: a positive image size, every
visible keypoint inside the image, bboxes with x2 >= x1 and y2 >= y1 (image and pair files); and an
image file's pixel size must equal its annotation's (`load_image`, `check_layout`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from diysc.errors import UserError

SPLITS = ("trn", "val", "test")
NUM_KEYPOINTS = 30
# Official pair counts of SPair-71k (18 categories), checked by the data stage.
SPAIR_CATEGORIES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)  # fmt: skip
SPAIR_PAIR_COUNTS = {"trn": 53_340, "val": 5_384, "test": 12_234}
SPAIR_IMAGES = 1_800  # all splits together

# Symmetry groups of the SPair-71k keypoint slots, as listed by GeoAware-SC
# (`utils/utils_geoware.py:SPAIR_GEO_AWARE`); singleton slots are omitted (never geo-aware).
SPAIR_SYMMETRY: dict[str, tuple[tuple[int, ...], ...]] = {
    "aeroplane": (
        (4, 5),
        (6, 7),
        (8, 9),
        (10, 11),
        (12, 13),
        (14, 15),
        (16, 17),
        (18, 19),
        (20, 21),
    ),
    "bicycle": ((2, 3), (6, 7), (9, 10)),
    "bird": ((1, 2), (10, 11), (12, 13), (14, 15)),
    "boat": ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)),
    "bottle": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    "bus": (
        (0, 1),
        (2, 3, 5, 6),
        (4, 7),
        (10, 13, 20, 23),
        (11, 14, 21, 24),
        (12, 15, 22, 25),
        (16, 17, 26, 27),
        (18, 19, 28, 29),
    ),
    "car": (
        (0, 1),
        (2, 3, 6, 7),
        (4, 8),
        (5, 9),
        (10, 13, 20, 23),
        (11, 14, 21, 24),
        (12, 15, 22, 25),
        (16, 17, 26, 27),
        (18, 19, 28, 29),
    ),
    "cat": ((2, 3), (9, 10, 11, 12)),
    "chair": ((0, 1), (2, 3), (4, 5, 6, 7), (8, 9), (10, 11), (12, 13)),
    "cow": ((2, 3), (9, 10, 11, 12), (15, 16, 17, 18), (19, 20)),
    "dog": ((2, 3), (9, 10, 11, 12)),
    "horse": ((2, 3), (10, 11, 12, 13), (16, 17, 18, 19)),
    "motorbike": ((0, 1), (2, 3)),
    "person": ((8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)),
    "pottedplant": ((0, 1, 2, 3), (4, 5), (6, 8)),
    "sheep": ((2, 3), (9, 10, 11, 12), (15, 16, 17, 18), (19, 20)),
    "train": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)),
    "tvmonitor": ((0, 2, 4, 6), (1, 3, 5, 7), (8, 10, 12, 14), (9, 11, 13, 15)),
}

# SPair-71k keypoint slots that name the left and right instance of a part, per category: a
# horizontal flip swaps them. Slots not listed are on the symmetry plane (nose, tail, ...). As
# GeoAware-SC's flip table in the annotations' own slot numbers (`SPAIR_FLIP_TRN`; its test-time
# `SPAIR_FLIP` numbers bus slots as if the unused 8 and 9 were absent), and each pair joins a slot
# its `SPAIR_LR` marks right with one it marks left. A symmetry group above may leave a pair out
# (a bird's mouth corners 4/5 and eyes 7/8, an animal's eyes): not every left/right pair counts as
# geo-aware there, but a flip still swaps it.
SPAIR_COUNTERPARTS: dict[str, tuple[tuple[int, int], ...]] = {
    "aeroplane": ((4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19),
                  (20, 21)),
    "bicycle": ((2, 3), (6, 7), (9, 10)),
    "bird": ((1, 2), (4, 5), (7, 8), (10, 11), (12, 13), (14, 15)),
    "boat": ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)),
    "bottle": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    "bus": ((0, 1), (2, 3), (5, 6), (10, 20), (11, 21), (12, 22), (13, 23), (14, 24), (15, 25),
            (16, 17), (18, 19), (26, 27), (28, 29)),
    "car": ((0, 1), (2, 3), (6, 7), (10, 20), (11, 21), (12, 22), (13, 23), (14, 24), (15, 25),
            (16, 17), (18, 19), (26, 27), (28, 29)),
    "cat": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12)),
    "chair": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)),
    "cow": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)),
    "dog": ((0, 1), (2, 3), (4, 5), (9, 10), (11, 12)),
    "horse": ((0, 1), (2, 3), (4, 5), (6, 7), (10, 11), (12, 13), (16, 17), (18, 19)),
    "motorbike": ((0, 1), (2, 3)),
    "person": ((0, 1), (2, 3), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)),
    "pottedplant": ((0, 2), (4, 5), (6, 8)),
    "sheep": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)),
    "train": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)),
    "tvmonitor": ((0, 2), (4, 6), (3, 7), (8, 10), (12, 14), (11, 15)),
}  # fmt: skip


class DatasetError(UserError, ValueError):
    """The dataset tree is incomplete or a file in it is malformed; the message names the file."""


@dataclass(frozen=True)
class ImageRecord:
    category: str
    name: str  # file stem, e.g. "2008_002719"
    width: int
    height: int
    bbox: np.ndarray  # [x1, y1, x2, y2], original frame
    keypoints: np.ndarray  # (30, 2) float (x, y), original frame; NaN where not visible
    visible: np.ndarray  # (30,) bool
    azimuth_id: int | None  # 0..7, 45° bins
    extra: dict[str, Any] = field(default_factory=dict)  # fields beyond the core set


@dataclass(frozen=True)
class PairRecord:
    name: str  # "NNNNNN-<src>-<trg>:<cat>"
    split: str
    category: str
    src: str  # image stems
    trg: str
    src_bbox: np.ndarray
    trg_bbox: np.ndarray
    kps_ids: tuple[int, ...]  # keypoint slots visible in both images
    viewpoint_variation: int


class SPairDataset:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "ImageAnnotation").is_dir():
            raise DatasetError(f"{self.root}: not an SPair-71k tree (no ImageAnnotation/ folder)")

    # --- listing -------------------------------------------------------------------------------

    @functools.cached_property
    def categories(self) -> tuple[str, ...]:
        return tuple(
            sorted(p.name for p in (self.root / "ImageAnnotation").iterdir() if p.is_dir())
        )

    def pair_files(self, split: str, category: str | None = None) -> list[Path]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        folder = self.root / "PairAnnotation" / split
        pattern = f"*:{category}.json" if category else "*.json"
        return sorted(folder.glob(pattern))

    def pairs(self, split: str, category: str | None = None) -> list[PairRecord]:
        return [self._read_pair(path, split) for path in self.pair_files(split, category)]

    def split_images(self, split: str, category: str) -> list[str]:
        """Sorted stems of the images that appear in the pairs of `split` for `category`."""
        names = set()
        for pair in self.pairs(split, category):
            names.update((pair.src, pair.trg))
        return sorted(names)

    def images(self, category: str) -> list[str]:
        """Sorted stems of every annotated image of a category."""
        return sorted(p.stem for p in (self.root / "ImageAnnotation" / category).glob("*.json"))

    # --- files ---------------------------------------------------------------------------------

    def image_path(self, category: str, name: str) -> Path:
        return self.root / "JPEGImages" / category / f"{name}.jpg"

    def segmentation_path(self, category: str, name: str) -> Path:
        return self.root / "Segmentation" / category / f"{name}.png"

    def annotation_path(self, category: str, name: str) -> Path:
        return self.root / "ImageAnnotation" / category / f"{name}.json"

    def load_image(self, category: str, name: str) -> Image.Image:
        """The RGB image, after checking that its pixel size is the one its annotation gives."""
        img = load_rgb(self.image_path(category, name))
        self._check_size(category, name, img.size)
        return img

    def check_image_size(self, category: str, name: str) -> None:
        """Compare the image file's header size with the annotation (no pixel decoding)."""
        path = self.image_path(category, name)
        try:
            with Image.open(path) as img:
                size = img.size
        except FileNotFoundError:
            raise DatasetError(f"{path}: image file not found") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DatasetError(f"{path}: cannot decode image ({err})") from None
        self._check_size(category, name, size)

    def _check_size(self, category: str, name: str, size: tuple[int, int]) -> None:
        rec = self.image(category, name)
        if size != (rec.width, rec.height):
            raise DatasetError(
                f"{self.image_path(category, name)}: image is {size[0]}x{size[1]} px but "
                f"{self.annotation_path(category, name)} says {rec.width}x{rec.height}"
            )

    @functools.cache  # noqa: B019 - a dataset object lives as long as a stage
    def image(self, category: str, name: str) -> ImageRecord:
        path = self.annotation_path(category, name)
        raw = _read_json(path)
        try:
            kps = raw["kps"]
            if not isinstance(kps, dict):
                raise DatasetError(f"{path}: 'kps' must be a mapping of slot -> [x, y] or null")
            keypoints = np.full((NUM_KEYPOINTS, 2), np.nan)
            for slot, xy in kps.items():
                i = int(slot)
                if not 0 <= i < NUM_KEYPOINTS:
                    raise DatasetError(f"{path}: keypoint slot {slot!r} outside 0..29")
                if xy is not None:
                    keypoints[i] = _floats(xy, 2, path, f"kps[{slot}]")
            azimuth = raw.get("azimuth_id")
            if azimuth is not None and not (isinstance(azimuth, int) and 0 <= azimuth < 8):
                raise DatasetError(f"{path}: 'azimuth_id' must be an integer 0..7, got {azimuth!r}")
            core = {"kps", "azimuth_id", "image_width", "image_height", "bndbox"}
            width, height = (
                _positive_int(raw, "image_width", path),
                _positive_int(raw, "image_height", path),
            )
            _check_inside(keypoints, width, height, path)
            return ImageRecord(
                category=category,
                name=name,
                width=width,
                height=height,
                bbox=_bbox(raw["bndbox"], path, "bndbox"),
                keypoints=keypoints,
                visible=~np.isnan(keypoints[:, 0]),
                azimuth_id=azimuth,
                extra={k: v for k, v in raw.items() if k not in core},
            )
        except KeyError as err:
            raise DatasetError(f"{path}: missing field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"{path}: malformed annotation: {err}") from None

    def _read_pair(self, path: Path, split: str) -> PairRecord:
        raw = _read_json(path)
        try:
            category = raw["category"]
            src, trg = Path(raw["src_imname"]).stem, Path(raw["trg_imname"]).stem
            kps_ids = tuple(int(k) for k in raw["kps_ids"])
            return PairRecord(
                name=path.stem,
                split=split,
                category=category,
                src=src,
                trg=trg,
                src_bbox=_bbox(raw["src_bndbox"], path, "src_bndbox"),
                trg_bbox=_bbox(raw["trg_bndbox"], path, "trg_bndbox"),
                kps_ids=kps_ids,
                viewpoint_variation=int(raw.get("viewpoint_variation", 0)),
            )
        except KeyError as err:
            raise DatasetError(f"{path}: missing field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"{path}: malformed pair annotation: {err}") from None

    # --- checks --------------------------------------------------------------------------------

    def check_layout(
        self,
        expected_pairs: dict[str, int] | None = None,
        expected_categories: tuple[str, ...] | None = None,
    ) -> dict[str, int]:
        """Verify folders, pair counts, that every pair's files exist and that each image's
        annotation is valid and matches the image's pixel size; return pair counts."""
        for folder in ("JPEGImages", "ImageAnnotation", "PairAnnotation"):
            if not (self.root / folder).is_dir():
                raise DatasetError(f"{self.root}: missing folder {folder}/")
        if expected_categories is not None and self.categories != tuple(expected_categories):
            raise DatasetError(
                f"{self.root}: categories {list(self.categories)} differ from the expected "
                f"{list(expected_categories)}"
            )
        counts = {}
        checked: set[tuple[str, str]] = set()
        for split in SPLITS:
            pairs = self.pairs(split)
            counts[split] = len(pairs)
            for pair in pairs:
                for name in (pair.src, pair.trg):
                    for path in (
                        self.image_path(pair.category, name),
                        self.annotation_path(pair.category, name),
                    ):
                        if not path.is_file():
                            raise DatasetError(f"pair {pair.name}: missing file {path}")
                    if (pair.category, name) not in checked:
                        self.check_image_size(pair.category, name)
                        checked.add((pair.category, name))
        if expected_pairs is not None and counts != expected_pairs:
            raise DatasetError(f"{self.root}: pair counts {counts}, expected {expected_pairs}")
        return counts


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 3-channel RGB (greyscale, CMYK, palette are converted); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot decode image ({err})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return raw


def _floats(value: Any, n: int, path: Path, key: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise DatasetError(f"{path}: '{key}' must hold {n} numbers, got {value!r}")
    return arr


def _bbox(value: Any, path: Path, key: str) -> np.ndarray:
    box = _floats(value, 4, path, key)
    if not np.isfinite(box).all() or box[2] < box[0] or box[3] < box[1]:
        raise DatasetError(
            f"{path}: '{key}' must be [x1, y1, x2, y2] with x2 >= x1, y2 >= y1, got {value!r}"
        )
    return box


def _positive_int(raw: dict[str, Any], key: str, path: Path) -> int:
    value = raw[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != int(value)
        or value < 1
    ):
        raise DatasetError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return int(value)


def _check_inside(keypoints: np.ndarray, width: int, height: int, path: Path) -> None:
    """Visible keypoints lie in [0, width] x [0, height] (pixel corners, both edges included)."""
    visible = ~np.isnan(keypoints[:, 0])
    xy = keypoints[visible]
    outside = ~(
        np.isfinite(xy).all(axis=1)
        & (xy[:, 0] >= 0)
        & (xy[:, 0] <= width)
        & (xy[:, 1] >= 0)
        & (xy[:, 1] <= height)
    )
    if outside.any():
        slot = int(np.flatnonzero(visible)[np.flatnonzero(outside)[0]])
        raise DatasetError(
            f"{path}: keypoint {slot} at {keypoints[slot].tolist()} lies outside the "
            f"{width}x{height} image"
        )
