"""Named backbones: what a model name in the params ("tiny", "standin", ...) stands for.

`features.dino_model` / `features.sd_model` take a hub id, a local directory or a registered name
("random-dinov2-base", "random-sd15": random weights at the paper's sizes, `paper_size`). A
registered name is built once into the cache (`tiny.materialise`) and resolved to that directory,
so every backbone, stand-ins included, loads through the same `from_pretrained` path as real
weights. A new stand-in is one module with a builder and one entry in `NAMED`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diysc.backbones import paper_size, standin, tiny

NAMED: dict[str, dict[str, Callable[[], Path]]] = {
    "dino": {
        tiny.TINY: tiny.tiny_dino,
        standin.STANDIN: standin.standin_dino,
        paper_size.DINO: paper_size.random_dino,
    },
    "sd": {tiny.TINY: tiny.tiny_sd, paper_size.SD: paper_size.random_sd},
    "sam": {tiny.TINY: tiny.tiny_sam},
}


def resolve(reference: str, kind: str) -> str:
    """A model reference from params: a registered name becomes its local directory, else as is."""
    build = NAMED[kind].get(reference)
    return str(build()) if build is not None else reference


def names(kind: str) -> list[str]:
    return sorted(NAMED[kind])
