"""SPair-71k (the official archive, or a small local directory in its layout; `build`)."""

from __future__ import annotations

from pathlib import Path

from diysc.data.spair import SPairDataset


def open_dataset(root: str | Path) -> SPairDataset:
    return SPairDataset(root)
