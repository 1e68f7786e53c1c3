"""The pretraining loop, separate from its wiring (like MAE's engine_pretrain).

`lr_at` and `train_step` are pure functions of their inputs; `pretrain(...)` takes a `report`
callback so the CLI, Ray and tests share it. The budget is counted in samples seen. Every random
draw of a step is seeded by (seed, step), and the data stream by (seed, epoch), so resuming from a
checkpoint replays exactly what an uninterrupted run would have done (bitwise on CPU).

Data parallel (`world`, see `xtra.distributed`): every rank draws the same global batch and the same
augmentation of it (a streamed collection: only its own rows of it, `xtra.data.stream`), then trains
on its contiguous slice (rank r: rows [r*b/N, (r+1)*b/N)) of a
DistributedDataParallel model, so N workers x b/N follow 1 worker x b up to float reduction order.
Rank 0 alone writes metrics.jsonl and checkpoints and sees progress events; checkpoint events reach
every rank (after a barrier: the file is complete), for a launcher whose report is collective.
Only torch and numpy are imported at module level.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from xtra.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    atomic_write_text,
    kept_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from xtra.config import RESOURCE_KEYS, DataConfig, ModelConfig, PretrainConfig
from xtra.data.sampler import step_seed
from xtra.distributed import World
from xtra.model import XTRA, parameter_groups
from xtra.precision import autocast
from xtra.schedule import continuation_error, lr_at  # noqa: F401 - lr_at is part of this module's API
from xtra.trialdir import METRICS

VAL_IMAGES = 1024  # a fixed slice of the validation split for the val loss

Report = Callable[[dict[str, Any]], None]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops and nothing already written is touched."""


class Preempted(Exception):
    """The run was asked to stop (``should_stop``: a time limit or preemption is near) and did, at a log
    window's end with a checkpoint there, so a resumed run continues bitwise where this one stopped."""

    def __init__(self, samples_seen: int, checkpoint: Path | None) -> None:
        kept = f"checkpoint kept at {checkpoint}" if checkpoint is not None else "before its first checkpoint"
        super().__init__(f"preempted at {samples_seen} samples; {kept}")
        self.samples_seen, self.checkpoint = samples_seen, checkpoint


@dataclass(frozen=True)
class Faults:
    """Fault injection for tests of the orchestration (set by `xtra.trial` from the environment)."""

    nan_at_samples: int | None = None
    crash_once_at_samples: int | None = None
    kill_worker_once_at_samples: int | None = None  # the last rank os._exit()s after that checkpoint


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("pretrain.device='cuda' but no CUDA device is available here (allowed: auto, cpu)")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    # The fused kernel is ~4x faster than the default for-each AdamW on CPU (xtra bench) and exact per step.
    groups = parameter_groups(model, cfg.weight_decay, decay_positions=cfg.decay_positions)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def train_step(model, optimizer, images, order_index: int, lr: float, cfg: PretrainConfig) -> torch.Tensor:
    """One optimizer step over `images` (split into `cfg.accumulate` micro-batches). Returns the
    mean loss as a 0-dim tensor without synchronizing with the device. A DistributedDataParallel
    `model` all-reduces gradients once, on the last micro-batch (`no_sync` on the others)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=images.device)
    micros = images.chunk(cfg.accumulate)
    for i, micro in enumerate(micros):
        defer = i < len(micros) - 1 and hasattr(model, "no_sync")
        with model.no_sync() if defer else contextlib.nullcontext():
            with autocast(images.device):
                loss = model(micro, order_index)
            (loss / cfg.accumulate).backward()
        total = total + loss.detach() / cfg.accumulate
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return total


@torch.no_grad()
def evaluate_loss(model, images: torch.Tensor, batch_size: int = 256) -> float:
    """Mean loss on fixed images, canonical order, no augmentation."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in images.split(batch_size):
        with autocast(batch.device):
            total += model(batch, 0).float().item() * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / max(count, 1)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _check_resume(state: dict, expected: dict, cfg: PretrainConfig, path: Path) -> None:
    """Can this run continue from `state` (its own checkpoint, or a trunk's for `init_from`)? The
    science must match (resources like the device or the checkpoint cadence may change); the
    pretrain recipe may differ only as `xtra.schedule.continuation_error` allows (a wsd budget)."""
    stored = state.get("config", {})
    hint = "use a new --out directory or the same config"
    for part in ("model", "data"):
        old = {k: v for k, v in stored.get(part, {}).items() if f"{part}.{k}" not in RESOURCE_KEYS}
        new = {k: v for k, v in expected[part].items() if f"{part}.{k}" not in RESOURCE_KEYS}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise CheckpointError(f"{path}: checkpoint was written for a different {part} config "
                                  f"(differs in: {', '.join(f'{part}.{k}' for k in diff)}); {hint}")
    if stored.get("seed", expected["seed"]) != expected["seed"]:
        raise CheckpointError(f"{path}: checkpoint was written for seed {stored['seed']}, "
                              f"not {expected['seed']}; {hint}")
    why = continuation_error(stored.get("pretrain", {}), cfg, state["samples_seen"])
    if why is not None:
        raise CheckpointError(f"{path}: checkpoint was written for a {why}; {hint}")


def _load_init_weights(model: torch.nn.Module, expected: dict, path: Path) -> None:
    """`pretrain.init`: the model weights of another checkpoint (its optimizer state is not used); the
    model config must be the same science (one-line CheckpointError naming the keys that differ)."""
    state = load_checkpoint(path, map_location="cpu")
    stored = state.get("config", {}).get("model", {})
    old = {k: v for k, v in stored.items() if f"model.{k}" not in RESOURCE_KEYS}
    new = {k: v for k, v in expected["model"].items() if f"model.{k}" not in RESOURCE_KEYS}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CheckpointError(f"pretrain.init={path}: its weights are for another model config (differs in: "
                              f"{', '.join(f'model.{k}={old.get(k)!r} there, {new.get(k)!r} here' for k in diff)})")
    model.load_state_dict(state["model"])


def _curve_rows(path: Path, samples_seen: int) -> list[dict[str, Any]]:
    """The curve rows logged up to `samples_seen` (a torn last line from a kill ends the read)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row.get("samples_seen", samples_seen + 1) <= samples_seen:
            rows.append(row)
    return rows


def _source_curve(state: dict[str, Any], source: Path) -> list[dict[str, Any]]:
    """The curve of the run `init_from` points at: a kept checkpoint carries it; a run's rolling
    checkpoint has it beside it in metrics.jsonl."""
    if "curve" in state:
        return state["curve"]
    run = source if source.is_dir() else source.parent
    return _curve_rows(run / METRICS, state["samples_seen"])


def _check_keep_at(keep_at: tuple[int, ...], cfg: PretrainConfig, share: int) -> frozenset[int]:
    """keep_at points must be step boundaries, so a kept state is exactly the state after S samples:
    multiples of batch_size up to the budget, or the run's last step."""
    full = cfg.samples // cfg.batch_size * cfg.batch_size
    last = full + (cfg.samples - full) // share * share
    for s in keep_at:
        if isinstance(s, bool) or s != int(s) or not 0 < s <= last or (s % cfg.batch_size and s != last):
            raise ValueError(f"keep_at={s!r} is not a step boundary of this run (allowed: multiples of "
                             f"pretrain.batch_size={cfg.batch_size} from {cfg.batch_size} to {full}, or {last})")
    return frozenset(int(s) for s in keep_at)


def _truncate_metrics(path: Path, samples_seen: int) -> None:
    """On resume, drop curve rows logged after the checkpoint so the curve has no duplicates."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for line in rows:
        try:
            if json.loads(line)["samples_seen"] <= samples_seen:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            break  # a torn last line from a kill
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _resume_state(ckpt_path: Path, device: torch.device, world: World) -> dict[str, Any] | None:
    """The checkpoint to resume from, the same on every rank. Rank 0 decides (its file is the truth);
    a rank that cannot read the same checkpoint (another node, no shared disk) is sent rank 0's."""
    if not world.distributed:
        return load_checkpoint(ckpt_path, map_location=device) if ckpt_path.exists() else None
    state, header = None, None
    if world.main and ckpt_path.exists():
        try:
            state = load_checkpoint(ckpt_path, map_location="cpu")
            header = ("ok", state["step"], state["samples_seen"])
        except CheckpointError as err:
            header = ("error", str(err))
    header = world.broadcast_object(header, device=device)
    if header is None:
        return None
    if header[0] == "error":
        raise CheckpointError(header[1])
    if not world.main:
        try:
            state = load_checkpoint(ckpt_path, map_location="cpu") if ckpt_path.exists() else None
        except CheckpointError:
            state = None
    same = state is not None and (state["step"], state["samples_seen"]) == header[1:]
    if not world.all_true(same, device=device):
        state = world.broadcast_object(state if world.main else None, device=device)
    return state


def pretrain(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    cfg: PretrainConfig,
    run_dir: Path,
    seed: int = 0,
    report: Report | None = None,
    progress: bool = False,
    faults: Faults = Faults(),
    log: Callable[[str], None] | None = None,
    world: World | None = None,
    keep_at: tuple[int, ...] = (),
    init_from: Path | str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Pretrain (or resume) in `run_dir`; returns the final metrics (rank 0's; other ranks get
    NaN for the losses). With `world.size` > 1 every rank must call it with the same arguments.

    `keep_at`: sample counts (step boundaries) at which an immutable copy of the state is kept in
    `checkpoints/samples-<S>.pt` (`xtra.checkpoint.kept_checkpoint`), e.g. a wsd trunk's branch
    points or checkpoints to probe along the way. `init_from`: when `run_dir` has no checkpoint of
    its own yet, start from that checkpoint (model, optimizer, data position, samples seen, curve)
    instead of from scratch, e.g. a wsd branch from its trunk's kept checkpoint; the recipes may
    differ only where `xtra.schedule.continuation_error` allows. `should_stop`: asked at the end of
    every log window; once it says True on any rank, every rank checkpoints there and raises `Preempted`
    (a log window's end, so the resumed run's loss windows, and its results, equal an uninterrupted run's)."""
    from xtra.attention import resolve_backend
    from xtra.data import locate
    from xtra.data.stream import open_stream

    world = world or World()
    main = world.main
    if cfg.batch_size % (world.size * cfg.accumulate):
        raise ValueError(f"pretrain.batch_size={cfg.batch_size} is not divisible by workers x pretrain.accumulate "
                         f"= {world.size} x {cfg.accumulate} (each worker takes an equal share of every micro-batch)")
    keep = _check_keep_at(keep_at, cfg, world.size * cfg.accumulate)
    run_dir = Path(run_dir)
    locate(data_cfg)  # a missing or malformed collection is one line, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    log = (log or (lambda msg: None)) if main else (lambda msg: None)
    report = report or (lambda event: None)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.device is not None:
        device = torch.device(world.device)
        torch.cuda.set_device(device)
    # In memory for small sets, streamed by loader workers for imagefolder:/wds: (xtra.data.stream).
    data = open_stream(data_cfg, model_cfg.img_size, model_cfg.channels, seed=seed, rank=world.rank,
                       size=world.size, device=device, total=cfg.samples, batch_size=cfg.batch_size,
                       share=world.size * cfg.accumulate)
    val_images = data.val_images(VAL_IMAGES)

    torch.manual_seed(step_seed(seed, -1))
    model = XTRA(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    config_dict = {"model": asdict(model_cfg), "data": asdict(data_cfg), "pretrain": asdict(cfg), "seed": seed}

    step, samples_seen, wall_before = 0, 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    state, source, init = _resume_state(ckpt_path, device, world), ckpt_path, None
    if state is None and init_from is not None:
        source = Path(init_from)
        state = _resume_state(source, device, world)
        if state is None:
            raise CheckpointError(f"init_from {source}: no checkpoint here (expected a kept checkpoint "
                                  f"checkpoints/samples-<S>.pt or a run directory)")
        init = {"path": str(source), "samples_seen": state["samples_seen"], "wall_s": state.get("wall_s", 0.0)}
    if state is not None:
        _check_resume(state, config_dict, cfg, source)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, samples_seen, wall_before = state["step"], state["samples_seen"], state.get("wall_s", 0.0)
        data.restore(state.get("data", {}))  # the position is samples_seen; this checks the collection
        init = init or state.get("init")
        if source == ckpt_path:
            log(f"resumed from {ckpt_path} at step {step} ({samples_seen} samples seen)")
        else:
            log(f"initialised from {source} at step {step} ({samples_seen} samples seen)")
            if main:  # the curve so far is the source's: this run's curve is then a whole run's
                rows = _source_curve(state, source)
                atomic_write_text(run_dir / METRICS, "".join(f"{json.dumps(row)}\n" for row in rows))
        missed = [s for s in keep if s < samples_seen and not kept_checkpoint(run_dir, s).exists()]
        if missed:
            raise ValueError(f"keep_at={missed[0]}: this run starts at {samples_seen} samples, past it, and "
                             f"{kept_checkpoint(run_dir, missed[0])} does not exist (allowed: >= {samples_seen})")
        del state
    elif cfg.init:  # a fresh run from given weights (e.g. `xtra import official`)
        _load_init_weights(model, config_dict, Path(cfg.init))
        log(f"initialised the weights from {cfg.init} (step 0: the optimizer and the lr schedule start fresh)")
    if main:
        _truncate_metrics(run_dir / METRICS, samples_seen)

    backend = resolve_backend(model_cfg.attention, device)
    log(f"device {device}, attention backend {backend} (asked: {model_cfg.attention}), "
        f"{data.describe}"
        + (f", {world.size} data-parallel workers x {cfg.batch_size // world.size} images" if world.distributed
           else ""))
    train = model
    if world.distributed:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # Buffers are constants (masks, orders): no need to broadcast them before every forward.
        no_buffer_sync = ({"forward_sync_buffers": False}  # torch >= 2.12 spells it so
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})
        train = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        process_group=world.group, **no_buffer_sync)
    train = torch.compile(train) if cfg.compile else train
    model.train()

    def checkpoint_state(final: bool) -> dict[str, Any]:
        return {
            "config": config_dict, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "samples_seen": samples_seen, "wall_s": wall_before + time.perf_counter() - t0,
            "rng": _rng_state(), "data": data.state(samples_seen),
            "world_size": world.size, "final": final, "init": init,
        }

    def save(final: bool) -> None:
        if main:
            save_checkpoint(ckpt_path, checkpoint_state(final))
        world.barrier()  # the checkpoint is complete before any rank hears of it
        report({"kind": "checkpoint", "step": step, "samples_seen": samples_seen, "path": str(ckpt_path)})

    def keep_copy(final: bool) -> None:
        """The immutable copy at a keep_at point, with the curve so far (a branch's curve starts
        with it); written before the rolling checkpoint, so a checkpoint past S implies the copy."""
        path = kept_checkpoint(run_dir, samples_seen)
        if main and not path.exists():  # a resumed run replays to S bitwise: the existing copy stands
            save_checkpoint(path, {**checkpoint_state(final), "curve": _curve_rows(run_dir / METRICS, samples_seen)})
        world.barrier()
        report({"kind": "kept", "step": step, "samples_seen": samples_seen, "path": str(path)})

    pending: list[tuple[int, int, torch.Tensor]] = []  # (step, samples, loss) not yet synced
    last_loss = float("nan")
    t0 = time.perf_counter()
    t_window, samples_window, wait_window = t0, samples_seen, 0.0
    next_ckpt = (samples_seen // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    metrics_file = open(run_dir / METRICS, "a") if main else None  # noqa: SIM115 - closed in finally
    bar = _progress_bar(cfg.samples, samples_seen) if progress and main else None
    share = world.size * cfg.accumulate
    try:
        if samples_seen in keep:  # resumed exactly at a keep point
            keep_copy(final=samples_seen >= cfg.samples)
        while samples_seen < cfg.samples:
            batch = min(cfg.batch_size, cfg.samples - samples_seen)
            batch -= batch % share
            if batch == 0:
                break
            torch.manual_seed(step_seed(seed, step))
            t_wait = time.perf_counter()
            images = data.batch(step, samples_seen, batch)  # this rank's rows of the global batch
            wait_window += time.perf_counter() - t_wait
            order_index = 0
            if model_cfg.order != "raster":  # random or pseudo-random: one of n_orders per step
                order_index = int(torch.randint(model_cfg.n_orders, (1,), generator=torch.Generator().manual_seed(
                    step_seed(seed, step))).item())
            lr = lr_at(samples_seen, cfg)
            loss = train_step(train, optimizer, images, order_index, lr, cfg)
            if faults.nan_at_samples is not None and samples_seen >= faults.nan_at_samples:
                loss = loss * float("nan")
            step += 1
            samples_seen += batch
            pending.append((step, samples_seen, loss))

            done = samples_seen >= cfg.samples
            checkpoint_due = samples_seen >= next_ckpt or done
            keep_due = samples_seen in keep
            if step % cfg.log_every == 0 or checkpoint_due or keep_due:
                # One sync per log window; the mean over ranks is the global batch's loss, and a
                # non-finite loss on any rank is non-finite on all, so every rank stops together.
                losses = world.all_reduce_mean(torch.stack([p[2] for p in pending]).float()).cpu()
                bad = (~torch.isfinite(losses)).nonzero()
                if len(bad):
                    bad_step, bad_samples, _ = pending[int(bad[0])]
                    raise NonFiniteLoss(f"non-finite loss ({losses[int(bad[0])].item()}) at step {bad_step} "
                                        f"({bad_samples} samples seen); last checkpoint kept at {ckpt_path}")
                last_loss = float(losses.mean())
                now = time.perf_counter()
                ips = (samples_seen - samples_window) / max(now - t_window, 1e-9)
                stall, wait_window = wait_window / max(now - t_window, 1e-9), 0.0  # time waiting for data
                t_window, samples_window = now, samples_seen
                pending.clear()
                if main:
                    row = {"step": step, "samples_seen": samples_seen, "loss": last_loss, "lr": lr,
                           "wall_s": round(wall_before + now - t0, 4), "images_per_s": round(ips, 2),
                           "data_stall": round(stall, 4)}
                    if data_cfg.skip_bad:
                        row["skipped_bad"] = data.skipped_bad
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    report({"kind": "progress", **row})
                    if bar is not None:
                        bar[0].update(bar[1], completed=samples_seen, loss=last_loss, lr=lr, ips=ips)
            if keep_due:
                keep_copy(final=done)
            at_window_end = step % cfg.log_every == 0 or checkpoint_due or keep_due
            preempt = (should_stop is not None and at_window_end and not done
                       and not world.all_true(not should_stop(), device))
            if checkpoint_due or preempt:
                save(final=done)
            if preempt:
                raise Preempted(samples_seen, ckpt_path)
            if checkpoint_due:
                next_ckpt += cfg.checkpoint_every
                if (main and faults.crash_once_at_samples is not None and samples_seen >= faults.crash_once_at_samples
                        and not (run_dir / ".fault-crashed").exists()):
                    (run_dir / ".fault-crashed").write_text(str(samples_seen))
                    raise RuntimeError(f"injected fault: crash once at {samples_seen} samples (XTRA_FAULT_CRASH_ONCE)")
                if (world.distributed and world.rank == world.size - 1 and not done
                        and faults.kill_worker_once_at_samples is not None
                        and samples_seen >= faults.kill_worker_once_at_samples
                        and not (run_dir / ".fault-killed").exists()):
                    (run_dir / ".fault-killed").write_text(f"rank {world.rank} at {samples_seen}")
                    os._exit(1)  # a worker dies without a word (XTRA_FAULT_KILL_WORKER)
    finally:
        data.close()
        if metrics_file is not None:
            metrics_file.close()
        if bar is not None:
            bar[0].stop()

    if not main:
        return {"samples_seen": samples_seen, "steps": step, "train_loss": last_loss, "val_loss": float("nan"),
                "wall_s": wall_before + time.perf_counter() - t0, "images_per_s": float("nan"),
                "attention_backend": backend, "device": str(device), "checkpoint": str(ckpt_path),
                "workers": world.size}
    if last_loss != last_loss and ckpt_path.exists():  # resumed a finished run: read the last logged loss
        last_loss = _last_logged_loss(run_dir / METRICS)
    val_loss = evaluate_loss(model, val_images)
    wall = wall_before + time.perf_counter() - t0
    return {"samples_seen": samples_seen, "steps": step, "train_loss": last_loss, "val_loss": val_loss,
            "wall_s": wall, "images_per_s": samples_seen / max(wall, 1e-9), "attention_backend": backend,
            "device": str(device), "checkpoint": str(ckpt_path), "workers": world.size,
            "init_samples": init["samples_seen"] if init else 0, "init_wall_s": init["wall_s"] if init else 0.0}


def _last_logged_loss(path: Path) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return rows[-1]["loss"] if rows else float("nan")


def _progress_bar(total: int, completed: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"),
                   TimeRemainingColumn())
    task = bar.add_task("pretrain", total=total, completed=completed, loss=float("nan"), lr=0.0, ips=0.0)
    bar.start()
    return bar, task
