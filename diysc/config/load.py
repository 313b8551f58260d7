"""Reading a params file: the hand-edit check, `key=value` overrides, then the typed checks."""

from __future__ import annotations

import typing
from pathlib import Path

import yaml

from diysc.config.compose import check_not_hand_edited
from diysc.config.overrides import apply_override, params_from_dict
from diysc.config.schema import Params, ParamsError


def load_params(path: str | Path = "params.yaml", overrides: typing.Sequence[str] = ()) -> Params:
    """Read and validate a params file; `overrides` are `dotted.key=value` strings (YAML values)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    check_not_hand_edited(path, raw)
    for item in overrides:
        apply_override(raw, item)
    try:
        return params_from_dict(raw)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None
