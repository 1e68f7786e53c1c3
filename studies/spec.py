"""Study files: schema, load, validate, expand.

A study is a base plus a diff (DESIGN.md, example 4). A study file (``studies/<name>.toml`` or any
path) holds::

    name = "block-size"                 # defaults to the file's stem
    description = "one line"
    size = "cpu-s"                      # a key of xtra.config.SIZES
    seeds = 1                           # a count (seeds 0..n-1) or a list of seeds
    default_preset = "cpu"              # preset used when none is asked for (optional)

    [base]                              # dotted config keys -> values, applied with override()
    "pretrain.lr" = 1e-3                # quoted or bare dotted keys both work: pretrain.lr = 1e-3

    [axes]                              # crossed; each axis is a list of values
    "model.block_size" = [1, 2, 4]
    # A *named* axis whose values are tables moves several keys together (a zip group):
    width = [{ "model.width" = 64, "model.num_heads" = 2 },
             { "model.width" = 128, "model.num_heads" = 4 }]
    # Equivalent: one list per key plus  [zip] width = ["model.width", "model.num_heads"]
    # (the form written into a study directory's study.toml, one column per swept key).

    [resources]                         # per trial; max_concurrent = 0 means "as many as fit"
    cpus_per_trial = 1
    gpus_per_trial = 0
    max_concurrent = 0
    workers_per_trial = 0               # data-parallel workers (Ray Train + DDP); 0 = one per whole
                                        # GPU of the trial (1 on CPUs). The trial's CPUs and GPUs are
                                        # split evenly among them; the batch is the global batch.

    [presets.smoke]                     # a diff on top of the above: dotted overrides plus
    size = "tiny"                       # size / seeds / [axes] / [resources] / [search] replacements
    "pretrain.samples" = 512
    [presets.smoke.axes]                # replaces axes of the same name (adds new ones)
    "model.block_size" = [1, 2]

    [search]                            # optional: an Optuna search instead of a grid (no [axes])
    kind = "optuna"
    metric = "linear_top1"
    mode = "max"
    num_samples = 16
    asha = false                        # early-stop on training loss at sample milestones
    [search.space]
    "pretrain.lr" = { type = "loguniform", low = 1e-4, high = 3e-3 }

Every file also gets the shared protocol presets in ``studies/_presets.toml`` (``smoke``, ``cpu``,
``paper``); a study's own ``[presets.<name>]`` layers on top of the shared one of the same name.

Precedence, lowest first: ``size`` defaults -> ``[base]`` -> shared preset -> the study's preset ->
``--set`` -> axis values -> seed. ``--set KEY=VALUE`` takes TOML literals; it sets a config key, or,
when KEY is an axis (or ``axes.NAME``), replaces that axis' values (a scalar fixes it to one value);
``size=...``, ``seeds=...``, ``resources.<key>=...`` and ``search.<key>=...`` work too.

A trial's identity is its config hash; its id for people is built from the swept values, e.g.
``block_size=2,seed=0`` (a zip group shows its first key's value: ``width=64,seed=0``).

Everything is validated before anything launches, and every error is one line naming the file,
the key and the value, e.g. ``studies/block-size.toml: axes.model.block_size=3: model.block_size=3
does not divide the 8x8 patch grid (allowed: 1, 2, 4, 8)``. Dataset presence is checked separately
(``Study.check_data``) so a placeholder path in the ``paper`` preset only fails at ``run``.

The ``study.toml`` written into a study directory is a *resolved* spec (``preset = ...`` at top
level, presets already applied); loading it reproduces the same trials with the same hashes.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from xtra.config import SIZES, TrialConfig, _coerce, _leaf_keys, model_config, override, valid_keys

# Shipped study files are package data: found through importlib.resources, wheel or editable install.
STUDIES_DIR = Path(str(resources.files("xtra.studies")))
SHARED_PRESETS = STUDIES_DIR / "_presets.toml"

TOP_KEYS = ("name", "description", "size", "seeds", "default_preset", "base", "axes", "zip", "resources",
            "presets", "search", "preset", "source", "sets")
PRESET_KEYS = ("size", "seeds", "axes", "resources", "search")  # everything else: dotted overrides
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial", "max_concurrent", "workers_per_trial", "loggers")
LOGGERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers (xtra.studies.ray.tuner.tracker_callbacks)
DEFAULT_LOGGERS = ("tensorboard",)  # cheap (bench: orchestration), so on unless a study says loggers = []
SEARCH_KEYS = ("kind", "metric", "mode", "num_samples", "space", "asha", "grace_samples", "seed")
SPACE_TYPES = ("loguniform", "uniform", "int", "choice")
# Metrics a search can optimize, with their natural direction.
METRICS = {"linear_top1": "max", "attentive_top1": "max", "val_loss": "min", "train_loss": "min"}


class StudyError(ValueError):
    """A one-line, user-facing error about a study file, a preset or a --set."""


# ---------------------------------------------------------------------------------------------
# The resolved study


@dataclass(frozen=True)
class Axis:
    """One crossed dimension. ``values[i]`` maps each dotted key of the axis to its value."""

    name: str
    keys: tuple[str, ...]
    values: tuple[dict[str, Any], ...]

    @property
    def zipped(self) -> bool:
        return not (len(self.keys) == 1 and self.keys[0] == self.name)

    def raw(self) -> list[Any]:
        """The TOML form: a plain list for a one-key axis, a list of tables for a zip group."""
        if self.zipped:
            return [dict(v) for v in self.values]
        return [v[self.name] for v in self.values]


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int = 0  # 0 = as many as the cluster fits
    workers_per_trial: int = 0  # 0 = one per whole GPU of the trial, 1 on CPUs
    loggers: tuple[str, ...] = DEFAULT_LOGGERS  # experiment trackers each trial logs to

    @property
    def workers(self) -> int:
        """Data-parallel workers per trial (1 = the trial runs in the Tune trainable itself)."""
        if self.workers_per_trial:
            return self.workers_per_trial
        g = self.gpus_per_trial
        return int(g) if g >= 1 and float(g).is_integer() else 1


@dataclass(frozen=True)
class Search:
    kind: str
    metric: str
    mode: str
    num_samples: int
    space: dict[str, dict[str, Any]]
    asha: bool = False
    grace_samples: int = 0  # ASHA's first milestone in samples; 0 = pretrain.samples // 8
    seed: int = 0


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a grid study: its config, the swept values that made it, and a readable id."""

    trial_id: str
    config: TrialConfig
    params: dict[str, Any]
    seed: int

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    size: str
    preset: str | None
    source: str  # the file as the user should read it, e.g. "studies/block-size.toml"
    base: dict[str, Any]  # every dotted override, presets and --set included
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]
    resources: Resources = field(default_factory=Resources)
    search: Search | None = None
    sets: tuple[str, ...] = ()  # provenance: the --set arguments that were applied
    path: Path | None = None

    # -- configs ------------------------------------------------------------------------------

    def base_config(self) -> TrialConfig:
        """The config every trial starts from (no axis value, first seed)."""
        cfg = TrialConfig(model=model_config(self.size))
        return override(cfg, {**self.base, "seed": self.seeds[0]})

    @property
    def swept_keys(self) -> list[str]:
        if self.search is not None:
            return list(self.search.space)
        return [k for axis in self.axes for k in axis.keys]

    def expand(self) -> list[TrialSpec]:
        """Every trial of a grid study, seeds outermost so a full replicate finishes first.
        A search study has no fixed trials (Optuna proposes them): this returns []."""
        if self.search is not None:
            return []
        base = TrialConfig(model=model_config(self.size))
        base = override(base, self.base)
        specs: list[TrialSpec] = []
        for seed in self.seeds:
            for combo in itertools.product(*(axis.values for axis in self.axes)):
                params: dict[str, Any] = {}
                for value in combo:
                    params.update(value)
                cfg = override(base, {**params, "seed": seed})
                specs.append(TrialSpec(_trial_id(self.axes, combo, seed), cfg, params, seed))
        seen: dict[str, int] = {}
        out = []
        for s in specs:  # ids are readable; disambiguate the rare collision
            n = seen.get(s.trial_id, 0)
            seen[s.trial_id] = n + 1
            out.append(s if n == 0 else replace(s, trial_id=f"{s.trial_id}#{n}"))
        return out

    def trials(self) -> list[TrialConfig]:
        return [s.config for s in self.expand()]

    @property
    def n_trials(self) -> int:
        if self.search is not None:
            return self.search.num_samples
        return len(self.seeds) * math.prod(len(a.values) for a in self.axes)

    def check_data(self) -> None:
        """Raise a one-line StudyError if a dataset the trials need is missing (call before run)."""
        from xtra.data import locate  # lazy: only `run` needs the data to be present

        configs = self.trials() or [self.base_config()]
        seen = set()
        for cfg in configs:
            key = repr(cfg.data)
            if key in seen:
                continue
            seen.add(key)
            try:
                locate(cfg.data)
            except (ValueError, FileNotFoundError) as e:
                raise StudyError(f"{self.source}: data.name={cfg.data.name!r}: {_one_line(e)}") from None
        from xtra.probe import probe_data_configs

        probed = set()
        for cfg in configs:  # the downstream suite: every set found, and each fits the encoder
            key = repr((cfg.probe.datasets, cfg.data, cfg.model.channels))
            if key in probed:
                continue
            probed.add(key)
            try:
                probe_data_configs(cfg.probe, cfg.data, cfg.model)
            except (ValueError, FileNotFoundError) as e:
                raise StudyError(f"{self.source}: {_one_line(e)}") from None

    # -- derived studies ------------------------------------------------------------------------

    def with_resources(self, cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
                       max_concurrent: int | None = None, workers_per_trial: int | None = None,
                       loggers: list[str] | tuple[str, ...] | None = None) -> Study:
        r = self.resources
        raw = {"cpus_per_trial": r.cpus_per_trial if cpus_per_trial is None else cpus_per_trial,
               "gpus_per_trial": r.gpus_per_trial if gpus_per_trial is None else gpus_per_trial,
               "max_concurrent": r.max_concurrent if max_concurrent is None else max_concurrent,
               "workers_per_trial": r.workers_per_trial if workers_per_trial is None else workers_per_trial,
               "loggers": list(r.loggers if loggers is None else [x for x in loggers if x != "none"])}
        study = replace(self, resources=_parse_resources(raw, f"{self.source}: resources"))
        _check_workers(study)
        return study

    # -- serialization -----------------------------------------------------------------------

    def to_toml(self) -> str:
        """The resolved spec as run (presets and --set applied); ``load_study`` reads it back."""
        doc: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "size": self.size,
            "preset": self.preset or "",
            "source": self.source,
            "sets": list(self.sets),
            "seeds": list(self.seeds),
            "base": dict(self.base),
            # one list per swept dotted key (what reports read); zip groups are named in [zip]
            "axes": {k: [v[k] for v in a.values] for a in self.axes for k in a.keys},
            "zip": {a.name: list(a.keys) for a in self.axes if a.zipped},
            "resources": {k: list(v) if isinstance(v := getattr(self.resources, k), tuple) else v
                          for k in RESOURCE_KEYS},
        }
        if not doc["zip"]:
            del doc["zip"]
        if self.search is not None:
            s = self.search
            doc["search"] = {"kind": s.kind, "metric": s.metric, "mode": s.mode, "num_samples": s.num_samples,
                             "asha": s.asha, "grace_samples": s.grace_samples, "seed": s.seed,
                             "space": {k: dict(v) for k, v in s.space.items()}}
        header = ("# Resolved study as run (presets and --set applied); "
                  "`xtra study run <this dir>` reads it back.\n")
        return header + dumps_toml(doc)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(_fmt_value(x) for x in v)
    return str(v)


def _trial_id(axes: tuple[Axis, ...], combo: tuple[dict[str, Any], ...], seed: int) -> str:
    shorts = [a.name.rsplit(".", 1)[-1] for a in axes]
    if len(set(shorts)) != len(shorts):
        shorts = [a.name for a in axes]
    parts = []
    for short, axis, value in zip(shorts, axes, combo, strict=True):
        parts.append(f"{short}={_fmt_value(value[axis.keys[0]])}")
    parts.append(f"seed={seed}")
    return ",".join(parts)


# ---------------------------------------------------------------------------------------------
# Loading


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


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _fmt(v: Any) -> str:
    """A value as the user wrote it (TOML literal)."""
    return _toml_value(v) if isinstance(v, (str, bool, int, float, list, tuple, dict)) else repr(v)


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


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"block_size": 2}}`` and ``{"model.block_size": 2}`` both -> ``{"model.block_size": 2}``."""
    flat: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{key}."))
        else:
            flat[key] = v
    return flat


_LEAVES = _leaf_keys(TrialConfig)


def _check_config_key(key: str, label: str) -> None:
    if key not in _LEAVES:
        close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.8)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise StudyError(f"{label}: unknown config key {key!r} ({hint}valid keys: {', '.join(valid_keys())})")


def _is_tuple_key(key: str) -> bool:
    return getattr(_LEAVES.get(key), "__origin__", None) is tuple


def _parse_axis(name: str, values: Any, label: str) -> Axis:
    if not isinstance(values, list) or not values:
        raise StudyError(f"{label}={_fmt(values)}: an axis must be a non-empty list of values")
    if all(isinstance(v, dict) for v in values):  # a zip group: each value is a table of dotted keys
        if name in _LEAVES:
            raise StudyError(f"{label}: a zip group needs its own name, not the config key {name!r} "
                             f"(e.g. width = [{{ \"model.width\" = 64, \"model.num_heads\" = 2 }}])")
        rows = [_flatten(v) for v in values]
        keys = tuple(rows[0])
        if not keys:
            raise StudyError(f"{label}: zip group values must set at least one key")
        for i, row in enumerate(rows):
            if tuple(row) != keys:
                raise StudyError(f"{label}[{i}]={_fmt(values[i])}: every value of a zip group must set the "
                                 f"same keys ({', '.join(keys)})")
            for k in keys:
                _check_config_key(k, f"{label}[{i}]")
        return Axis(name, keys, tuple(rows))
    if any(isinstance(v, dict) for v in values):
        raise StudyError(f"{label}={_fmt(values)}: mixes tables and plain values")
    _check_config_key(name, label)
    if name == "seed":
        raise StudyError(f"{label}: sweep seeds with `seeds = N` (or a list), not an axis")
    return Axis(name, (name,), tuple({name: v} for v in values))


def _parse_axes(node: Any, label: str, labels: dict[str, str] | None = None) -> dict[str, Axis]:
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
                axes[key] = _parse_axis(key, v, f"{label}.{key}")
                if labels is not None:
                    labels[key] = f"{label}.{key}"

    walk(node, "")
    return axes


def _apply_zip(axes: dict[str, Axis], node: Any, label: str, axis_labels: dict[str, str]) -> dict[str, Axis]:
    """``[zip] width = ["model.width", "model.num_heads"]``: those one-key axes move together."""
    if not isinstance(node, dict):
        raise StudyError(f"{label}: must be a table of name -> [dotted keys]")
    out = dict(axes)
    for name, keys in node.items():
        lab = f"{label}.{name}"
        if not isinstance(keys, list) or len(keys) < 1 or not all(isinstance(k, str) for k in keys):
            raise StudyError(f"{lab}={_fmt(keys)}: must be a list of swept dotted keys")
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


def _parse_seeds(value: Any, label: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise StudyError(f"{label}={_fmt(value)}: must be a count or a list of ints")
    if isinstance(value, int):
        if value < 1:
            raise StudyError(f"{label}={value}: must be >= 1")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            raise StudyError(f"{label}={_fmt(value)}: seeds repeat")
        return tuple(value)
    raise StudyError(f"{label}={_fmt(value)}: must be a count or a non-empty list of ints")


def _parse_resources(node: Any, label: str) -> Resources:
    if not isinstance(node, dict):
        raise StudyError(f"{label}: must be a table")
    for k, v in node.items():
        if k not in RESOURCE_KEYS:
            raise StudyError(f"{label}.{k}: unknown key (allowed: {', '.join(RESOURCE_KEYS)})")
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if k == "max_concurrent":
            if not (isinstance(v, int) and not isinstance(v, bool)) or v < 0:
                raise StudyError(f"{label}.{k}={_fmt(v)}: must be an int >= 0 (0 = as many as fit)")
        elif k == "cpus_per_trial" and (not number or v <= 0):
            raise StudyError(f"{label}.{k}={_fmt(v)}: must be a number > 0")
        elif k == "gpus_per_trial" and (not number or v < 0):
            raise StudyError(f"{label}.{k}={_fmt(v)}: must be a number >= 0")
        elif k == "workers_per_trial" and (not (isinstance(v, int) and not isinstance(v, bool)) or v < 0):
            raise StudyError(f"{label}.{k}={_fmt(v)}: must be an int >= 0 (0 = one per GPU of the trial, 1 on CPUs)")
        elif k == "loggers":
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise StudyError(f"{label}.{k}={_fmt(v)}: must be a list of names (allowed: {', '.join(LOGGERS)})")
            for x in v:
                if x not in LOGGERS:
                    raise StudyError(f"{label}.{k}={_fmt(x)}: unknown logger (allowed: {', '.join(LOGGERS)})")
    if "loggers" in node:
        node = {**node, "loggers": tuple(dict.fromkeys(node["loggers"]))}
    res = Resources(**node)
    if res.workers > 1 and res.gpus_per_trial and not (res.gpus_per_trial / res.workers).is_integer():
        raise StudyError(f"{label}.gpus_per_trial={_fmt(res.gpus_per_trial)}: not a whole number of GPUs for each of "
                         f"workers_per_trial={res.workers} workers (NCCL ranks cannot share a GPU)")
    return res


def _check_workers(study: Study) -> None:
    """Every worker takes an equal share of every micro-batch: the batch must split evenly."""
    w = study.resources.workers
    if w <= 1:
        return
    for cfg in study.trials() or [study.base_config()]:
        p = cfg.pretrain
        if p.batch_size % (w * p.accumulate):
            raise StudyError(f"{study.source}: resources.workers_per_trial={w}: pretrain.batch_size={p.batch_size} is "
                             f"not divisible by workers x pretrain.accumulate = {w} x {p.accumulate}")


def _parse_search(node: Any, label: str) -> Search:
    if not isinstance(node, dict):
        raise StudyError(f"{label}: must be a table")
    for k in node:
        if k not in SEARCH_KEYS:
            raise StudyError(f"{label}.{k}: unknown key (allowed: {', '.join(SEARCH_KEYS)})")
    kind = node.get("kind", "optuna")
    if kind != "optuna":
        raise StudyError(f"{label}.kind={_fmt(kind)}: unknown search (allowed: \"optuna\")")
    metric = node.get("metric", "linear_top1")
    if metric not in METRICS:
        raise StudyError(f"{label}.metric={_fmt(metric)}: unknown metric (allowed: {', '.join(METRICS)})")
    mode = node.get("mode", METRICS[metric])
    if mode not in ("max", "min"):
        raise StudyError(f"{label}.mode={_fmt(mode)}: must be \"max\" or \"min\"")
    num_samples = node.get("num_samples", 8)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise StudyError(f"{label}.num_samples={_fmt(num_samples)}: must be an int >= 1")
    asha = node.get("asha", False)
    if not isinstance(asha, bool):
        raise StudyError(f"{label}.asha={_fmt(asha)}: must be true or false")
    for k in ("grace_samples", "seed"):
        v = node.get(k, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise StudyError(f"{label}.{k}={_fmt(v)}: must be an int >= 0")
    space_node = node.get("space")
    if not isinstance(space_node, dict) or not space_node:
        raise StudyError(f"{label}.space: must be a non-empty table of dotted key -> {{type, low, high, values}}")
    space: dict[str, dict[str, Any]] = {}
    for key, dom in _flatten_space(space_node).items():
        lab = f"{label}.space.{key}"
        _check_config_key(key, lab)
        if not isinstance(dom, dict):
            raise StudyError(f"{lab}={_fmt(dom)}: must be a table {{type, low, high}} or {{type = \"choice\", values}}")
        for k in dom:
            if k not in ("type", "low", "high", "values"):
                raise StudyError(f"{lab}.{k}: unknown key (allowed: type, low, high, values)")
        typ = dom.get("type")
        if typ not in SPACE_TYPES:
            raise StudyError(f"{lab}.type={_fmt(typ)}: unknown type (allowed: {', '.join(SPACE_TYPES)})")
        if typ == "choice":
            values = dom.get("values")
            if not isinstance(values, list) or not values or "low" in dom or "high" in dom:
                raise StudyError(f"{lab}: a choice needs a non-empty `values` list (and no low/high)")
        else:
            lo, hi = dom.get("low"), dom.get("high")
            want = int if typ == "int" else (int, float)
            for name, v in (("low", lo), ("high", hi)):
                if not isinstance(v, want) or isinstance(v, bool):
                    raise StudyError(f"{lab}.{name}={_fmt(v)}: must be {'an int' if typ == 'int' else 'a number'}")
            if not lo < hi:
                raise StudyError(f"{lab}: low={_fmt(lo)} must be < high={_fmt(hi)}")
            if typ == "loguniform" and lo <= 0:
                raise StudyError(f"{lab}.low={_fmt(lo)}: loguniform needs low > 0")
            if "values" in dom:
                raise StudyError(f"{lab}.values: only a choice takes values")
        space[key] = dict(dom)
    return Search(kind=kind, metric=metric, mode=mode, num_samples=num_samples, space=space, asha=asha,
                  grace_samples=node.get("grace_samples", 0), seed=node.get("seed", 0))


def _flatten_space(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Space entries are tables themselves: stop flattening at a table holding `type`."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "type" not in v:
            out.update(_flatten_space(v, f"{key}."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------------
# --set parsing


def parse_set(text: str) -> tuple[str, Any]:
    """``"model.block_size=2"`` -> ``("model.block_size", 2)``. The value is a TOML literal
    (``[1e-3, 3e-3]``, ``true``, ``"x"``); anything TOML cannot read is taken as a bare string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise StudyError(f"--set {text!r}: expected KEY=VALUE (e.g. --set model.block_size=2)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def parse_sets(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, value = parse_set(item)
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# The loader


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

    for layer, lab in layers:
        for k, v in layer.items():
            if k == "size":
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

    study = Study(name=name, description=description, size=size, preset=preset, source=src, base=base,
                  axes=tuple(axes.values()), seeds=seed_list, resources=resources, search=search,
                  sets=tuple(set_texts), path=path)
    _validate(study, labels, axis_labels)
    _check_workers(study)
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
            _coerce(key, _LEAVES[key], value)
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


# ---------------------------------------------------------------------------------------------
# A small TOML writer (the stdlib reads TOML but does not write it)


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_str(k)


def _toml_str(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{out}"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps_toml(doc: dict[str, Any]) -> str:
    """Scalars and arrays first, then one [table] per dict (one level; nested dicts inline)."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append("")
            lines.append(f"[{_toml_key(k)}]")
            lines.extend(f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"
