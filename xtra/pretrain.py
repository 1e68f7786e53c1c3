"""The pretraining loop, separate from its wiring (like MAE's engine_pretrain).

`lr_at` is a pure function of the samples seen; `train_step` is one optimizer step (it changes the
model and the optimizer, nothing else). `pretrain(...)` is the loop a reader takes in at a glance: a
step, then at a log window's end the row, the kept copy, the checkpoint, the stop check. Its
collaborators keep the bookkeeping: `_setup` builds or restores the `TrainingRun`, `LogWindow` syncs
the losses and writes metrics.jsonl, `Checkpoints` saves and announces states, `PretrainHook`s (faults
in tests) see each loss and each checkpoint. It takes a `report` callback so the CLI, Ray and tests
share it. The budget is counted in samples seen. Every random
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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from xtra import trialdir as td
from xtra.checkpoint import (
    CHECKPOINT,
    CheckpointError,
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

VAL_IMAGES = 1024  # a fixed slice of the validation split for the val loss
INIT_ONLY_KEYS = frozenset({"model.patch_init"})  # shape a fresh model's weights, nothing after

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
    ignored = {*RESOURCE_KEYS, *INIT_ONLY_KEYS}  # how the weights were initialised is moot once they are loaded
    old = {k: v for k, v in stored.items() if f"model.{k}" not in ignored}
    new = {k: v for k, v in expected["model"].items() if f"model.{k}" not in ignored}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CheckpointError(f"pretrain.init={path}: its weights are for another model config (differs in: "
                              f"{', '.join(f'model.{k}={old.get(k)!r} there, {new.get(k)!r} here' for k in diff)})")
    model.load_state_dict(state["model"])


def _source_curve(state: dict[str, Any], source: Path) -> list[dict[str, Any]]:
    """The curve of the run `init_from` points at: a kept checkpoint carries it; a run's rolling
    checkpoint has it beside it in metrics.jsonl."""
    if "curve" in state:
        return state["curve"]
    return td.read_metrics(source if source.is_dir() else source.parent, upto=state["samples_seen"])


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


class PretrainHook:
    """Code run inside the loop at two points, for tests that inject faults (``tests/faults.py``) or
    tools that watch a run; the default does nothing. Hooks are passed to `pretrain(hooks=...)`, or named
    for trials run by Ray workers with ``XTRA_PRETRAIN_HOOKS`` (``xtra.trial.hooks_from_env``)."""

    def loss(self, step: int, samples_seen: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss of the step about to be counted (before `samples_seen` moves on); return it, or another."""
        return loss

    def checkpointed(self, run_dir: Path, samples_seen: int, world: World, done: bool) -> None:
        """After the rolling checkpoint at `samples_seen` is written and reported."""


@dataclass
class TrainingRun:
    """What a pretraining run holds between steps: built by `_setup` (fresh, resumed, or initialised
    from another run), advanced by `pretrain`'s loop, turned into a checkpoint by `state`."""

    model: XTRA
    train: torch.nn.Module  # the model as stepped: DistributedDataParallel and/or compiled
    optimizer: torch.optim.Optimizer
    data: Any  # xtra.data.stream's batches, positioned at samples_seen
    val_images: torch.Tensor
    device: torch.device
    backend: str
    config: dict[str, Any]
    world: World
    init: dict[str, Any] | None  # where the run started from, if not from scratch
    step: int = 0
    samples_seen: int = 0
    wall_before: float = 0.0  # wall time of earlier attempts
    t0: float = field(default_factory=time.perf_counter)

    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def state(self, final: bool) -> dict[str, Any]:
        return {"config": self.config, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "samples_seen": self.samples_seen, "wall_s": self.wall_s(), "rng": _rng_state(),
                "data": self.data.state(self.samples_seen), "world_size": self.world.size, "final": final,
                "init": self.init}


class Checkpoints:
    """A run's saved states: the rolling checkpoint (what a resume starts from) and immutable kept
    copies at keep_at points (with the curve so far: a branch's curve starts with it). Rank 0 writes;
    every rank passes a barrier (the file is complete) before the report announces it."""

    def __init__(self, run_dir: Path, world: World, report: Report) -> None:
        self.run_dir, self.world, self.report = run_dir, world, report
        self.path = run_dir / CHECKPOINT

    def save(self, run: TrainingRun, final: bool) -> None:
        if self.world.main:
            save_checkpoint(self.path, run.state(final))
        self.world.barrier()
        self.report({"kind": "checkpoint", "step": run.step, "samples_seen": run.samples_seen, "path": str(self.path)})

    def keep(self, run: TrainingRun, final: bool) -> None:
        """Written before the rolling checkpoint, so a checkpoint past S implies the copy at S."""
        path = kept_checkpoint(self.run_dir, run.samples_seen)
        if self.world.main and not path.exists():  # a resumed run replays to S bitwise: the existing copy stands
            save_checkpoint(path, {**run.state(final), "curve": td.read_metrics(self.run_dir, upto=run.samples_seen)})
        self.world.barrier()
        self.report({"kind": "kept", "step": run.step, "samples_seen": run.samples_seen, "path": str(path)})


class LogWindow:
    """The steps since the last log line. Losses stay on the device until the window closes: one sync
    per window, the mean over ranks (the global batch's loss), and a non-finite loss on any rank is
    non-finite on all, so every rank stops together. Rank 0 appends the row to metrics.jsonl."""

    def __init__(self, run: TrainingRun, run_dir: Path, report: Report, skip_bad: bool, bar: Any) -> None:
        self.run_dir, self.report, self.skip_bad, self.bar = run_dir, report, skip_bad, bar
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # (step, samples, loss) not yet synced
        self.last_loss = float("nan")
        self.started, self.samples_at_start, self.waited = run.t0, run.samples_seen, 0.0

    def add(self, step: int, samples_seen: int, loss: torch.Tensor) -> None:
        self.pending.append((step, samples_seen, loss))

    def close(self, run: TrainingRun, lr: float, ckpt_path: Path) -> None:
        losses = run.world.all_reduce_mean(torch.stack([p[2] for p in self.pending]).float()).cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            bad_step, bad_samples, _ = self.pending[int(bad[0])]
            raise NonFiniteLoss(f"non-finite loss ({losses[int(bad[0])].item()}) at step {bad_step} "
                                f"({bad_samples} samples seen); last checkpoint kept at {ckpt_path}")
        self.last_loss = float(losses.mean())
        now = time.perf_counter()
        elapsed = max(now - self.started, 1e-9)
        ips, stall = (run.samples_seen - self.samples_at_start) / elapsed, self.waited / elapsed
        self.started, self.samples_at_start, self.waited = now, run.samples_seen, 0.0
        self.pending.clear()
        if not run.world.main:
            return
        row = {"step": run.step, "samples_seen": run.samples_seen, "loss": self.last_loss, "lr": lr,
               "wall_s": round(run.wall_before + now - run.t0, 4), "images_per_s": round(ips, 2),
               "data_stall": round(stall, 4)}
        if self.skip_bad:
            row["skipped_bad"] = run.data.skipped_bad
        td.append_metrics(self.run_dir, row)
        self.report({"kind": "progress", **row})
        if self.bar is not None:
            self.bar[0].update(self.bar[1], completed=run.samples_seen, loss=self.last_loss, lr=lr, ips=ips)


def pretrain(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    cfg: PretrainConfig,
    run_dir: Path,
    seed: int = 0,
    report: Report | None = None,
    progress: bool = False,
    hooks: Sequence[PretrainHook] = (),
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
    (a log window's end, so the resumed run's loss windows, and its results, equal an uninterrupted run's).
    `hooks`: `PretrainHook`s called at every step's loss and after every checkpoint."""
    world = world or World()
    if cfg.batch_size % (world.size * cfg.accumulate):
        raise ValueError(f"pretrain.batch_size={cfg.batch_size} is not divisible by workers x pretrain.accumulate "
                         f"= {world.size} x {cfg.accumulate} (each worker takes an equal share of every micro-batch)")
    share = world.size * cfg.accumulate
    keep = _check_keep_at(keep_at, cfg, share)
    run_dir = Path(run_dir)
    log = (log or (lambda msg: None)) if world.main else (lambda msg: None)
    report = report or (lambda event: None)
    run = _setup(model_cfg, data_cfg, cfg, run_dir, seed, world, keep, init_from, log)
    checkpoints = Checkpoints(run_dir, world, report)
    bar = progress_bar(cfg.samples, run.samples_seen) if progress and world.main else None
    window = LogWindow(run, run_dir, report, data_cfg.skip_bad, bar)
    next_ckpt = (run.samples_seen // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    try:
        if run.samples_seen in keep:  # resumed exactly at a keep point
            checkpoints.keep(run, final=run.samples_seen >= cfg.samples)
        while run.samples_seen < cfg.samples:
            batch = min(cfg.batch_size, cfg.samples - run.samples_seen)
            batch -= batch % share
            if batch == 0:
                break
            torch.manual_seed(step_seed(seed, run.step))
            t_wait = time.perf_counter()
            images = run.data.batch(run.step, run.samples_seen, batch)  # this rank's rows of the global batch
            window.waited += time.perf_counter() - t_wait
            lr = lr_at(run.samples_seen, cfg)
            loss = train_step(run.train, run.optimizer, images, _order_index(model_cfg, seed, run.step), lr, cfg)
            for hook in hooks:
                loss = hook.loss(run.step, run.samples_seen, loss)
            run.step += 1
            run.samples_seen += batch
            window.add(run.step, run.samples_seen, loss)

            done = run.samples_seen >= cfg.samples
            checkpoint_due = run.samples_seen >= next_ckpt or done
            keep_due = run.samples_seen in keep
            window_end = run.step % cfg.log_every == 0 or checkpoint_due or keep_due
            if window_end:
                window.close(run, lr, checkpoints.path)
            if keep_due:
                checkpoints.keep(run, final=done)
            preempt = (should_stop is not None and window_end and not done
                       and not world.all_true(not should_stop(), run.device))
            if checkpoint_due or preempt:
                checkpoints.save(run, final=done)
            if preempt:
                raise Preempted(run.samples_seen, checkpoints.path)
            if checkpoint_due:
                next_ckpt += cfg.checkpoint_every
                for hook in hooks:
                    hook.checkpointed(run_dir, run.samples_seen, world, done)
    finally:
        run.data.close()
        if bar is not None:
            bar[0].stop()
    return _final_metrics(run, window.last_loss, run_dir, checkpoints.path)


def _order_index(model_cfg: ModelConfig, seed: int, step: int) -> int:
    """Which of the n_orders block orders this step trains in (always 0 in raster order)."""
    if model_cfg.order == "raster":
        return 0
    return int(torch.randint(model_cfg.n_orders, (1,), generator=torch.Generator().manual_seed(
        step_seed(seed, step))).item())


def _setup(model_cfg: ModelConfig, data_cfg: DataConfig, cfg: PretrainConfig, run_dir: Path, seed: int,
           world: World, keep: frozenset[int], init_from: Path | str | None,
           log: Callable[[str], None]) -> TrainingRun:
    """The run ready for its next step: data, model and optimizer built, then restored from this run's
    checkpoint, or from `init_from`'s, or initialised from `cfg.init`; metrics.jsonl agrees with it."""
    from xtra.attention import resolve_backend
    from xtra.data import locate
    from xtra.data.stream import open_stream

    locate(data_cfg)  # a missing or malformed collection is one line, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
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
    config = {"model": asdict(model_cfg), "data": asdict(data_cfg), "pretrain": asdict(cfg), "seed": seed}
    run = TrainingRun(model=model, train=model, optimizer=optimizer, data=data, val_images=val_images, device=device,
                      backend=resolve_backend(model_cfg.attention, device), config=config, world=world, init=None)
    _restore(run, cfg, run_dir, keep, init_from, log)
    if world.main and (run_dir / td.METRICS).exists():  # the curve ends where the state does: no step twice
        td.write_metrics(run_dir, td.read_metrics(run_dir, upto=run.samples_seen))
    log(f"device {device}, attention backend {run.backend} (asked: {model_cfg.attention}), {data.describe}"
        + (f", {world.size} data-parallel workers x {cfg.batch_size // world.size} images" if world.distributed
           else ""))
    if world.distributed:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # Buffers are constants (masks, orders): no need to broadcast them before every forward.
        no_buffer_sync = ({"forward_sync_buffers": False}  # torch >= 2.12 spells it so
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})
        run.train = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                            process_group=world.group, **no_buffer_sync)
    run.train = torch.compile(run.train) if cfg.compile else run.train
    model.train()
    run.t0 = time.perf_counter()
    return run


def _restore(run: TrainingRun, cfg: PretrainConfig, run_dir: Path, keep: frozenset[int],
             init_from: Path | str | None, log: Callable[[str], None]) -> None:
    """Continue this run's own checkpoint, else start from `init_from`'s (a branch from its trunk),
    else from `cfg.init`'s weights only; a fresh run otherwise."""
    ckpt_path = run_dir / CHECKPOINT
    state, source = _resume_state(ckpt_path, run.device, run.world), ckpt_path
    if state is None and init_from is not None:
        source = Path(init_from)
        state = _resume_state(source, run.device, run.world)
        if state is None:
            raise CheckpointError(f"init_from {source}: no checkpoint here (expected a kept checkpoint "
                                  f"checkpoints/samples-<S>.pt or a run directory)")
        run.init = {"path": str(source), "samples_seen": state["samples_seen"], "wall_s": state.get("wall_s", 0.0)}
    if state is None:
        if cfg.init:  # a fresh run from given weights (e.g. `xtra import official`)
            _load_init_weights(run.model, run.config, Path(cfg.init))
            log(f"initialised the weights from {cfg.init} (step 0: the optimizer and the lr schedule start fresh)")
        return
    _check_resume(state, run.config, cfg, source)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.step, run.samples_seen, run.wall_before = state["step"], state["samples_seen"], state.get("wall_s", 0.0)
    run.data.restore(state.get("data", {}))  # the position is samples_seen; this checks the collection
    run.init = run.init or state.get("init")
    if source == ckpt_path:
        log(f"resumed from {ckpt_path} at step {run.step} ({run.samples_seen} samples seen)")
    else:
        log(f"initialised from {source} at step {run.step} ({run.samples_seen} samples seen)")
        if run.world.main:  # the curve so far is the source's: this run's curve is then a whole run's
            td.write_metrics(run_dir, _source_curve(state, source))
    missed = [s for s in keep if s < run.samples_seen and not kept_checkpoint(run_dir, s).exists()]
    if missed:
        raise ValueError(f"keep_at={missed[0]}: this run starts at {run.samples_seen} samples, past it, and "
                         f"{kept_checkpoint(run_dir, missed[0])} does not exist (allowed: >= {run.samples_seen})")


def _final_metrics(run: TrainingRun, last_loss: float, run_dir: Path, ckpt_path: Path) -> dict[str, Any]:
    where = {"attention_backend": run.backend, "device": str(run.device), "checkpoint": str(ckpt_path),
             "workers": run.world.size}
    if not run.world.main:
        return {"samples_seen": run.samples_seen, "steps": run.step, "train_loss": last_loss, "val_loss": float("nan"),
                "wall_s": run.wall_s(), "images_per_s": float("nan"), **where}
    if last_loss != last_loss and ckpt_path.exists():  # resumed a finished run: read the last logged loss
        rows = td.read_metrics(run_dir)
        last_loss = rows[-1]["loss"] if rows else float("nan")
    val_loss = evaluate_loss(run.model, run.val_images)
    wall = run.wall_s()
    return {"samples_seen": run.samples_seen, "steps": run.step, "train_loss": last_loss, "val_loss": val_loss,
            "wall_s": wall, "images_per_s": run.samples_seen / max(wall, 1e-9), **where,
            "init_samples": run.init["samples_seen"] if run.init else 0,
            "init_wall_s": run.init["wall_s"] if run.init else 0.0}


def progress_bar(total: int, completed: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"),
                   TimeRemainingColumn())
    task = bar.add_task("pretrain", total=total, completed=completed, loss=float("nan"), lr=0.0, ips=0.0)
    bar.start()
    return bar, task
