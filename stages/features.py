"""DVC stage `features@<name>`: each configured backbone's feature shards of every image of a
dataset.

`--backbones models/backbones.json` (the `backbones` stage's record of the code the configured
backbones run) is checked against that code: a stale record, which would let DVC skip a rerun
after a backbone edit, is an error. `DIYSC_GPUS=N`: N workers (one per GPU) share the categories;
the output is the one process's.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from diysc import datasets, runtime
from diysc.config.stage import load_dataset_stage_params
from diysc.errors import UserError, clean_errors
from diysc.feature_extraction import code, extract_features
from diysc.launch import Workers, handed_off
from diysc.stage_options import batch_size_option, dataset_name_option, params_options


@click.command()
@params_options
@dataset_name_option
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path())
@click.option(
    "--backbones",
    "record",
    type=click.Path(exists=True, dir_okay=False),
    help="The backbones stage's models/backbones.json, checked against the configured code.",
)
@batch_size_option("DIYSC_FEATURES_BATCH", "Images per forward pass")
@clean_errors
def main(params_path, overrides, dataset_name, dataset, out, record, batch_size):
    # fails before any launch
    name, params = load_dataset_stage_params("features", dataset_name, params_path, overrides)
    if record is not None:
        try:
            recorded = {
                b["name"]: b["code"] for b in json.loads(Path(record).read_text())["backbones"]
            }
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{record}: malformed ({err!r})") from None
        if recorded != code(params.features):
            raise UserError(
                f"{record}: does not record the code of the configured backbones "
                "(stale: run `dvc repro backbones`, or `python -m stages.backbones --out "
                f"{record}` with the same params)"
            )
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
        groups = ", ".join(f"{g['name']} {[m['dim'] for m in g['maps']]}" for g in info["groups"])
        click.echo(
            f"features ({device}): {len(info['categories'])} categories, grid {info['grid']}, "
            f"{groups}, {info['dtype']} -> {out}"
        )


if __name__ == "__main__":
    main()
