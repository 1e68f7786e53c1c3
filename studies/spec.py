"""Study files: schema, load, validate, expand.

A study is a base plus a diff (docs/design.md, principle 3). A study file (``studies/<name>.toml`` or any
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

Precedence, lowest first: ``size`` defaults -> shared preset -> the study file's own ``size`` and
``[base]`` -> the study's preset -> ``--set`` -> axis values -> seed: a study file means what it says
(a shared preset fills in only what the file leaves out; each value it did not apply is listed in
``Study.kept`` and by ``xtra study show``). ``--set KEY=VALUE`` takes TOML literals; it sets a config key, or,
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

import itertools
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from xtra.config import TrialConfig, model_config
from xtra.overrides import override
from xtra.studydir import StudyError

TOP_KEYS = ("name", "description", "size", "seeds", "default_preset", "base", "axes", "zip", "resources",
            "presets", "search", "preset", "source", "sets")
PRESET_KEYS = ("size", "seeds", "axes", "resources", "search")  # everything else: dotted overrides
RESOURCE_TABLE_KEYS = ("cpus_per_trial", "gpus_per_trial", "max_concurrent", "workers_per_trial", "loggers")
LOGGERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers (xtra.studies.ray.tuner.tracker_callbacks)
DEFAULT_LOGGERS = ("tensorboard",)  # cheap (bench: orchestration), so on unless a study says loggers = []
SEARCH_KEYS = ("kind", "metric", "mode", "num_samples", "space", "asha", "grace_samples", "seed", "sampler", "eta",
               "rungs")
SEARCH_KINDS = ("optuna", "halving")  # halving: successive halving whose rungs are wsd cooldown branches
SAMPLERS = ("tpe", "grid")  # who proposes the configurations: Optuna's TPE, or every combination of the choices
SPACE_TYPES = ("loguniform", "uniform", "int", "choice")
# Metrics a search can optimize, with their natural direction.
METRICS = {"linear_top1": "max", "attentive_top1": "max", "val_loss": "min", "train_loss": "min"}


__all__ = ["StudyError", "Study", "Axis", "Resources", "Search", "TrialSpec"]  # StudyError: xtra.studydir's


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
    sampler: str = "tpe"  # tpe | grid (every combination of the space's choices, in order)
    eta: int = 3  # halving: the top 1/eta of a rung go on to the next
    rungs: tuple[int, ...] = ()  # halving: budgets in samples, the last the full one; () = pretrain.samples / eta^i

    @property
    def halving(self) -> bool:
        return self.kind == "halving"


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
    kept: tuple[str, ...] = ()  # shared-preset values the study file's own size / [base] kept out, one line each

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

    def check_data(self) -> dict[str, str]:
        """Where each dataset the trials pretrain on was found (name -> location); a one-line
        StudyError if one is missing or a probe set does not fit (call before run)."""
        from xtra.data import locate  # lazy: only `run` needs the data to be present

        configs = self.trials() or [self.base_config()]
        seen, found = set(), {}
        for cfg in configs:
            key = repr(cfg.data)
            if key in seen:
                continue
            seen.add(key)
            try:
                found[cfg.data.name] = str(locate(cfg.data))
            except (ValueError, FileNotFoundError) as e:
                raise StudyError(f"{self.source}: data.name={cfg.data.name!r}: {one_line(e)}") from None
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
                raise StudyError(f"{self.source}: {one_line(e)}") from None
        return found

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
        study = replace(self, resources=parse_resources(raw, f"{self.source}: resources"))
        check_workers(study)
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
                          for k in RESOURCE_TABLE_KEYS},
        }
        if not doc["zip"]:
            del doc["zip"]
        if self.search is not None:
            s = self.search
            doc["search"] = {"kind": s.kind, "metric": s.metric, "mode": s.mode, "num_samples": s.num_samples,
                             "asha": s.asha, "grace_samples": s.grace_samples, "seed": s.seed,
                             "sampler": s.sampler, "space": {k: dict(v) for k, v in s.space.items()}}
            if s.halving:
                doc["search"].update(eta=s.eta, rungs=list(s.rungs))
        header = ("# Resolved study as run (presets and --set applied); "
                  "`xtra study run <this dir>` reads it back.\n")
        return header + tomli_w.dumps(doc)


def trial_id_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(trial_id_value(x) for x in v)
    return str(v)


def _trial_id(axes: tuple[Axis, ...], combo: tuple[dict[str, Any], ...], seed: int) -> str:
    shorts = [a.name.rsplit(".", 1)[-1] for a in axes]
    if len(set(shorts)) != len(shorts):
        shorts = [a.name for a in axes]
    parts = []
    for short, axis, value in zip(shorts, axes, combo, strict=True):
        parts.append(f"{short}={trial_id_value(value[axis.keys[0]])}")
    parts.append(f"seed={seed}")
    return ",".join(parts)




def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def literal(v: Any) -> str:
    """A value as the user wrote it: a one-line TOML literal (tables inline)."""
    if isinstance(v, dict):
        keys = [k if str(k).replace("_", "").replace("-", "").isalnum() else literal(str(k)) for k in v]
        return "{ " + ", ".join(f"{k} = {literal(x)}" for k, x in zip(keys, v.values(), strict=True)) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    if isinstance(v, (str, bool, int, float)):
        return tomli_w.dumps({"v": v}).strip()[len("v = "):]
    return repr(v)


def parse_resources(node: Any, label: str) -> Resources:
    if not isinstance(node, dict):
        raise StudyError(f"{label}: must be a table")
    for k, v in node.items():
        if k not in RESOURCE_TABLE_KEYS:
            raise StudyError(f"{label}.{k}: unknown key (allowed: {', '.join(RESOURCE_TABLE_KEYS)})")
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if k == "max_concurrent":
            if not (isinstance(v, int) and not isinstance(v, bool)) or v < 0:
                raise StudyError(f"{label}.{k}={literal(v)}: must be an int >= 0 (0 = as many as fit)")
        elif k == "cpus_per_trial" and (not number or v <= 0):
            raise StudyError(f"{label}.{k}={literal(v)}: must be a number > 0")
        elif k == "gpus_per_trial" and (not number or v < 0):
            raise StudyError(f"{label}.{k}={literal(v)}: must be a number >= 0")
        elif k == "workers_per_trial" and (not (isinstance(v, int) and not isinstance(v, bool)) or v < 0):
            raise StudyError(f"{label}.{k}={literal(v)}: must be an int >= 0 (0 = one per GPU of the trial, 1 on CPUs)")
        elif k == "loggers":
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise StudyError(f"{label}.{k}={literal(v)}: must be a list of names (allowed: {', '.join(LOGGERS)})")
            for x in v:
                if x not in LOGGERS:
                    raise StudyError(f"{label}.{k}={literal(x)}: unknown logger (allowed: {', '.join(LOGGERS)})")
    if "loggers" in node:
        node = {**node, "loggers": tuple(dict.fromkeys(node["loggers"]))}
    res = Resources(**node)
    if res.workers > 1 and res.gpus_per_trial and not (res.gpus_per_trial / res.workers).is_integer():
        raise StudyError(f"{label}.gpus_per_trial={literal(res.gpus_per_trial)}: not a whole number of GPUs for each "
                         f"of workers_per_trial={res.workers} workers (NCCL ranks cannot share a GPU)")
    return res


def check_workers(study: Study) -> None:
    """Every worker takes an equal share of every micro-batch: the batch must split evenly."""
    w = study.resources.workers
    if w <= 1:
        return
    for cfg in study.trials() or [study.base_config()]:
        p = cfg.pretrain
        if p.batch_size % (w * p.accumulate):
            raise StudyError(f"{study.source}: resources.workers_per_trial={w}: pretrain.batch_size={p.batch_size} is "
                             f"not divisible by workers x pretrain.accumulate = {w} x {p.accumulate}")


# ---------------------------------------------------------------------------------------------
# --set KEY=VALUE, the same for every command and study file


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
