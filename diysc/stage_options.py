"""Options every stage script shares: the params file and `dvc exp run -S`-style overrides."""

from __future__ import annotations

import click


def params_options(func):
    """Add `--params PATH` and repeatable `--set key=value` (passed to `load_stage_params`)."""
    func = click.option(
        "--set", "overrides", multiple=True, help="key=value override (as dvc exp run -S)."
    )(func)
    return click.option(
        "--params", "params_path", default="params.yaml", show_default=True, help="Params file."
    )(func)
