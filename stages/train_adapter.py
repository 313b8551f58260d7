"""DVC stage `train_adapter`: train the adapter on the pseudo-labels, keep the best by val loss.

Params: `adapter`, `seed` (and `tracking` for the MLflow mirror). Writes the best adapter, the
training curve, and `--metrics` (JSON): the pseudo-label settings the labels were generated with
(from their info.json), the adapter params, and the best validation loss, so that the tables can
label the run by what it was trained with. Runtime settings (not params):
DIYSC_DEVICE, DIYSC_BF16=1 or --bf16 (bf16 autocast), DIYSC_FEATURE_BANK_GB (feature bank budget).
Several GPUs: `DIYSC_GPUS=N dvc repro` makes this stage launch N workers itself (`diysc.launch`);
several nodes: `torchrun --nnodes … --nproc_per_node N -m stages.train_adapter ...`. Either way
adapter.batch_size is the number of pairs per step over all processes, and the result is the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import click
import torch.distributed as dist

from diysc.adapter.data import DEFAULT_BANK_BYTES, load_training_data
from diysc.adapter.model import adapter_config
from diysc.adapter.train import (
    check_processes,
    save_adapter,
    setup_distributed,
    train_adapter,
    write_curve,
)
from diysc.config.stage import load_stage_params
from diysc.errors import clean_errors
from diysc.io import write_json
from diysc.launch import handed_off, requested_processes
from diysc.provenance import content_digest
from diysc.stage_options import checkpoints_option, params_options
from diysc.tracking import start_run


@click.command()
@params_options
@click.option("--features", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--labels", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Best adapter (.pth).")
@click.option("--curve", type=click.Path(path_type=Path), required=True, help="Training curve CSV.")
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Run record (JSON): settings trained with, best validation loss.",
)
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
    metrics_path: Path,
    checkpoints: Path,
    bf16: bool,
) -> None:
    params = load_stage_params("train_adapter", params_path, overrides)  # fails before any launch
    check_processes(params.adapter.batch_size, requested_processes())
    if handed_off(__file__):
        return
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
    label_info = labels / "info.json"
    if not label_info.is_file():
        raise click.UsageError(f"{label_info}: not found (the pseudo_labels stage writes it)")
    label_settings = json.loads(label_info.read_text()).get("settings")
    # What a resume checkpoint must have been trained on: the bytes of both inputs.
    inputs = {"features": content_digest([features]), "labels": content_digest([labels])}
    logged = {
        "adapter": dataclasses.asdict(params.adapter),
        "seed": params.seed,
        "preset": params.preset,
        "train_pairs": len(data.train),
        "val_pairs": len(data.val),
        "feature_dims": list(data.feature_dims),
        "device": str(device),
        "bf16": bf16,
        "labels": label_settings,  # the pseudo-label toggles under test (chaining, cycle, ...)
    }
    tracking = params.tracking if rank == 0 else dataclasses.replace(params.tracking, mlflow=False)
    with start_run(tracking, "train_adapter", logged, params_path) as run:

        def log_step(row: dict) -> None:
            run.log_progress(
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
            inputs=inputs,
        )
        if rank == 0:
            save_adapter(out, result.best_state)
            write_curve(curve, result.curve)
            write_json(
                metrics_path,
                {
                    "labels": label_settings,
                    "adapter": dataclasses.asdict(params.adapter),
                    "seed": params.seed,
                    "train_pairs": len(data.train),
                    "val_pairs": len(data.val),
                    "steps": result.steps,
                    "best_step": result.best_step,
                    "best_val_loss": result.best_val_loss,
                },
            )
            run.log_metrics(
                {
                    "best_val_loss": result.best_val_loss,
                    "best_step": result.best_step,
                    "final_loss": float(result.curve[-1, 0]),
                },
                step=result.steps,
            )
            run.log_model(out, {**adapter_config(result.best_state), **logged}, "adapter")
            run.log_artifact(curve)
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        start = f"resumed at step {result.resumed_from}" if result.resumed_from else "from scratch"
        click.echo(
            f"train_adapter: {result.steps} steps ({start}) on {len(data.train)} pairs, best val "
            f"loss {result.best_val_loss:.4f} at step {result.best_step} → {out}"
        )


if __name__ == "__main__":
    main()
