"""How semantic the offline stand-in for DINOv2 is, against what its training target allows.

On the tiny preset's test pairs (zero-shot, the evaluation's own transfer and PCK rule) it prints
PCK@0.1 per keypoint, the share of errors that land on the left/right counterpart, and the
cosine at keypoints (same keypoint / counterpart / other keypoints across instances) for:

- the random tiny DINOv2 (what the tiny preset uses);
- "oracle" features: the stand-in's exact training target rendered for each test image (what a
  perfectly trained stand-in would give), with and without the keypoint-class channels;
- the trained stand-in (built into the cache on first use: minutes).

    python bench/standin.py [--pairs 0] [--oracle-size 448]

`--oracle-size` prints the oracle rows alone at another input size (a finer patch grid): how much
the tiny preset's 16 × 16 grid limits any feature.

A variant of the recipe is trained into a temporary directory (never the cache) and printed as
one more row, to compare recipes on the same pairs:

    python bench/standin.py --recipe '{"architecture": {"num_hidden_layers": 6}}'
    python bench/standin.py --loss cosine

`--loss cosine` trains on 1 − cos per patch (object and background halves) plus 0.1 × the squared
error, since the pipeline compares features by cosine only. `--alpha` adds a PCK threshold (0.2:
about 1.4 patches on this grid, where 0.1 is below one patch).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F

from diysc import runtime, standin
from diysc.backbones.dino import DINOv2
from diysc.config.compose import compose
from diysc.config.overrides import params_from_dict
from diysc.data.spair import SPairDataset
from diysc.datasets.synthetic.generator import generate, split_views
from diysc.evaluation.pck import summarise
from diysc.evaluation.run import evaluate, select_pairs
from diysc.evaluation.symmetry import confusion_by_azimuth, feature_affinities
from diysc.metric_keys import pck_key

ROOT = Path(__file__).resolve().parents[1]


def oracle(params, recipe: dict, size: int, grid: int):
    """Describer: the stand-in's target features of each test image, L2-normalised."""
    embed = standin.embedding(recipe)
    views: dict[str, dict] = {}

    def describe(category: str, stem: str) -> torch.Tensor:
        if category not in views:
            views[category] = split_views(params.datasets["synthetic"], category, "test")
        vectors = standin.target_vectors(
            views[category][stem], size, grid, recipe["subsamples"], recipe["anchor_width"]
        )
        target = embed(vectors).mean(dim=2).float().reshape(grid * grid, -1)
        return F.normalize(target, dim=-1)

    return describe


def model(reference: str, dataset: SPairDataset, size: int):
    """Describer: a DINOv2's last-block patch tokens, as the `features` stage extracts them."""
    extractor = DINOv2(DINOv2.load_model(reference, "bench"), size, "cpu", "bench")

    def describe(category: str, stem: str) -> torch.Tensor:
        image = dataset.load_image(category, stem)
        tokens = extractor(extractor.preprocess(image)[None])[""][0]
        return F.normalize(tokens.flatten(1).T, dim=-1)

    return describe


def cosine_loss(tokens: torch.Tensor, targets: torch.Tensor, on_object: torch.Tensor):
    """1 − cos per patch, object and background halves, plus a tenth of the squared error (which
    keeps the tokens' scale from drifting)."""
    error = 1 - F.cosine_similarity(tokens, targets, dim=-1)
    parts = [error[on_object], error[~on_object]]
    cosine = sum(p.mean() for p in parts if p.numel()) / sum(1 for p in parts if p.numel())
    return cosine + 0.1 * SQUARED(tokens, targets, on_object)


SQUARED = standin.balanced_loss
LOSSES = {"squared": SQUARED, "cosine": cosine_loss}


@contextlib.contextmanager
def training_loss(name: str):
    """The stand-in's training loss swapped for this process only (the module's is the recipe's)."""
    standin.balanced_loss = LOSSES[name]
    try:
        yield
    finally:
        standin.balanced_loss = SQUARED


def variant(overrides: dict, loss: str, out: Path) -> Path:
    """Train the recipe with `overrides` (nested dicts merge) and `loss` into `out`."""
    recipe = dict(standin.RECIPE)
    for key, value in overrides.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    started = time.perf_counter()
    with training_loss(loss):
        standin.train(out, recipe)
    print(f"variant trained in {time.perf_counter() - started:.0f} s")
    return out


@click.command()
@click.option("--pairs", default=0, show_default=True, help="Test pairs per category (0: all).")
@click.option("--oracle-size", type=int, default=None, help="Oracle rows only, at this size.")
@click.option("--recipe", "overrides", default="{}", help="JSON overrides of standin.RECIPE.")
@click.option("--loss", type=click.Choice(sorted(LOSSES)), default="squared", show_default=True)
@click.option("--alpha", "alphas", type=float, multiple=True, default=[0.1], show_default=True)
def main(pairs, oracle_size, overrides, loss, alphas):
    runtime.apply_threads()  # as the stages: the stand-in in the cache is keyed by thread count
    params = params_from_dict(compose(ROOT / "conf", ["preset=standin"]))
    size = params.features.backbones["dino"].size
    grid = size // standin.RECIPE["architecture"]["patch_size"]
    overrides = json.loads(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "dataset", params.datasets["synthetic"])
        dataset = SPairDataset(Path(tmp) / "dataset")
        test = select_pairs(dataset, "test", pairs)
        images = {c: dataset.split_images("test", c)[:8] for c in dataset.categories}
        if oracle_size:
            size, grid = oracle_size, oracle_size // standin.RECIPE["architecture"]["patch_size"]
        describers = {
            "oracle: position only": oracle(
                params, {**standin.RECIPE, "anchor_weight": 0.0}, size, grid
            ),
            "oracle: full target": oracle(params, standin.RECIPE, size, grid),
        }
        if not oracle_size:
            started = time.perf_counter()
            trained = str(standin.standin_dino())
            print(f"stand-in ready in {time.perf_counter() - started:.0f} s (0 when cached)")
            describers = {
                "random tiny DINOv2": model("tiny", dataset, size),
                **describers,
                "trained stand-in": model(trained, dataset, size),
            }
            if overrides or loss != "squared":
                out = variant(overrides, loss, Path(tmp) / "variant")
                name = f"variant: {json.dumps(overrides)}, {loss} loss"
                describers[name] = model(str(out), dataset, size)
        print(f"{len(test)} test pairs, {size} px, {grid} x {grid} grid\n")
        columns = " | ".join(f"PCK@{a:g} per kpt | counterpart share of errors" for a in alphas)
        print(f"| features | {columns} | cos same / counterpart / other |")
        print("|---|" + "---|---|" * len(alphas) + "---|")
        for name, describe in describers.items():
            outcomes = evaluate(dataset, test, {name: describe}, size, grid, alphas, progress=False)
            outcomes = outcomes[name]
            pck = summarise(outcomes, alphas)["per_keypoint"]
            cells = []
            for a in alphas:
                confusion = confusion_by_azimuth(dataset, outcomes, size, a)["all"]
                share = 100 * confusion["confused_share_of_errors"]
                cells.append(f"{pck[pck_key(a)]:.1f} | {share:.1f} %")
            cos = feature_affinities(dataset, images, describe, size, grid)
            print(
                f"| {name} | {' | '.join(cells)} | "
                f"{cos['same_cosine']:.2f} / {cos['counterpart_cosine']:.2f} / {cos['other_cosine']:.2f} |"
            )


if __name__ == "__main__":
    main()
