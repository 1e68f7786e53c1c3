"""A study directory on disk, its one owner: study.toml, the run lock (a lease), the experiments run,
the trials' states, and results.parquet / curves.parquet / probes.parquet.

Everything here reads and writes files only (no Ray), so ``xtra study status`` and the report
builder can look at a study while it runs, after it crashed, or on another machine. A trial's own
files belong to ``xtra.trialdir`` (the one definition of a trial's status); this module only
asks it.

Layout (DESIGN.md, "Study directory")::

    STUDY_DIR/
      study.toml            the resolved spec as last run (presets and --set applied)
      study.lock            the lease of the process running the study now: pid, host, heartbeat
      runs.json             one record per Ray Tune experiment started for this study (run-1, run-2, ...)
      optuna.db             a search's Optuna study (SQLite: optuna-dashboard opens it)
      ray.log               Ray's own log lines (kept off the terminal)
      run-<n>/              Ray Tune's experiment state
      trials/<config_hash>/ the trial's own directory (see xtra.trialdir)
      results.parquet       one row per trial (contract columns, see RESULT_COLUMNS)
      curves.parquet        one row per trial and logged step
      report/index.html     built by xtra.reports.build
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtra import trialdir as td
from xtra.config import IDENTITY_VERSION
from xtra.fileio import atomic_path, atomic_write_json, atomic_write_text  # noqa: F401 - atomic_write_text re-exported
from xtra.storage import StorageError, conditional

if TYPE_CHECKING:  # the runner's spec; this module needs only its name, preset, swept keys and trials
    from xtra.studies.spec import Study
from xtra.trialdir import TrialState, append_jsonl, read_jsonl  # noqa: F401 - re-exported for callers and tests

TRIALS = "trials"
LOCK = "study.lock"
RUNS = "runs.json"
STUDY_TOML = "study.toml"
RESULTS = "results.parquet"
CURVES = "curves.parquet"
PROBES = "probes.parquet"
OPTUNA_DB = "optuna.db"

RESULT_COLUMNS = ("study", "trial_id", "config_hash", "status", "error", "seed")
METRIC_COLUMNS = ("block_size", "width", "depth", "n_params", "n_params_encoder", "flops_per_image", "samples_seen",
                  "train_loss", "val_loss", "linear_top1", "attentive_top1", "linear_best_lr", "attentive_best_lr",
                  "wall_s")
EXTRA_COLUMNS = ("preset", "images_per_s", "attempts", "probe_hash")
CURVE_COLUMNS = ("study", "trial_id", "config_hash", "step", "samples_seen", "loss", "lr", "wall_s")
PROBE_COLUMNS = ("study", "trial_id", "config_hash", "probe_hash", "seed", "samples", "dataset", "kind", "top1",
                 "best_lr", "best_val_top1", "still_improving")

HEARTBEAT_S = 10.0  # the lock holder refreshes its heartbeat this often
STALE_AFTER_S = 6 * HEARTBEAT_S  # a heartbeat older than this is a dead holder, whichever host it ran on
# Writes of a lease in object storage that another driver may overwrite before it sees ours (a holder
# whose refresh was already under way when --break-lock wrote): each attempt waits settle_s.
SHARED_LEASE_ATTEMPTS = 5


class StudyError(ValueError):
    """A one-line, user-facing error about a study: its file, a preset, a --set, or its directory."""


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
# The lock: a lease with a heartbeat, one live runner per study directory


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of a process (guards against a recycled pid); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def heartbeat_age(info: dict[str, Any]) -> float:
    """Seconds since the holder last refreshed the lease (a lock without a heartbeat counts as old)."""
    try:
        return max(0.0, time.time() - float(info["heartbeat"]))
    except (KeyError, TypeError, ValueError):
        return float("inf")


def _alive(info: dict[str, Any]) -> bool:
    """Same host: the process decides (a dead pid is dead at once). Another host: the heartbeat decides,
    so a study requeued onto another node takes over a lease its dead holder stopped refreshing."""
    if info.get("host") != socket.gethostname():
        return heartbeat_age(info) < STALE_AFTER_S
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


def read_lock(study_dir: Path) -> dict[str, Any] | None:
    info = td.read_json(Path(study_dir) / LOCK)
    return info if isinstance(info, dict) else None


def _read_shared(storage: Any) -> dict[str, Any] | None:
    """The lease kept in an object store, or None (absent or unreadable garbage)."""
    if not storage.is_file(LOCK):
        return None
    try:
        info = storage.read_json(LOCK)
    except (ValueError, StorageError):  # removed meanwhile, or half-written garbage
        return None
    return info if isinstance(info, dict) else None


def lock_holder(study_dir: Path, storage: Any = None) -> dict[str, Any] | None:
    """The live process holding the study's lock, or None; with ``storage`` (an object store the
    directory is a copy of), also a driver on another machine holding the lease there."""
    info = read_lock(study_dir)
    if info is not None and _alive(info):
        return info
    info = _read_shared(storage) if storage is not None else None
    return info if info is not None and _alive(info) else None


def _refusal(where: object, holder: dict[str, Any]) -> StudyLocked:
    return StudyLocked(f"{where}: in use by {describe_holder(holder)}; wait for it, stop it, "
                       f"or pass --break-lock if you know it is gone")


def describe_holder(info: dict[str, Any]) -> str:
    age = heartbeat_age(info)
    beat = "no heartbeat" if age == float("inf") else f"heartbeat {age:.0f}s ago"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command', '?')}, since "
            f"{info.get('started', '?')}, {beat})")


@dataclass
class StudyLock:
    """``with StudyLock(dir, "xtra study run"):`` -- refuses (StudyLocked) while another live process
    holds it; takes over a lock whose holder is dead (same host) or silent (any host). While held, a
    thread refreshes the heartbeat every HEARTBEAT_S. ``break_lock`` takes it whatever the holder.

    ``storage``: the study's storage when it is not the study directory itself (an object store).
    Drivers on different machines hold different local copies, so the lease is also kept there
    (``STORAGE/study.lock``) and refused the same way. Where the store writes conditionally (S3,
    MinIO: ``If-None-Match: *`` / ``If-Match``), of two drivers exactly one gets it at once; elsewhere
    the lease is written, then read back after ``settle_s``: of two drivers writing at once, only the
    one whose lease is still there goes on (the other sees the winner and is refused)."""

    study_dir: Path
    command: str
    break_lock: bool = False
    heartbeat_s: float = HEARTBEAT_S
    storage: Any = None
    settle_s: float = 1.0
    took_over: dict[str, Any] | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _me: dict[str, Any] = field(default_factory=dict, init=False)

    @property
    def path(self) -> Path:
        return Path(self.study_dir) / LOCK

    def acquire(self) -> StudyLock:
        Path(self.study_dir).mkdir(parents=True, exist_ok=True)
        self._me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command,
                    "heartbeat": time.time(), "heartbeat_s": self.heartbeat_s, "token": secrets.token_hex(8)}
        self._acquire_local()
        if self.storage is not None:
            try:
                self._acquire_shared()
            except BaseException:
                self._release_local()
                raise
        return self

    def _acquire_shared(self) -> None:
        """The lease in storage (see the class doc): refuse a live holder, else write ours and check it stuck."""
        where = self.storage.uri_of(LOCK)
        try:
            return self._acquire_conditional(where)
        except conditional.Unsupported:
            pass  # a store without conditional writes: write, wait settle_s, read back
        for _ in range(SHARED_LEASE_ATTEMPTS):
            other = _read_shared(self.storage)
            if other is not None and other.get("token") != self._me["token"]:
                if _alive(other) and not self.break_lock:
                    raise _refusal(where, other)
                self.took_over = self.took_over or other
            self.storage.write_json(LOCK, {**self._me, "heartbeat": time.time()})
            time.sleep(self.settle_s)
            now = _read_shared(self.storage)
            if now is not None and now.get("token") == self._me["token"]:
                return
            if self.break_lock:  # two breakers at once: the later one wins the retry
                continue
        raise StudyLocked(f"{where}: another driver took the lease at the same time; try again")

    def _acquire_conditional(self, where: str) -> None:
        """The lease by a conditional write (``xtra.storage.conditional``): created only if absent, taken
        over only if unchanged since read, so of two drivers exactly one gets it, with no wait."""
        for _ in range(SHARED_LEASE_ATTEMPTS):
            got = conditional.read(self.storage, LOCK)
            if got is not None:
                try:
                    other = json.loads(got[0])
                except ValueError:
                    other = None  # garbage: taken over
                if isinstance(other, dict) and other.get("token") != self._me["token"]:
                    if _alive(other) and not self.break_lock:
                        raise _refusal(where, other)
                    self.took_over = self.took_over or other
            mine = json.dumps({**self._me, "heartbeat": time.time()}, indent=2, sort_keys=True, default=str) + "\n"
            if conditional.put(self.storage, LOCK, mine.encode(), etag=got[1] if got else None):
                return
        raise StudyLocked(f"{where}: another driver took the lease at the same time; try again")

    def _acquire_local(self) -> None:
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
                elif _alive(other) and not self.break_lock:
                    raise _refusal(self.study_dir, other) from None
                self.took_over = other
                stale = self.path.with_name(f".{LOCK}.stale.{os.getpid()}")
                try:  # rename first so two processes cannot both take over the same stale lock
                    os.replace(self.path, stale)
                    stale.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._me) + "\n")
            self._thread = threading.Thread(target=self._beat, name="xtra-study-heartbeat", daemon=True)
            self._thread.start()
            return
        raise StudyLocked(f"{self.study_dir}: could not take the lock {self.path}")

    def _beat(self) -> None:
        shared = self.storage is not None
        while not self._stop.wait(self.heartbeat_s):
            info = read_lock(self.study_dir)
            if info is None or info.get("pid") != self._me["pid"] or info.get("host") != self._me["host"]:
                return  # broken by someone else: never write over their lock
            atomic_write_json(self.path, {**self._me, "heartbeat": time.time()})
            if shared:
                try:
                    other = _read_shared(self.storage)
                    if other is not None and other.get("token") != self._me["token"]:
                        shared = False  # broken by another driver (--break-lock): leave their lease alone
                    else:
                        self.storage.write_json(LOCK, {**self._me, "heartbeat": time.time()})
                except Exception:  # noqa: BLE001 - a storage hiccup: try again at the next beat
                    pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.storage is not None:
            try:
                info = _read_shared(self.storage)
                if info is not None and info.get("token") == self._me.get("token"):
                    self.storage.delete(LOCK)
            except Exception:  # noqa: BLE001 - unreachable storage: the lease goes stale on its own
                pass
        self._release_local()

    def _release_local(self) -> None:
        info = read_lock(self.study_dir)
        if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class StudyLocked(StudyError):
    """Another live process is running this study directory."""


# ---------------------------------------------------------------------------------------------
# Experiments (Ray Tune runs) started for this study


def read_runs(study_dir: Path) -> list[dict[str, Any]]:
    runs = td.read_json(Path(study_dir) / RUNS)
    return runs if isinstance(runs, list) else []


def write_runs(study_dir: Path, runs: list[dict[str, Any]]) -> None:
    write_json(Path(study_dir) / RUNS, runs)


# ---------------------------------------------------------------------------------------------
# Trials, as xtra.trialdir reads them


def is_running(study_dir: Path) -> bool:
    """A live runner (other than this process) holds the study."""
    holder = lock_holder(study_dir)
    return holder is not None and not (holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname())


def study_trials(study: Study, study_dir: Path, running: bool | None = None) -> list[TrialState]:
    """The trials of ``study`` as they stand on disk: a grid's expansion, or every trial a search ran."""
    study_dir = Path(study_dir)
    if running is None:
        running = is_running(study_dir)
    if study.search is None:
        return [td.read_state(trial_dir(study_dir, s.config_hash), running=running, trial_id=s.trial_id,
                              params=s.params, seed=s.seed, config=s.config) for s in study.expand()]
    states = [td.read_state(run, running=running) for run in td.trial_dirs(study_dir)]
    states = [s for s in states if s.study == study.name and not is_trunk(s)]
    states.sort(key=lambda s: str(s.trial_id))
    return states


def all_trials(study_dir: Path, running: bool | None = None, notes: list[str] | None = None) -> list[TrialState]:
    """Every trial directory of a study, whatever spec it belongs to (the report's view mid-run)."""
    running = is_running(study_dir) if running is None else running
    states = [td.read_state(run, running=running, notes=notes) for run in td.trial_dirs(study_dir)]
    return [s for s in states if not is_trunk(s)]


def is_trunk(state: TrialState) -> bool:
    """A wsd trunk: pretraining shared by a study's trials, not a trial itself."""
    return bool(state.extra and state.extra.get("role") == "trunk") or bool(state.row and
                                                                              state.row.get("role") == "trunk")


# ---------------------------------------------------------------------------------------------
# results.parquet and curves.parquet


def result_rows(study: Study, states: list[TrialState]) -> list[dict[str, Any]]:
    rows = []
    for s in states:
        row = td.result_row(s, study.name, study.swept_keys, METRIC_COLUMNS)
        row["preset"] = study.preset
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
        elif col in ("study", "trial_id", "config_hash", "status", "error", "preset", "probe_hash"):
            schema[col] = pl.String
        else:
            schema[col] = pl.Float64
    return schema


def _write_parquet(df: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def results_frame(study: Study, states: list[TrialState]) -> Any:
    """results.parquet's frame: the contract columns first, then swept keys, metrics and extras."""
    import polars as pl

    rows = result_rows(study, states)
    schema = _schema()
    swept = study.swept_keys
    columns = list(RESULT_COLUMNS) + [k for k in swept if k not in RESULT_COLUMNS + METRIC_COLUMNS] + \
        list(METRIC_COLUMNS) + list(EXTRA_COLUMNS)
    columns += sorted({k for r in rows for k in r} - set(columns))
    series = []
    for col in columns:
        values = [r.get(col) for r in rows]
        if col in schema:
            series.append(pl.Series(col, values, dtype=schema[col], strict=False))
        else:
            series.append(pl.Series(col, values, strict=False))
    return pl.DataFrame(series)


def curves_frame(study_name: str, states: list[TrialState], study_dir: Path, notes: list[str] | None = None) -> Any:
    import polars as pl

    rows: list[dict[str, Any]] = []
    for s in states:
        for r in td.curve_rows(trial_dir(study_dir, s.config_hash), notes):
            rows.append({"study": study_name, "trial_id": s.trial_id, "config_hash": s.config_hash, **r})
    schema = {"study": pl.String, "trial_id": pl.String, "config_hash": pl.String, "step": pl.Int64,
              "samples_seen": pl.Int64, "loss": pl.Float64, "lr": pl.Float64, "wall_s": pl.Float64}
    return pl.DataFrame({c: [r[c] for r in rows] for c in CURVE_COLUMNS}, schema=schema, strict=False)


def probes_frame(study: Study, states: list[TrialState], study_dir: Path) -> Any:
    """probes.parquet: long format, one row per trial x checkpoint (samples seen) x probe dataset x kind,
    for each finished trial's current probe protocol; the swept keys ride along for grouping."""
    import polars as pl

    rows: list[dict[str, Any]] = []
    for s in states:
        probe_hash = (s.row or {}).get("probe_hash")
        for r in td.probe_rows(trial_dir(study_dir, s.config_hash), probe_hash):
            rows.append({"study": study.name, "trial_id": s.trial_id, "config_hash": s.config_hash,
                         "probe_hash": probe_hash, "seed": s.seed, **{k: r.get(k) for k in PROBE_COLUMNS[5:]},
                         **{k: td.clean(s.params.get(k)) for k in study.swept_keys}})
    schema = {"study": pl.String, "trial_id": pl.String, "config_hash": pl.String, "probe_hash": pl.String,
              "seed": pl.Int64, "samples": pl.Int64, "dataset": pl.String, "kind": pl.String, "top1": pl.Float64,
              "best_lr": pl.Float64, "best_val_top1": pl.Float64, "still_improving": pl.Boolean}
    columns = list(PROBE_COLUMNS) + [k for k in study.swept_keys if k not in PROBE_COLUMNS]
    series = [pl.Series(c, [r.get(c) for r in rows], dtype=schema.get(c), strict=False) for c in columns]
    return pl.DataFrame(series)


def write_results(study: Study, study_dir: Path, states: list[TrialState] | None = None) -> tuple[Path, Path]:
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
