"""The Tune trainable: one study trial, a thin adapter over ``xtra.trial.run_trial``.

It runs the trial in its own directory ``STUDY_DIR/trials/<config_hash>/`` (stable across runs, so a
rerun finds it), turns the trial's events into ``tune.report`` calls, and hands every checkpoint the
trial writes to Tune too, so a retried trial (``FailureConfig(max_failures=2)``) continues from it,
on any node. Every file it touches goes through ``xtra.trialdir``.

Where the trial directory lives is the study's storage (``TrialSync``): on a local or shared
filesystem the trial works in place; with an object store (``s3://``, ``gs://``) it works in a
node-local scratch directory (``$XTRA_SCRATCH``), downloads what storage holds before it starts and
commits its files at every checkpoint and at the end, so any node (and any later driver) continues
from storage alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from xtra import trialdir as td
from xtra.studies.ray.stopping import PREEMPTED, run_id, stop_checker
from xtra.studies.ray.trialfiles import (
    PROGRESS_EVERY_S,
    RESERVED,
    TrialSync,
    checkpoint_dir,
    restore_checkpoint,
    trial_of,
)


class Reporter:
    """run_trial's ``report`` callback inside the worker: events -> ``tune.report``."""

    def __init__(self, run_dir: Path, config_hash: str, total: int, tune_checkpoints: bool = True,
                 sync: TrialSync | None = None) -> None:
        self.run_dir, self.config_hash, self.total = run_dir, config_hash, total
        self.tune_checkpoints = tune_checkpoints  # False: Ray Train's workers keep the checkpoints
        self.sync = sync  # commits the trial directory at each checkpoint when storage is remote
        self.last_report = 0.0
        self.latest: dict[str, Any] = {"samples_seen": 0, "total_samples": total}

    def metrics(self, status: str, **extra: Any) -> dict[str, Any]:
        return {**self.latest, "kind": extra.pop("kind", "progress"), "status": status,
                "config_hash": self.config_hash, **extra}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        for key in ("step", "samples_seen", "loss", "lr", "images_per_s"):
            if key in event and event[key] is not None:
                self.latest[key] = event[key]
        now = time.monotonic()
        if kind == "progress":
            if now - self.last_report < PROGRESS_EVERY_S:
                return
            self.last_report = now
            tune.report(self.metrics("running"))
        elif kind == "probing":  # a re-probe has no checkpoint event to say so
            tune.report(self.metrics("probing"))
            self.last_report = now
        elif kind == "checkpoint":
            status = "probing" if int(event["samples_seen"]) >= self.total else "running"
            if self.sync is not None and self.sync.remote:
                # Storage carries the checkpoint (any node resumes from it): committed before Tune hears of it.
                td.write_tune_checkpoint(self.run_dir, int(event["samples_seen"]), event.get("step"))
                self.sync.upload()
                tune.report(self.metrics(status, kind="checkpoint"))
            elif not self.tune_checkpoints:
                tune.report(self.metrics(status, kind="checkpoint"))
            else:
                tmp = checkpoint_dir(self.run_dir, event, self.config_hash, ".tune-checkpoint-")
                try:
                    tune.report(self.metrics(status, kind="checkpoint"),
                                checkpoint=tune.Checkpoint.from_directory(str(tmp)))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            self.last_report = now


def error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def trainable(config: dict[str, Any]) -> None:
    """One study trial, resumable, in STUDY_DIR/trials/<config_hash>/."""
    import torch

    from xtra.pretrain import NonFiniteLoss, Preempted
    from xtra.studies.ray.workers import trial_on_workers
    from xtra.trial import run_trial

    cfg, trial_id, params, study_dir = trial_of(config)
    meta = config["trial"]
    ctx = tune.get_context()
    run = run_id(study_dir, ctx.get_experiment_name())
    should_stop = stop_checker(run)
    if should_stop is not None and should_stop():  # started after the driver's stop: nothing begun, nothing to keep
        tune.report({"kind": "result", "status": PREEMPTED, "samples_seen": 0})
        return
    cpus = float(meta.get("cpus", 1))
    workers = int(meta.get("workers", 1))
    if cpus >= 1 and workers == 1:
        torch.set_num_threads(int(cpus))
    h = meta.get("hash") or cfg.config_hash()  # a wsd trunk's directory is its trunk identity
    sync = TrialSync(meta.get("storage") or study_dir, h)
    run_dir = sync.run_dir
    sync.download()  # a retry or a resume on this node continues from what storage holds
    trial_id = trial_id or ctx.get_trial_name()
    job = td.WsdJob.from_dict(meta.get("job"))
    td.write_params(run_dir, study=meta["study"], preset=meta.get("preset"), trial_id=trial_id, params=params,
                    seed=cfg.seed, config_hash=h, extra={"role": job.role} if job and job.role == td.TRUNK else None)
    sync.put(td.PARAMS)
    for stale in run_dir.glob(".tune-checkpoint-*"):  # left by a worker killed mid-report
        shutil.rmtree(stale, ignore_errors=True)
    restored = restore_checkpoint(run_dir, tune.get_checkpoint())
    td.record_attempt(run_dir, "start", pid=os.getpid(), host=socket.gethostname(),
                      experiment=ctx.get_experiment_name(), ray_trial_id=ctx.get_trial_id(),
                      gcs_address=ray.get_runtime_context().gcs_address, threads=torch.get_num_threads(),
                      checkpoint_samples=td.checkpoint_samples(run_dir), restored_from_tune=restored, workers=workers,
                      dir=str(run_dir))
    sync.put(td.ATTEMPTS, td.STATUS)  # "start" cleared an earlier terminal status
    # One committer per trial directory: this process, or rank 0 of a multi-worker trial.
    own = sync if workers == 1 else None
    reporter = Reporter(run_dir, h, cfg.pretrain.samples, tune_checkpoints=workers == 1 and not sync.remote,
                        sync=own)
    try:
        job = sync.trunk(job, reporter) if job and workers == 1 else job  # else rank 0 copies the trunk
        if workers > 1:
            row = trial_on_workers(cfg, run_dir, {**meta, "job": job.as_dict() if job else None, "experiment": run},
                                   reporter)
        else:
            row = run_trial(cfg, run_dir, report=reporter, job=job, should_stop=should_stop)
    except Preempted as err:  # its checkpoint is committed (the report before): the next run continues from it
        td.record_attempt(run_dir, PREEMPTED, samples_seen=err.samples_seen)
        if own is not None:
            own.upload()
        sync.put(td.ATTEMPTS)
        tune.report(reporter.metrics(PREEMPTED, kind="result", samples_seen=err.samples_seen))
        return
    except NonFiniteLoss as err:  # deterministic: a retry would fail the same way, so no retry
        msg = error_line(err)
        td.record_attempt(run_dir, "failed", error=msg)
        if own is not None:
            own.upload()
        sync.put(td.ATTEMPTS, td.STATUS)
        tune.report(reporter.metrics("failed", kind="result", error=msg))
        return
    except Exception as err:
        td.record_attempt(run_dir, "error", error=error_line(err))
        try:  # what the attempt got to, for the next one (on any node) and for `xtra study status`
            if own is not None:
                own.upload()
            sync.put(td.ATTEMPTS)
        except Exception:  # noqa: BLE001 - the trial's own error is the one to report
            pass
        raise
    td.record_attempt(run_dir, "finish")
    if own is not None:
        own.upload()  # trial.json is in storage before the driver hears the trial finished
    sync.put(td.ATTEMPTS)
    final = {k: v for k, v in row.items() if k not in RESERVED and isinstance(v, (int, float, str, type(None)))}
    tune.report({**reporter.metrics("finished", kind="result"), **final, "loss": row.get("train_loss"),
                 "status": "finished"})
    sync.cleanup()
