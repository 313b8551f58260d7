"""DVC stage `evaluate_runs`: PCK of every ablation run's adapter, in one process.

The runs are those `ablation` in params.yaml defines (`AblationParams.runs`), each adapter read
from `<adapters>/<run>.pth`. One process evaluates them all because an ablation adapter's
evaluation is a fraction of a second of work and a stage process costs several seconds to start
(torch, MLflow): re-evaluating every run when one adapter changes costs less than one more process.
Writes one metrics file, `{"pairs": n, "<run>": summary, ...}` (each summary as the `adapter`
entry of `evaluate`'s eval.json), and each run's PCK curves (no match pictures) under
`<plots>/<run>/`; each run gets its own MLflow run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from diysc import runtime
from diysc.config.stage import load_stage_params
from diysc.errors import UserError, clean_errors
from diysc.evaluation.run import evaluate_adapters, staged_outputs
from diysc.metric_keys import headline_alpha, pck_key
from diysc.stage_options import params_options
from diysc.tracking import numeric, stage_run_name, start_run

DECLARED_IN = "ablations/evaluation/dvc.yaml"  # the stage's entry (its params), beside params.yaml


@click.command()
@params_options
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--features", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--adapters",
    "adapters_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of the runs' adapters, <run>.pth.",
)
@click.option("--metrics", "metrics_path", required=True, type=click.Path())
@click.option("--plots", "plots_dir", required=True, type=click.Path())
@clean_errors
def main(params_path, overrides, dataset, features, adapters_dir, metrics_path, plots_dir):
    declared_in = Path(params_path).resolve().parent / DECLARED_IN
    params = load_stage_params("evaluate_runs", params_path, overrides, dvc_yaml=declared_in)
    settings = dataclasses.replace(params.eval, match_images=0)  # pictures: the main run's only
    adapters = {run: adapters_dir / f"{run}.pth" for run in params.ablation.runs()}
    missing = [str(path) for path in adapters.values() if not path.is_file()]
    if missing:
        raise UserError(
            f"no adapter for {len(missing)} of the {len(adapters)} ablation runs: "
            f"{', '.join(missing)} (trained by ablations/training/dvc.yaml)"
        )
    device = runtime.device()
    metrics, results, size = evaluate_adapters(
        dataset, features, adapters, settings, device, zero_shot=False
    )
    key = pck_key(headline_alpha(settings.alphas))
    # The outputs appear together when every run's tracking has succeeded.
    with staged_outputs(
        metrics_path, plots_dir, dataset, metrics, results, settings, size, folder_per_method=True
    ) as staged_plots:
        for run_name, adapter in adapters.items():
            summary = {"pairs": metrics["pairs"], "adapter": metrics[run_name]}
            with start_run(
                params.tracking,
                "evaluate_runs",
                {"eval": dataclasses.asdict(settings), "adapter_path": str(adapter)},
                params_file=params_path,
                run_name=f"{stage_run_name('evaluate_runs')}@{run_name}",
            ) as run:
                run.log_metrics(numeric(summary))
                run.log_dict(summary, "eval.json")
                run.log_artifact(staged_plots / run_name, "plots")
            click.echo(f"evaluate_runs: {run_name} {metrics[run_name]['per_keypoint'][key]:.1f}")
    click.echo(
        f"evaluate_runs ({device}): {len(adapters)} runs, {metrics['pairs']} pairs, "
        f"{key} per keypoint above"
    )


if __name__ == "__main__":
    main()
