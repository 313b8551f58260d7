"""Runtime settings that are not pipeline parameters: device, worker counts, local paths.

Changing the GPU or the number of workers must not invalidate a DVC stage, so these come from the
environment (or a CLI option), never from params.yaml.
"""

from __future__ import annotations

import fcntl
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diysc.errors import UserError


class SettingError(UserError, ValueError):
    """A runtime setting (environment variable) has a bad value; the message names it."""


def is_worker() -> bool:
    """True inside a process started by a launcher (`diysc.launch` or torchrun)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def device() -> torch.device:
    """This process's device.

    - a worker of several (`DIYSC_GPUS`, torchrun): `cuda:<LOCAL_RANK>` when CUDA is available and
      `DIYSC_DEVICE` does not say otherwise, else `DIYSC_DEVICE` or the CPU;
    - with `DIYSC_GPU_POOL`: a GPU of the pool that no other process holds (`claim_gpus`);
    - else `DIYSC_DEVICE` if set (e.g. `cpu`, `cuda:1`), else CUDA when available, else CPU.
    """
    name = os.environ.get("DIYSC_DEVICE")
    if is_worker() and int(os.environ["WORLD_SIZE"]) > 1:
        if torch.cuda.is_available() and (not name or name.startswith("cuda")):
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device(name or "cpu")
    if pool() is not None:
        if name:
            raise SettingError(f"DIYSC_DEVICE={name} and DIYSC_GPU_POOL are both set: set one")
        if not torch.cuda.is_available():
            raise SettingError("DIYSC_GPU_POOL is set but this process sees no CUDA device")
        return torch.device("cuda", claim_gpus(1)[0])
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- a pool of GPUs shared by concurrent runs (`dvc queue start -j N`) --------------------------
# Each GPU id of `DIYSC_GPU_POOL` has a lock file; a run holds an exclusive `flock` on the ones it
# uses until it exits. The kernel drops the lock of a process that dies however it dies, so a
# killed run never leaves a GPU taken.

_HELD: list[tuple[int, int]] = []  # (GPU id, open lock file descriptor) held by this process


def pool() -> list[int] | None:
    """`DIYSC_GPU_POOL` (e.g. `0,1,2,3`): the GPU ids that concurrent runs take turns on, counted as
    `cuda:<id>` counts them (within `CUDA_VISIBLE_DEVICES` when that is set)."""
    text = os.environ.get("DIYSC_GPU_POOL", "").strip()
    if not text:
        return None
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise SettingError(
            f"DIYSC_GPU_POOL={text!r}: expected distinct GPU ids separated by commas, e.g. 0,1,2,3"
        )
    return ids


def gpu_lock_dir() -> Path:
    """Where the pool's lock files live: `DIYSC_GPU_LOCKS`, else `<DIYSC_CACHE>/gpu-locks`.
    Every run sharing the GPUs must see the same folder (one for all users of the machine)."""
    return Path(os.environ.get("DIYSC_GPU_LOCKS") or cache_dir() / "gpu-locks")


def claim_gpus(count: int, poll_s: float = 1.0) -> list[int] | None:
    """Hold `count` GPUs of the pool for the rest of this process; None without a pool.

    Waits while fewer than `count` are free (never holding some while waiting, so two runs that each
    need several cannot block each other). A process keeps what it holds: later calls return it."""
    ids = pool()
    if ids is None:
        return None
    if _HELD:
        return [gpu for gpu, _ in _HELD]
    if count > len(ids):
        raise SettingError(f"DIYSC_GPUS={count} but DIYSC_GPU_POOL has {len(ids)} GPUs: {ids}")
    folder = gpu_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        for gpu in ids:
            # Named after the physical GPU (index or UUID), not the pool id, which counts within this
            # run's CUDA_VISIBLE_DEVICES: runs that see the GPUs in another order still exclude
            # each other. Read-only: flock needs no write access, so users share the files.
            name = visible_devices([gpu])
            fd = os.open(folder / f"gpu-{name}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _HELD.append((gpu, fd))
            if len(_HELD) == count:
                return [gpu for gpu, _ in _HELD]
        release_gpus()
        if not told:
            print(f"waiting for {count} free GPU(s) of DIYSC_GPU_POOL {ids}", file=sys.stderr)
            told = True
        time.sleep(poll_s)


def visible_devices(ids: list[int]) -> str:
    """`CUDA_VISIBLE_DEVICES` for child processes that are to see exactly the GPUs `ids`, which
    count the GPUs this process sees (as `cuda:<id>`: within its own `CUDA_VISIBLE_DEVICES`)."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if seen is None:
        return ",".join(map(str, ids))
    names = [name.strip() for name in seen.split(",")]
    if max(ids) >= len(names):
        raise SettingError(
            f"DIYSC_GPU_POOL has GPU {max(ids)} but CUDA_VISIBLE_DEVICES={seen} shows {len(names)}"
        )
    return ",".join(names[i] for i in ids)


def release_gpus() -> None:
    """Give back the GPUs this process holds (exiting does the same)."""
    while _HELD:
        _gpu, fd = _HELD.pop()
        os.close(fd)  # closing the only descriptor of the open file drops its flock


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
