"""Several processes (one per GPU) from a plain stage command, through torch's elastic launcher.

`DIYSC_GPUS=N` is a runtime setting, not a param: the same `dvc repro` runs on one GPU or on N, with
the same results. When it asks for more than one process and this process is not already a worker,
the stage script calls `launch_workers`, which starts N copies of itself as a single-node job,
exactly as `torchrun --standalone --nproc_per_node N script …` would, waits for them, and fails if
any fails. Each worker computes on `diysc.runtime.device()` (`cuda:<LOCAL_RANK>`, or the CPU).

- `train_adapter` joins the process group in `diysc.adapter.train.setup_distributed` (NCCL on the
  GPU, gloo on the CPU, which is how the tests run it); its batch is global and its randomness is
  per pair.
- `features`, `masks` and `pseudo_labels` split their categories between the workers (`Workers`):
  each category's result depends on that category alone (its seed included), every worker writes
  its categories' files into the shared work directory beside the output, and rank 0 publishes the
  whole output, byte for byte the one process's, once all have finished.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from diysc import runtime
from diysc.errors import UserError
from diysc.runtime import SettingError, is_worker

T = TypeVar("T")


class LaunchError(UserError, RuntimeError):
    """A worker process failed; it printed its own error (one line, or its traceback) above."""


def requested_processes() -> int:
    """`DIYSC_GPUS` (default 1): how many processes the stage should run on this node."""
    text = os.environ.get("DIYSC_GPUS", "1").strip() or "1"
    try:
        count = int(text)
    except ValueError:
        raise SettingError(f"DIYSC_GPUS={text!r}: expected a number of processes (GPUs)") from None
    if count < 1:
        raise SettingError(f"DIYSC_GPUS={count}: expected at least 1")
    return count


def should_launch() -> bool:
    return requested_processes() > 1 and not is_worker()


def handed_off(script: str | Path) -> bool:
    """The stage script's first step: with `DIYSC_GPUS=N` > 1 outside a worker, run N workers of
    `script` with this process's arguments and return True once all succeeded (the caller then
    returns); otherwise False, and the caller does the work itself."""
    if not should_launch():
        return False
    launch_workers(script, sys.argv[1:])
    return True


def worker_command(script: str | Path) -> list[str]:
    """How the workers run `script`: as this process did. DVC runs the stages as modules
    (`python -m stages.x` from the checkout's root), which puts that checkout's `diysc` first on
    the path, so the workers run the same code as their launcher, the code DVC hashed."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and Path(getattr(main, "__file__", "")).resolve() == Path(script).resolve():
        return ["-m", spec.name]
    return [str(script)]


def check_gpu_count(processes: int, visible: int) -> None:
    """Refuse more workers than visible GPUs before any starts: worker k runs on `cuda:k`, and a
    missing one would fail only after the others had loaded their models. Without any GPU, several
    CPU workers run only when asked for by name (`DIYSC_DEVICE=cpu`)."""
    if visible == 0 and processes > 1:
        raise SettingError(
            f"DIYSC_GPUS={processes} but there is no GPU here (torch sees no CUDA device); set "
            f"DIYSC_GPUS=1, or DIYSC_DEVICE=cpu to run {processes} worker processes on the CPU"
        )
    if processes > visible:
        raise SettingError(
            f"DIYSC_GPUS={processes} but only {visible} GPU(s) are visible "
            "(CUDA_VISIBLE_DEVICES); set DIYSC_GPUS to at most that, or DIYSC_DEVICE=cpu"
        )


def launch_workers(script: str | Path, argv: Sequence[str], processes: int | None = None) -> None:
    """Run `python script *argv` in `processes` workers on this node; return when all succeed."""
    processes = processes or requested_processes()
    # With DIYSC_GPU_POOL the job holds `processes` GPUs of the pool for its lifetime; the workers,
    # fresh processes, see exactly those as cuda:0..N-1.
    claimed = runtime.claim_gpus(processes)
    if claimed is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = runtime.visible_devices(claimed)
    elif (os.environ.get("DIYSC_DEVICE") or "cuda").startswith("cuda"):  # not the CPU by name
        check_gpu_count(processes, torch.cuda.device_count())
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
    name = Path(script).name
    try:
        elastic_launch(config, sys.executable)(*worker_command(script), *argv)
    except ChildFailedError as err:
        codes = ", ".join(
            f"rank {r}: {exit_text(f.exitcode)}" for r, f in sorted(err.failures.items())
        )
        raise LaunchError(
            f"{name}: {len(err.failures)} of {processes} workers failed ({codes}); "
            "their errors are above"
        ) from None
    except Exception as err:  # the launch itself (rendezvous, spawning)
        raise LaunchError(f"{name}: launching {processes} workers failed: {err}") from None


def exit_text(code: int) -> str:
    """A worker's exit status in words. A negative one is the signal that ended it: usually the
    launcher stopping the others once one failed, which can also be a failing worker still
    shutting down when a peer's failure was seen first (its error is printed all the same)."""
    if code >= 0:
        return f"exit {code}"
    try:
        return f"stopped by signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"stopped by signal {-code}"


# A worker that finished its share waits for the slowest at the barrier: far longer than the default
# 30 minutes on a large category. A failed worker never leaves the others waiting: the launcher
# stops them all.
_WAIT = datetime.timedelta(days=7)


def share(sizes: Sequence[int], workers: int) -> list[int]:
    """The worker of each item: the largest first, each to the least loaded worker (ties to the
    lowest rank), so the split depends only on the sizes and the worker count."""
    load = [0] * workers
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        w = min(range(workers), key=lambda w: (load[w], w))
        owner[i] = w
        load[w] += sizes[i]
    return owner


class Workers:
    """This process's place among a stage's workers; one process alone is the group of one.

    Used as a context manager: inside a launched worker it joins the gloo process group, which here
    only synchronises the workers and carries their small reports to rank 0 (the work itself is on
    each worker's own device), and leaves it on exit.
    """

    def __init__(self) -> None:
        self.joined = False
        self.rank, self.count = 0, 1

    def __enter__(self) -> Workers:
        if is_worker() and int(os.environ["WORLD_SIZE"]) > 1:
            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=_WAIT)
                self.joined = True
            self.rank, self.count = dist.get_rank(), dist.get_world_size()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.joined:
            dist.destroy_process_group()
            self.joined = False

    @property
    def leader(self) -> bool:
        """Rank 0: the one that publishes the output."""
        return self.rank == 0

    def mine(self, items: Sequence[T], sizes: Sequence[int]) -> list[T]:
        """This worker's share of `items` (in their order), balanced by `sizes`."""
        owner = share(sizes, self.count)
        return [item for item, w in zip(items, owner, strict=True) if w == self.rank]

    @contextlib.contextmanager
    def leader_first(self) -> Iterator[None]:
        """Run the block on rank 0, then on the others: a model the block builds into the cache
        (a tiny or stand-in backbone, generated or trained on first use) is built once, not by
        every worker at the same time."""
        if not self.leader:
            self.wait_all()
        yield
        if self.leader:
            self.wait_all()

    def wait_all(self) -> None:
        """Return once every worker got here (all their files are written)."""
        if self.count > 1:
            self._together(dist.barrier)

    def gather(self, value: Any) -> list[Any] | None:
        """Every worker's `value` (a picklable report), by rank, on rank 0; None elsewhere.
        A synchronisation point too: rank 0 returns once all workers have sent theirs."""
        if self.count == 1:
            return [value]
        values: list[Any] | None = [None] * self.count if self.leader else None
        self._together(lambda: dist.gather_object(value, values, dst=0))
        return values

    def _together(self, collective) -> None:
        try:
            collective()
        except RuntimeError:  # gloo: a peer's connection closed, i.e. that worker failed
            raise LaunchError(
                f"worker {self.rank}: another worker failed before all finished (its error is "
                "above)"
            ) from None
