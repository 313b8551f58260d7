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

from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from diysc.backbones import hub, registry
from diysc.backbones.hub import is_local
from diysc.errors import UserError
from diysc.features import FeatureGroup, FeatureMap
from diysc.geometry import ResizePad


class BackboneError(UserError, RuntimeError):
    """A backbone cannot be loaded or does not fit the requested geometry; names the param."""


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


class ViT(Backbone):
    """A vision transformer whose patch tokens, on the size / patch grid, are its one map (DINOv2,
    CLIP). Subclasses name their `transformers` model and config classes and a `title`."""

    model_class: ClassVar[str]
    config_class: ClassVar[str]
    title: ClassVar[str]

    def __init__(self, model, size: int, device: torch.device | str, param: str):
        super().__init__(device)
        self.model = model.to(self.device)
        patch = model.config.patch_size
        if size % patch:
            raise BackboneError(f"{param}.size {size} is not a multiple of the patch size {patch}")
        self.size, self.grid = size, size // patch
        self.group = FeatureGroup(self.name, (FeatureMap("", model.config.hidden_size),))

    @classmethod
    def load(cls, entry, features, device, param: str) -> ViT:
        return cls(cls.load_model(entry.model, f"{param}.model"), entry.size, device, param)

    @classmethod
    def load_model(cls, reference: str, param: str, dtype: torch.dtype = torch.float32):
        """The model from a hub id, a local directory or a built name; errors name `param`."""
        import transformers

        model_class = getattr(transformers, cls.model_class)
        model = hub.load_pretrained(
            param,
            reference,
            registry.resolve(reference, cls.name),
            f"a {cls.title} model",
            lambda source, local: model_class.from_pretrained(
                source, local_files_only=local, dtype=dtype
            ),
            BackboneError,
        )
        return model.eval().requires_grad_(False)

    @classmethod
    def config_dims(cls, source: str) -> tuple[int, ...]:
        import transformers

        config_class = getattr(transformers, cls.config_class)
        try:
            config = config_class.from_pretrained(source, local_files_only=is_local(source))
        except OSError:
            return ()
        return (int(config.hidden_size),)


def patch_tokens_on_grid(tokens: torch.Tensor, side: int, what: str) -> torch.Tensor:
    """(B, side², dim) patch tokens (CLS already dropped) → (B, dim, side, side)."""
    if tokens.shape[1] != side * side:
        raise BackboneError(
            f"{what} returned {tokens.shape[1]} patch tokens, expected {side}x{side} "
            "(a model with register tokens is not supported)"
        )
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
