"""DVC stage `masks@<name>`: one object mask per image of a dataset (its segmentation, SAM or bbox).

`DIYSC_GPUS=N`: N workers (one per GPU) share the categories; the output is the one process's.
"""

from __future__ import annotations

import click

from diysc import datasets, runtime
from diysc.config.stage import load_dataset_stage_params
from diysc.errors import clean_errors
from diysc.launch import Workers, handed_off
from diysc.masks import compute_masks
from diysc.stage_options import batch_size_option, dataset_name_option, params_options


@click.command()
@params_options
@dataset_name_option
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path())
@batch_size_option("DIYSC_MASKS_BATCH", "Images per SAM forward pass")
@clean_errors
def main(params_path, overrides, dataset_name, dataset, out, batch_size):
    name, params = load_dataset_stage_params("masks", dataset_name, params_path, overrides)
    if handed_off(__file__):
        return
    with Workers() as workers:
        device = runtime.device()
        counts = compute_masks(
            datasets.open_dataset(name, dataset),
            params.masks,
            out,
            device,
            batch_size,
            workers=workers,
        )
    if workers.leader:
        click.echo(
            f"masks ({params.masks.source}, {device}): {sum(counts.values())} images in "
            f"{len(counts)} categories -> {out}"
        )


if __name__ == "__main__":
    main()
