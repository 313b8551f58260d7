"""Stage-scoped access: a stage may read only the params its dvc.yaml entry lists."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from diysc.config.load import load_params
from diysc.config.schema import Params, ParamsError

ALWAYS_READABLE = ("preset", "tracking")  # labels and the MLflow mirror: never change a result


class StageParams:
    """A stage's copy of its params: the keys its dvc.yaml entry declares, and nothing else.

    Reading any other key raises, naming the stage and the key, so `params.cycle == "relaxed"`,
    `params.cycle in (...)` or `f"{params.cycle}"` cannot silently use an untracked value. A group of
    which only some keys are declared (`sphere.hidden`) is itself a `StageParams`; using such a
    group as a whole (`==`, `in`, `bool`, printing it) would read undeclared keys, so it raises too.
    """

    __slots__ = ("_stage", "_key", "_values")

    def __init__(self, stage: str, key: str, values: dict[str, Any]):
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_key", key)  # dotted key of this group; "" for all params
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # protocol probes (copy, pickle) and unset slots: not params
            raise AttributeError(name)
        if name in self._values:
            return self._values[name]
        raise self._undeclared(f"{self._key}.{name}" if self._key else name)

    def __getitem__(self, name: str) -> Any:  # a mapping group: the dataset entries
        return self.__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"stage params are read-only (set '{name}' through params.yaml)")

    def __repr__(self) -> str:
        return f"StageParams({self._stage!r}, holds {sorted(self._values)})"

    def _whole(self, *_args: Any) -> Any:
        raise self._undeclared(self._key or "<all params>")

    __eq__ = __ne__ = __bool__ = __contains__ = __iter__ = __len__ = __str__ = __format__ = _whole
    __hash__ = None

    def _undeclared(self, key: str) -> ParamsError:
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


def restrict(params: Params, declared: typing.Iterable[str], stage: str) -> StageParams:
    """A copy of `params` holding only the `declared` keys (and `ALWAYS_READABLE`)."""
    return _copy(params, set(declared) | set(ALWAYS_READABLE), stage, "")


def _copy(group: Any, declared: set[str], stage: str, key: str) -> Any:
    """`group` (a params dataclass or a mapping) cut down to `declared`, keys relative to it."""
    is_group = dataclasses.is_dataclass(group) or key == "datasets"  # entries: by name, as groups
    items = (
        {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}
        if dataclasses.is_dataclass(group)
        else group
    )
    values = {}
    for name, value in items.items():
        inner = {d.split(".", 1)[1] for d in declared if d.startswith(f"{name}.")}
        if name in declared:
            values[name] = value
        elif inner:
            values[name] = _copy(value, inner, stage, f"{key}.{name}" if key else name)
    return StageParams(stage, key, values) if is_group else values


def load_stage_params(
    stage: str,
    path: str | Path = "params.yaml",
    overrides: typing.Sequence[str] = (),
    dvc_yaml: str | Path | None = None,
) -> StageParams:
    """Load params for `stage`, exposing only the keys its entry in the root dvc.yaml declares."""
    params = load_params(path, overrides)
    dvc_yaml = Path(dvc_yaml) if dvc_yaml else Path(path).resolve().parent / "dvc.yaml"
    return restrict(params, declared_params(stage, dvc_yaml), stage)


def load_dataset_stage_params(
    stage: str,
    dataset: str | None,
    path: str | Path = "params.yaml",
    overrides: typing.Sequence[str] = (),
) -> tuple[str, StageParams]:
    """`load_stage_params` for a stage the root dvc.yaml runs once per dataset (`<stage>@<name>`):
    the dataset's name (`dataset`, or `train_dataset` when None) and the params that entry
    declares."""
    params = load_params(path, overrides)
    name = dataset or params.train_dataset
    if name not in params.datasets:
        known = ", ".join(params.datasets)
        raise ParamsError(f"{path}: no dataset '{name}' under datasets (here: {known})")
    entry = f"{stage}@{name}"
    dvc_yaml = Path(path).resolve().parent / "dvc.yaml"
    return name, restrict(params, declared_params(entry, dvc_yaml), entry)
