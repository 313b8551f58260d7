"""Tab. 5 and Tab. 8 from runs' recorded settings, and the one definition of the ablation variants."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from diysc import paper
from diysc.config.compose import compose
from diysc.config.overrides import params_from_dict
from diysc.config.schema import AblationParams, ParamsError
from diysc.filter_steps import TOGGLES
from diysc.metric_keys import pck_key
from diysc.stage_options import variant_overrides
from diysc.tables import describe_labels
from stages.tables import main as tables_command

ROOT = Path(__file__).resolve().parents[1]
FULL = {"mask": True, "cycle": "relaxed", "chaining": True, "sphere_filter": True}


def write_run(
    directory: Path,
    labels: dict,
    channels: int,
    pck: float,
    zero_shot=None,
    seed: int = 0,
    evaluation: dict | None = None,
) -> None:
    """A run's train.json, and its PCK: the main run's eval.json, or an ablation run's entry in
    `evaluation` (the runs' evaluation.json, keyed by the run's folder name)."""
    directory.mkdir(parents=True)
    # as stages/train_adapter.py records them: the labels' settings include their seed
    train = {"labels": {**labels, "seed": seed}, "adapter": {"channels": channels}, "seed": seed}
    (directory / "train.json").write_text(json.dumps(train))
    block = {"per_keypoint": {pck_key(0.1): pck, pck_key(0.05): pck / 2, pck_key(0.01): pck / 10}}
    block["per_image"] = {pck_key(0.1): pck - 1}
    if evaluation is not None:
        evaluation[directory.name] = block
        return
    metrics = {"adapter": block}
    if zero_shot is not None:
        metrics["zero_shot"] = {"per_keypoint": {pck_key(0.1): zero_shot}, "per_image": {}}
    (directory / "eval.json").write_text(json.dumps(metrics))


def ablation_tables(tmp_path: Path, evaluation: dict, check: bool = True):
    """`stages.tables ablation` over tmp_path/metrics (main run) and tmp_path/variants."""
    (tmp_path / "variants").mkdir(exist_ok=True)
    (tmp_path / "variants" / "evaluation.json").write_text(json.dumps(evaluation))
    result = CliRunner().invoke(
        tables_command,
        ["ablation", "--params", str(ROOT / "params.yaml")]
        + ["--main-run", str(tmp_path / "metrics")]
        + ["--variants", str(tmp_path / "variants")]
        + ["--evaluation", str(tmp_path / "variants" / "evaluation.json")]
        + ["--out", str(tmp_path / "tables")],
        catch_exceptions=not check,
    )
    if check:
        assert result.exit_code == 0, result.output
    return result


def render(tmp_path: Path, main_labels: dict) -> tuple[list[str], list[str]]:
    """Main run + the repository's variants (settings applied to the main labels) → tables."""
    variants = yaml.safe_load((ROOT / "params.yaml").read_text())["ablation"]
    write_run(tmp_path / "metrics", main_labels, 128, 50.0, zero_shot=30.0)
    evaluation = {"pairs": 60}
    for i, (name, settings) in enumerate(variants["label_variants"].items()):
        labels = {**main_labels, **settings}
        write_run(tmp_path / "variants" / name, labels, 128, 40.0 + i, evaluation=evaluation)
    for i, (name, settings) in enumerate(variants["adapter_variants"].items()):
        channels = settings["adapter"]["channels"]
        write_run(
            tmp_path / "variants" / name, main_labels, channels, 60.0 + i, evaluation=evaluation
        )
    ablation_tables(tmp_path, evaluation)
    tables = tmp_path / "tables"
    return (
        (tables / "ablation.csv").read_text().splitlines(),
        (tables / "channels.csv").read_text().splitlines(),
    )


def test_tab5_rows_follow_the_papers_order_with_marks_from_recorded_settings(tmp_path):
    ablation, channels = render(tmp_path, FULL)
    assert ablation[0] == (
        "row,runs,pseudo,cyc. cons.,relaxed c.c.,chaining,sph. rej.,mask,"
        "PCK@0.1 per kpt,std,seeds,paper,PCK@0.1 per img"
    )
    assert ablation[1:] == [
        "zero-shot,main,,,,,,,30.0,,,65.0,",
        "naive pseudo-labels,naive,✓,,,,,✓,40.0,,0,67.2,39.0",
        "strict cycle consistency,strict,✓,✓,,,,✓,41.0,,0,66.9,40.0",
        "relaxed cycle consistency,relaxed,✓,,✓,,,✓,42.0,,0,68.4,41.0",
        "relaxed cycle consistency + chaining,chaining,✓,,✓,✓,,✓,43.0,,0,70.0,42.0",
        "naive pseudo-labels + sphere rejection,naive_sphere,✓,,,,✓,✓,44.0,,0,72.9,43.0",
        "relaxed cycle consistency + chaining + sphere rejection,main,✓,,✓,✓,✓,✓,50.0,,0,74.4,49.0",
    ]
    assert channels[1:] == [
        "128,main,0,50.0,,74.08,25.0,,56.28,5.0,,11.26",
        "384,channels_384,0,60.0,,74.39,30.0,,56.87,6.0,,11.53",
        "768,channels_768,0,61.0,,74.43,30.5,,56.76,6.1,,11.22",
        "1536,channels_1536,0,62.0,,74.63,31.0,,57.13,6.2,,11.6",
    ]


def test_a_main_run_without_the_sphere_filter_shows_what_ran(tmp_path):
    """`dvc exp run -S sphere_filter=false` then the tables: no ✓ and no 74.4 on the main row."""
    ablation, channels = render(tmp_path, {**FULL, "sphere_filter": False})
    main_rows = [row for row in ablation if ",main,✓" in row]
    assert main_rows == ["relaxed cycle consistency + chaining,main,✓,,✓,✓,,✓,50.0,,0,70.0,49.0"]
    assert "74.4" not in "\n".join(ablation)
    # The channel variants trained on the main run's labels, so they stay in Tab. 8.
    assert [row.split(",")[1] for row in channels[1:]] == [
        "main",
        "channels_384",
        "channels_768",
        "channels_1536",
    ]


def test_runs_on_other_labels_or_without_a_mask_are_not_mistaken_for_the_papers_rows(tmp_path):
    write_run(tmp_path / "metrics", FULL, 128, 50.0, zero_shot=30.0)
    evaluation = {"pairs": 60}
    nomask, naive = {**FULL, "mask": False}, {**FULL, "cycle": "none"}
    write_run(tmp_path / "variants" / "nomask", nomask, 128, 45.0, evaluation=evaluation)
    write_run(tmp_path / "variants" / "wide_naive", naive, 768, 47.0, evaluation=evaluation)
    ablation_tables(tmp_path, evaluation)
    ablation = (tmp_path / "tables" / "ablation.csv").read_text()
    channels = (tmp_path / "tables" / "channels.csv").read_text().splitlines()
    nomask = next(row for row in ablation.splitlines() if ",nomask," in row)
    assert nomask.startswith("relaxed cycle consistency + chaining + sphere rejection (no mask),")
    assert nomask.split(",")[-2] == ""  # no paper figure: the paper's rows all use the mask
    assert "wide_naive" not in ablation  # another width: not a Tab. 5 row …
    assert not any("wide_naive" in row for row in channels)  # … nor Tab. 8 (other labels)


def test_runs_of_one_setting_at_several_seeds_are_one_row_with_mean_and_std(tmp_path):
    naive = {**FULL, "cycle": "none", "chaining": False, "sphere_filter": False}
    write_run(tmp_path / "metrics", FULL, 128, 50.0, zero_shot=30.0)
    runs = tmp_path / "variants"
    evaluation = {"pairs": 60}
    write_run(runs / "main-s0", FULL, 128, 50.0, evaluation=evaluation)  # = the main run: once
    write_run(runs / "main-s1", FULL, 128, 54.0, seed=1, evaluation=evaluation)
    write_run(runs / "main-s2", FULL, 128, 58.0, seed=2, evaluation=evaluation)
    for seed, pck in enumerate((40.0, 41.0, 45.0)):
        write_run(runs / f"naive-s{seed}", naive, 128, pck, seed=seed, evaluation=evaluation)
    write_run(runs / "wide-s1", FULL, 384, 60.0, seed=1, evaluation=evaluation)
    # A run no longer defined keeps its folder, but was not evaluated: not in the tables.
    write_run(runs / "removed-s0", naive, 128, 99.0, evaluation={})
    ablation_tables(tmp_path, evaluation)
    ablation = (tmp_path / "tables" / "ablation.csv").read_text().splitlines()
    # mean of 40, 41, 45 is 42, sample std sqrt(((-2)² + (-1)² + 3²) / 2) = sqrt(7)
    assert (
        ablation[2]
        == "naive pseudo-labels,naive-s0 naive-s1 naive-s2,✓,,,,,✓,42.0,2.6458,0 1 2,67.2,41.0"
    )
    assert ablation[3].startswith(
        "relaxed cycle consistency + chaining + sphere rejection,main main-s1 main-s2,"
    )
    assert ablation[3].endswith(",54.0,4.0,0 1 2,74.4,53.0")
    channels = (tmp_path / "tables" / "channels.csv").read_text().splitlines()
    assert channels[1].startswith("128,main main-s1 main-s2,0 1 2,54.0,4.0,74.08,")
    assert channels[2].startswith("384,wide-s1,1,60.0,,74.39,")


def test_a_run_without_recorded_settings_is_refused_naming_the_file(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "train.json").write_text(json.dumps({"best_val_loss": 1.0}))
    (tmp_path / "metrics" / "eval.json").write_text("{}")
    result = ablation_tables(tmp_path, {"pairs": 60}, check=False)
    assert result.exit_code != 0
    assert "train.json" in str(result.exception) and "labels" in str(result.exception)


def test_every_paper_row_of_tab5_has_exactly_one_variant_or_is_the_main_run():
    main = yaml.safe_load((ROOT / "params.yaml").read_text())
    variants = main["ablation"]
    defaults = {t.param: main[t.param] for t in TOGGLES}
    rows = [paper.tab5_index(defaults | s) for s in variants["label_variants"].values()]
    assert sorted([paper.tab5_index(defaults), *rows]) == list(range(len(paper.TAB5)))
    widths = {main["adapter"]["channels"]} | {
        s["adapter"]["channels"] for s in variants["adapter_variants"].values()
    }
    assert widths == {128, 384, 768, 1536}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            {"mask": True, "cycle": "none", "chaining": False, "sphere_filter": False},
            "naive pseudo-labels",
        ),
        (
            {"mask": True, "cycle": "strict", "chaining": False, "sphere_filter": True},
            "strict cycle consistency + sphere rejection",
        ),
        (
            {"mask": False, "cycle": "none", "chaining": False, "sphere_filter": False},
            "naive pseudo-labels (no mask)",
        ),
    ],
)
def test_describe_labels(labels, expected):
    assert describe_labels(labels) == expected


def test_variant_overrides_read_the_one_definition():
    params = ROOT / "params.yaml"
    assert variant_overrides(f"{params}:ablation.label_variants.naive") == (
        'cycle="none"',
        "chaining=false",
        "sphere_filter=false",
    )
    assert variant_overrides(f"{params}:ablation.adapter_variants.channels_384") == (
        "adapter.channels=384",
    )
    with pytest.raises(Exception, match="no variant 'ablation.label_variants.nope'"):
        variant_overrides(f"{params}:ablation.label_variants.nope")
    with pytest.raises(Exception, match="FILE:GROUP.NAME"):
        variant_overrides(str(params))


def test_a_variant_with_an_unknown_or_ill_typed_setting_fails_at_load_naming_it():
    raw = compose(ROOT / "conf")
    raw["ablation"]["label_variants"]["typo"] = {"chaning": False}
    with pytest.raises(ParamsError, match=r"ablation.label_variants.typo.*unknown key 'chaning'"):
        params_from_dict(raw)
    raw["ablation"]["label_variants"]["typo"] = {"adapter": {"channels": "wide"}}
    with pytest.raises(ParamsError, match=r"ablation.label_variants.typo.*adapter.channels"):
        params_from_dict(raw)


def test_ablation_runs_are_every_variant_and_the_main_settings_at_every_seed():
    ablation = AblationParams(
        label_variants={"naive": {"cycle": "none"}},
        adapter_variants={"wide": {"adapter": {"channels": 384}}},
        seeds=(0, 2),
    )
    assert ablation.runs() == ["naive-s0", "full-s0", "wide-s0", "naive-s2", "full-s2", "wide-s2"]


@pytest.mark.parametrize(
    "group, name, settings",
    [
        ("label_variants", "full", {"chaining": False}),  # the main settings' runs
        ("adapter_variants", "naive", {"adapter": {"channels": 384}}),  # a label variant's
    ],
)
def test_a_variant_whose_runs_would_share_a_name_is_refused_naming_it(group, name, settings):
    raw = compose(ROOT / "conf")
    raw["ablation"][group][name] = settings
    with pytest.raises(ParamsError, match=rf"'ablation.{group}.{name}' is a name already taken"):
        params_from_dict(raw)


def test_a_setting_combination_the_paper_never_ran_gets_no_paper_figure(tmp_path):
    """Strict cycle check + chaining + sphere: no Tab. 5 row has it, so '—', not 74.4."""
    unknown = {**FULL, "cycle": "strict"}
    write_run(tmp_path / "metrics", FULL, 128, 50.0, zero_shot=30.0)
    evaluation = {"pairs": 60}
    write_run(tmp_path / "variants" / "odd", unknown, 128, 45.0, evaluation=evaluation)
    ablation_tables(tmp_path, evaluation)
    row = next(
        r for r in (tmp_path / "tables" / "ablation.md").read_text().splitlines() if "odd" in r
    )
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["strict cycle consistency + chaining + sphere rejection", "odd"]
    assert cells[-2] == "—" and "74.4" not in row
    assert paper.tab5_pck(unknown) is None and paper.tab5_pck(FULL) == 74.4
    # A toggle value the paper's rows do not name counts as a different setting too.
    assert paper.tab5_pck({**FULL, "mask": False}) is None


def pair_outcomes(alphas):
    """Two pairs, target bbox side 100: errors 5, 12, 20 px and 14, 30 px."""
    from diysc.evaluation.pck import PairKeypoints, outcome

    def pair(name, errors):
        k = len(errors)
        truth = PairKeypoints(
            name, "cow", f"{name}a", f"{name}b", np.arange(k), np.zeros((k, 2)),
            np.full((k, 2), 50.0), 100.0, None, None,
        )  # fmt: skip
        return outcome(truth, truth.trg_xy + np.array([[e, 0.0] for e in errors]), alphas)

    return [pair("p0", (5, 12, 20)), pair("p1", (14, 30))]


def main_tables(tmp_path: Path, labels: dict, channels: int, *overrides: str) -> list[list[str]]:
    """eval.json written by the evaluation's own `summarise` at the overridden `eval.alphas`, then
    `stages.tables main`; the rows of main.csv."""
    from diysc.config.load import load_params
    from diysc.evaluation.pck import summarise

    sets = [x for o in overrides for x in ("--set", o)]
    alphas = load_params(ROOT / "params.yaml", overrides).eval.alphas
    block = summarise(pair_outcomes(alphas), alphas)
    run = tmp_path / "metrics"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"pairs": 2, "zero_shot": block, "adapter": block}))
    train = {"labels": labels, "adapter": {"channels": channels}, "seed": 0}
    (run / "train.json").write_text(json.dumps(train))
    result = CliRunner().invoke(
        tables_command,
        ["main", "--params", str(ROOT / "params.yaml"), *sets]
        + ["--main-run", str(run), "--out", str(tmp_path / "tables")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return list(csv.reader((tmp_path / "tables" / "main.csv").read_text().splitlines()))


def test_the_tables_show_every_evaluated_alpha(tmp_path):
    """`-S eval.alphas=[0.1,0.15]`: a PCK@0.15 column, from the metric files written with it."""
    rows = main_tables(tmp_path, FULL, 768, "eval.alphas=[0.1,0.15]")
    assert rows[0] == [
        "category",
        "pairs",
        "zero-shot PCK@0.1",
        "zero-shot PCK@0.15",
        "adapter PCK@0.1",
        "adapter PCK@0.15",
    ]
    by_name = {row[0]: row[1:] for row in rows[1:]}
    # per image: (1/3 + 0) / 2 and (2/3 + 1/2) / 2; per keypoint: 1/5 and 3/5
    assert by_name["cow"] == ["2", "16.6667", "58.3333", "16.6667", "58.3333"]
    assert by_name["**all, per keypoint**"] == ["2", "20.0", "60.0", "20.0", "60.0"]
    # the paper has no PCK@0.15: only its PCK@0.1 figures appear
    assert by_name["paper, per keypoint (Tab. 5 / Tab. 8)"] == ["12234", "65.0", "", "74.43", ""]


def test_the_main_tables_paper_row_is_the_runs_width_and_settings(tmp_path):
    rows = main_tables(tmp_path / "a", FULL, 384)
    by_name = {row[0]: row[1:] for row in rows[1:]}
    assert rows[0][-3:] == ["adapter PCK@0.1", "adapter PCK@0.05", "adapter PCK@0.01"]
    assert by_name["paper, per keypoint (Tab. 5 / Tab. 8)"][-3:] == ["74.39", "56.87", "11.53"]
    assert by_name["paper, per image (Tab. 4)"][-3:] == ["", "", ""]  # Tab. 4 is 768 wide only
    rows = main_tables(tmp_path / "b", {**FULL, "chaining": False}, 768)
    by_name = {row[0]: row[1:] for row in rows[1:]}
    assert by_name["paper, per keypoint (Tab. 5 / Tab. 8)"] == ["12234", "65.0", "", "", "", "", ""]
    assert by_name["paper, per image (Tab. 4)"] == ["12234", "", "", "", "", "", ""]
