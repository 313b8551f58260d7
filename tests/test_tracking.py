"""The MLflow mirror against a real sqlite tracking store."""

from __future__ import annotations

import contextlib
import json
import time
import types

import pytest

from diysc.config.schema import TrackingParams
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


@pytest.mark.parametrize("fails", [False, True])
def test_progress_rows_are_sent_in_batches_and_all_land_when_the_run_ends(
    tmp_path, monkeypatch, fails
):
    """The first row is sent at once, later ones wait for the flush interval or the run's end,
    which a failing run reaches too (its curve up to the failure is what one debugs)."""
    from mlflow.tracking import MlflowClient

    import diysc.tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(diysc.tracking, "PROGRESS_FLUSH_SECONDS", 3600.0)
    # The monotonic clock starts near zero on a machine just booted: the first row still goes.
    clock = types.SimpleNamespace(monotonic=lambda: 5.0, time=time.time)
    monkeypatch.setattr(diysc.tracking, "time", clock)
    client = MlflowClient(uri)
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
        with start_run(TrackingParams(experiment="t"), "train_adapter", {}) as run:
            for step in (1, 2, 3):
                run.log_progress({"loss": 1.0 / step}, step=step)
            sent = client.get_metric_history(run.run_id, "loss")
            assert [m.step for m in sent] == [1]
            if fails:
                raise RuntimeError("diverged")
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert client.get_run(run.run_id).info.status == ("FAILED" if fails else "FINISHED")


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
    [found] = client.search_runs(
        [client.get_experiment_by_name("t").experiment_id], "tags.`dvc.stage` = 'evaluate'"
    )
    assert found.info.status == "FINISHED"
    assert found.info.run_name == "evaluate"
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
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]  # the stage and its parent


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


# The parent run of experiment `exp-eval` with the committed (tiny) params.yaml.
TINY_PARENT = "exp-eval · tiny · mask, cycle relaxed, chaining, sphere_filter, seed 0"
TINY_RUNS_PARENT = TINY_PARENT.replace("exp-eval", "exp-runs")


def _runs(uri: str, experiment: str = "t") -> dict[str, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {r.info.run_name: r for r in found}


def test_the_stages_of_an_experiment_nest_under_one_parent_named_after_it(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        "chaining: false\ncycle: strict\nadapter: {channels: 384}\nablation: {x: {y: 1}}\n"
    )
    settings = TrackingParams(experiment="t")
    for exp in ("exp-a", "exp-b"):
        monkeypatch.setenv("DVC_EXP_NAME", exp)
        for stage in ("train_adapter", "evaluate"):
            monkeypatch.setenv("DVC_STAGE", stage)
            with start_run(settings, stage, {stage: {"k": 1}}, params_file) as run:
                run.log_metrics({"x": 1.0})
    monkeypatch.setenv("DVC_STAGE", "ablations/evaluation/dvc.yaml:evaluate_runs")
    with start_run(settings, "evaluate_runs", {}, params_file, run_name="evaluate_runs@naive-s0"):
        pass
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    parents = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    # named after the experiment, its preset (none in this file) and its label toggles
    assert sorted(parents) == [
        "exp-a · cycle strict, no chaining",
        "exp-b · cycle strict, no chaining",
    ]
    for name, parent in parents.items():
        assert parent.info.status == "FINISHED"
        assert parent.data.params == {
            "chaining": "False",
            "cycle": "strict",
            "adapter.channels": "384",
        }
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        expected = ["evaluate", "train_adapter"]
        expected += ["evaluate_runs@naive-s0"] if name.startswith("exp-b") else []
        assert sorted(c.info.run_name for c in children) == sorted(expected)
        train = next(c for c in children if c.info.run_name == "train_adapter")
        assert train.data.params == {"train_adapter.k": "1"}
        assert train.data.tags["dvc.exp_name"] == name.split(" · ")[0]


def test_a_plain_repro_is_grouped_under_branch_and_commit(tmp_path, monkeypatch):
    import subprocess

    from diysc.tracking import experiment_name

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert experiment_name() == "workspace"  # not a git repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "trial"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert experiment_name() == f"trial@{sha}"


def test_a_model_is_logged_with_its_config(tmp_path, monkeypatch, official_dino_adapter):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with start_run(TrackingParams(experiment="t"), "train_adapter", {}) as run:
        run.log_model(official_dino_adapter, {"feature_dims": [768]}, "adapter")
    found = _runs(uri)["train_adapter"]
    client = MlflowClient(uri)
    listed = [a.path for a in client.list_artifacts(found.info.run_id, "adapter")]
    assert listed == ["adapter/config.json", "adapter/dino_spair_768.pth"]
    local = client.download_artifacts(found.info.run_id, "adapter", str(tmp_path / "back"))
    from diysc.adapter import load_adapter

    assert load_adapter(f"{local}/dino_spair_768.pth").feature_dims == (768,)


def test_the_evaluate_stage_logs_params_metrics_and_its_pictures(
    spair_sample, tmp_path, monkeypatch
):
    import torch
    from click.testing import CliRunner

    from diysc.adapter.model import Adapter
    from diysc.data.spair import SPairDataset
    from stages.evaluate import main
    from tests.test_evaluation import ROOT, _write_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-eval")
    _write_store(tmp_path / "features", SPairDataset(spair_sample))
    torch.manual_seed(0)
    torch.save(Adapter([4, 8, 8, 8], channels=128).state_dict(), tmp_path / "adapter.pth")
    args = ["--params", str(ROOT / "params.yaml"), "--set", "tracking.experiment=t"]
    args += ["--dataset", str(spair_sample), "--features", str(tmp_path / "features")]
    args += ["--adapter", str(tmp_path / "adapter.pth"), "--metrics", str(tmp_path / "eval.json")]
    result = CliRunner().invoke(main, [*args, "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    from mlflow.tracking import MlflowClient

    runs = _runs(uri)
    parent, child = runs[TINY_PARENT], runs["evaluate"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.params["chaining"] == "True" and parent.data.params["preset"] == "tiny"
    assert child.data.params["eval.window"] == "15" and "chaining" not in child.data.params
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert (
        child.data.metrics["adapter.per_image.pck_alpha10"]
        == metrics["adapter"]["per_image"]["pck_alpha10"]
    )
    client = MlflowClient(uri)
    plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert {"plots/pck_vs_alpha.png", "plots/pck_vs_alpha.csv", "plots/matches"} <= plots
    pictures = client.list_artifacts(child.info.run_id, "plots/matches")
    assert len(pictures) == len(list((tmp_path / "plots" / "matches").glob("*.png"))) > 0


def test_the_runs_stage_logs_each_run_as_its_own_run(spair_sample, tmp_path, monkeypatch):
    import torch
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from diysc.adapter.model import Adapter
    from diysc.config.load import load_params
    from diysc.data.spair import SPairDataset
    from stages.evaluate_runs import main
    from tests.test_evaluation import ROOT, _write_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-runs")
    monkeypatch.setenv("DVC_STAGE", "ablations/evaluation/dvc.yaml:evaluate_runs")
    _write_store(tmp_path / "features", SPairDataset(spair_sample))
    names = load_params(ROOT / "params.yaml").ablation.runs()
    for i, name in enumerate(names):
        torch.manual_seed(i)
        torch.save(Adapter([4, 8, 8, 8], channels=128).state_dict(), tmp_path / f"{name}.pth")
    args = ["--params", str(ROOT / "params.yaml"), "--set", "tracking.experiment=t"]
    args += ["--dataset", str(spair_sample), "--features", str(tmp_path / "features")]
    args += ["--adapters", str(tmp_path), "--metrics", str(tmp_path / "evaluation.json")]
    result = CliRunner().invoke(main, [*args, "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output

    evaluated = json.loads((tmp_path / "evaluation.json").read_text())
    runs = _runs(uri)
    parent = runs.pop(TINY_RUNS_PARENT)
    assert sorted(runs) == sorted(f"evaluate_runs@{name}" for name in names)
    client = MlflowClient(uri)
    for name in names:
        run = runs[f"evaluate_runs@{name}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["dvc.stage"] == "ablations/evaluation/dvc.yaml:evaluate_runs"
        assert run.data.params["adapter_path"] == str(tmp_path / f"{name}.pth")
        logged = run.data.metrics["adapter.per_keypoint.pck_alpha10"]
        assert logged == evaluated[name]["per_keypoint"]["pck_alpha10"]
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/pck_vs_alpha.csv", "plots/pck_vs_azimuth.csv"} <= plots


def test_the_summary_stage_puts_the_headline_on_the_parent_run(tmp_path, monkeypatch):
    """The committed tiny run's headline lands on the parent as metrics (its settings do not:
    they are params), next to a stage's run of the same experiment, and twice is harmless."""
    from click.testing import CliRunner

    from stages.summary import main
    from tests.test_evaluation import ROOT

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-eval")
    with start_run(TrackingParams(experiment="t"), "evaluate", {}, ROOT / "params.yaml"):
        pass
    args = ["--params", str(ROOT / "params.yaml"), "--set", "tracking.experiment=t"]
    for name in ("eval", "pseudo", "train"):
        record = {"eval": "synthetic/eval", "pseudo": "pseudo_labels", "train": "train"}[name]
        args += [f"--{name}", str(ROOT / "metrics" / f"{record}.json")]
    args += ["--out", str(tmp_path / "headline.json")]
    args += ["--precision-plot", str(tmp_path / "precision.csv")]
    for _ in range(2):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    headline = json.loads((ROOT / "metrics" / "headline.json").read_text())
    assert json.loads((tmp_path / "headline.json").read_text()) == headline
    runs = _runs(uri)
    assert sorted(runs) == ["evaluate", TINY_PARENT]  # no run of its own
    metrics = runs[TINY_PARENT].data.metrics
    assert metrics["adapter.per_image_alpha10"] == headline["adapter"]["per_image_alpha10"]
    assert (
        metrics["zero_shot.per_keypoint_alpha05"] == headline["zero_shot"]["per_keypoint_alpha05"]
    )
    assert metrics["labels.pairs"] == headline["labels"]["pairs"]
    assert not [k for k in metrics if k.startswith("settings.")]
    assert len(metrics) == 6 + 6 + 3  # PCK of two methods at three α, three label figures


def test_parents_sort_by_their_headline_pck(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from diysc.tracking import log_headline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params_file = tmp_path / "params.yaml"
    params_file.write_text("preset: tiny\nmask: false\n")
    for exp, pck in (("low", 20.5), ("high", 61.25), ("mid", 40.0)):
        monkeypatch.setenv("DVC_EXP_NAME", exp)
        headline = {"adapter": {"per_image_alpha10": pck}, "settings": {"channels": 768}}
        log_headline(TrackingParams(experiment="t"), params_file, headline)
    client = MlflowClient(uri)
    ordered = client.search_runs(
        [client.get_experiment_by_name("t").experiment_id],
        order_by=["metrics.`adapter.per_image_alpha10` DESC"],
    )
    assert [r.info.run_name for r in ordered] == [
        "high · tiny · no mask",
        "mid · tiny · no mask",
        "low · tiny · no mask",
    ]
    assert [r.data.metrics for r in ordered][0] == {"adapter.per_image_alpha10": 61.25}
