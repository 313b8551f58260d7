"""Runtime settings that are not pipeline parameters: device, worker counts, local paths.

Changing the GPU or the number of workers must not invalidate a DVC stage, so these come from the
environment (or a CLI option), never from params.yaml.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def device() -> torch.device:
    """`DIYSC_DEVICE` if set (e.g. `cpu`, `cuda:1`), else CUDA when available, else CPU."""
    name = os.environ.get("DIYSC_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_dir() -> Path:
    """Where generated tiny backbones and other regenerable helpers live (`DIYSC_CACHE`)."""
    root = os.environ.get("DIYSC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "diysc"
    )
    return Path(root)


def num_workers(default: int = 0) -> int:
    return int(os.environ.get("DIYSC_WORKERS", default))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
