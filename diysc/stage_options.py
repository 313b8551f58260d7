"""Options every stage script shares: the params file and `dvc exp run -S`-style overrides."""

from __future__ import annotations

from pathlib import Path

import click

from diysc import runtime


def params_options(func):
    """Add `--params PATH` and repeatable `--set key=value` (passed to `load_stage_params`)."""
    runtime.apply_threads()  # every stage script: DIYSC_THREADS, a runtime setting
    func = click.option(
        "--set", "overrides", multiple=True, help="key=value override (as dvc exp run -S)."
    )(func)
    return click.option(
        "--params", "params_path", default="params.yaml", show_default=True, help="Params file."
    )(func)


def checkpoints_option(func):
    """`--checkpoints DIR`: resumable training state, kept outside the DVC outputs."""
    return click.option(
        "--checkpoints",
        type=click.Path(path_type=Path),
        required=True,
        help="Resume checkpoints (outside DVC outs).",
    )(func)


def batch_size_option(envvar: str, what: str):
    """`--batch-size N` (default 4, or the environment variable): a runtime setting, not a param."""
    return click.option(
        "--batch-size",
        default=4,
        show_default=True,
        envvar=envvar,
        help=f"{what} (runtime setting).",
    )
