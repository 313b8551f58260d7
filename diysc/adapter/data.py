"""Training data for the adapter: pseudo-labelled pairs and an in-memory feature bank.

Pairs come from `diysc.formats.labels.read_labels(root, split, cat)` (one row per correspondence:
`pair`, `src`, `trg`, `src_col`, `src_row`, `trg_col`, `trg_row`, integer patch coordinates), features
from `diysc.features.FeatureStore(root).adapter_input(cat, stem)` (raw float32 (C, grid, grid)).

At load time, per pair (reference §4.2):
- at most `max_kps` correspondences are kept, drawn once without replacement (seeded per category);
- thr_t, the noise scale of the dense loss, is the largest target coordinate (col or row) among *all*
  the pair's correspondences, in patch units;
- validation uses `val_pairs` pairs per category drawn with replacement (all of them when there are
  no more than that).

Features are read once per image into `FeatureBank` (float16 by default, in memory, least recently
used images evicted beyond a byte budget), never re-read from disk at every step as the released
code does. Memory: C·grid²·2 bytes per image; 3968·60²·2 ≈ 28.6 MB for SD+DINO at 840 px and
768·60²·2 ≈ 5.5 MB for DINO-only, i.e. about 29 GB (resp. 5.5 GB) per 1,000 images. Under DDP
each process holds its own bank.
"""

from __future__ import annotations

import hashlib
import sys
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diysc.features import FeatureStore
from diysc.formats.labels import COLUMNS, LabelsError, labels_path, read_labels

DEFAULT_BANK_BYTES = 32 * 2**30


@dataclass(frozen=True)
class PairTable:
    """P pairs, each with up to K correspondences (padded, `valid` marks the real ones)."""

    src_image: torch.Tensor  # (P,) long: index into the feature bank
    trg_image: torch.Tensor  # (P,) long
    src_points: torch.Tensor  # (P, K, 2) long patch (col, row)
    trg_points: torch.Tensor  # (P, K, 2) long
    valid: torch.Tensor  # (P, K) bool
    trg_extent: torch.Tensor  # (P,) float: thr_t, largest target coordinate of the pair, patches

    def __len__(self) -> int:
        return self.src_image.shape[0]

    def select(self, index: torch.Tensor) -> PairTable:
        return PairTable(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(tables: Sequence[PairTable]) -> PairTable:
        width = max(t.valid.shape[1] for t in tables)
        return PairTable(
            **{
                f.name: torch.cat([_pad_points(getattr(t, f.name), width) for t in tables])
                for f in fields(PairTable)
            }
        )

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in fields(self):
            h.update(getattr(self, f.name).numpy().tobytes())
        return h.hexdigest()


class FeatureBank:
    """Image features kept in memory after their first read (LRU beyond `max_bytes`)."""

    def __init__(
        self,
        keys: Sequence[tuple[str, str]],
        loader: Callable[[str, str], torch.Tensor],
        dtype: torch.dtype = torch.float16,
        max_bytes: int = DEFAULT_BANK_BYTES,
    ):
        self.keys = list(keys)
        self._loader, self.dtype, self.max_bytes = loader, dtype, max_bytes
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.reads = 0  # images read from the loader so far (a re-read means an eviction)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> torch.Tensor:
        index = int(index)
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        tensor = self._loader(*self.keys[index]).to(self.dtype).contiguous()
        self.reads += 1
        size = tensor.numel() * tensor.element_size()
        while self._cache and self.bytes + size > self.max_bytes:
            _, dropped = self._cache.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()
        self._cache[index] = tensor
        self.bytes += size
        return tensor

    def stack(self, index: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """(n, C, grid, grid) features of the images `index`, in the bank's dtype."""
        return torch.stack([self[i] for i in np.asarray(index).reshape(-1)])


@dataclass
class TrainingData:
    train: PairTable
    val: PairTable
    bank: FeatureBank
    feature_dims: tuple[int, ...]
    grid: int

    def digest(self) -> str:
        """Identifies the pairs, points and images (not the feature values) for checkpoint reuse."""
        h = hashlib.sha256()
        h.update(repr((self.feature_dims, self.grid, self.bank.keys)).encode())
        h.update(self.train.digest().encode())
        h.update(self.val.digest().encode())
        return h.hexdigest()


def load_training_data(
    features_root: str | Path,
    labels_root: str | Path,
    max_kps: int,
    val_pairs: int,
    seed: int,
    bank_dtype: torch.dtype = torch.float16,
    bank_bytes: int = DEFAULT_BANK_BYTES,
) -> TrainingData:
    """Pairs of every category with pseudo-labels in both splits, and a bank over their images."""

    labels_root = Path(labels_root)
    categories = sorted(p.stem for p in (labels_root / "trn").glob("*.parquet"))
    if not categories:
        raise FileNotFoundError(f"{labels_root / 'trn'}: no pseudo-label tables (<cat>.parquet)")
    missing = [c for c in categories if not labels_path(labels_root, "val", c).is_file()]
    if missing:
        raise FileNotFoundError(f"{labels_root / 'val'}: no validation pseudo-labels for {missing}")
    store = FeatureStore(features_root)
    grid = int(store.grid)
    images: dict[tuple[str, str], int] = {}
    tables: dict[str, list[PairTable]] = {"trn": [], "val": []}
    empty: dict[str, list[str]] = {"trn": [], "val": []}
    for cat in categories:
        for split in ("trn", "val"):
            labels = read_labels(labels_root, split, cat)
            if len(labels) == 0:  # the filters kept no correspondence of this category
                empty[split].append(cat)
                continue
            source = str(labels_path(labels_root, split, cat))
            table = pairs_from_labels(labels, cat, images, max_kps, seed, source, grid)
            if split == "val":
                table = table.select(sample_with_replacement(len(table), val_pairs, seed, cat))
            tables[split].append(table)
    for split, cats in empty.items():
        if not tables[split]:
            raise LabelsError(
                f"{labels_root / split}: no category has {split} pseudo-labels (all "
                f"{len(categories)} files are empty: the pseudo-label filters kept nothing)"
            )
        if cats:
            print(
                f"note: {labels_root / split}: no pseudo-labels for {', '.join(cats)}; "
                f"{split} uses the other {len(tables[split])} categories",
                file=sys.stderr,
            )
    dims = tuple(int(d) for d in store.feature_dims)

    def load(cat: str, stem: str) -> torch.Tensor:
        x = store.adapter_input(cat, stem)
        if tuple(x.shape) != (sum(dims), grid, grid):
            raise ValueError(
                f"{features_root}: features of {cat}/{stem} have shape {tuple(x.shape)}, "
                f"expected {(sum(dims), grid, grid)}"
            )
        return x

    bank = FeatureBank(list(images), load, bank_dtype, bank_bytes)
    return TrainingData(
        PairTable.concat(tables["trn"]), PairTable.concat(tables["val"]), bank, dims, grid
    )


def pairs_from_labels(
    labels: pd.DataFrame,
    cat: str,
    images: dict[tuple[str, str], int],
    max_kps: int,
    seed: int,
    source: str = "labels",
    grid: int | None = None,
) -> PairTable:
    """One category's correspondence rows → a PairTable; new images are appended to `images`.
    Every coordinate must lie on the `grid`×`grid` patch grid (only ≥ 0 without a grid)."""
    missing = [c for c in COLUMNS if c not in labels.columns]
    if missing:
        raise LabelsError(f"{source}: missing columns {missing}")
    if len(labels) == 0:
        raise LabelsError(f"{source}: no correspondences")
    names = ["src_col", "src_row", "trg_col", "trg_row"]
    coords = labels[names].to_numpy()
    outside = (coords < 0) | (coords >= (grid if grid is not None else np.iinfo(np.int64).max))
    if outside.any():
        row, column = (int(i[0]) for i in np.nonzero(outside))
        where = f"the {grid}x{grid} patch grid (0..{grid - 1})" if grid is not None else "0.."
        raise LabelsError(
            f"{source}: row {row}: {names[column]} = {coords[row, column]} lies outside {where}; "
            f"{int(outside.any(axis=1).sum())} of {len(labels)} rows are outside"
        )
    rng = np.random.default_rng([seed, zlib.crc32(cat.encode())])
    rows = labels.assign(_key=rng.random(len(labels))).sort_values(["pair", "_key"], kind="stable")
    rank = rows.groupby("pair", sort=False).cumcount().to_numpy()
    pair_ids, pair_of_row = np.unique(rows["pair"].to_numpy(), return_inverse=True)
    first = rows.groupby("pair", sort=True).first()  # src/trg stems per pair, in pair_ids order
    extent = (
        rows.assign(_m=rows[["trg_col", "trg_row"]].max(axis=1))
        .groupby("pair", sort=True)["_m"]
        .max()
    )
    for stem in (*first["src"], *first["trg"]):
        images.setdefault((cat, str(stem)), len(images))
    keep = rank < max_kps
    num_pairs, width = len(pair_ids), int(min(max_kps, rank.max() + 1))
    src = np.zeros((num_pairs, width, 2), dtype=np.int64)
    trg = np.zeros((num_pairs, width, 2), dtype=np.int64)
    valid = np.zeros((num_pairs, width), dtype=bool)
    at = (pair_of_row[keep], rank[keep])
    src[at] = rows[["src_col", "src_row"]].to_numpy()[keep]
    trg[at] = rows[["trg_col", "trg_row"]].to_numpy()[keep]
    valid[at] = True
    return PairTable(
        src_image=torch.tensor([images[(cat, str(s))] for s in first["src"]]),
        trg_image=torch.tensor([images[(cat, str(s))] for s in first["trg"]]),
        src_points=torch.from_numpy(src),
        trg_points=torch.from_numpy(trg),
        valid=torch.from_numpy(valid),
        trg_extent=torch.tensor(extent.to_numpy(), dtype=torch.float32),
    )


def sample_with_replacement(num_pairs: int, count: int, seed: int, cat: str) -> torch.Tensor:
    """`count` pair indices drawn with replacement, or all pairs when there are no more than `count`."""
    if num_pairs <= count:
        return torch.arange(num_pairs)
    rng = np.random.default_rng([seed, zlib.crc32(cat.encode()), 1])
    return torch.from_numpy(rng.choice(num_pairs, count, replace=True))


def random_training_data(
    feature_dims: Sequence[int],
    grid: int,
    images: int,
    train_pairs: int,
    val_pairs: int,
    max_kps: int,
    seed: int = 0,
) -> TrainingData:
    """Random features and correspondences of a given size, for tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(sum(feature_dims), grid, grid, generator=g) for _ in range(images)]

    def table(n: int) -> PairTable:
        src_image = torch.randint(images, (n,), generator=g)
        trg_image = (src_image + torch.randint(1, images, (n,), generator=g)) % images
        src = torch.randint(grid, (n, max_kps, 2), generator=g)
        trg = torch.randint(grid, (n, max_kps, 2), generator=g)
        valid = torch.rand(n, max_kps, generator=g) < 0.8
        valid[:, 0] = True
        extent = torch.where(valid[..., None], trg, 0).amax(dim=(1, 2)).float()
        return PairTable(src_image, trg_image, src, trg, valid, extent)

    keys = [("random", f"{i:05d}") for i in range(images)]
    bank = FeatureBank(keys, lambda cat, stem: feats[int(stem)], torch.float32)
    return TrainingData(table(train_pairs), table(val_pairs), bank, tuple(feature_dims), grid)


def _pad_points(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.dim() < 2 or x.shape[1] == width:
        return x
    pad = torch.zeros((x.shape[0], width - x.shape[1], *x.shape[2:]), dtype=x.dtype)
    return torch.cat([x, pad], dim=1)
