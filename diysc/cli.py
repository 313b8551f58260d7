"""The `diysc` command line for users: info, dataset previews, evaluation, matching, tables."""

from __future__ import annotations

import platform
import sys

import click


@click.group()
@click.version_option(package_name="diysc")
def main() -> None:
    """DIY-SC reproducibility harness: semantic correspondence from pseudo-labels."""


@main.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              help="Parameter file to resolve.")
def info(params_path: str) -> None:
    """Print versions, the compute device and resolved paths."""
    from importlib import metadata
    from pathlib import Path

    from diysc import runtime
    from diysc.tracking import tracking_uri

    click.echo(f"diysc        {metadata.version('diysc')}")
    click.echo(f"python       {platform.python_version()} ({sys.executable})")
    for dist in ("torch", "transformers", "diffusers", "dvc", "mlflow", "numpy", "pandas"):
        try:
            click.echo(f"{dist:<12} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            click.echo(f"{dist:<12} not installed")
    dev = runtime.device()
    detail = ""
    if dev.type == "cuda":
        import torch

        detail = f" ({torch.cuda.get_device_name(dev)})"
    click.echo(f"device       {dev}{detail}")
    click.echo(f"cache        {runtime.cache_dir()}")
    click.echo(f"mlflow       {tracking_uri()}")
    path = Path(params_path)
    if path.is_file():
        from diysc.config import load_params

        params = load_params(path)
        click.echo(f"params       {path.resolve()} (preset {params.preset})")
    else:
        click.echo(f"params       {path} not found")
