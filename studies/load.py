"""Loading a study: a shipped name, a .toml path or a study directory -> one validated ``Study``.

Shared presets (``studies/_presets.toml``) and the study's own presets are applied here, then
``--set``; everything is validated before anything launches (the format: ``xtra.studies.spec``).
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from xtra import studydir
from xtra.config import SIZES, TrialConfig, model_config, recorded_values
from xtra.overrides import coerce, override
from xtra.studies.isoflop import expand as expand_isoflop
from xtra.studies.parse import (
    CONFIG_LEAVES,
    MAX_TRIALS,
    apply_zip,
    check_config_key,
    flatten,
    flatten_space,
    is_tuple_key,
    parse_axes,
    parse_axis,
    parse_search,
    parse_seeds,
)
from xtra.studies.spec import (
    TOP_KEYS,
    Axis,
    Study,
    StudyError,
    check_workers,
    literal,
    one_line,
    parse_resources,
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
        if (p / studydir.STUDY_TOML).is_file():
            return p / studydir.STUDY_TOML
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
        raise StudyError(f"{label}: invalid TOML: {one_line(e)}") from None
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


@dataclass
class _Draft:
    """A study while its layers are applied (the file, its preset, --set): each value with where it came
    from, so an error names the layer that set it."""

    src: str
    size: Any = "cpu-s"
    size_label: str = ""
    seeds: Any = 1
    seeds_label: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # dotted key -> where its value came from
    axes: dict[str, Axis] = field(default_factory=dict)
    axis_labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] | None = None
    search_label: str = ""
    kept: list[str] = field(default_factory=list)
    set_texts: list[str] = field(default_factory=list)


def load_study(path_or_name: str | Path, preset: str | None = None, sets: dict[str, Any] | list[str] | None = None,
               seeds: int | list[int] | None = None) -> Study:
    """Load, layer and validate a study. Raises StudyError (a ValueError) with one line."""
    path = resolve_path(path_or_name)
    study, draft = _parse(path, preset, sets, seeds)
    _check_runnable(study, draft)
    return study


def read_study_dir(study_dir: str | Path) -> Study | None:
    """The resolved spec in a study directory's study.toml as a ``Study`` (None when there is none): parsed
    and layered like ``load_study``, without building every trial's config, which the runner checked when
    it wrote the file. What a report reads (``xtra.reports.collect``): it shows a study, it does not run it."""
    path = Path(study_dir) / studydir.STUDY_TOML
    if not path.is_file():
        return None
    return _parse(path, None, None, None)[0]


def _parse(path: Path, preset: str | None, sets: dict[str, Any] | list[str] | None,
           seeds: int | list[int] | None) -> tuple[Study, _Draft]:
    """A study file (any path), its preset, --set and --seeds -> the typed ``Study``, in the precedence of
    ``xtra.studies.spec``; the draft keeps where each value came from, for the checks that follow."""
    src = display_path(path)
    if path.parent == STUDIES_DIR and path.name != studydir.STUDY_TOML:
        src = f"studies/{path.name}"
    raw = _read_study_file(path, src)
    name, description = _name_and_description(raw, path, src)
    preset, layers = _choose_layers(raw, preset, src)
    draft = _read_own(raw, src)
    _apply_layers(draft, layers, raw)
    _apply_sets(draft, parse_sets(sets) if isinstance(sets, (list, tuple)) else dict(sets or {}))
    if seeds is not None:
        draft.seeds, draft.seeds_label = seeds, f"{src}: --seeds"
    if "zip" in raw:
        draft.axes = apply_zip(draft.axes, raw["zip"], f"{src}: zip", draft.axis_labels)
    # a `compute` axis -> points on isoFLOP lines
    draft.axes = expand_isoflop(draft.axes, draft.size, draft.base, src, draft.axis_labels)
    _record_legacy_values(draft, stored="preset" in raw)
    return _build(draft, name, description, preset, path), draft


def _read_study_file(path: Path, src: str) -> dict[str, Any]:
    raw = _read_toml(path, src)
    if not raw:
        raise StudyError(f"{src}: the study file is empty (expected at least [axes] or a preset; "
                         f"see `xtra study show block-size` for an example)")
    for k in raw:
        if k not in TOP_KEYS:
            raise StudyError(f"{src}: unknown key {k!r} (allowed: {', '.join(TOP_KEYS)})")
    return raw


def _name_and_description(raw: dict[str, Any], path: Path, src: str) -> tuple[str, str]:
    name = raw.get("name", path.stem if path.name != studydir.STUDY_TOML else path.parent.name)
    description = raw.get("description", "")
    for key, v in (("name", name), ("description", description)):
        if not isinstance(v, str):
            raise StudyError(f"{src}: {key}={literal(v)}: must be a string")
    if not name.strip():
        raise StudyError(f"{src}: name={literal(name)}: a study needs a name (it names results, trials and reports)")
    return name, description


def _choose_layers(raw: dict[str, Any], preset: str | None, src: str
                   ) -> tuple[str | None, list[tuple[dict[str, Any], str]]]:
    """Which preset, and the preset tables to apply over the file (shared first, then the study's own);
    a resolved study.toml names its preset and has none left to apply."""
    resolved_preset = raw.get("preset") or None
    if resolved_preset is not None:  # a resolved study.toml: presets already applied
        if "presets" in raw:
            raise StudyError(f"{src}: a resolved spec (preset = {resolved_preset!r}) cannot also define [presets]")
        if preset not in (None, resolved_preset):
            raise StudyError(f"{src}: already resolved with preset {resolved_preset!r}; "
                             f"run the original study file to use preset {preset!r}")
        return resolved_preset, []
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
    return preset, layers


def _read_own(raw: dict[str, Any], src: str) -> _Draft:
    """The study file's own values: size, seeds, [base], [axes], [resources], [search]."""
    draft = _Draft(src=src, size=raw.get("size", "cpu-s"), size_label=f"{src}: size", seeds=raw.get("seeds", 1),
                   seeds_label=f"{src}: seeds", search_label=f"{src}: search")
    base_node = raw.get("base", {})
    if not isinstance(base_node, dict):
        raise StudyError(f"{src}: base must be a table of dotted keys")
    for k, v in flatten(base_node).items():
        draft.base[k], draft.labels[k] = v, f"{src}: base.{k}"
    draft.axes = parse_axes(raw.get("axes", {}), f"{src}: axes", draft.axis_labels)
    if "resources" in raw:
        parse_resources(raw["resources"], f"{src}: resources")
        draft.resources.update(raw["resources"])
    if "search" in raw:
        if not isinstance(raw["search"], dict):
            raise StudyError(f"{src}: search must be a table")
        draft.search = dict(raw["search"])
    return draft


def _apply_layers(draft: _Draft, layers: list[tuple[dict[str, Any], str]], raw: dict[str, Any]) -> None:
    """A study file means what it says: its own size and [base] win over the shared presets (which fill
    in what it leaves out); its own [presets.*], --set and axes win over both. Each shared value not
    applied is listed in one line (`xtra study show` prints them)."""
    src, shared_label = draft.src, f"{display_path(SHARED_PRESETS)}: presets."
    for layer, lab in layers:
        from_shared = lab.startswith(shared_label)
        for k, v in layer.items():
            if k == "size" and from_shared and "size" in raw:
                if v != draft.size:
                    draft.kept.append(f"size={literal(draft.size)} from {src} kept ({lab}.size={literal(v)} "
                                      f"not applied)")
            elif k == "size":
                draft.size, draft.size_label = v, f"{lab}.size"
            elif k == "seeds":
                draft.seeds, draft.seeds_label = v, f"{lab}.seeds"
            elif k == "axes":
                draft.axes.update(parse_axes(v, f"{lab}.axes", draft.axis_labels))
            elif k == "resources":
                parse_resources(v, f"{lab}.resources")
                draft.resources.update(v)
            elif k == "search":
                _adjust_search(draft, v, lab)
            else:
                for kk, vv in (flatten(v, f"{k}.") if isinstance(v, dict) else {k: v}).items():
                    if from_shared and draft.labels.get(kk, "").startswith(f"{src}: base."):
                        if vv != draft.base[kk]:
                            draft.kept.append(f"{kk}={literal(draft.base[kk])} from {src} [base] kept "
                                              f"({lab}.{kk}={literal(vv)} not applied)")
                        continue
                    draft.base[kk], draft.labels[kk] = vv, f"{lab}.{kk}"


def _adjust_search(draft: _Draft, node: Any, lab: str) -> None:
    """A preset's [search] table: its keys replace the study's, its space entries join the study's space."""
    if not isinstance(node, dict):
        raise StudyError(f"{lab}.search: must be a table")
    if draft.search is None:
        raise StudyError(f"{lab}.search: the study has no [search] to adjust")
    merged = {**draft.search, **{k: v for k, v in node.items() if k != "space"}}
    if "space" in node:
        merged["space"] = {**flatten_space(draft.search.get("space", {})), **flatten_space(node["space"])}
    draft.search, draft.search_label = merged, f"{lab}.search"


def _apply_sets(draft: _Draft, set_items: dict[str, Any]) -> None:
    """``--set KEY=VALUE``: a config key, an axis (or ``axes.NAME``), size, seeds, resources.* or search.*."""
    src = draft.src
    for key, value in set_items.items():
        lab = f"{src}: --set {key}"
        draft.set_texts.append(f"{key}={literal(value)}")
        if key == "size":
            draft.size, draft.size_label = value, lab
        elif key == "seeds":
            draft.seeds, draft.seeds_label = value, lab
        elif key.startswith("search."):
            _set_search(draft, key[len("search."):], value, lab)
        elif key.startswith("resources."):
            parse_resources({key.split(".", 1)[1]: value}, f"{src}: --set resources")
            draft.resources[key.split(".", 1)[1]] = value
        elif key.startswith("axes."):
            axis_name = key[len("axes."):]
            draft.axes[axis_name] = parse_axis(axis_name, value if isinstance(value, list) else [value], lab)
            draft.axis_labels[axis_name] = lab
        elif key in draft.axes and not draft.axes[key].zipped:
            single = not isinstance(value, list) or (is_tuple_key(key) and not any(isinstance(v, list) for v in value))
            draft.axes[key] = parse_axis(key, [value] if single else value, lab)
            draft.axis_labels[key] = lab
        else:
            zipped = [a.name for a in draft.axes.values() if a.zipped and key in a.keys]
            if zipped:
                raise StudyError(f"{lab}={literal(value)}: {key} is swept by the zip group {zipped[0]!r}; "
                                 f"replace the group with --set axes.{zipped[0]}=[{{...}}, ...]")
            check_config_key(key, f"{lab}={literal(value)}")
            draft.base[key], draft.labels[key] = value, lab


def _set_search(draft: _Draft, sub: str, value: Any, lab: str) -> None:
    if draft.search is None:
        raise StudyError(f"{lab}={literal(value)}: the study has no [search]")
    if sub.startswith("space."):
        space = flatten_space(draft.search.get("space", {}))
        space[sub[len("space."):]] = value
        draft.search = {**draft.search, "space": space}
    else:
        draft.search = {**draft.search, sub: value}
    draft.search_label = f"{draft.src}: --set search"


def _record_legacy_values(draft: _Draft, stored: bool) -> None:
    """Keys that changed what a trial trains (xtra.config.LEGACY_VALUES): a resolved study.toml that lacks
    one was run before it existed, so its trials keep the rule they were trained under; a study resolved
    now records today's default, so it resumes under the same rule."""
    swept = {k for axis in draft.axes.values() for k in axis.keys}
    swept |= set(flatten_space(draft.search.get("space", {}))) if draft.search else set()
    for key, value in recorded_values(stored=stored).items():
        if key not in draft.base and key not in swept:
            draft.base[key], draft.labels[key] = value, f"{draft.src}: {key} (recorded)"


def _build(draft: _Draft, name: str, description: str, preset: str | None, path: Path) -> Study:
    """Validate the layered values that need no trial config (size, seeds, resources, search, axes) and
    make the ``Study``."""
    src = draft.src
    if not isinstance(draft.size, str) or draft.size not in SIZES:
        raise StudyError(f"{draft.size_label}={literal(draft.size)}: unknown size (allowed: {', '.join(SIZES)})")
    seed_list = parse_seeds(draft.seeds, draft.seeds_label)
    if "seed" in draft.base:
        raise StudyError(f"{draft.labels['seed']}={literal(draft.base['seed'])}: set seeds with `seeds = ...` or "
                         f"--seeds, not the seed key")
    resources = parse_resources(draft.resources, f"{src}: resources")
    search = parse_search(draft.search, draft.search_label) if draft.search is not None else None
    if search is not None:
        if draft.axes:
            raise StudyError(f"{src}: axes.{next(iter(draft.axes))}: a search study cannot also have axes "
                             f"(fix the value in [base] or add it to search.space as a choice)")
        if len(seed_list) != 1:
            raise StudyError(f"{draft.seeds_label}={literal(draft.seeds)}: a search study runs one seed")
    axis_keys: dict[str, str] = {}
    for axis in draft.axes.values():
        for k in axis.keys:
            if k in axis_keys:
                raise StudyError(f"{src}: axes.{axis.name}: {k} is already swept by axis {axis_keys[k]!r}")
            axis_keys[k] = axis.name
    return Study(name=name, description=description, size=draft.size, preset=preset, source=src, base=draft.base,
                 axes=tuple(draft.axes.values()), seeds=seed_list, resources=resources, search=search,
                 sets=tuple(draft.set_texts), path=path, kept=tuple(draft.kept))


def _check_runnable(study: Study, draft: _Draft) -> None:
    """What running the study needs: a bounded grid, every trial's config valid, the workers' batch split,
    a halving ladder that fits the recipe."""
    n_trials = len(study.seeds) * math.prod(len(a.values) for a in study.axes)
    if n_trials > MAX_TRIALS:
        raise StudyError(f"{study.source}: {n_trials:,} trials ({len(study.seeds)} seed(s) x the axes' values; "
                         f"allowed: at most {MAX_TRIALS:,} in one study)")
    base = _check_base(study, draft.labels)
    _check_axes(study, base, draft.axis_labels)
    check_workers(study)
    if study.search is not None and study.search.halving:  # its rungs against the recipe (xtra.studies.halving)
        from xtra.studies.halving import check as check_halving

        check_halving(study)


def _check_base(study: Study, labels: dict[str, str]) -> TrialConfig:
    """The base config, each key checked alone first so that a bad value fails here with its origin,
    not inside a trial."""
    src = study.source
    try:
        root = TrialConfig(model=model_config(study.size))
    except ValueError as e:  # pragma: no cover - SIZES are tested
        raise StudyError(f"{src}: size={study.size!r}: {one_line(e)}") from None
    # each key alone: unknown keys and wrong types name their own origin
    for key, value in study.base.items():
        label = labels.get(key, f"{src}: base.{key}")
        check_config_key(key, f"{label}={literal(value)}")
        try:
            coerce(key, CONFIG_LEAVES[key], value)
        except ValueError as e:
            raise StudyError(f"{label}={literal(value)}: {one_line(e)}") from None
    # all together: blame the first overridden key the config's message names
    try:
        base = override(root, study.base)
    except ValueError as e:
        msg = one_line(e)
        named = [k for k in re.findall(r"[a-z_]+\.[a-z_0-9]+", msg) if k in study.base]
        if named:
            key = named[0]
            raise StudyError(f"{labels.get(key, src + ': base.' + key)}={literal(study.base[key])}: {msg}") from None
        raise StudyError(f"{src}: base: {msg}") from None
    return base


def _check_axes(study: Study, base: TrialConfig, axis_labels: dict[str, str]) -> None:
    """Build every trial's config once (each axis value alone, then every combination: a width that only
    fails with one head count), no two alike; and a search space's corners and choices."""
    src = study.source
    for axis in study.axes:
        for i, value in enumerate(axis.values):
            try:
                override(base, value)
            except ValueError as e:
                lab = axis_labels.get(axis.name, f"{src}: axes.{axis.name}")
                shown = f"={literal(value[axis.name])}" if not axis.zipped else f"[{i}]={literal(value)}"
                raise StudyError(f"{lab}{shown}: {one_line(e)}") from None
    hashes: dict[str, str] = {}
    for seed in study.seeds:
        for combo in itertools.product(*(axis.values for axis in study.axes)):
            params: dict[str, Any] = {}
            for value in combo:
                params.update(value)
            try:
                cfg = override(base, {**params, "seed": seed})
            except ValueError as e:
                shown = ", ".join(f"{k}={literal(v)}" for k, v in params.items())
                raise StudyError(f"{src}: axes {shown}: {one_line(e)}") from None
            h = cfg.config_hash()
            if h in hashes:
                shown = ", ".join(f"{k}={literal(v)}" for k, v in params.items())
                raise StudyError(f"{src}: axes {shown} (seed {seed}) makes the same config as {hashes[h]} "
                                 f"(remove the duplicate value)")
            hashes[h] = ", ".join(f"{k}={literal(v)}" for k, v in params.items()) + f" (seed {seed})"
    # a search space's corners and choices
    if study.search is not None:
        for key, dom in study.search.space.items():
            probes = dom["values"] if dom["type"] == "choice" else [dom["low"], dom["high"]]
            for v in probes:
                try:
                    override(base, {key: v})
                except ValueError as e:
                    raise StudyError(f"{src}: search.space.{key}={literal(v)}: {one_line(e)}") from None


def load_all(preset: str | None = None) -> dict[str, Study]:
    return {name: load_study(name, preset=preset) for name in shipped_studies()}



def load_study_dir(study_dir: Path) -> Study:
    """The resolved spec a study directory was last run with."""
    return load_study(studydir.study_toml(study_dir))
