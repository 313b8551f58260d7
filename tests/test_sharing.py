"""The README's sharing workflow, with real git and DVC, on a cut-down pipeline that keeps the
project's layout: a main `dvc.yaml`, an ablation pipeline under `ablations/` whose committed lock
names outputs this machine never computed, and the project's own `.dvc/config` (the default remote
`diysc-dvc-remote/` beside the repository)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MAIN = """\
stages:
  make:
    cmd: python -c "import pathlib; pathlib.Path('data').mkdir(exist_ok=True); pathlib.Path('data/a.txt').write_text('main')"
    outs:
      - data/a.txt
"""
ABLATIONS = """\
stages:
  variant:
    wdir: ../..
    cmd: python -c "import pathlib; pathlib.Path('data').mkdir(exist_ok=True); pathlib.Path('data/b.txt').write_text('variant')"
    outs:
      - data/b.txt
"""


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture
def team(tmp_path) -> Path:
    """A repository that ran its main pipeline and pushed; its ablation lock came from elsewhere."""
    repo = tmp_path / "diysc"
    repo.mkdir()
    run("git", "init", "-q", "-b", "main", cwd=repo)
    run("git", "config", "user.name", "t", cwd=repo)
    run("git", "config", "user.email", "t@example.invalid", cwd=repo)
    run("dvc", "init", "-q", cwd=repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "dvc.yaml").write_text(MAIN)
    (repo / "ablations" / "training").mkdir(parents=True)
    (repo / "ablations" / "training" / "dvc.yaml").write_text(ABLATIONS)
    run("dvc", "repro", "-q", "-P", cwd=repo)
    shutil.rmtree(repo / ".dvc" / "cache")  # the ablation outputs exist nowhere now
    (repo / "data" / "b.txt").unlink()
    run("dvc", "commit", "-q", "-f", "dvc.yaml", cwd=repo)  # the main output back in the cache
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-q", "-m", "pipeline", cwd=repo)
    pushed = run("dvc", "push", cwd=repo)
    assert "1 file pushed" in pushed.stdout
    assert (tmp_path / "diysc-dvc-remote").is_dir()  # the default remote: beside the repository
    return repo


def test_a_clone_beside_the_pusher_pulls_the_main_pipeline(team):
    clone = team.parent / "clone"
    run("git", "clone", "-q", str(team), str(clone), cwd=team.parent)
    everything = run("dvc", "pull", cwd=clone, ok=False)
    assert everything.returncode == 1  # why the README pulls per pipeline: b.txt was never pushed
    assert "data/b.txt" in everything.stderr
    run("dvc", "pull", "dvc.yaml", cwd=clone)  # the README's command
    assert (clone / "data" / "a.txt").read_text() == "main"
    status = run("dvc", "status", "dvc.yaml", cwd=clone)
    assert "Data and pipelines are up to date." in status.stdout


def test_a_clone_elsewhere_points_at_the_team_remote_locally(team, tmp_path):
    clone = tmp_path / "elsewhere" / "clone"
    clone.parent.mkdir()
    run("git", "clone", "-q", str(team), str(clone), cwd=tmp_path)
    alone = run("dvc", "pull", "dvc.yaml", cwd=clone, ok=False)
    assert alone.returncode == 1  # its default remote, beside it, is empty
    remote = tmp_path / "diysc-dvc-remote"
    run("dvc", "remote", "add", "--local", "-d", "team", str(remote), cwd=clone)  # README
    run("dvc", "pull", "dvc.yaml", cwd=clone)
    assert (clone / "data" / "a.txt").read_text() == "main"
    assert run("git", "status", "--porcelain", cwd=clone).stdout == ""  # config.local: not in git


def test_the_ablation_pipelines_are_pulled_by_their_folder(team):
    """`dvc pull -R ablations` (the README's command) asks for the ablation outputs only: it fails
    while nobody has pushed them, and restores them once someone has."""
    clone = team.parent / "clone"
    run("git", "clone", "-q", str(team), str(clone), cwd=team.parent)
    missing = run("dvc", "pull", "-R", "ablations", cwd=clone, ok=False)
    assert missing.returncode == 1
    assert "data/b.txt" in missing.stderr and "data/a.txt" not in missing.stderr
    run("dvc", "repro", "-q", "-P", cwd=clone)  # someone computes them and pushes
    run("dvc", "push", "-q", cwd=clone)
    second = team.parent / "second"
    run("git", "clone", "-q", str(team), str(second), cwd=team.parent)
    run("dvc", "pull", "-R", "ablations", cwd=second)
    assert (second / "data" / "b.txt").read_text() == "variant"
    assert not (second / "data" / "a.txt").exists()  # the main pipeline's: not asked for


def test_pushing_per_pipeline_names_no_output_the_clone_never_computed(team):
    """A plain `dvc push` warns about the ablation outputs the committed lock names and nobody
    computed here; the README's per-pipeline push does not."""
    plain = run("dvc", "push", cwd=team)
    assert "neither locally nor on remote" in plain.stdout + plain.stderr
    main = run("dvc", "push", "dvc.yaml", cwd=team)
    assert "neither locally" not in main.stdout + main.stderr
    assert main.stderr == "", main.stderr
