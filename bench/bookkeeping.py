"""The per-stage bookkeeping that the standin preset's 73 ablation stages pay, against its baseline.

1. DVC's lock rewrite. After each stage it runs, DVC round-trips the whole `dvc.lock` of that
   stage's pipeline (`dvc.utils.serialize.modify_yaml`). The committed ablation locks, repeated
   for `--seeds` seeds, are rewritten stage by stage as a fresh `dvc repro -P` grows them: once as
   one pipeline (the baseline, the old `ablations/dvc.yaml`) and once as the three pipelines of
   `ablations/*/dvc.yaml`.
2. A training curve in MLflow (sqlite store): `--steps` rows sent one store write per step (the
   baseline) against `Run.log_progress`, which batches them.

    python bench/bookkeeping.py [--seeds 3] [--steps 300]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click
import yaml
from dvc.utils.serialize import modify_yaml

from diysc.config.schema import TrackingParams
from diysc.tracking import start_run

ROOT = Path(__file__).resolve().parents[1]


def ablation_entries(seeds: int) -> dict[str, list[tuple[str, dict]]]:
    """Each pipeline's lock entries, repeated per seed (renamed `-<seed>`), in run order."""
    pipelines = {}
    for lock in sorted((ROOT / "ablations").glob("*/dvc.lock")):
        entries = yaml.safe_load(lock.read_text())["stages"]
        pipelines[lock.parent.name] = [
            (f"{name}~{seed}", entry) for seed in range(seeds) for name, entry in entries.items()
        ]
    return pipelines


def rewrite_seconds(path: Path, entries: list[tuple[str, dict]]) -> float:
    """Seconds to add `entries` one at a time, each with DVC's own round trip of the whole file."""
    path.write_text("schema: '2.0'\nstages: {}\n")
    started = time.perf_counter()
    for name, entry in entries:
        with modify_yaml(str(path)) as data:
            data["stages"][name] = entry
    return time.perf_counter() - started


def curve_seconds(steps: int, batched: bool, root: Path) -> float:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    with start_run(TrackingParams(experiment="bench"), "train_adapter", {}) as run:
        started = time.perf_counter()
        for step in range(1, steps + 1):
            row = {"loss": 1.0 / step, "lr": 0.001}
            if batched:
                run.log_progress(row, step=step)
            else:
                run.log_metrics(row, step=step)
        run.flush_progress()
        return time.perf_counter() - started


@click.command()
@click.option("--seeds", default=3, show_default=True, help="Seeds of the ablation (standin: 3).")
@click.option("--steps", default=300, show_default=True, help="Training steps (tiny presets: 300).")
def main(seeds: int, steps: int) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    pipelines = ablation_entries(seeds)
    stages = sum(len(e) for e in pipelines.values())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = rewrite_seconds(tmp / "one.lock", [e for p in pipelines.values() for e in p])
        split = sum(rewrite_seconds(tmp / f"{n}.lock", e) for n, e in pipelines.items())
        size = (tmp / "one.lock").stat().st_size // 1024
        click.echo(
            f"lock rewrites, {stages} stages: one pipeline ({size} KB at the end) {one:.1f} s, "
            f"three pipelines {split:.1f} s: {one / split:.1f}x less, "
            f"{(one - split) / stages:.2f} s per stage saved"
        )
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        per_step = curve_seconds(steps, False, tmp / "a")
        batched = curve_seconds(steps, True, tmp / "b")
        click.echo(
            f"MLflow curve, {steps} steps: a write per step {per_step:.2f} s, batched "
            f"{batched:.3f} s: {per_step / batched:.0f}x less"
        )


if __name__ == "__main__":
    main()
