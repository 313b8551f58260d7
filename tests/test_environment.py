"""The run environment record (MLflow) and the drift report against the pinned lock."""

from __future__ import annotations

import json
from importlib import metadata

import torch

from diysc.config.schema import TrackingParams
from diysc.environment import describe, lock_drift, lock_path, read_lock
from diysc.tracking import start_run


def test_describe_names_versions_build_hardware_and_threads():
    env = describe()
    assert env["version.numpy"] == metadata.version("numpy")
    assert env["torch.build"] == torch.__version__
    assert env["torch.intra_op_threads"] == str(torch.get_num_threads())
    assert env["cpu"] and env["gpu"] and all(isinstance(v, str) for v in env.values())


def test_every_tracked_run_carries_the_environment(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with start_run(TrackingParams(experiment="t"), "evaluate", {}):
        pass
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    [found] = [r for r in runs if r.data.tags.get("dvc.stage") == "evaluate"]  # not the parent
    assert found.data.tags["env.version.torch"] == metadata.version("torch")
    assert found.data.tags["env.torch.intra_op_threads"] == str(torch.get_num_threads())
    local = client.download_artifacts(found.info.run_id, "environment.json", str(tmp_path))
    assert json.loads(open(local).read()) == describe()


def test_lock_is_read_and_drift_names_package_pin_and_installed(tmp_path):
    lock = tmp_path / "requirements.lock"
    numpy = metadata.version("numpy")
    lock.write_text(
        "--extra-index-url https://download.pytorch.org/whl/cpu\n"
        f"NumPy=={numpy}\n    # via diysc\nclick==0.0.1\nno-such-package==1.0\n"
    )
    assert read_lock(lock) == {"numpy": numpy, "click": "0.0.1", "no-such-package": "1.0"}
    assert lock_drift(lock) == [
        ("click", "0.0.1", metadata.version("click")),
        ("no-such-package", "1.0", "missing"),
    ]


def test_the_environment_matches_its_committed_lock():
    """The suite runs in the locked environment (CI installs it from the lock)."""
    assert lock_drift(lock_path()) == []


def test_info_reports_the_lock():
    from click.testing import CliRunner

    from diysc.cli import main

    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert f"lock         {lock_path().name}: no package(s) differ" in result.output
