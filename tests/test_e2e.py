"""End to end: a fresh clone, the README's commands, DVC experiments, the queue, MLflow, the remote.

Real git, dvc and mlflow in temporary directories. The clone gets its own virtual environment that
reuses this one's installed packages (a `.pth` link), so `pip install -e ".[dev]"` runs as written
without downloading anything. These tests share one pipeline run and build on each other in order.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import site
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # the README test run it starts deselects it (tests/conftest.py)


def readme_commands() -> tuple[str, str]:
    """The two commands of the README's 'Two commands' section, comments removed."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.strip().splitlines()]
    main_job, tests = lines
    return main_job, tests


class Workspace:
    """A clone of the repository with its own environment; `run` executes shell commands in it."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path, self.env = path, env

    def run(
        self, command: str, timeout: int = 1200, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd or self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`{command}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}"
                f"\n{proc.stderr[-4000:]}"
            )
        return proc

    def json(self, relpath: str):
        return json.loads((self.path / relpath).read_text())


def _environment(tmp: Path) -> dict[str, str]:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    [venv_site] = venv.glob("lib/python*/site-packages")
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (venv_site / "parent-environment.pth").write_text("\n".join(parents) + "\n")
    # the venv's own (older) setuptools would shadow the parent's for the editable build
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "PYTEST"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        HOME=str(tmp / "home"),
        DIYSC_CACHE=str(tmp / "cache"),
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        HF_HUB_OFFLINE="1",
        PIP_NO_BUILD_ISOLATION="0",  # pip reads "0" as: no isolation
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@diysc.invalid",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@diysc.invalid",
    )
    (tmp / "home").mkdir()
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Workspace:
    # a path with spaces and non-ASCII characters: the README's commands must work in any clone
    tmp = tmp_path_factory.mktemp("e2e") / "dir with spaces" / "ünïcødé é"
    tmp.mkdir(parents=True)
    env = _environment(tmp)
    # a bare copy as `origin`, so that `dvc exp push origin` never writes into this repository
    origin = tmp / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(origin)], check=True, env=env)
    subprocess.run(["git", "clone", "-q", str(origin), str(tmp / "diysc")], check=True, env=env)
    ws = Workspace(tmp / "diysc", env)
    ws.run("git config user.name e2e && git config user.email e2e@diysc.invalid")
    return ws


def test_readme_main_job_runs_the_pipeline_in_a_fresh_clone(clone):
    main_job, _ = readme_commands()
    assert "dvc repro" in main_job
    clone.run(main_job, timeout=2400)
    for metric in (
        "metrics/synthetic/eval.json",
        "metrics/pseudo_labels.json",
        "metrics/sphere.json",
    ):
        assert (clone.path / metric).is_file(), metric
    assert (clone.path / "models" / "adapter.pth").is_file()
    status = clone.run("dvc status dvc.yaml").stdout  # plain `dvc repro`: the main pipeline
    assert "Data and pipelines are up to date" in status
    # the committed results are the ones this run produced, within the stated tolerances, and the
    # dataset is the committed one byte for byte (its digest in dvc.lock)
    verify = clone.run("diysc verify --rev HEAD", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr[-2000:]
    assert "beyond" in verify.stdout and ", 0 beyond" in verify.stdout
    assert "lock: data " not in verify.stdout, verify.stdout
    assert clone.run("git status --porcelain data/").stdout == ""


def test_mlflow_mirrors_the_metric_files(clone):
    from diysc.tracking import flatten

    db = clone.path / "mlflow.db"
    assert db.is_file(), "the pipeline run should have created the MLflow store at the repo root"
    # A fresh clone reproduces the committed adapter byte for byte, so DVC rightly skips evaluate
    # (its committed outputs are already right) and logs nothing: force it to run here.
    clone.run("dvc repro -f -s evaluate@synthetic")
    expected = {
        k: float(v)
        for k, v in flatten(clone.json("metrics/synthetic/eval.json")).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    with sqlite3.connect(db) as con:
        [(run_id,)] = con.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'dvc.stage' AND t.value = 'evaluate@synthetic'"
        ).fetchall()
        logged = dict(
            con.execute(
                "SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run_id,)
            ).fetchall()
        )
    for key, value in expected.items():
        name = re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)
        assert logged[name] == pytest.approx(value), key


def test_exp_run_chaining_false_reruns_only_pseudo_labels_and_after(clone):
    clone.run("git add -A && git commit -qm 'pipeline results' --allow-empty")
    try:
        out = clone.run("dvc exp run -S chaining=false -n no-chaining", timeout=1800).stdout
        ran = set(re.findall(r"Running stage '([^']+)'", out))
        expected = {"pseudo_labels", "train_adapter", "tables", "summary"}
        expected |= {"evaluate@synthetic", "symmetry@synthetic"}
        assert ran == expected, out
        assert "chaining: false" in (clone.path / "params.yaml").read_text()
        diff = clone.run("dvc metrics diff --json").stdout
        changed = json.loads(diff)
        assert "metrics/pseudo_labels.json" in changed, diff
    finally:  # the later tests of this module work in the same clone
        clone.run("git checkout -- . && dvc checkout -q dvc.yaml")


def test_queued_experiments_land_in_the_same_mlflow_db(clone):
    clone.run(
        "dvc exp run --queue -S eval.window=13 -n window13 && "
        "dvc exp run --queue -S eval.window=11 -n window11"
    )
    # the workers outlive `queue start`: they must not hold this process's output pipes
    clone.run("dvc queue start -j 2 > ../queue.log 2>&1")
    deadline = time.time() + 1200
    while time.time() < deadline:
        status = clone.run("dvc queue status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    assert status.count("Success") >= 2, status
    with sqlite3.connect(clone.path / "mlflow.db") as con:
        names = {v for (v,) in con.execute("SELECT value FROM tags WHERE key = 'dvc.exp_name'")}
    assert {"window13", "window11"} <= names


def test_push_then_pull_restores_every_output_in_a_fresh_clone(clone, tmp_path):
    clone.run("dvc push -q")
    clone.run("dvc exp push origin no-chaining")
    second = clone.path.parent / "second"
    clone.run(f"git clone -q {shlex.quote(str(clone.path))} {shlex.quote(str(second))}")
    ws = Workspace(second, clone.env)
    # the default remote is a sibling directory of the repository: both clones are siblings
    ws.run("dvc pull -q dvc.yaml")  # what this clone computed: the main pipeline's outputs
    assert "Data and pipelines are up to date" in ws.run("dvc status dvc.yaml").stdout
    assert (second / "models" / "adapter.pth").is_file()
    lock = yaml.safe_load((second / "dvc.lock").read_text())
    assert "train_adapter" in lock["stages"]
    assert "no-chaining" in ws.run("dvc exp list origin").stdout  # the first clone's refs
    assert "no-chaining" in clone.run("dvc exp list origin").stdout  # pushed to the bare origin


def test_readme_test_command_runs_in_the_clone(clone):
    """The README's test command, as written, inside the clone (this module skips itself there)."""
    _, tests = readme_commands()
    env = dict(clone.env, DIYSC_INNER_TEST_RUN="1")
    proc = subprocess.run(
        ["bash", "-c", tests], cwd=clone.path, env=env, capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary
    assert "failed" not in summary and "error" not in summary, summary
