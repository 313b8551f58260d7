"""MLflow mirror of the stages that compute results (`train_adapter`, `evaluate`).

DVC (git + dvc.lock + metrics/) is the source of truth; MLflow is a searchable mirror. A stage logs
only when it runs, so a stage that DVC skips logs nothing. The tracking URI is absolute: queued DVC
experiments run in a temporary copy of the repository, so a relative `mlflow.db` would be lost.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from diysc.config import TrackingParams
from diysc.environment import describe


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///<repo root>/mlflow.db` (root from `DVC_ROOT`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def run_tags(stage: str) -> dict[str, str]:
    """Tags that tie an MLflow run to its DVC experiment, stage and git commit."""
    tags = {"dvc.stage": os.environ.get("DVC_STAGE", stage)}
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        tags["git.commit"] = head
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Run:
    """What a stage logs to; a disabled run accepts the same calls and records nothing."""

    def __init__(self, client: Any = None, run_id: str | None = None):
        self._client = client
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._client is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_metric_name(k), float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self._client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_artifact(self, path: str | Path) -> None:
        if self._client is not None and Path(path).exists():
            if Path(path).is_dir():
                self._client.log_artifacts(self.run_id, str(path), Path(path).name)
            else:
                self._client.log_artifact(self.run_id, str(path))


@contextlib.contextmanager
def start_run(settings: TrackingParams, stage: str, params: Mapping[str, Any]) -> Iterator[Run]:
    """Open an MLflow run named after the DVC experiment (or the stage) and log `params` flat."""
    if not settings.mlflow:
        yield Run()
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(settings.experiment, _artifact_root(uri))
    )
    name = os.environ.get("DVC_EXP_NAME") or stage
    environment = describe()  # the machine: MLflow only, the DVC metrics stay machine-independent
    tags = {**run_tags(stage), **{f"env.{k}": v for k, v in environment.items()}}
    run = client.create_run(experiment_id, run_name=f"{name}/{stage}", tags=tags)
    run_id = run.info.run_id
    client.log_dict(run_id, environment, "environment.json")
    flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[i : i + 100])
    status = "FAILED"
    try:
        yield Run(client, run_id)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a sqlite store (`<dir>/mlruns`), not in the working directory of the run."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
    return None  # a tracking server decides


def _metric_name(name: str) -> str:
    """MLflow accepts only [A-Za-z0-9_-. :/] in metric names (no '@')."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. :/")
    return "".join(c if c in allowed else "_" for c in name)
