"""DVC stage `pseudo_labels`: pseudo-labels for trn and val, and their quality report.

`DIYSC_GPUS=N`: N workers (one per GPU) share the (split, category) jobs; rank 0 merges the reports
and writes the outputs, the one process's byte for byte.
"""

from __future__ import annotations

import click
from tqdm import tqdm

from diysc import runtime
from diysc.config.stage import load_stage_params
from diysc.errors import clean_errors
from diysc.io import write_json
from diysc.launch import Workers, handed_off
from diysc.metric_keys import HEADLINE_ALPHA, precision_key
from diysc.pseudo.labels import Settings, generate_labels
from diysc.stage_options import params_options


@click.command()
@params_options
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--features", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--masks", required=True, type=click.Path())
@click.option("--sphere", required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path())
@click.option("--metrics", "metrics_path", required=True, type=click.Path())
@click.option(
    "--batch",
    default=8,
    show_default=True,
    envvar="DIYSC_PSEUDO_BATCH",
    help="Tuples matched per batched matmul (runtime setting; results do not depend on it).",
)
@clean_errors
def main(params_path, overrides, dataset, features, masks, sphere, out, metrics_path, batch):
    params = load_stage_params("pseudo_labels", params_path, overrides)  # fails before a launch
    if handed_off(__file__):
        return
    settings = Settings.from_params(params)
    caps = {"trn": params.pseudo.pairs_trn, "val": params.pseudo.pairs_val}
    with Workers() as workers:
        device = runtime.device()
        report = generate_labels(
            dataset,
            features,
            masks,
            sphere,
            out,
            settings,
            caps,
            params.seed,
            device,
            batch,
            progress=lambda jobs: tqdm(jobs, desc="pseudo-labels", unit="category"),
            workers=workers,
        )
    if report is None:  # a worker other than rank 0: rank 0 writes the outputs
        return
    # The settings travel with the figures, so a table can label the run by what it ran.
    write_json(metrics_path, {"settings": settings.record(), **report})
    summary = ", ".join(
        f"{s}: {report[s]['pairs']} pairs, {report[s]['points']} points, "
        f"precision@{HEADLINE_ALPHA:g} {report[s]['emitted'][precision_key(HEADLINE_ALPHA)]:.3f}"
        for s in ("trn", "val")
        if s in report
    )
    click.echo(f"pseudo_labels ({device}): {summary}")


if __name__ == "__main__":
    main()
