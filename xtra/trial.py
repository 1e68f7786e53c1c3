"""`run_trial`: pretrain, then probe, in one resumable run directory.

The same function runs from the CLI, from Ray Tune (studies.ray.trainable) and from tests. Its
files are laid out by ``xtra.trialdir``. Calling it again on a finished directory returns the stored
row; on an interrupted one it resumes from the checkpoint; on one finished under another probe
protocol it pretrains nothing and only probes (probe results are kept per ``probe_hash``).

With a data-parallel `world` (`xtra.distributed.World`) every rank calls it: all ranks pretrain
together, rank 0 alone writes the directory's files and then probes (on its own device) while the
others return None.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xtra import trialdir as td
from xtra.config import TrialConfig
from xtra.distributed import World
from xtra.pretrain import Faults, pretrain

TRIAL_JSON = td.RESULT
PRETRAIN_FIELDS = ("samples_seen", "train_loss", "val_loss", "images_per_s", "attention_backend", "device")
PROBE_JSON = td.PROBE


def _fault_at(cfg: TrialConfig, variable: str) -> int | None:
    """Parse `KEY=VALUE@SAMPLES` from the environment; applies when the trial's config matches."""
    spec = os.environ.get(variable, "").strip()
    if not spec:
        return None
    match, _, at = spec.rpartition("@")
    key, _, value = match.partition("=")
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part, None)
    return int(at) if str(node) == value.strip() else None


def result_row(cfg: TrialConfig) -> dict[str, Any]:
    """The static part of a result row (knowable before any compute)."""
    return td.static_row(cfg)


def read_finished(run_dir: Path, cfg: TrialConfig | None = None) -> dict[str, Any] | None:
    """The finished row; with ``cfg``, only when it was probed with cfg's probe protocol."""
    row = td.read_result(run_dir)
    if row is not None and cfg is not None and row.get("probe_hash") != cfg.probe_hash():
        return None
    return row


def faults_from_env(cfg: TrialConfig) -> Faults:
    """Fault injection for orchestration tests: ``XTRA_FAULT_<KIND>=KEY=VALUE@SAMPLES``."""
    return Faults(nan_at_samples=_fault_at(cfg, "XTRA_FAULT_NAN"),
                  crash_once_at_samples=_fault_at(cfg, "XTRA_FAULT_CRASH_ONCE"),
                  kill_worker_once_at_samples=_fault_at(cfg, "XTRA_FAULT_KILL_WORKER"))


def run_trial(cfg: TrialConfig, run_dir: Path, report: Callable[[dict], None] | None = None,
              progress: bool = False, world: World | None = None) -> dict[str, Any] | None:
    world = world or World()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = read_finished(run_dir, cfg) if world.main else None
    if world.distributed:  # rank 0's disk decides for everyone
        done = world.broadcast_object(done)
    if done is not None:
        return done if world.main else None
    report = report or (lambda event: None)
    if not world.main:  # a peer: pretrain in step with rank 0; files and probing are rank 0's
        pretrain(cfg.model, cfg.data, cfg.pretrain, run_dir, seed=cfg.seed, report=report,
                 faults=faults_from_env(cfg), world=world)
        return None
    td.write_config(run_dir, cfg)
    log_file = open(run_dir / td.LOG, "a")  # noqa: SIM115 - closed below

    def log(msg: str) -> None:
        log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        log_file.flush()

    t0 = time.perf_counter()
    try:
        log(f"trial {cfg.config_hash()} start (pid {os.getpid()}"
            + (f", rank 0 of {world.size} data-parallel workers)" if world.distributed else ")"))
        earlier = td.read_result(run_dir)  # pretrained already, under another probe protocol
        if earlier is not None and not world.distributed:
            trained = {k: earlier.get(k) for k in PRETRAIN_FIELDS}
            trained["wall_s"] = earlier.get("pretrain_wall_s") or 0.0
            log(f"pretraining reused ({trained['samples_seen']} samples); probing with protocol {cfg.probe_hash()}")
        else:
            trained = pretrain(cfg.model, cfg.data, cfg.pretrain, run_dir, seed=cfg.seed, report=report,
                               progress=progress, faults=faults_from_env(cfg), log=log, world=world)
            log(f"pretrain done: {trained['samples_seen']} samples, loss {trained['train_loss']:.4f}, "
                f"val loss {trained['val_loss']:.4f}")
        probed = _probe(cfg, run_dir, progress)
        report({"kind": "probe", **{f"{k}_top1": v.get("test_top1") for k, v in probed.items()}})
        row = {**result_row(cfg), "status": "finished", "error": None,
               "samples_seen": trained["samples_seen"], "train_loss": trained["train_loss"],
               "val_loss": trained["val_loss"], "images_per_s": trained["images_per_s"],
               "pretrain_wall_s": trained["wall_s"], "wall_s": trained["wall_s"] + time.perf_counter() - t0,
               "attention_backend": trained["attention_backend"], "device": trained["device"],
               "workers": world.size}
        for kind in ("linear", "attentive"):
            row[f"{kind}_top1"] = probed.get(kind, {}).get("test_top1")
            row[f"{kind}_best_lr"] = probed.get(kind, {}).get("best_lr")
            row[f"{kind}_val_top1"] = probed.get(kind, {}).get("best_val_top1")
        td.write_result(run_dir, row)
        log(f"trial finished: linear {row['linear_top1']}, attentive {row['attentive_top1']}")
        return row
    except BaseException as err:
        log(f"trial failed: {type(err).__name__}: {err}")
        raise
    finally:
        log_file.close()


def _probe(cfg: TrialConfig, run_dir: Path, progress: bool) -> dict[str, Any]:
    from xtra.probe import probe_run

    path = td.probe_path(run_dir, cfg.probe_hash())
    stored = td.read_json(path)
    if isinstance(stored, dict):  # this protocol already ran on this pretraining
        return {k: v for k, v in stored.items() if k != "meta"}
    probed = probe_run(run_dir, cfg.data, cfg.probe, seed=cfg.seed, progress=progress)
    td.write_json(path, probed)
    return {k: v for k, v in probed.items() if k != "meta"}
