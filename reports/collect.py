"""Read a study directory into polars frames.

A finished study has ``results.parquet`` (one row per trial) and ``curves.parquet`` (one row per
trial and report step), both scanned lazily. Mid-run (either file missing, or ``study.lock``
present: a runner is at work and the parquet files are from an earlier run) the rows come from the
trial directories instead, read through ``xtra.trialdir`` (a trial's state) and made rows by the
writer's own function (``xtra.results.result_row``): the same columns either way. Unfinished trials
are listed with their status (failed, stopped, running, pending) and error; nothing is dropped silently.

``study.toml`` (read by ``xtra.studies.load.read_study_dir`` into the one typed ``Study``) names the
study, its swept keys and their defaults. Without it, the swept keys are the dotted result columns
whose values vary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from xtra import studydir
from xtra.config import SIZES, TrialConfig
from xtra.results import CONTRACT, CURVE_SCHEMA, METRICS, RESULT_SCHEMA, result_row
from xtra.studies.load import read_study_dir  # the study file, parsed the one way the runner parses it
from xtra.studies.spec import Study
from xtra.studydir import StudyError  # one error type
from xtra.trialdir import FINISHED

REPLICATE_KEYS = ("seed",)  # swept for error bars, never an ablation axis

# The result schema is xtra.results' (the writer's own): a report reads the contract columns as String and
# every size and metric as Float64 (NaN -> null), whichever source the rows came from.
RESULT_COLUMNS = (*CONTRACT, *METRICS)
CURVE_COLUMNS = tuple(CURVE_SCHEMA)


# Swept keys whose result column may be missing but whose value the contract already stores.
_KEY_ALIASES = {"model.block_size": "block_size", "model.width": "width", "model.depth": "depth"}




@dataclass
class StudyResults:
    """A study directory as the report reads it: the study file it ran (``study``, the one typed ``Study``
    of ``xtra.studies.load``; None without study.toml) and its rows (results, curves, probes)."""

    path: Path
    name: str
    study: Study | None
    swept: list[str]  # swept dotted keys present as result columns, in study.toml order (zip companions left out)
    axes: dict[str, list[Any]]  # every swept key (zip companions and a search's space keys included) -> its values
    results: pl.DataFrame
    curves: pl.DataFrame
    source: str  # "parquet" or "trials" (per-trial files, mid-run)
    notes: list[str] = field(default_factory=list)
    companions: dict[str, list[str]] = field(default_factory=dict)  # zip group: first key -> keys moving with it
    probes: pl.DataFrame = field(default_factory=pl.DataFrame)  # long format: trial x samples x dataset x kind

    @property
    def description(self) -> str:
        return self.study.description if self.study else ""

    @property
    def size(self) -> str:
        """The size preset the study ran (model.* defaults come from it); "" without study.toml."""
        return self.study.size if self.study else ""

    @property
    def preset(self) -> str:
        return (self.study.preset or "") if self.study else ""

    @property
    def base(self) -> dict[str, Any]:
        """Dotted defaults: every override the study applied to its base config."""
        return dict(self.study.base) if self.study else {}

    @property
    def finished(self) -> pl.DataFrame:
        return self.results.filter(pl.col("status") == FINISHED)

    @property
    def failed(self) -> pl.DataFrame:
        """Every trial that is not finished (failed, running, ...), with its error."""
        return self.results.filter(pl.col("status").is_null() | (pl.col("status") != FINISHED))

    def default(self, key: str) -> Any:
        """The base value of a swept key: ``[base]``, else the size preset's value, else the config default."""
        base = self.base
        if key in base:
            return base[key]
        return config_default(key, self.size)


def config_default(key: str, size: str = "") -> Any:
    """Default of a dotted key: ``xtra.config.SIZES[size]`` for model keys, else ``TrialConfig()``
    (None when unknown)."""
    section, _, leaf = key.partition(".")
    if section == "model" and leaf in SIZES.get(size, {}):
        return SIZES[size][leaf]
    node: Any = TrialConfig()
    for part in key.split("."):
        if not hasattr(node, part):
            return None
        node = getattr(node, part)
    return node


def swept_values(study: Study) -> dict[str, list[Any]]:
    """Every swept dotted key of a study file -> its values (a zip group: one list per key)."""
    return {k: [v[k] for v in axis.values] for axis in study.axes for k in axis.keys}


def zip_companions(study: Study) -> dict[str, list[str]]:
    """Each zip group's first key -> the keys that move with it."""
    return {axis.keys[0]: list(axis.keys[1:]) for axis in study.axes if axis.zipped and len(axis.keys) > 1}


def _normalize(lf: pl.LazyFrame, columns: tuple[str, ...], schema: dict[str, str]) -> pl.LazyFrame:
    """Add missing schema columns as nulls; strings as String, numbers as Float64 with NaN -> null."""
    have = lf.collect_schema()
    exprs = []
    for name in columns:
        if schema[name] == "String":
            exprs.append(pl.col(name).cast(pl.String) if name in have else pl.lit(None, pl.String).alias(name))
        elif name in have and have[name].is_numeric():
            exprs.append(pl.col(name).cast(pl.Float64).fill_nan(None))
        elif name in have:  # a metric stored as text: parse what parses
            exprs.append(pl.col(name).cast(pl.String).cast(pl.Float64, strict=False).alias(name))
        else:
            exprs.append(pl.lit(None, pl.Float64).alias(name))
    return lf.with_columns(exprs)


def _read_trial_rows(study_dir: Path, study: Study | None, notes: list[str]) -> pl.DataFrame:
    """The rows results.parquet will have (``xtra.results.result_row``, the writer's own function), from the
    trial directories as they stand; without study.toml, every trial's params are its swept values."""
    swept = list(study.swept_keys) if study is not None else None
    preset = study.preset if study is not None else None
    rows = []
    for state in studydir.all_trials(study_dir, notes=notes):
        name = study.name if study is not None else state.study
        rows.append(result_row(state, name, swept, preset))
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows, infer_schema_length=None, strict=False)


def _running(study_dir: Path) -> bool:
    """A live runner holds ``study.lock``: its parquet files, if any, are from an earlier run, so the
    trial files are the current state. A lock left by a killed runner is not live (the lease decides),
    and the runner itself builds the report after writing fresh parquet files: neither is "running"."""
    from xtra.lease import is_running  # the lease moved out of studydir (d3febf1)

    return is_running(study_dir)


def scan_results(study_dir: str | Path, notes: list[str] | None = None, study: Study | None = None) -> pl.LazyFrame:
    """results.parquet (lazy) or, when it is missing or older than the trial files, rows rebuilt from
    ``trials/<config_hash>/``; contract columns added. ``study``: the study file, when read already."""
    study_dir = Path(study_dir)
    study = read_study_dir(study_dir) if study is None else study
    notes = [] if notes is None else notes
    parquet = study_dir / studydir.RESULTS
    stale = parquet.is_file() and _running(study_dir)
    if parquet.is_file() and not stale:
        lf = pl.scan_parquet(parquet)
    else:
        df = _read_trial_rows(study_dir, study, notes)
        if df.is_empty():
            raise StudyError(f"{study_dir}: no results.parquet and no trials/<config_hash>/trial.json "
                             f"(expected a study directory written by `xtra study run`)")
        notes.append("the study is running (study.lock): rows read from trials/, not the older results.parquet"
                     if stale else "results.parquet is missing: rows read from trials/ (study still running?)")
        lf = df.lazy()
    lf = _normalize(lf, RESULT_COLUMNS, RESULT_SCHEMA)
    pending = (pl.col("status") == "pending") & pl.col("error").is_null()  # what the failed-trials table says
    return lf.with_columns(pl.when(pending).then(pl.lit("not started")).otherwise(pl.col("error")).alias("error"))


def _scan_metrics(study_dir: Path, notes: list[str]) -> pl.LazyFrame | None:
    from xtra import trialdir as td

    frames = []
    for run in td.trial_dirs(study_dir):
        rows = td.curve_rows(run, notes)
        if rows:
            frames.append(pl.DataFrame(rows, infer_schema_length=None, strict=False)
                          .with_columns(pl.lit(run.name).alias("config_hash")))
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed").lazy()


def scan_curves(study_dir: str | Path, notes: list[str] | None = None) -> pl.LazyFrame:
    """curves.parquet (lazy) or, when missing, every ``trials/*/metrics.jsonl``; empty frame if none."""
    study_dir = Path(study_dir)
    notes = [] if notes is None else notes
    parquet = study_dir / studydir.CURVES
    stale = parquet.is_file() and _running(study_dir)
    if parquet.is_file() and not stale:
        lf = pl.scan_parquet(parquet)
    else:
        lf = _scan_metrics(study_dir, notes)
        if lf is None:
            notes.append("no curves.parquet and no trials/*/metrics.jsonl: no training curves to show")
            lf = pl.DataFrame({"config_hash": []}, schema={"config_hash": pl.String}).lazy()
        else:
            notes.append("curves read from trials/*/metrics.jsonl (curves.parquet "
                         + ("is from an earlier run)" if stale else "is missing)"))
    return _normalize(lf, CURVE_COLUMNS, CURVE_SCHEMA)


def scan_probes(study_dir: str | Path, notes: list[str] | None = None) -> pl.DataFrame:
    """probes.parquet, or (mid-run, or when it is missing) the finished trials' probe rows read through
    xtra.trialdir; one row per trial x checkpoint (samples seen) x probe dataset x kind."""
    from xtra import trialdir as td

    study_dir = Path(study_dir)
    parquet = study_dir / studydir.PROBES
    if parquet.is_file() and not _running(study_dir):
        return pl.read_parquet(parquet)
    rows = []
    for run in td.trial_dirs(study_dir):
        result = td.read_result(run)
        for r in td.probe_rows(run, (result or {}).get("probe_hash")):
            rows.append({"config_hash": run.name, **r})
    return pl.DataFrame(rows, infer_schema_length=None, strict=False) if rows else pl.DataFrame()


def _varies(df: pl.DataFrame, col: str) -> bool:
    return df.get_column(col).drop_nulls().n_unique() > 1


def _groupable(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """Nested values (a swept tuple such as probe.lrs) become text so they can be grouped and shown."""
    dtype = df.schema[col]
    if isinstance(dtype, (pl.List, pl.Array)):
        return df.with_columns(pl.col(col).cast(pl.List(pl.String)).list.join(", ").alias(col))
    if isinstance(dtype, pl.Struct):
        return df.with_columns(pl.col(col).struct.json_encode().alias(col))
    return df


def collect_results(study_dir: str | Path) -> StudyResults:
    """Collect a study directory (see module docstring). Raises StudyError naming the path on bad input."""
    study_dir = Path(study_dir)
    if not study_dir.exists():
        raise StudyError(f"{study_dir}: does not exist (expected a study directory with results.parquet)")
    if not study_dir.is_dir():
        raise StudyError(f"{study_dir}: is not a directory (expected a study directory with results.parquet)")
    notes: list[str] = []
    study = read_study_dir(study_dir)
    try:
        results = scan_results(study_dir, notes, study).collect()
        curves = scan_curves(study_dir, notes).collect()
    except StudyError:
        raise
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise StudyError(f"{study_dir}: cannot read the study's parquet files ({type(exc).__name__}: {exc})") from None
    source = "trials" if any("rows read from trials/" in n for n in notes) else "parquet"
    curves, results = _with_trial_ids(curves, results)
    axes, companions, results = _swept(study, results, notes)
    moving = {k for keys in companions.values() for k in keys}
    swept = [k for k in axes if k in results.columns and k not in REPLICATE_KEYS and k not in moving]
    for key in swept:
        results = _groupable(results, key)

    name = study.name if study is not None else ""
    if not name and results.height:
        name = next(iter(results.get_column("study").drop_nulls().to_list()), "") or ""
    try:
        probes = scan_probes(study_dir, notes)
    except (pl.exceptions.PolarsError, OSError) as exc:
        notes.append(f"probes.parquet unreadable ({type(exc).__name__}); probe curves not shown")
        probes = pl.DataFrame()
    return StudyResults(path=study_dir, name=name or study_dir.name, study=study, swept=swept, axes=axes,
                   results=results, curves=curves, source=source, notes=notes,
                   companions={k: v for k, v in companions.items() if k in swept}, probes=probes)


def _with_trial_ids(curves: pl.DataFrame, results: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Curves carry trial ids from the results where they lack their own."""
    if curves.height and results.height:
        ids = results.select("config_hash", pl.col("trial_id").alias("_tid"), pl.col("study").alias("_study"))
        ids = ids.unique("config_hash", keep="first")
        curves = (curves.join(ids, on="config_hash", how="left")
                  .with_columns(pl.coalesce("trial_id", "_tid").alias("trial_id"),
                                pl.coalesce("study", "_study").alias("study"))
                  .drop("_tid", "_study"))
    return curves, results.with_columns(pl.coalesce("trial_id", "config_hash").alias("trial_id"))


def _swept(study: Study | None, results: pl.DataFrame, notes: list[str]
           ) -> tuple[dict[str, list[Any]], dict[str, list[str]], pl.DataFrame]:
    """The swept keys and their values (from the study file, else the dotted result columns that vary),
    the zip groups, and the results with a column for each swept key the contract stores under another name."""
    if study is None:
        notes.append("no study.toml: swept keys inferred from the dotted result columns that vary")
        axes = {c: sorted(results.get_column(c).drop_nulls().unique().to_list(), key=sort_key)
                for c in results.columns if "." in c and _varies(results, c)}
        return axes, {}, results
    axes = swept_values(study)
    for key in study.search.space if study.search is not None else ():  # an Optuna search: its space keys vary
        if key in results.columns:
            axes.setdefault(key, sorted(results.get_column(key).drop_nulls().unique().to_list(), key=sort_key))
    for key in list(axes):
        if key not in results.columns and _KEY_ALIASES.get(key) in results.columns:
            results = results.with_columns(pl.col(_KEY_ALIASES[key]).alias(key))
    missing = [k for k in axes if k not in results.columns and k not in REPLICATE_KEYS]
    if missing:
        notes.append(f"swept key(s) {', '.join(missing)} from study.toml have no results column; not tabulated")
    return axes, zip_companions(study), results


def sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value if not (isinstance(value, float) and math.isnan(value)) else math.inf)
    return (1, str(value))
