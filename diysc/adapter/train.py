"""Adapter training loop (reference §4.4–4.5), readable top to bottom.

One optimiser step = `batch_size` pairs (global, across processes): AdamW + OneCycle (β1 cycled
0.95 → 0.85 → 0.95), input-feature dropout, loss = w_sparse·InfoNCE + w_dense·EPE averaged over the
pairs. Every `val_every` steps (and at the last) the pseudo-label validation loss is measured in eval
mode; the best model by that loss is what `train_adapter` returns. No ground-truth keypoint is used.

Determinism. Randomness never comes from a global generator: the pairs of step s are positions
s·B … s·B+B−1 of a seeded per-epoch permutation, and each pair's dropout masks and flow noise come
from a generator seeded by (seed, step, position). A run is therefore the same whether it is
resumed from a checkpoint or not, and whether its B pairs are spread over one process or several
(DDP averages the per-process mean losses' gradients, i.e. the mean over the B pairs).

Reliability. Every `checkpoint_every` steps `<checkpoints>/last.pt` is replaced atomically: model,
optimiser, scheduler, RNG state, step, best model, curve, and the run's key. The key covers the
params, the seed, the training pairs, the content digests of the input files (given by the caller)
and the code of this module's import closure; only an unfinished run with the same key is resumed
(`diysc.resume`), and a finished run removes its checkpoint. A non-finite loss stops the run before
the step is applied, with the last good checkpoint left in place.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import OneCycleLR
from tqdm import tqdm

from diysc import runtime
from diysc.adapter.data import PairTable, TrainingData
from diysc.adapter.losses import noise_sigma, pair_losses
from diysc.adapter.model import Adapter
from diysc.config.schema import AdapterParams
from diysc.errors import UserError
from diysc.io import atomic_path, save_torch
from diysc.provenance import code_digest, run_key
from diysc.resume import checkpoint_path, finish, load_resumable, save_resumable

CURVE_COLUMNS = ("step", "loss", "lr", "val_loss")


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]  # state dict (official key names) of the best model
    final_state: dict[str, torch.Tensor]  # the model after the last step
    best_step: int
    best_val_loss: float
    steps: int
    curve: torch.Tensor  # (steps, 3) float64: loss, lr, val_loss (NaN where not measured)
    resumed_from: int  # the step this call started at (0: trained from scratch)
    seconds: float  # wall time of the steps run by this call


def check_processes(batch_size: int, world: int) -> None:
    """The global batch is split evenly between the processes (`DIYSC_GPUS`)."""
    if batch_size % world:
        raise runtime.SettingError(
            f"adapter.batch_size={batch_size} (pairs per step, all processes) "
            f"must be divisible by the number of processes ({world}, DIYSC_GPUS)"
        )


def train_adapter(
    data: TrainingData,
    params: AdapterParams,
    seed: int,
    checkpoints: str | Path,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    on_step: Callable[[dict], None] | None = None,
    progress: bool = False,
    inputs: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train (or resume training) an adapter on `data`; see the module docstring.

    `inputs` names the content digests of the files `data` was read from (features, labels), so
    that a checkpoint is resumed only on the same data; in-memory data is identified by its pairs.
    """
    device = torch.device(device)
    rank, world = _rank_and_world()
    check_processes(params.batch_size, world)
    local_batch = params.batch_size // world
    checkpoint = checkpoint_path(checkpoints)
    key = run_identity(data, params, seed, inputs)

    # Model, optimiser and schedule (identical on every process: same seed).
    torch.manual_seed(seed)
    model = Adapter(data.feature_dims, params.channels, params.num_blocks, params.temperature)
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=params.lr, weight_decay=params.weight_decay, fused=device.type == "cuda"
    )
    scheduler = OneCycleLR(
        optimizer,
        max_lr=params.lr,
        total_steps=params.steps,
        pct_start=params.warmup,
        cycle_momentum=True,
    )
    state = {
        "step": 0,
        "best_val_loss": math.inf,
        "best_step": 0,
        "best_model": None,
        "curve": torch.full((params.steps, 3), math.nan, dtype=torch.float64),
    }
    saved = load_resumable(checkpoints, key, map_location=device)
    if saved is not None:
        state = _restore(saved, checkpoint, model, optimizer, scheduler)
    resumed_from = state["step"]
    ddp_devices = [device] if device.type == "cuda" else None
    net = DistributedDataParallel(model, device_ids=ddp_devices) if world > 1 else model
    order = PairOrder(len(data.train), seed)

    started = time.perf_counter()
    bar = _progress(params.steps, state["step"], progress and rank == 0)
    for step in range(state["step"], params.steps):
        # Forward and loss on this process's share of the step's pairs.
        positions = step * params.batch_size + rank * local_batch + torch.arange(local_batch)
        batch = data.train.select(order[positions])
        lr = scheduler.get_last_lr()[0]
        model.train()
        loss = batch_loss(
            net,
            model,
            data,
            batch,
            params,
            device,
            bf16,
            generators=[_generator(device, seed, "train", step, int(p)) for p in positions],
        )
        loss_value = _mean_over_processes(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingDiverged(_diverged_message(step + 1, loss_value, checkpoint))

        # Update.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        # Validation, best model, curve.
        done = step + 1
        val_loss = math.nan
        if done % params.val_every == 0 or done == params.steps:
            val_loss = validate(model, data, params, seed, device, bf16)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(_diverged_message(done, val_loss, checkpoint, "validation "))
            if val_loss < state["best_val_loss"]:
                state.update(best_val_loss=val_loss, best_step=done, best_model=_cpu_state(model))
        state["curve"][step] = torch.tensor([loss_value, lr, val_loss], dtype=torch.float64)
        state["step"] = done

        # Checkpoint (rank 0 writes; the others wait so that nobody runs ahead of a failed write).
        if done % params.checkpoint_every == 0 and done < params.steps:
            if rank == 0:
                save_resumable(
                    checkpoints, key, _checkpoint_state(model, optimizer, scheduler, state)
                )
            if world > 1:
                dist.barrier()
        if on_step is not None and rank == 0:
            on_step({"step": done, "loss": loss_value, "lr": lr, "val_loss": val_loss})
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    if rank == 0:
        finish(checkpoints)  # a finished run is never resumed
    if world > 1:
        dist.barrier()

    return TrainResult(
        best_state=state["best_model"],
        final_state=_cpu_state(model),
        best_step=state["best_step"],
        best_val_loss=state["best_val_loss"],
        steps=state["step"],
        curve=state["curve"][: state["step"]],
        resumed_from=resumed_from,
        seconds=time.perf_counter() - started,
    )


def batch_loss(
    net: torch.nn.Module,
    model: Adapter,
    data: TrainingData,
    batch: PairTable,
    params: AdapterParams,
    device: torch.device,
    bf16: bool,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Mean loss over the batch's pairs; `generators[i]` drives pair i's dropout and label noise."""
    n, grid = len(batch), data.grid
    src = data.bank.stack(batch.src_image).to(device, non_blocking=True).float()
    trg = data.bank.stack(batch.trg_image).to(device, non_blocking=True).float()
    if model.training and params.dropout > 0:
        for i, g in enumerate(generators):
            src[i] = feature_dropout(src[i], params.dropout, g)
            trg[i] = feature_dropout(trg[i], params.dropout, g)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        descriptors = net(torch.cat([src, trg]))  # one forward for all 2n images
    descriptors = descriptors.float().flatten(2).transpose(1, 2)  # (2n, grid², C)

    sigma = noise_sigma(batch.trg_extent, params.noise).to(device)
    noise = (
        torch.stack(
            [torch.randn(batch.valid.shape[1], 2, generator=g, device=device) for g in generators]
        )
        * sigma[:, None, None]
    )
    sparse, dense = pair_losses(
        descriptors[:n],
        descriptors[n:],
        batch.src_points.to(device),
        batch.trg_points.to(device),
        batch.valid.to(device),
        model.logit_scale.float(),
        noise,
        grid,
        params.beta,
    )
    return (params.w_sparse * sparse + params.w_dense * dense).mean()


def feature_dropout(features: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Element-wise dropout with 1/(1−p) rescaling (as `F.dropout`), from a given generator."""
    keep = torch.rand(features.shape, generator=generator, device=features.device) >= p
    return features * keep / (1 - p)


@torch.no_grad()
def validate(
    model: Adapter,
    data: TrainingData,
    params: AdapterParams,
    seed: int,
    device: torch.device,
    bf16: bool,
) -> float:
    """Mean loss over the validation pairs, eval mode (no dropout), noise fixed per val pair."""
    rank, world = _rank_and_world()
    model.eval()
    mine = torch.arange(rank, len(data.val), world)  # this process's share
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, count)
    chunk = max(1, params.batch_size // world)
    for start in range(0, len(mine), chunk):
        index = mine[start : start + chunk]
        generators = [_generator(device, seed, "val", 0, int(i)) for i in index]
        loss = batch_loss(
            model, model, data, data.val.select(index), params, device, bf16, generators
        )
        total[0] += loss.double() * len(index)
        total[1] += len(index)
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return float(total[0] / total[1])


class PairOrder:
    """Global position n → training pair: a seeded permutation of the pairs per epoch."""

    def __init__(self, num_pairs: int, seed: int):
        self.num_pairs, self.seed = num_pairs, seed
        self._epoch, self._perm = -1, None

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(positions)
        for i, n in enumerate(positions.tolist()):
            epoch = n // self.num_pairs
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(_seed_of(self.seed, "epoch", epoch, 0))
                self._epoch, self._perm = epoch, torch.randperm(self.num_pairs, generator=g)
            out[i] = self._perm[n % self.num_pairs]
        return out


def run_identity(
    data: TrainingData, params: AdapterParams, seed: int, inputs: Mapping[str, str] | None = None
) -> str:
    """The key of a training run: what a checkpoint must have been written by to be resumed."""
    return run_key(
        {
            "stage": "train_adapter",
            "params": asdict(params),
            "seed": seed,
            "pairs": data.digest(),
            "inputs": dict(inputs or {}),
            "code": code_digest(__name__),
        }
    )


def write_curve(path: str | Path, curve: torch.Tensor) -> None:
    """CSV `step,loss,lr,val_loss` (val_loss empty where not measured), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    for step, (loss, lr, val) in enumerate(curve.tolist(), start=1):
        writer.writerow([step, f"{loss:.6g}", f"{lr:.6g}", "" if math.isnan(val) else f"{val:.6g}"])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def save_adapter(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """Write an adapter state dict (official key names) atomically; same weights, same bytes."""
    save_torch(path, {k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def setup_distributed() -> torch.device:
    """Join the process group when started by `torchrun` (WORLD_SIZE > 1); this process's device.

    The device is `diysc.runtime.device()`: in a worker `cuda:<LOCAL_RANK>` (NCCL) when CUDA is
    available, else the CPU (gloo); alone, DIYSC_DEVICE, else CUDA when available, else CPU.
    """
    device = runtime.device()  # a worker's is cuda:<LOCAL_RANK> or the CPU
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = device.type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(device)
    return device


# --- helpers ---------------------------------------------------------------------------------


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_processes(value: torch.Tensor) -> float:
    if _rank_and_world()[1] > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def _seed_of(seed: int, tag: str, step: int, position: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{tag}/{step}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _generator(
    device: torch.device, seed: int, tag: str, step: int, position: int
) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_seed_of(seed, tag, step, position))


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _checkpoint_state(model, optimizer, scheduler, state: dict) -> dict:
    """Tensors and plain values only, so that it loads with `weights_only=True`.

    Training draws its randomness from per-step generators (module docstring), so the global RNG
    states are saved only for code that might use them; NumPy's and Python's are not used.
    """
    return {
        "model": _cpu_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **state,
    }


def _restore(saved: dict, path: Path, model, optimizer, scheduler) -> dict:
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng_torch"].cpu())
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["rng_cuda"]])
        state = {k: saved[k] for k in ("step", "best_val_loss", "best_step", "best_model", "curve")}
    except (KeyError, RuntimeError, ValueError) as err:
        raise RuntimeError(
            f"{path}: cannot resume from this checkpoint ({err}); delete it to start the run afresh"
        ) from None
    state["curve"] = state["curve"].cpu()
    if state["best_model"] is not None:
        state["best_model"] = {k: v.cpu() for k, v in state["best_model"].items()}
    return state


def _diverged_message(step: int, value: float, checkpoint: Path, what: str = "") -> str:
    kept = (
        f"the last good checkpoint {checkpoint} is kept and resuming starts from it"
        if checkpoint.is_file()
        else f"no checkpoint had been written yet ({checkpoint})"
    )
    return (
        f"adapter training diverged: {what}loss is {value} at step {step}; {kept}. "
        "Check the input features for NaN/inf values or lower adapter.lr."
    )


def _progress(total: int, initial: int, enabled: bool):
    return tqdm(
        total=total,
        initial=initial,
        desc="train_adapter",
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=1.0,
    )
