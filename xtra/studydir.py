"""A study directory on disk, its one owner: study.toml, the run lock (a lease), the experiments run,
the trials' states, and results.parquet / curves.parquet / probes.parquet.

Everything here reads and writes files only (no Ray), so ``xtra study status`` and the report
builder can look at a study while it runs, after it crashed, or on another machine. A trial's own
files belong to ``xtra.trialdir`` (the one definition of a trial's status); this module only
asks it.

Layout (docs/design.md, "The owner of every file on disk")::

    STUDY_DIR/
      study.toml            the resolved spec as last run (presets and --set applied)
      study.lock            the lease of the process running the study now: pid, host, heartbeat
      runs.json             one record per Ray Tune experiment started for this study (run-1, run-2, ...)
      optuna.db             a search's Optuna study (SQLite: optuna-dashboard opens it)
      ray.log               Ray's own log lines (kept off the terminal)
      run-<n>/              Ray Tune's experiment state
      trials/<config_hash>/ the trial's own directory (see xtra.trialdir)
      results.parquet       one row per trial (its columns: xtra.results.RESULT_SCHEMA)
      curves.parquet        one row per trial and logged step
      report/index.html     built by xtra.reports.build
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from xtra import lease, results
from xtra import trialdir as td
from xtra.config import IDENTITY_VERSION
from xtra.errors import StudyError
from xtra.fileio import atomic_path, atomic_write_json, atomic_write_text  # noqa: F401 - atomic_write_text re-exported
from xtra.trialdir import TrialState, append_jsonl, read_jsonl  # noqa: F401 - re-exported for callers and tests

TRIALS = "trials"
RUNS = "runs.json"
STUDY_TOML = "study.toml"
RESULTS = "results.parquet"
CURVES = "curves.parquet"
PROBES = "probes.parquet"
OPTUNA_DB = "optuna.db"



class StudyLike(Protocol):
    """What this module needs of a study (``xtra.studies.spec.Study`` is one; the study layer sits
    above this one, so it is described here rather than imported): its name and preset, the keys it
    sweeps, whether it is a search, and its trials."""

    name: str
    preset: str | None
    search: Any

    @property
    def swept_keys(self) -> Any: ...

    def expand(self) -> Iterable[Any]: ...


# ---------------------------------------------------------------------------------------------
# study.toml: the resolved spec as last run


def study_toml(study_dir: Path) -> Path:
    """The resolved spec of a study directory (refused in one line when it is not one)."""
    path = Path(study_dir) / STUDY_TOML
    if not path.is_file():
        raise StudyError(f"{study_dir}: not a study directory (no {STUDY_TOML}; start one with `xtra study run`)")
    return path


def read_study_toml(study_dir: Path) -> dict[str, Any] | None:
    """study.toml as a TOML document, None when absent; a damaged file is one line naming it."""
    path = Path(study_dir) / STUDY_TOML
    if not path.is_file():
        return None
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StudyError(f"{path}: invalid TOML: {' '.join(str(exc).split())}") from None


def write_study_toml(study_dir: Path, text: str) -> None:
    atomic_write_text(Path(study_dir) / STUDY_TOML, text)


def trial_dir(study_dir: Path, config_hash: str) -> Path:
    return td.path(study_dir, config_hash)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


# ---------------------------------------------------------------------------------------------
# Experiments (Ray Tune runs) started for this study


def read_runs(study_dir: Path) -> list[dict[str, Any]]:
    runs = td.read_json(Path(study_dir) / RUNS)
    return runs if isinstance(runs, list) else []


def write_runs(study_dir: Path, runs: list[dict[str, Any]]) -> None:
    write_json(Path(study_dir) / RUNS, runs)


# ---------------------------------------------------------------------------------------------
# A halving search's rung ladder (xtra.studies.halving decides it; the report draws it)

LADDER = "halving.json"  # the configurations proposed, and per decided rung each trial's metric and the promoted


def read_ladder(study_dir: Path) -> dict[str, Any] | None:
    ladder = td.read_json(Path(study_dir) / LADDER)
    return ladder if isinstance(ladder, dict) and isinstance(ladder.get("rungs"), list) else None


def write_ladder(study_dir: Path, ladder: dict[str, Any]) -> None:
    write_json(Path(study_dir) / LADDER, ladder)  # atomic: a reader sees the old ladder or the new one


# ---------------------------------------------------------------------------------------------
# Trials, as xtra.trialdir reads them


def study_trials(study: StudyLike, study_dir: Path, running: bool | None = None) -> list[TrialState]:
    """The trials of ``study`` as they stand on disk: a grid's expansion, or every trial a search ran."""
    study_dir = Path(study_dir)
    if running is None:
        running = lease.is_running(study_dir)
    if study.search is None:
        return [td.read_state(trial_dir(study_dir, s.config_hash), running=running, trial_id=s.trial_id,
                              params=s.params, seed=s.seed, config=s.config) for s in study.expand()]
    states = [td.read_state(run, running=running) for run in td.trial_dirs(study_dir)]
    states = [s for s in states if s.study == study.name and not is_trunk(s)]
    states.sort(key=lambda s: str(s.trial_id))
    return states


def all_trials(study_dir: Path, running: bool | None = None, notes: list[str] | None = None) -> list[TrialState]:
    """Every trial directory of a study, whatever spec it belongs to (the report's view mid-run)."""
    running = lease.is_running(study_dir) if running is None else running
    states = [td.read_state(run, running=running, notes=notes) for run in td.trial_dirs(study_dir)]
    return [s for s in states if not is_trunk(s)]


def is_trunk(state: TrialState) -> bool:
    """A wsd trunk: pretraining shared by a study's trials, not a trial itself."""
    return bool(state.extra and state.extra.get("role") == "trunk") or bool(state.row and
                                                                              state.row.get("role") == "trunk")


# ---------------------------------------------------------------------------------------------
# results.parquet and curves.parquet


def result_rows(study: StudyLike, states: list[TrialState]) -> list[dict[str, Any]]:
    return [results.result_row(s, study.name, list(study.swept_keys), study.preset) for s in states]


def _write_parquet(df: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def results_frame(study: StudyLike, states: list[TrialState]) -> Any:
    """results.parquet's frame (``xtra.results.RESULT_SCHEMA``): the contract columns first, then swept keys,
    metrics and extras; a wsd branch's columns and any other only when some row has them."""
    import polars as pl

    rows = result_rows(study, states)
    schema = results.polars_types(results.RESULT_SCHEMA)
    fixed = (*results.CONTRACT, *results.METRICS, *results.EXTRAS)
    columns = list(results.CONTRACT) + [k for k in study.swept_keys if k not in fixed] + \
        list(results.METRICS) + list(results.EXTRAS)
    columns += sorted({k for r in rows for k in r} - set(columns))
    return pl.DataFrame([pl.Series(col, [r.get(col) for r in rows], dtype=schema.get(col), strict=False)
                         for col in columns])


def curves_frame(study_name: str, states: list[TrialState], study_dir: Path, notes: list[str] | None = None) -> Any:
    import polars as pl

    rows: list[dict[str, Any]] = []
    for s in states:
        for r in td.curve_rows(trial_dir(study_dir, s.config_hash), notes):
            rows.append({"study": study_name, "trial_id": s.trial_id, "config_hash": s.config_hash, **r})
    return pl.DataFrame({c: [r[c] for r in rows] for c in results.CURVE_SCHEMA},
                        schema=results.polars_types(results.CURVE_SCHEMA), strict=False)


def probes_frame(study: StudyLike, states: list[TrialState], study_dir: Path) -> Any:
    """probes.parquet: long format, one row per trial x checkpoint (samples seen) x probe dataset x kind,
    for each finished trial's current probe protocol; the swept keys ride along for grouping."""
    import polars as pl

    measured = list(results.PROBE_SCHEMA)[5:]  # what a probe row holds; the first five name the trial
    rows: list[dict[str, Any]] = []
    for s in states:
        probe_hash = (s.row or {}).get("probe_hash")
        for r in td.probe_rows(trial_dir(study_dir, s.config_hash), probe_hash):
            rows.append({"study": study.name, "trial_id": s.trial_id, "config_hash": s.config_hash,
                         "probe_hash": probe_hash, "seed": s.seed, **{k: r.get(k) for k in measured},
                         **{k: td.clean(s.params.get(k)) for k in study.swept_keys}})
    schema = results.polars_types(results.PROBE_SCHEMA)
    columns = list(schema) + [k for k in study.swept_keys if k not in schema]
    return pl.DataFrame([pl.Series(c, [r.get(c) for r in rows], dtype=schema.get(c), strict=False) for c in columns])


def write_results(study: StudyLike, study_dir: Path, states: list[TrialState] | None = None) -> tuple[Path, Path]:
    """Write results.parquet, curves.parquet and probes.parquet (atomically) from the trial directories."""
    study_dir = Path(study_dir)
    states = study_trials(study, study_dir) if states is None else states
    results_path, curves_path = study_dir / RESULTS, study_dir / CURVES
    _write_parquet(results_frame(study, states), results_path)
    _write_parquet(curves_frame(study.name, states, study_dir), curves_path)
    _write_parquet(probes_frame(study, states, study_dir), study_dir / PROBES)
    return results_path, curves_path


# ---------------------------------------------------------------------------------------------
# Old study directories (trial identity before IDENTITY_VERSION 2 hashed paths and resources)


def migrate(study_dir: Path) -> list[tuple[str, str]]:
    """Rename trial directories named by an older identity to their current hash (the files inside are
    unchanged: the science they hold is the same). Returns the (old, new) pairs moved."""
    moved = []
    for run in td.trial_dirs(study_dir):
        cfg = td.read_config(run)
        if cfg is None or is_trunk(td.read_state(run, running=False)):  # a trunk is named by its trunk identity
            continue
        new = cfg.config_hash()
        if new == run.name:
            continue
        target = run.parent / new
        if target.exists():
            continue  # the current identity already has a directory: keep it, leave the old one aside
        os.replace(run, target)
        rec = td.read_json(target / td.PARAMS)
        if isinstance(rec, dict):
            write_json(target / td.PARAMS, {**rec, "config_hash": new, "migrated_from": run.name,
                                            "identity_version": IDENTITY_VERSION})
        moved.append((run.name, new))
    return moved
