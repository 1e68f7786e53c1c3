"""`run_trial`: pretrain, then probe, in one resumable run directory.

The same function runs from the CLI, from Ray Tune (xtra.studies.ray.trainable) and from tests. Its
files are laid out by ``xtra.trialdir``. Calling it again on a finished directory returns the stored
row; on an interrupted one it resumes from the checkpoint; on one finished under another probe
protocol it pretrains nothing and only probes (probe results are kept per ``probe_hash``).

With a data-parallel `world` (`xtra.distributed.World`) every rank calls it: all ranks pretrain
together, rank 0 alone writes the directory's files and then probes (on its own device) while the
others return None.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xtra import trialdir as td
from xtra.config import TrialConfig
from xtra.distributed import World
from xtra.pretrain import Preempted, PretrainHook, pretrain
from xtra.results import static_row

TRIAL_JSON = td.RESULT
PRETRAIN_FIELDS = ("samples_seen", "train_loss", "val_loss", "images_per_s", "attention_backend", "device")
PROBE_JSON = td.PROBE
HOOKS_ENV = "XTRA_PRETRAIN_HOOKS"


def read_finished(run_dir: Path, cfg: TrialConfig | None = None) -> dict[str, Any] | None:
    """The finished row; with ``cfg``, only when it was probed with cfg's probe protocol."""
    row = td.read_result(run_dir)
    if row is not None and cfg is not None and row.get("probe_hash") != cfg.probe_hash():
        return None
    return row


def hooks_from_env(cfg: TrialConfig) -> tuple[PretrainHook, ...]:
    """The pretraining hooks named by ``XTRA_PRETRAIN_HOOKS=FILE.py:FACTORY`` (read once per trial, not in
    the loop): ``FACTORY(cfg)`` returns the `PretrainHook`s for this trial. This is how tests inject faults
    into trials that Ray workers run (``tests/faults.py``); it loads that file's code, like PYTHONPATH would,
    so it is for a test or a deliberate tool, never set by xtra itself."""
    spec = os.environ.get(HOOKS_ENV, "").strip()
    if not spec:
        return ()
    path, _, factory = spec.rpartition(":")
    if not path.endswith(".py") or not Path(path).is_file() or not factory.isidentifier():
        raise ValueError(f"{HOOKS_ENV}={spec!r}: expected FILE.py:FACTORY naming an existing Python file and a "
                         f"function in it")
    loader = importlib.util.spec_from_file_location(f"xtra_pretrain_hooks_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    if not callable(getattr(module, factory, None)):
        raise ValueError(f"{HOOKS_ENV}={spec!r}: {path} has no function {factory}")
    return tuple(getattr(module, factory)(cfg))


def run_trial(cfg: TrialConfig, run_dir: Path, report: Callable[[dict], None] | None = None,
              progress: bool = False, world: World | None = None,
              job: td.WsdJob | None = None, should_stop: Callable[[], bool] | None = None
              ) -> dict[str, Any] | None:
    """``job`` (``xtra.trialdir.WsdJob``, from the study's plan) makes the run a wsd *trunk* (pretrain only,
    keeping checkpoints where branches start) or a *branch* (wait for the trunk's checkpoint at its start,
    continue from it under this trial's own budget and cooldown, then probe like any trial). ``should_stop``
    (a time limit or preemption is near) makes pretraining checkpoint and raise ``xtra.pretrain.Preempted``."""
    world = world or World()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    role = job.role if job is not None else "trial"
    if world.main:
        done = _trunk_reached(run_dir, cfg) if role == td.TRUNK else read_finished(run_dir, cfg)
    else:
        done = None
    if world.distributed:  # rank 0's disk decides for everyone
        done = world.broadcast_object(done)
    if done is not None:
        return done if world.main else None
    report = report or (lambda event: None)
    keep = job.keep_at if job is not None and role == td.TRUNK else keep_at(cfg, start=job.start if job else 0)
    init_from = _wait_for_trunk(job, run_dir, report, world, should_stop) if job and role == td.BRANCH else None
    if not world.main:  # a peer: pretrain in step with rank 0; files and probing are rank 0's
        pretrain(cfg.model, cfg.data, cfg.pretrain, run_dir, seed=cfg.seed, report=report,
                 hooks=hooks_from_env(cfg), world=world, keep_at=keep, init_from=init_from, should_stop=should_stop)
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
        # pretrained already, under another probe protocol (a trunk asked to go deeper continues instead)
        earlier = td.read_result(run_dir) if role != td.TRUNK else None
        if earlier is not None and not world.distributed:
            trained = {k: earlier.get(k) for k in PRETRAIN_FIELDS}
            trained["wall_s"] = earlier.get("pretrain_wall_s") or 0.0
            log(f"pretraining reused ({trained['samples_seen']} samples); probing with protocol {cfg.probe_hash()}")
        else:
            if init_from is not None:
                log(f"wsd branch: starts from the trunk's checkpoint {init_from}")
            trained = pretrain(cfg.model, cfg.data, cfg.pretrain, run_dir, seed=cfg.seed, report=report,
                               progress=progress, hooks=hooks_from_env(cfg), log=log, world=world,
                               keep_at=keep, init_from=init_from, should_stop=should_stop)
            log(f"pretrain done: {trained['samples_seen']} samples, loss {trained['train_loss']:.4f}, "
                f"val loss {trained['val_loss']:.4f}")
        if role == td.TRUNK:  # a trunk is pretraining only: its branches are the study's trials
            row = {**static_row(cfg), "role": "trunk", "keep_at": list(keep), **{k: trained.get(k) for k in
                   PRETRAIN_FIELDS}, "pretrain_wall_s": trained["wall_s"], "wall_s": time.perf_counter() - t0}
            td.write_result(run_dir, row)
            log(f"trunk finished at {trained['samples_seen']} samples; checkpoints kept at {list(keep)}")
            return row
        report({"kind": "probing", "samples_seen": trained["samples_seen"]})  # also when pretraining was reused
        trunk_dir = job.trunk_dir if job is not None and role == td.BRANCH else None
        probed = probe_summary(cfg, _probe(cfg, run_dir, log, trunk_dir=trunk_dir))
        report({"kind": "probe", **{f"{k}_top1": v.get("top1") for k, v in probed.items()}})
        row = {**static_row(cfg), "status": "finished", "error": None,
               "samples_seen": trained["samples_seen"], "train_loss": trained["train_loss"],
               "val_loss": trained["val_loss"], "images_per_s": trained["images_per_s"],
               "pretrain_wall_s": trained["wall_s"], "wall_s": trained["wall_s"] + time.perf_counter() - t0,
               "attention_backend": trained["attention_backend"], "device": trained["device"],
               "workers": world.size}
        if job is not None and role == td.BRANCH:
            row.update(trunk=job.trunk_name, branch_start=job.start,
                       samples_trained=trained["samples_seen"] - job.start)
        for kind in ("linear", "attentive"):
            got = probed.get(kind, {})
            row[f"{kind}_top1"] = got.get("top1")
            row[f"{kind}_best_lr"] = got.get("best_lr")
            row[f"{kind}_val_top1"] = got.get("best_val_top1")
            row[f"{kind}_still_improving"] = got.get("still_improving")
            if "suite_top1" in got:
                row[f"{kind}_suite_top1"] = got["suite_top1"]
        td.write_result(run_dir, row)
        log(f"trial finished: linear {row['linear_top1']}, attentive {row['attentive_top1']}")
        return row
    except Preempted as err:
        log(f"trial {err}")
        raise
    except BaseException as err:
        log(f"trial failed: {type(err).__name__}: {err}")
        raise
    finally:
        log_file.close()


def _trunk_reached(run_dir: Path, cfg: TrialConfig) -> dict[str, Any] | None:
    """A finished trunk's row when it reached this job's depth; a trunk asked to go deeper (a later
    budget, a halving search's next rung) continues from its checkpoint."""
    row = td.read_result(run_dir)
    return row if row is not None and int(row.get("samples_seen") or 0) >= cfg.pretrain.samples else None


def keep_at(cfg: TrialConfig, start: int = 0) -> tuple[int, ...]:
    """Sample counts whose checkpoints the trial keeps: the probe points before the end (after
    ``start``, where a wsd branch begins: its trunk keeps the earlier ones)."""
    points = cfg.probe.probe_samples(cfg.pretrain.samples, cfg.pretrain.batch_size)
    return tuple(s for s in points[:-1] if start < s < cfg.pretrain.samples)


TRUNK_POLL_S = 2.0


def _wait_for_trunk(job: td.WsdJob, run_dir: Path, report: Callable[[dict], None], world: World,
                    should_stop: Callable[[], bool] | None = None) -> Path:
    """The trunk's kept checkpoint this branch starts from, once it exists (the branch was scheduled
    beside its trunk). A branch that already has its own checkpoint resumes from that instead."""
    from xtra.checkpoint import kept_checkpoint

    trunk_dir, start = Path(job.trunk_dir), job.start
    source = kept_checkpoint(trunk_dir, start)
    if world.main and not (run_dir / td.CHECKPOINT).exists():
        while not source.is_file():
            state = td.read_state(trunk_dir, running=True)
            if state.status in ("failed", "stopped"):
                raise RuntimeError(f"wsd trunk {trunk_dir.name} {state.status} ({state.error}); its branches "
                                   f"cannot start (fix it, then `xtra study resume`)")
            reached = int((state.row or {}).get("samples_seen") or 0)
            if state.status == td.FINISHED and reached >= start:  # else: finished short of it, to be continued
                raise RuntimeError(f"wsd trunk {trunk_dir.name} finished without a checkpoint at {start} samples "
                                   f"(kept: {state.row.get('keep_at') if state.row else '?'})")
            if should_stop is not None and not world.distributed and should_stop():  # nothing to keep yet
                raise Preempted(0, None)
            report({"kind": "progress", "samples_seen": 0, "waiting": f"trunk {trunk_dir.name} to {start}"})
            time.sleep(TRUNK_POLL_S)
    if world.distributed:
        world.broadcast_object(True)  # every rank waits for rank 0's word
    return source


def _probe(cfg: TrialConfig, run_dir: Path, log: Callable[[str], None],
           trunk_dir: str | None = None) -> list[dict[str, Any]]:
    """Probe rows (one per samples x dataset x kind) of this probe protocol on this pretraining,
    computed once and kept in probes/<probe_hash>.json."""
    from xtra.checkpoint import kept_checkpoint
    from xtra.probe import probe_checkpoints

    path = td.probe_path(run_dir, cfg.probe_hash())
    stored = td.read_json(path)
    if isinstance(stored, dict) and isinstance(stored.get("rows"), list):
        return stored["rows"]
    wanted = cfg.probe.probe_samples(cfg.pretrain.samples, cfg.pretrain.batch_size)
    paths: dict[int, Path] = {wanted[-1]: run_dir / td.CHECKPOINT}
    missing = []
    for samples in wanted[:-1]:
        kept = kept_checkpoint(run_dir, samples)
        shared = kept_checkpoint(Path(trunk_dir), samples) if trunk_dir else None  # a branch's early points
        if kept.is_file():
            paths[samples] = kept
        elif shared is not None and shared.is_file():
            paths[samples] = shared
        else:
            missing.append(samples)
    if missing:  # pretrained before this protocol asked for them: probe what exists, say what does not
        log(f"probe points {missing} have no kept checkpoint (pretrained under another protocol); skipped")
    # Each (checkpoint, dataset) is kept as it finishes, so an interrupted probe resumes where it stopped
    partial_path = path.with_suffix(".partial.json")
    partial = td.read_json(partial_path)
    finished: list[dict[str, Any]] = []
    if (isinstance(partial, dict) and partial.get("config_hash") == cfg.config_hash()
            and isinstance(partial.get("rows"), list)):
        finished = [r for r in partial["rows"] if isinstance(r, dict) and r.get("samples") in paths]
    done: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in finished:
        done.setdefault((r["samples"], r["dataset"]), []).append(r)
    if done:
        log(f"probe resumed: {len(done)} checkpoint x dataset point(s) already probed "
            f"({', '.join(f'{s} samples on {d}' for s, d in sorted(done))})")
    header = {"probe_hash": cfg.probe_hash(), "config_hash": cfg.config_hash(), "probe": dataclasses.asdict(cfg.probe)}

    def keep_point(samples: int, dataset: str, rows: list[dict[str, Any]]) -> None:
        finished.extend(rows)
        td.write_json(partial_path, {**header, "rows": finished})

    rows = probe_checkpoints(paths, cfg.data, cfg.probe, seed=cfg.seed, expect_model=cfg.model, log=log,
                             done=done, on_point=keep_point)
    td.write_json(path, {**header, "missing_points": missing, "rows": rows})
    partial_path.unlink(missing_ok=True)
    return rows


def probe_summary(cfg: TrialConfig, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind, the result row's probe figures at the end of pretraining: the trial's own data when it
    is probed, else the suite's average; with several probe datasets, also the suite average."""
    end = max((r["samples"] for r in rows), default=None)
    out: dict[str, dict[str, Any]] = {}
    for kind in cfg.probe.kinds:
        at_end = [r for r in rows if r["samples"] == end and r["kind"] == kind]
        if not at_end:
            continue
        own = next((r for r in at_end if r["dataset"] == cfg.data.name), None)
        scores = [r["top1"] for r in at_end if r.get("top1") is not None]
        suite = sum(scores) / len(scores) if scores else None
        pick = own or {"top1": suite, "best_lr": None, "best_val_top1": None,
                       "still_improving": any(r.get("still_improving") for r in at_end)}
        out[kind] = {k: pick.get(k) for k in ("top1", "best_lr", "best_val_top1", "still_improving")}
        if len(at_end) > 1:
            out[kind]["suite_top1"] = suite
    return out
