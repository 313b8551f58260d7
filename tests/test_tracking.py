"""The MLflow mirror against a real sqlite tracking store."""

from __future__ import annotations

import pytest

from diysc.config import TrackingParams
from diysc.tracking import flatten, start_run, tracking_uri


def test_tracking_uri_is_absolute_and_follows_dvc_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.delenv("DVC_ROOT")
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": "x",
    }


def test_disabled_tracking_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with start_run(TrackingParams(mlflow=False), "evaluate", {"a": 1}) as run:
        run.log_metrics({"x": 1.0})
        assert not run.enabled
    assert not (tmp_path / "mlflow.db").exists()


def test_a_run_lands_in_sqlite_with_tags_params_and_metrics(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-one")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    artifact = tmp_path / "eval.json"
    artifact.write_text("{}")
    with start_run(TrackingParams(experiment="t"), "evaluate", {"eval": {"alphas": [0.1]}}) as run:
        run.log_metrics({"loss": 2.0}, step=1)
        run.log_metrics({"loss": 1.0, "pck@0.1": 0.5}, step=2)  # '@' is not allowed by MLflow
        run.log_artifact(artifact)
    client = MlflowClient(uri)
    [found] = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert found.info.status == "FINISHED"
    assert found.info.run_name == "exp-one/evaluate"
    assert found.data.tags["dvc.exp_name"] == "exp-one"
    assert found.data.tags["dvc.baseline_rev"] == "abc123"
    assert found.data.tags["dvc.stage"] == "evaluate"
    assert found.data.params == {"eval.alphas": "[0.1]"}
    assert found.data.metrics == {"loss": 1.0, "pck_0.1": 0.5}
    history = client.get_metric_history(found.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id)]
    assert artifacts == ["environment.json", "eval.json"]
    assert (tmp_path / "mlruns").is_dir()  # artifacts beside the database, not in the cwd


def test_a_failing_stage_marks_its_run_failed(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(RuntimeError), start_run(TrackingParams(experiment="t"), "train", {}):
        raise RuntimeError("boom")
    client = MlflowClient(uri)
    [found] = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert found.info.status == "FAILED"


def test_a_store_that_cannot_be_opened_warns_or_fails_when_strict(tmp_path, monkeypatch, capsys):
    from diysc.tracking import TrackingError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DIYSC_STRICT_TRACKING", raising=False)
    with start_run(TrackingParams(experiment="t"), "evaluate", {"a": 1}) as run:
        run.log_metrics({"x": 1.0})
        assert not run.enabled
    assert f"warning: MLflow tracking at {uri} is unusable" in capsys.readouterr().err
    monkeypatch.setenv("DIYSC_STRICT_TRACKING", "1")
    with (
        pytest.raises(TrackingError, match=rf"MLflow tracking at {uri} is unusable.*unset"),
        start_run(TrackingParams(experiment="t"), "evaluate", {}),
    ):
        pytest.fail("the block must not run under strict tracking")
