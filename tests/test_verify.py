"""`diysc verify` against a real git + DVC repository with a two-stage pipeline."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from diysc.cli import main
from diysc.verify import TOLERANCES, MetricCheck, tolerance, verify

WRITE_A = "import yaml,sys; open('a.txt','w').write(str(yaml.safe_load(open('params.yaml'))['x']))"
WRITE_B = (
    "import json; x=float(open('a.txt').read()); open('b.txt','w').write('b');"
    "json.dump({'score': x / 3, 'pairs': 10}, open('m.json','w'))"
)


def _run(cwd: Path, *args: str) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=300)


# Where the repository and its interpreter live: a clone's path may have spaces and non-ASCII.
AWKWARD = Path("dir with spaces") / "ünïcødé é"


def _python_at(folder: Path) -> str:
    """This interpreter behind a script in `folder`, quoted for a stage `cmd`."""
    folder.mkdir(parents=True)
    script = folder / "python"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    script.chmod(0o755)
    return shlex.quote(str(script))


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / AWKWARD / "repo"
    root.mkdir(parents=True)
    python = _python_at(tmp_path / AWKWARD / "bin")
    _run(root, "git", "init", "-q")
    _run(root, "dvc", "init", "-q")
    (root / "params.yaml").write_text("x: 1\n")
    stages = {
        "a": {"cmd": f'{python} -c "{WRITE_A}"', "params": ["x"], "outs": ["a.txt"]},
        "b": {
            "cmd": f'{python} -c "{WRITE_B}"',
            "deps": ["a.txt"],
            "outs": ["b.txt"],
            "metrics": [{"m.json": {"cache": False}}],
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    _run(root, "dvc", "repro", "-q")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "results")
    return root


def test_an_identical_rerun_passes(repo):
    lines = []
    assert verify("HEAD", str(repo), lines.append)
    assert lines == [
        "metrics: 2 compared with HEAD: 2 identical, 0 within tolerance, 0 beyond",
        "stages: every output matches HEAD's dvc.lock",
    ]


def test_a_changed_metric_fails_and_the_first_changed_stage_is_named(repo):
    (repo / "params.yaml").write_text("x: 2\n")
    _run(repo, "dvc", "repro", "-q")
    lines = []
    assert not verify("HEAD", str(repo), lines.append)
    assert lines[0] == "metrics: 2 compared with HEAD: 1 identical, 0 within tolerance, 1 beyond"
    assert lines[1].startswith("  m.json:score: HEAD 0.333")
    assert lines[2] == "stages: first stage whose outputs differ from HEAD's dvc.lock: a (a.txt)"


def test_an_output_edited_after_the_run_is_found_without_a_lock_change(repo):
    (repo / "b.txt").write_text("edited")
    lines = []
    assert verify("HEAD", str(repo), lines.append)  # metrics unchanged
    assert lines[1] == "stages: first stage whose outputs differ from HEAD's dvc.lock: b (b.txt)"


def test_an_unknown_revision_is_one_line(repo, monkeypatch):
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["verify", "--rev", "nosuchrev"])
    assert result.exit_code == 1
    assert (
        result.output == f"Error: --rev nosuchrev: unknown Git revision 'nosuchrev' (in {repo})\n"
    )


def test_outside_a_dvc_repository_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["verify"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path}: not inside a DVC repository; run diysc verify in a clone of the "
        "project\n"
    )


def test_tolerance_table_first_match_wins_and_counts_are_exact():
    assert tolerance("metrics/pseudo_labels.json", "trn.pairs") == (0, 0)
    assert tolerance("elsewhere.json", "x") == (0.0, 0.0)  # not listed: bit-identical
    # Every dataset's evaluation and the ablation runs' alike: PCK within 7 points, counts exact.
    for path in ("metrics/synthetic/eval.json", "metrics/variants/evaluation.json"):
        assert tolerance(path, "naive-s0.per_keypoint.pck_alpha10") == (7, 0)
        assert tolerance(path, "naive-s0.keypoints") == (0, 0)
    assert all(len(row) == 3 and row[1] >= 0 and row[2] >= 0 for row in TOLERANCES)
    assert MetricCheck("m.json", "k", 1.0, 1.0 + 1e-3, 2e-3, 0).ok
    assert not MetricCheck("m.json", "k", 1.0, 1.0 + 3e-3, 2e-3, 0).ok
    assert not MetricCheck("m.json", "k", 1.0, None, 1.0, 1.0).ok  # a missing metric fails
