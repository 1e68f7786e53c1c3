"""A plan becomes one Ray Tune experiment: a grid of pending trials, or an Optuna search whose
state lives in ``STUDY_DIR/optuna.db`` (SQLite: optuna-dashboard opens it, and a resumed search
continues the same Optuna study), with the study's experiment trackers attached."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from xtra.studies.plan import Plan
from xtra.studies.ray.monitor import Display, Monitor, trial_name
from xtra.studies.ray.session import ray_session
from xtra.studies.ray.stopping import PREEMPTED, GracefulStop, clear_stop, run_id
from xtra.studies.ray.trainable import trainable
from xtra.studies.ray.workers import MAX_FAILURES
from xtra.studies.spec import Study, StudyError
from xtra.studydir import OPTUNA_DB

EXPERIMENT = "run-{}"
TRACKERS_DIR = "trackers"  # STUDY_DIR/trackers/{tensorboard,mlflow,wandb}


def optuna_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{Path(study_dir) / OPTUNA_DB}"


def _search_space(study: Study) -> dict[str, Any]:
    space: dict[str, Any] = {}
    for key, dom in study.search.space.items():
        typ = dom["type"]
        if typ == "loguniform":
            space[key] = tune.loguniform(dom["low"], dom["high"])
        elif typ == "uniform":
            space[key] = tune.uniform(dom["low"], dom["high"])
        elif typ == "int":
            space[key] = tune.randint(dom["low"], dom["high"] + 1)  # high inclusive, like the file says
        else:
            space[key] = tune.choice(list(dom["values"]))
    return space


def _trial_dirname(trial: Any) -> str:
    t = trial.config.get("trial", {})
    h = t.get("hash")
    return f"trial-{h}" if h else f"trial-{trial.trial_id}"


class _FinalMetricOptuna(OptunaSearch):
    """OptunaSearch that ignores intermediate reports lacking the metric (probe accuracy only exists
    at the end of a trial); the final report carries it. ``after_trial`` runs once Optuna has recorded
    a finished trial (the search's state reaches storage then)."""

    def __init__(self, *args: Any, after_trial: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._after_trial = after_trial

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(result.get(self.metric), (int, float)):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (result or {}).get("status") == PREEMPTED:  # not a result: left RUNNING, its point runs again
            return
        super().on_trial_complete(trial_id, result=result, error=error)
        if self._after_trial is not None:
            self._after_trial()


class OptunaDbToStorage:
    """After every finished trial, the search's state (``optuna.db``) reaches the study's storage, so a
    driver killed at any moment (a preempted head node) resumes anywhere with every finished trial told
    to Optuna. A consistent copy through SQLite's backup API; nothing to do when the storage is the
    study directory itself. Picklable (Tune saves the searcher with its experiment state)."""

    def __init__(self, study_dir: Path, storage_uri: str) -> None:
        self.study_dir, self.storage_uri = Path(study_dir), storage_uri

    def __call__(self) -> None:
        import sqlite3

        from xtra.storage import Storage, StorageError

        stor = Storage.from_uri(self.storage_uri)
        src = self.study_dir / OPTUNA_DB
        if stor.is_directory_itself(self.study_dir, "") or not src.is_file():
            return
        tmp = self.study_dir / f".{OPTUNA_DB}.push.tmp"
        try:
            with contextlib.closing(sqlite3.connect(src)) as a, contextlib.closing(sqlite3.connect(tmp)) as b:
                a.backup(b)
            stor.put_file(tmp, OPTUNA_DB)
        except (sqlite3.Error, StorageError, OSError):
            pass  # the runner pushes it again at the end; the next finished trial tries again
        finally:
            tmp.unlink(missing_ok=True)


def _optuna_searcher(study: Study, study_dir: Path, rerun: tuple[dict[str, Any], ...],
                     storage_uri: str | None = None) -> OptunaSearch:
    """Optuna with SQLite storage in the study directory. Trials a killed driver left RUNNING in the
    database are closed as failed; their points run again (from their checkpoints) first."""
    import optuna

    s = study.search
    storage = optuna.storages.RDBStorage(optuna_storage_url(study_dir))
    name = study.name
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        for t in existing.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            existing.tell(t.number, state=optuna.trial.TrialState.FAIL)
    # A resumed search must not replay the first run's random draws (its first suggestions would be the
    # points already tried): the seed moves on with the trials the study holds, so the same history
    # still gives the same suggestions.
    told = len(existing.get_trials(deepcopy=False)) if existing is not None else 0
    if s.sampler == "grid":  # every combination of the choices once (in an order the seed shuffles)
        # Ray names each parameter by its path in the param space ("params/<dotted key>", _param_space)
        sampler = optuna.samplers.GridSampler({f"params/{k}": list(d["values"]) for k, d in s.space.items()},
                                              seed=s.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=s.seed + told)
    return _FinalMetricOptuna(metric=s.metric, mode=s.mode, sampler=sampler, study_name=name, storage=storage,
                              # named as Ray names them in the search space ("params/<dotted key>"): a point
                              # under other names is dropped without a word and a fresh one drawn instead
                              points_to_evaluate=[{f"params/{k}": v for k, v in p.items()} for p in rerun] or None,
                              after_trial=OptunaDbToStorage(study_dir, storage_uri) if storage_uri else None)


def tracker_callbacks(loggers: tuple[str, ...], study: Study, study_dir: Path) -> list[Any]:
    """Ray Tune's logger callbacks for the trackers asked for; each logs every trial's config and its
    reported metrics (loss curve, throughput, probe results). Offline by design: files under
    STUDY_DIR/trackers/ (MLflow in trackers/mlflow/mlflow.db unless MLFLOW_TRACKING_URI says otherwise;
    W&B in offline mode unless WANDB_MODE says otherwise)."""
    out: list[Any] = []
    root = Path(study_dir) / TRACKERS_DIR
    for name in loggers:
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            out.append(TBXLoggerCallback())
        elif name == "mlflow":
            try:
                from ray.air.integrations.mlflow import MLflowLoggerCallback
            except ImportError as err:
                raise StudyError(f"resources.loggers: mlflow is not installed ({err}); pip install mlflow") from None
            (root / "mlflow").mkdir(parents=True, exist_ok=True)  # SQLite: MLflow's file store is deprecated
            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve()}"
            out.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=study.name, save_artifact=False))
        elif name == "wandb":
            try:
                import wandb  # noqa: F401
                from ray.air.integrations.wandb import WandbLoggerCallback
            except ImportError as err:
                raise StudyError(f"resources.loggers: wandb is not installed ({err}); pip install wandb") from None
            (root / "wandb").mkdir(parents=True, exist_ok=True)
            # offline unless WANDB_MODE says otherwise (the session sets it for the driver and workers)
            out.append(WandbLoggerCallback(project=study.name, mode=os.environ.get("WANDB_MODE", "offline"),
                                           dir=str(root / "wandb"), log_config=True))
    return out


def check_trackers(loggers: tuple[str, ...]) -> None:
    """Fail before any work when a tracker asked for cannot be imported."""
    import importlib

    for name, module in (("tensorboard", "tensorboardX"), ("mlflow", "mlflow"), ("wandb", "wandb")):
        if name in loggers:
            try:
                importlib.import_module(module)
            except ImportError:
                raise StudyError(f"--logger {name}: the {module} package is not installed "
                                 f"(pip install {module}, or drop the logger)") from None


def _trial_resources(study: Study) -> Any:
    res = study.resources
    if res.workers > 1:
        # The trainable only drives the Ray Train workers, which reserve the trial's CPUs and GPUs
        # themselves; a placement group needs a non-empty bundle, so it asks for one byte of memory.
        return tune.PlacementGroupFactory([{"memory": 1}])
    return {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}


def _max_concurrent(study: Study, info: dict[str, Any]) -> int | None:
    """Multi-worker trials reserve nothing in Tune, so Tune would start every trial's driver at once
    and their worker groups would queue for resources: unless asked otherwise, start only as many
    as the cluster's CPUs and GPUs fit now."""
    res = study.resources
    if res.max_concurrent or res.workers == 1:
        return res.max_concurrent or None
    fits = float(info.get("cluster_cpus", 0)) / res.cpus_per_trial
    if res.gpus_per_trial:
        fits = min(fits, float(info.get("cluster_gpus", 0)) / res.gpus_per_trial)
    return max(1, int(fits + 1e-9))


def _resource_meta(study: Study, storage_path: str) -> dict[str, Any]:
    """What a trial's driver needs to know about its resources (part of each Tune trial's config)."""
    res = study.resources
    return {"cpus": res.cpus_per_trial, "gpus": res.gpus_per_trial, "workers": res.workers,
            "storage": storage_path}


def _param_space(plan: Plan, study_dir: Path, storage_path: str) -> tuple[dict[str, Any], int]:
    study = plan.study
    common = {"study_dir": str(study_dir), "study": study.name, "preset": study.preset,
              **_resource_meta(study, storage_path)}
    if study.search is None or study.search.halving:  # a halving search runs one rung: a grid of wsd branches
        # wsd trunks first: Tune starts trials in this order, so a branch never holds the slot its trunk needs
        trunks = [{"trial_id": f"trunk-{j.trunk}", "hash": j.config_hash, "params": {}, "seed": j.config.seed,
                   "config": j.config.to_dict(), "job": j.wsd.as_dict(), **common} for j in plan.trunks]
        trials = [{"trial_id": s.trial_id, "hash": s.config_hash, "params": s.params, "seed": s.seed,
                   "config": s.config.to_dict(), **common,
                   **({"job": plan.branches[s.config_hash].wsd.as_dict()}
                      if s.config_hash in plan.branches else {})} for s in plan.pending]
        return {"trial": tune.grid_search(trunks + trials)}, 1
    int_keys = [k for k, d in study.search.space.items() if d["type"] == "int"]
    meta = {"base_config": study.base_config().to_dict(), "int_keys": int_keys, **common}
    return {"params": _search_space(study), "trial": meta}, plan.search_left + len(plan.search_rerun)


def _tune_config(plan: Plan, study_dir: Path, num_samples: int, max_concurrent: int | None,
                 storage_uri: str | None = None) -> Any:
    study = plan.study
    # reuse_actors: a finished trial's process takes the next trial of the same resources, so a study of
    # many short trials does not pay a fresh interpreter (ray, torch, torch._dynamo imports) for each.
    kwargs: dict[str, Any] = {"num_samples": num_samples, "trial_name_creator": trial_name,
                              "trial_dirname_creator": _trial_dirname, "max_concurrent_trials": max_concurrent,
                              "reuse_actors": True}
    if study.search is not None and not study.search.halving:
        s = study.search
        kwargs["search_alg"] = _optuna_searcher(study, study_dir, plan.search_rerun, storage_uri)
        if s.asha:
            from ray.tune.schedulers import ASHAScheduler

            total = study.base_config().pretrain.samples
            kwargs["scheduler"] = ASHAScheduler(time_attr="samples_seen", metric="loss", mode="min", max_t=total,
                                                grace_period=s.grace_samples or max(total // 8, 1),
                                                reduction_factor=2, stop_last_trials=False)
    return tune.TuneConfig(**kwargs)


def new_experiment_name(runs: list[dict[str, Any]], storage_path: str) -> str:
    n = len(runs) + 1
    while "://" not in storage_path and (Path(storage_path) / EXPERIMENT.format(n)).exists():
        n += 1
    return EXPERIMENT.format(n)


def fit(plan: Plan, study_dir: Path, *, address: str | None, storage_path: str, runs: list[dict[str, Any]],
        display: Display, notes: list[str], write_runs: Any, stop: Any = None) -> tuple[str, bool]:
    """Run the plan's trials as one Tune experiment ``run-<n>`` (a halving search: one per rung, in one
    Ray session, each rung planned from the one before). Returns (experiment name, finished): finished
    is False when the run was interrupted (Ctrl-C) with trials left. ``stop``
    (``xtra.studies.slurm.Stop``): its signal stops the run gracefully (``GracefulStop``)."""
    study = plan.study
    tracker_env = {"WANDB_MODE": "offline"} if "wandb" in study.resources.loggers else {}
    with ray_session(study_dir, address, env=tracker_env) as info:
        if stop is not None:
            stop.claim()
        if address:
            notes.append(f"used the Ray cluster at {info.get('gcs_address')} "
                         f"({info['cluster_cpus']:g} CPUs, {info['cluster_gpus']:g} GPUs)")
        if study.search is None or not study.search.halving:
            return _fit_one(plan, study_dir, info, storage_path=storage_path, runs=runs, display=display,
                            write_runs=write_runs, stop=stop)
        from xtra.studies.halving import run_rungs
        from xtra.studies.plan import make_plan

        return run_rungs(plan, study_dir, lambda p: _fit_one(p, study_dir, info, storage_path=storage_path, runs=runs,
                                                             display=display, write_runs=write_runs, stop=stop),
                         lambda: make_plan(study, study_dir), display=display, notes=notes, stop=stop)


def _fit_one(plan: Plan, study_dir: Path, info: dict[str, Any], *, storage_path: str, runs: list[dict[str, Any]],
             display: Display, write_runs: Any, stop: Any) -> tuple[str, bool]:
    """One Tune experiment for the plan, in the Ray session ``info`` describes."""
    study = plan.study
    param_space, num_samples = _param_space(plan, study_dir, storage_path)
    runnable = tune.with_resources(trainable, _trial_resources(study))
    callbacks: list[Any] = [Monitor(display, study, study_dir),
                            *tracker_callbacks(study.resources.loggers, study, study_dir)]
    name = new_experiment_name(runs, storage_path)
    kind = "grid" if study.search is None else "halving" if study.search.halving else "search"
    record = {"name": name, "path": f"{storage_path.rstrip('/')}/{name}", "storage_path": storage_path,
              "kind": kind, "state": "running",
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "driver_pid": os.getpid(),
              "address": info.get("gcs_address")}
    if kind != "search":
        record["trials"] = [s.config_hash for s in plan.pending]
        record["trunks"] = [j.config_hash for j in plan.trunks]
    if kind == "halving":
        record["rung"] = plan.rung
    runs.append(record)
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from xtra.storage import Storage

    # An object store goes to Ray as a scheme-less path plus our filesystem (same endpoint, credentials).
    ray_path, ray_fs = Storage.from_uri(storage_path).ray_storage()
    run = run_id(study_dir, name)  # the stop flag's name on the cluster
    if stop is not None:
        callbacks.append(GracefulStop(stop, run))
    run_config = tune.RunConfig(
        name=name, storage_path=ray_path, storage_filesystem=ray_fs, verbose=0,
        callbacks=[*callbacks, JsonLoggerCallback(), CSVLoggerCallback()],
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    tuner = tune.Tuner(runnable, param_space=param_space,
                       tune_config=_tune_config(plan, study_dir, num_samples, _max_concurrent(study, info),
                                                storage_path),
                       run_config=run_config)
    write_runs(runs)
    state = "interrupted"
    try:
        with display:
            tuner.fit()  # Ctrl-C: Tune saves its state and returns early
        state = "finished" if not _unfinished(plan, study_dir) else "interrupted"
    finally:
        clear_stop(run)
        record["state"] = state
        record["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_runs(runs)
    return name, state == "finished"


def _unfinished(plan: Plan, study_dir: Path) -> int:
    """Ctrl-C makes fit() return with trials marked TERMINATED: judge by the trial directories."""
    from xtra.studies.plan import make_plan

    after = make_plan(plan.study, study_dir)
    if plan.study.search is None or plan.study.search.halving:
        wanted = {s.config_hash for s in plan.pending}
        return sum(1 for s in after.states if s.config_hash in wanted and s.status not in ("finished", "failed"))
    return after.search_left + len(after.search_rerun)
