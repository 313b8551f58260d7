"""DVC stage `train_adapter`: train the adapter on the pseudo-labels, keep the best by val loss.

Params: `adapter`, `seed` (and `tracking` for the MLflow mirror). Runtime settings (not params):
DIYSC_DEVICE, DIYSC_BF16=1 or --bf16 (bf16 autocast), DIYSC_FEATURE_BANK_GB (feature bank budget).
Several GPUs or nodes: `torchrun --nproc_per_node N stages/train_adapter.py ...`; adapter.batch_size
is the number of pairs per step over all processes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import click
import torch.distributed as dist

from diysc.adapter.data import DEFAULT_BANK_BYTES, load_training_data
from diysc.adapter.train import save_adapter, setup_distributed, train_adapter, write_curve
from diysc.config import load_stage_params
from diysc.errors import clean_errors
from diysc.stage_options import checkpoints_option, params_options
from diysc.tracking import start_run


@click.command()
@params_options
@click.option("--features", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--labels", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Best adapter (.pth).")
@click.option("--curve", type=click.Path(path_type=Path), required=True, help="Training curve CSV.")
@checkpoints_option
@click.option(
    "--bf16/--no-bf16",
    default=os.environ.get("DIYSC_BF16", "0") == "1",
    show_default="DIYSC_BF16",
    help="bf16 autocast for the adapter's forward pass.",
)
@clean_errors
def main(
    params_path: str,
    overrides: tuple[str, ...],
    features: Path,
    labels: Path,
    out: Path,
    curve: Path,
    checkpoints: Path,
    bf16: bool,
) -> None:
    params = load_stage_params("train_adapter", params_path, overrides)
    device = setup_distributed()
    rank = dist.get_rank() if dist.is_initialized() else 0
    bank_bytes = int(
        float(os.environ.get("DIYSC_FEATURE_BANK_GB", DEFAULT_BANK_BYTES / 2**30)) * 2**30
    )
    data = load_training_data(
        features,
        labels,
        params.adapter.max_kps,
        params.adapter.val_pairs,
        params.seed,
        bank_bytes=bank_bytes,
    )
    logged = {
        "adapter": dataclasses.asdict(params.adapter),
        "seed": params.seed,
        "preset": params.preset,
        "train_pairs": len(data.train),
        "val_pairs": len(data.val),
        "feature_dims": list(data.feature_dims),
        "device": str(device),
        "bf16": bf16,
    }
    tracking = params.tracking if rank == 0 else dataclasses.replace(params.tracking, mlflow=False)
    with start_run(tracking, "train_adapter", logged) as run:

        def log_step(row: dict) -> None:
            run.log_metrics(
                {k: row[k] for k in ("loss", "lr", "val_loss") if math.isfinite(row[k])},
                step=row["step"],
            )

        result = train_adapter(
            data,
            params.adapter,
            params.seed,
            checkpoints,
            device=device,
            bf16=bf16,
            on_step=log_step,
            progress=True,
        )
        if rank == 0:
            save_adapter(out, result.best_state)
            write_curve(curve, result.curve)
            run.log_metrics(
                {
                    "best_val_loss": result.best_val_loss,
                    "best_step": result.best_step,
                    "final_loss": float(result.curve[-1, 0]),
                },
                step=result.steps,
            )
            run.log_artifact(out)
            run.log_artifact(curve)
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        click.echo(
            f"train_adapter: {result.steps} steps on {len(data.train)} pairs, best val loss "
            f"{result.best_val_loss:.4f} at step {result.best_step} → {out}"
        )


if __name__ == "__main__":
    main()
