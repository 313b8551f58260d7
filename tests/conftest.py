"""Shared fixtures. Area-specific fixtures live in the test modules that use them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPAIR_SAMPLE = SHARED / "data" / "spair_sample"
OFFICIAL_DINO_ADAPTER = SHARED / "data" / "official_adapters" / "dino_spair_768.pth"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def spair_sample() -> Path:
    if not SPAIR_SAMPLE.is_dir():
        pytest.skip("the real SPair-71k sample (shared/data/spair_sample) is not present")
    return SPAIR_SAMPLE


@pytest.fixture(scope="session")
def official_dino_adapter() -> Path:
    if not OFFICIAL_DINO_ADAPTER.is_file():
        pytest.skip("the official DINO adapter checkpoint is not present")
    return OFFICIAL_DINO_ADAPTER


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A per-session cache for generated tiny backbones (DIYSC_CACHE)."""
    path = tmp_path_factory.mktemp("diysc-cache")
    os.environ["DIYSC_CACHE"] = str(path)
    return path
