"""MLflow mirror of the stages that compute results (`train_adapter`, `evaluate`).

DVC (git + dvc.lock + metrics/) is the source of truth; MLflow is a searchable mirror. A stage logs
only when it runs, so a stage that DVC skips logs nothing. The tracking URI is absolute: queued DVC
experiments run in a temporary copy of the repository, so a relative `mlflow.db` would be lost.

Being a mirror, tracking never holds a result hostage: a tracking server that does not answer
within `PROBE_TIMEOUT` seconds, or a store that cannot be opened, gives a warning and the stage
runs without tracking. `DIYSC_STRICT_TRACKING=1` makes that a `TrackingError` instead, raised
before the run starts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from diysc.config import TrackingParams
from diysc.environment import describe
from diysc.errors import UserError

STRICT_ENV = "DIYSC_STRICT_TRACKING"
PROBE_TIMEOUT = 5.0  # seconds a tracking server gets to answer before it counts as unreachable


class TrackingError(UserError, RuntimeError):
    """The MLflow mirror is unreachable and strict tracking was asked for; names the URI."""


def strict_tracking() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def probe(uri: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why an http(s) tracking server cannot be used (it does not answer), else None.

    Any HTTP answer counts as reachable; MLflow's own client would retry for minutes instead.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as err:
        return f"no answer within {timeout:g} s ({type(err).__name__})"
    return None


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
    """What a stage logs to; a disabled run accepts the same calls and records nothing.

    A logging call that fails (the store went away mid-run) disables the run with a warning, or
    raises a `TrackingError` under strict tracking.
    """

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str = ""):
        self._client = client
        self.run_id = run_id
        self._uri = uri

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_metric_name(k), float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self._log(lambda c, part=batch[i : i + 1000]: c.log_batch(self.run_id, metrics=part))

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """Log `data` as the JSON artifact `name` (what a stage is about to publish)."""
        self._log(lambda c: c.log_dict(self.run_id, dict(data), name))

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            self._log(lambda c: c.log_artifacts(self.run_id, str(path), path.name))
        elif path.exists():
            self._log(lambda c: c.log_artifact(self.run_id, str(path)))

    def _log(self, call: Callable[[Any], Any]) -> None:
        if self._client is None:
            return
        try:
            call(self._client)
        except Exception as err:  # MLflow, HTTP or database errors alike
            self._client = None
            unusable(self._uri, err)


def unusable(uri: str, err: BaseException) -> None:
    """Warn that tracking at `uri` stops here, or raise `TrackingError` under strict tracking."""
    reason = " ".join(str(err).split())[:300]
    if strict_tracking():
        raise TrackingError(
            f"MLflow tracking at {uri} is unusable: {reason} (unset {STRICT_ENV} to run "
            "without tracking, or set MLFLOW_TRACKING_URI)"
        ) from None
    print(
        f"warning: MLflow tracking at {uri} is unusable: {reason}; continuing without it",
        file=sys.stderr,
    )


@contextlib.contextmanager
def start_run(settings: TrackingParams, stage: str, params: Mapping[str, Any]) -> Iterator[Run]:
    """Open an MLflow run named after the DVC experiment (or the stage) and log `params` flat.

    An unreachable server or unusable store yields a disabled run after a warning, or raises a
    `TrackingError` under `DIYSC_STRICT_TRACKING=1`.
    """
    if not settings.mlflow:
        yield Run()
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri()
    try:
        client, run_id = _open_run(uri, settings, stage, params)
    except Exception as err:  # MLflow, HTTP or database errors alike: the mirror is unusable
        unusable(uri, err)
        yield Run()
        return
    run = Run(client, run_id, uri)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        run._log(lambda c: c.set_terminated(run_id, status=status))


def _open_run(
    uri: str, settings: TrackingParams, stage: str, params: Mapping[str, Any]
) -> tuple[Any, str]:
    reason = probe(uri)
    if reason:
        raise ConnectionError(reason)
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

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
        client.log_batch(run.info.run_id, params=flat[i : i + 100])
    return client, run.info.run_id


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a sqlite store (`<dir>/mlruns`), not in the working directory of the run."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
    return None  # a tracking server decides


def _metric_name(name: str) -> str:
    """MLflow accepts only [A-Za-z0-9_-. :/] in metric names (no '@')."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. :/")
    return "".join(c if c in allowed else "_" for c in name)
