"""Which backbones a user command runs, and whether an adapter fits them, decided before extracting.

`diysc match` and `diysc evaluate` call these first: the backbones' widths come from their config
files (no weights are loaded; each backbone's `config_dims`), the adapter's from its state dict,
so a mismatch (the authors' DINO-only 768-channel adapter on the tiny preset's 64-channel
stand-in) fails in a second with the fix named, not after the extraction. Stand-ins (model names
`diysc.backbones.registry` builds locally: small or random models for offline tests) are refused
unless asked for, since their matches on real images are noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from diysc.backbones import registry
from diysc.config.schema import FeaturesParams
from diysc.errors import UserError
from diysc.features import adapter_groups

# Hub ids of the DINOv2 ViTs by width: the model an adapter of that DINO width was trained on.
DINO_BY_WIDTH = {
    384: "facebook/dinov2-small",
    768: "facebook/dinov2-base",
    1024: "facebook/dinov2-large",
    1536: "facebook/dinov2-giant",
}
ALLOW_STAND_IN = "--allow-stand-in"


class CompatibilityError(UserError, ValueError):
    """An adapter and the features it would read do not fit, or a stand-in was not asked for."""


@dataclass(frozen=True)
class Backbone:
    param: str  # the params key naming its model, e.g. "features.backbones.dino.model"
    name: str  # its registry name, which is its feature group's
    reference: str  # the value of that key
    source: str  # what it resolves to: a hub id or a local directory
    dims: tuple[int, ...]  # widths of its group's maps: (dino,) or (s3, s4, s5)

    @property
    def stand_in(self) -> bool:
        return registry.is_built(self.reference, self.name)

    def describe(self) -> str:
        widths = "/".join(str(d) for d in self.dims)
        where = f"stand-in at {self.source}" if self.stand_in else self.source
        return f"{self.name} {widths} ch from {self.param}={self.reference!r} ({where})"


def configured(features: FeaturesParams, groups: Sequence[str] | None = None) -> dict[str, tuple]:
    """{param: (backbone name, model reference)} of the configured backbones (those of `groups`)."""
    return {
        f"features.backbones.{name}.model": (name, entry.model)
        for name, entry in features.backbones.items()
        if groups is None or name in groups
    }


def backbones(features: FeaturesParams) -> list[Backbone]:
    """The configured backbones, in the adapter's group order, with the widths their configs
    declare. A model that is neither local nor in the Hugging Face cache, with the hub
    unreachable, is an error naming the param and how to provide it."""
    used = []
    for param, (name, reference) in configured(features).items():
        source = registry.resolve(reference, name)
        dims = registry.backbone(name).config_dims(source)
        if dims == ():
            raise CompatibilityError(
                f"{param} {reference!r}: no model config found (not a local directory and not "
                f"in the Hugging Face cache; the hub may be unreachable). "
                f"{real_weights_hint(param, name)}"
            )
        used.append(Backbone(param, name, reference, source, dims))
    return used


def group_dims(used: Sequence[Backbone]) -> dict[str, list[int]]:
    return {b.name: list(b.dims) for b in used}


def real_weights_hint(param: str, name: str, width: int | None = None) -> str:
    example = DINO_BY_WIDTH.get(width or 0) if name == "dino" else None
    example = example or registry.registered(name).hub_id
    return (
        f"Point {param} at real weights: a hub id such as --set {param}={example} (where the "
        f"Hugging Face hub is reachable) or a local directory holding the downloaded model "
        f"(--set {param}=/models/<name>)"
    )


def check_adapter(
    adapter_dims: Sequence[int],
    available: Mapping[str, Sequence[int]],
    adapter: str,
    features: str,
    params: Mapping[str, str] | None = None,
) -> None:
    """An adapter takes every group's maps or one group's alone (`diysc.features.adapter_groups`;
    the authors' DINO-only checkpoints); any other widths mean other backbones. `available`:
    {group: map widths}; `params`: {group: the params key of its model}, for the hints."""
    adapter_dims = [int(d) for d in adapter_dims]
    if adapter_groups(adapter_dims, available) is not None:
        return
    params = params or {}
    single = len(adapter_dims) == 1  # then only a one-map group (a ViT's) can be the fix
    hints = [
        real_weights_hint(
            params.get(name, f"features.backbones.{name}.model"), name, adapter_dims[-1]
        )
        for name, dims in available.items()
        if not single or len(dims) == 1
    ]
    if single:
        wanted = DINO_BY_WIDTH.get(adapter_dims[0], "a backbone of that width")
        fix = f"it needs one feature group of {adapter_dims[0]} channels ({wanted}). " + (
            " ".join(hints)
        )
    else:
        fix = "use the backbones it was trained with. " + " ".join(hints)
    provided = [int(d) for dims in available.values() for d in dims]
    raise CompatibilityError(
        f"{adapter}: the adapter takes input maps of {adapter_dims} channels, but {features} "
        f"provide {provided} ({', '.join(available)}); {fix}"
    )


def refuse_stand_ins(references: Mapping[str, tuple], allowed: bool) -> None:
    """Refuse stand-in backbones (`{param: (name, reference)}`, as `configured` gives) unless
    `allowed`; name the fix."""
    stand_ins = [p for p, (name, ref) in references.items() if registry.is_built(ref, name)]
    if stand_ins and not allowed:
        names = ", ".join(f"{p}={references[p][1]!r}" for p in stand_ins)
        last = stand_ins[-1]
        raise CompatibilityError(
            f"{names}: a small stand-in generated for offline tests, not the real backbone, so "
            f"its correspondences are not meaningful. "
            f"{real_weights_hint(last, references[last][0])}"
            + (" (and the others likewise)" if len(stand_ins) > 1 else "")
            + f", or pass {ALLOW_STAND_IN} to run it anyway"
        )
