"""DVC stage `symmetry@<name>`: how often transfers land on the mirrored part, by viewpoint change.

For the zero-shot features and the adapter (the evaluation's own predictions, `eval` settings):
PCK and the share of errors that are symmetric-counterpart confusions per Δazimuth bin; and, at
ground-truth keypoints of the evaluation split, the cosine similarity of the same keypoint,
its counterpart and unrelated keypoints across images (the property of the backbone).
"""

from __future__ import annotations

import click

from diysc import runtime
from diysc.config.stage import load_dataset_stage_params
from diysc.data.spair import SPairDataset
from diysc.errors import clean_errors
from diysc.evaluation.run import evaluate_checkpoint, zero_shot_describer
from diysc.evaluation.symmetry import confusion_by_azimuth, feature_affinities
from diysc.features import FeatureStore
from diysc.io import write_json
from diysc.metric_keys import headline_alpha
from diysc.stage_options import dataset_name_option, params_options


@click.command()
@params_options
@dataset_name_option
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--features", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--adapter", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--metrics", "metrics_path", required=True, type=click.Path())
@clean_errors
def main(params_path, overrides, dataset_name, dataset, features, adapter, metrics_path):
    _, params = load_dataset_stage_params("symmetry", dataset_name, params_path, overrides)
    settings = params.eval
    device = runtime.device()
    _, results, size = evaluate_checkpoint(
        dataset, features, adapter, settings, device, progress=False
    )
    data, store = SPairDataset(dataset), FeatureStore(features)
    alpha = headline_alpha(settings.alphas)
    report: dict = {"alpha": alpha}
    for name, outcomes in results.items():
        report[name] = confusion_by_azimuth(data, outcomes, size, alpha)
    images = {cat: data.split_images(settings.split, cat) for cat in data.categories}
    report["features"] = feature_affinities(
        data, images, zero_shot_describer(store, device), store.size, store.grid
    )
    write_json(metrics_path, report)
    summary = ", ".join(
        f"{name} PCK {report[name]['all']['pck']:.3f}, "
        f"{report[name]['all']['confused_share_of_errors']:.2f} of errors on the counterpart"
        for name in results
    )
    f = report["features"]
    click.echo(
        f"symmetry: {summary}; feature cosine same {f['same_cosine']:.2f}, counterpart "
        f"{f['counterpart_cosine']:.2f}, other {f['other_cosine']:.2f}"
    )


if __name__ == "__main__":
    main()
