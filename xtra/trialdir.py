"""The one owner of a trial directory, ``STUDY_DIR/trials/<config_hash>/``.

Everyone who reads or writes a trial's files goes through here: ``xtra.trial`` (the trial itself),
the Ray adapters (attempts, checkpoints handed to Tune), ``xtra.studydir`` (``xtra study status``,
results.parquet), ``xtra.reports.collect`` and the synthetic fixtures. There is ONE definition of a
trial's status (``status_of``), so the terminal and the report cannot disagree.

Layout::

    config.json           the resolved TrialConfig (resources included, as run)
    checkpoint.pt         the latest pretraining checkpoint (atomic)
    checkpoints/          immutable checkpoints kept at given sample counts (probes along the way, WSD branches)
    metrics.jsonl         one line per logged step (and events such as skipped images)
    log.txt               human-readable log of every attempt
    probe.json            probe results of the trial's probe protocol (the last one run)
    probes/<probe_hash>.json   every probe protocol run on this pretraining, keyed by TrialConfig.probe_hash
    trial.json            the result row, written once the trial is finished
    params.json           study, trial_id, swept params, seed (written by the runner)
    attempts.jsonl        one line per start / finish / error of the trial (the runner)
    status.json           why an unfinished trial stopped: failed (with its error) or stopped (ASHA)
    tune_checkpoint.json  samples_seen of the checkpoint last handed to Ray

Statuses: ``finished``; ``failed`` / ``stopped`` (terminal, with the reason); ``running`` (a live
runner holds the study and this trial has started); ``interrupted`` (started, no live runner: a
resume continues it from its checkpoint); ``pending`` (never started).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtra.config import TrialConfig
from xtra.fileio import atomic_write_json, atomic_write_text
from xtra.overrides import from_dict

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
LOG = "log.txt"
PROBE = "probe.json"
PROBE_RANDOM = "probe-random.json"  # an untrained encoder of the same config: the floor of every report
PROBES = "probes"
RESULT = "trial.json"
PARAMS = "params.json"
ATTEMPTS = "attempts.jsonl"
STATUS = "status.json"
TUNE_CHECKPOINT = "tune_checkpoint.json"

# Written whole, one at a time, beside the trial's commits when the study's storage is remote
# (``xtra.storage``: a name has one writer): params.json and attempts.jsonl by the trial's Ray actor,
# status.json by it (a diverged trial) or by the driver (retries exhausted, stopped by ASHA). Every
# other file is the trial's own and reaches storage in its commits (``upload_dir``).
PLAIN = (PARAMS, ATTEMPTS, STATUS)


def committed(name: str) -> bool:
    """Whether a file of the trial directory travels in the trial's commits (not a PLAIN file)."""
    return name not in PLAIN


def is_checkpoint(name: str) -> bool:
    """checkpoint.pt and the kept checkpoints/: what a driver's or a report's light copy leaves out."""
    return name == CHECKPOINT or name.startswith(CHECKPOINTS + "/")


FINISHED = "finished"
STATUSES = ("finished", "failed", "stopped", "running", "interrupted", "pending")
TERMINAL = ("finished", "failed", "stopped")


# ---------------------------------------------------------------------------------------------
# Reading and writing files, tolerant of a kill mid-write


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=str) + "\n")
        f.flush()


def read_jsonl(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a line cut short by a kill is skipped (and counted in ``notes``)."""
    rows: list[dict[str, Any]] = []
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return rows
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    if bad and notes is not None:
        notes.append(f"{path}: skipped {bad} unreadable line(s)")
    return rows


# metrics.jsonl, the trial's curve: one row per log window, appended by pretraining (rank 0)


def read_metrics(run_dir: Path, upto: int | None = None, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The trial's curve rows in the order logged (a line cut short by a kill is skipped, as in every
    JSON-lines file here); with ``upto``, only the rows logged at or before that many samples seen."""
    rows = read_jsonl(Path(run_dir) / METRICS, notes)
    return rows if upto is None else [r for r in rows if r.get("samples_seen", upto + 1) <= upto]


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the curve at once (a resumed run drops rows past its checkpoint; a branch starts from
    its trunk's curve)."""
    atomic_write_text(Path(run_dir) / METRICS, "".join(f"{json.dumps(row)}\n" for row in rows))


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """One log window's row, flushed: a reader mid-run sees whole lines."""
    append_jsonl(Path(run_dir) / METRICS, row)


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------------------------
# Writers


def path(study_dir: Path, config_hash: str) -> Path:
    return Path(study_dir) / "trials" / config_hash


def write_config(run_dir: Path, cfg: TrialConfig) -> None:
    write_json(Path(run_dir) / CONFIG, cfg.to_dict())


def write_params(run_dir: Path, *, study: str, preset: str | None, trial_id: str, params: dict[str, Any],
                 seed: int, config_hash: str, extra: dict[str, Any] | None = None) -> None:
    """Who this trial is in its study; written once (the first study to run it names it)."""
    p = Path(run_dir) / PARAMS
    if not p.exists():
        write_json(p, {"study": study, "preset": preset, "trial_id": trial_id, "params": params, "seed": seed,
                       "config_hash": config_hash, **(extra or {})})


def record_attempt(run_dir: Path, event: str, **fields: Any) -> None:
    """One line of attempts.jsonl: ``start`` clears a previous terminal status, ``failed`` / ``stopped``
    set one (status.json), ``error`` is a crash Ray may retry, ``finish`` ends it."""
    run_dir = Path(run_dir)
    if event == "start":
        (run_dir / STATUS).unlink(missing_ok=True)
    append_jsonl(run_dir / ATTEMPTS, {"event": event, "time": now(), **fields})
    if event in ("failed", "stopped"):
        write_json(run_dir / STATUS, {"status": event, "error": fields.get("error")})


def write_result(run_dir: Path, row: dict[str, Any]) -> None:
    """The finished trial's result row (trial.json): the marker that makes a trial finished."""
    write_json(Path(run_dir) / RESULT, {**row, "status": FINISHED})


def write_tune_checkpoint(run_dir: Path, samples_seen: int, step: int | None) -> None:
    write_json(Path(run_dir) / TUNE_CHECKPOINT, {"samples_seen": int(samples_seen), "step": step})


def kept_samples(run_dir: Path) -> list[int]:
    """Sample counts at which the run kept an immutable checkpoint (``checkpoints/samples-<S>.pt``)."""
    folder = Path(run_dir) / CHECKPOINTS
    found = [p.stem[len("samples-"):] for p in folder.glob("samples-*.pt")] if folder.is_dir() else []
    return sorted(int(t) for t in found if t.isdigit())


def probe_path(run_dir: Path, probe_hash: str) -> Path:
    return Path(run_dir) / PROBES / f"{probe_hash}.json"


def probe_rows(run_dir: Path, probe_hash: str | None) -> list[dict[str, Any]]:
    """The long-format probe rows (samples x dataset x kind) of one protocol on this pretraining."""
    if not probe_hash:
        return []
    stored = read_json(probe_path(run_dir, probe_hash))
    rows = stored.get("rows") if isinstance(stored, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


# ---------------------------------------------------------------------------------------------
# Readers


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """trial.json when the trial is finished, else None."""
    row = read_json(Path(run_dir) / RESULT)
    return row if isinstance(row, dict) and row.get("status") == FINISHED else None


def read_config(run_dir: Path) -> TrialConfig | None:
    raw = read_json(Path(run_dir) / CONFIG)
    if not isinstance(raw, dict):
        return None
    try:
        return from_dict(raw)
    except (ValueError, TypeError):  # an older or foreign config
        return None


def checkpoint_samples(run_dir: Path) -> int | None:
    """Samples seen by the checkpoint a resume would start from, or None without one."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).exists():
        return None
    meta = read_json(run_dir / TUNE_CHECKPOINT)
    if isinstance(meta, dict) and "samples_seen" in meta:
        return int(meta["samples_seen"])
    rows = read_metrics(run_dir)
    return int(rows[-1].get("samples_seen", 0)) if rows else 0


def status_of(result: dict[str, Any] | None, status: Any, attempts: list[dict[str, Any]], started: bool,
              running: bool) -> tuple[str, str | None]:
    """THE status of a trial (see the module docstring). ``running``: a live runner holds the study."""
    if result is not None:
        return FINISHED, None
    if isinstance(status, dict) and status.get("status") in ("failed", "stopped"):
        return str(status["status"]), status.get("error")
    last = attempts[-1] if attempts else {}
    if last.get("event") == "error" and not running:
        return "failed", last.get("error")
    if started or attempts:
        if running:
            return "running", None
        return "interrupted", "stopped mid-run (driver killed or preempted); `xtra study resume` continues it"
    return "pending", None


@dataclass
class TrialState:
    trial_id: str
    config_hash: str
    params: dict[str, Any]
    seed: int
    config: TrialConfig | None
    status: str
    error: str | None = None
    row: dict[str, Any] | None = None  # trial.json when finished
    starts: int = 0  # how many times a runner started it
    checkpoint_samples: int | None = None  # the checkpoint it would resume from
    last: dict[str, Any] | None = None  # the last metrics.jsonl row with a step
    study: str | None = None
    extra: dict[str, Any] | None = None  # other keys of params.json (e.g. a WSD branch's trunk)

    @property
    def samples_seen(self) -> int | None:
        if self.row and self.row.get("samples_seen") is not None:
            return int(self.row["samples_seen"])
        if self.last and self.last.get("samples_seen") is not None:
            return int(self.last["samples_seen"])
        return 0 if self.status == "pending" else None


def read_state(run_dir: Path, *, running: bool, trial_id: str | None = None, params: dict[str, Any] | None = None,
               seed: int | None = None, config: TrialConfig | None = None,
               notes: list[str] | None = None) -> TrialState:
    """A trial's state from its directory alone (it may not exist yet: then it is pending)."""
    run_dir = Path(run_dir)
    rec = read_json(run_dir / PARAMS)
    rec = rec if isinstance(rec, dict) else {}
    config = config or read_config(run_dir)
    attempts = read_jsonl(run_dir / ATTEMPTS)
    steps = [m for m in read_metrics(run_dir, notes=notes) if "step" in m]
    result = read_json(run_dir / RESULT)
    if result is not None and not (isinstance(result, dict) and result.get("status") == FINISHED):
        if notes is not None:
            notes.append(f"{run_dir / RESULT}: unreadable; the trial is not counted as finished")
        result = None
    status, error = status_of(result, read_json(run_dir / STATUS), attempts, bool(steps), running)
    default_seed = config.seed if config is not None else 0
    known = {"study", "preset", "trial_id", "params", "seed", "config_hash"}
    return TrialState(trial_id=trial_id or rec.get("trial_id") or run_dir.name, config_hash=run_dir.name,
                      params=params if params is not None else dict(rec.get("params") or {}),
                      seed=seed if seed is not None else int(rec.get("seed", default_seed) or 0),
                      config=config, status=status, error=error, row=result,
                      starts=sum(1 for a in attempts if a.get("event") == "start"),
                      checkpoint_samples=checkpoint_samples(run_dir), last=steps[-1] if steps else None,
                      study=rec.get("study"), extra={k: v for k, v in rec.items() if k not in known} or None)


# ---------------------------------------------------------------------------------------------
# A run's part in a wsd schedule

TRUNK, BRANCH = "trunk", "branch"


@dataclass(frozen=True)
class WsdJob:
    """A run's part in a wsd schedule: a *trunk* pretrains once, keeping checkpoints where its branches
    start (``keep_at``); a *branch* continues from its trunk's checkpoint at ``start`` samples (in
    ``trunk_dir``, as this node sees it) under its own budget and cooldown, then probes like any trial.
    The plan makes it (``xtra.studies.plan``), Ray carries it as ``as_dict()`` (a trial's Tune config is
    plain data), ``xtra.trial.run_trial`` runs it."""

    role: str
    keep_at: tuple[int, ...] = ()
    trunk_dir: str = ""
    start: int = 0

    def __post_init__(self) -> None:
        if self.role not in (TRUNK, BRANCH):
            raise ValueError(f"job.role={self.role!r}: unknown (allowed: {TRUNK}, {BRANCH})")

    @property
    def trunk_name(self) -> str:
        """The trunk's directory name: how a branch's row names its trunk."""
        return Path(self.trunk_dir).name

    def as_dict(self) -> dict[str, Any]:
        if self.role == TRUNK:
            return {"role": TRUNK, "keep_at": list(self.keep_at)}
        return {"role": BRANCH, "trunk_dir": self.trunk_dir, "start": self.start}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | WsdJob | None) -> WsdJob | None:
        """``as_dict()``'s form back (None or {}: an ordinary trial)."""
        if raw is None or isinstance(raw, WsdJob):
            return raw
        if not raw:
            return None
        return cls(role=str(raw.get("role")), keep_at=tuple(int(s) for s in raw.get("keep_at", ())),
                   trunk_dir=str(raw.get("trunk_dir", "")), start=int(raw.get("start", 0)))


def trial_dirs(study_dir: Path) -> list[Path]:
    root = Path(study_dir) / "trials"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


# ---------------------------------------------------------------------------------------------
# Rows


def clean(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def curve_rows(run_dir: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Logged steps of a trial, one per step (a resumed run may log a step twice: the last wins)."""
    seen: dict[int, dict[str, Any]] = {}
    for m in read_metrics(run_dir, notes=notes):
        if "step" in m:
            seen[int(m["step"])] = m
    return [{"step": step, "samples_seen": seen[step].get("samples_seen"), "loss": clean(seen[step].get("loss")),
             "lr": seen[step].get("lr"), "wall_s": seen[step].get("wall_s")} for step in sorted(seen)]
