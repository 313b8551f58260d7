"""DINOv2 patch features as the reference computes them (official_implementation.md §1.1).

The image is resized on its long side and centre-padded with black to `size`×`size` (LANCZOS),
normalised with the ImageNet statistics, and run through `transformers`' `Dinov2Model`. The
features are the last block's token outputs *before* the final LayerNorm (DINOv2's `x_prenorm`),
CLS dropped, as one map of (dim, grid, grid) with grid = size / patch (60 at 840 px for ViT-B/14).
"""

from __future__ import annotations

import torch

from diysc.backbones import registry
from diysc.backbones.base import (
    Backbone,
    BackboneError,
    is_local,
    patch_tokens_on_grid,
)
from diysc.features import FeatureGroup, FeatureMap

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


def load_model(reference: str, param: str, dtype: torch.dtype = torch.float32):
    """A `Dinov2Model` from a hub id, a local directory or a registered name; errors name `param`."""
    from transformers import Dinov2Model

    source = registry.resolve(reference, DINOv2.name)
    try:
        model = Dinov2Model.from_pretrained(source, local_files_only=is_local(source), dtype=dtype)
    except OSError as err:
        raise BackboneError(
            f"{param} {reference!r}: cannot load a DINOv2 model (not a local directory "
            f"and not in the Hugging Face cache; the hub may be unreachable): {err}"
        ) from None
    return model.eval().requires_grad_(False)


class DINOv2(Backbone):
    """One group, `dino`: the prenorm patch tokens on the size / patch grid."""

    name = "dino"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, model, size: int, device: torch.device | str, param: str):
        super().__init__(device)
        self.model = model.to(self.device)
        patch = model.config.patch_size
        if size % patch:
            raise BackboneError(f"{param}.size {size} is not a multiple of the patch size {patch}")
        self.size, self.grid = size, size // patch
        self.group = FeatureGroup(self.name, (FeatureMap("", model.config.hidden_size),))

    @classmethod
    def load(cls, entry, features, device, param: str) -> DINOv2:
        return cls(load_model(entry.model, f"{param}.model"), entry.size, device, param)

    @staticmethod
    def config_dims(source: str) -> tuple[int, ...]:
        """The group's widths from the model's config (no weights loaded); () without one."""
        from transformers import Dinov2Config

        try:
            config = Dinov2Config.from_pretrained(source, local_files_only=is_local(source))
        except OSError:
            return ()
        return (int(config.hidden_size),)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"": prenorm_patch_tokens(self.model, pixels)}
