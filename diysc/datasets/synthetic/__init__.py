"""The synthetic dataset (offline, rendered; `build`): read as any SPair-71k-layout tree."""

from __future__ import annotations

from pathlib import Path

from diysc.data.spair import SPairDataset


def open_dataset(root: str | Path) -> SPairDataset:
    return SPairDataset(root)
