"""DVC stage `sphere_train`: train the spherical mapper on the cached DINO features of trn images.

Params: `sphere`, `seed` (and `tracking` for the MLflow mirror). With `sphere.pretrained` set, no
training runs: that checkpoint (SphericalMaps format, keys `sphere_mapper.*`, or a plain state
dict) is checked against this configuration and written to `--out` as a plain state dict.
Runtime settings (not params): DIYSC_DEVICE.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from diysc import runtime
from diysc.config.stage import load_stage_params
from diysc.errors import clean_errors
from diysc.sphere.model import load_mapper
from diysc.sphere.train import load_training_set, save_mapper, train_sphere, write_history
from diysc.stage_options import checkpoints_option, params_options
from diysc.tracking import start_run


@click.command()
@params_options
@click.option("--dataset", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--features", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--masks", type=click.Path(path_type=Path, exists=True), required=True)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Mapper state dict (.pth)."
)
@checkpoints_option
@click.option(
    "--curve",
    type=click.Path(path_type=Path),
    default=None,
    help="Loss history CSV (one row per epoch).",
)
@clean_errors
def main(
    params_path: str,
    overrides: tuple[str, ...],
    dataset: Path,
    features: Path,
    masks: Path,
    out: Path,
    checkpoints: Path,
    curve: Path | None,
) -> None:
    params = load_stage_params("sphere_train", params_path, overrides)
    cfg = params.sphere
    data = load_training_set(dataset, features, masks)
    if cfg.pretrained:
        mapper = load_mapper(cfg.pretrained, data.feature_dim, cfg.hidden, cfg.heads)
        save_mapper(mapper, out)
        if curve is not None:
            write_history(curve, [])
        click.echo(f"sphere_train: pretrained mapper {cfg.pretrained} checked and copied → {out}")
        return

    device = runtime.device()
    logged = {
        "sphere": dataclasses.asdict(cfg),
        "seed": params.seed,
        "preset": params.preset,
        "train_images": len(data),
        "feature_dim": data.feature_dim,
        "grid": data.grid,
        "device": str(device),
    }
    with start_run(params.tracking, "sphere_train", logged, params_path) as run:

        def log_epoch(record: dict) -> None:
            run.log_progress(
                {k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"]
            )

        result = train_sphere(
            data, cfg, params.seed, checkpoints, device, on_epoch=log_epoch, progress=True
        )
        save_mapper(result.mapper, out)
        if curve is not None:
            write_history(curve, result.history)
            run.log_artifact(curve)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    start = f"resumed at epoch {result.resumed_from}" if result.resumed_from else "from scratch"
    click.echo(
        f"sphere_train: {cfg.epochs} epochs ({start}) on {len(data)} images, loss {first:.4f} → "
        f"{last:.4f} → {out}"
    )


if __name__ == "__main__":
    main()
