"""Parsing the parts of a study file: dotted keys, axes and zip groups, seeds, the search space, --set."""

from __future__ import annotations

import difflib
import math
from typing import Any

from xtra.config import TrialConfig
from xtra.overrides import leaf_keys, valid_keys
from xtra.studies.spec import (
    METRICS,
    SAMPLERS,
    SEARCH_KEYS,
    SEARCH_KINDS,
    SPACE_TYPES,
    Axis,
    Search,
    StudyError,
    literal,
)


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"block_size": 2}}`` and ``{"model.block_size": 2}`` both -> ``{"model.block_size": 2}``."""
    flat: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, f"{key}."))
        else:
            flat[key] = v
    return flat


CONFIG_LEAVES = leaf_keys(TrialConfig)


def check_config_key(key: str, label: str) -> None:
    if key not in CONFIG_LEAVES:
        close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.8)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise StudyError(f"{label}: unknown config key {key!r} ({hint}valid keys: {', '.join(valid_keys())})")


def is_tuple_key(key: str) -> bool:
    return getattr(CONFIG_LEAVES.get(key), "__origin__", None) is tuple


def parse_axis(name: str, values: Any, label: str) -> Axis:
    if name == "compute":  # a derived axis of isoFLOP budgets, expanded by xtra.studies.isoflop
        from xtra.studies.isoflop import parse_compute_axis

        return parse_compute_axis(values, label)
    if not isinstance(values, list) or not values:
        raise StudyError(f"{label}={literal(values)}: an axis must be a non-empty list of values")
    if all(isinstance(v, dict) for v in values):  # a zip group: each value is a table of dotted keys
        if name in CONFIG_LEAVES:
            raise StudyError(f"{label}: a zip group needs its own name, not the config key {name!r} "
                             f"(e.g. width = [{{ \"model.width\" = 64, \"model.num_heads\" = 2 }}])")
        rows = [flatten(v) for v in values]
        keys = tuple(rows[0])
        if not keys:
            raise StudyError(f"{label}: zip group values must set at least one key")
        for i, row in enumerate(rows):
            if tuple(row) != keys:
                raise StudyError(f"{label}[{i}]={literal(values[i])}: every value of a zip group must set the "
                                 f"same keys ({', '.join(keys)})")
            for k in keys:
                check_config_key(k, f"{label}[{i}]")
        return Axis(name, keys, tuple(rows))
    if any(isinstance(v, dict) for v in values):
        raise StudyError(f"{label}={literal(values)}: mixes tables and plain values")
    check_config_key(name, label)
    if name == "seed":
        raise StudyError(f"{label}: sweep seeds with `seeds = N` (or a list), not an axis")
    return Axis(name, (name,), tuple({name: v} for v in values))


def parse_axes(node: Any, label: str, labels: dict[str, str] | None = None) -> dict[str, Axis]:
    """Parse an [axes] table; ``labels`` (if given) records where each axis came from."""
    if not isinstance(node, dict):
        raise StudyError(f"{label}: must be a table of axes")
    axes: dict[str, Axis] = {}

    def walk(n: dict[str, Any], prefix: str) -> None:
        for k, v in n.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, f"{key}.")
            else:
                axes[key] = parse_axis(key, v, f"{label}.{key}")
                if labels is not None:
                    labels[key] = f"{label}.{key}"

    walk(node, "")
    return axes


def apply_zip(axes: dict[str, Axis], node: Any, label: str, axis_labels: dict[str, str]) -> dict[str, Axis]:
    """``[zip] width = ["model.width", "model.num_heads"]``: those one-key axes move together."""
    if not isinstance(node, dict):
        raise StudyError(f"{label}: must be a table of name -> [dotted keys]")
    out = dict(axes)
    for name, keys in node.items():
        lab = f"{label}.{name}"
        if not isinstance(keys, list) or len(keys) < 1 or not all(isinstance(k, str) for k in keys):
            raise StudyError(f"{lab}={literal(keys)}: must be a list of swept dotted keys")
        missing = [k for k in keys if k not in out or out[k].zipped]
        if missing:
            raise StudyError(f"{lab}: {missing[0]} is not a one-key axis in [axes]")
        lengths = {k: len(out[k].values) for k in keys}
        if len(set(lengths.values())) != 1:
            shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise StudyError(f"{lab}: zipped axes need equally many values ({shown})")
        rows = tuple({k: out[k].values[i][k] for k in keys} for i in range(lengths[keys[0]]))
        first = list(out).index(keys[0])
        items = list(out.items())
        items.insert(first, (name, Axis(name, tuple(keys), rows)))
        out = {n: a for n, a in items if n not in keys}
        axis_labels[name] = lab
    return out


MAX_SEEDS = 1000  # seeds of one study (a count is checked before range() is built)
MAX_TRIALS = 10_000  # trials of one grid study, checked from the axes' lengths before expanding
MAX_SEARCH_SAMPLES = 100_000


def parse_seeds(value: Any, label: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise StudyError(f"{label}={literal(value)}: must be a count or a list of ints")
    if isinstance(value, int):
        if value < 1:
            raise StudyError(f"{label}={value}: must be >= 1")
        if value > MAX_SEEDS:
            raise StudyError(f"{label}={value}: too many seeds (allowed: at most {MAX_SEEDS})")
        return tuple(range(value))
    if isinstance(value, list) and len(value) > MAX_SEEDS:
        raise StudyError(f"{label}: {len(value)} seeds (allowed: at most {MAX_SEEDS})")
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            raise StudyError(f"{label}={literal(value)}: seeds repeat")
        return tuple(value)
    raise StudyError(f"{label}={literal(value)}: must be a count or a non-empty list of ints")



def parse_search(node: Any, label: str) -> Search:
    if not isinstance(node, dict):
        raise StudyError(f"{label}: must be a table")
    for k in node:
        if k not in SEARCH_KEYS:
            raise StudyError(f"{label}.{k}: unknown key (allowed: {', '.join(SEARCH_KEYS)})")
    kind = node.get("kind", "optuna")
    if kind not in SEARCH_KINDS:
        allowed = ", ".join(map(literal, SEARCH_KINDS))
        raise StudyError(f"{label}.kind={literal(kind)}: unknown search (allowed: {allowed})")
    metric = node.get("metric", "linear_top1")
    if metric not in METRICS:
        raise StudyError(f"{label}.metric={literal(metric)}: unknown metric (allowed: {', '.join(METRICS)})")
    mode = node.get("mode", METRICS[metric])
    if mode not in ("max", "min"):
        raise StudyError(f"{label}.mode={literal(mode)}: must be \"max\" or \"min\"")
    num_samples = node.get("num_samples", 8)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or not 1 <= num_samples <= MAX_SEARCH_SAMPLES:
        raise StudyError(f"{label}.num_samples={literal(num_samples)}: must be an int from 1 to {MAX_SEARCH_SAMPLES}")
    asha = node.get("asha", False)
    if not isinstance(asha, bool):
        raise StudyError(f"{label}.asha={literal(asha)}: must be true or false")
    for k in ("grace_samples", "seed"):
        v = node.get(k, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise StudyError(f"{label}.{k}={literal(v)}: must be an int >= 0")
    sampler = node.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        allowed = ", ".join(map(literal, SAMPLERS))
        raise StudyError(f"{label}.sampler={literal(sampler)}: unknown sampler (allowed: {allowed})")
    eta, rungs = _parse_halving(node, kind, label)
    if kind == "halving" and asha:
        raise StudyError(f"{label}.asha=true: a halving search stops configurations at its own rungs "
                         f"(allowed with kind = \"halving\": asha = false)")
    space_node = node.get("space")
    if not isinstance(space_node, dict) or not space_node:
        raise StudyError(f"{label}.space: must be a non-empty table of dotted key -> {{type, low, high, values}}")
    space: dict[str, dict[str, Any]] = {}
    for key, dom in flatten_space(space_node).items():
        lab = f"{label}.space.{key}"
        check_config_key(key, lab)
        if not isinstance(dom, dict):
            raise StudyError(f"{lab}={literal(dom)}: must be a table {{type, low, high}} or "
                             f"{{type = \"choice\", values}}")
        for k in dom:
            if k not in ("type", "low", "high", "values"):
                raise StudyError(f"{lab}.{k}: unknown key (allowed: type, low, high, values)")
        typ = dom.get("type")
        if typ not in SPACE_TYPES:
            raise StudyError(f"{lab}.type={literal(typ)}: unknown type (allowed: {', '.join(SPACE_TYPES)})")
        if typ == "choice":
            values = dom.get("values")
            if not isinstance(values, list) or not values or "low" in dom or "high" in dom:
                raise StudyError(f"{lab}: a choice needs a non-empty `values` list (and no low/high)")
        else:
            lo, hi = dom.get("low"), dom.get("high")
            want = int if typ == "int" else (int, float)
            for name, v in (("low", lo), ("high", hi)):
                if not isinstance(v, want) or isinstance(v, bool):
                    raise StudyError(f"{lab}.{name}={literal(v)}: must be {'an int' if typ == 'int' else 'a number'}")
            if not lo < hi:
                raise StudyError(f"{lab}: low={literal(lo)} must be < high={literal(hi)}")
            if typ == "loguniform" and lo <= 0:
                raise StudyError(f"{lab}.low={literal(lo)}: loguniform needs low > 0")
            if "values" in dom:
                raise StudyError(f"{lab}.values: only a choice takes values")
        space[key] = dict(dom)
    if sampler == "grid":
        open_keys = [k for k, d in space.items() if d["type"] != "choice"]
        if open_keys:
            raise StudyError(f"{label}.space.{open_keys[0]}: sampler = \"grid\" needs every key to be a choice "
                             f"(e.g. {{ type = \"choice\", values = [...] }})")
        combinations = math.prod(len(d["values"]) for d in space.values())
        if "num_samples" not in node:
            num_samples = combinations
        elif num_samples > combinations:
            raise StudyError(f"{label}.num_samples={num_samples}: the grid has only {combinations} combinations")
    return Search(kind=kind, metric=metric, mode=mode, num_samples=num_samples, space=space, asha=asha,
                  grace_samples=node.get("grace_samples", 0), seed=node.get("seed", 0), sampler=sampler,
                  eta=eta, rungs=rungs)


MAX_RUNGS = 16


def _parse_halving(node: dict[str, Any], kind: str, label: str) -> tuple[int, tuple[int, ...]]:
    """``eta`` and ``rungs`` of a halving search (the budgets' fit to the study's recipe is checked with
    the base config, in ``xtra.studies.halving.check``)."""
    if kind != "halving":
        for k in ("eta", "rungs"):
            if k in node:
                raise StudyError(f"{label}.{k}: only a halving search takes {k} (set kind = \"halving\")")
        return 3, ()
    eta = node.get("eta", 3)
    if not isinstance(eta, int) or isinstance(eta, bool) or not 2 <= eta <= 100:
        raise StudyError(f"{label}.eta={literal(eta)}: must be an int from 2 to 100 (the top 1/eta go on)")
    rungs = node.get("rungs", [])
    if not isinstance(rungs, list) or len(rungs) > MAX_RUNGS or not all(
            isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in rungs):
        raise StudyError(f"{label}.rungs={literal(rungs)}: must be a list of at most {MAX_RUNGS} sample budgets > 0 "
                         f"(or left out: pretrain.samples / eta^i)")
    if any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise StudyError(f"{label}.rungs={literal(rungs)}: budgets must increase")
    return eta, tuple(rungs)


def flatten_space(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Space entries are tables themselves: stop flattening at a table holding `type`."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "type" not in v:
            out.update(flatten_space(v, f"{key}."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------------
# --set parsing


