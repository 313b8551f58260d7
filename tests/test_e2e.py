"""End to end: a fresh clone, the README's main job, DVC experiments, the queue, MLflow, the remote.

They work in the pipeline run the tests share (tests/pipeline.py), built by the README's main job,
and build on each other in order. The README's test command is CI's (.ci/run, checked by
tests/test_ci.py): no test here runs the suite again.
"""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline import Workspace

pytestmark = pytest.mark.slow


def test_readme_main_job_runs_the_pipeline_in_a_fresh_clone(pipeline):
    for stage, name in [("evaluate", "eval.json"), ("pseudo_labels", "pseudo_labels.json")]:
        assert (pipeline.path / pipeline.output(stage, name)).is_file(), name
    assert (pipeline.path / pipeline.output("sphere_points", "sphere.json")).is_file()
    assert (pipeline.path / pipeline.output("train_adapter", "adapter.pth")).is_file()
    status = pipeline.run("dvc status dvc.yaml").stdout  # plain `dvc repro`: the main pipeline
    assert "Data and pipelines are up to date" in status
    # the committed results are the ones this run produced, within the stated tolerances, and the
    # dataset is the committed one byte for byte (its digest in dvc.lock)
    verify = pipeline.run("diysc verify --rev HEAD", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr[-2000:]
    assert "beyond" in verify.stdout and ", 0 beyond" in verify.stdout
    assert "lock: data " not in verify.stdout, verify.stdout
    data = Path(pipeline.output("data", "dataset")).parts[0]
    assert pipeline.run(f"git status --porcelain {data}/").stdout == ""


def test_mlflow_mirrors_the_metric_files(pipeline):
    from diysc.tracking import flatten

    db = pipeline.path / "mlflow.db"
    assert db.is_file(), "the pipeline run should have created the MLflow store at the repo root"
    # A fresh clone reproduces the committed adapter byte for byte, so DVC rightly skips evaluate
    # (its committed outputs are already right) and logs nothing: force it to run here.
    evaluate = f"evaluate@{pipeline.params()['eval_datasets'][0]}"
    pipeline.run(f"dvc repro -f -s {evaluate}")
    expected = {
        k: float(v)
        for k, v in flatten(pipeline.json(pipeline.output("evaluate", "eval.json"))).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    with sqlite3.connect(db) as con:
        (run_id,) = con.execute(  # the run just forced (other tests' experiments ran it too)
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'dvc.stage' AND t.value = ? ORDER BY r.start_time DESC LIMIT 1",
            (evaluate,),
        ).fetchone()
        logged = dict(
            con.execute(
                "SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run_id,)
            ).fetchall()
        )
    for key, value in expected.items():
        name = re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)
        assert logged[name] == pytest.approx(value), key


def test_exp_run_chaining_false_reruns_only_pseudo_labels_and_after(pipeline):
    pipeline.run("git add -A && git commit -qm 'pipeline results' --allow-empty")
    try:
        out = pipeline.run("dvc exp run -S chaining=false -n no-chaining", timeout=1800).stdout
        ran = set(re.findall(r"Running stage '([^']+)'", out))
        evaluated = {
            f"{stage}@{name}"
            for stage in ("evaluate", "symmetry")
            for name in pipeline.params()["eval_datasets"]
        }
        expected = {"pseudo_labels", "train_adapter", "tables", "summary"} | evaluated
        assert ran == expected, out
        assert "chaining: false" in (pipeline.path / "params.yaml").read_text()
        diff = pipeline.run("dvc metrics diff --json").stdout
        changed = json.loads(diff)
        assert pipeline.output("pseudo_labels", "pseudo_labels.json") in changed, diff
    finally:  # the later tests work in the same clone
        pipeline.run("git checkout -- . && dvc checkout -q dvc.yaml")


def test_queued_experiments_land_in_the_same_mlflow_db(pipeline):
    pipeline.run(
        "dvc exp run --queue -S eval.window=13 -n window13 && "
        "dvc exp run --queue -S eval.window=11 -n window11"
    )
    # the workers outlive `queue start`: they must not hold this process's output pipes
    pipeline.run("dvc queue start -j 2 > ../queue.log 2>&1")
    deadline = time.time() + 1200
    while time.time() < deadline:
        status = pipeline.run("dvc queue status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    assert status.count("Success") >= 2, status
    with sqlite3.connect(pipeline.path / "mlflow.db") as con:
        names = {v for (v,) in con.execute("SELECT value FROM tags WHERE key = 'dvc.exp_name'")}
    assert {"window13", "window11"} <= names


def test_push_then_pull_restores_every_output_in_a_fresh_clone(pipeline):
    pipeline.run("dvc push -q")
    pipeline.run("dvc exp push origin no-chaining")
    second = pipeline.path.parent / "second"
    pipeline.run(f"git clone -q {shlex.quote(str(pipeline.path))} {shlex.quote(str(second))}")
    ws = Workspace(second, pipeline.env)
    # the default remote is a sibling directory of the repository: both clones are siblings
    ws.run("dvc pull -q dvc.yaml")  # what this clone computed: the main pipeline's outputs
    assert "Data and pipelines are up to date" in ws.run("dvc status dvc.yaml").stdout
    assert (second / pipeline.output("train_adapter", "adapter.pth")).is_file()
    lock = yaml.safe_load((second / "dvc.lock").read_text())
    assert "train_adapter" in lock["stages"]
    assert "no-chaining" in ws.run("dvc exp list origin").stdout  # the first clone's refs
    assert "no-chaining" in pipeline.run("dvc exp list origin").stdout  # pushed to the bare origin
