"""Dotted overrides of the config tree: ``{"model.block_size": 2, "pretrain.lr": 3e-4, "seed": 1}``.

Every key a study file, a ``--set`` or a stored ``config.json`` names is checked against the tree's
leaves (unknown keys are errors listing the valid ones) and its value against the field's annotation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import fields, replace
from typing import Any, get_type_hints

from xtra.config import TrialConfig, with_legacy_values


def leaf_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    keys: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys.update(leaf_keys(hint, f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = hint
    return keys


def valid_keys(cls: type = TrialConfig) -> list[str]:
    return sorted(leaf_keys(cls))


def coerce(key: str, hint: Any, value: Any) -> Any:
    """Check a value against a field's annotation; accept ints for floats and lists for tuples."""
    origin = getattr(hint, "__origin__", None)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 1e6 is an integer written in TOML's float syntax
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        ok = isinstance(value, (list, tuple))
        if ok:
            inner = hint.__args__[0]
            value = tuple(coerce(key, inner, v) for v in value)
    else:  # pragma: no cover - every field is one of the above
        ok = True
    if not ok:
        raise ValueError(f"{key}={value!r} has the wrong type (expected {getattr(hint, '__name__', hint)})")
    return value


def override(cfg: Any, updates: dict[str, Any]) -> Any:
    """Return a new config with dotted keys replaced; unknown keys are errors listing the valid ones."""
    leaves = leaf_keys(type(cfg))
    nested: dict[str, Any] = {}
    for key, value in updates.items():
        if key not in leaves:
            raise ValueError(f"unknown config key {key!r} (valid keys: {', '.join(sorted(leaves))})")
        value = coerce(key, leaves[key], value)
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _apply(cfg, nested)


def _apply(cfg: Any, nested: dict[str, Any]) -> Any:
    changes = {k: _apply(getattr(cfg, k), v) if isinstance(v, dict) else v for k, v in nested.items()}
    return replace(cfg, **changes)


def from_dict(data: dict[str, Any]) -> TrialConfig:
    """Inverse of ``TrialConfig.to_dict`` (e.g. a config stored beside a checkpoint); a key of
    LEGACY_VALUES that the stored dict predates reads as its legacy value."""
    data = with_legacy_values(data)
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(data, "")
    return override(TrialConfig(), flat)


