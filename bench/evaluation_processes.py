"""The ablation runs' evaluation: one process per run (the baseline) against `evaluate_runs`.

Each ablation run's adapter is evaluated on the test split, as a DVC stage would run it: once as
one `python -m stages.evaluate` process per run (the layout before `evaluate_runs`), once as one
`python -m stages.evaluate_runs` process for all of them. Both with MLflow on (a temporary sqlite
store), both on the workspace's own dataset, features and `models/variants/*.pth` (run `dvc repro
-P`, or `dvc pull -R ablations`, first). Prints the wall time of each and checks that every run's
PCK is the same both ways.

    python bench/evaluation_processes.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from diysc.config.load import load_params

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, check=True, capture_output=True
    )
    return time.perf_counter() - started


@click.command()
def main() -> None:
    runs = load_params(ROOT / "params.yaml").ablation.runs()
    missing = [r for r in runs if not (ROOT / "models" / "variants" / f"{r}.pth").is_file()]
    if missing:
        raise click.UsageError(f"no adapter for {', '.join(missing)}: run `dvc repro -P` first")
    dataset = load_params(ROOT / "params.yaml").eval_datasets[0]  # as ablations/evaluation
    shared = ["--dataset", f"data/{dataset}/dataset", "--features", f"data/{dataset}/features"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
        separate = 0.0
        for run in runs:
            separate += run_module(
                "stages.evaluate",
                "--dataset-name",
                dataset,
                "--no-zero-shot",
                "--set",
                "eval.match_images=0",
                *shared,
                "--adapter",
                f"models/variants/{run}.pth",
                "--metrics",
                str(out / run / "eval.json"),
                "--plots",
                str(out / run / "plots"),
                env=env,
            )
        together = run_module(
            "stages.evaluate_runs",
            *shared,
            "--adapters",
            "models/variants",
            "--metrics",
            str(out / "evaluation.json"),
            "--plots",
            str(out / "plots"),
            env=env,
        )
        evaluated = json.loads((out / "evaluation.json").read_text())
        alone = {r: json.loads((out / r / "eval.json").read_text())["adapter"] for r in runs}
        same = sum(evaluated[r] == alone[r] for r in runs)
    click.echo(f"{len(runs)} ablation runs' evaluations, MLflow on, {os.cpu_count()} cores")
    click.echo(f"  one process per run (baseline): {separate:6.1f} s")
    click.echo(
        f"  one process, evaluate_runs:     {together:6.1f} s  ({separate / together:.1f}x less)"
    )
    click.echo(f"  runs whose PCK is identical both ways: {same} of {len(runs)}")


if __name__ == "__main__":
    main()
