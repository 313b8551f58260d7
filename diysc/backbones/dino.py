"""DINOv2 patch features as the authors' released code computes them.

The image is resized on its long side and centre-padded with black to `size`×`size` (LANCZOS),
normalised with the ImageNet statistics, and run through `transformers`' `Dinov2Model`. The
features are the last block's token outputs *before* the final LayerNorm (DINOv2's `x_prenorm`),
CLS dropped, as a (dim, grid, grid) map with grid = size / patch (60 at 840 px for ViT-B/14).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from diysc.backbones import hub, registry
from diysc.errors import UserError
from diysc.geometry import ResizePad

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(UserError, RuntimeError):
    """A backbone cannot be loaded or does not fit the requested geometry; names the param."""


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB → float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def padded_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the long side to `size` (LANCZOS), centre-pad with black: (3, size, size) in [0, 1]."""
    return to_tensor(ResizePad(img.width, img.height, size).image(img))


def prenorm_patch_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised images → (B, dim, S/p, S/p) last-block tokens before the LayerNorm.

    `hidden_states[-1]` is the encoder's last block output; `Dinov2Model` applies its final
    LayerNorm only to `last_hidden_state`. Index 0 of the token axis is CLS.
    """
    out = model(pixel_values=pixel_values, output_hidden_states=True)
    tokens = out.hidden_states[-1][:, 1:]
    patch = model.config.patch_size
    grid_h, grid_w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    if tokens.shape[1] != grid_h * grid_w:
        raise BackboneError(
            f"DINOv2 returned {tokens.shape[1]} patch tokens, expected {grid_h}x{grid_w} "
            "(a model with register tokens is not supported)"
        )
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid_h, grid_w)


def load_model(reference: str, dtype: torch.dtype = torch.float32):
    """A `Dinov2Model` from a hub id, a local directory or "tiny" (errors name `features.dino_model`)."""
    from transformers import Dinov2Model

    model = hub.load_pretrained(
        "features.dino_model",
        reference,
        registry.resolve(reference, "dino"),
        "a DINOv2 model",
        lambda source, local: Dinov2Model.from_pretrained(
            source, local_files_only=local, dtype=dtype
        ),
        BackboneError,
    )
    return model.eval().requires_grad_(False)


class DinoExtractor:
    """Callable: (B, 3, size, size) images in [0, 1] → (B, dim, grid, grid) float32 features."""

    def __init__(self, reference: str, size: int, device: torch.device | str = "cpu"):
        self.model = load_model(reference).to(device)
        self.device = torch.device(device)
        patch = self.model.config.patch_size
        if size % patch:
            raise BackboneError(
                f"features.dino_size {size} is not a multiple of the model's patch size {patch}"
            )
        self.size, self.grid, self.dim = size, size // patch, self.model.config.hidden_size
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return padded_tensor(img, self.size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.to(self.device) - self._mean) / self._std
        return prenorm_patch_tokens(self.model, pixels).float()
