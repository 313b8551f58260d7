"""Backbones by name, and the model names that are built locally; every module imported on use.

`BACKBONES` maps the name of a `features.backbones` entry (its key) to its `diysc.backbones.base.Backbone`
class ("module:Class"), the hub id of its real weights, the file whose presence shows a model of
that kind is there (prerequisites) and the model names that are built locally instead of
downloaded (`built`: "tiny", the stand-in, random weights at the paper's sizes), each with its
builder ("module:function"), which writes it once into the cache (`tiny.materialise`) so that it
loads through the same `from_pretrained` path as real weights. `MASK_MODELS` does the same for
`masks.sam_model`.

Nothing here imports a backbone or a builder: a stage imports only the ones its params configure,
so the synthetic renderer (which the trained stand-in is a function of) is not imported on a
preset that does not use it. Because a stage's DVC code deps are its *static* import closure,
what the configured backbones run is made a dependency through `models/backbones.json`
(`stages/backbones.py`, `code`), not through the features stage's imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from diysc.errors import UserError
from diysc.provenance import code_digest


@dataclass(frozen=True)
class Registered:
    target: str  # "module:Class" of the Backbone subclass
    hub_id: str  # the real weights
    probe: str = "config.json"  # a file every model of this kind has
    built: Mapping[str, str] = field(default_factory=dict)  # model name → "module:builder"


BACKBONES = {
    "dino": Registered("diysc.backbones.dino:DINOv2", "facebook/dinov2-base", built={
        "tiny": "diysc.backbones.tiny:tiny_dino",
        "standin": "diysc.standin:standin_dino",
        "random-dinov2-base": "diysc.backbones.paper_size:random_dino",
    }),
    "sd": Registered(
        "diysc.backbones.sd:StableDiffusion", "stable-diffusion-v1-5/stable-diffusion-v1-5",
        probe="unet/config.json", built={
            "tiny": "diysc.backbones.tiny:tiny_sd",
            "random-sd15": "diysc.backbones.paper_size:random_sd",
        },
    ),
    "clip": Registered("diysc.backbones.clip:CLIP", "openai/clip-vit-base-patch16", built={
        "tiny": "diysc.backbones.clip:tiny_clip",
    }),
}  # fmt: skip
MASK_MODELS = {"tiny": "diysc.backbones.tiny:tiny_sam"}  # masks.sam_model's built names


class UnknownBackbone(UserError, KeyError):
    """A `features.backbones` entry names no registered backbone."""

    def __str__(self) -> str:
        return str(self.args[0])


def registered(name: str) -> Registered:
    if name not in BACKBONES:
        raise UnknownBackbone(
            f"backbone {name!r} is not registered (known: {', '.join(sorted(BACKBONES))})"
        )
    return BACKBONES[name]


def backbone(name: str) -> type:
    """The `Backbone` subclass registered as `name` (its module imported now)."""
    return _attribute(registered(name).target)


def built(kind: str) -> Mapping[str, str]:
    """The locally built model names of a backbone kind ("sam": `masks.sam_model`)."""
    return MASK_MODELS if kind == "sam" else registered(kind).built


def is_built(reference: str, kind: str) -> bool:
    """True when `reference` is a name built locally (a stand-in), not real weights."""
    return reference in built(kind)


def resolve(reference: str, kind: str) -> str:
    """A model reference from params: a built name becomes its local directory (built on first
    use), anything else (a hub id, a directory) stays as it is."""
    builder = built(kind).get(reference)
    return str(_attribute(builder)()) if builder is not None else reference


def modules(name: str, reference: str) -> list[str]:
    """The modules that running backbone `name` on model `reference` executes: its own, and the
    builder's when the model is built locally."""
    targets = [registered(name).target, built(name).get(reference)]
    return list(dict.fromkeys(t.split(":")[0] for t in targets if t is not None))


def code(name: str, reference: str) -> str:
    """Digest of the code (import closures) that backbone `name` runs on model `reference`."""
    return code_digest(*modules(name, reference))


def all_modules() -> list[str]:
    """Every registered backbone and builder module."""
    targets = [r.target for r in BACKBONES.values()]
    targets += [t for r in BACKBONES.values() for t in r.built.values()]
    return sorted({t.split(":")[0] for t in targets})


def _attribute(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
