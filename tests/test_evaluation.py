"""Evaluation: window soft-argmax, PCK on the real SPair sample, the evaluate stage, the tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from diysc.azimuth import azimuth_difference
from diysc.data.spair import SPairDataset
from diysc.evaluation.pck import outcome, pair_keypoints, pck, summarise
from diysc.evaluation.predict import hard_argmax, transfer, window_soft_argmax
from diysc.evaluation.run import evaluate, select_pairs
from diysc.evaluation.viewpoint import geo_aware
from diysc.geometry import grid_coords
from diysc.pck_rule import correct_at
from tests.conftest import ROOT

G = 60  # the paper's grid


def blob(col: float, row: float, height: float = 1.0, width: float = 1.5, grid: int = G):
    """A Gaussian bump on the grid, as one flat similarity row."""
    d2 = ((grid_coords(grid) - torch.tensor([col, row])) ** 2).sum(-1)
    return height * torch.exp(-d2 / (2 * width**2))


# --- prediction ---------------------------------------------------------------------------------


def test_a_single_peak_returns_its_location():
    sim = torch.stack([blob(10, 20), blob(45, 3), blob(0, 0, width=0.3)])
    got = window_soft_argmax(sim, G, window=15, beta=0.02)
    assert torch.allclose(got, torch.tensor([[10.0, 20.0], [45.0, 3.0], [0.0, 0.0]]), atol=1e-4)
    assert torch.equal(hard_argmax(sim, G), torch.tensor([[10.0, 20.0], [45.0, 3.0], [0.0, 0.0]]))


def test_a_second_peak_outside_the_window_does_not_pull_the_estimate():
    sim = (blob(10, 10) + blob(40, 40, height=0.99)).unsqueeze(0)
    windowed = window_soft_argmax(sim, G, window=15, beta=0.02)[0]
    assert torch.allclose(windowed, torch.tensor([10.0, 10.0]), atol=1e-4)
    # the same row without a window (it covers the whole grid) is pulled towards the second peak
    unwindowed = window_soft_argmax(sim, G, window=2 * G + 1, beta=0.02)[0]
    assert unwindowed[0] > 15


def test_a_second_peak_inside_the_window_is_averaged_in():
    sim = (blob(10, 10, width=0.2) + blob(16, 10, width=0.2)).unsqueeze(0)  # 6 apart, half-window 7
    assert torch.allclose(window_soft_argmax(sim, G)[0], torch.tensor([13.0, 10.0]), atol=1e-4)


def test_the_window_is_truncated_at_the_border():
    inside = (blob(0, 0, width=0.2) + blob(7, 0, width=0.2)).unsqueeze(0)
    outside = (blob(0, 0, width=0.2) + blob(8, 0, width=0.2)).unsqueeze(0)
    assert torch.allclose(window_soft_argmax(inside, G)[0], torch.tensor([3.5, 0.0]), atol=1e-4)
    assert torch.allclose(window_soft_argmax(outside, G)[0], torch.tensor([0.0, 0.0]), atol=1e-4)


def test_entries_outside_the_window_become_zero_not_minus_infinity():
    # Everything at −1 except a weak peak of 0.1 at (30, 30): the reference multiplies the
    # out-of-window entries by 0, so they (3375 of them, at similarity 0) outweigh the in-window
    # ones at −1 and pull the estimate towards the grid's centre of mass outside the window.
    sim = torch.full((1, G * G), -1.0)
    sim[0, 30 * G + 30] = 0.1
    got = window_soft_argmax(sim, G, window=15, beta=0.02)[0]
    peak, outside = math.exp(0.1 / 0.02), G * G - 15 * 15
    outside_sum = G * sum(range(G)) - 15 * sum(range(23, 38))  # columns (= rows) outside the box
    expected = (peak * 30 + outside_sum) / (peak + outside)
    assert got.tolist() == pytest.approx([expected, expected], abs=1e-3)
    assert abs(expected - 30) > 0.4  # with −∞ it would be exactly 30


def test_window_soft_argmax_in_float32_agrees_with_float64():
    # Diffuse rows (random 64-d cosines: the in-window peak is weak, the 3,375 zeroed entries carry
    # much of the mass): averaging the absolute coordinates 0…59 in float32 is off by ~1e-3 patch.
    gen = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(G * G + 50, 64, generator=gen), dim=1)
    sim = desc[:50] @ desc[50:].T
    single = window_soft_argmax(sim, G, window=15, beta=0.02)
    double = window_soft_argmax(sim.double(), G, window=15, beta=0.02)
    assert (single.double() - double).abs().max().item() < 1e-5


def test_transfer_maps_patches_to_patch_centres():
    grid, size = 4, 56  # stride 14
    perm = torch.randperm(grid * grid, generator=torch.Generator().manual_seed(0))
    desc_src = torch.eye(grid * grid)
    desc_trg = torch.eye(grid * grid)[perm.argsort()]  # source patch i matches target patch perm[i]
    src = torch.tensor([[20.0, 35.0], [55.9, 0.0]])  # patches (1, 2) and (3, 0)
    got = transfer(desc_src, desc_trg, src, size, grid, soft=False)
    for (col, row), xy in zip([(1, 2), (3, 0)], got, strict=True):
        t = perm[row * grid + col].item()
        assert xy.tolist() == [14 * (t % grid) + 7, 14 * (t // grid) + 7]


# --- PCK on the real SPair-71k sample -----------------------------------------------------------

COW = "006394-2007_005797-2009_003189:cow"
PLANT = "010163-2010_002195-2011_001863:pottedplant"


def _pair(dataset, name):
    [pair] = [p for p in dataset.pairs("test") if p.name == name]
    return pair


@pytest.fixture(scope="module")
def sample(spair_sample):
    return SPairDataset(spair_sample)


def test_pair_ground_truth_in_the_padded_frame(sample):
    truth = pair_keypoints(sample, _pair(sample, COW), size=500)  # every image's long side is 500
    # slot 12 is visible in the source only, 0, 1, 3 in the target only: skipped
    assert truth.slots.tolist() == [2, 4, 8, 9, 10, 11, 15]
    assert truth.threshold == 264.0  # target bbox [63, 150, 216, 414]: max(153, 264); source: 269
    assert truth.trg_xy[0].tolist() == [101 + 84, 210]  # 332×500 → x offset (500 − 332) // 2
    assert truth.src_xy[0].tolist() == [240, 255 + 62]  # 500×375 → y offset 62
    assert truth.azimuth_delta == 1  # bins 6 and 7
    # cow symmetry groups: ears (2, 3), hooves (9–12), knees (15–18), horns (19, 20)
    assert truth.geo.tolist() == [True, False, False, True, True, True, True]
    at_840 = pair_keypoints(sample, _pair(sample, COW), size=840)
    assert at_840.threshold == pytest.approx(264 * 840 / 500)


def test_pck_strict_boundary(sample):
    truth = pair_keypoints(sample, _pair(sample, COW), size=500)
    offsets = np.array([[0, 0], [65.999, 0], [66, 0], [0, 66.001], [0, -66], [36, 48], [40, 50]])
    o = outcome(truth, truth.trg_xy + offsets, alphas=(0.5, 0.25, 0.1))
    # thresholds 132, 66 (exactly at 66: wrong, strict <), 26.4
    assert o.correct.tolist() == [
        [True] * 7,
        [True, True, False, False, False, True, True],
        [True, False, False, False, False, False, False],
    ]


def test_pck_boundary_in_the_references_float32_precision(sample):
    truth = pair_keypoints(sample, _pair(sample, COW), size=500)  # threshold 264, trg x0 = 185
    assert truth.trg_xy[0].tolist() == [185.0, 210.0]
    pred = truth.trg_xy[:1] + np.array([[26.4, 0.0]])
    # α = 0.1 is 0.100000001490116 in float32: the bound is 26.4000003934 px, and the float32
    # error float32(211.4) − 185 = 26.3999938965 is below it (in float64 26.4 < 26.4 is false).
    assert correct_at(pred, truth.trg_xy[:1], truth.threshold, (0.1,)).tolist() == [[True]]
    # Just above the float32 bound: 185 + 26.4001 is 211.40010070800781 in float32.
    pred = truth.trg_xy[:1] + np.array([[26.4001, 0.0]])
    assert correct_at(pred, truth.trg_xy[:1], truth.threshold, (0.1,)).tolist() == [[False]]
    # An error exactly at a bound that float32 represents exactly (α = 0.25: 66 px) is wrong.
    pred = truth.trg_xy[:1] + np.array([[0.0, 66.0]])
    assert correct_at(pred, truth.trg_xy[:1], truth.threshold, (0.25,)).tolist() == [[False]]


def test_pck_uses_the_target_bbox_not_the_source(sample):
    truth = pair_keypoints(sample, _pair(sample, PLANT), size=500)
    assert truth.threshold == 499.0  # the source bbox would give 169
    errors = np.array([[40, 0], [45, 0], [60, 0], [200, 0]])
    o = outcome(truth, truth.trg_xy + errors, alphas=(0.1,))
    assert o.correct.tolist() == [[True, True, False, False]]  # 49.9 px; with 16.9 px: none


def test_per_image_and_per_keypoint_micro_averages(sample):
    alphas = (0.25, 0.1)
    cow = pair_keypoints(sample, _pair(sample, COW), size=500)
    plant = pair_keypoints(sample, _pair(sample, PLANT), size=500)
    outcomes = [
        outcome(
            cow,
            cow.trg_xy + [[0, 0], [65.999, 0], [66, 0], [0, 66.001], [0, -66], [36, 48], [40, 50]],
            alphas,
        ),  # 4/7 at 0.25, 1/7 at 0.1
        outcome(plant, plant.trg_xy + [[40, 0], [45, 0], [60, 0], [200, 0]], alphas),  # 3/4, 2/4
    ]
    got = pck(outcomes, alphas)
    assert got["per_image"]["pck_alpha25"] == pytest.approx((4 / 7 + 3 / 4) / 2 * 100, abs=1e-4)
    assert got["per_image"]["pck_alpha10"] == pytest.approx((1 / 7 + 2 / 4) / 2 * 100, abs=1e-4)
    assert got["per_keypoint"]["pck_alpha25"] == pytest.approx(7 / 11 * 100, abs=1e-4)
    assert got["per_keypoint"]["pck_alpha10"] == pytest.approx(3 / 11 * 100, abs=1e-4)
    assert (got["pairs"], got["keypoints"]) == (2, 11)
    summary = summarise(outcomes, alphas)
    assert summary["per_category"]["cow"]["per_image"]["pck_alpha25"] == pytest.approx(
        400 / 7, abs=1e-3
    )
    assert set(summary["per_azimuth"]) == {"d0", "d1"}  # pottedplant bins 0 and 0, cow 6 and 7
    geo = summary["geo_aware"]  # cow 2, 9, 10, 11, 15; pottedplant slots 0, 2, 3 (top, 4 corners)
    assert geo["keypoints"] == 5 + 3


def test_azimuth_difference_is_circular():
    assert [azimuth_difference(0, b) for b in range(8)] == [0, 1, 2, 3, 4, 3, 2, 1]
    assert azimuth_difference(None, 3) is None


def test_geo_aware_needs_two_group_members_visible_in_the_target():
    visible = np.zeros(30, bool)
    visible[[0, 1, 4, 6]] = True
    slots = np.array([0, 4, 6])
    assert geo_aware(slots, visible, [(0, 1), (4, 5), (6, 7, 8)]).tolist() == [True, False, False]


# --- orchestration --------------------------------------------------------------------------------


def test_each_image_is_described_once_however_many_pairs_use_it(sample):
    pairs = select_pairs(sample, "test")
    calls: dict[str, list] = {"a": [], "b": []}
    rng = torch.Generator().manual_seed(0)
    table = {
        (p.category, s): torch.nn.functional.normalize(torch.randn(16, 8, generator=rng), dim=1)
        for p in pairs
        for s in (p.src, p.trg)
    }

    def describer(name):
        def describe(category, stem):
            calls[name].append((category, stem))
            return table[category, stem]

        return describe

    results = evaluate(
        sample,
        pairs,
        {"a": describer("a"), "b": describer("b")},
        size=56,
        grid=4,
        alphas=(0.1,),
        progress=False,
    )
    uses = sum(2 for _ in pairs)
    assert len(pairs) == 12 and uses == 24
    for name in ("a", "b"):
        assert sorted(calls[name]) == sorted(table)  # 12 images, each described exactly once
        assert len(results[name]) == len(pairs)


# --- the stage, on a feature cache in the contract format -----------------------------------------


def _write_store(root, dataset, grid=4, size=56, dims=(4, 8, 8), dino_dim=8):
    from diysc.io import save_shard

    rng = torch.Generator().manual_seed(1)
    for cat in dataset.categories:
        stems = dataset.images(cat)
        save_shard(
            root / "dino" / f"{cat}.safetensors",
            {s: torch.randn(dino_dim, grid, grid, generator=rng).half() for s in stems},
        )
        save_shard(
            root / "sd" / f"{cat}.safetensors",
            {
                f"{s}.{lvl}": torch.randn(d, grid // f, grid // f, generator=rng).half()
                for s in stems
                for lvl, d, f in zip(("s3", "s4", "s5"), dims, (1, 2, 4), strict=True)
            },
        )
    info = {
        "size": size,
        "grid": grid,
        "dino_dim": dino_dim,
        "sd_dims": list(dims),
        "sd": True,
        "dtype": "float16",
        "categories": list(dataset.categories),
    }
    (root / "info.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def stage_run(spair_sample, tmp_path_factory):
    from diysc.adapter.model import Adapter
    from stages.evaluate import main

    tmp = tmp_path_factory.mktemp("evaluate")
    _write_store(tmp / "features", SPairDataset(spair_sample))
    torch.manual_seed(0)
    torch.save(Adapter([4, 8, 8, 8], channels=128).state_dict(), tmp / "adapter.pth")
    args = [
        "--params",
        str(ROOT / "params.yaml"),
        "--set",
        "tracking.mlflow=false",
        "--dataset",
        str(spair_sample),
        "--features",
        str(tmp / "features"),
        "--adapter",
        str(tmp / "adapter.pth"),
        "--metrics",
        str(tmp / "eval.json"),
        "--plots",
        str(tmp / "plots"),
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp, result.output


def test_the_stage_writes_metrics_plots_and_match_pictures(stage_run):
    from diysc.tracking import flatten

    tmp, output = stage_run
    metrics = json.loads((tmp / "eval.json").read_text())
    assert metrics["pairs"] == 12 and "12 pairs" in output
    for method in ("zero_shot", "adapter"):
        block = metrics[method]
        assert set(block["per_image"]) == {"pck_alpha10", "pck_alpha05", "pck_alpha01"}
        assert block["keypoints"] == 7 + 7 + 9 + 9 + 9 + 9 + 7 + 7 + 7 + 7 + 4 + 4
        assert set(block["per_category"]) == {
            "aeroplane",
            "cow",
            "dog",
            "horse",
            "motorbike",
            "pottedplant",
        }
        assert set(block["per_azimuth"]) == {"d0", "d1", "d2", "d3"}
        assert 0 <= block["per_keypoint"]["pck_alpha10"] <= 100
    assert not any("@" in key for key in flatten(metrics))
    plots = tmp / "plots"
    assert (plots / "pck_vs_alpha.csv").read_text().startswith("alpha,zero_shot_per_image,")
    assert (plots / "pck_vs_azimuth.csv").is_file() and (plots / "pck_vs_alpha.png").is_file()
    match_images = yaml.safe_load((ROOT / "params.yaml").read_text())["eval"]["match_images"]
    assert len(list((plots / "matches").glob("*.png"))) == 2 * match_images


def _evaluate_runs(spair_sample, tmp, adapters, *extra):
    from stages.evaluate_runs import main

    args = ["--params", str(ROOT / "params.yaml"), "--set", "tracking.mlflow=false", *extra]
    args += ["--dataset", str(spair_sample), "--features", str(tmp / "features")]
    args += ["--adapters", str(adapters), "--metrics", str(tmp / "runs" / "evaluation.json")]
    args += ["--plots", str(tmp / "runs" / "plots")]
    return CliRunner().invoke(main, args)


def test_evaluate_runs_gives_each_run_what_evaluating_it_alone_gives(stage_run, spair_sample):
    import shutil

    from diysc.adapter.model import Adapter
    from diysc.config.load import load_params

    tmp, _ = stage_run
    runs = load_params(ROOT / "params.yaml").ablation.runs()
    adapters = tmp / "run_adapters"
    adapters.mkdir()
    for i, run in enumerate(runs):
        torch.manual_seed(100 + i)
        torch.save(Adapter([4, 8, 8, 8], channels=128).state_dict(), adapters / f"{run}.pth")
    shutil.copy(tmp / "adapter.pth", adapters / f"{runs[-1]}.pth")  # the single stage's adapter
    (adapters / "removed-s0.pth").write_bytes(b"not an adapter")  # no longer defined: not read

    result = _evaluate_runs(spair_sample, tmp, adapters)
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp / "runs" / "evaluation.json").read_text())
    assert list(evaluated) == ["pairs", *runs] and evaluated["pairs"] == 12
    # One pass over the pairs for all runs gives each run what evaluating it alone gives.
    alone = json.loads((tmp / "eval.json").read_text())["adapter"]
    assert evaluated[runs[-1]] == alone
    assert evaluated[runs[0]] != alone  # other weights, other outcomes
    for run in runs:
        curves = (tmp / "runs" / "plots" / run / "pck_vs_alpha.csv").read_text()
        assert curves.startswith(f"alpha,{run}_per_image,{run}_per_keypoint\n")
        assert not (tmp / "runs" / "plots" / run / "matches").exists()  # match_images=0

    # A run without its adapter: an error naming the file, and the outputs stay as they were.
    (adapters / f"{runs[1]}.pth").unlink()
    before = (tmp / "runs" / "evaluation.json").read_bytes()
    result = _evaluate_runs(spair_sample, tmp, adapters)
    assert result.exit_code != 0
    assert f"{adapters / runs[1]}.pth" in result.output
    assert (tmp / "runs" / "evaluation.json").read_bytes() == before


# --- tables ---------------------------------------------------------------------------------------


def test_tables_render_with_the_papers_figures(stage_run, tmp_path):
    from stages.tables import main

    tmp, _ = stage_run
    metrics = json.loads((tmp / "eval.json").read_text())
    run, out = tmp_path / "run", tmp_path / "tables"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps(metrics))
    full = {"mask": True, "cycle": "relaxed", "chaining": True, "sphere_filter": True}
    (run / "train.json").write_text(json.dumps({"labels": full, "adapter": {"channels": 768}}))
    params = ROOT / "params.yaml"
    runner = CliRunner()
    assert (
        runner.invoke(
            main,
            ["main", "--params", str(params), "--main-run", str(run), "--out", str(out)],
            catch_exceptions=False,
        ).exit_code
        == 0
    )
    main_md = (out / "main.md").read_text()
    assert "71.60" in main_md and "74.43" in main_md and "65.00" in main_md  # Tab. 4, 8, 5
    zs = metrics["zero_shot"]["per_category"]["cow"]["per_image"]["pck_alpha10"]
    assert f"| cow | 2 | {zs:.2f} |" in main_md
    assert "75.90" in (out / "viewpoint.md").read_text()  # Tab. 1, Δ = 0


def test_pck_axes_show_the_data():
    from diysc.viz import pck_axis_top

    assert pck_axis_top([2.5, 1.0, float("nan")]) == pytest.approx(
        2.875
    )  # small PCKs fill the plot
    assert pck_axis_top([92.0]) == 100.0  # never past 100 %
    assert pck_axis_top([0.0]) == 1.0 and pck_axis_top([]) == 1.0  # a visible axis when all is 0
