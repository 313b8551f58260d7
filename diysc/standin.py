"""A stand-in for DINOv2 in the offline preset: a tiny DINOv2 that sees parts up to symmetry.

Foundation features are semantic (the same part of different instances looks alike) but blind to
an object's left/right symmetry, and their appearance drifts with the viewpoint (DIY-SC §1, Tab. 1).
This module gives the offline preset a backbone with exactly that property, learned from pixels:
a `transformers` `Dinov2Model` (a tiny config) trained for a few minutes, seeded and deterministic,
to make each patch's last-block token equal a fixed embedding of what the patch shows:

- where it is on the object *folded across the symmetry plane*: (|x|, y, z) / bounding radius in
  the synthetic generator's object frame (+x = the object's left), so a left part and its right
  counterpart have the same target;
- a view-dependent nuisance: the surface normal in the camera frame, weighted by
  `nuisance_weight`, so the same part looks alike across small viewpoint changes and less so
  across large ones, and a counterpart seen from the mirrored view looks like the part itself;
- background (and occluders) at one fixed point far from every object point;
- which part it is, up to symmetry: one channel per *folded keypoint class* of its category (the
  left and right wheel are one class), a Gaussian bump of the 3D distance to that class's
  keypoints on this instance (width `anchor_width` bounding radii, weight `anchor_weight`).

Position alone is not part identity: instances differ in proportions, so the same keypoint sits
at different normalised positions, and features that were exactly the position embedding reach
only about 17 % PCK@0.1 on the tiny preset's test pairs; the keypoint channels make the target
say "near a front wheel" on every car, as a foundation model's features do (`bench/standin.py`
prints these ceilings).

The position part is random Fourier features (Rahimi & Recht 2007): the dot product of two
targets approximates a Gaussian kernel of width `bandwidth` between the vectors, so the cosine
similarity ranks patches by folded 3D distance plus the part channels' overlap. The training
renders come from the synthetic generator with their own random streams (key "standin"), so
their instances are not the dataset's. The result is written with `save_pretrained` and loaded by
`diysc.backbones.dino` like real weights; its directory name carries a hash of `RECIPE` and of
this module's code closure (renderer included), so a change of either trains a fresh one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diysc.azimuth import AZIMUTH_BINS
from diysc.backbones import tiny
from diysc.backbones.dino import IMAGENET_MEAN, IMAGENET_STD
from diysc.datasets.synthetic.generator import JPEG_QUALITY, View, sample_view
from diysc.datasets.synthetic.render import cast
from diysc.datasets.synthetic.shapes import FAMILIES
from diysc.geometry import ResizePad
from diysc.provenance import code_digest

STANDIN = "standin"

RECIPE = dict(
    architecture=dict(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2, patch_size=14,
        image_size=224,
    ),
    categories=["car", "chair", "quadruped"],
    renders_per_category=300,
    render_size=256,  # as the dataset's images, resized to `size` as the extractor does
    size=224,
    subsamples=2,  # rays per patch side; a patch's target is the mean embedding of its rays
    bandwidth=0.6,  # Gaussian kernel width, in bounding radii
    nuisance_weight=0.3,  # weight of the camera-frame normal against folded position
    background_offset=3.0,  # distance of the background point from every object point
    anchor_width=0.15,  # keypoint-class bump width, in bounding radii
    anchor_weight=3.0,  # weight of the keypoint-class channels against the position features
    steps=1500,
    batch_size=8,
    lr=1.5e-3,
    weight_decay=0.01,
    seed=0,
)  # fmt: skip


def standin_dino() -> Path:
    """The trained stand-in's local model directory (trained once per recipe and code)."""
    return tiny.materialise("standin-dinov2", cache_key(RECIPE), train)


def cache_key(recipe: dict) -> dict:
    """What the stand-in is a function of: its recipe, the code (renderer included) it runs and
    the CPU thread count, which decides the last bits of its float reductions (`DIYSC_THREADS`)."""
    return dict(recipe, code=code_digest(__name__), threads=torch.get_num_threads())


# --- targets -------------------------------------------------------------------------------------


def _keypoint_classes() -> dict[str, tuple[int, list[int]]]:
    """Per category: its first channel and each keypoint slot's class, left and right merged.

    Categories get disjoint blocks of channels (sorted by name), classes numbered in slot order.
    """
    blocks, start = {}, 0
    for category in sorted(FAMILIES):
        names = [
            n.replace("left", "side").replace("right", "side") for n in FAMILIES[category].names
        ]
        order = list(dict.fromkeys(names))
        blocks[category] = (start, [order.index(n) for n in names])
        start += len(order)
    return blocks


KEYPOINT_CLASSES = _keypoint_classes()
ANCHORS = sum(max(slots) + 1 for _, slots in KEYPOINT_CLASSES.values())  # channels in all
VECTOR = 7 + ANCHORS  # folded position, camera normal, background, keypoint classes


def target_vectors(
    view: View, size: int, grid: int, subsamples: int, anchor_width: float
) -> np.ndarray:
    """(grid, grid, s², VECTOR) per ray: [folded position (3), camera-frame normal (3),
    background (1), keypoint-class bumps (ANCHORS)].

    Rays go through `subsamples`² points per patch of the `size` padded frame, mapped back to the
    image; a ray counts as object when the object mask holds its pixel (occluders are background).
    """
    camera, model = view.camera, view.model
    height, width = view.mask.shape
    frame = ResizePad(width, height, size)
    step = size / grid / subsamples
    coords = (np.arange(grid * subsamples) + 0.5) * step  # padded-frame ray positions
    gx, gy = np.meshgrid(coords, coords)  # row-major: y then x
    x = (gx.ravel() - frame.offset[0]) / frame.scale
    y = (gy.ravel() - frame.offset[1]) / frame.scale
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    on_mask = np.zeros_like(inside)
    on_mask[inside] = view.mask[y[inside].astype(int), x[inside].astype(int)]
    cx, cy = camera.principal
    rays = np.stack([(x - cx) / camera.focal, (y - cy) / camera.focal, np.ones_like(x)], axis=1)
    dirs = rays @ camera.rotation  # camera -> object frame
    t, index, normal = cast(list(model.parts), camera.position, dirs)
    hit = on_mask & (index >= 0)
    points = camera.position + t[:, None] * dirs
    vectors = np.zeros((len(x), VECTOR))
    folded = points[hit]
    folded[:, 0] = np.abs(folded[:, 0])  # the symmetry plane is x = 0
    vectors[hit, :3] = folded / model.radius
    vectors[hit, 3:6] = normal[hit] @ camera.rotation.T  # object -> camera frame
    vectors[~hit, 6] = 1.0
    vectors[np.flatnonzero(hit), 7:] = keypoint_bumps(model, folded, anchor_width)
    patches = vectors.reshape(grid, subsamples, grid, subsamples, VECTOR).transpose(0, 2, 1, 3, 4)
    return patches.reshape(grid, grid, subsamples * subsamples, VECTOR)


def keypoint_bumps(model, folded: np.ndarray, width: float) -> np.ndarray:
    """(N, ANCHORS): per keypoint class of the model's category, exp(-d² / 2 width²) of the
    folded points' distance (in bounding radii) to the class's folded keypoints; 0 elsewhere."""
    first, classes = KEYPOINT_CLASSES[model.category]
    keypoints = model.keypoints.copy()
    keypoints[:, 0] = np.abs(keypoints[:, 0])
    distance2 = ((folded[:, None, :] - keypoints[None]) ** 2).sum(-1) / model.radius**2
    bumps = np.zeros((len(folded), ANCHORS))
    for slot, cls in enumerate(classes):  # a counterpart pair folds onto one point: take the max
        column = first + cls
        bumps[:, column] = np.maximum(
            bumps[:, column], np.exp(-distance2[:, slot] / (2 * width**2))
        )
    return bumps


class Embedding:
    """Target features: random Fourier features of the first 7 entries (dot products ≈ a Gaussian
    kernel of them, unit norm), then the keypoint-class bumps times `anchor_weight`."""

    def __init__(
        self, dim: int, bandwidth: float, nuisance: float, background: float, anchor_weight: float,
        seed: int,
    ):  # fmt: skip
        fourier = (dim - ANCHORS) // 2
        if fourier < 1:
            raise ValueError(f"a {dim}-channel stand-in has no room beside {ANCHORS} part channels")
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.randn(7, fourier, generator=generator, dtype=torch.float64)
        self.weights /= bandwidth
        self.scale = torch.tensor([1.0, 1.0, 1.0, nuisance, nuisance, nuisance, background])
        self.anchor_weight = anchor_weight
        self.padding = dim - ANCHORS - 2 * fourier  # an odd remainder stays zero

    def __call__(self, vectors: np.ndarray) -> torch.Tensor:
        """(..., VECTOR) → (..., dim)."""
        v = torch.as_tensor(vectors, dtype=torch.float64)
        phase = (v[..., :7] * self.scale.double()) @ self.weights
        fourier = torch.cat([phase.cos(), phase.sin()], dim=-1) / math.sqrt(self.weights.shape[1])
        padding = v.new_zeros(*v.shape[:-1], self.padding)
        return torch.cat([fourier, padding, self.anchor_weight * v[..., 7:]], dim=-1)


# --- training --------------------------------------------------------------------------------------


def _training_rng(category: str, index: int, seed: int) -> np.random.Generator:
    """A stream per render, apart from the dataset's (which are keyed by category and index only)."""
    key = hashlib.sha256(f"{STANDIN}/{seed}/{category}/{index}".encode()).digest()
    return np.random.default_rng(list(key[:16]))


def embedding(recipe: dict) -> Embedding:
    return Embedding(
        recipe["architecture"]["hidden_size"],
        recipe["bandwidth"],
        recipe["nuisance_weight"],
        recipe["background_offset"],
        recipe["anchor_weight"],
        recipe["seed"],
    )


def render_training_set(recipe: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) uint8 images and (N, grid, grid, s², VECTOR) float32 target vectors."""
    size = recipe["size"]
    grid = size // recipe["architecture"]["patch_size"]
    images, targets = [], []
    for category in recipe["categories"]:
        for index in range(recipe["renders_per_category"]):
            view = sample_view(
                category,
                _training_rng(category, index, recipe["seed"]),
                index % AZIMUTH_BINS,
                recipe["render_size"],
            )
            buffer = io.BytesIO()  # the dataset's JPEG round trip, so the inputs look the same
            Image.fromarray(view.image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            img = Image.open(buffer).convert("RGB")
            padded = ResizePad(img.width, img.height, size).image(img)
            images.append(torch.from_numpy(np.asarray(padded).copy()).permute(2, 0, 1))
            vectors = target_vectors(view, size, grid, recipe["subsamples"], recipe["anchor_width"])
            targets.append(torch.from_numpy(vectors).float())
    return torch.stack(images), torch.stack(targets)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _mirrored(images: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontally mirrored renders: the mirror image of a view shows the mirrored object, whose
    folded positions are the same; the camera-frame normal's x changes sign."""
    vectors = vectors.flip(2).clone()
    vectors[..., 3] *= -1
    return images.flip(-1), vectors


def balanced_loss(tokens: torch.Tensor, targets: torch.Tensor, on_object: torch.Tensor):
    """Squared error, object and background patches weighing half each: the object covers a
    tenth to a quarter of an image, and a plain mean learns mostly the background."""
    error = (tokens - targets).pow(2).sum(-1)
    parts = [error[on_object], error[~on_object]]
    return sum(p.mean() for p in parts if p.numel()) / sum(1 for p in parts if p.numel())


def train(out: Path, recipe: dict | None = None, log=None) -> None:
    """Train the stand-in from scratch (seeded, deterministic on one machine) into `out`."""
    from transformers import Dinov2Config, Dinov2Model

    from diysc.backbones.dino import prenorm_patch_tokens

    recipe = dict(RECIPE if recipe is None else recipe)
    recipe.pop("code", None)
    recipe.pop("threads", None)
    torch.manual_seed(recipe["seed"])
    images, targets = render_training_set(recipe)
    model = Dinov2Model(Dinov2Config(**recipe["architecture"]))
    model.train()
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"]
    )
    steps = recipe["steps"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe["lr"], total_steps=steps)
    generator = torch.Generator().manual_seed(recipe["seed"])
    embed = embedding(recipe)
    for step in range(steps):
        batch = torch.randint(len(images), (recipe["batch_size"],), generator=generator)
        mirror = torch.rand(len(batch), generator=generator) < 0.5
        x, y = images[batch], targets[batch]
        x[mirror], y[mirror] = _mirrored(x[mirror], y[mirror])
        on_object = y[..., 6].mean(dim=-1) < 0.5
        y = embed(y).mean(dim=3).float()  # a patch's target: the mean over its rays
        tokens = prenorm_patch_tokens(model, _normalise(x)).permute(0, 2, 3, 1)
        loss = balanced_loss(tokens, y, on_object)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(step, loss.item())
    model.eval().save_pretrained(out)
    (out / "recipe.json").write_text(json.dumps(recipe, sort_keys=True, indent=1) + "\n")
