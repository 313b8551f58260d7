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

from diysc.backbones import registry, tiny
from diysc.backbones.base import (
    Backbone,
    BackboneError,
    is_local,
    patch_tokens_on_grid,
)
from diysc.features import FeatureGroup, FeatureMap

HUB_ID = "openai/clip-vit-base-patch16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=224, patch_size=16,
)  # fmt: skip


class CLIP(Backbone):
    """One group, `clip`: the last layer's patch tokens on the size / patch grid."""

    name = "clip"
    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, model, size: int, device: torch.device | str, param: str):
        super().__init__(device)
        self.model = model.to(self.device)
        patch = model.config.patch_size
        if size % patch:
            raise BackboneError(f"{param}.size {size} is not a multiple of the patch size {patch}")
        self.size, self.grid = size, size // patch
        self.group = FeatureGroup(self.name, (FeatureMap("", model.config.hidden_size),))

    @classmethod
    def load(cls, entry, features, device, param: str) -> CLIP:
        from transformers import CLIPVisionModel

        source = registry.resolve(entry.model, cls.name)
        try:
            model = CLIPVisionModel.from_pretrained(source, local_files_only=is_local(source))
        except OSError as err:
            raise BackboneError(
                f"{param}.model {entry.model!r}: cannot load a CLIP vision model (not a local "
                f"directory and not in the Hugging Face cache; the hub may be unreachable): {err}"
            ) from None
        return cls(model.eval().requires_grad_(False), entry.size, device, param)

    @staticmethod
    def config_dims(source: str) -> tuple[int, ...]:
        from transformers import CLIPVisionConfig

        try:
            config = CLIPVisionConfig.from_pretrained(source, local_files_only=is_local(source))
        except OSError:
            return ()
        return (int(config.hidden_size),)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(pixel_values=pixels, interpolate_pos_encoding=True)
        return {"": patch_tokens_on_grid(out.last_hidden_state[:, 1:], self.grid, "CLIP")}


def tiny_clip() -> Path:
    return tiny.materialise("clip", TINY_CONFIG, _build_tiny)


def _build_tiny(out: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(**TINY_CONFIG)).save_pretrained(out)
