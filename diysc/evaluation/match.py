"""Correspondences between a user's own two images (`diysc match`).

The two images go through the same backbones and the same feature cache format as the pipeline
(a throw-away `FeatureStore` directory), so resizing, concatenation and normalisation are exactly
those the evaluation uses. Points are given and returned in each image's own pixel frame.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diysc.backbones.dino import DinoExtractor
from diysc.backbones.sd import SDExtractor
from diysc.config.schema import EvalParams, FeaturesParams
from diysc.evaluation.predict import transfer
from diysc.evaluation.run import adapter_describer, zero_shot_describer
from diysc.features import SD_LEVELS, FeatureStore
from diysc.geometry import ResizePad
from diysc.io import save_shard

CATEGORY = "match"  # the one category of the throw-away store


@dataclass(frozen=True)
class Matches:
    src_xy: np.ndarray  # (N, 2) points in image A's pixel frame
    trg_xy: np.ndarray  # (N, 2) their correspondences in image B's pixel frame
    method: str  # "adapter" or "zero_shot"


def grid_points(width: int, height: int, n: int) -> np.ndarray:
    """n×n points at the centres of an even grid over a width×height image."""
    xs = (np.arange(n) + 0.5) * width / n
    ys = (np.arange(n) + 0.5) * height / n
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def write_store(
    images: dict[str, object],
    params: FeaturesParams,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
) -> Path:
    """Extract features of a few PIL images into a feature cache at `out_dir` (category 'match')."""

    out_dir = Path(out_dir)
    dtype = getattr(torch, params.dtype)
    dino = DinoExtractor(params.dino_model, params.dino_size, device)
    names = list(images)
    dino_feats = dino(torch.stack([dino.preprocess(img) for img in images.values()]))
    save_shard(
        out_dir / "dino" / f"{CATEGORY}.safetensors",
        {n: dino_feats[i].to("cpu", dtype) for i, n in enumerate(names)},
    )
    sd_dims: list[int] = []
    if params.sd:
        sd = SDExtractor(
            params.sd_model, params.sd_size, params.sd_timestep, params.sd_seed, device
        )
        sd_feats = sd(torch.stack([sd.preprocess(img) for img in images.values()]))
        save_shard(
            out_dir / "sd" / f"{CATEGORY}.safetensors",
            {
                f"{n}.{level}": sd_feats[level][i].to("cpu", dtype)
                for i, n in enumerate(names)
                for level in SD_LEVELS
            },
        )
        sd_dims = [sd.dims[level] for level in SD_LEVELS]
    info = {
        "size": params.dino_size,
        "grid": dino.grid,
        "dino_dim": dino.dim,
        "sd_dims": sd_dims,
        "sd": params.sd,
        "dtype": params.dtype,
        "categories": [CATEGORY],
    }
    (out_dir / "info.json").write_text(json.dumps(info))
    return out_dir


def match_images(
    img_a,
    img_b,
    features: FeaturesParams,
    settings: EvalParams,
    adapter: torch.nn.Module | None = None,
    points: np.ndarray | None = None,
    grid: int = 6,
    device: torch.device | str = "cpu",
) -> Matches:
    """Transfer points of image A (given, or an even grid) to image B, with `adapter`'s refined
    features or, without one, the zero-shot features. Check the adapter against the backbones
    first (`diysc.compatibility`): this extracts features before it uses the adapter.

    Predictions that fall on B's padding (the evaluation does not mask them) are clamped to the
    picture.
    """

    src_xy = (
        grid_points(img_a.width, img_a.height, grid)
        if points is None
        else np.asarray(points, float)
    )
    if src_xy.ndim != 2 or src_xy.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) x, y pairs, got shape {src_xy.shape}")
    outside = (
        (src_xy < 0).any(axis=1) | (src_xy[:, 0] >= img_a.width) | (src_xy[:, 1] >= img_a.height)
    )
    if outside.any():
        raise ValueError(
            f"points {src_xy[outside].tolist()} lie outside image A ({img_a.width}×{img_a.height})"
        )
    with tempfile.TemporaryDirectory(prefix="diysc-match-") as tmp:
        store = FeatureStore(write_store({"a": img_a, "b": img_b}, features, tmp, device))
        if adapter is not None:
            describe, method = adapter_describer(store, adapter, device), "adapter"
        else:
            describe, method = zero_shot_describer(store, device), "zero_shot"
        desc_a, desc_b = describe(CATEGORY, "a"), describe(CATEGORY, "b")
        frame_a = ResizePad(img_a.width, img_a.height, store.size)
        frame_b = ResizePad(img_b.width, img_b.height, store.size)
        src_padded = torch.as_tensor(frame_a.points(src_xy), dtype=torch.float32)
        pred = transfer(
            desc_a,
            desc_b,
            src_padded.to(desc_a.device),
            store.size,
            store.grid,
            soft=settings.soft,
            window=settings.window,
            beta=settings.beta,
        )
    # padded frame → B's pixels: the inverse of ResizePad.points
    trg_xy = (pred.cpu().numpy().astype(np.float64) - np.asarray(frame_b.offset)) / frame_b.scale
    # a prediction on B's zero padding is reported at the nearest picture pixel
    trg_xy = np.clip(trg_xy, 0, [img_b.width - 1, img_b.height - 1])
    return Matches(src_xy, trg_xy, method)
