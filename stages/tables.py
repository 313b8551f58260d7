"""DVC stages `tables` and `ablation_tables`: the paper's tables from the metric files."""

from __future__ import annotations

from pathlib import Path

import click

from diysc.errors import clean_errors
from diysc.tables import (
    ABLATION_ROWS,
    ablation_table,
    channels_table,
    load_metrics,
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
    """Main results and PCK by viewpoint change (Tab. 1) from metrics/eval.json."""
    metrics = load_metrics(metrics_path)
    written = main_table(metrics).write(out, "main") + viewpoint_table(metrics).write(
        out, "viewpoint"
    )
    click.echo(f"tables: wrote {', '.join(str(p) for p in written)}")


@main.command("ablation")
@click.option(
    "--metrics",
    "metrics_path",
    required=True,
    type=click.Path(exists=True),
    help="The main pipeline's metrics (zero-shot row and the full row).",
)
@click.option(
    "--variants",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of variant results: <name>/eval.json, channels_<C>/eval.json.",
)
@click.option(
    "--channels",
    "main_channels",
    required=True,
    type=int,
    help="Adapter width of the main pipeline (its row of Tab. 8).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@clean_errors
def ablation_tables(metrics_path, variants, main_channels, out):
    """Tab. 5 (ablations) and Tab. 8 (adapter width)."""
    main_metrics = load_metrics(metrics_path)
    root = Path(variants)
    by_name = {
        row.name: load_metrics(root / row.name / "eval.json")
        for row in ABLATION_ROWS
        if row.name not in ("zero_shot", "full")
    }
    by_channels = {
        int(p.parent.name.split("_", 1)[1]): load_metrics(p)
        for p in sorted(root.glob("channels_*/eval.json"))
    }
    by_channels[main_channels] = main_metrics
    written = ablation_table(main_metrics, by_name).write(out, "ablation") + channels_table(
        by_channels
    ).write(out, "channels")
    click.echo(f"ablation_tables: wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()
