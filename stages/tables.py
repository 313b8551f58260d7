"""DVC stages `tables` and `ablation_tables`: the paper's tables from the metric files."""

from __future__ import annotations

from pathlib import Path

import click

from diysc.errors import clean_errors
from diysc.tables import (
    MAIN_RUN,
    ablation_table,
    channels_table,
    load_metrics,
    load_run,
    main_table,
    viewpoint_table,
)


@click.group()
def main() -> None:
    """Render tables as Markdown and CSV."""


@main.command("main")
@click.option("--metrics", "metrics_path", required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@clean_errors
def main_tables(metrics_path, out):
    """Main results and PCK by viewpoint change (Tab. 1) from metrics/<dataset>/eval.json."""
    metrics = load_metrics(metrics_path)
    written = main_table(metrics).write(out, "main") + viewpoint_table(metrics).write(
        out, "viewpoint"
    )
    click.echo(f"tables: wrote {', '.join(str(p) for p in written)}")


@main.command("ablation")
@click.option(
    "--main-run",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The main pipeline's metrics folder (train.json).",
)
@click.option(
    "--main-eval",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The main run's evaluation on the tables' dataset (metrics/<dataset>/eval.json); "
    "default: eval.json in --main-run.",
)
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
def ablation_tables(main_run: Path, main_eval: Path | None, variants: Path, evaluation: Path, out):
    """Tab. 5 (ablations) and Tab. 8 (adapter width), from the settings each run recorded.

    The runs are those evaluated together in `--evaluation` (the ablation params' runs), so a
    stale folder of a run no longer defined does not enter the tables."""
    evaluated = load_metrics(evaluation)
    runs = [load_run(MAIN_RUN, main_run, eval_path=main_eval)]
    runs += [load_run(name, variants / name, evaluated) for name in evaluated if name != "pairs"]
    written = ablation_table(runs).write(out, "ablation") + channels_table(runs).write(
        out, "channels"
    )
    click.echo(f"ablation_tables: {len(runs)} runs, wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()
