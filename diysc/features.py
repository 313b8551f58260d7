"""Cached foundation features: the reader of the per-category shards (`FeatureStore`).

Extraction lives in `diysc.feature_extraction`, so that the stages that only read features do not
depend on the backbone code. Layout (docs/architecture.md):
```
<out>/info.json               {"size", "grid", "groups", "dtype", "categories"}
<out>/<group>/<cat>.safetensors   per map of the group: <stem> (a one-map group) or <stem>.<level>
```
`groups` lists each backbone's feature group in the adapter's order, with its maps (`level`,
`dim`, `downscale`: the map's side is grid / downscale); with the paper's backbones
`sd` (s3, s4, s5 on the grid, grid/2, grid/4) then `dino` (one map on the grid).

Normalisations, as in the authors' released code: the adapter gets the raw concatenation of the
groups' maps, each upsampled to the grid ([s3, up(s4), up(s5), dino]); pseudo-labelling and the
zero-shot baseline use each group (all its maps jointly) L2-normalised and scaled by 1/√(number of
groups), so a dot product is the mean of the groups' cosines (½cos_SD + ½cos_DINO in the paper).
A consumer may select groups (`groups=("dino",)`): the same cache serves a DINO-only adapter.

The reader validates every tensor it returns against `info.json` (dtype, channel count, spatial
size) and names the file and key otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from diysc.errors import UserError
from diysc.io import Shard, check_finite

STORED_DTYPES = ("float16", "float32")  # features.dtype
EPS = 1e-10  # the reference's normalisation epsilon


class FeatureStoreError(UserError, ValueError):
    """A feature cache is missing or inconsistent; the message names the file."""


@dataclass(frozen=True)
class FeatureMap:
    level: str  # "" when the group is this one map (stored under the image's stem), else a suffix
    dim: int  # channels
    downscale: int = 1  # the map's side is the grid divided by this

    def key(self, stem: str) -> str:
        """The map's key in a category shard."""
        return f"{stem}.{self.level}" if self.level else stem


@dataclass(frozen=True)
class FeatureGroup:
    name: str  # the backbone's registry name: the shard folder and its entry in info.json
    maps: tuple[FeatureMap, ...]

    @property
    def dims(self) -> list[int]:
        return [m.dim for m in self.maps]

    def to_json(self) -> dict:
        maps = [{"level": m.level, "dim": m.dim, "downscale": m.downscale} for m in self.maps]
        return {"name": self.name, "maps": maps}

    @classmethod
    def from_json(cls, raw: dict) -> FeatureGroup:
        maps = tuple(
            FeatureMap(str(m["level"]), int(m["dim"]), int(m["downscale"])) for m in raw["maps"]
        )
        return cls(str(raw["name"]), maps)


def adapter_groups(
    adapter_dims: Sequence[int], groups: Mapping[str, Sequence[int]]
) -> list[str] | None:
    """The groups (`{name: map widths}`, in order) an adapter with these input widths reads: all
    of them, or one alone (the authors' DINO-only checkpoints on an SD+DINO cache); None when
    neither fits."""
    adapter_dims = [int(d) for d in adapter_dims]
    if adapter_dims == [int(d) for dims in groups.values() for d in dims]:
        return list(groups)
    return next(([name] for name, dims in groups.items() if list(dims) == adapter_dims), None)


def normalise_groups(feats: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
    """(…, C) → each group of channels (`widths`, in order) L2-normalised; with several groups,
    all scaled by 1/√(number of groups)."""
    parts = [p / p.norm(dim=-1, keepdim=True).clamp_min(EPS) for p in feats.split(list(widths), -1)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, dim=-1) / math.sqrt(len(parts))


class FeatureStore:
    """Memory-mapped reader of a features directory written by `extract_features`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "info.json"
        if not info_path.is_file():
            raise FeatureStoreError(f"{self.root}: not a feature cache (no info.json)")
        try:
            self.info = json.loads(info_path.read_text())
            self.size: int = int(self.info["size"])
            self.grid: int = int(self.info["grid"])
            self.groups: tuple[FeatureGroup, ...] = tuple(
                FeatureGroup.from_json(g) for g in self.info["groups"]
            )
            self.dtype: str = self.info["dtype"]
            self.categories: tuple[str, ...] = tuple(self.info["categories"])
        except (KeyError, TypeError, ValueError) as err:
            raise FeatureStoreError(f"{info_path}: malformed ({err!r})") from None
        if self.dtype not in STORED_DTYPES:
            raise FeatureStoreError(
                f"{info_path}: 'dtype' must be one of {list(STORED_DTYPES)}, got {self.dtype!r}"
            )
        if not self.groups or any(not g.maps for g in self.groups):
            raise FeatureStoreError(f"{info_path}: 'groups' must list groups with maps")
        dims = [m.dim for g in self.groups for m in g.maps]
        scales = [m.downscale for g in self.groups for m in g.maps]
        if self.grid < 1 or self.size < 1 or min(dims) < 1 or min(scales) < 1:
            raise FeatureStoreError(
                f"{info_path}: 'size', 'grid' and every map's 'dim' and 'downscale' must be >= 1"
            )
        self._shards: dict[tuple[str, str], Shard] = {}

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def group_dims(self) -> dict[str, list[int]]:
        """{group: its maps' widths}, in order."""
        return {g.name: g.dims for g in self.groups}

    def selected(self, groups: Sequence[str] | None = None) -> tuple[FeatureGroup, ...]:
        """The named groups in the store's order (all when None); an unknown name is an error."""
        if groups is None:
            return self.groups
        unknown = sorted(set(groups) - set(self.group_names))
        if unknown:
            raise FeatureStoreError(
                f"{self.root / 'info.json'}: no feature group {unknown[0]!r} "
                f"(the cache has {list(self.group_names)}; features.backbones decides them)"
            )
        return tuple(g for g in self.groups if g.name in groups)

    def dims(self, groups: Sequence[str] | None = None) -> list[int]:
        """Widths of the adapter's input maps, group by group."""
        return [d for g in self.selected(groups) for d in g.dims]

    @property
    def feature_dims(self) -> list[int]:
        """Widths of the adapter's input maps: [s3, s4, s5, dino] with the paper's backbones."""
        return self.dims()

    @property
    def channels(self) -> int:
        return sum(self.feature_dims)

    def _shard(self, group: str, category: str) -> Shard:
        if (group, category) not in self._shards:
            path = self.root / group / f"{category}.safetensors"
            if not path.is_file():
                raise FeatureStoreError(f"{path}: no {group} features for category {category!r}")
            self._shards[group, category] = Shard(path)
        return self._shards[group, category]

    def stems(self, category: str) -> list[str]:
        group = self.groups[0]
        suffix = group.maps[0].key("")
        keys = self._shard(group.name, category).keys()
        return sorted(k.removesuffix(suffix) for k in keys if k.endswith(suffix))

    def _tensor(self, group: str, category: str, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `key` of a shard as float32, after checking its dtype and shape."""
        shard = self._shard(group, category)
        tensor = shard[key]
        if str(tensor.dtype).removeprefix("torch.") != self.dtype:
            raise FeatureStoreError(
                f"{shard.path}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}, "
                f"but info.json says {self.dtype}"
            )
        if tuple(tensor.shape) != shape:
            raise FeatureStoreError(
                f"{shard.path}: tensor {key!r} has shape {tuple(tensor.shape)}, expected {shape} "
                f"(channels, grid, grid from {self.root / 'info.json'})"
            )
        check_finite(tensor, shard.path, key)
        return tensor.float()

    def maps(self, group: str, category: str, stem: str) -> list[torch.Tensor]:
        """A group's maps of one image, float32, each (dim, grid / downscale, grid / downscale)."""
        (found,) = self.selected((group,))
        return [
            self._tensor(group, category, m.key(stem), (m.dim, *(2 * [self.grid // m.downscale])))
            for m in found.maps
        ]

    def adapter_input(
        self, category: str, stem: str, groups: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Raw (C, grid, grid) float32: the groups' maps, each upsampled to the grid (bilinear,
        align_corners=False) and concatenated ([s3, up(s4), up(s5), dino])."""
        return self.adapter_input_many(category, [stem], groups)[0]

    def adapter_input_many(
        self, category: str, stems: Sequence[str], groups: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(N, C, grid, grid) float32 for several images of one category."""
        parts = []
        for group in self.selected(groups):
            per_image = [self.maps(group.name, category, s) for s in stems]
            for i in range(len(group.maps)):
                parts.append(_resize(torch.stack([maps[i] for maps in per_image]), self.grid))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def similarity(
        self, category: str, stem: str, groups: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(grid·grid, C) float32 rows whose dot products are the mean of the groups' cosines."""
        return self.similarity_many(category, [stem], groups)[0]

    def similarity_many(
        self, category: str, stems: Sequence[str], groups: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(N, grid·grid, C) float32, rows in flat-index order (row·grid + col)."""
        feats = self.adapter_input_many(category, stems, groups).flatten(2).transpose(1, 2)
        return normalise_groups(feats, [sum(g.dims) for g in self.selected(groups)])


def _resize(x: torch.Tensor, grid: int) -> torch.Tensor:
    if x.shape[-1] == grid and x.shape[-2] == grid:
        return x
    return F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
