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
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F

from diysc import runtime
from diysc.backbones import standin
from diysc.backbones.dino import DinoExtractor
from diysc.config import compose, params_from_dict
from diysc.data.spair import SPairDataset
from diysc.data.synthetic import generate, split_views
from diysc.evaluation.pck import summarise
from diysc.evaluation.run import evaluate, select_pairs
from diysc.evaluation.symmetry import confusion_by_azimuth, feature_affinities

ROOT = Path(__file__).resolve().parents[1]


def oracle(params, recipe: dict, size: int, grid: int):
    """Describer: the stand-in's target features of each test image, L2-normalised."""
    embed = standin.embedding(recipe)
    views: dict[str, dict] = {}

    def describe(category: str, stem: str) -> torch.Tensor:
        if category not in views:
            views[category] = split_views(params.data.synthetic, category, "test")
        vectors = standin.target_vectors(
            views[category][stem], size, grid, recipe["subsamples"], recipe["anchor_width"]
        )
        target = embed(vectors).mean(dim=2).float().reshape(grid * grid, -1)
        return F.normalize(target, dim=-1)

    return describe


def model(reference: str, dataset: SPairDataset, size: int):
    """Describer: a DINOv2's last-block patch tokens, as the `features` stage extracts them."""
    extractor = DinoExtractor(reference, size)

    def describe(category: str, stem: str) -> torch.Tensor:
        image = dataset.load_image(category, stem)
        tokens = extractor(extractor.preprocess(image)[None])[0]
        return F.normalize(tokens.flatten(1).T, dim=-1)

    return describe


@click.command()
@click.option("--pairs", default=0, show_default=True, help="Test pairs per category (0: all).")
@click.option("--oracle-size", type=int, default=None, help="Oracle rows only, at this size.")
def main(pairs, oracle_size):
    runtime.apply_threads()  # as the stages: the stand-in in the cache is keyed by thread count
    params = params_from_dict(compose(ROOT / "conf", ["preset=standin"]))
    size = params.features.dino_size
    grid = size // standin.RECIPE["architecture"]["patch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "dataset", params.data.synthetic)
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
        print(f"{len(test)} test pairs, {size} px, {grid} x {grid} grid\n")
        print(
            "| features | PCK@0.1 per kpt | counterpart share of errors | cos same / counterpart / other |"
        )
        print("|---|---|---|---|")
        for name, describe in describers.items():
            outcomes = evaluate(dataset, test, {name: describe}, size, grid, [0.1], progress=False)[
                name
            ]
            pck = summarise(outcomes, [0.1])["per_keypoint"]["pck_0.1"]
            confusion = confusion_by_azimuth(dataset, outcomes, size, 0.1)["all"]
            cos = feature_affinities(dataset, images, describe, size, grid)
            print(
                f"| {name} | {pck:.1f} | {100 * confusion['confused_share_of_errors']:.1f} % | "
                f"{cos['same_cosine']:.2f} / {cos['counterpart_cosine']:.2f} / {cos['other_cosine']:.2f} |"
            )


if __name__ == "__main__":
    main()
