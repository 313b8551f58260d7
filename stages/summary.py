"""DVC stage `summary`: the headline metrics of the run and the precision of each filter step.

Params: `eval.alphas` (the PCK in the headline).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from diysc.config.stage import load_stage_params
from diysc.errors import clean_errors
from diysc.headline import headline, precision_by_step
from diysc.io import write_json, write_text
from diysc.metric_keys import alpha_key, headline_alpha
from diysc.stage_options import params_options
from diysc.tables import load_metrics


@click.command()
@params_options
@click.option("--eval", "eval_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--pseudo", "pseudo_path", required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--train", "train_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Headline JSON.")
@click.option("--precision-plot", required=True, type=click.Path(path_type=Path), help="CSV.")
@clean_errors
def main(params_path, overrides, eval_path, pseudo_path, train_path, out, precision_plot):
    alphas = load_stage_params("summary", params_path, overrides).eval.alphas
    pseudo = load_metrics(pseudo_path)
    record = headline(load_metrics(eval_path), pseudo, load_metrics(train_path), alphas)
    rows = precision_by_step(pseudo)
    buffer = io.StringIO()
    columns = ["step", "order", *sorted({k for row in rows for k in row} - {"step", "order"})]
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(precision_plot, buffer.getvalue())
    write_json(out, record)
    adapter, alpha = record.get("adapter", {}), headline_alpha(alphas)
    click.echo(
        f"summary: adapter PCK@{alpha:g} {adapter.get(f'per_image_{alpha_key(alpha)}')} per image"
        f" / {adapter.get(f'per_keypoint_{alpha_key(alpha)}')} per keypoint → {out}"
    )


if __name__ == "__main__":
    main()
