"""Pseudo-label files: layout, reader and writer.

Layout (`data/pseudo_labels/`):
- `info.json`: `size` (side of the padded annotation frame), `grid` (patch-grid side), the
  coordinate convention, the generation settings and the pair/point counts per split and category;
- `<split>/<category>.parquet`, split ∈ `SPLITS`: one row per correspondence with columns
  `pair` (int, numbering the pairs of that file from 0), `src`, `trg` (image stems), `src_col`,
  `src_row`, `trg_col`, `trg_row` (int).

Coordinate convention: (col, row) are integer patch coordinates on the `grid`×`grid` lattice laid
over the padded `size`×`size` frame (`diysc.geometry`); the flat index is `row·grid + col`. The
reference stores the patch's top-left corner in pixels, `stride·(col, row)` =
`diysc.geometry.patch_corner`; predictions and the quality report use the centre
(`patch_centre`). Rows of a pair may repeat, as in the reference: in a chain several source points
can reach the same patch of a later image.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from diysc.errors import UserError
from diysc.io import atomic_path

COLUMNS = ("pair", "src", "trg", "src_col", "src_row", "trg_col", "trg_row")
SPLITS = ("trn", "val")
CONVENTION = (
    "integer patch (col, row) on the grid x grid lattice over the padded size x size frame; "
    "flat index row*grid+col; reference pixel = stride*(col,row) (patch corner)"
)


class LabelsError(UserError, ValueError):
    """A pseudo-label file is missing or malformed; the message names the file."""


def labels_frame(rows: Iterable[tuple], grid: int) -> pd.DataFrame:
    """(pair, src stem, trg stem, src flat indices, trg flat indices) rows → the label table."""
    parts = {c: [] for c in COLUMNS}
    for pair, src, trg, src_idx, trg_idx in rows:
        n = int(src_idx.numel())
        parts["pair"].append(np.full(n, pair, dtype=np.int32))
        parts["src"].append(np.full(n, src, dtype=object))
        parts["trg"].append(np.full(n, trg, dtype=object))
        for side, idx in (("src", src_idx), ("trg", trg_idx)):
            idx = idx.numpy().astype(np.int32)
            parts[f"{side}_col"].append(idx % grid)
            parts[f"{side}_row"].append(idx // grid)
    dtypes = {"pair": np.int32, "src": object, "trg": object}
    return pd.DataFrame(
        {
            c: (
                np.concatenate(parts[c]) if parts[c] else np.empty(0, dtype=dtypes.get(c, np.int32))
            ).astype(dtypes.get(c, np.int32))
            for c in COLUMNS
        }
    )


def labels_path(root: str | Path, split: str, category: str) -> Path:
    return Path(root) / split / f"{category}.parquet"


def write_labels(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a label table atomically (parquet)."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise LabelsError(f"{path}: label table lacks columns {missing}")
    with atomic_path(path) as tmp:
        frame[list(COLUMNS)].to_parquet(tmp, index=False)


def read_labels(root: str | Path, split: str, category: str) -> pd.DataFrame:
    """The pseudo-labels of one category and split (columns `COLUMNS`)."""
    path = labels_path(root, split, category)
    if not path.is_file():
        raise LabelsError(f"{path}: pseudo-label file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise LabelsError(f"{path}: not a readable parquet file ({err})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise LabelsError(f"{path}: missing columns {missing}")
    return frame
