"""`xtra pretrain` and `xtra info`."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from xtra.cli.options import Seed, Sets, user_errors
from xtra.studies.spec import parse_sets

console = Console()


def pretrain_cmd(
    out: Annotated[Path, typer.Option(help="Run directory (checkpoint.pt, metrics.jsonl, config.json).")],
    size: Annotated[str, typer.Option(help="Model size from SIZES: tiny, cpu-s, cpu-m, vit-b/16, vit-h/14.")] = "cpu-s",
    data: Annotated[str, typer.Option(help="Dataset: fashion-mnist, mnist, digits, cifar10, cifar100, "
                                           "imagefolder:PATH, synthetic.")] = "fashion-mnist",
    block_size: Annotated[int, typer.Option(help="Block size k (k=1 is plain next-patch prediction).")] = 4,
    samples: Annotated[int, typer.Option(help="Pretraining budget in samples seen.")] = 60_000,
    sets: Sets = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = False,
    probe: Annotated[bool, typer.Option(help="Probe the encoder (linear + attentive) after pretraining.")] = False,
    seed: Seed = 0,
    workers: Annotated[int, typer.Option(help="Data-parallel workers (Ray Train + DDP: NCCL on GPUs, gloo on CPUs); "
                                              "pretrain.batch_size stays the global batch.")] = 1,
    address: Annotated[str | None, typer.Option(help="With --workers: a running Ray cluster (auto or HOST:PORT; "
                                                     "default: start a local one).")] = None,
) -> None:
    """Pretrain one XTRA model (resumable), optionally probe it."""
    from xtra import trialdir as td
    from xtra.checkpoint import CHECKPOINT, atomic_write_json
    from xtra.config import SIZES, TrialConfig
    from xtra.costs import describe
    from xtra.data import locate
    from xtra.overrides import override
    from xtra.pretrain import pretrain

    with user_errors():
        if size not in SIZES:
            raise ValueError(f"--size {size!r} is not known (allowed: {', '.join(SIZES)})")
        updates = {f"model.{k}": v for k, v in SIZES[size].items()}
        updates.update({"model.block_size": block_size, "data.name": data, "pretrain.samples": samples,
                        "pretrain.warmup_samples": min(TrialConfig().pretrain.warmup_samples, samples // 10),
                        "seed": seed})
        updates.update(parse_sets(sets))
        cfg = override(TrialConfig(), updates)
        where = locate(cfg.data)
        if (out / CHECKPOINT).exists() and not resume:
            raise ValueError(f"{out / CHECKPOINT} already exists: pass --resume to continue it, or a new --out")
        if workers < 1:
            raise ValueError(f"--workers {workers} must be >= 1")
        if cfg.pretrain.batch_size % (workers * cfg.pretrain.accumulate):
            raise ValueError(f"pretrain.batch_size={cfg.pretrain.batch_size} is not divisible by --workers x "
                             f"pretrain.accumulate = {workers} x {cfg.pretrain.accumulate}")
        if address and workers == 1:
            raise ValueError("--address needs --workers N (N > 1): a single worker runs here")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / td.CONFIG, cfg.to_dict())
    console.print(f"[bold]xtra pretrain[/] {size} k={cfg.model.block_size} on {cfg.data.name} ({where}): "
                  f"{describe(cfg.model)}")
    if workers > 1:
        from xtra.studies.ray.workers import run_pretrain_workers

        with user_errors():
            result = run_pretrain_workers(cfg, out, workers, address=address, probe=probe, console=console)
    else:
        with user_errors():
            result = pretrain(cfg.model, cfg.data, cfg.pretrain, out, seed=cfg.seed, progress=True,
                              log=console.print)
    console.print(f"pretrained {result['samples_seen']} samples in {result['wall_s']:.0f}s "
                  f"({result['images_per_s']:.0f} img/s): train loss {result['train_loss']:.4f}, "
                  f"val loss {result['val_loss']:.4f}")
    console.print(f"metrics:    {out / td.METRICS}\ncheckpoint: {out / CHECKPOINT}")
    if probe:
        from xtra.probe import probe_run

        if workers > 1:  # rank 0 probed on its own device
            probed = result["probe"]
        else:
            with user_errors():
                probed = probe_run(out, cfg.data, cfg.probe, seed=cfg.seed, progress=True)
        for kind, res in probed.items():
            console.print(f"probe {kind}: test top-1 {res['test_top1']:.2%} (lr {res['best_lr']:g}, "
                          f"chosen on validation)")
        console.print(f"probe:      {out / td.PROBE}")


def info_cmd() -> None:
    """Versions, devices, and which attention backends work here (and why others don't)."""
    import torch

    from xtra.attention import backend_status, resolve_backend

    table = Table(title="xtra info", show_header=False)
    table.add_row("python", platform.python_version())
    table.add_row("torch", torch.__version__)
    for mod in ("ray", "optuna", "polars", "plotly", "typer", "xformers"):
        try:
            version = __import__(mod).__version__
        except Exception as err:  # noqa: BLE001 - report any import failure as "not usable"
            version = f"not usable ({type(err).__name__})"
        table.add_row(mod, version)
    table.add_row("cpu threads", str(torch.get_num_threads()))
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    for dev in devices:
        name = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else platform.processor() or "cpu"
        table.add_row(f"device {dev}", name)
        for backend, status in backend_status(dev).items():
            table.add_row(f"  attention {backend}", status)
        table.add_row("  auto picks", resolve_backend("auto", dev))
    console.print(table)


