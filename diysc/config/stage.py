"""Stage-scoped access: a stage may read only the params its dvc.yaml entry lists."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from diysc.config.load import load_params
from diysc.config.schema import Params, ParamsError

ALWAYS_READABLE = ("preset", "tracking")  # labels and the MLflow mirror: never change a result


class UndeclaredParam:
    """Stands in for a param a stage did not declare; any use is an error naming the key.

    With `allowed`, it wraps a group of which only those keys were declared (`sphere.hidden`).
    """

    def __init__(
        self, key: str, stage: str, group: Any = None, allowed: frozenset[str] = frozenset()
    ):
        self._key, self._stage, self._group, self._allowed = key, stage, group, allowed

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._allowed:
            return getattr(self._group, name)
        raise self._error(f"{self._key}.{name}")

    def __bool__(self) -> bool:
        raise self._error(self._key)

    def _error(self, key: str) -> ParamsError:
        return ParamsError(
            f"stage '{self._stage}' reads '{key}', which its dvc.yaml entry does not list in params"
        )


def declared_params(stage: str, dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """The params.yaml keys `stage` lists under `params:`, as DVC itself resolves the entry
    (templating and `foreach`/`matrix` expanded), so the two can never disagree."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage.exceptions import StageNotFound

    dvc_yaml = Path(dvc_yaml).resolve()
    if not dvc_yaml.is_file():
        raise ParamsError(f"{dvc_yaml}: not found (the stages' params are declared there)")
    try:
        with Repo(str(dvc_yaml.parent), uninitialized=True) as repo:
            found = repo.stage.load_one(path=str(dvc_yaml), name=stage)
    except StageNotFound:
        raise ParamsError(f"{dvc_yaml}: no stage '{stage}'") from None
    except DvcException as err:
        raise ParamsError(f"{dvc_yaml}: {' '.join(str(err).split())}") from None
    return [
        key
        for dep in found.deps
        if isinstance(dep, ParamsDependency) and Path(dep.def_path).name == "params.yaml"
        for key in dep.params
    ]


def restrict(params: Params, declared: typing.Iterable[str], stage: str) -> Params:
    """A copy of `params` where every key outside `declared` raises when read."""
    declared = set(declared) | set(ALWAYS_READABLE)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        if f.name in declared:
            continue
        value = getattr(params, f.name)
        inner = frozenset(d.split(".", 1)[1] for d in declared if d.startswith(f"{f.name}."))
        changes[f.name] = UndeclaredParam(f.name, stage, value, inner)
    return dataclasses.replace(params, **changes)


def load_stage_params(
    stage: str,
    path: str | Path = "params.yaml",
    overrides: typing.Sequence[str] = (),
    dvc_yaml: str | Path | None = None,
) -> Params:
    """Load params for `stage`, exposing only the keys its entry in the root dvc.yaml declares."""
    params = load_params(path, overrides)
    dvc_yaml = Path(dvc_yaml) if dvc_yaml else Path(path).resolve().parent / "dvc.yaml"
    return restrict(params, declared_params(stage, dvc_yaml), stage)
