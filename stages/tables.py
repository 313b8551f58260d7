"""DVC stages `tables` and `ablation_tables`: the paper's tables from the metric files.

Params: `eval.alphas` (a PCK column per α).
"""

from __future__ import annotations

from pathlib import Path

import click

from diysc.config.stage import load_stage_params
from diysc.errors import clean_errors
from diysc.stage_options import params_options
from diysc.tables import (
    MAIN_RUN,
    ablation_table,
    channels_table,
    load_metrics,
    load_run,
    main_table,
    viewpoint_table,
)

MAIN_RUN_OPTION = click.option(
    "--main-run",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The main pipeline's metrics folder (train.json).",
)
MAIN_EVAL_OPTION = click.option(
    "--main-eval",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The main run's evaluation on the tables' dataset (metrics/<dataset>/eval.json); "
    "default: eval.json in --main-run.",
)
ABLATIONS_DECLARED_IN = "ablations/evaluation/dvc.yaml"  # `ablation_tables`, beside params.yaml


@click.group()
def main() -> None:
    """Render tables as Markdown and CSV."""


@main.command("main")
@params_options
@MAIN_RUN_OPTION
@MAIN_EVAL_OPTION
@click.option("--out", required=True, type=click.Path(file_okay=False))
@clean_errors
def main_tables(params_path, overrides, main_run: Path, main_eval: Path | None, out):
    """Main results and PCK by viewpoint change (Tab. 1) from the main run's eval.json, with the
    paper's figures for its recorded settings (train.json)."""
    alphas = load_stage_params("tables", params_path, overrides).eval.alphas
    run = load_run(MAIN_RUN, main_run, eval_path=main_eval)
    written = main_table(run, alphas).write(out, "main")
    written += viewpoint_table(run.metrics, alphas).write(out, "viewpoint")
    click.echo(f"tables: wrote {', '.join(str(p) for p in written)}")


@main.command("ablation")
@params_options
@MAIN_RUN_OPTION
@MAIN_EVAL_OPTION
@click.option(
    "--variants",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of the ablation runs' records: <run>/train.json.",
)
@click.option(
    "--evaluation",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The ablation runs' PCK, keyed by run (written by stages/evaluate_runs.py).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@clean_errors
def ablation_tables(
    params_path, overrides, main_run: Path, main_eval: Path | None, variants, evaluation, out
):
    """Tab. 5 (ablations) and Tab. 8 (adapter width), from the settings each run recorded.

    The runs are those evaluated together in `--evaluation` (the ablation params' runs), so a
    stale folder of a run no longer defined does not enter the tables."""
    declared_in = Path(params_path).resolve().parent / ABLATIONS_DECLARED_IN
    params = load_stage_params("ablation_tables", params_path, overrides, dvc_yaml=declared_in)
    alphas = params.eval.alphas
    evaluated = load_metrics(evaluation)
    runs = [load_run(MAIN_RUN, main_run, eval_path=main_eval)]
    runs += [load_run(name, variants / name, evaluated) for name in evaluated if name != "pairs"]
    written = ablation_table(runs, alphas).write(out, "ablation")
    written += channels_table(runs, alphas).write(out, "channels")
    click.echo(f"ablation_tables: {len(runs)} runs, wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()
