"""params.yaml is generated: Hydra composes it from `conf/`, and a hand edit of it is refused."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from diysc.config.schema import ParamsError


def compose(conf_dir: str | Path = "conf", overrides: typing.Sequence[str] = ()) -> dict[str, Any]:
    """Compose `conf/` with Hydra exactly as DVC does for `dvc exp run` (the source of params.yaml)."""
    return yaml.safe_load(compose_text(conf_dir, overrides, header=False))


# Marks the committed params.yaml as generated. DVC's own recomposition (`dvc exp run`) writes the
# bare YAML without it, so a file that carries it is the committed one and must equal the
# composition of conf/: a difference is a hand edit, which the next `dvc exp run` would revert.
GENERATED_HEADER = """\
# GENERATED from conf/ by Hydra composition (DVC's hydra.enabled): do not edit by hand.
# Change values in conf/config.yaml or conf/preset/<preset>.yaml, or per experiment with
# `dvc exp run -S key=value`; `dvc exp run` recomposes this file (without this header), and
# `diysc compose-params` regenerates it after an edit of conf/.
"""


def compose_text(
    conf_dir: str | Path = "conf", overrides: typing.Sequence[str] = (), header: bool = True
) -> str:
    """params.yaml's text: the composition of `conf_dir`, dumped as DVC dumps it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return (GENERATED_HEADER if header else "") + OmegaConf.to_yaml(cfg)


def check_not_hand_edited(path: Path, raw: dict[str, Any]) -> None:
    """Refuse a params file that carries the generated header but differs from `conf/`."""
    conf = path.resolve().parent / "conf"
    if not (conf / "config.yaml").is_file():
        return
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return
    if first != GENERATED_HEADER.splitlines()[0]:
        return  # written by DVC's composition (an experiment), not the committed file
    composed = compose(conf)
    changed = sorted(_differences(raw, composed))
    if changed:
        shown = ", ".join(changed[:5]) + (
            f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise ParamsError(
            f"{path}: hand-edited ({shown} differ from the composition of {conf}/); it is "
            f"generated and `dvc exp run` would silently revert the edit. Make the change in "
            f"{conf}/ (then `diysc compose-params`), or use `dvc exp run -S key=value`"
        )


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            found += _differences(a.get(key), b.get(key), name) if key in a and key in b else [name]
        return found
    return [] if a == b else [prefix or "<root>"]
