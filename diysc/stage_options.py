"""Options every stage script shares: the params file, overrides, and named variants."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import click
import yaml

from diysc import runtime
from diysc.config import overrides as config_overrides


def params_options(func):
    """Add `--params PATH`, repeatable `--set key=value`, and `--variant FILE:GROUP.NAME`.

    A variant is a named set of settings in a YAML file: the ablations' one definition is the
    `ablation` group of params.yaml (`--variant params.yaml:ablation.label_variants.naive`). Its
    settings are applied before any `--set`. The function receives them all as `overrides`
    (passed to `load_stage_params`).
    """

    runtime.apply_threads()  # every stage script: DIYSC_THREADS, a runtime setting

    @functools.wraps(func)
    def with_variant(*args, variant: str | None = None, overrides=(), **kwargs):
        return func(*args, overrides=(*variant_overrides(variant), *overrides), **kwargs)

    command = click.option(
        "--variant",
        default=None,
        metavar="FILE:GROUP.NAME",
        help="Apply a named variant's settings (params.yaml:ablation.label_variants.naive).",
    )(with_variant)
    command = click.option(
        "--set", "overrides", multiple=True, help="key=value override (as dvc exp run -S)."
    )(command)
    return click.option(
        "--params", "params_path", default="params.yaml", show_default=True, help="Params file."
    )(command)


def variant_overrides(spec: str | None) -> tuple[str, ...]:
    """`FILE:GROUP.NAME` → the variant's settings as `key=value` overrides."""
    if not spec:
        return ()
    path, sep, name = spec.partition(":")
    if not sep or not name:
        raise click.BadParameter(f"{spec!r}: expected FILE:GROUP.NAME", param_hint="--variant")
    try:
        node = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise click.BadParameter(f"{path}: {err}", param_hint="--variant") from None
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise click.BadParameter(f"{path}: no variant '{name}'", param_hint="--variant")
        node = node[part]
    if not isinstance(node, Mapping):
        raise click.BadParameter(
            f"{path}: variant '{name}' must map params to values", param_hint="--variant"
        )
    return tuple(config_overrides.variant_overrides(dict(node)))


def checkpoints_option(func):
    """`--checkpoints DIR`: resumable training state, kept outside the DVC outputs."""
    return click.option(
        "--checkpoints",
        type=click.Path(path_type=Path),
        required=True,
        help="Resume checkpoints (outside DVC outs).",
    )(func)


def batch_size_option(envvar: str, what: str):
    """`--batch-size N` (default 4, or the environment variable): a runtime setting, not a param."""
    return click.option(
        "--batch-size",
        default=4,
        show_default=True,
        envvar=envvar,
        help=f"{what} (runtime setting).",
    )


def dataset_name_option(func):
    """`--dataset-name NAME`: the `datasets` entry a per-dataset stage (`<stage>@NAME`) works on;
    default: the params' `train_dataset`."""
    return click.option(
        "--dataset-name",
        default=None,
        metavar="NAME",
        help="The dataset (an entry of `datasets` in params; default: train_dataset).",
    )(func)
