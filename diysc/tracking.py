"""MLflow mirror of the stages that compute results (`sphere_train`, `train_adapter`, `evaluate`).

DVC (git + dvc.lock + metrics/) is the source of truth; MLflow is a searchable mirror. Each DVC
experiment gets one parent run, named after it (`DVC_EXP_NAME`; for a plain `dvc repro`,
`<git branch>@<commit>`), holding the experiment's params; each stage that runs adds a nested run
named after the stage, holding the params that stage read. A stage logs only when its code runs:
a stage that DVC skips, or restores from its run cache, runs no code and logs nothing (the parent
then shows only the stages that ran). The tracking URI is absolute: queued DVC experiments run in
a temporary copy of the repository, so a relative `mlflow.db` would be lost.

Being a mirror, tracking never holds a result hostage: a tracking server that does not answer
within `PROBE_TIMEOUT` seconds, or a store that cannot be opened, gives a warning and the stage
runs without tracking. `DIYSC_STRICT_TRACKING=1` makes that a `TrackingError` instead, raised
before the run starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from diysc.config.schema import TrackingParams
from diysc.environment import describe
from diysc.errors import UserError

STRICT_ENV = "DIYSC_STRICT_TRACKING"
PARENT_KEY_TAG = "diysc.parent_key"  # finds an experiment's parent run again from a later stage
PROBE_TIMEOUT = 5.0  # seconds a tracking server gets to answer before it counts as unreachable
# Training progress (a metric row per step or epoch) is sent in batches at most this often: one
# store write per step cost a tiny adapter training about a second of its twelve.
PROGRESS_FLUSH_SECONDS = 10.0


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
    head = _git("rev-parse", "HEAD")
    if head:
        tags["git.commit"] = head
    return tags


def experiment_name() -> str:
    """The DVC experiment's name; for a plain `dvc repro`, `<branch>@<short commit>`."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "workspace"
    return f"{_git('branch', '--show-current') or 'detached'}@{commit}"


def stage_run_name(stage: str) -> str:
    """The stage as DVC names it (`evaluate`, `train_labels@naive`), without its dvc.yaml path."""
    return os.environ.get("DVC_STAGE", stage).rsplit(":", 1)[-1]


def experiment_params(params_file: str | Path) -> dict[str, Any]:
    """The experiment's params for its parent run: the whole file but the ablation definitions."""
    import yaml

    raw = yaml.safe_load(Path(params_file).read_text()) or {}
    return {k: v for k, v in raw.items() if k != "ablation"}


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


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


def numeric(tree: Mapping[str, Any]) -> dict[str, float]:
    """The flattened numbers of a metrics tree (what MLflow can log as metrics)."""
    return {
        k: v
        for k, v in flatten(tree).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class Run:
    """What a stage logs to; a disabled run accepts the same calls and records nothing.

    A logging call that fails (the store went away mid-run) disables the run with a warning, or
    raises a `TrackingError` under strict tracking.
    """

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str = ""):
        self._client = client
        self.run_id = run_id
        self._uri = uri
        self._progress: list[Any] = []  # metrics of log_progress not yet sent
        self._progress_sent: float | None = None  # time.monotonic() of the last send

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        batch = _metrics(metrics, step)
        self._log(lambda c: c.log_batch(self.run_id, metrics=batch))  # the client splits it

    def log_progress(self, metrics: Mapping[str, float], step: int) -> None:
        """Like `log_metrics`, for a training curve: rows are stamped now and sent together once
        `PROGRESS_FLUSH_SECONDS` have passed since the last send, and when the run ends."""
        if self._client is None:
            return
        self._progress += _metrics(metrics, step)
        last = self._progress_sent  # None: nothing sent yet, so the first row goes at once
        if last is None or time.monotonic() - last >= PROGRESS_FLUSH_SECONDS:
            self.flush_progress()

    def flush_progress(self) -> None:
        batch, self._progress = self._progress, []
        self._progress_sent = time.monotonic()
        if batch:
            self._log(lambda c: c.log_batch(self.run_id, metrics=batch))

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """Log `data` as the JSON artifact `name` (what a stage is about to publish)."""
        self._log(lambda c: c.log_dict(self.run_id, dict(data), name))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Log a file, or a folder's files, under `folder` (default: a folder keeps its name)."""
        path = Path(path)
        if path.is_dir():
            self._log(lambda c: c.log_artifacts(self.run_id, str(path), folder or path.name))
        elif path.exists():
            self._log(lambda c: c.log_artifact(self.run_id, str(path), folder))

    def log_model(self, weights: str | Path, config: Mapping[str, Any], folder: str) -> None:
        """Log a model as its weights file plus `config.json` (how it was built and trained) in
        `folder`. Not MLflow's pytorch flavour: that pickles the module (loading it then needs this
        package's classes anyway) and records a pip environment, while the state dict file is the
        format the authors' checkpoints use and `diysc.adapter.load_adapter` reads."""
        self.log_artifact(weights, folder)
        self.log_dict(config, f"{folder}/config.json")

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
def start_run(
    settings: TrackingParams,
    stage: str,
    params: Mapping[str, Any],
    params_file: str | Path | None = None,
    run_name: str | None = None,
) -> Iterator[Run]:
    """Open the stage's MLflow run, nested in its experiment's parent run, and log `params` flat.
    The run is named after the stage as DVC names it, or `run_name` (a stage with several runs).

    The parent run (found again by name and params, so every stage of one experiment shares it)
    is created by the first stage that logs, with the params of `params_file` flattened. An
    unreachable server or unusable store yields a disabled run after a warning, or raises a
    `TrackingError` under `DIYSC_STRICT_TRACKING=1`.
    """
    if not settings.mlflow:
        yield Run()
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri()
    try:
        experiment = experiment_params(params_file) if params_file else {}
        name = run_name or stage_run_name(stage)
        client, parent_id, run_id = _open_run(uri, settings, stage, name, params, experiment)
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
        run.flush_progress()
        run._log(lambda c: c.set_terminated(run_id, status=status))
        run._log(lambda c: c.set_terminated(parent_id, status=status))  # ends with its last stage


def _open_run(
    uri: str,
    settings: TrackingParams,
    stage: str,
    run_name: str,
    params: Mapping[str, Any],
    experiment: Mapping[str, Any],
) -> tuple[Any, str, str]:
    reason = probe(uri)
    if reason:
        raise ConnectionError(reason)
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(settings.experiment)
    experiment_id = (
        found.experiment_id
        if found is not None
        else client.create_experiment(settings.experiment, _artifact_root(uri))
    )
    parent_id = _parent_run(client, experiment_id, experiment)
    environment = describe()  # the machine: MLflow only, the DVC metrics stay machine-independent
    tags = {**run_tags(stage), MLFLOW_PARENT_RUN_ID: parent_id}
    tags |= {f"env.{k}": v for k, v in environment.items()}
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    client.log_batch(run.info.run_id, params=_params(params))
    client.log_dict(run.info.run_id, environment, "environment.json")
    return client, parent_id, run.info.run_id


def _parent_run(client: Any, experiment_id: str, experiment: Mapping[str, Any]) -> str:
    """The experiment's parent run: found by its key (name + params digest), else created.

    The params digest is part of the key because MLflow params cannot change: two plain
    `dvc repro` runs at one commit with different params.yaml get two parents of the same name.
    """
    name = experiment_name()
    flat = {k: str(v) for k, v in flatten(experiment).items()}
    digest = hashlib.sha256(json.dumps([name, flat], sort_keys=True).encode()).hexdigest()[:16]
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_KEY_TAG}` = '{digest}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    tags = {k: v for k, v in run_tags("pipeline").items() if k != "dvc.stage"}
    run = client.create_run(experiment_id, run_name=name, tags={**tags, PARENT_KEY_TAG: digest})
    client.log_batch(run.info.run_id, params=_params(experiment))
    return run.info.run_id


def _params(tree: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in flatten(tree).items()]


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a sqlite store (`<dir>/mlruns`), not in the working directory of the run."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
    return None  # a tracking server decides


def _metrics(metrics: Mapping[str, float], step: int | None) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(_metric_name(k), float(v), now, step or 0) for k, v in metrics.items()]


def _metric_name(name: str) -> str:
    """MLflow accepts only [A-Za-z0-9_-. :/] in metric names (no '@')."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. :/")
    return "".join(c if c in allowed else "_" for c in name)
