"""DVC stage `evaluate@<name>`: PCK of the zero-shot baseline and the adapter on a dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from diysc import runtime
from diysc.config.stage import load_dataset_stage_params
from diysc.errors import clean_errors
from diysc.evaluation.run import evaluate_checkpoint, staged_outputs
from diysc.metric_keys import headline_alpha, pck_key
from diysc.stage_options import dataset_name_option, params_options
from diysc.tracking import numeric, start_run
from diysc.viz import figure_note


@click.command()
@params_options
@dataset_name_option
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--features", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--adapter", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--metrics", "metrics_path", required=True, type=click.Path())
@click.option("--plots", "plots_dir", required=True, type=click.Path())
@click.option(
    "--zero-shot/--no-zero-shot",
    default=True,
    show_default=True,
    help="Also evaluate the zero-shot baseline (ablation variants skip it).",
)
@clean_errors
def main(
    params_path,
    overrides,
    dataset_name,
    dataset,
    features,
    adapter,
    metrics_path,
    plots_dir,
    zero_shot,
):
    _, params = load_dataset_stage_params("evaluate", dataset_name, params_path, overrides)
    settings = params.eval
    device = runtime.device()
    metrics, results, size = evaluate_checkpoint(
        dataset, features, adapter, settings, device, zero_shot=zero_shot
    )
    note = figure_note(params.preset)  # on pictures of a preset whose figures are not results
    # The outputs appear together when the block, tracking included, has succeeded; a failure
    # to publish them marks the MLflow run failed.
    with (
        start_run(
            params.tracking,
            "evaluate",
            {"eval": dataclasses.asdict(settings), "adapter_path": adapter},
            params_file=params_path,
        ) as run,
        staged_outputs(
            metrics_path, plots_dir, dataset, metrics, results, settings, size, note=note
        ) as staged_plots,
    ):
        run.log_metrics(numeric(metrics))
        run.log_dict(metrics, Path(metrics_path).name)
        run.log_artifact(staged_plots, "plots")  # PCK curves and match pictures
    key = pck_key(headline_alpha(settings.alphas))
    summary = ", ".join(
        f"{name} {metrics[name]['per_image'][key]:.1f} per image / "
        f"{metrics[name]['per_keypoint'][key]:.1f} per keypoint"
        for name in results
    )
    click.echo(f"evaluate ({device}): {metrics['pairs']} pairs, {key}: {summary}")


if __name__ == "__main__":
    main()
