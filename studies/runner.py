"""Run a study with Ray Tune: the only module in xtra that imports ray.

One Tune trial per study trial. The trainable is thin: it calls ``xtra.trial.run_trial`` in the
trial's own directory ``STUDY_DIR/trials/<config_hash>/`` (stable across runs, so a rerun finds it)
and turns the trial's events into Tune reports; every checkpoint the trial writes is handed to
Tune too, so a retried trial (``FailureConfig(max_failures=2)``) continues from it, on any node.

* ``run_study``: validates the data, takes the study lock, writes ``study.toml``, then runs only the
  trials without a finished ``trial.json`` in a fresh Tune experiment ``run-<n>`` (Ray cannot
  extend a finished experiment). Unfinished trials resume from their checkpoints.
* ``resume_study``: the same for a grid (pending trials, from checkpoints); a search study whose
  last experiment was interrupted is restored with ``Tuner.restore`` (the Optuna state with it).
* At the end (also after a failure or Ctrl-C) ``results.parquet`` and ``curves.parquet`` are
  rewritten from the trial directories, then the HTML report is built if ``reports`` is there.

Trials larger than one GPU (``[resources] workers_per_trial`` > 1, or ``gpus_per_trial`` = N > 1): the
Tune trainable is only a driver (it reserves no CPU or GPU). It launches a Ray Train ``TorchTrainer``
with ``ScalingConfig(num_workers=N)`` whose workers run ``run_trial`` together as a DDP group (NCCL
on GPUs, gloo on CPUs) in the same trial directory: rank 0 writes the checkpoints, reports them to
Ray Train (which restarts a failed worker group from the last one, ``FailureConfig(max_failures=2)``)
and probes; progress and the result row reach the driver through a queue and go on to Tune as for
a one-process trial. ``run_pretrain_workers`` (``xtra pretrain --workers N``) and ``bench_scaling``
take the same path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from studies import state as st
from studies.spec import Study, StudyError
from xtra.config import from_dict, override
from xtra.fileio import atomic_path

PROGRESS_EVERY_S = 1.0  # at most one progress report per second per trial (each is a round trip)
MAX_FAILURES = 2
EXPERIMENT = "run-{}"
# Tune's own keys that a trial's metrics must not shadow.
_RESERVED = {"done", "training_iteration", "trial_id", "time_total_s", "timestamp", "time_this_iter_s", "config",
             "date", "hostname", "node_ip", "pid", "experiment_id", "checkpoint_dir_name", "should_checkpoint"}


# ---------------------------------------------------------------------------------------------
# Worker side


def _trial_of(config: dict[str, Any]) -> tuple[Any, str | None, dict[str, Any], Path]:
    """(TrialConfig, trial_id or None, swept params, study_dir) from a Tune trial's config."""
    t = config["trial"]
    if "config" in t:  # a grid trial: everything fixed up front
        return from_dict(t["config"]), t["trial_id"], dict(t["params"]), Path(t["study_dir"])
    # Tune samples numpy scalars; the config wants plain ints (randint) and floats.
    params = {k: (int(v) if k in t["int_keys"] else v.item() if hasattr(v, "item") else v)
              for k, v in config["params"].items()}
    return override(from_dict(t["base_config"]), params), None, params, Path(t["study_dir"])


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _restore_checkpoint(run_dir: Path, ckpt: Any) -> int | None:
    """Put Ray's checkpoint (Tune's, or Ray Train's for a multi-worker trial) into run_dir when it is
    newer than what run_dir holds (e.g. the trial moved to another node). Returns the samples of
    the checkpoint restored, or None."""
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        meta = st._read_json(Path(d) / "meta.json") or {}
        theirs = int(meta.get("samples_seen", -1))
        local = run_dir / "checkpoint.pt"
        mine_meta = st._read_json(run_dir / "tune_checkpoint.json")
        mine = int(mine_meta["samples_seen"]) if isinstance(mine_meta, dict) and local.exists() else None
        if local.exists() and (mine is None or mine >= theirs):
            return None  # ours is as new (or newer: written after the last report)
        with atomic_path(local) as tmp:
            shutil.copy2(Path(d) / "checkpoint.pt", tmp)
        st.write_json(run_dir / "tune_checkpoint.json", {"samples_seen": theirs, "step": meta.get("step")})
        return theirs


class _Reporter:
    """run_trial's ``report`` callback inside the worker: events -> ``tune.report``."""

    def __init__(self, run_dir: Path, config_hash: str, total: int, tune_checkpoints: bool = True) -> None:
        self.run_dir, self.config_hash, self.total = run_dir, config_hash, total
        self.tune_checkpoints = tune_checkpoints  # False: Ray Train's workers keep the checkpoints
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
        elif kind == "checkpoint" and not self.tune_checkpoints:
            status = "probing" if int(event["samples_seen"]) >= self.total else "running"
            tune.report(self.metrics(status, kind="checkpoint"))
            self.last_report = now
        elif kind == "checkpoint":
            samples = int(event["samples_seen"])
            st.write_json(self.run_dir / "tune_checkpoint.json", {"samples_seen": samples, "step": event.get("step")})
            tmp = Path(tempfile.mkdtemp(dir=self.run_dir, prefix=".tune-checkpoint-"))
            try:
                _link_or_copy(Path(event["path"]), tmp / "checkpoint.pt")
                st.write_json(tmp / "meta.json", {"samples_seen": samples, "step": event.get("step"),
                                                  "config_hash": self.config_hash})
                status = "probing" if samples >= self.total else "running"
                tune.report(self.metrics(status, kind="checkpoint"),
                            checkpoint=tune.Checkpoint.from_directory(str(tmp)))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self.last_report = now


def _error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _trainable(config: dict[str, Any]) -> None:
    """The Tune trainable: one study trial, resumable, in STUDY_DIR/trials/<config_hash>/."""
    import torch

    from xtra.pretrain import NonFiniteLoss
    from xtra.trial import run_trial

    cfg, trial_id, params, study_dir = _trial_of(config)
    meta = config["trial"]
    cpus = float(meta.get("cpus", 1))
    workers = int(meta.get("workers", 1))
    if cpus >= 1 and workers == 1:
        torch.set_num_threads(int(cpus))
    h = cfg.config_hash()
    run_dir = st.trial_dir(study_dir, h)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = tune.get_context()
    if trial_id is None:
        trial_id = ctx.get_trial_name()
    if not (run_dir / "params.json").exists():
        st.write_json(run_dir / "params.json", {"study": meta["study"], "preset": meta.get("preset"),
                                                "trial_id": trial_id, "params": params, "seed": cfg.seed,
                                                "config_hash": h})
    for stale in run_dir.glob(".tune-checkpoint-*"):  # left by a worker killed mid-report
        shutil.rmtree(stale, ignore_errors=True)
    restored = _restore_checkpoint(run_dir, tune.get_checkpoint())
    (run_dir / "status.json").unlink(missing_ok=True)
    st.append_jsonl(run_dir / "attempts.jsonl", {
        "event": "start", "time": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid(),
        "host": socket.gethostname(), "experiment": ctx.get_experiment_name(), "ray_trial_id": ctx.get_trial_id(),
        "gcs_address": ray.get_runtime_context().gcs_address, "threads": torch.get_num_threads(),
        "checkpoint_samples": st._checkpoint_samples(run_dir), "restored_from_tune": restored, "workers": workers})
    reporter = _Reporter(run_dir, h, cfg.pretrain.samples, tune_checkpoints=workers == 1)
    try:
        if workers > 1:
            row = _trial_on_workers(cfg, run_dir, meta, reporter)
        else:
            row = run_trial(cfg, run_dir, report=reporter)
    except NonFiniteLoss as err:  # deterministic: a retry would fail the same way, so no retry
        msg = _error_line(err)
        st.write_json(run_dir / "status.json", {"status": "failed", "error": msg})
        st.append_jsonl(run_dir / "attempts.jsonl", {"event": "failed", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                     "error": msg})
        tune.report(reporter.metrics("failed", kind="result", error=msg))
        return
    except Exception as err:
        st.append_jsonl(run_dir / "attempts.jsonl", {"event": "error", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                     "error": _error_line(err)})
        raise
    st.append_jsonl(run_dir / "attempts.jsonl", {"event": "finish", "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    final = {k: v for k, v in row.items() if k not in _RESERVED and isinstance(v, (int, float, str, type(None)))}
    tune.report({**reporter.metrics("finished", kind="result"), **final, "loss": row.get("train_loss"),
                 "status": "finished"})


# ---------------------------------------------------------------------------------------------
# Multi-worker trials: Ray Train's TorchTrainer inside the Tune trainable

WORKERS_LOG = "workers.jsonl"  # one line per start of a trial's worker group (rank 0 writes it)
TRAIN_DIR = "train"  # Ray Train's runs (checkpoints, state), one per trial, under the study's storage


def _per_worker(total: float, workers: int) -> float:
    return total / workers if total else 0.0


class _WorkerReporter:
    """``report`` callback on a Ray Train worker. Checkpoint events arrive on every rank at the same
    step: together they make one ``ray.train.report`` (a barrier), rank 0 handing over its file so a
    restarted worker group (on any node) resumes from it. Everything rank 0 hears also goes to the
    driver through ``events`` (progress at most once per PROGRESS_EVERY_S)."""

    def __init__(self, world: Any, run_dir: Path, key: str, events: Any) -> None:
        self.world, self.run_dir, self.key, self.events = world, run_dir, key, events
        self.last_progress = 0.0

    def send(self, event: dict[str, Any]) -> None:
        if self.events is None or not self.world.main:
            return
        try:
            self.events.put(event, timeout=10)
        except Exception:  # noqa: BLE001 - the driver is gone or slow: training goes on regardless
            pass

    def __call__(self, event: dict[str, Any]) -> None:
        import ray.train

        kind = event.get("kind")
        if kind == "checkpoint":
            samples = int(event["samples_seen"])
            metrics = {"samples_seen": samples, "step": event.get("step")}
            if not self.world.main:
                ray.train.report(metrics, checkpoint=None)
                return
            st.write_json(self.run_dir / "tune_checkpoint.json", {"samples_seen": samples, "step": event.get("step")})
            tmp = Path(tempfile.mkdtemp(dir=self.run_dir, prefix=".train-checkpoint-"))
            try:
                _link_or_copy(Path(event["path"]), tmp / "checkpoint.pt")
                st.write_json(tmp / "meta.json", {**metrics, "config_hash": self.key})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self.send(event)
        elif kind == "progress":
            now = time.monotonic()
            if now - self.last_progress >= PROGRESS_EVERY_S:
                self.last_progress = now
                self.send(event)
        else:
            self.send(event)


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a multi-worker run (a study trial, ``xtra pretrain --workers``, a bench)."""
    import ray.train
    import torch

    from xtra.distributed import World
    from xtra.pretrain import NonFiniteLoss

    ctx = ray.train.get_context()
    device = None
    if config["use_gpu"]:
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    world = World.from_torch(device=device, local_rank=ctx.get_local_rank())
    torch.set_num_threads(max(1, int(config["threads"])))
    cfg = from_dict(config["config"])
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    reporter = _WorkerReporter(world, run_dir, cfg.config_hash(), config.get("events"))
    if world.main:
        for stale in run_dir.glob(".train-checkpoint-*"):  # left by a worker killed mid-report
            shutil.rmtree(stale, ignore_errors=True)
        restored = _restore_checkpoint(run_dir, ray.train.get_checkpoint())
        st.append_jsonl(run_dir / WORKERS_LOG, {
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "world_size": world.size, "pid": os.getpid(),
            "host": socket.gethostname(), "device": device or "cpu", "threads": torch.get_num_threads(),
            "checkpoint_samples": st._checkpoint_samples(run_dir), "restored_from_train": restored})
    try:
        if config["mode"] == "trial":
            from xtra.trial import run_trial

            row = run_trial(cfg, run_dir, report=reporter, world=world)
        else:
            row = _pretrain_on_worker(cfg, run_dir, world, reporter, probe=config.get("probe", False))
    except NonFiniteLoss as err:  # every rank sees it at once; a retry would fail the same way
        reporter.send({"kind": "failed", "error": str(err)})
        return
    reporter.send({"kind": "result", "row": row})


def _pretrain_on_worker(cfg: Any, run_dir: Path, world: Any, reporter: _WorkerReporter,
                        probe: bool) -> dict[str, Any] | None:
    from xtra.pretrain import pretrain
    from xtra.trial import faults_from_env

    def log(msg: str) -> None:
        reporter.send({"kind": "log", "message": msg})

    result = pretrain(cfg.model, cfg.data, cfg.pretrain, run_dir, seed=cfg.seed, report=reporter,
                      faults=faults_from_env(cfg), log=log, world=world)
    if not world.main:
        return None
    rows = st.read_jsonl(run_dir / "metrics.jsonl")
    rates = sorted(r["images_per_s"] for r in rows[2:] if r.get("images_per_s"))  # past the warm-up
    result["images_per_s_steady"] = rates[len(rates) // 2] if rates else result["images_per_s"]
    if probe:
        from xtra.probe import probe_run

        probed = probe_run(run_dir, cfg.data, cfg.probe, seed=cfg.seed, log=log)
        result["probe"] = {k: v for k, v in probed.items() if k != "meta"}
    return result


def _run_workers(cfg: Any, run_dir: Path, *, mode: str, workers: int, use_gpu: bool, cpus_per_worker: float,
                 gpus_per_worker: float, storage_path: str, name: str, on_event: Any, probe: bool = False
                 ) -> dict[str, Any] | None:
    """Run ``_train_worker`` on ``workers`` Ray Train workers and pump their events into ``on_event``
    (on this thread) until they finish. Returns rank 0's final event (``result`` or ``failed``)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    events = Queue(actor_options={"num_cpus": 0})  # a 0-CPU actor: fits beside a 0-CPU driver
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker or 1
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg.to_dict(), "run_dir": str(run_dir), "mode": mode, "use_gpu": use_gpu,
                           "threads": max(1, int(cpus_per_worker)), "events": events, "probe": probe},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=MAX_FAILURES),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="xtra-train-fit", daemon=True)
    thread.start()
    final = None
    try:
        while True:
            try:
                batch = [events.get(timeout=0.25)]
            except Empty:
                if thread.is_alive():
                    continue
                size = events.qsize()
                batch = events.get_nowait_batch(size) if size else []
                if not batch:
                    break
            for event in batch:
                if event.get("kind") in ("result", "failed"):
                    final = event
                on_event(event)
        thread.join()
    finally:
        with contextlib.suppress(Exception):
            ray.kill(events.actor)
    if "error" in outcome:
        raise outcome["error"]
    return final


def _trial_on_workers(cfg: Any, run_dir: Path, meta: dict[str, Any], reporter: _Reporter) -> dict[str, Any]:
    """The Tune trainable's part of a multi-worker trial: launch the workers, relay their events."""
    from xtra.pretrain import NonFiniteLoss

    workers = int(meta["workers"])
    gpus = float(meta.get("gpus", 0))
    storage = str(meta.get("storage") or meta["study_dir"]).rstrip("/")

    def on_event(event: dict[str, Any]) -> None:
        if event.get("kind") in ("progress", "checkpoint"):
            reporter(event)

    final = _run_workers(cfg, run_dir, mode="trial", workers=workers, use_gpu=gpus > 0,
                         cpus_per_worker=_per_worker(float(meta.get("cpus", 1)), workers),
                         gpus_per_worker=_per_worker(gpus, workers), storage_path=f"{storage}/{TRAIN_DIR}",
                         name=cfg.config_hash(), on_event=on_event)
    if final is not None and final["kind"] == "failed":
        raise NonFiniteLoss(final["error"])
    row = final.get("row") if final is not None else None
    if row is None:
        from xtra.trial import read_finished

        row = read_finished(run_dir)
    if row is None:
        raise RuntimeError(f"the {workers} workers of trial {cfg.config_hash()} finished without a result")
    return row


def run_pretrain_workers(cfg: Any, out: str | Path, workers: int, *, address: str | None = None,
                         probe: bool = False, console: Any = None) -> dict[str, Any]:
    """``xtra pretrain --workers N``: one run on N Ray Train workers (DDP), resumable in ``out``.
    GPUs when ``pretrain.device`` is cuda, or auto and the cluster has N of them; CPUs split evenly."""
    from rich.console import Console

    from xtra.pretrain import NonFiniteLoss, _progress_bar

    console = console or Console()
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with _ray_session(out, address) as info:
        use_gpu = _use_gpu(cfg.pretrain.device, info, workers)
        cpus = _cpus_per_worker(info, workers)
        console.print(f"{workers} workers x ({cpus:g} CPU{' + 1 GPU' if use_gpu else ''}) on "
                      f"{'the Ray cluster at ' + str(info.get('gcs_address')) if address else 'a local Ray'}; "
                      f"Ray's log: {out / 'ray.log'}", highlight=False)
        bar = _progress_bar(cfg.pretrain.samples, 0) if console.is_terminal else None

        def on_event(event: dict[str, Any]) -> None:
            kind = event.get("kind")
            if kind == "log":
                console.print(event["message"], highlight=False, soft_wrap=True)
            elif kind == "progress" and bar is not None:
                bar[0].update(bar[1], completed=event["samples_seen"], loss=event["loss"], lr=event["lr"],
                              ips=event["images_per_s"])

        try:
            final = _run_workers(cfg, out, mode="pretrain", workers=workers, use_gpu=use_gpu, cpus_per_worker=cpus,
                                 gpus_per_worker=1, storage_path=str(out), name="ray-train", on_event=on_event,
                                 probe=probe)
        finally:
            if bar is not None:
                bar[0].stop()
    if final is None:
        raise RuntimeError(f"the {workers} workers finished without a result (see {out / 'ray.log'})")
    if final["kind"] == "failed":
        raise NonFiniteLoss(final["error"])
    return final["row"]


def _use_gpu(device: str, info: dict[str, Any], workers: int) -> bool:
    if device == "cuda":
        return True
    return device == "auto" and info.get("cluster_gpus", 0) >= workers


def _cpus_per_worker(info: dict[str, Any], workers: int) -> float:
    share = float(info.get("cluster_cpus", 1)) / workers
    return share if share < 1 else float(int(share))


def bench_scaling(n_workers: int = 2, *, size: str | None = None, batch_per_worker: int | None = None,
                  steps: int = 30, address: str | None = None) -> dict[str, Any]:
    """Data-parallel scaling efficiency on the devices present: steady-state pretraining throughput
    of ``n_workers`` Ray Train workers over ``n_workers`` x that of one worker, each worker with the
    same share of the machine (a GPU each where there are ``n_workers`` GPUs, else CPUs split
    evenly) and the same per-worker batch (weak scaling), on synthetic images."""
    from xtra.config import SIZES, TrialConfig, override

    with tempfile.TemporaryDirectory(prefix="xtra-bench-scaling-") as tmp:
        root = Path(tmp)
        with _ray_session(root, address) as info:
            use_gpu = _use_gpu("auto", info, n_workers)
            size = size or ("vit-b/16" if use_gpu else "cpu-s")
            batch_per_worker = batch_per_worker or (64 if use_gpu else 32)
            cpus = _cpus_per_worker(info, n_workers)
            rates: dict[int, float] = {}
            for n in (1, n_workers):
                batch = batch_per_worker * n
                cfg = override(TrialConfig(), {
                    **{f"model.{k}": v for k, v in SIZES[size].items()}, "model.block_size": 2 if size != "tiny"
                    else 1, "data.name": "synthetic", "data.synthetic_size": 512, "pretrain.batch_size": batch,
                    "pretrain.samples": batch * steps, "pretrain.warmup_samples": batch,
                    "pretrain.checkpoint_every": batch * steps, "pretrain.log_every": max(1, steps // 10),
                    "pretrain.device": "cuda" if use_gpu else "cpu"})
                final = _run_workers(cfg, root / f"w{n}", mode="pretrain", workers=n, use_gpu=use_gpu,
                                     cpus_per_worker=cpus, gpus_per_worker=1, storage_path=str(root),
                                     name=f"bench-w{n}", on_event=lambda event: None)
                if final is None or final["kind"] != "result":
                    raise RuntimeError(f"bench_scaling: the {n}-worker run failed: {final}")
                rates[n] = float(final["row"]["images_per_s_steady"])
    one, many = rates[1], rates[n_workers]
    return {"n_workers": n_workers, "device": "cuda" if use_gpu else "cpu", "size": size,
            "batch_per_worker": batch_per_worker, "cpus_per_worker": cpus, "steps": steps,
            "images_per_s_1": round(one, 2), "images_per_s_n": round(many, 2),
            "speedup": round(many / one, 3), "efficiency": round(many / (n_workers * one), 3)}


# ---------------------------------------------------------------------------------------------
# Driver side: the live table


@dataclass
class _Row:
    key: str
    trial_id: str
    params: str
    total: int
    status: str = "pending"
    samples: int = 0
    loss: float | None = None
    images_per_s: float | None = None
    error: str | None = None
    result: str = ""
    started: float | None = None


@dataclass
class Display:
    """A rich Live table on a terminal; one plain line per status change otherwise (logs, CI)."""

    console: Any
    live: bool
    rows: dict[str, _Row] = field(default_factory=dict)
    title: str = ""
    t0: float = field(default_factory=time.monotonic)
    _live: Any = None

    def add(self, key: str, trial_id: str, params: dict[str, Any], total: int, status: str = "pending") -> None:
        shown = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items()) or "-"
        self.rows.setdefault(key, _Row(key, trial_id, shown, total, status))

    def update(self, key: str, **fields: Any) -> None:
        row = self.rows.get(key)
        if row is None:
            return
        old = row.status
        for k, v in fields.items():
            setattr(row, k, v)
        if row.status == "running" and row.started is None:
            row.started = time.monotonic()
        if not self.live and row.status != old:
            extra = f" ({row.error})" if row.error and row.status in ("failed", "retrying") else ""
            extra += f" {row.result}" if row.result and row.status == "finished" else ""
            self.console.print(f"[{time.monotonic() - self.t0:7.1f}s] {row.trial_id}: {row.status}{extra}",
                               highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def _eta(self, row: _Row) -> str:
        if row.status in ("finished", "failed", "stopped"):
            return ""
        if row.status == "probing":
            return "probing"
        if not row.images_per_s or row.samples >= row.total:
            return "-"
        s = (row.total - row.samples) / row.images_per_s
        return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"

    def render(self) -> Any:
        from rich.table import Table

        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        caption = " · ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        table = Table(title=self.title, caption=f"{caption} · {time.monotonic() - self.t0:.0f}s", expand=False)
        for col in ("trial", "params", "status", "samples seen", "loss", "ETA / result"):
            table.add_column(col, overflow="fold")
        style = {"finished": "green", "failed": "red", "retrying": "yellow", "running": "cyan", "probing": "cyan",
                 "stopped": "magenta"}
        for r in self.rows.values():
            status = f"[{style.get(r.status, '')}]{r.status}[/]" if r.status in style else r.status
            if r.error and r.status in ("failed", "retrying"):
                status += f" [dim]{r.error[:60]}[/]"
            loss = "" if r.loss is None else f"{r.loss:.4f}"
            tail = r.result if r.status == "finished" else self._eta(r)
            table.add_row(r.key[:12], r.params, status, f"{r.samples:,}/{r.total:,}", loss, tail)
        return table

    def __enter__(self) -> Display:
        if self.live:
            from rich.live import Live

            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None


class Monitor(tune.Callback):
    """Feeds the display and records terminal trial states on the driver's disk."""

    def __init__(self, display: Display, study: Study, study_dir: Path) -> None:
        self.display, self.study, self.study_dir = display, study, study_dir
        self.keys: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the run config with the experiment state; the live display stays behind (a
        # restored experiment gets a fresh Monitor attached by _fit), so an unpickled one is inert.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.display = None
        self.keys = {}

    def _key(self, trial: Any) -> tuple[str, None]:
        key = self.keys.get(trial.trial_id)
        if key is None:
            cfg, trial_id, params, _ = _trial_of(trial.config)
            key = self.keys[trial.trial_id] = cfg.config_hash()
            if key not in self.display.rows:
                self.display.add(key, trial_id or _trial_name(trial), params, cfg.pretrain.samples)
        return key, None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        self.display.update(key, status="running", error=None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        fields: dict[str, Any] = {"status": result.get("status", "running"),
                                  "samples": int(result.get("samples_seen") or 0)}
        if result.get("loss") is not None:
            fields["loss"] = float(result["loss"])
        if result.get("images_per_s"):
            fields["images_per_s"] = float(result["images_per_s"])
        if result.get("kind") == "result":
            if result.get("status") == "finished":
                lin, att = result.get("linear_top1"), result.get("attentive_top1")
                fields["result"] = " ".join(f"{n} {v:.3f}" for n, v in (("linear", lin), ("attentive", att))
                                            if isinstance(v, (int, float)))
                run_dir = st.trial_dir(self.study_dir, key)
                if not (run_dir / "trial.json").exists():  # a worker on another machine: keep the row
                    st.write_json(run_dir / "trial.json", {k: v for k, v in result.items()
                                                           if k not in _RESERVED and k != "kind"})
            else:
                fields["error"] = result.get("error")
        self.display.update(key, **fields)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        self.display.update(key, status="retrying", error=_last_error(self.study_dir, key, trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        err = _last_error(self.study_dir, key, trial)
        run_dir = st.trial_dir(self.study_dir, key)
        run_dir.mkdir(parents=True, exist_ok=True)
        st.write_json(run_dir / "status.json", {"status": "failed", "error": err,
                                                "after_attempts": MAX_FAILURES + 1})
        self.display.update(key, status="failed", error=err)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        last = trial.last_result or {}
        if last.get("kind") != "result":  # stopped early by the scheduler (ASHA)
            run_dir = st.trial_dir(self.study_dir, key)
            st.write_json(run_dir / "status.json", {"status": "stopped", "error": "stopped early by ASHA at "
                                                    f"{last.get('samples_seen', 0)} samples"})
            self.display.update(key, status="stopped")
        elif last.get("status") == "finished":
            self.display.update(key, status="finished")
        else:
            self.display.update(key, status="failed", error=last.get("error"))


def _last_error(study_dir: Path, key: str, trial: Any) -> str:
    attempts = st.read_jsonl(st.trial_dir(study_dir, key) / "attempts.jsonl")
    for a in reversed(attempts):
        if a.get("event") == "error":
            return str(a.get("error"))
    text = ""
    with contextlib.suppress(Exception):
        text = str(trial.get_error() or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error (see ray.log)"


# ---------------------------------------------------------------------------------------------
# Ray lifecycle


def _auth_token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


@contextlib.contextmanager
def _ray_session(study_dir: Path, address: str | None) -> Iterator[dict[str, Any]]:
    """Start (or connect to) Ray with its chatter in STUDY_DIR/ray.log; always shut down."""
    log_path = study_dir / "ray.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    saved = (list(ray_logger.handlers), ray_logger.propagate, ray_logger.level)
    ray_logger.handlers, ray_logger.propagate = [handler], False
    ray_logger.setLevel(logging.INFO)
    saved_showwarning = warnings.showwarning

    def showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                    line: Any = None) -> None:
        handler.emit(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno,
                                       f"{category.__name__}: {message}", None, None))

    warnings.showwarning = showwarning
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # experiment state saved ~every second
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # multi-worker trials launch Ray Train inside Tune
    # Probe accuracy (a search's metric) only exists in a trial's last report, not in progress ones.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON + CSV are added back in _fit, no TBX
    # The fault-injection switches (and the data location) must reach workers of any cluster.
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("XTRA_")}
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": False}
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": env_vars}
    info = {"address": address or "local"}
    if address and address != "auto" and "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
        # Ray enables token auth on a cluster whenever a token exists on its machine, but a driver given
        # an explicit address only sends its token with RAY_AUTH_MODE=token (a token-less cluster ignores it).
        try:  # what ray.init(address="auto") does: set the mode and refresh Ray's cached config
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
        except ImportError:  # pragma: no cover - other Ray versions read the variable at init
            os.environ["RAY_AUTH_MODE"] = "token"
    # Ray's C++ side writes to the process' stderr (fd 2): send it to ray.log for the session.
    sys.stderr.flush()
    saved_fd = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        if address:
            ctx = ray.init(address=address, **kwargs)
        else:
            ctx = ray.init(include_dashboard=False, **kwargs)
        ray_logger.handlers, ray_logger.propagate = [handler], False  # ray.init resets them
        info["gcs_address"] = getattr(ctx, "address_info", {}).get("gcs_address") or \
            ray.get_runtime_context().gcs_address
        info["cluster_cpus"] = ray.cluster_resources().get("CPU", 0)
        info["cluster_gpus"] = ray.cluster_resources().get("GPU", 0)
        yield info
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        warnings.showwarning = saved_showwarning
        ray_logger.handlers, ray_logger.propagate = saved[0], saved[1]
        ray_logger.setLevel(saved[2])
        handler.close()


# ---------------------------------------------------------------------------------------------
# Running a study


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


def _trial_name(trial: Any) -> str:
    t = trial.config.get("trial", {})
    return str(t.get("trial_id") or f"trial-{trial.trial_id}")


def _trial_dirname(trial: Any) -> str:
    t = trial.config.get("trial", {})
    h = t.get("hash")
    return f"trial-{h}" if h else f"trial-{trial.trial_id}"


def _storage(study_dir: Path, storage: str | None) -> str:
    if not storage:
        return str(study_dir)
    if "://" in storage:
        return storage.rstrip("/") + "/" + study_dir.name
    return str((Path(storage).expanduser().resolve()) / study_dir.name)


def _new_experiment_name(runs: list[dict[str, Any]], storage_path: str) -> str:
    n = len(runs) + 1
    while "://" not in storage_path and (Path(storage_path) / EXPERIMENT.format(n)).exists():
        n += 1
    return EXPERIMENT.format(n)


def _finished_search_points(study: Study, states: list[st.TrialState]) -> tuple[list[dict], list[float]]:
    points, rewards = [], []
    metric = study.search.metric
    for s in states:
        if s.status == "finished" and s.row and isinstance(s.row.get(metric), (int, float)):
            points.append({k: s.params.get(k) for k in study.search.space})
            rewards.append(float(s.row[metric]))
    return points, rewards


def run_study(study: Study, study_dir: str | Path, *, address: str | None = None, storage: str | None = None,
              console: Any = None, live: bool | None = None, build_report: bool = True, check_data: bool = True,
              command: str = "xtra study run") -> Outcome:
    """Run the study's unfinished trials. Raises StudyError (one line) on bad input, before Ray starts."""
    from rich.console import Console

    console = console or Console()
    study_dir = Path(study_dir).expanduser().resolve()
    if check_data:
        study.check_data()
    old = study_dir / st.STUDY_TOML
    if old.is_file():
        try:
            import tomllib

            old_name = tomllib.loads(old.read_text()).get("name")
        except (ValueError, OSError):
            old_name = None
        if old_name and old_name != study.name:
            raise StudyError(f"{study_dir}: holds study {old_name!r}, not {study.name!r} (choose another --out)")
    with st.StudyLock(study_dir, command) as lock:
        notes = []
        if lock.took_over:
            notes.append(f"took over the lock of pid {lock.took_over.get('pid')} (no longer running)")
        st.atomic_write_text(old, study.to_toml())
        return _run_locked(study, study_dir, address=address, storage=storage, console=console, live=live,
                           build_report=build_report, notes=notes, restore=False)


def resume_study(study_dir: str | Path, *, address: str | None = None, console: Any = None, live: bool | None = None,
                 build_report: bool = True, max_concurrent: int | None = None, cpus_per_trial: float | None = None,
                 gpus_per_trial: float | None = None, workers_per_trial: int | None = None) -> Outcome:
    """Continue an interrupted study: unfinished trials from their checkpoints, finished ones untouched."""
    from rich.console import Console

    console = console or Console()
    study_dir = Path(study_dir).expanduser().resolve()
    study = st.load_study_dir(study_dir)
    study = study.with_resources(cpus_per_trial, gpus_per_trial, max_concurrent, workers_per_trial)
    study.check_data()
    with st.StudyLock(study_dir, "xtra study resume") as lock:
        notes = []
        if lock.took_over:
            notes.append(f"took over the lock of pid {lock.took_over.get('pid')} (no longer running)")
        return _run_locked(study, study_dir, address=address, storage=None, console=console, live=live,
                           build_report=build_report, notes=notes, restore=True)


def _run_locked(study: Study, study_dir: Path, *, address: str | None, storage: str | None, console: Any,
                live: bool | None, build_report: bool, notes: list[str], restore: bool) -> Outcome:
    runs = st.read_runs(study_dir)
    for r in runs:  # a record still "running" belongs to a driver that died (we hold the lock)
        if r.get("state") == "running":
            r["state"] = "interrupted"
    before = {s.config_hash: s for s in st.study_trials(study, study_dir, running=False)}
    reused = [h for h, s in before.items() if s.status == "finished"]
    live = console.is_terminal if live is None else live
    display = Display(console=console, live=live, title=f"study {study.name} ({study.preset or 'no preset'})")
    for h, s in before.items():
        total = s.config.pretrain.samples if s.config else 0
        display.add(h, s.trial_id, s.params, total, s.status if s.status == "finished" else "pending")
        if s.status == "finished" and s.row:
            display.rows[h].samples = int(s.row.get("samples_seen") or 0)
            display.rows[h].loss = s.row.get("train_loss")

    tuner_kwargs: dict[str, Any] | None = None
    restore_path = None
    ran: list[str] = []
    storage_path = _storage(study_dir, storage)
    last = runs[-1] if runs else None
    if study.search is None:
        pending = st.pending_specs(study, study_dir)
        ran = [s.config_hash for s in pending]
        if pending:
            trials = [{"trial_id": s.trial_id, "hash": s.config_hash, "params": s.params, "seed": s.seed,
                       "config": s.config.to_dict(), "study_dir": str(study_dir), "study": study.name,
                       "preset": study.preset, **_resource_meta(study, storage_path)} for s in pending]
            tuner_kwargs = {"param_space": {"trial": tune.grid_search(trials)}, "num_samples": 1}
    else:
        if last and last.get("kind") == "search" and last.get("state") != "finished" and \
                tune.Tuner.can_restore(last["path"]):
            restore_path = last["path"]
            storage_path = last.get("storage_path", storage_path)
        else:
            states = list(before.values())
            done = sum(1 for s in states if s.status in ("finished", "stopped"))
            remaining = study.search.num_samples - done
            if remaining > 0:
                base_cfg = study.base_config()
                int_keys = [k for k, d in study.search.space.items() if d["type"] == "int"]
                meta = {"base_config": base_cfg.to_dict(), "study_dir": str(study_dir), "study": study.name,
                        "preset": study.preset, **_resource_meta(study, storage_path), "int_keys": int_keys}
                tuner_kwargs = {"param_space": {"params": _search_space(study), "trial": meta},
                                "num_samples": remaining}
    if restore and restore_path is None and tuner_kwargs is None:
        notes.append("nothing to resume: every trial is finished")

    outcome_experiment = None
    try:
        if tuner_kwargs is not None or restore_path is not None:
            outcome_experiment = _fit(study, study_dir, address=address, storage_path=storage_path, runs=runs,
                                      tuner_kwargs=tuner_kwargs, restore_path=restore_path, display=display,
                                      console=console, notes=notes)
        else:
            st.write_runs(study_dir, runs)
    finally:  # also after Ctrl-C or a crash: the parquet files reflect what is on disk
        states = st.study_trials(study, study_dir, running=False)
        results, curves = st.write_results(study, study_dir, states)
    counts: dict[str, int] = {}
    for s in states:
        counts[s.status] = counts.get(s.status, 0) + 1
    if study.search is not None:
        ran = [s.config_hash for s in states if s.config_hash not in reused]
    report = None
    if build_report:
        report = _build_report(study_dir, notes)
    return Outcome(study_dir=study_dir, experiment=outcome_experiment, ran=ran, reused=reused, counts=counts,
                   results=results, curves=curves, report=report, notes=notes)


def _resource_meta(study: Study, storage_path: str) -> dict[str, Any]:
    """What a trial's driver needs to know about its resources (part of each Tune trial's config)."""
    res = study.resources
    return {"cpus": res.cpus_per_trial, "gpus": res.gpus_per_trial, "workers": res.workers,
            "storage": storage_path}


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


def _fit(study: Study, study_dir: Path, *, address: str | None, storage_path: str, runs: list[dict[str, Any]],
         tuner_kwargs: dict[str, Any] | None, restore_path: str | None, display: Display, console: Any,
         notes: list[str]) -> str:
    trainable = tune.with_resources(_trainable, _trial_resources(study))
    monitor = Monitor(display, study, study_dir)
    with _ray_session(study_dir, address) as info:
        if address:
            notes.append(f"used the Ray cluster at {info.get('gcs_address')} "
                         f"({info['cluster_cpus']:g} CPUs, {info['cluster_gpus']:g} GPUs)")
        if restore_path is not None:
            name = Path(restore_path).name
            record = next(r for r in runs if r.get("path") == restore_path)
            record.update(state="running", resumed=time.strftime("%Y-%m-%d %H:%M:%S"), driver_pid=os.getpid())
            tuner = tune.Tuner.restore(restore_path, trainable, resume_unfinished=True, resume_errored=True)
            # The restored run config has no live callbacks (they are not pickled with the experiment).
            with contextlib.suppress(AttributeError):
                rc = tuner._local_tuner._run_config  # noqa: SLF001 - the only way to re-attach callbacks
                rc.callbacks = [c for c in (rc.callbacks or []) if not isinstance(c, Monitor)] + [monitor]
            notes.append(f"restored the search experiment {name} (Optuna state included)")
        else:
            name = _new_experiment_name(runs, storage_path)
            path = f"{storage_path.rstrip('/')}/{name}"
            record = {"name": name, "path": path, "storage_path": storage_path,
                      "kind": "search" if study.search else "grid", "state": "running",
                      "started": time.strftime("%Y-%m-%d %H:%M:%S"), "driver_pid": os.getpid(),
                      "address": info.get("gcs_address")}
            if study.search is None:
                record["trials"] = [t["hash"] for t in tuner_kwargs["param_space"]["trial"]["grid_search"]]
            runs.append(record)
            tune_config = _tune_config(study, study_dir, tuner_kwargs["num_samples"], _max_concurrent(study, info))
            from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

            run_config = tune.RunConfig(
                name=name, storage_path=storage_path, verbose=0,
                callbacks=[monitor, JsonLoggerCallback(), CSVLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
            tuner = tune.Tuner(trainable, param_space=tuner_kwargs["param_space"], tune_config=tune_config,
                               run_config=run_config)
        st.write_runs(study_dir, runs)
        state = "interrupted"
        try:
            with display:
                tuner.fit()  # Ctrl-C: Tune saves its state and returns early
            # Ctrl-C makes fit() return with trials marked TERMINATED: judge by the trial directories.
            left = _unfinished(study, study_dir, record.get("trials"))
            if left:
                notes.append(f"interrupted with {left} trial(s) unfinished; continue with "
                             f"`xtra study resume {study_dir}`")
            else:
                state = "finished"
        finally:
            record["state"] = state
            record["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
            st.write_runs(study_dir, runs)
    return name


def _unfinished(study: Study, study_dir: Path, hashes: list[str] | None) -> int:
    states = st.study_trials(study, study_dir, running=False)
    if study.search is None:
        wanted = set(hashes or [])
        return sum(1 for s in states if s.config_hash in wanted and s.status not in ("finished", "failed"))
    done = sum(1 for s in states if s.status in ("finished", "stopped", "failed"))
    return max(study.search.num_samples - done, 0)


def _tune_config(study: Study, study_dir: Path, num_samples: int, max_concurrent: int | None = None) -> Any:
    kwargs: dict[str, Any] = {"num_samples": num_samples, "trial_name_creator": _trial_name,
                              "trial_dirname_creator": _trial_dirname,
                              "max_concurrent_trials": max_concurrent}
    if study.search is not None:
        s = study.search
        points, rewards = _finished_search_points(study, st.study_trials(study, study_dir, running=False))
        searcher = _FinalMetricOptuna(metric=s.metric, mode=s.mode, seed=s.seed,
                                      points_to_evaluate=points or None, evaluated_rewards=rewards or None)
        kwargs["search_alg"] = searcher
        if s.asha:
            from ray.tune.schedulers import ASHAScheduler

            total = study.base_config().pretrain.samples
            kwargs["scheduler"] = ASHAScheduler(time_attr="samples_seen", metric="loss", mode="min", max_t=total,
                                                grace_period=s.grace_samples or max(total // 8, 1),
                                                reduction_factor=2, stop_last_trials=False)
    return tune.TuneConfig(**kwargs)


class _FinalMetricOptuna(OptunaSearch):
    """OptunaSearch that ignores intermediate reports lacking the metric (probe accuracy only exists
    at the end of a trial); the final report carries it."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(result.get(self.metric), (int, float)):
            super().on_trial_result(trial_id, result)


def _build_report(study_dir: Path, notes: list[str]) -> Path | None:
    try:
        from reports.build import build_report
    except ImportError:
        notes.append("report skipped: reports.build is not available")
        return None
    from xtra.pictures import study_pictures

    try:
        return Path(build_report(study_dir, pictures=study_pictures))
    except Exception as err:  # noqa: BLE001 - a report problem must not fail a finished run
        notes.append(f"report not built: {_error_line(err)}")
        return None
