"""Ray Train data-parallel groups: a multi-worker study trial, ``xtra pretrain --workers N`` and the
scaling bench all run ``_train_worker`` on N workers (DDP: NCCL on GPUs, gloo on CPUs).

For a study trial the Tune trainable is only a driver (it reserves no CPU or GPU): it launches a
``TorchTrainer`` whose workers run ``run_trial`` together in the trial directory. Rank 0 writes the
checkpoints and reports them to Ray Train (which restarts a failed worker group from the last one,
``FailureConfig(max_failures=2)``) and probes; progress and the result row reach the driver through
a queue and go on to Tune as for a one-process trial.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from xtra import trialdir as td
from xtra.overrides import from_dict
from xtra.studies.ray.session import ray_session
from xtra.studies.ray.stopping import PREEMPTED, stop_checker
from xtra.studies.ray.trialfiles import PROGRESS_EVERY_S, TrialSync, checkpoint_dir, restore_checkpoint

MAX_FAILURES = 2


WORKERS_LOG = "workers.jsonl"  # one line per start of a trial's worker group (rank 0 writes it)
TRAIN_DIR = "train"  # Ray Train's runs (checkpoints, state), one per trial, under the study's storage


def _per_worker(total: float, workers: int) -> float:
    return total / workers if total else 0.0


class _WorkerReporter:
    """``report`` callback on a Ray Train worker. Checkpoint events arrive on every rank at the same
    step: together they make one ``ray.train.report`` (a barrier), rank 0 handing over its file so a
    restarted worker group (on any node) resumes from it. Everything rank 0 hears also goes to the
    driver through ``events`` (progress at most once per PROGRESS_EVERY_S)."""

    def __init__(self, world: Any, run_dir: Path, key: str, events: Any, sync: TrialSync | None = None) -> None:
        self.world, self.run_dir, self.key, self.events = world, run_dir, key, events
        self.sync = sync  # rank 0 of a study trial: commits the trial directory when storage is remote
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
            if self.sync is not None and self.sync.remote:  # storage carries it: a restarted group downloads it
                td.write_tune_checkpoint(self.run_dir, samples, event.get("step"))
                self.sync.upload()
                ray.train.report(metrics, checkpoint=None)
                self.send(event)
                return
            tmp = checkpoint_dir(self.run_dir, event, self.key, ".train-checkpoint-")
            try:
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
    from xtra.pretrain import NonFiniteLoss, Preempted

    ctx = ray.train.get_context()
    device = None
    if config["use_gpu"]:
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    world = World.from_torch(device=device, local_rank=ctx.get_local_rank())
    torch.set_num_threads(max(1, int(config["threads"])))
    cfg = from_dict(config["config"])
    run_dir = Path(config["run_dir"])
    sync = TrialSync(config["storage"], config["hash"]) if config.get("storage") else None
    if sync is not None:  # every rank on its own node's view of the trial directory; rank 0 syncs it
        run_dir = sync.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    reporter = _WorkerReporter(world, run_dir, cfg.config_hash(), config.get("events"),
                               sync if world.main else None)
    if world.main:
        if sync is not None:
            sync.download()
        for stale in run_dir.glob(".train-checkpoint-*"):  # left by a worker killed mid-report
            shutil.rmtree(stale, ignore_errors=True)
        restored = restore_checkpoint(run_dir, ray.train.get_checkpoint())
        td.append_jsonl(run_dir / WORKERS_LOG, {
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "world_size": world.size, "pid": os.getpid(),
            "host": socket.gethostname(), "device": device or "cpu", "threads": torch.get_num_threads(),
            "checkpoint_samples": td.checkpoint_samples(run_dir), "restored_from_train": restored})
    try:
        if config["mode"] == "trial":
            from xtra.trial import run_trial

            job = td.WsdJob.from_dict(config.get("job"))
            if job and reporter.sync is not None:  # rank 0's file decides: its node's view of a wsd trunk
                job = reporter.sync.trunk(job, reporter)
            row = run_trial(cfg, run_dir, report=reporter, world=world, job=job,
                            should_stop=stop_checker(config.get("experiment")))
        else:
            row = _pretrain_on_worker(cfg, run_dir, world, reporter, probe=config.get("probe", False))
    except NonFiniteLoss as err:  # every rank sees it at once; a retry would fail the same way
        if reporter.sync is not None:
            reporter.sync.upload()
        reporter.send({"kind": "failed", "error": str(err)})
        return
    except Preempted as err:  # every rank stopped at the same step, rank 0's checkpoint committed
        if reporter.sync is not None:
            reporter.sync.upload()
        reporter.send({"kind": PREEMPTED, "samples_seen": err.samples_seen})
        return
    if reporter.sync is not None:
        reporter.sync.upload()  # trial.json is in storage before the driver hears of the result
    reporter.send({"kind": "result", "row": row})


def _pretrain_on_worker(cfg: Any, run_dir: Path, world: Any, reporter: _WorkerReporter,
                        probe: bool) -> dict[str, Any] | None:
    from xtra.pretrain import pretrain
    from xtra.trial import hooks_from_env

    def log(msg: str) -> None:
        reporter.send({"kind": "log", "message": msg})

    result = pretrain(cfg.model, cfg.data, cfg.pretrain, run_dir, seed=cfg.seed, report=reporter,
                      hooks=hooks_from_env(cfg), log=log, world=world)
    if not world.main:
        return None
    rows = td.read_metrics(run_dir)
    rates = sorted(r["images_per_s"] for r in rows[2:] if r.get("images_per_s"))  # past the warm-up
    result["images_per_s_steady"] = rates[len(rates) // 2] if rates else result["images_per_s"]
    if probe:
        from xtra.probe import probe_run

        probed = probe_run(run_dir, cfg.data, cfg.probe, seed=cfg.seed, log=log)
        result["probe"] = {k: v for k, v in probed.items() if k != "meta"}
    return result


def _run_workers(cfg: Any, run_dir: Path, *, mode: str, workers: int, use_gpu: bool, cpus_per_worker: float,
                 gpus_per_worker: float, storage_path: str, name: str, on_event: Any, probe: bool = False,
                 job: dict[str, Any] | None = None, trial_storage: str | None = None,
                 experiment: str | None = None) -> dict[str, Any] | None:
    """Run ``_train_worker`` on ``workers`` Ray Train workers and pump their events into ``on_event``
    (on this thread) until they finish. Returns rank 0's final event (``result``, ``failed`` or
    ``preempted``: the stop flag of Tune ``experiment`` was raised and every rank checkpointed)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    from xtra.storage import Storage

    ray_path, ray_fs = Storage.from_uri(storage_path).ray_storage()  # an object store through our own client
    events = Queue(actor_options={"num_cpus": 0})  # a 0-CPU actor: fits beside a 0-CPU driver
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker or 1
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg.to_dict(), "run_dir": str(run_dir), "mode": mode, "use_gpu": use_gpu,
                           "threads": max(1, int(cpus_per_worker)), "events": events, "probe": probe,
                           "job": job, "storage": trial_storage, "hash": name, "experiment": experiment},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=name, storage_path=ray_path, storage_filesystem=ray_fs,
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
                if event.get("kind") in ("result", "failed", PREEMPTED):
                    final = event
                on_event(event)
        thread.join()
    finally:
        with contextlib.suppress(Exception):
            ray.kill(events.actor)
    if "error" in outcome:
        raise outcome["error"]
    return final


def trial_on_workers(cfg: Any, run_dir: Path, meta: dict[str, Any], reporter: Any) -> dict[str, Any]:
    """The Tune trainable's part of a multi-worker trial: launch the workers, relay their events."""
    from xtra.pretrain import NonFiniteLoss, Preempted

    workers = int(meta["workers"])
    gpus = float(meta.get("gpus", 0))
    storage = str(meta.get("storage") or meta["study_dir"]).rstrip("/")

    def on_event(event: dict[str, Any]) -> None:
        if event.get("kind") in ("progress", "checkpoint", "probing"):
            reporter(event)

    final = _run_workers(cfg, run_dir, mode="trial", workers=workers, use_gpu=gpus > 0,
                         cpus_per_worker=_per_worker(float(meta.get("cpus", 1)), workers),
                         gpus_per_worker=_per_worker(gpus, workers), storage_path=f"{storage}/{TRAIN_DIR}",
                         name=meta.get("hash") or cfg.config_hash(), on_event=on_event, job=meta.get("job"),
                         trial_storage=str(meta.get("storage") or meta["study_dir"]),
                         experiment=meta.get("experiment"))
    if final is not None and final["kind"] == "failed":
        raise NonFiniteLoss(final["error"])
    if final is not None and final["kind"] == PREEMPTED:
        raise Preempted(int(final["samples_seen"]), run_dir / td.CHECKPOINT)
    row = final.get("row") if final is not None else None
    if row is None:
        row = td.read_result(run_dir)
    if row is None:
        raise RuntimeError(f"the {workers} workers of trial {cfg.config_hash()} finished without a result")
    return row


def run_pretrain_workers(cfg: Any, out: str | Path, workers: int, *, address: str | None = None,
                         probe: bool = False, console: Any = None) -> dict[str, Any]:
    """``xtra pretrain --workers N``: one run on N Ray Train workers (DDP), resumable in ``out``.
    GPUs when ``pretrain.device`` is cuda, or auto and the cluster has N of them; CPUs split evenly."""
    from rich.console import Console

    from xtra.pretrain import NonFiniteLoss, progress_bar

    console = console or Console()
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with ray_session(out, address) as info:
        use_gpu = _use_gpu(cfg.pretrain.device, info, workers)
        cpus = _cpus_per_worker(info, workers)
        console.print(f"{workers} workers x ({cpus:g} CPU{' + 1 GPU' if use_gpu else ''}) on "
                      f"{'the Ray cluster at ' + str(info.get('gcs_address')) if address else 'a local Ray'}; "
                      f"Ray's log: {out / 'ray.log'}", highlight=False)
        bar = progress_bar(cfg.pretrain.samples, 0) if console.is_terminal else None

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
    from xtra.config import SIZES, TrialConfig
    from xtra.overrides import override

    with tempfile.TemporaryDirectory(prefix="xtra-bench-scaling-") as tmp:
        root = Path(tmp)
        with ray_session(root, address) as info:
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


