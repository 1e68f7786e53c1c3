"""`xtra probe RUN_DIR`: linear / attentive probes of a pretrained run's frozen encoder.

A plain Typer command function; the root wires it with ``app.command("probe")(probe_cmd)``.
Bad input is one red line and exit code 2, before any compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xtra.cli.options import user_error as _fail
from xtra.config import ProbeConfig

KINDS = {"linear": ("linear",), "attentive": ("attentive",), "both": ("linear", "attentive")}




def _parse_lrs(text: str) -> tuple[float, ...]:
    try:
        lrs = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--lrs={text!r} is not a comma-separated list of numbers (e.g. 1e-4,3e-4,1e-3)") from None
    if not lrs:
        raise ValueError(f"--lrs={text!r} is empty (e.g. 1e-4,3e-4,1e-3)")
    return lrs


_D = ProbeConfig()  # the defaults: the official heads and optimizer, a short schedule


def probe_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding checkpoint.pt (from `xtra pretrain`).")],
    data: Annotated[str | None, typer.Option("--data", help="Dataset to probe on (default: the run's own; "
                                                            "split settings stay the run's).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="linear | attentive | both.")] = "both",
    lrs: Annotated[str, typer.Option("--lrs", help="Learning rates, all trained at once.")] = (
        ",".join(f"{lr:g}" for lr in _D.lrs)),
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs over the train split (official: 100).")] = _D.epochs,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", help="Warmup from lr/10 before the cosine "
                                                                       "(official: 10).")] = _D.warmup_epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per optimizer step.")] = _D.batch_size,
    accumulate: Annotated[int, typer.Option("--accumulate", help="Micro-batches per step.")] = _D.accumulate,
    layers: Annotated[int, typer.Option("--layers", help="Attentive probe: mean of the last N blocks "
                                                         "(clamped to the depth).")] = _D.layers,
    features: Annotated[str, typer.Option("--features", help="raw (block outputs, official) | normed "
                                                             "(after the final LayerNorm).")] = _D.features,
    mask: Annotated[str, typer.Option("--mask", help="block (pretraining mask) | none (full attention).")] = "block",
    cache: Annotated[str, typer.Option("--cache", help="Feature cache: auto | memory | disk | off.")] = "auto",
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment",
        help="The official augmentation (crop + flip; attentive: + RandAugment, erasing).")] = False,
    head_init: Annotated[str, typer.Option("--head-init", help="official (XTRA's cls.py: PyTorch's Linear "
                                                               "default) | trunc_normal (xtra before #34).")] = (
        "official"),
    random_init: Annotated[bool, typer.Option("--random-init", help="Probe an untrained encoder of the same "
                                                                    "config (writes probe-random.json).")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Probe the frozen encoder of RUN_DIR; the lr is chosen on val, test top-1 reported for it only."""
    from xtra.config import DataConfig
    from xtra.probe import probe_run

    try:
        if kind not in KINDS:
            raise ValueError(f"--kind={kind!r} is not allowed (allowed: {', '.join(KINDS)})")
        cfg = ProbeConfig(kinds=KINDS[kind], lrs=_parse_lrs(lrs), epochs=epochs, warmup_epochs=warmup_epochs,
                          batch_size=batch_size, accumulate=accumulate, layers=layers, features=features,
                          mask=mask, cache=cache, augment=augment, head_init=head_init)
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device={device!r} is not allowed (allowed: auto, cpu, cuda)")
        if data is not None:
            DataConfig(name=data)  # validate the name now; probe_run applies it to the run's data config
    except ValueError as err:  # CheckpointError and DatasetNotFound are ValueErrors too
        raise _fail(str(err)) from None

    from rich.console import Console

    console = Console()
    try:
        result = probe_run(run_dir, cfg=cfg, seed=seed, random_init=random_init, data_name=data, device=device,
                           progress=progress, log=lambda msg: console.print(msg, highlight=False, markup=False))
    except ValueError as err:
        raise _fail(str(err)) from None
    _print_table(console, result)


def _print_table(console, result: dict) -> None:
    from rich.table import Table

    meta = result["meta"]
    title = (f"{'random-init' if meta['random_init'] else 'pretrained'} encoder, {meta['data']} "
             f"({meta['n_train']} train / {meta['n_val']} val / {meta['n_test']} test), "
             f"{meta['probe']['epochs']} epochs")
    table = Table(title=title)
    for column in ("kind", "lr", "val top-1", "chosen", "test top-1"):
        table.add_column(column, justify="left" if column in ("kind", "chosen") else "right")
    for kind in ("linear", "attentive"):
        if kind not in result:
            continue
        entry = result[kind]
        for lr, acc in entry["val_top1"].items():
            chosen = lr == entry["best_lr"]
            table.add_row(kind, f"{lr:g}", f"{100 * acc:.2f}%", "*" if chosen else "",
                          f"{100 * entry['test_top1']:.2f}%" if chosen else "")
    console.print(table)
    for kind in ("linear", "attentive"):
        entry = result.get(kind, {})
        if entry.get("still_improving"):
            gain = 100 * abs(entry["best_val_top1"] - entry["twin_val_top1"])  # the longer schedule's gain
            short, long = sorted((entry["twin_epochs"], meta["probe"]["epochs"]))
            console.print(f"note: the {kind} probe is still improving: doubling its schedule ({short} -> {long} "
                          f"epochs) raised val top-1 by {gain:.2f} points; more epochs would likely raise it",
                          highlight=False, markup=False)
    console.print(f"wrote {meta['path']}", highlight=False, markup=False)
