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


DEFAULT_THREADS = 1


def threads() -> int:
    """PyTorch's intra-op CPU threads: `DIYSC_THREADS`, default 1.

    A fixed count, not one per core: parallel CPU reductions split their work by thread count, so
    the count is part of what decides the result's last bits, and it must not follow the machine's
    core count or load. One thread also cannot stall: with several, every parallel op waits at a
    barrier for its slowest thread, and a thread that shares its core with another busy process
    made the tiny `train_adapter` ~100x slower (5 s instead of 0.04 s per step on 2 cores).
    """
    value = os.environ.get("DIYSC_THREADS", "").strip()
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"DIYSC_THREADS={value!r}: expected a positive integer")
    return int(value)


def apply_threads() -> int:
    """Set PyTorch's intra-op thread count from `threads()` (every stage script calls this)."""
    count = threads()
    torch.set_num_threads(count)
    return count


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
