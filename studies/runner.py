"""Run a study, top to bottom: lock -> study.toml -> plan -> run -> results -> report.

``run_study`` validates the data (before Ray starts), takes the study's lease, writes the resolved
``study.toml``, plans once (``xtra.studies.plan``: finished trials are reused, probe-only work is
recognised), runs what is left as one Ray Tune experiment (``xtra.studies.ray.tuner``), then rewrites
``results.parquet`` / ``curves.parquet`` from the trial directories (also after Ctrl-C or a crash)
and builds the report. ``resume_study`` does the same from a study directory alone. No Ray import
here: everything Ray lives in ``studies.ray``.

Storage (``--storage``, ``xtra.storage``) is the study's source of truth; the study directory is the
driver's local copy. By default they are one directory and nothing moves. With an object store
(``s3://bucket/prefix``) or another directory, the trials keep their directories there
(``xtra.studies.ray.trialfiles.TrialSync``), and the driver checks the storage before anything starts,
refreshes its copy from it (``pull``, without checkpoints) before planning and before writing results,
and writes study.toml, runs.json, the parquet files and report/ back. So any machine can resume or
report a study from its URI alone (``study_copy``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xtra import costs, lease
from xtra import studydir as st
from xtra import trialdir as td
from xtra.config import LEGACY_VALUES
from xtra.storage import Storage, StorageError, SyncResult, check, pull
from xtra.studies.load import load_study_dir
from xtra.studies.plan import make_plan, with_data_identity
from xtra.studies.policy import confirm_cost
from xtra.studies.slurm import Stop, job_record, stop_on_signals
from xtra.studies.spec import Study, StudyError

CACHE_ENV = "XTRA_CACHE"  # where local copies of studies opened by URI go (default ~/.cache/xtra)


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
    stopped: str | None = None  # the signal (SIGUSR1, SIGTERM) that stopped the run, if one did
    complete: bool = True  # False: the run ended with work left (a search's points not yet drawn count too)


def _storage(study_dir: Path, storage: str | None) -> str:
    if not storage:
        return _recorded_storage(study_dir) or str(study_dir)
    if "://" in storage:
        return storage.rstrip("/") + "/" + study_dir.name
    return str((Path(storage).expanduser().resolve()) / study_dir.name)


def _recorded_storage(study_dir: Path) -> str | None:
    """The object store a local study directory was last run with (a later run or resume without
    --storage keeps using it). Local storage paths are not adopted: a moved study stays where it is."""
    for run in reversed(st.read_runs(study_dir)):
        path = str(run.get("storage_path") or "")
        if "://" in path:
            return path
    return None


def _check_storage(uri: str, write: bool = True) -> Storage:
    """One line naming the URI and what failed (no bucket, no credentials, denied), before any work."""
    try:
        return check(uri, write=write)
    except StorageError as err:
        raise StudyError(" ".join(str(err).split())) from None


def _elsewhere(stor: Storage, study_dir: Path) -> bool:
    """Whether the storage is not the study directory itself (then the directory is a copy of it)."""
    return not stor.is_directory_itself(study_dir, "")


def shared_lease(stor: Storage, study_dir: Path) -> Storage | None:
    """Where the lease must also live: storage that other machines' drivers see but this directory is not."""
    return stor if _elsewhere(stor, study_dir) else None


def _light(path: str) -> bool:
    """What a driver's copy of a study holds: everything but checkpoints and Ray's own state."""
    parts = path.split("/")
    if parts[0] == st.TRIALS and len(parts) > 2:
        return not td.is_checkpoint("/".join(parts[2:]))
    return not (parts[0].startswith("run-") or parts[0] == "train" or parts[0] == lease.LOCK)


def _pull(stor: Storage, study_dir: Path, include: Any = _light) -> SyncResult | None:
    """Refresh the local copy from storage (only what changed)."""
    if _elsewhere(stor, study_dir) and stor.is_file(st.STUDY_TOML):  # a new study has nothing to pull yet
        return pull(stor.uri, study_dir, include=include)
    return None


def _push(stor: Storage, study_dir: Path, *names: str) -> None:
    """Write the driver's files (study.toml, runs.json, the parquet files) to storage."""
    if not _elsewhere(stor, study_dir):
        return
    for name in names:
        if (Path(study_dir) / name).is_file():
            stor.put_file(Path(study_dir) / name, name)


def default_copy(uri: str) -> Path:
    """Where a study opened by its URI is copied: $XTRA_CACHE/studies/<scheme>/<bucket>/<prefix>."""
    root = Path(os.environ.get(CACHE_ENV) or "~/.cache/xtra").expanduser()
    scheme, _, rest = uri.partition("://")
    return (root / "studies" / scheme / rest.strip("/")).resolve()


def study_copy(where: str | Path, copy: str | Path | None = None, *, write: bool = False,
               checkpoints: bool = False) -> tuple[Path, Storage, SyncResult]:
    """A local, refreshed study directory for ``where``: a study directory (refreshed from the object
    store it was run with, if any) or a storage URI or path copied into ``copy`` (for a URI, default
    ``default_copy``). Checks the storage first (StudyError, one line). ``checkpoints`` copies those
    too. Returns the directory, the storage and what the refresh transferred."""
    study_dir, stor = locate_study(where, copy, write=write)
    pulled = SyncResult(transferred=(), unchanged=())
    if _elsewhere(stor, study_dir) and not lease.is_running(study_dir):  # a live driver's copy is read as it is
        pulled = _refresh_copy(stor, study_dir, checkpoints) or pulled
    return study_dir, stor, pulled


def locate_study(where: str | Path, copy: str | Path | None = None, *, write: bool = False) -> tuple[Path, Storage]:
    """(the local study directory, its checked storage) for ``where``, as ``study_copy`` finds them, without
    copying anything: a driver refreshes its copy only once it holds the study's lease (a refresh under a
    live driver replaces files it has open, e.g. a search's optuna.db)."""
    text = os.fspath(where)
    if "://" in text or copy is not None:
        uri = text.rstrip("/")
        study_dir = Path(copy).expanduser().resolve() if copy else default_copy(uri)
    else:
        study_dir = Path(text).expanduser().resolve()
        uri = _recorded_storage(study_dir) or str(study_dir)
    stor = _check_storage(uri, write=write)
    if _elsewhere(stor, study_dir) and not stor.is_file(st.STUDY_TOML):
        raise StudyError(f"{stor.uri}: not a study (no {st.STUDY_TOML} there; check the URI)")
    return study_dir, stor


def _refresh_copy(stor: Storage, study_dir: Path, checkpoints: bool = False) -> SyncResult | None:
    try:
        return _pull(stor, study_dir, include=(lambda p: not p.startswith(("run-", "train/"))) if checkpoints
                     else _light)
    except StorageError as err:
        raise StudyError(" ".join(str(err).split())) from None


def _refresh_locked(lock: lease.StudyLock, stor: Storage, study_dir: Path) -> list[str]:
    """The copy refreshed from storage by the driver that now holds the study: after a live driver whose
    lock it broke has stopped (what that one finished while stopping is in storage then). Returns notes."""
    notes = []
    if lock.broke:  # a live driver: let it stop its trials before any of them is planned again
        from xtra.studies.ray.stopping import grace_s

        notes.append(lock.wait_for_broken(timeout=lease.stale_after(lock.broke) + grace_s()))
    elif lock.took_over:
        notes.append(f"took over the lock of {lease.describe_holder(lock.took_over)} (no longer running)")
    _refresh_copy(stor, study_dir)
    return notes


def _check_same_study(study_dir: Path, study: Study) -> None:
    try:
        old_name = (st.read_study_toml(study_dir) or {}).get("name")
    except StudyError:
        old_name = None
    if old_name and old_name != study.name:
        raise StudyError(f"{study_dir}: holds study {old_name!r}, not {study.name!r} (choose another --out)")


def _keep_directory_rules(study_dir: Path, study: Study) -> Study:
    """A study file run into an existing study directory trains under the rules that directory's trials
    were trained under (`xtra.config.LEGACY_VALUES`: what its study.toml records, or the earlier values
    when it predates them), unless --set names one; naming another rule than the directory's is refused,
    so one directory never holds trials of both."""
    path = Path(study_dir) / st.STUDY_TOML
    if not path.is_file() or study.path == path:
        return study
    try:
        before = load_study_dir(study_dir).base
    except StudyError:
        return study  # a damaged study.toml is rewritten below, as before
    kept = {}
    for key in LEGACY_VALUES:
        if key not in before or key not in study.base or before[key] == study.base[key]:
            continue  # swept by an axis, or the same rule
        if any(text.split("=", 1)[0] == key for text in study.sets):
            raise StudyError(f"{study_dir}: its trials were trained with {key}={before[key]!r}, not "
                             f"{study.base[key]!r} (--set {key}): one directory holds one rule (choose another --out)")
        kept[key] = before[key]
    return replace(study, base={**study.base, **kept}) if kept else study


def run_study(study: Study, study_dir: str | Path, *, address: str | None = None, storage: str | None = None,
              console: Any = None, live: bool | None = None, build_report: bool = True, check_data: bool = True,
              command: str = "xtra study run", break_lock: bool = False, yes: bool = False) -> Outcome:
    """Run the study's unfinished trials. Raises StudyError (one line) on bad input, before Ray starts;
    a study estimated above ``policy.CONFIRM_GPU_HOURS`` runs only with ``yes``."""
    cost_note = confirm_cost(study, yes)
    study_dir = Path(study_dir).expanduser().resolve()
    if check_data:
        study.check_data()
    check_memory(study)
    study = with_data_identity(study)
    stor = _check_storage(_storage(study_dir, storage))  # before any trial starts
    _check_trackers(study)
    with lease.StudyLock(study_dir, command, break_lock=break_lock, storage=shared_lease(stor, study_dir)) as lock, \
            stop_on_signals() as stop:
        _stop_when_lost(lock, stop)
        notes = [cost_note] if cost_note else []
        notes += _refresh_locked(lock, stor, study_dir)
        _check_same_study(study_dir, study)
        study = _keep_directory_rules(study_dir, study)
        st.write_study_toml(study_dir, study.to_toml())
        _push(stor, study_dir, st.STUDY_TOML)
        return _run_locked(study, study_dir, lock, address=address, stor=stor, console=console, live=live,
                           build_report=build_report, resuming=False, stop=stop, notes=notes)


def resume_study(study_dir: str | Path, *, address: str | None = None, console: Any = None, live: bool | None = None,
                 build_report: bool = True, max_concurrent: int | None = None, cpus_per_trial: float | None = None,
                 gpus_per_trial: float | None = None, workers_per_trial: int | None = None,
                 loggers: list[str] | None = None, break_lock: bool = False, copy: str | Path | None = None) -> Outcome:
    """Continue an interrupted study: unfinished trials from their checkpoints, finished ones untouched.
    ``study_dir`` may be the study's storage URI (``s3://bucket/prefix/study``): it is copied into
    ``copy`` (default ``default_copy``) and resumed from storage alone, on any machine."""
    study_dir, stor = locate_study(study_dir, copy, write=True)
    with lease.StudyLock(study_dir, "xtra study resume", break_lock=break_lock,
                         storage=shared_lease(stor, study_dir)) as lock, stop_on_signals() as stop:
        _stop_when_lost(lock, stop)
        notes = _refresh_locked(lock, stor, study_dir)
        study = load_study_dir(study_dir)
        study = study.with_resources(cpus_per_trial, gpus_per_trial, max_concurrent, workers_per_trial, loggers)
        study.check_data()
        check_memory(study)
        _check_trackers(study)
        return _run_locked(study, study_dir, lock, address=address, stor=stor, console=console, live=live,
                           build_report=build_report, resuming=True, stop=stop, notes=notes)


def _stop_when_lost(lock: lease.StudyLock, stop: Stop) -> None:
    """A driver whose lease is taken (or goes unrefreshed past the stale time) stops like at a signal."""
    lock.on_lost = stop.lose_study
    if lock.lost:  # lost before we listened
        stop.lose_study(lock.lost)


def _lost(lock: lease.StudyLock, stop: Stop) -> lease.StudyLeaseLost:
    done = f"; {stop.note}" if stop.note else ""
    return lease.StudyLeaseLost(f"lost the study: {lock.lost}; this driver stopped{done} and wrote nothing more "
                                f"(the driver holding the study now writes its results)")


def device_memory(gpus: float) -> tuple[int, str] | None:
    """(bytes, what) a trial may use here: one GPU's memory (its share, for a fraction of one; read by
    nvidia-smi so the driver creates no CUDA context), or this machine's RAM; None when unknown (the
    GPUs are on other nodes)."""
    if gpus > 0:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total,name", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
            mib, name = min((int(line.split(",")[0]), line.split(",", 1)[1].strip()) for line in out if line.strip())
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        return int(mib * 2**20 * min(gpus, 1.0)), f"one {name}" + (f" ({gpus:g} of it)" if gpus < 1 else "")
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def check_memory(study: Study) -> None:
    """Refuse a trial whose memory estimate exceeds its device, before Ray starts or anything is
    allocated (StudyError, one line with the estimate)."""
    res = study.resources
    found = device_memory(res.gpus_per_trial)
    if found is None:
        return
    available, where = found
    configs = [s.config for s in study.expand()] if study.search is None else [study.base_config()]
    seen = set()
    for cfg in configs:
        key = (cfg.model, cfg.pretrain.batch_size, cfg.pretrain.accumulate)
        if key in seen:
            continue
        seen.add(key)
        batch = cfg.pretrain.batch_size // max(1, res.workers)  # data-parallel workers split the batch
        try:
            costs.check_memory(cfg.model, batch, cfg.pretrain.accumulate, available, where)
        except ValueError as err:
            raise StudyError(f"{study.source}: {err}") from None


def _check_trackers(study: Study) -> None:
    from xtra.studies.ray.tuner import check_trackers

    check_trackers(study.resources.loggers)


def _run_locked(study: Study, study_dir: Path, lock: lease.StudyLock, *, address: str | None, stor: Storage,
                console: Any, live: bool | None, build_report: bool, resuming: bool, stop: Stop | None = None,
                notes: list[str] | None = None) -> Outcome:
    from rich.console import Console

    from xtra.studies.ray.monitor import Display
    from xtra.studies.ray.tuner import fit

    console = console or Console()
    stop = stop or Stop()  # SIGUSR1 / SIGTERM stop the run the way Ctrl-C does (xtra.studies.slurm)
    notes = [n for n in notes or [] if n]
    root = stor.local_path()  # trial directories of a study kept in an object store are never renamed
    moved = st.migrate(root) if root is not None else []
    if moved and _elsewhere(stor, study_dir):
        _pull(stor, study_dir)
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
    for job in plan.trunks:
        display.add(job.config_hash, f"trunk-{job.trunk}", {"role": "wsd trunk"}, job.config.pretrain.samples)
    if plan.samples and not (study.search is not None and study.search.halving):  # halving notes its own total
        done, cosine = plan.samples["trained"], plan.samples["cosine_equivalent"]
        notes.append(f"wsd: {len(plan.branches)} trial(s) branch off {len(plan.trunks)} trunk run(s): this run "
                     f"trains {done:,} samples where separate runs would train {cosine:,} "
                     f"({cosine / max(done, 1):.2f}x fewer)")
    if plan.reprobe:
        notes.append(f"{len(plan.reprobe)} pretrained trial(s) will only be probed (new probe protocol)")
    if resuming and plan.empty:
        notes.append("nothing to resume: every trial is finished")

    experiment, complete = None, plan.empty
    try:
        if not plan.empty and not stop.signal:
            def write_runs(r: list[dict[str, Any]]) -> None:
                if lock.lost:
                    return  # the study is another driver's now
                if r and "slurm" not in r[-1]:
                    r[-1].update(job_record())  # the Slurm job running this driver, for `xtra study status`
                st.write_runs(study_dir, r)
                _push(stor, study_dir, st.RUNS)

            finished = False
            with stop.fitting():
                experiment, finished = fit(plan, study_dir, address=address, storage_path=stor.uri,
                                           runs=runs, display=display, notes=notes, write_runs=write_runs,
                                           stop=stop)
            if stop.signal:
                notes.append(f"stopped by {stop.signal}: no new trials; "
                             + (stop.note or "running ones keep their last checkpoint"))
            complete = finished
            if not finished:
                notes.append(f"interrupted with trials unfinished; continue with `xtra study resume {study_dir}`")
        elif not lock.lost:
            st.write_runs(study_dir, runs)
            _push(stor, study_dir, st.RUNS)
    finally:  # also after Ctrl-C or a crash: the parquet files reflect what is on disk (and in storage)
        if not lock.lost:
            after, results, curves = _write_results(study, study_dir, stor, notes)
    if lock.lost:
        raise _lost(lock, stop)
    starts_before = {s.config_hash: s.starts for s in plan.states}  # an interrupted run leaves some never started
    ran = [s.config_hash for s in after.states if s.starts > starts_before.get(s.config_hash, 0)]
    report = build_study_report(study_dir, stor, notes) if build_report else None
    return Outcome(study_dir=study_dir, experiment=experiment, ran=ran if experiment else [],
                   reused=list(plan.reused), counts=after.counts(), results=results, curves=curves, report=report,
                   notes=notes, stopped=stop.signal, complete=complete)


def _write_results(study: Study, study_dir: Path, stor: Storage, notes: list[str]) -> tuple[Any, Path, Path]:
    """results.parquet / curves.parquet / probes.parquet from the trial directories, here and in storage."""
    try:
        _pull(stor, study_dir)
    except StorageError as err:
        notes.append(f"results from the last copy of the study: {' '.join(str(err).split())}")
    after = make_plan(study, study_dir)
    results, curves = st.write_results(study, study_dir, list(after.states))
    try:
        _push(stor, study_dir, st.RESULTS, st.CURVES, st.PROBES, st.OPTUNA_DB, st.LADDER)  # a search resumes anywhere
    except StorageError as err:
        notes.append(f"results not written to storage: {' '.join(str(err).split())}")
    return after, results, curves


def pictures_from(stor: Storage, study_dir: Path) -> Any:
    """``study_pictures`` for a study copy: a chosen trial's checkpoint is fetched from storage."""
    from xtra.pictures import study_pictures

    if not _elsewhere(stor, study_dir):
        return study_pictures

    def fetch(run_dir: Path) -> bool:
        stor.download_dir(f"{st.TRIALS}/{run_dir.name}", run_dir, include=lambda n: n == td.CHECKPOINT, prune=False)
        return (run_dir / td.CHECKPOINT).is_file()

    return lambda d: study_pictures(d, fetch=fetch)


def publish_report(stor: Storage, study_dir: Path) -> str | None:
    """Commit STUDY_DIR/report/ to the study's storage (a reader sees the whole report or the last one)."""
    if not _elsewhere(stor, study_dir) or not (Path(study_dir) / "report").is_dir():
        return None
    stor.upload_dir(Path(study_dir) / "report", "report")
    return stor.uri_of("report/index.html")


def build_study_report(study_dir: Path, stor: Storage, notes: list[str]) -> Path | None:
    from xtra.reports.build import build_report

    try:
        index = Path(build_report(study_dir, pictures=pictures_from(stor, study_dir)))
    except Exception as err:  # noqa: BLE001 - a report problem must not fail a finished run
        notes.append(f"report not built: {type(err).__name__}: {' '.join(str(err).split())}")
        return None
    try:
        where = publish_report(stor, study_dir)
        if where:
            notes.append(f"report also in storage: {where}")
    except StorageError as err:
        notes.append(f"report not written to storage: {' '.join(str(err).split())}")
    return index
