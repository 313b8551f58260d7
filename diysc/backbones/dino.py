"""DINOv2 patch features as the authors' released code computes them.

The image is resized on its long side and centre-padded with black to `size`×`size` (LANCZOS),
normalised with the ImageNet statistics, and run through `transformers`' `Dinov2Model`. The
features are the last block's token outputs *before* the final LayerNorm (DINOv2's `x_prenorm`),
CLS dropped, as one map of (dim, grid, grid) with grid = size / patch (60 at 840 px for ViT-B/14).
"""

from __future__ import annotations

import torch

from diysc.backbones.base import ViT, patch_tokens_on_grid

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def prenorm_patch_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised images → (B, dim, S/p, S/p) last-block tokens before the LayerNorm.

    `hidden_states[-1]` is the encoder's last block output; `Dinov2Model` applies its final
    LayerNorm only to `last_hidden_state`. Index 0 of the token axis is CLS.
    """
    out = model(pixel_values=pixel_values, output_hidden_states=True)
    side = pixel_values.shape[-1] // model.config.patch_size
    return patch_tokens_on_grid(out.hidden_states[-1][:, 1:], side, "DINOv2")


class DINOv2(ViT):
    """One group, `dino`: the prenorm patch tokens on the size / patch grid."""

    name, title = "dino", "DINOv2"
    model_class, config_class = "Dinov2Model", "Dinov2Config"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"": prenorm_patch_tokens(self.model, pixels)}
