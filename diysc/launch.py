"""Several processes (one per GPU) from a plain stage command, through torch's elastic launcher.

`DIYSC_GPUS=N` is a runtime setting, not a param: the same `dvc repro` runs on one GPU or on N, with
the same results (the training loop's batch is global and its randomness is per pair). When it asks
for more than one process and this process is not already a worker, the stage script calls
`launch_workers`, which starts N copies of itself as a single-node job, exactly as
`torchrun --standalone --nproc_per_node N script …` would, waits for them, and fails if any fails.
Each worker joins the process group in `diysc.adapter.train.setup_distributed` (NCCL on
`cuda:<LOCAL_RANK>`, or gloo on the CPU, which is how the tests run it).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from torch.distributed.launcher.api import LaunchConfig, elastic_launch


class LaunchError(RuntimeError):
    """A worker process failed."""


def requested_processes() -> int:
    """`DIYSC_GPUS` (default 1): how many processes the stage should run on this node."""
    text = os.environ.get("DIYSC_GPUS", "1").strip() or "1"
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"DIYSC_GPUS={text!r}: expected a number of processes (GPUs)") from None
    if count < 1:
        raise ValueError(f"DIYSC_GPUS={count}: expected at least 1")
    return count


def is_worker() -> bool:
    """True inside a process started by a launcher (ours or torchrun)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def should_launch() -> bool:
    return requested_processes() > 1 and not is_worker()


def launch_workers(script: str | Path, argv: Sequence[str], processes: int | None = None) -> None:
    """Run `python script *argv` in `processes` workers on this node; return when all succeed."""
    processes = processes or requested_processes()
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"diysc-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as `torchrun --standalone`
        max_restarts=0,  # a failure fails the stage; resuming is the checkpoint's job
        monitor_interval=0.5,
    )
    try:
        elastic_launch(config, sys.executable)(str(script), *argv)
    except Exception as err:  # ChildFailedError carries each failed rank's exit code
        raise LaunchError(f"{Path(script).name}: a worker of {processes} failed: {err}") from None
