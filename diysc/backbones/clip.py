"""CLIP ViT patch features through `transformers`' `CLIPVisionModel` (real weights:
`openai/clip-vit-base-patch16`, ViT-B/16: 768 channels, a 14 × 14 grid at 224 px).

The image is resized and centre-padded to `size` and normalised with CLIP's statistics. The
features are the last layer's patch tokens (`last_hidden_state`, which CLIP's final LayerNorm does
not touch: it normalises only the pooled CLS token), CLS dropped, as one map of (dim, grid, grid)
with grid = size / patch. At a size other than the model's `image_size` the position embeddings
are interpolated (`interpolate_pos_encoding`).

`tiny` is a seeded random CLIP vision tower of the same layout, built into the cache
(`diysc.backbones.tiny.materialise`) for the offline tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diysc.backbones import tiny
from diysc.backbones.base import ViT, patch_tokens_on_grid

HUB_ID = "openai/clip-vit-base-patch16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=224, patch_size=16,
)  # fmt: skip


class CLIP(ViT):
    """One group, `clip`: the last layer's patch tokens on the size / patch grid."""

    name, title = "clip", "CLIP vision"
    model_class, config_class = "CLIPVisionModel", "CLIPVisionConfig"
    mean, std = CLIP_MEAN, CLIP_STD

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(pixel_values=pixels, interpolate_pos_encoding=True)
        return {"": patch_tokens_on_grid(out.last_hidden_state[:, 1:], self.grid, "CLIP")}


def tiny_clip() -> Path:
    return tiny.materialise("clip", TINY_CONFIG, _build_tiny)


def _build_tiny(out: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(**TINY_CONFIG)).save_pretrained(out)
