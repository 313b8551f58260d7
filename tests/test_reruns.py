"""Trustworthy reruns, with real DVC and git, in the pipeline run the tests share (tests/pipeline.py).

- identical inputs give identical bytes: `dvc repro -f` of the whole pipeline reproduces every
  output and leaves `dvc status` clean;
- a changed input always recomputes: a changed loss constant retrains the adapter from scratch to
  other weights; another mask source gives another spherical mapper;
- a table row shows what ran: after `dvc exp run -S sphere_filter=false` the main run's Tab. 5 row
  has no sphere mark and the paper figure of that row;
- the tables follow params: `dvc exp run -S eval.alphas=[0.1,0.15]` gives a PCK@0.15 column.

The clone's stages import its own `diysc`, not the one installed from the repository under test:
DVC runs them as `python -m stages.<x>` from the clone's root, so editing the clone's code is
editing what DVC runs (nothing here sets PYTHONPATH). An experiment runs only as far as the stage
its assertions read (`dvc exp run ... <stage>`), and each test leaves the clone as it found it.
"""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

import pytest

from tests.pipeline import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(pipeline) -> Workspace:
    """The shared run, its results committed (a run on this machine may differ from the committed
    results within the tolerances `diysc verify` allows: the reruns compare with this run)."""
    pipeline.run("git add -A && git commit -qm 'pipeline results' --allow-empty")
    return pipeline


def evaluate_stage(repo: Workspace) -> str:
    """The evaluation the tables read: that of the first evaluated dataset."""
    return f"evaluate@{repo.params()['eval_datasets'][0]}"


def restore(repo: Workspace) -> None:
    """Back to the committed run: code, params and every output of the main pipeline."""
    repo.run("git checkout -- . && dvc checkout -q dvc.yaml")
    assert repo.run("git status --porcelain").stdout == ""


def test_forced_rerun_gives_identical_bytes_and_a_clean_status(repo):
    before = repo.recorded_outputs()
    files = [
        repo.output(stage, name)
        for stage, name in [
            ("evaluate", "eval.json"),
            ("train_adapter", "train.json"),
            ("pseudo_labels", "pseudo_labels.json"),
            ("sphere_points", "sphere.json"),
            ("train_adapter", "train_curve.csv"),
            ("sphere_train", "sphere_curve.csv"),
        ]
    ]
    digests = {f: repo.digest(f) for f in files}
    params = repo.params()
    output = repo.run("dvc repro -f").stdout
    # -f really recomputes
    assert f"train_adapter: {params['adapter']['steps']} steps (from scratch)" in output
    assert f"sphere_train: {params['sphere']['epochs']} epochs (from scratch)" in output
    assert repo.recorded_outputs() == before  # every output of every stage, byte for byte
    assert {f: repo.digest(f) for f in files} == digests
    assert repo.run("git status --porcelain").stdout == ""  # dvc.lock unchanged too
    assert "up to date" in repo.run("dvc status dvc.yaml").stdout  # the main pipeline
    assert not list((repo.path / "checkpoints").rglob("*.pt"))  # finished runs leave none


def test_a_changed_loss_constant_retrains_every_step_to_other_weights(repo):
    losses = repo.path / "diysc" / "adapter" / "losses.py"
    text = losses.read_text()
    changed = text.replace(
        "trg_to_src.diagonal(dim1=1, dim2=2)) / 2", "trg_to_src.diagonal(dim1=1, dim2=2)) / 3"
    )
    assert changed != text, "the InfoNCE averaging constant was not found"
    adapter = repo.output("train_adapter", "adapter.pth")
    weights = repo.digest(adapter)
    losses.write_text(changed)
    try:
        output = repo.run("dvc repro train_adapter").stdout
        assert "Running stage 'train_adapter'" in output
        steps = repo.params()["adapter"]["steps"]
        assert f"train_adapter: {steps} steps (from scratch)" in output
        assert "Running stage 'sphere_train'" not in output  # not in its import closure
        assert repo.digest(adapter) != weights
    finally:
        losses.write_text(text)
    repo.run(
        "dvc repro train_adapter"
    )  # back to the committed code (DVC restores it from its run cache)
    assert repo.digest(adapter) == weights
    assert "up to date" in repo.run("dvc status dvc.yaml").stdout


def test_another_mask_source_gives_another_sphere_mapper(repo):
    mapper = repo.output("sphere_train", "sphere.pth")
    before = repo.digest(mapper)
    try:
        output = repo.run("dvc exp run -S masks.source=bbox sphere_train").stdout
        assert "Running stage 'sphere_train'" in output
        epochs = repo.params()["sphere"]["epochs"]
        assert f"sphere_train: {epochs} epochs (from scratch)" in output
        assert repo.digest(mapper) != before
    finally:
        restore(repo)


def test_the_tables_show_what_ran_after_turning_the_sphere_filter_off(repo, tmp_path):
    try:
        repo.run(f"dvc exp run -S sphere_filter=false {evaluate_stage(repo)}")  # what it reads
        main_run = Path(repo.output("train_adapter", "train.json")).parent
        recorded = repo.json(f"{main_run}/train.json")["labels"]
        assert recorded["sphere_filter"] is False
        (tmp_path / "variants").mkdir()
        (tmp_path / "variants" / "evaluation.json").write_text('{"pairs": 0}')  # no ablation runs
        arguments = ["--main-run", str(main_run), "--variants", str(tmp_path / "variants")]
        arguments += ["--main-eval", repo.output("evaluate", "eval.json")]
        arguments += ["--evaluation", str(tmp_path / "variants" / "evaluation.json")]
        arguments += ["--out", str(tmp_path / "tables")]
        repo.run(f"python -m stages.tables ablation {shlex.join(arguments)}")
    finally:
        restore(repo)
    with open(tmp_path / "tables" / "ablation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    [main_row] = [row for row in rows[1:] if "main" in row["runs"].split()]  # after zero-shot
    assert main_row["row"] == "relaxed cycle consistency + chaining"
    assert main_row["sph. rej."] == ""  # no sphere-rejection mark
    assert main_row["paper"] == "70.0"  # the paper's figure for these settings, not 74.4


def test_an_alpha_list_from_params_reaches_the_tables_and_the_headline(repo):
    try:
        output = repo.run("dvc exp run -S eval.alphas=[0.1,0.15] tables summary").stdout
        for stage in (evaluate_stage(repo), "tables", "summary"):
            assert f"Running stage '{stage}'" in output
        with open(repo.path / repo.output("tables", "main.csv"), newline="") as f:
            header = next(csv.reader(f))
        assert header[2:] == [
            "zero-shot PCK@0.1",
            "zero-shot PCK@0.15",
            "adapter PCK@0.1",
            "adapter PCK@0.15",
        ]
        evaluated = repo.json(repo.output("evaluate", "eval.json"))["adapter"]
        headline = repo.json(repo.output("summary", "headline.json"))["adapter"]
        assert headline["per_keypoint_alpha15"] == evaluated["per_keypoint"]["pck_alpha15"]
        assert "per_keypoint_alpha05" not in headline  # an α not evaluated is not in the headline
    finally:
        restore(repo)
