"""Loading a study: a shipped name, a .toml path or a study directory -> one validated ``Study``.

Shared presets (``studies/_presets.toml``) and the study's own presets are applied here, then
``--set``; everything is validated before anything launches (the format: ``xtra.studies.spec``).
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from xtra import studydir
from xtra.config import SIZES, TrialConfig, model_config, recorded_values
from xtra.overrides import coerce, override
from xtra.studies.isoflop import expand as expand_isoflop
from xtra.studies.parse import (
    _LEAVES,
    MAX_TRIALS,
    _apply_zip,
    _check_config_key,
    _flatten,
    _flatten_space,
    _is_tuple_key,
    _parse_axes,
    _parse_axis,
    _parse_search,
    _parse_seeds,
)
from xtra.studies.spec import (
    TOP_KEYS,
    Study,
    StudyError,
    _check_workers,
    _fmt,
    _one_line,
    _parse_resources,
    parse_sets,
)

# Shipped study files are package data: found through importlib.resources, wheel or editable install.
STUDIES_DIR = Path(str(resources.files("xtra.studies"))).resolve()  # the shipped files, links followed
SHARED_PRESETS = STUDIES_DIR / "_presets.toml"

def shipped_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml") if not p.name.startswith("_"))


def display_path(path: Path) -> str:
    """How errors name a file: relative to the working directory when possible."""
    path = path.resolve()
    for root in (Path.cwd(), STUDIES_DIR.parent):
        try:
            return str(path.relative_to(root.resolve()))
        except ValueError:
            continue
    return str(path)


def resolve_path(path_or_name: str | Path) -> Path:
    """A study name (``block-size``), a ``.toml`` path, or a study directory holding ``study.toml``."""
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        if (p / "study.toml").is_file():
            return p / "study.toml"
        raise StudyError(f"{p}: not a study directory (no study.toml in it)")
    if p.is_file():
        return p
    text = str(path_or_name)
    if p.suffix == ".toml" or "/" in text or "\\" in text:
        raise StudyError(f"{text}: no such study file")
    shipped = STUDIES_DIR / f"{text}.toml"
    if shipped.is_file() and not text.startswith("_"):
        return shipped
    raise StudyError(f"unknown study {text!r} (shipped: {', '.join(shipped_studies())}; "
                     f"or pass the path of a .toml study file)")


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{label}: invalid TOML: {_one_line(e)}") from None
    except OSError as e:
        raise StudyError(f"{label}: cannot read: {e.strerror}") from None


def _shared_presets() -> dict[str, Any]:
    if not SHARED_PRESETS.is_file():
        return {}
    raw = _read_toml(SHARED_PRESETS, display_path(SHARED_PRESETS))
    unknown = set(raw) - {"presets"}
    if unknown:
        raise StudyError(f"{display_path(SHARED_PRESETS)}: unknown key {sorted(unknown)[0]!r} (allowed: presets)")
    presets = raw.get("presets", {})
    if not isinstance(presets, dict):
        raise StudyError(f"{display_path(SHARED_PRESETS)}: presets must be a table")
    return presets


def preset_names(path_or_name: str | Path) -> list[str]:
    """Presets available to a study: the shared ones plus the study's own (none for a resolved spec)."""
    path = resolve_path(path_or_name)
    raw = _read_toml(path, display_path(path))
    if raw.get("preset"):
        return []
    own = raw.get("presets", {})
    names = list(_shared_presets())
    names += [n for n in (own if isinstance(own, dict) else {}) if n not in names]
    return names


def default_preset(path_or_name: str | Path) -> str | None:
    path = resolve_path(path_or_name)
    raw = _read_toml(path, display_path(path))
    if raw.get("preset"):
        return str(raw["preset"])
    return raw.get("default_preset") or None


def load_study(path_or_name: str | Path, preset: str | None = None, sets: dict[str, Any] | list[str] | None = None,
               seeds: int | list[int] | None = None) -> Study:
    """Load, layer and validate a study. Raises StudyError (a ValueError) with one line."""
    path = resolve_path(path_or_name)
    src = display_path(path)
    if path.parent == STUDIES_DIR and path.name != "study.toml":
        src = f"studies/{path.name}"
    raw = _read_toml(path, src)
    if not raw:
        raise StudyError(f"{src}: the study file is empty (expected at least [axes] or a preset; "
                         f"see `xtra study show block-size` for an example)")
    for k in raw:
        if k not in TOP_KEYS:
            raise StudyError(f"{src}: unknown key {k!r} (allowed: {', '.join(TOP_KEYS)})")

    name = raw.get("name", path.stem if path.name != "study.toml" else path.parent.name)
    description = raw.get("description", "")
    for key, v in (("name", name), ("description", description)):
        if not isinstance(v, str):
            raise StudyError(f"{src}: {key}={_fmt(v)}: must be a string")
    if not name.strip():
        raise StudyError(f"{src}: name={_fmt(name)}: a study needs a name (it names results, trials and reports)")

    # -- which preset ----------------------------------------------------------------------------
    resolved_preset = raw.get("preset") or None
    if resolved_preset is not None:  # a resolved study.toml: presets already applied
        if "presets" in raw:
            raise StudyError(f"{src}: a resolved spec (preset = {resolved_preset!r}) cannot also define [presets]")
        if preset not in (None, resolved_preset):
            raise StudyError(f"{src}: already resolved with preset {resolved_preset!r}; "
                             f"run the original study file to use preset {preset!r}")
        preset = resolved_preset
        layers: list[tuple[dict[str, Any], str]] = []
    else:
        own = raw.get("presets", {})
        if not isinstance(own, dict) or not all(isinstance(v, dict) for v in own.values()):
            raise StudyError(f"{src}: presets must be tables ([presets.<name>])")
        shared = _shared_presets()
        if preset is None:
            preset = raw.get("default_preset") or None
        available = list(shared) + [n for n in own if n not in shared]
        if preset is not None and preset not in available:
            raise StudyError(f"{src}: preset {preset!r} is not defined "
                             f"(allowed: {', '.join(available) if available else 'none'})")
        layers = []
        if preset is not None:
            if preset in shared:
                layers.append((shared[preset], f"{display_path(SHARED_PRESETS)}: presets.{preset}"))
            if preset in own:
                layers.append((own[preset], f"{src}: presets.{preset}"))
    shared_label = f"{display_path(SHARED_PRESETS)}: presets."

    # -- base layers --------------------------------------------------------------------------
    size = raw.get("size", "cpu-s")
    size_label = f"{src}: size"
    seeds_val: Any = raw.get("seeds", 1)
    seeds_label = f"{src}: seeds"
    base: dict[str, Any] = {}
    labels: dict[str, str] = {}  # key -> where its value came from (for error messages)
    base_node = raw.get("base", {})
    if not isinstance(base_node, dict):
        raise StudyError(f"{src}: base must be a table of dotted keys")
    for k, v in _flatten(base_node).items():
        base[k], labels[k] = v, f"{src}: base.{k}"
    axis_labels: dict[str, str] = {}
    axes = _parse_axes(raw.get("axes", {}), f"{src}: axes", axis_labels)
    res_node: dict[str, Any] = {}
    if "resources" in raw:
        _parse_resources(raw["resources"], f"{src}: resources")
        res_node.update(raw["resources"])
    search_node: dict[str, Any] | None = None
    if "search" in raw:
        if not isinstance(raw["search"], dict):
            raise StudyError(f"{src}: search must be a table")
        search_node = dict(raw["search"])
    search_label = f"{src}: search"

    # A study file means what it says: its own size and [base] win over the shared presets (which fill
    # in what it leaves out); its own [presets.*], --set and axes win over both. Each shared value not
    # applied is listed in one line (`xtra study show` prints them).
    kept: list[str] = []
    for layer, lab in layers:
        from_shared = lab.startswith(shared_label)
        for k, v in layer.items():
            if k == "size" and from_shared and "size" in raw:
                if v != size:
                    kept.append(f"size={_fmt(size)} from {src} kept ({lab}.size={_fmt(v)} not applied)")
            elif k == "size":
                size, size_label = v, f"{lab}.size"
            elif k == "seeds":
                seeds_val, seeds_label = v, f"{lab}.seeds"
            elif k == "axes":
                axes.update(_parse_axes(v, f"{lab}.axes", axis_labels))
            elif k == "resources":
                _parse_resources(v, f"{lab}.resources")
                res_node.update(v)
            elif k == "search":
                if not isinstance(v, dict):
                    raise StudyError(f"{lab}.search: must be a table")
                if search_node is None:
                    raise StudyError(f"{lab}.search: the study has no [search] to adjust")
                merged = {**search_node, **{kk: vv for kk, vv in v.items() if kk != "space"}}
                if "space" in v:
                    merged["space"] = {**_flatten_space(search_node.get("space", {})), **_flatten_space(v["space"])}
                search_node, search_label = merged, f"{lab}.search"
            else:
                for kk, vv in (_flatten(v, f"{k}.") if isinstance(v, dict) else {k: v}).items():
                    if from_shared and labels.get(kk, "").startswith(f"{src}: base."):
                        if vv != base[kk]:
                            kept.append(f"{kk}={_fmt(base[kk])} from {src} [base] kept ({lab}.{kk}={_fmt(vv)} "
                                        f"not applied)")
                        continue
                    base[kk], labels[kk] = vv, f"{lab}.{kk}"

    # -- --set ----------------------------------------------------------------------------------
    set_items = parse_sets(sets) if isinstance(sets, (list, tuple)) else dict(sets or {})
    set_texts: list[str] = []
    for key, value in set_items.items():
        lab = f"{src}: --set {key}"
        set_texts.append(f"{key}={_fmt(value)}")
        if key == "size":
            size, size_label = value, lab
        elif key == "seeds":
            seeds_val, seeds_label = value, lab
        elif key.startswith("search."):
            if search_node is None:
                raise StudyError(f"{lab}={_fmt(value)}: the study has no [search]")
            sub = key[len("search."):]
            if sub.startswith("space."):
                space = _flatten_space(search_node.get("space", {}))
                space[sub[len("space."):]] = value
                search_node = {**search_node, "space": space}
            else:
                search_node = {**search_node, sub: value}
            search_label = f"{src}: --set search"
        elif key.startswith("resources."):
            _parse_resources({key.split(".", 1)[1]: value}, f"{src}: --set resources")
            res_node[key.split(".", 1)[1]] = value
        elif key.startswith("axes."):
            axis_name = key[len("axes."):]
            axes[axis_name] = _parse_axis(axis_name, value if isinstance(value, list) else [value], lab)
            axis_labels[axis_name] = lab
        elif key in axes and not axes[key].zipped:
            single = not isinstance(value, list) or (_is_tuple_key(key) and not any(isinstance(v, list) for v in value))
            axes[key] = _parse_axis(key, [value] if single else value, lab)
            axis_labels[key] = lab
        else:
            zipped = [a.name for a in axes.values() if a.zipped and key in a.keys]
            if zipped:
                raise StudyError(f"{lab}={_fmt(value)}: {key} is swept by the zip group {zipped[0]!r}; "
                                 f"replace the group with --set axes.{zipped[0]}=[{{...}}, ...]")
            _check_config_key(key, f"{lab}={_fmt(value)}")
            base[key], labels[key] = value, lab
    if seeds is not None:
        seeds_val, seeds_label = seeds, f"{src}: --seeds"
    if "zip" in raw:
        axes = _apply_zip(axes, raw["zip"], f"{src}: zip", axis_labels)
    axes = expand_isoflop(axes, size, base, src, axis_labels)  # a `compute` axis -> points on isoFLOP lines

    # Keys that changed what a trial trains (xtra.config.LEGACY_VALUES): a resolved study.toml that lacks
    # one was run before it existed, so its trials keep the rule they were trained under; a study
    # resolved now records today's default, so it resumes under the same rule.
    swept = {k for axis in axes.values() for k in axis.keys}
    swept |= set(_flatten_space(search_node.get("space", {}))) if search_node else set()
    for key, value in recorded_values(stored="preset" in raw).items():
        if key not in base and key not in swept:
            base[key], labels[key] = value, f"{src}: {key} (recorded)"

    # -- validate -------------------------------------------------------------------------------
    if not isinstance(size, str) or size not in SIZES:
        raise StudyError(f"{size_label}={_fmt(size)}: unknown size (allowed: {', '.join(SIZES)})")
    seed_list = _parse_seeds(seeds_val, seeds_label)
    if "seed" in base:
        raise StudyError(f"{labels['seed']}={_fmt(base['seed'])}: set seeds with `seeds = ...` or --seeds, "
                         f"not the seed key")
    resources = _parse_resources(res_node, f"{src}: resources")
    search = _parse_search(search_node, search_label) if search_node is not None else None
    if search is not None:
        if axes:
            raise StudyError(f"{src}: axes.{next(iter(axes))}: a search study cannot also have axes "
                             f"(fix the value in [base] or add it to search.space as a choice)")
        if len(seed_list) != 1:
            raise StudyError(f"{seeds_label}={_fmt(seeds_val)}: a search study runs one seed")
    axis_keys: dict[str, str] = {}
    for axis in axes.values():
        for k in axis.keys:
            if k in axis_keys:
                raise StudyError(f"{src}: axes.{axis.name}: {k} is already swept by axis {axis_keys[k]!r}")
            axis_keys[k] = axis.name

    n_trials = len(seed_list) * math.prod(len(a.values) for a in axes.values())
    if n_trials > MAX_TRIALS:
        raise StudyError(f"{src}: {n_trials:,} trials ({len(seed_list)} seed(s) x the axes' values; allowed: at most "
                         f"{MAX_TRIALS:,} in one study)")
    study = Study(name=name, description=description, size=size, preset=preset, source=src, base=base,
                  axes=tuple(axes.values()), seeds=seed_list, resources=resources, search=search,
                  sets=tuple(set_texts), path=path, kept=tuple(kept))
    _validate(study, labels, axis_labels)
    _check_workers(study)
    if search is not None and search.halving:  # its rungs against the recipe (xtra.studies.halving)
        from xtra.studies.halving import check as check_halving

        check_halving(study)
    return study


def _validate(study: Study, labels: dict[str, str], axis_labels: dict[str, str]) -> None:
    """Build every config once so that a bad value fails here, with its origin, not inside a trial."""
    src = study.source
    try:
        root = TrialConfig(model=model_config(study.size))
    except ValueError as e:  # pragma: no cover - SIZES are tested
        raise StudyError(f"{src}: size={study.size!r}: {_one_line(e)}") from None
    # each key alone: unknown keys and wrong types name their own origin
    for key, value in study.base.items():
        label = labels.get(key, f"{src}: base.{key}")
        _check_config_key(key, f"{label}={_fmt(value)}")
        try:
            coerce(key, _LEAVES[key], value)
        except ValueError as e:
            raise StudyError(f"{label}={_fmt(value)}: {_one_line(e)}") from None
    # all together: blame the first overridden key the config's message names
    try:
        base = override(root, study.base)
    except ValueError as e:
        msg = _one_line(e)
        named = [k for k in re.findall(r"[a-z_]+\.[a-z_0-9]+", msg) if k in study.base]
        if named:
            key = named[0]
            raise StudyError(f"{labels.get(key, src + ': base.' + key)}={_fmt(study.base[key])}: {msg}") from None
        raise StudyError(f"{src}: base: {msg}") from None
    # each axis value alone on the base
    for axis in study.axes:
        for i, value in enumerate(axis.values):
            try:
                override(base, value)
            except ValueError as e:
                lab = axis_labels.get(axis.name, f"{src}: axes.{axis.name}")
                shown = f"={_fmt(value[axis.name])}" if not axis.zipped else f"[{i}]={_fmt(value)}"
                raise StudyError(f"{lab}{shown}: {_one_line(e)}") from None
    # every combination (e.g. a width that only fails with one head count); no two alike
    hashes: dict[str, str] = {}
    for seed in study.seeds:
        for combo in itertools.product(*(axis.values for axis in study.axes)):
            params: dict[str, Any] = {}
            for value in combo:
                params.update(value)
            try:
                cfg = override(base, {**params, "seed": seed})
            except ValueError as e:
                shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
                raise StudyError(f"{src}: axes {shown}: {_one_line(e)}") from None
            h = cfg.config_hash()
            if h in hashes:
                raise StudyError(f"{src}: axes {', '.join(f'{k}={_fmt(v)}' for k, v in params.items())} (seed {seed}) "
                                 f"makes the same config as {hashes[h]} (remove the duplicate value)")
            hashes[h] = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) + f" (seed {seed})"
    # a search space's corners and choices
    if study.search is not None:
        for key, dom in study.search.space.items():
            probes = dom["values"] if dom["type"] == "choice" else [dom["low"], dom["high"]]
            for v in probes:
                try:
                    override(base, {key: v})
                except ValueError as e:
                    raise StudyError(f"{src}: search.space.{key}={_fmt(v)}: {_one_line(e)}") from None


def load_all(preset: str | None = None) -> dict[str, Study]:
    return {name: load_study(name, preset=preset) for name in shipped_studies()}



def load_study_dir(study_dir: Path) -> Study:
    """The resolved spec a study directory was last run with."""
    return load_study(studydir.study_toml(study_dir))
