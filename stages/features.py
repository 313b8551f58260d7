"""DVC stage `features@<name>`: DINOv2 (and SD) feature shards of every image of a dataset.

`DIYSC_GPUS=N`: N workers (one per GPU) share the categories; the output is the one process's.
"""

from __future__ import annotations

import click

from diysc import datasets, runtime
from diysc.config.stage import load_dataset_stage_params
from diysc.errors import clean_errors
from diysc.feature_extraction import extract_features
from diysc.launch import Workers, handed_off
from diysc.stage_options import batch_size_option, dataset_name_option, params_options


@click.command()
@params_options
@dataset_name_option
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path())
@batch_size_option("DIYSC_FEATURES_BATCH", "Images per forward pass")
@clean_errors
def main(params_path, overrides, dataset_name, dataset, out, batch_size):
    name, params = load_dataset_stage_params("features", dataset_name, params_path, overrides)
    if handed_off(__file__):
        return
    with Workers() as workers:
        device = runtime.device()
        info = extract_features(
            datasets.open_dataset(name, dataset),
            params.features,
            out,
            device,
            batch_size,
            num_workers=runtime.num_workers(),
            workers=workers,
        )
    if workers.leader:
        sd = f", SD {info['sd_dims']}" if info["sd"] else ""
        click.echo(
            f"features ({device}): {len(info['categories'])} categories, grid {info['grid']}, "
            f"DINO {info['dino_dim']}{sd}, {info['dtype']} -> {out}"
        )


if __name__ == "__main__":
    main()
