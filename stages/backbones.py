"""DVC stage `backbones`: what the configured backbones run, as code digests (models/backbones.json).

The features stage imports only the backbones its params configure (`diysc.backbones.registry`
imports them on use), so its static import closure, which is what its DVC code deps list, does not
hold them. This stage's code deps are every registered backbone and builder module (`CODE_DEPS`,
which `tests/test_stage_deps.py` adds to its import closure); it writes, for the configured
backbones only, a digest of the code each runs (`registry.code`: the backbone module's import
closure, and its builder's for a model built locally, such as the trained stand-in, whose closure
holds the synthetic renderer). The features stage depends on this file: editing a configured
backbone's code changes it and reruns the extraction; editing any other backbone reruns only this
stage (a second), which writes the same bytes, so DVC goes no further.
"""

from __future__ import annotations

import click

from diysc.backbones import registry
from diysc.config.stage import load_stage_params
from diysc.errors import clean_errors
from diysc.io import write_json
from diysc.stage_options import params_options

CODE_DEPS = registry.all_modules()


def manifest(backbones) -> dict:
    """models/backbones.json of `features.backbones`."""
    return {
        "backbones": [
            {"name": name, "model": b.model, "code": registry.code(name, b.model)}
            for name, b in backbones.items()
        ]
    }


@click.command()
@params_options
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@clean_errors
def main(params_path, overrides, out):
    params = load_stage_params("backbones", params_path, overrides)
    for name in params.features.backbones:
        registry.registered(name)  # an unknown name is one line naming the known ones
    write_json(out, manifest(params.features.backbones))
    click.echo(f"backbones: {', '.join(params.features.backbones)} -> {out}")


if __name__ == "__main__":
    main()
