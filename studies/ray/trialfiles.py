"""A trial's files on a Ray node: where they live (in place, or node-local scratch for an object
store), the checkpoints handed to Tune and restored from it, and their sync with the study's storage.

Shared by the trainable (one process per trial) and the data-parallel workers, so neither imports
the other for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from xtra import trialdir as td
from xtra.fileio import atomic_path
from xtra.overrides import from_dict, override
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

    def trunk(self, job: td.WsdJob, report: Any) -> td.WsdJob:
        """A wsd branch's job with ``trunk_dir`` where this node sees the trunk: in storage itself
        (local), or this branch's own copy of the trunk's stored directory (never the trunk's scratch
        directory, which a trunk running on this node is writing), refreshed until the trunk's
        checkpoint at the branch's start is there or the trunk has ended (``xtra.trial`` decides then)."""
        if job.role != td.BRANCH:
            return job
        name = job.trunk_name  # xtra.trial names the row's trunk by this directory's name
        trunk = TrialSync(self.storage.uri, name)
        if not trunk.remote:
            return dataclasses.replace(job, trunk_dir=str(trunk.run_dir))
        from xtra.checkpoint import kept_checkpoint

        copy = self.run_dir.parent.parent / "trunk-copies" / self.run_dir.name / name
        start = job.start
        while True:
            copy.mkdir(parents=True, exist_ok=True)
            trunk.storage.download_dir(trunk.rel, copy, include=lambda n: n != td.CHECKPOINT and not n.startswith("."))
            state = td.read_state(copy, running=True)
            # a trunk finished short of this branch's start (a halving trunk at the last rung's branch point)
            # is being continued: its stored copy is not final (xtra.trial would wait on a copy never refreshed)
            ended = state.status in td.TERMINAL and not (
                state.status == td.FINISHED and int((state.row or {}).get("samples_seen") or 0) < start)
            if (self.run_dir / td.CHECKPOINT).exists() or kept_checkpoint(copy, start).is_file() or ended:
                return dataclasses.replace(job, trunk_dir=str(copy))
            report({"kind": "progress", "samples_seen": 0})
            time.sleep(TRUNK_POLL_S)

    def cleanup(self) -> None:
        """Drop the scratch copy of a trial that storage now holds whole (and its copies of a trunk)."""
        if self.remote:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            shutil.rmtree(self.run_dir.parent.parent / "trunk-copies" / self.run_dir.name, ignore_errors=True)
