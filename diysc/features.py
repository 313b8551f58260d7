"""Cached foundation features: the reader of the per-category shards (`FeatureStore`).

Extraction lives in `diysc.feature_extraction`, so that the stages that only read features do not
depend on the backbone code. Layout (docs/architecture.md):
```
<out>/info.json                       {"size", "grid", "dino_dim", "sd_dims", "sd", "dtype", "categories"}
<out>/dino/<cat>.safetensors          <stem> → (dino_dim, grid, grid)
<out>/sd/<cat>.safetensors            <stem>.s3 (grid), <stem>.s4 (grid/2), <stem>.s5 (grid/4)
```
Normalisations, as in the authors' released code: the adapter gets the raw concatenation
[s3, up(s4), up(s5), dino]; pseudo-labelling uses the SD part (all SD channels jointly) and the DINO
part each L2-normalised and scaled by 1/√2, so a dot product is ½cos_SD + ½cos_DINO.

The reader validates every tensor it returns against `info.json` (dtype, channel count, spatial
size: DINO and s3 on the grid, s4 on grid/2, s5 on grid/4) and names the file and key otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from diysc.errors import UserError
from diysc.io import Shard, check_finite

SD_LEVELS = ("s3", "s4", "s5")
SD_DOWNSCALE = {"s3": 1, "s4": 2, "s5": 4}  # each level's grid is the DINO grid divided by this
STORED_DTYPES = ("float16", "float32")  # features.dtype
EPS = 1e-10  # the reference's normalisation epsilon


class FeatureStoreError(UserError, ValueError):
    """A feature cache is missing or inconsistent; the message names the file."""


# --- extraction ----------------------------------------------------------------------------


# --- reading ---------------------------------------------------------------------------------


def normalise_parts(feats: torch.Tensor, split: int | None) -> torch.Tensor:
    """(…, C) → each part ([:split], [split:]) L2-normalised and scaled by 1/√2; one part if None."""
    if split is None:
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(EPS)
    sd, dino = feats[..., :split], feats[..., split:]
    sd = sd / sd.norm(dim=-1, keepdim=True).clamp_min(EPS)
    dino = dino / dino.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return torch.cat([sd, dino], dim=-1) / math.sqrt(2)


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
            self.dino_dim: int = int(self.info["dino_dim"])
            self.sd_dims: list[int] = [int(d) for d in self.info["sd_dims"]]
            self.has_sd: bool = bool(self.info["sd"])
            self.dtype: str = self.info["dtype"]
            self.categories: tuple[str, ...] = tuple(self.info["categories"])
        except (KeyError, TypeError, ValueError) as err:
            raise FeatureStoreError(f"{info_path}: malformed ({err!r})") from None
        if self.dtype not in STORED_DTYPES:
            raise FeatureStoreError(
                f"{info_path}: 'dtype' must be one of {list(STORED_DTYPES)}, got {self.dtype!r}"
            )
        if self.has_sd and len(self.sd_dims) != len(SD_LEVELS):
            raise FeatureStoreError(
                f"{info_path}: 'sd_dims' must list {len(SD_LEVELS)} widths (s3, s4, s5), "
                f"got {self.sd_dims}"
            )
        if self.grid < 1 or self.dino_dim < 1 or self.size < 1:
            raise FeatureStoreError(f"{info_path}: 'size', 'grid' and 'dino_dim' must be >= 1")
        self._shards: dict[tuple[str, str], Shard] = {}

    @property
    def feature_dims(self) -> list[int]:
        """Widths of the adapter's input groups: [s3, s4, s5, dino], or [dino] without SD."""
        return [*self.sd_dims, self.dino_dim] if self.has_sd else [self.dino_dim]

    @property
    def channels(self) -> int:
        return sum(self.feature_dims)

    def _shard(self, kind: str, category: str) -> Shard:
        if (kind, category) not in self._shards:
            path = self.root / kind / f"{category}.safetensors"
            if not path.is_file():
                raise FeatureStoreError(f"{path}: no {kind} features for category {category!r}")
            self._shards[kind, category] = Shard(path)
        return self._shards[kind, category]

    def stems(self, category: str) -> list[str]:
        return sorted(self._shard("dino", category).keys())

    def _tensor(self, kind: str, category: str, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `key` of a shard as float32, after checking its dtype and shape."""
        shard = self._shard(kind, category)
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

    def dino(self, category: str, stem: str) -> torch.Tensor:
        """(dino_dim, grid, grid) float32."""
        return self._tensor("dino", category, stem, (self.dino_dim, self.grid, self.grid))

    def sd(self, category: str, stem: str) -> dict[str, torch.Tensor]:
        """{"s3": (d3, grid, grid), "s4": (d4, grid/2, …), "s5": (d5, grid/4, …)} float32."""
        if not self.has_sd:
            raise FeatureStoreError(f"{self.root}: extracted without SD (features.sd: false)")
        out = {}
        for level, dim in zip(SD_LEVELS, self.sd_dims, strict=True):
            side = self.grid // SD_DOWNSCALE[level]
            out[level] = self._tensor("sd", category, f"{stem}.{level}", (dim, side, side))
        return out

    def adapter_input(self, category: str, stem: str) -> torch.Tensor:
        """Raw (C, grid, grid) float32: [s3, up(s4), up(s5), dino], bilinear, align_corners=False."""
        return self.adapter_input_many(category, [stem])[0]

    def adapter_input_many(self, category: str, stems: Sequence[str]) -> torch.Tensor:
        """(N, C, grid, grid) float32 for several images of one category."""
        dino = torch.stack([self.dino(category, s) for s in stems])
        if not self.has_sd:
            return _resize(dino, self.grid)
        sd = [self.sd(category, s) for s in stems]
        levels = [_resize(torch.stack([f[level] for f in sd]), self.grid) for level in SD_LEVELS]
        return torch.cat([*levels, _resize(dino, self.grid)], dim=1)

    def similarity(self, category: str, stem: str) -> torch.Tensor:
        """(grid·grid, C) float32 rows whose dot products are ½cos_SD + ½cos_DINO (or cos_DINO)."""
        return self.similarity_many(category, [stem])[0]

    def similarity_many(self, category: str, stems: Sequence[str]) -> torch.Tensor:
        """(N, grid·grid, C) float32, rows in flat-index order (row·grid + col)."""
        feats = self.adapter_input_many(category, stems).flatten(2).transpose(1, 2)
        return normalise_parts(feats, sum(self.sd_dims) if self.has_sd else None)


def _resize(x: torch.Tensor, grid: int) -> torch.Tensor:
    if x.shape[-1] == grid and x.shape[-2] == grid:
        return x
    return F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
