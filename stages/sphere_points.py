"""DVC stage `sphere_points`: a unit 3-vector per patch per image, and the sphere's quality figures.

Params: `sphere.hidden`, `sphere.heads` (the mapper's shape), `seed` (the random initialisation
measured as the 'before training' sphere) and `pseudo.sphere_threshold` (the quality figures are
scored at the pseudo-label filter's threshold). Runtime settings (not params): DIYSC_DEVICE,
--batch-size. `metrics/sphere.json` holds, before and after training and per split, the figures of
`diysc.sphere.quality` on the annotated keypoints.
"""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from diysc import runtime
from diysc.config.stage import load_stage_params
from diysc.data.spair import SPLITS, SPairDataset
from diysc.errors import clean_errors
from diysc.features import FeatureStore
from diysc.formats.sphere_points import write_points
from diysc.io import write_json
from diysc.sphere.model import init_mapper, load_mapper
from diysc.sphere.points import compute_points
from diysc.sphere.quality import sphere_quality
from diysc.stage_options import params_options


@click.command()
@params_options
@click.option("--dataset", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--features", type=click.Path(path_type=Path, exists=True), required=True)
@click.option(
    "--model",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="Mapper state dict from sphere_train.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Sphere point shards.")
@click.option("--metrics", type=click.Path(path_type=Path), required=True, help="Quality JSON.")
@click.option("--batch-size", default=16, show_default=True, help="Images per forward pass.")
@clean_errors
def main(
    params_path: str,
    overrides: tuple[str, ...],
    dataset: Path,
    features: Path,
    model: Path,
    out: Path,
    metrics: Path,
    batch_size: int,
) -> None:
    params = load_stage_params("sphere_points", params_path, overrides)
    hidden, heads = params.sphere.hidden, params.sphere.heads
    data, store = SPairDataset(dataset), FeatureStore(features)
    by_split = {
        split: {cat: stems for cat in data.categories if (stems := data.split_images(split, cat))}
        for split in SPLITS
    }
    images = sorted(
        {
            (cat, stem)
            for split in by_split.values()
            for cat, stems in split.items()
            for stem in stems
        }
    )
    if not images:
        raise click.ClickException(f"{dataset}: no images in any split")
    dim = store.dino_dim
    device = runtime.device()
    trained = load_mapper(model, dim, hidden, heads).to(device)
    untrained = init_mapper(dim, hidden, heads, params.seed).to(device)

    report = {}
    for name, mapper in (("before", untrained), ("after", trained)):
        with tqdm(total=len(images), desc=f"sphere points ({name} training)") as bar:
            points = compute_points(mapper, store.dino, images, batch_size, progress=bar.update)
        report[name] = {
            split: sphere_quality(
                data,
                stems,
                lambda c, s, p=points: p[c][s],
                store.size,
                store.grid,
                params.pseudo.sphere_threshold,
            )
            for split, stems in by_split.items()
            if stems
        }
    write_points(out, points)  # the trained mapper's, computed last
    write_json(metrics, report)
    after = report["after"]
    summary = ", ".join(
        f"{split}: counterparts separated {_share(m['counterpart_separated'])}, "
        f"same keypoint kept {_share(m['keypoint_kept'])}"
        for split, m in after.items()
    )
    click.echo(f"sphere_points: {len(images)} images → {out}; {summary}")


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
