"""Which backbones a user command runs, and whether an adapter fits them, decided before extracting.

`diysc match` and `diysc evaluate` call these first: the backbones' widths come from their config
files (no weights are loaded), the adapter's from its state dict, so a mismatch (the authors'
DINO-only 768-channel adapter on the tiny preset's 64-channel stand-in) fails in a second with the
fix named, not after the extraction. Stand-ins (what `diysc.backbones.registry` resolves a reference to:
small models generated for offline tests) are refused unless asked for, since their matches on real
images are noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from diysc.backbones import registry, tiny
from diysc.config.schema import FeaturesParams
from diysc.errors import UserError
from diysc.features import SD_LEVELS

# Hub ids of the DINOv2 ViTs by width: the model an adapter of that DINO width was trained on.
DINO_BY_WIDTH = {
    384: "facebook/dinov2-small",
    768: "facebook/dinov2-base",
    1024: "facebook/dinov2-large",
    1536: "facebook/dinov2-giant",
}
SD_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ALLOW_STAND_IN = "--allow-stand-in"
KIND_OF_PARAM = {"features.dino_model": "dino", "features.sd_model": "sd"}


class CompatibilityError(UserError, ValueError):
    """An adapter and the features it would read do not fit, or a stand-in was not asked for."""


@dataclass(frozen=True)
class Backbone:
    param: str  # the params key naming it, e.g. "features.dino_model"
    reference: str  # the value of that key
    source: str  # what it resolves to: a hub id or a local directory
    dims: tuple[int, ...]  # widths it gives: (dino,) or (s3, s4, s5)

    @property
    def stand_in(self) -> bool:
        return self.source != self.reference

    def describe(self) -> str:
        widths = "/".join(str(d) for d in self.dims)
        kind = "DINO" if len(self.dims) == 1 else "SD " + "/".join(SD_LEVELS)
        where = f"stand-in at {self.source}" if self.stand_in else self.source
        return f"{kind} {widths} ch from {self.param}={self.reference!r} ({where})"


def is_stand_in(reference: str, kind: str) -> bool:
    """True when `reference` names one of `diysc.backbones.tiny`'s offline stand-ins."""
    return registry.resolve(reference, kind) != reference


def backbones(features: FeaturesParams) -> list[Backbone]:
    """The backbones `features` names, SD first then DINO (the adapter's group order), with the
    widths their configs declare. A model that is neither local nor in the Hugging Face cache, with
    the hub unreachable, is an error naming the param and how to provide it."""
    used = []
    if features.sd:
        source = registry.resolve(features.sd_model, "sd")
        used.append(Backbone("features.sd_model", features.sd_model, source, _sd_dims(source)))
    source = registry.resolve(features.dino_model, "dino")
    used.append(Backbone("features.dino_model", features.dino_model, source, _dino_dims(source)))
    for backbone in used:
        if backbone.dims == ():
            raise CompatibilityError(
                f"{backbone.param} {backbone.reference!r}: no model config found (not a local "
                f"directory and not in the Hugging Face cache; the hub may be unreachable). "
                f"{real_weights_hint(backbone.param)}"
            )
    return used


def feature_dims(used: Sequence[Backbone]) -> list[int]:
    return [d for backbone in used for d in backbone.dims]


def real_weights_hint(param: str, width: int | None = None) -> str:
    example = SD_HUB_ID if param == "features.sd_model" else DINO_BY_WIDTH.get(width or 768)
    return (
        f"Point {param} at real weights: a hub id such as --set {param}={example} (where the "
        f"Hugging Face hub is reachable) or a local directory holding the downloaded model "
        f"(--set {param}=/models/<name>)"
    )


def check_adapter(
    adapter_dims: Sequence[int], available: Sequence[int], adapter: str, features: str
) -> None:
    """An adapter takes the full [SD s3, s4, s5, DINO] input or only the trailing DINO group (the
    authors' DINO-only checkpoints); any other widths mean other backbones."""
    adapter_dims, available = list(adapter_dims), list(available)
    if adapter_dims in (available, available[-1:]):
        return
    if len(adapter_dims) == 1:
        wanted = DINO_BY_WIDTH.get(adapter_dims[0], "a DINOv2 of that width")
        fix = f"it needs DINO features of {adapter_dims[0]} channels ({wanted}). " + (
            real_weights_hint("features.dino_model", adapter_dims[0])
        )
    else:
        fix = (
            "use the backbones it was trained with: "
            + real_weights_hint("features.dino_model", adapter_dims[-1])
            + f" and features.sd_model likewise ({SD_HUB_ID})"
        )
    raise CompatibilityError(
        f"{adapter}: the adapter takes feature groups {adapter_dims}, but {features} provide "
        f"{available}; {fix}"
    )


def refuse_stand_ins(references: Mapping[str, str], allowed: bool) -> None:
    """Refuse stand-in backbones (`{param: reference}`) unless `allowed`; name the fix."""
    stand_ins = [p for p, ref in references.items() if is_stand_in(ref, KIND_OF_PARAM[p])]
    if stand_ins and not allowed:
        names = ", ".join(f"{p}={references[p]!r}" for p in stand_ins)
        raise CompatibilityError(
            f"{names}: a small stand-in generated for offline tests, not the real backbone, so "
            f"its correspondences are not meaningful. {real_weights_hint(stand_ins[-1])}"
            + (" (and the other likewise)" if len(stand_ins) > 1 else "")
            + f", or pass {ALLOW_STAND_IN} to run it anyway"
        )


def _dino_dims(source: str) -> tuple[int, ...]:
    from transformers import Dinov2Config

    try:
        config = Dinov2Config.from_pretrained(source, local_files_only=tiny.is_local(source))
    except OSError:
        return ()
    return (int(config.hidden_size),)


def _sd_dims(source: str) -> tuple[int, ...]:
    """(s3, s4, s5): the outputs of the UNet's first three up levels, the down widths reversed."""
    from diffusers import UNet2DConditionModel

    try:
        config = UNet2DConditionModel.load_config(
            source, subfolder="unet", local_files_only=tiny.is_local(source)
        )
    except (OSError, ValueError):
        return ()
    up = list(reversed(config["block_out_channels"]))  # up level i outputs up[i] channels
    by_level = {"s5": up[0], "s4": up[1], "s3": up[2]}
    return tuple(int(by_level[level]) for level in SD_LEVELS)
