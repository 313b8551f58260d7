"""DVC stage `data@<name>`: the tree of dataset `<name>` (an entry of `datasets` in params).

    python -m stages.data --dataset-name NAME --out data/NAME/dataset [--params params.yaml]
                          [--set key=value ...] [--source PATH]

The dataset's package builds it (`diysc.datasets.<name>.build`): `spair` from the official archive
(download, or `--source PATH` / `DIYSC_SPAIR_ARCHIVE`: a local archive or extracted directory) or a
small local directory, `synthetic` rendered from its params. Its output depends on its own entry,
`datasets.<name>`, only. Before anything else it checks that what every later stage needs is
available (`diysc.prerequisites`: the datasets, model weights, a GPU) and fails at once, naming each
missing thing, if not.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from diysc import datasets, prerequisites
from diysc.config.load import load_params
from diysc.config.stage import load_dataset_stage_params
from diysc.errors import UserError, clean_errors
from diysc.stage_options import dataset_name_option, params_options


@click.command()
@params_options
@dataset_name_option
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Dataset root to write."
)
@click.option(
    "--source",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="A local copy of what the dataset would download (SPair-71k: the archive or extracted "
    "directory; default $DIYSC_SPAIR_ARCHIVE).",
)
@clean_errors
def main(
    params_path: str,
    overrides: tuple[str, ...],
    dataset_name: str | None,
    out: Path,
    source: Path | None,
) -> None:
    start = time.perf_counter()
    try:
        name, params = load_dataset_stage_params("data", dataset_name, params_path, overrides)
        # The first stage checks what every later stage needs (weights, GPU), so a configuration
        # that cannot run here fails now; reading those params changes no output of this stage.
        prerequisites.require(
            load_params(params_path, overrides),
            {name: source} if source else {},
            in_experiment="DVC_EXP_NAME" in os.environ,
        )
        counts = datasets.builder(name).build(out, params.datasets[name], source)
    except UserError as err:
        raise click.ClickException(str(err)) from None
    pairs = ", ".join(f"{split} {n}" for split, n in counts.items())
    click.echo(f"data: {name} at {out}: pairs {pairs} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
