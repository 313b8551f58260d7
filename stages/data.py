"""DVC stage `data`: the dataset tree in SPair-71k layout (real or synthetic).

    python -m stages.data --out data/dataset [--params params.yaml] [--set key=value ...]
                          [--source PATH]

`data.source: spair` downloads the official archive (progress bar, sha256, safe extraction) unless
a local copy is given: `--source PATH` or the environment variable `DIYSC_SPAIR_ARCHIVE`, either a
`.tar.gz` archive or an extracted SPair-71k directory. `data.source: local` builds the dataset from a
small directory in SPair-71k layout, `data.local.path` (the smoke preset's real sample; no download,
no full-dataset count check; `diysc.data.local`). `data.source: synthetic` renders the offline
dataset from `data.synthetic`. Its output depends on the `data` param group only (and, for `local`,
on that directory's files, which DVC does not track); before anything else it checks that what the
later stages need is available (`diysc.prerequisites`: the dataset, model weights, a GPU) and fails
at once, naming each missing thing, if not.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from diysc import prerequisites
from diysc.config.load import load_params
from diysc.config.schema import ParamsError
from diysc.config.stage import load_stage_params
from diysc.data.download import DownloadError, prepare_spair
from diysc.data.local import prepare_local
from diysc.data.spair import DatasetError, SPairDataset
from diysc.data.synthetic import generate
from diysc.errors import clean_errors
from diysc.stage_options import params_options

ENV_LOCAL = prerequisites.SPAIR_ARCHIVE_ENV


@click.command()
@params_options
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Dataset root to write."
)
@click.option(
    "--source",
    "local",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help=f"Local SPair-71k archive or extracted directory (default: ${ENV_LOCAL}); "
    "replaces the download.",
)
@clean_errors
def main(params_path: str, overrides: tuple[str, ...], out: Path, local: Path | None) -> None:
    start = time.perf_counter()
    try:
        data = load_stage_params("data", params_path, overrides).data
        # The first stage checks what every later stage needs (weights, GPU), so a configuration
        # that cannot run here fails now; reading those params changes no output of this stage.
        prerequisites.require(
            load_params(params_path, overrides), local, in_experiment="DVC_EXP_NAME" in os.environ
        )
        if data.source != "spair" and local is not None:
            raise click.UsageError("--source applies to data.source=spair only")
        if data.source == "synthetic":
            generate(out, data.synthetic)
            counts = SPairDataset(out).check_layout()
        elif data.source == "local":
            counts = prepare_local(out, data.local)
        else:
            local = local or (Path(os.environ[ENV_LOCAL]) if os.environ.get(ENV_LOCAL) else None)
            counts = prepare_spair(out, data.url, data.sha256, local)
    except (ParamsError, DownloadError, DatasetError) as err:
        raise click.ClickException(str(err)) from None
    pairs = ", ".join(f"{split} {n}" for split, n in counts.items())
    click.echo(
        f"data: {data.source} dataset at {out}: pairs {pairs} ({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
