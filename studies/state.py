"""A study directory on disk: layout, the run lock, each trial's state, results and curves.

Everything here reads and writes files only (no Ray), so ``xtra study status`` and the report
builder can look at a study while it runs, after it crashed, or on another machine.

Layout (DESIGN.md, "Study directory")::

    STUDY_DIR/
      study.toml            the resolved spec as last run (presets and --set applied)
      study.lock            pid + host + start time of the process running the study right now
      runs.json             one record per Ray Tune experiment started for this study (run-1, run-2, ...)
      ray.log               Ray's own log lines (kept off the terminal)
      run-<n>/              Ray Tune's experiment state, checkpoints and trial folders
      trials/<config_hash>/ the trial's own directory (xtra.trial.run_trial writes it), plus
          params.json       study, trial_id, swept params, seed (the runner)
          attempts.jsonl    one line per start / finish / error of the trial (the runner)
          status.json       why an unfinished trial stopped: failed (with its error) or stopped (ASHA)
          tune_checkpoint.json  samples_seen of the checkpoint last handed to Ray Tune
      results.parquet       one row per trial (contract columns, see RESULT_COLUMNS)
      curves.parquet        one row per trial and logged step
      report/index.html     built by reports.build when it is available
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studies.spec import Study, StudyError, TrialSpec
from xtra.config import TrialConfig, from_dict, size_columns
from xtra.fileio import atomic_path, atomic_write_json, atomic_write_text  # noqa: F401 - atomic_write_text re-exported

TRIALS = "trials"
LOCK = "study.lock"
RUNS = "runs.json"
STUDY_TOML = "study.toml"
RESULTS = "results.parquet"
CURVES = "curves.parquet"

RESULT_COLUMNS = ("study", "trial_id", "config_hash", "status", "error", "seed")
METRIC_COLUMNS = ("block_size", "width", "depth", "n_params", "n_params_encoder", "flops_per_image", "samples_seen",
                  "train_loss", "val_loss", "linear_top1", "attentive_top1", "linear_best_lr", "attentive_best_lr",
                  "wall_s")
EXTRA_COLUMNS = ("preset", "images_per_s", "attempts")
CURVE_COLUMNS = ("study", "trial_id", "config_hash", "step", "samples_seen", "loss", "lr", "wall_s")


def trial_dir(study_dir: Path, config_hash: str) -> Path:
    return Path(study_dir) / TRIALS / config_hash


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=str) + "\n")
        f.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        text = Path(path).read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a kill: skip it
            continue
    return rows


# ---------------------------------------------------------------------------------------------
# The lock: one live runner per study directory


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of a process (guards against a recycled pid); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(info: dict[str, Any]) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # cannot check another machine: assume it is running
    pid = int(info.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = info.get("proc_start")
    return started is None or _proc_start(pid) in (None, started)


class StudyLocked(StudyError):
    """Another live process is running this study directory."""


def read_lock(study_dir: Path) -> dict[str, Any] | None:
    info = _read_json(Path(study_dir) / LOCK)
    return info if isinstance(info, dict) else None


def lock_holder(study_dir: Path) -> dict[str, Any] | None:
    """The live process holding the study's lock, or None."""
    info = read_lock(study_dir)
    return info if info is not None and _alive(info) else None


@dataclass
class StudyLock:
    """``with StudyLock(dir, "xtra study run"):`` -- refuses (StudyLocked) while another live process
    holds it; takes over a lock left by a dead process."""

    study_dir: Path
    command: str
    took_over: dict[str, Any] | None = field(default=None, init=False)

    @property
    def path(self) -> Path:
        return Path(self.study_dir) / LOCK

    def acquire(self) -> StudyLock:
        Path(self.study_dir).mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = read_lock(self.study_dir)
                if other is None:  # being written right now, or garbage
                    age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0
                    if age < 5:
                        time.sleep(0.2)
                        continue
                elif _alive(other):
                    raise StudyLocked(
                        f"{self.study_dir}: in use by pid {other.get('pid')} on {other.get('host')} "
                        f"({other.get('command', '?')}, since {other.get('started', '?')}); wait for it or stop it"
                        + ("" if other.get("host") == socket.gethostname()
                           else f" (or delete {self.path} if that process is gone)")) from None
                self.took_over = other
                stale = self.path.with_name(f".{LOCK}.stale.{os.getpid()}")
                try:  # rename first so two processes cannot both take over the same stale lock
                    os.replace(self.path, stale)
                    stale.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            return self
        raise StudyLocked(f"{self.study_dir}: could not take the lock {self.path}")

    def release(self) -> None:
        info = read_lock(self.study_dir)
        if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# Experiments (Ray Tune runs) started for this study


def read_runs(study_dir: Path) -> list[dict[str, Any]]:
    runs = _read_json(Path(study_dir) / RUNS)
    return runs if isinstance(runs, list) else []


def write_runs(study_dir: Path, runs: list[dict[str, Any]]) -> None:
    write_json(Path(study_dir) / RUNS, runs)


# ---------------------------------------------------------------------------------------------
# Trials


@dataclass
class TrialState:
    trial_id: str
    config_hash: str
    params: dict[str, Any]
    seed: int
    config: TrialConfig | None
    status: str  # finished | failed | stopped | running | pending
    error: str | None = None
    row: dict[str, Any] | None = None  # trial.json when finished
    starts: int = 0  # how many times a runner started it
    checkpoint_samples: int | None = None  # the checkpoint it would resume from
    last: dict[str, Any] | None = None  # the last metrics.jsonl row


def _checkpoint_samples(run: Path) -> int | None:
    if not (run / "checkpoint.pt").exists():
        return None
    meta = _read_json(run / "tune_checkpoint.json")
    if isinstance(meta, dict) and "samples_seen" in meta:
        return int(meta["samples_seen"])
    rows = read_jsonl(run / "metrics.jsonl")
    return int(rows[-1]["samples_seen"]) if rows else 0


def read_trial(study_dir: Path, config_hash: str, trial_id: str | None = None, params: dict[str, Any] | None = None,
               seed: int | None = None, config: TrialConfig | None = None, running: bool = False) -> TrialState:
    """A trial's state from its directory alone. ``running``: a live runner holds the study lock."""
    run = trial_dir(study_dir, config_hash)
    rec = _read_json(run / "params.json") or {}
    if config is None:
        raw = _read_json(run / "config.json")
        if isinstance(raw, dict):
            try:
                config = from_dict(raw)
            except (ValueError, TypeError):
                config = None
    state = TrialState(trial_id=trial_id or rec.get("trial_id") or config_hash, config_hash=config_hash,
                       params=params if params is not None else rec.get("params", {}),
                       seed=seed if seed is not None else rec.get("seed", config.seed if config else 0),
                       config=config, status="pending")
    attempts = read_jsonl(run / "attempts.jsonl")
    state.starts = sum(1 for a in attempts if a.get("event") == "start")
    metrics = read_jsonl(run / "metrics.jsonl")
    state.last = metrics[-1] if metrics else None
    state.checkpoint_samples = _checkpoint_samples(run)
    row = _read_json(run / "trial.json")
    if isinstance(row, dict) and row.get("status") == "finished":
        state.status, state.row = "finished", row
        return state
    status = _read_json(run / "status.json")
    last_event = attempts[-1].get("event") if attempts else None
    if running and last_event == "start":
        state.status = "running"
    elif isinstance(status, dict) and status.get("status") in ("failed", "stopped"):
        state.status, state.error = status["status"], status.get("error")
    elif last_event == "error" and not running:
        state.status, state.error = "failed", attempts[-1].get("error")
    return state


def study_trials(study: Study, study_dir: Path, running: bool | None = None) -> list[TrialState]:
    """The trials of ``study`` as they stand on disk: a grid's expansion, or every trial a search ran."""
    study_dir = Path(study_dir)
    if running is None:
        running = lock_holder(study_dir) is not None
    if study.search is None:
        return [read_trial(study_dir, s.config_hash, s.trial_id, s.params, s.seed, s.config, running)
                for s in study.expand()]
    states = []
    root = study_dir / TRIALS
    for run in sorted(root.iterdir()) if root.is_dir() else []:
        rec = _read_json(run / "params.json")
        if isinstance(rec, dict) and rec.get("study") == study.name:
            states.append(read_trial(study_dir, run.name, running=running))
    states.sort(key=lambda s: (str(s.trial_id)))
    return states


def pending_specs(study: Study, study_dir: Path) -> list[TrialSpec]:
    """Grid trials without a finished trial.json (new, interrupted or failed): what a run must do."""
    out = []
    for spec in study.expand():
        row = _read_json(trial_dir(study_dir, spec.config_hash) / "trial.json")
        if not (isinstance(row, dict) and row.get("status") == "finished"):
            out.append(spec)
    return out


# ---------------------------------------------------------------------------------------------
# results.parquet and curves.parquet


def _static(cfg: TrialConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    return size_columns(cfg.model)


def _clean(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def result_rows(study: Study, states: list[TrialState]) -> list[dict[str, Any]]:
    swept = study.swept_keys
    rows = []
    for s in states:
        src = s.row or {}
        row: dict[str, Any] = {"study": study.name, "trial_id": s.trial_id, "config_hash": s.config_hash,
                               "status": s.status, "error": s.error if s.status != "finished" else None,
                               "seed": s.seed}
        for key in swept:
            row[key] = _clean(s.params.get(key))
        static = _static(s.config)
        for col in METRIC_COLUMNS:
            value = src.get(col, static.get(col))
            if value is None and col == "samples_seen":
                value = s.last.get("samples_seen") if s.last else (0 if s.status == "pending" else None)
            if value is None and col == "train_loss" and s.last:
                value = s.last.get("loss")
            row[col] = _clean(value)
        row["preset"] = study.preset
        row["images_per_s"] = _clean(src.get("images_per_s"))
        row["attempts"] = s.starts
        rows.append(row)
    return rows


def _schema() -> dict[str, Any]:
    import polars as pl

    ints = {"seed", "block_size", "width", "depth", "n_params", "n_params_encoder", "flops_per_image", "samples_seen",
            "attempts"}
    schema: dict[str, Any] = {}
    for col in RESULT_COLUMNS + METRIC_COLUMNS + EXTRA_COLUMNS:
        if col in ints:
            schema[col] = pl.Int64
        elif col in ("study", "trial_id", "config_hash", "status", "error", "preset"):
            schema[col] = pl.String
        else:
            schema[col] = pl.Float64
    return schema


def _write_parquet(df: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def write_results(study: Study, study_dir: Path, states: list[TrialState] | None = None) -> tuple[Path, Path]:
    """Write results.parquet and curves.parquet (atomically) from the trial directories."""
    import polars as pl

    study_dir = Path(study_dir)
    states = study_trials(study, study_dir) if states is None else states
    rows = result_rows(study, states)
    schema = _schema()
    swept = study.swept_keys
    columns = list(RESULT_COLUMNS) + [k for k in swept if k not in RESULT_COLUMNS + METRIC_COLUMNS] + \
        list(METRIC_COLUMNS) + list(EXTRA_COLUMNS)
    data = {col: [r.get(col) for r in rows] for col in columns}
    series = []
    for col in columns:
        if col in schema:
            series.append(pl.Series(col, data[col], dtype=schema[col], strict=False))
        else:
            series.append(pl.Series(col, data[col], strict=False))
    results = pl.DataFrame(series)
    results_path = study_dir / RESULTS
    _write_parquet(results, results_path)

    curve_rows: list[dict[str, Any]] = []
    for s in states:
        seen: dict[int, dict[str, Any]] = {}
        for m in read_jsonl(trial_dir(study_dir, s.config_hash) / "metrics.jsonl"):
            if "step" in m:
                seen[int(m["step"])] = m  # a resumed run may log a step twice: keep the last
        for step in sorted(seen):
            m = seen[step]
            curve_rows.append({"study": study.name, "trial_id": s.trial_id, "config_hash": s.config_hash,
                               "step": step, "samples_seen": m.get("samples_seen"), "loss": _clean(m.get("loss")),
                               "lr": m.get("lr"), "wall_s": m.get("wall_s")})
    curve_schema = {"study": pl.String, "trial_id": pl.String, "config_hash": pl.String, "step": pl.Int64,
                    "samples_seen": pl.Int64, "loss": pl.Float64, "lr": pl.Float64, "wall_s": pl.Float64}
    curves = pl.DataFrame({c: [r[c] for r in curve_rows] for c in CURVE_COLUMNS}, schema=curve_schema, strict=False)
    curves_path = study_dir / CURVES
    _write_parquet(curves, curves_path)
    return results_path, curves_path


def load_study_dir(study_dir: Path) -> Study:
    """The resolved spec a study directory was last run with."""
    from studies.spec import load_study

    path = Path(study_dir) / STUDY_TOML
    if not path.is_file():
        raise StudyError(f"{study_dir}: not a study directory (no {STUDY_TOML}; start one with `xtra study run`)")
    return load_study(path)
