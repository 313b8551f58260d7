"""Trustworthy reruns, with real DVC and git in a copy of the repository (tiny preset, cut down).

- identical inputs give identical bytes: `dvc repro -f` of the whole pipeline reproduces every
  output and leaves `dvc status` clean;
- a changed input always recomputes: a changed loss constant retrains the adapter from scratch to
  other weights; another mask source gives another spherical mapper;
- a table row shows what ran: after `dvc exp run -S sphere_filter=false` the main run's Tab. 5 row
  has no sphere mark and the paper figure of that row;
- the tables follow params: `dvc exp run -S eval.alphas=[0.1,0.15]` gives a PCK@0.15 column.

The copy's stages import its own `diysc`, not the one installed from the repository under test:
DVC runs them as `python -m stages.<x>` from the copy's root, so editing the copy's code is editing
what DVC runs (nothing here sets PYTHONPATH). These tests share one pipeline run and build on each
other in order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diysc.config.compose import compose
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# The tiny preset, cut down so that a full pipeline run takes about a minute on two cores.
SMALLER = {
    "sphere": {"epochs": 3},
    "pseudo": {"pairs_trn": 120, "pairs_val": 20},
    "adapter": {"steps": 30, "val_every": 10, "checkpoint_every": 10, "val_pairs": 4},
    "eval": {"match_images": 1},
}


class Repo:
    def __init__(self, path: Path, env: dict[str, str]):
        self.path, self.env = path, env

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [*args], cwd=self.path, env=self.env, capture_output=True, text=True, timeout=1200
        )
        output = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{output[-5000:]}")
        return output

    def dvc(self, *args: str, check: bool = True) -> str:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def digest(self, relpath: str) -> str:
        return hashlib.sha256((self.path / relpath).read_bytes()).hexdigest()

    def outputs(self) -> dict[str, str]:
        """Every output of the main pipeline, as recorded in dvc.lock (md5 of files and dirs)."""
        lock = yaml.safe_load((self.path / "dvc.lock").read_text())
        recorded = {}
        for name, stage in lock["stages"].items():
            for kind in ("outs",):
                for out in stage.get(kind, []):
                    recorded[f"{name}:{out['path']}"] = out["md5"]
        return recorded


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    path = tmp_path_factory.mktemp("reruns") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, files.split("\0")):
        if (ROOT / rel).is_file() and not rel.startswith(("metrics/", "plots/")):
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, path / rel)
    preset = path / "conf" / "preset" / "tiny.yaml"
    text = preset.read_text()
    config = yaml.safe_load(text)
    for group, values in SMALLER.items():
        config[group].update(values)
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    preset.write_text(header + yaml.safe_dump(config, sort_keys=False))
    composed = compose(path / "conf")
    (path / "params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DIYSC_CACHE": str(tmp_path_factory.mktemp("cache")),
        "DIYSC_DEVICE": "cpu",
        "MLFLOW_TRACKING_URI": f"sqlite:///{path.parent / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "diysc tests",
        "GIT_AUTHOR_EMAIL": "tests@diysc.invalid",
        "GIT_COMMITTER_NAME": "diysc tests",
        "GIT_COMMITTER_EMAIL": "tests@diysc.invalid",
    }
    env.pop("DIYSC_INNER_TEST_RUN", None)
    env.pop("PYTHONPATH", None)
    repo = Repo(path, env)
    repo.run("git", "init", "-q")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", "copy")
    repo.dvc("repro")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", "first run")
    return repo


def test_forced_rerun_gives_identical_bytes_and_a_clean_status(repo):
    before = repo.outputs()
    files = ["metrics/synthetic/eval.json", "metrics/train.json", "metrics/pseudo_labels.json"]
    files += ["metrics/sphere.json", "plots/train_curve.csv", "plots/sphere_curve.csv"]
    digests = {f: repo.digest(f) for f in files}
    output = repo.dvc("repro", "-f")
    assert "train_adapter: 30 steps (from scratch)" in output  # -f really recomputes
    assert "sphere_train: 3 epochs (from scratch)" in output
    assert repo.outputs() == before  # every output of every stage, byte for byte
    assert {f: repo.digest(f) for f in files} == digests
    assert repo.run("git", "status", "--porcelain") == ""  # dvc.lock unchanged too
    assert "up to date" in repo.dvc("status", "dvc.yaml")  # the main pipeline
    assert not list((repo.path / "checkpoints").rglob("*.pt"))  # finished runs leave none


def test_a_changed_loss_constant_retrains_every_step_to_other_weights(repo):
    losses = repo.path / "diysc" / "adapter" / "losses.py"
    text = losses.read_text()
    changed = text.replace(
        "trg_to_src.diagonal(dim1=1, dim2=2)) / 2", "trg_to_src.diagonal(dim1=1, dim2=2)) / 3"
    )
    assert changed != text, "the InfoNCE averaging constant was not found"
    weights = repo.digest("models/adapter.pth")
    losses.write_text(changed)
    try:
        output = repo.dvc("repro")
        assert "Running stage 'train_adapter'" in output
        assert "train_adapter: 30 steps (from scratch)" in output
        assert "Running stage 'sphere_train'" not in output  # not in its import closure
        assert repo.digest("models/adapter.pth") != weights
    finally:
        losses.write_text(text)
    repo.dvc("repro")  # back to the committed code (DVC restores it from its run cache)
    assert repo.digest("models/adapter.pth") == weights


def test_another_mask_source_gives_another_sphere_mapper(repo):
    mapper = repo.digest("models/sphere.pth")
    output = repo.dvc("exp", "run", "-S", "masks.source=bbox")
    assert "Running stage 'sphere_train'" in output
    assert "sphere_train: 3 epochs (from scratch)" in output
    assert repo.digest("models/sphere.pth") != mapper


def test_the_tables_show_what_ran_after_turning_the_sphere_filter_off(repo, tmp_path):
    repo.dvc("exp", "run", "-S", "sphere_filter=false")
    recorded = json.loads((repo.path / "metrics" / "train.json").read_text())["labels"]
    assert recorded["sphere_filter"] is False
    (tmp_path / "variants").mkdir()
    (tmp_path / "variants" / "evaluation.json").write_text('{"pairs": 0}')  # no ablation runs
    repo.run(
        sys.executable,
        "-m",
        "stages.tables",  # the copy's own code, as DVC runs it
        "ablation",
        "--main-run",
        "metrics",
        "--variants",
        str(tmp_path / "variants"),
        "--evaluation",
        str(tmp_path / "variants" / "evaluation.json"),
        "--out",
        str(tmp_path / "tables"),
    )
    with open(tmp_path / "tables" / "ablation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    [main_row] = [row for row in rows[1:] if "main" in row["runs"].split()]  # after zero-shot
    assert main_row["row"] == "relaxed cycle consistency + chaining"
    assert main_row["sph. rej."] == ""  # no sphere-rejection mark
    assert main_row["paper"] == "70.0"  # the paper's figure for these settings, not 74.4


def test_an_alpha_list_from_params_reaches_the_tables_and_the_headline(repo):
    output = repo.dvc("exp", "run", "-S", "eval.alphas=[0.1,0.15]")
    for stage in ("evaluate", "tables", "summary"):
        assert f"Running stage '{stage}'" in output
    with open(repo.path / "metrics" / "tables" / "main.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[2:] == [
        "zero-shot PCK@0.1",
        "zero-shot PCK@0.15",
        "adapter PCK@0.1",
        "adapter PCK@0.15",
    ]
    evaluated = json.loads((repo.path / "metrics" / "eval.json").read_text())["adapter"]
    headline = json.loads((repo.path / "metrics" / "headline.json").read_text())["adapter"]
    assert headline["per_keypoint_alpha15"] == evaluated["per_keypoint"]["pck_alpha15"]
    assert "per_keypoint_alpha05" not in headline  # an α not evaluated is not in the headline
