"""The one pipeline run the end-to-end tests share (tests/test_e2e.py, tests/test_reruns.py).

A fresh clone of the repository with its own virtual environment, in which the README's main job
ran once: real git, dvc and mlflow in a temporary directory. The environment reuses this one's
installed packages (a `.pth` link), so `pip install -e ".[dev]"` runs as written without
downloading anything. DVC runs the stages as `python -m stages.<x>` from the clone's root, so they
import the clone's own `diysc`: editing the clone's code is editing what DVC runs.

The tests that use it build on each other in order and leave the clone as they found it (the
pipeline's committed state), so their modules run in one process, in order
(`PIPELINE_MODULES`, tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import site
import subprocess
import sys
from functools import cached_property
from pathlib import Path

import yaml

from tests.conftest import ROOT


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
        self.main_job: subprocess.CompletedProcess | None = None  # set by `build`

    def run(
        self, command: str, timeout: int = 1800, check: bool = True, cwd: Path | None = None
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

    def digest(self, relpath: str) -> str:
        return hashlib.sha256((self.path / relpath).read_bytes()).hexdigest()

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def recorded_outputs(self) -> dict[str, str]:
        """Every output of the main pipeline as its dvc.lock records it: `stage:path` -> md5."""
        lock = yaml.safe_load((self.path / "dvc.lock").read_text())
        return {
            f"{name}:{out['path']}": out["md5"]
            for name, stage in lock["stages"].items()
            for out in stage.get("outs", [])
        }

    @cached_property
    def declared_outputs(self) -> dict[str, list[str]]:
        """Each stage of the main pipeline (dvc.yaml) -> its outputs (outs, metrics, plots), as
        DVC reads them: a foreach/matrix stage's entries are `<stage>@<key>`."""
        from dvc.repo import Repo

        with Repo(str(self.path)) as repo:
            stages = [s for s in repo.index.stages if Path(s.path).name == "dvc.yaml"]
            main = [s for s in stages if Path(s.path).parent == self.path]
            return {s.name: [out.def_path for out in s.outs] for s in main}

    def output(self, stage: str, name: str) -> str:
        """The path, relative to the clone, of the output of `stage` named `name` (a file or
        directory name): the one place the tests learn where the pipeline writes."""
        found = [
            path
            for entry, paths in self.declared_outputs.items()
            if entry == stage or entry.startswith(f"{stage}@")
            for path in paths
            if Path(path).name == name
        ]
        assert len(found) == 1, f"{stage}: {len(found)} outputs named {name}: {found}"
        return found[0]


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
    env.pop("PYTHONPATH", None)  # the clone's stages import the clone's diysc
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        HOME=str(tmp / "home"),
        DIYSC_CACHE=str(tmp / "cache"),
        DIYSC_DEVICE="cpu",  # the committed results, and the byte-for-byte reruns, are the CPU's
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


def build(tmp: Path) -> Workspace:
    """A fresh clone in `tmp` that ran the README's main job (its output kept in `main_job`)."""
    env = _environment(tmp)
    # a bare copy as `origin`, so that `dvc exp push origin` never writes into this repository
    origin = tmp / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(origin)], check=True, env=env)
    subprocess.run(["git", "clone", "-q", str(origin), str(tmp / "diysc")], check=True, env=env)
    ws = Workspace(tmp / "diysc", env)
    ws.run("git config user.name e2e && git config user.email e2e@diysc.invalid")
    main_job, _ = readme_commands()
    assert "dvc repro" in main_job
    ws.main_job = ws.run(main_job, timeout=2400)
    return ws
