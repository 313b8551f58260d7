"""From raw dicts to checked `Params`: type coercion, `key=value` overrides, ablation variants."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal

import yaml

from diysc.config.schema import DATASETS, Params, ParamsError


def params_from_dict(raw: dict[str, Any]) -> Params:
    params = _build(Params, raw, "")
    params.check()
    _check_variants(params)
    return params


def _check_variants(params: Params) -> None:
    """Every variant must give valid params: a typo fails now, not in a variant's stage."""
    for group in ("label_variants", "adapter_variants"):
        for name, settings in getattr(params.ablation, group).items():
            raw = params.to_dict()
            where = f"ablation.{group}.{name}"
            try:
                for item in variant_overrides(settings):
                    apply_override(raw, item)
                params_from_dict({**raw, "ablation": {}})
            except ParamsError as err:
                raise ParamsError(f"'{where}': {err}") from None


def variant_overrides(settings: dict[str, Any], prefix: str = "") -> list[str]:
    """A variant's nested settings as `key=value` overrides (values in JSON, which YAML reads)."""
    items = []
    for key, value in settings.items():
        if isinstance(value, dict):
            items += variant_overrides(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the key must already exist (as `dvc exp run -S`)."""
    if "=" not in item:
        raise ParamsError(f"override {item!r}: expected key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"override {item!r}: unknown key '{'.'.join(parts[: i + 1])}'")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = yaml.safe_load(text)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"'{prefix or '<root>'}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ParamsError(f"unknown parameter '{key}' (known here: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names:
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ParamsError(f"'{key}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"'{key}' must be a list, got {type(value).__name__}")
        return tuple(_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict and typing.get_args(hint)[1] is Any:
        # the dataset entries: each takes its dataset's params (DATASETS)
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - set(DATASETS))
        if unknown:
            raise ParamsError(
                f"'{key}.{unknown[0]}': unknown dataset (known: {', '.join(sorted(DATASETS))})"
            )
        return {name: _build(DATASETS[name], raw, f"{key}.{name}") for name, raw in value.items()}
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping, got {type(value).__name__}")
        if origin is dict:  # dict[str, X]: each entry is an X; null drops it (as a preset may)
            item_type = typing.get_args(hint)[1]
            items = {k: v for k, v in value.items() if v is not None}
            return {str(k): _coerce(item_type, v, f"{key}.{k}") for k, v in items.items()}
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported parameter type for {key}")  # not used by any group
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"'{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"'{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {hint!r} for {key}")
