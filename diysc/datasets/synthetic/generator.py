"""Offline synthetic dataset in the SPair-71k layout.

`generate(out_dir, params)` renders procedural 3D models (`diysc.datasets.synthetic.shapes`) with
the depth-tested renderer of `diysc.datasets.synthetic.render` and writes a complete SPair-71k tree
that the ordinary reader (`diysc.data.spair.SPairDataset`) loads with no special case:

```
JPEGImages/<cat>/<stem>.jpg           ImageAnnotation/<cat>/<stem>.json
Segmentation/<cat>/<stem>.png         PairAnnotation/<split>/<NNNNNN>-<src>-<trg>:<cat>.json
Layout/large/<split>.txt              synthetic.json (generator settings, keypoint names)
```

Every image shows its own instance; the first half of a category's images are `trn`, a quarter
`val`, a quarter `test`, so the splits share no instance. Within each split the azimuth bins are a
shuffled `0, 1, ..., 7, 0, 1, ...`, so every split covers all eight bins. Everything derives from
`params.seed`: the output is byte-identical for the same parameters.

Image annotations carry the real SPair fields (`filename`, `image_width`, `image_height`,
`image_depth`, `category`, `pose`, `truncated`, `occluded`, `difficult`, `bndbox` [x1, y1, x2, y2],
`kps` with 30 keys "0".."29" ([x, y] or null), `azimuth_id` 0..7) plus these extra fields:

- `kps_3d`: 30 keys "0".."29" -> [x, y, z] of the keypoint on this instance's 3D model, in its
  object frame (+x the object's left, +y up, +z its front; origin at the bounding-box centre),
  given for every keypoint the category defines, visible or not; null for unused slots.
- `kps_names`: 30 keys -> the keypoint's name (e.g. "front left wheel"), null for unused slots.
- `symmetry_pairs`: [[i, j], ...] slots of left/right counterparts (i left, j right).
- `azimuth`, `elevation`: the camera's continuous angles in degrees (azimuth 0 = the object's front,
  90 = its left side; `azimuth_id = round(azimuth / 45) mod 8`).
- `camera`: {"intrinsics": 3x3 K, "extrinsics": 3x4 [R | t], object frame -> camera (x right,
  y down, z forward)}, so `K (R X + t)` projects `kps_3d` onto `kps` (for visible keypoints).
- `instance_id`: the instance's index within its category.

Keypoints are floats rounded to 0.01 px in the `diysc.geometry` image frame (origin at the top-left
pixel corner); `bndbox` is the integer extent of the visible mask (x2, y2 exclusive). A keypoint is
annotated iff it is inside the image, the first surface along its camera ray is the keypoint itself
(depth test) and its pixel or one of its 8 neighbours belongs to the object mask. Segmentation PNGs
are 8-bit greyscale, 255 = object, 0 = background.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from diysc.azimuth import AZIMUTH_BINS, BIN_DEGREES, azimuth_difference, azimuth_to_bin
from diysc.config.schema import ParamsError, SyntheticParams
from diysc.data.spair import NUM_KEYPOINTS, SPLITS
from diysc.datasets.synthetic import exact
from diysc.datasets.synthetic.render import (
    BOX,
    CYLINDER,
    Camera,
    Primitive,
    Texture,
    render,
    visible_points,
)
from diysc.datasets.synthetic.shapes import FAMILIES, Model, build
from diysc.io import atomic_dir

POSES = ("Frontal", "Left", "Rear", "Right")  # VOC pose of the nearest quadrant of the azimuth
MIN_KEYPOINTS = 3  # a view is re-drawn until at least this many keypoints are visible
JPEG_QUALITY = 90  # baseline JPEG, libjpeg's integer DCT: the same bytes with any SIMD path
# Stored (uncompressed) deflate blocks: zlib-ng, which Pillow bundles, picks its match finder and
# hash per CPU, so compressed PNG bytes may differ between machines; stored blocks cannot.
PNG_COMPRESS_LEVEL = 0


def check_categories(categories: Sequence[str]) -> None:
    """Unknown or repeated category names are errors naming `datasets.synthetic.categories`."""
    for name in categories:
        if name not in FAMILIES:
            raise ParamsError(
                f"'datasets.synthetic.categories': unknown category {name!r} "
                f"(known: {', '.join(sorted(FAMILIES))})"
            )
    if len(set(categories)) != len(categories):
        raise ParamsError(
            f"'datasets.synthetic.categories': repeated category in {list(categories)}"
        )


def split_sizes(images_per_category: int) -> dict[str, int]:
    """50 / 25 / 25 %: val and test get a quarter each, trn the rest."""
    quarter = images_per_category // 4
    return {"trn": images_per_category - 2 * quarter, "val": quarter, "test": quarter}


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent stream per (seed, keys): reproducible whatever the generation order."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else k for k in keys]
    return np.random.default_rng([seed, *ints])


@dataclass(frozen=True)
class View:
    """One rendered image with its annotation, before it is written."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, visible object pixels
    keypoints: np.ndarray  # (K, 2) image (x, y) of every model keypoint
    visible: np.ndarray  # (K,) bool
    model: Model
    camera: Camera
    azimuth: float
    elevation: float
    truncated: bool
    occluded: bool


def render_view(
    model: Model,
    camera: Camera,
    light: np.ndarray,
    background: np.ndarray,
    occluders: Sequence[Primitive] = (),
) -> View:
    """Render `model` (and any occluders) over `background`; keypoint visibility by depth test."""
    prims = list(model.parts) + list(occluders)
    result = render(prims, camera, light)
    hit = ~np.isnan(result.image[..., 0])
    image = np.where(hit[..., None], np.nan_to_num(result.image) * 255, background)
    xy, _ = camera.project(model.keypoints)
    visible = visible_points(prims, camera, model.keypoints, model.owners, model.reach)
    visible &= _near_mask(result.object_mask, xy)
    silhouette = result.unoccluded_mask
    border = np.concatenate([silhouette[0], silhouette[-1], silhouette[:, 0], silhouette[:, -1]])
    hidden = silhouette.sum() - result.object_mask.sum()
    return View(
        image=np.round(image).astype(np.uint8),
        mask=result.object_mask,
        keypoints=xy,
        visible=visible,
        model=model,
        camera=camera,
        azimuth=float(camera.azimuth % 360),
        elevation=float(camera.elevation),
        truncated=bool(border.any()),
        occluded=bool(hidden > 0.02 * max(silhouette.sum(), 1)),
    )


def _near_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N,) bool: the pixel holding each point, or one of its 8 neighbours, is on the mask.

    Keypoints on a silhouette's edge or corner keep their label even where the ray through their
    pixel's centre just misses the object.
    """
    padded = np.pad(mask, 1)
    cols = np.clip(np.floor(xy[:, 0]), 0, mask.shape[1] - 1).astype(int) + 1
    rows = np.clip(np.floor(xy[:, 1]), 0, mask.shape[0] - 1).astype(int) + 1
    near = np.zeros(len(xy), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= padded[rows + dy, cols + dx]
    return near


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A two-tone gradient with a horizon and random 2D clutter, (H, W, 3) float 0..255.

    The clutter is rasterised in integer arithmetic (corners on the pixel grid), so it is the same
    on every machine; the noise is integer-valued (a sum of uniform integers, std ~ 4).
    """
    top, bottom = exact.uniform(rng, 40, 230, 3), exact.uniform(rng, 20, 200, 3)
    horizon = exact.uniform(rng, 0.3, 0.7) * height
    y = np.arange(height)[:, None, None]
    sky = top + (bottom - top) * 0.3 * y / height
    ground = bottom * (0.8 + 0.2 * y / height)
    canvas = (np.where(y < horizon, sky, ground) * np.ones((1, width, 1))).astype(np.uint8)
    # doubled coordinates of the pixel centres: pixel (i, j) has its centre at (2i + 1, 2j + 1) / 2
    cx = 2 * np.arange(width, dtype=np.int64)[None, :] + 1
    cy = 2 * np.arange(height, dtype=np.int64)[:, None] + 1
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = (int(rng.integers(-width // 10, width)), int(rng.integers(-height // 10, height)))
        w = int(rng.integers(max(width * 3 // 100, 1), width * 3 // 10 + 1))
        h = int(rng.integers(max(height * 3 // 100, 1), height * 3 // 10 + 1))
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        kind = rng.integers(0, 4)
        if kind == 0:  # rectangle
            inside = (cx >= 2 * x0) & (cx <= 2 * (x0 + w)) & (cy >= 2 * y0) & (cy <= 2 * (y0 + h))
        elif kind == 1:  # ellipse inscribed in the box
            ex, ey = (cx - (2 * x0 + w)) * h, (cy - (2 * y0 + h)) * w
            inside = ex * ex + ey * ey <= (w * h) ** 2
        elif kind == 2:  # triangle with corners in the box
            corners = [
                (2 * (x0 + int(rng.integers(0, w + 1))), 2 * (y0 + int(rng.integers(0, h + 1))))
                for _ in range(3)
            ]
            edges = [
                (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
                for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1], strict=True)
            ]
            inside = ((edges[0] >= 0) & (edges[1] >= 0) & (edges[2] >= 0)) | (
                (edges[0] <= 0) & (edges[1] <= 0) & (edges[2] <= 0)
            )
        else:  # line across the box's diagonal, `thickness` px wide
            thickness = int(rng.integers(1, 5))
            dx, dy = 2 * w, 2 * h
            along = (cx - 2 * x0) * dx + (cy - 2 * y0) * dy
            across = (cx - 2 * x0) * dy - (cy - 2 * y0) * dx
            length2 = dx * dx + dy * dy
            inside = (along >= 0) & (along <= length2)
            inside &= across * across <= thickness * thickness * length2
        canvas[np.broadcast_to(inside, (height, width))] = colour
    noise = rng.integers(-3, 4, (4, height, width, 3)).sum(axis=0)
    return np.clip(canvas + noise, 0, 255).astype(float)


def sample_view(category: str, rng: np.random.Generator, azimuth_bin: int, image_size: int) -> View:
    """A random instance of `category` seen from inside `azimuth_bin`, with clutter and occluders."""
    model = build(category, rng)
    long_side = image_size
    short_side = int(round(image_size * exact.uniform(rng, 0.65, 1.0)))
    width, height = (
        (long_side, short_side) if exact.uniform(rng) < 0.75 else (short_side, long_side)
    )
    for _attempt in range(20):
        azimuth = azimuth_bin * BIN_DEGREES + exact.uniform(rng, -20, 20)
        elevation = exact.uniform(rng, 3, 35)
        focal = long_side * exact.uniform(rng, 0.9, 1.4)
        fill = exact.uniform(rng, 0.55, 0.95)  # bounding-sphere diameter / short side
        radius_px = fill * min(width, height) / 2
        distance = focal * model.radius / radius_px
        slack = np.maximum(np.array([width, height]) / 2 - radius_px * 0.8, 0)
        shift = exact.uniform(rng, -1, 1, 2) * slack
        if exact.uniform(rng) < 0.15:  # sometimes push the object over the border (truncation)
            shift += (
                np.sign(exact.uniform(rng, -1, 1, 2)) * radius_px * exact.uniform(rng, 0.2, 0.5)
            )
        camera = Camera.orbit(
            azimuth,
            elevation,
            distance,
            focal,
            width,
            height,
            principal=(width / 2 + shift[0], height / 2 + shift[1]),
        )
        occluders = _occluders(rng, camera, model) if exact.uniform(rng) < 0.25 else []
        light_cam = np.array([exact.uniform(rng, -0.7, 0.7), exact.uniform(rng, -1, -0.3), -1.0])
        light = exact.apply(camera.rotation.T, light_cam)
        view = render_view(model, camera, light, background(rng, width, height), occluders)
        if view.visible.sum() >= MIN_KEYPOINTS and view.mask.mean() > 0.02:
            return view
    raise RuntimeError(f"{category}: no usable view in azimuth bin {azimuth_bin} after 20 tries")


def _occluders(rng: np.random.Generator, camera: Camera, model: Model) -> list[Primitive]:
    """A vertical post between the camera and the object, hiding part of it."""
    right = camera.rotation[0]
    along = exact.uniform(rng, 0.35, 0.6)
    centre = (
        camera.position * (1 - along) + right * model.radius * exact.uniform(rng, -0.7, 0.7) * along
    )
    centre[1] = 0.0
    thickness = model.radius * along * exact.uniform(rng, 0.06, 0.15)
    colour = tuple(float(c) for c in exact.uniform(rng, 0.1, 0.9, 3))
    texture = Texture(
        "stripes", tuple(np.array(colour) * 0.6), float(exact.uniform(rng, 8, 20)), (0, 1, 0)
    )
    kind = CYLINDER if exact.uniform(rng) < 0.5 else BOX
    half = np.array([thickness, 4 * model.radius, thickness])
    return [Primitive(kind, centre, half, colour, texture=texture, part_of_object=False)]


# --- annotations --------------------------------------------------------------------------------


def _r(values, digits: int) -> list:
    return [round(float(v), digits) for v in np.asarray(values).ravel()]


def image_annotation(view: View, category: str, stem: str, instance_id: int) -> dict:
    family = FAMILIES[category]
    rows, cols = np.nonzero(view.mask)
    kps, kps_3d, names = {}, {}, {}
    for slot in range(NUM_KEYPOINTS):
        key = str(slot)
        defined = slot < len(family.names)
        visible = defined and view.visible[slot]
        kps[key] = _r(view.keypoints[slot], 2) if visible else None
        kps_3d[key] = _r(view.model.keypoints[slot], 4) if defined else None
        names[key] = family.names[slot] if defined else None
    return {
        "filename": f"{stem}.jpg",
        "src_database": "diysc synthetic",
        "src_annotation": "diysc synthetic",
        "src_image": "rendered",
        "image_width": view.camera.width,
        "image_height": view.camera.height,
        "image_depth": 3,
        "category": category,
        "pose": POSES[int(round(view.azimuth / 90)) % 4],
        "truncated": int(view.truncated),
        "occluded": int(view.occluded),
        "difficult": 0,
        "bndbox": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1],
        "kps": kps,
        "azimuth_id": azimuth_to_bin(view.azimuth),
        "kps_3d": kps_3d,
        "kps_names": names,
        "symmetry_pairs": family.symmetry_pairs,
        "azimuth": round(view.azimuth, 3),
        "elevation": round(view.elevation, 3),
        "camera": {
            "intrinsics": [_r(row, 4) for row in view.camera.intrinsics],
            "extrinsics": [_r(row, 6) for row in view.camera.extrinsics],
        },
        "instance_id": instance_id,
    }


def viewpoint_variation(azimuth_src: int, azimuth_trg: int) -> int:
    """0 easy (bins at most 1 apart), 1 medium (2-3), 2 difficult (opposite), as in SPair."""
    d = azimuth_difference(azimuth_src, azimuth_trg)
    return 0 if d <= 1 else 1 if d <= 3 else 2


def scale_variation(box_src, box_trg) -> int:
    """From the ratio of bbox areas: 0 below 2, 1 below 4, else 2 (fits SPair's labels)."""
    area = [max((b[2] - b[0]) * (b[3] - b[1]), 1) for b in (box_src, box_trg)]
    ratio = max(area) / min(area)
    return 0 if ratio < 2 else 1 if ratio < 4 else 2


def pair_annotation(pair_id: int, src: dict, trg: dict) -> dict:
    common = [
        k
        for k in map(str, range(NUM_KEYPOINTS))
        if src["kps"][k] is not None and trg["kps"][k] is not None
    ]
    src_stem, trg_stem = Path(src["filename"]).stem, Path(trg["filename"]).stem
    category = src["category"]
    return {
        "pair_id": pair_id,
        "filename": f"{pair_id:06d}-{src_stem}-{trg_stem}:{category}",
        "src_imname": src["filename"],
        "trg_imname": trg["filename"],
        "src_imsize": [src["image_width"], src["image_height"], 3],
        "trg_imsize": [trg["image_width"], trg["image_height"], 3],
        "src_bndbox": src["bndbox"],
        "trg_bndbox": trg["bndbox"],
        "category": category,
        "src_pose": src["pose"],
        "trg_pose": trg["pose"],
        "src_kps": [src["kps"][k] for k in common],
        "trg_kps": [trg["kps"][k] for k in common],
        "kps_ids": common,
        "mirror": 0,
        "viewpoint_variation": viewpoint_variation(src["azimuth_id"], trg["azimuth_id"]),
        "scale_variation": scale_variation(src["bndbox"], trg["bndbox"]),
        "truncation": src["truncated"] + 2 * trg["truncated"],
        "occlusion": src["occluded"] + 2 * trg["occluded"],
    }


def choose_pairs(
    annotations: dict[str, dict], count: int, rng: np.random.Generator, key: str
) -> list[tuple[str, str]]:
    """`count` distinct ordered (src, trg) pairs sharing a visible keypoint, sorted by name.

    Every image is in at least one pair, so readers that list a split's images from its pairs
    (as the official code does) see all of them, and so all eight azimuth bins.
    """
    stems = sorted(annotations)
    shared = [
        (s, t)
        for s in stems
        for t in stems
        if s != t
        and any(
            annotations[s]["kps"][k] is not None and annotations[t]["kps"][k] is not None
            for k in annotations[s]["kps"]
        )
    ]
    if len(shared) < count:
        raise ParamsError(
            f"'{key}': {count} pairs asked for, but only {len(shared)} ordered pairs of the "
            f"{len(stems)} images share a visible keypoint; lower '{key}' or raise "
            "'datasets.synthetic.images_per_category'"
        )
    order = [shared[i] for i in rng.permutation(len(shared))]
    chosen: list[tuple[str, str]] = []
    for stem in (stems[i] for i in rng.permutation(len(stems))):  # cover every image first
        if any(stem in pair for pair in chosen):
            continue
        with_stem = [pair for pair in order if stem in pair and pair not in chosen]
        if not with_stem:
            raise ParamsError(
                f"'{key}': image {stem} shares no visible keypoint with any other "
                "image of its split; try another 'datasets.synthetic.seed'"
            )
        fresh = [pair for pair in with_stem if not any(s in c for c in chosen for s in pair)]
        chosen.append((fresh or with_stem)[0])
    if len(chosen) > count:
        raise ParamsError(
            f"'{key}': {count} pairs cannot include each of the {len(stems)} images "
            f"at least once; use at least {len(chosen)}"
        )
    chosen += [pair for pair in order if pair not in chosen][: count - len(chosen)]
    return sorted(chosen)


# --- writing ------------------------------------------------------------------------------------


def _dump(data: dict) -> str:
    return json.dumps(data)  # one line, no trailing newline, as the official files


def generate(out_dir: Path, params: SyntheticParams) -> None:
    """Write the whole synthetic SPair-layout tree to `out_dir` atomically (replacing it)."""
    check_categories(params.categories)
    sizes = split_sizes(params.images_per_category)
    categories = sorted(params.categories)  # pair ids increase with category, as in SPair
    jobs = [
        (cat, split, index, int(azimuth_bin))
        for cat in categories
        for split, index, azimuth_bin in _split_plan(params.seed, cat, sizes)
    ]
    with atomic_dir(out_dir) as root:
        annotations: dict[tuple[str, str], dict[str, dict]] = {}
        for cat, split, index, azimuth_bin in tqdm(jobs, desc="rendering", unit="img"):
            stem = f"{cat}_{index:04d}"
            view = sample_view(cat, _rng(params.seed, cat, index), azimuth_bin, params.image_size)
            annotation = image_annotation(view, cat, stem, index)
            annotations.setdefault((cat, split), {})[stem] = annotation
            _write_image(root, cat, stem, view, annotation)
        pair_id = {split: 0 for split in SPLITS}
        for split in SPLITS:
            names = []
            for cat in categories:
                key = f"datasets.synthetic.pairs_{split}"
                chosen = choose_pairs(
                    annotations[cat, split],
                    getattr(params, f"pairs_{split}"),
                    _rng(params.seed, cat, split, "pairs"),
                    key,
                )
                for src, trg in chosen:
                    pair_id[split] += 1
                    pair = pair_annotation(
                        pair_id[split], annotations[cat, split][src], annotations[cat, split][trg]
                    )
                    path = root / "PairAnnotation" / split / f"{pair['filename']}.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(_dump(pair))
                    names.append(pair["filename"])
            layout = root / "Layout" / "large" / f"{split}.txt"
            layout.parent.mkdir(parents=True, exist_ok=True)
            layout.write_text("".join(f"{n}\n" for n in names))
        info = {
            "generator": "diysc.datasets.synthetic.generator",
            "params": {**params.__dict__, "categories": list(params.categories)},
            "split_sizes": sizes,
            "keypoints": {cat: list(FAMILIES[cat].names) for cat in categories},
            "symmetry_pairs": {cat: FAMILIES[cat].symmetry_pairs for cat in categories},
        }
        (root / "synthetic.json").write_text(json.dumps(info, indent=2) + "\n")


def _split_plan(seed: int, category: str, sizes: dict[str, int]):
    """(split, image index, azimuth bin): consecutive indices per split, bins 0..7 cycled, shuffled."""
    start = 0
    for split in SPLITS:
        bins = _rng(seed, category, split, "bins").permutation(
            np.arange(sizes[split]) % AZIMUTH_BINS
        )
        for k, azimuth_bin in enumerate(bins):
            yield split, start + k, azimuth_bin
        start += sizes[split]


def _write_image(root: Path, category: str, stem: str, view: View, annotation: dict) -> None:
    for folder in ("JPEGImages", "ImageAnnotation", "Segmentation"):
        (root / folder / category).mkdir(parents=True, exist_ok=True)
    Image.fromarray(view.image).save(
        root / "JPEGImages" / category / f"{stem}.jpg", quality=JPEG_QUALITY
    )
    Image.fromarray(view.mask.astype(np.uint8) * 255).save(
        root / "Segmentation" / category / f"{stem}.png", compress_level=PNG_COMPRESS_LEVEL
    )
    (root / "ImageAnnotation" / category / f"{stem}.json").write_text(_dump(annotation))


def dataset_digest(path: Path) -> str:
    """sha256 of a file, or of a tree's sorted (relative path, file sha256) list."""
    path = Path(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    listing = "".join(
        f"{p.relative_to(path).as_posix()}\0{dataset_digest(p)}\n"
        for p in sorted(path.rglob("*"))
        if p.is_file()
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def split_views(params: SyntheticParams, category: str, split: str) -> dict[str, View]:
    """The rendered views behind one split of a category, by stem: what `generate` drew for them
    (same streams), with the 3D model and camera that the files only summarise."""
    views = {}
    for image_split, index, azimuth_bin in _split_plan(
        params.seed, category, split_sizes(params.images_per_category)
    ):
        if image_split == split:
            rng = _rng(params.seed, category, index)
            views[f"{category}_{index:04d}"] = sample_view(
                category, rng, int(azimuth_bin), params.image_size
            )
    return views
