"""The backbone protocol: what feature extraction needs from a model (after LightGlue's `Extractor`).

A backbone declares its preprocessing, the input side `size` and the normalisation `mean` / `std`
(the image is resized on its long side and centre-padded by `diysc.geometry.ResizePad`, which owns
that convention), and returns one named *feature group*: one or more maps on the patch grid (or on
the grid divided by a map's `downscale`), each with its channel count. DINOv2's group is one map;
Stable Diffusion's is three (s3, s4, s5). The group (`diysc.features.FeatureGroup`, the cache
format's owner) is what the feature store normalises as a whole and names the shard folder.

A backbone module defines a `Backbone` subclass with `load` and `forward`, and a line in
`diysc.backbones.registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from diysc.errors import UserError
from diysc.features import FeatureGroup
from diysc.geometry import ResizePad


class BackboneError(UserError, RuntimeError):
    """A backbone cannot be loaded or does not fit the requested geometry; names the param."""


def is_local(reference: str) -> bool:
    """A model reference that is a directory (local weights): loaded without the hub."""
    return Path(reference).is_dir()


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB → float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Backbone:
    """Callable: (B, 3, size, size) images in [0, 1] → {map level: (B, dim, side, side) float32}.

    Subclasses set `name`, `mean`, `std` and, in `__init__`, `size`, `grid` and `group`, and
    implement `forward` on normalised pixels, and two class-level functions: `load(entry, features,
    device, param)` builds one from its `features.backbones` entry (`param` names that entry in
    errors) and `config_dims(source)` gives the group's widths from the model's config files
    alone (() when there are none), for checks that must not load weights.
    """

    name: ClassVar[str]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    size: int  # input side: the image is resized and padded to size × size
    grid: int  # side of the full-resolution patch grid
    group: FeatureGroup

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """Resize the long side to `size` (LANCZOS), centre-pad with black: (3, size, size)."""
        return to_tensor(ResizePad(img.width, img.height, self.size).image(img))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = (images.to(self.device) - self._mean) / self._std
        return {level: feats.float() for level, feats in self.forward(pixels).items()}

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def patch_tokens_on_grid(tokens: torch.Tensor, side: int, what: str) -> torch.Tensor:
    """(B, side², dim) patch tokens (CLS already dropped) → (B, dim, side, side)."""
    if tokens.shape[1] != side * side:
        raise BackboneError(
            f"{what} returned {tokens.shape[1]} patch tokens, expected {side}x{side} "
            "(a model with register tokens is not supported)"
        )
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
