"""Run a study, top to bottom: lock -> study.toml -> plan -> run -> results -> report.

``run_study`` validates the data (before Ray starts), takes the study's lease, writes the resolved
``study.toml``, plans once (``studies.plan``: finished trials are reused, probe-only work is
recognised), runs what is left as one Ray Tune experiment (``studies.ray.tuner``), then rewrites
``results.parquet`` / ``curves.parquet`` from the trial directories (also after Ctrl-C or a crash)
and builds the report. ``resume_study`` does the same from a study directory alone. No Ray import
here: everything Ray lives in ``studies.ray``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studies import state as st
from studies.plan import make_plan, with_data_identity
from studies.spec import Study, StudyError


@dataclass
class Outcome:
    study_dir: Path
    experiment: str | None
    ran: list[str]  # config hashes launched in this call
    reused: list[str]  # finished before this call
    counts: dict[str, int]
    results: Path
    curves: Path
    report: Path | None = None
    notes: list[str] = field(default_factory=list)


def _storage(study_dir: Path, storage: str | None) -> str:
    if not storage:
        return str(study_dir)
    if "://" in storage:
        return storage.rstrip("/") + "/" + study_dir.name
    return str((Path(storage).expanduser().resolve()) / study_dir.name)


def _check_same_study(study_dir: Path, study: Study) -> None:
    old = study_dir / st.STUDY_TOML
    if not old.is_file():
        return
    import tomllib

    try:
        old_name = tomllib.loads(old.read_text()).get("name")
    except (ValueError, OSError):
        old_name = None
    if old_name and old_name != study.name:
        raise StudyError(f"{study_dir}: holds study {old_name!r}, not {study.name!r} (choose another --out)")


def run_study(study: Study, study_dir: str | Path, *, address: str | None = None, storage: str | None = None,
              console: Any = None, live: bool | None = None, build_report: bool = True, check_data: bool = True,
              command: str = "xtra study run", break_lock: bool = False) -> Outcome:
    """Run the study's unfinished trials. Raises StudyError (one line) on bad input, before Ray starts."""
    study_dir = Path(study_dir).expanduser().resolve()
    if check_data:
        study.check_data()
    study = with_data_identity(study)
    _check_same_study(study_dir, study)
    _check_trackers(study)
    with st.StudyLock(study_dir, command, break_lock=break_lock) as lock:
        st.atomic_write_text(study_dir / st.STUDY_TOML, study.to_toml())
        return _run_locked(study, study_dir, lock, address=address, storage=storage, console=console, live=live,
                           build_report=build_report, resuming=False)


def resume_study(study_dir: str | Path, *, address: str | None = None, console: Any = None, live: bool | None = None,
                 build_report: bool = True, max_concurrent: int | None = None, cpus_per_trial: float | None = None,
                 gpus_per_trial: float | None = None, workers_per_trial: int | None = None,
                 loggers: list[str] | None = None, break_lock: bool = False) -> Outcome:
    """Continue an interrupted study: unfinished trials from their checkpoints, finished ones untouched."""
    study_dir = Path(study_dir).expanduser().resolve()
    study = st.load_study_dir(study_dir)
    study = study.with_resources(cpus_per_trial, gpus_per_trial, max_concurrent, workers_per_trial, loggers)
    study.check_data()
    _check_trackers(study)
    with st.StudyLock(study_dir, "xtra study resume", break_lock=break_lock) as lock:
        return _run_locked(study, study_dir, lock, address=address, storage=None, console=console, live=live,
                           build_report=build_report, resuming=True)


def _check_trackers(study: Study) -> None:
    from studies.ray.tuner import check_trackers

    check_trackers(study.resources.loggers)


def _run_locked(study: Study, study_dir: Path, lock: st.StudyLock, *, address: str | None, storage: str | None,
                console: Any, live: bool | None, build_report: bool, resuming: bool) -> Outcome:
    from rich.console import Console

    from studies.ray.monitor import Display
    from studies.ray.tuner import fit

    console = console or Console()
    notes: list[str] = []
    if lock.took_over:
        notes.append(f"took over the lock of {st.describe_holder(lock.took_over)} (no longer running)")
    moved = st.migrate(study_dir)
    if moved:
        notes.append(f"migrated {len(moved)} trial director{'y' if len(moved) == 1 else 'ies'} to the current "
                     f"trial identity (paths and resources no longer part of it)")
    runs = st.read_runs(study_dir)
    for r in runs:  # a record still "running" belongs to a driver that died (we hold the lock)
        if r.get("state") == "running":
            r["state"] = "interrupted"

    plan = make_plan(study, study_dir)
    display = Display(console=console, live=console.is_terminal if live is None else live,
                      title=f"study {study.name} ({study.preset or 'no preset'})")
    for s in plan.states:
        display.add(s.config_hash, s.trial_id, s.params, s.config.pretrain.samples if s.config else 0,
                    s.status if s.status == "finished" else "pending")
        if s.status == "finished" and s.row:
            display.rows[s.config_hash].samples = int(s.row.get("samples_seen") or 0)
            display.rows[s.config_hash].loss = s.row.get("train_loss")
    if plan.reprobe:
        notes.append(f"{len(plan.reprobe)} pretrained trial(s) will only be probed (new probe protocol)")
    if resuming and plan.empty:
        notes.append("nothing to resume: every trial is finished")

    experiment = None
    try:
        if not plan.empty:
            experiment, finished = fit(plan, study_dir, address=address, storage_path=_storage(study_dir, storage),
                                       runs=runs, display=display, notes=notes,
                                       write_runs=lambda r: st.write_runs(study_dir, r))
            if not finished:
                notes.append(f"interrupted with trials unfinished; continue with `xtra study resume {study_dir}`")
        else:
            st.write_runs(study_dir, runs)
    finally:  # also after Ctrl-C or a crash: the parquet files reflect what is on disk
        after = make_plan(study, study_dir)
        results, curves = st.write_results(study, study_dir, list(after.states))
    ran = [s.config_hash for s in after.states if s.config_hash not in plan.reused]
    report = _build_report(study_dir, notes) if build_report else None
    return Outcome(study_dir=study_dir, experiment=experiment, ran=ran if experiment else [],
                   reused=list(plan.reused), counts=after.counts(), results=results, curves=curves, report=report,
                   notes=notes)


def _build_report(study_dir: Path, notes: list[str]) -> Path | None:
    from reports.build import build_report
    from xtra.pictures import study_pictures

    try:
        return Path(build_report(study_dir, pictures=study_pictures))
    except Exception as err:  # noqa: BLE001 - a report problem must not fail a finished run
        notes.append(f"report not built: {type(err).__name__}: {' '.join(str(err).split())}")
        return None
