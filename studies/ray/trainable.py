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

import hashlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from xtra import trialdir as td
from xtra.config import from_dict, override
from xtra.fileio import atomic_path
from xtra.storage import Storage

PROGRESS_EVERY_S = 1.0  # at most one progress report per second per trial (each is a round trip)
# Tune's own keys that a trial's metrics must not shadow.
SCRATCH_ENV = "XTRA_SCRATCH"  # node-local root of the trials of studies whose storage is remote
TRUNK_POLL_S = 2.0
RESERVED = {"done", "training_iteration", "trial_id", "time_total_s", "timestamp", "time_this_iter_s", "config",
            "date", "hostname", "node_ip", "pid", "experiment_id", "checkpoint_dir_name", "should_checkpoint"}


def trial_of(config: dict[str, Any]) -> tuple[Any, str | None, dict[str, Any], Path]:
    """(TrialConfig, trial_id or None, swept params, study_dir) from a Tune trial's config."""
    t = config["trial"]
    if "config" in t:  # a grid trial: everything fixed up front
        return from_dict(t["config"]), t["trial_id"], dict(t["params"]), Path(t["study_dir"])
    # Tune samples numpy scalars; the config wants plain ints (randint) and floats.
    params = {k: (int(v) if k in t["int_keys"] else v.item() if hasattr(v, "item") else v)
              for k, v in config["params"].items()}
    return override(from_dict(t["base_config"]), params), None, params, Path(t["study_dir"])


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def restore_checkpoint(run_dir: Path, ckpt: Any) -> int | None:
    """Put Ray's checkpoint (Tune's, or Ray Train's for a multi-worker trial) into run_dir when it is
    newer than what run_dir holds (e.g. the trial moved to another node). Returns the samples of
    the checkpoint restored, or None."""
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        meta = td.read_json(Path(d) / "meta.json") or {}
        theirs = int(meta.get("samples_seen", -1))
        local = run_dir / td.CHECKPOINT
        mine_meta = td.read_json(run_dir / td.TUNE_CHECKPOINT)
        mine = int(mine_meta["samples_seen"]) if isinstance(mine_meta, dict) and local.exists() else None
        if local.exists() and (mine is None or mine >= theirs):
            return None  # ours is as new (or newer: written after the last report)
        with atomic_path(local) as tmp:
            shutil.copy2(Path(d) / td.CHECKPOINT, tmp)
        td.write_tune_checkpoint(run_dir, theirs, meta.get("step"))
        return theirs


def checkpoint_dir(run_dir: Path, event: dict[str, Any], config_hash: str, prefix: str) -> Path:
    """A temporary directory holding the event's checkpoint (hard-linked) and its meta.json, for Ray."""
    samples = int(event["samples_seen"])
    td.write_tune_checkpoint(run_dir, samples, event.get("step"))
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=prefix))
    link_or_copy(Path(event["path"]), tmp / td.CHECKPOINT)
    td.write_json(tmp / "meta.json", {"samples_seen": samples, "step": event.get("step"), "config_hash": config_hash})
    return tmp


def scratch_root() -> Path:
    """This node's root for trial directories of studies kept in an object store. Read on the node
    that runs the trial (`XTRA_SCRATCH=/local/ssd ray start ...`); the default is the system's temp dir."""
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "xtra-scratch").expanduser()


class TrialSync:
    """A trial directory and its way to and from the study's storage (``xtra.storage``).

    Storage on a local or shared filesystem: ``run_dir`` IS ``STORAGE/trials/<hash>/`` and every
    call is a no-op. An object store: ``run_dir`` is node-local (under ``scratch_root()``),
    ``download`` brings the stored directory (its last commit and plain files), ``upload`` commits the
    trial's own files, ``put`` writes the ``trialdir.PLAIN`` files whole (one writer per name)."""

    def __init__(self, storage_uri: str | os.PathLike[str], config_hash: str) -> None:
        self.storage = Storage.from_uri(storage_uri)
        self.rel = f"trials/{config_hash}"
        local = self.storage.local_path(self.rel)
        if local is not None:
            self.run_dir = local
        else:  # one scratch tree per study storage, so two studies never share a trial directory
            key = hashlib.sha256(self.storage.uri.encode()).hexdigest()[:12]
            self.run_dir = scratch_root() / key / "trials" / config_hash

    @property
    def remote(self) -> bool:
        return not self.storage.is_local

    def download(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.storage.download_dir(self.rel, self.run_dir)

    def upload(self) -> None:
        """Commit the trial's own files (not the PLAIN ones, not hidden temp directories)."""
        if self.remote:
            self.storage.upload_dir(self.run_dir, self.rel,
                                    include=lambda n: td.committed(n) and not n.startswith("."))

    def put(self, *names: str) -> None:
        """Write PLAIN files whole as they are locally (a file gone locally is deleted in storage)."""
        if not self.remote:
            return
        for name in names:
            local = self.run_dir / name
            if local.is_file():
                self.storage.put_file(local, f"{self.rel}/{name}")
            else:
                self.storage.delete(f"{self.rel}/{name}")

    def trunk(self, job: dict[str, Any], report: Any) -> dict[str, Any]:
        """A wsd branch's job with ``trunk_dir`` where this node sees the trunk: in storage itself
        (local), or this branch's own copy of the trunk's stored directory (never the trunk's scratch
        directory, which a trunk running on this node is writing), refreshed until the trunk's
        checkpoint at the branch's start is there or the trunk has ended (``xtra.trial`` decides then)."""
        if job.get("role") != "branch":
            return job
        name = Path(job["trunk_dir"]).name  # xtra.trial names the row's trunk by this directory's name
        trunk = TrialSync(self.storage.uri, name)
        if not trunk.remote:
            return {**job, "trunk_dir": str(trunk.run_dir)}
        from xtra.checkpoint import kept_checkpoint

        copy = self.run_dir.parent.parent / "trunk-copies" / self.run_dir.name / name
        start = int(job["start"])
        while True:
            copy.mkdir(parents=True, exist_ok=True)
            trunk.storage.download_dir(trunk.rel, copy, include=lambda n: n != td.CHECKPOINT and not n.startswith("."))
            if (self.run_dir / td.CHECKPOINT).exists() or kept_checkpoint(copy, start).is_file() or \
                    td.read_state(copy, running=True).status in td.TERMINAL:
                return {**job, "trunk_dir": str(copy)}
            report({"kind": "progress", "samples_seen": 0})
            time.sleep(TRUNK_POLL_S)

    def cleanup(self) -> None:
        """Drop the scratch copy of a trial that storage now holds whole (and its copies of a trunk)."""
        if self.remote:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            shutil.rmtree(self.run_dir.parent.parent / "trunk-copies" / self.run_dir.name, ignore_errors=True)


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
    from xtra.studies.ray.workers import trial_on_workers

    from xtra.pretrain import NonFiniteLoss
    from xtra.trial import run_trial

    cfg, trial_id, params, study_dir = trial_of(config)
    meta = config["trial"]
    cpus = float(meta.get("cpus", 1))
    workers = int(meta.get("workers", 1))
    if cpus >= 1 and workers == 1:
        torch.set_num_threads(int(cpus))
    h = meta.get("hash") or cfg.config_hash()  # a wsd trunk's directory is its trunk identity
    sync = TrialSync(meta.get("storage") or study_dir, h)
    run_dir = sync.run_dir
    sync.download()  # a retry or a resume on this node continues from what storage holds
    ctx = tune.get_context()
    trial_id = trial_id or ctx.get_trial_name()
    job = meta.get("job") or {}
    td.write_params(run_dir, study=meta["study"], preset=meta.get("preset"), trial_id=trial_id, params=params,
                    seed=cfg.seed, config_hash=h, extra={"role": job["role"]} if job.get("role") == "trunk" else None)
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
            row = trial_on_workers(cfg, run_dir, {**meta, "job": job or None}, reporter)
        else:
            row = run_trial(cfg, run_dir, report=reporter, job=job or None)
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
