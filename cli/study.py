"""`xtra study`: list, show, run, resume and inspect studies (sweeps of trials on Ray Tune).

A thin shell: xtra.studies.spec validates and expands, xtra.studies.runner runs (the only Ray user),
xtra.studydir reads a study directory from disk. Bad input is one red line and exit code 2,
always before Ray starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xtra.cli.options import Address, AllowCommands, Yes, allow_commands
from xtra.cli.options import user_error as _fail
from xtra.cli.study_options import (
    LoggerOpt,
    PresetOpt,
    SeedsOpt,
    SetOpt,
    StudyArg,
    WorkersOpt,
    load_for_command,
)
from xtra.cli.study_submit import submit_cmd

app = typer.Typer(help="Define, run and inspect studies: sweeps of pretrain+probe trials on Ray Tune.",
                  no_args_is_help=True)

# Cost assumption for `show`: dense bf16 peak of an H100/H200 SXM, at a typical 40% model FLOPs utilization.


BreakLockOpt = Annotated[bool, typer.Option(
    "--break-lock", help="take the study's lock even if its holder looks alive (you know it is gone)")]
StudyWhereArg = Annotated[str, typer.Argument(help="a study directory, or its storage URI (s3://bucket/prefix/study)")]
CopyOpt = Annotated[Path | None, typer.Option(
    "--copy", help="for a URI: the local copy of the study to use (default: $XTRA_CACHE/studies/..., "
                   "XTRA_CACHE defaulting to ~/.cache/xtra)")]


def _wide() -> Console:
    c = Console()
    return Console(width=max(c.width, 150)) if not c.is_terminal else c


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _axes_text(study: Any) -> str:
    if study.search is not None:
        s = study.search
        return f"optuna over {', '.join(s.space)} ({s.num_samples} trials, {s.metric} {s.mode})"
    parts = []
    for axis in study.axes:
        if axis.zipped:
            vals = ", ".join("/".join(str(v[k]) for k in axis.keys) for v in axis.values)
            parts.append(f"{axis.name} ({' / '.join(axis.keys)}): {vals}")
        else:
            parts.append(f"{axis.name}: {', '.join(str(v[axis.name]) for v in axis.values)}")
    if len(study.seeds) > 1:
        parts.append(f"seeds: {', '.join(map(str, study.seeds))}")
    return "; ".join(parts) or "-"


@app.command("list")
def list_cmd() -> None:
    """Every shipped study: what it sweeps and how many trials each preset runs."""
    from xtra.studies.load import default_preset, load_study, preset_names, shipped_studies

    table = Table(title="studies (xtra study show NAME --preset P for the trials and their cost)")
    for col in ("name", "description", "axes (default preset)", "trials per preset"):
        table.add_column(col, overflow="fold")
    for name in shipped_studies():
        try:
            default = default_preset(name)
            study = load_study(name, preset=default)
            counts = []
            for p in preset_names(name):
                try:
                    counts.append(f"{p} {load_study(name, preset=p).n_trials}" + ("*" if p == default else ""))
                except ValueError as err:
                    counts.append(f"{p} [red]invalid[/] ({err})")
            table.add_row(name, study.description, _axes_text(study), " · ".join(counts))
        except ValueError as err:
            table.add_row(name, f"[red]{err}[/]", "", "")
    table.caption = "* = default preset; add your own study as a .toml file and pass its path"
    _wide().print(table)


@app.command("show")
def show_cmd(study: StudyArg, preset: PresetOpt = None, sets: SetOpt = None, seeds: SeedsOpt = None) -> None:
    """Every trial with its params, size, FLOPs/image, samples and estimated GPU-hours."""
    from xtra.costs import H200_BF16_PEAK, TARGET_MFU, flops_per_image, gpu_hours, n_params, n_params_encoder
    from xtra.data.collection import PIPE_ENV, is_command

    s = load_for_command(study, preset, sets, seeds)
    console = _wide()
    res = s.resources
    console.print(f"[bold]{s.name}[/] — {s.description}", highlight=False)
    console.print(f"source {s.source} · preset {s.preset or '-'} · size {s.size} · seeds {list(s.seeds)} · "
                  f"{res.cpus_per_trial:g} CPU + {res.gpus_per_trial:g} GPU per trial"
                  + (f" on {res.workers} data-parallel workers" if res.workers > 1 else "")
                  + f", max concurrent {res.max_concurrent or 'as many as fit'}", highlight=False)
    base = s.base_config()
    if is_command(base.data.name):
        console.print(f"[bold red]data {base.data.name!r} is a shell command[/]: it runs only with --allow-commands "
                      f"(or {PIPE_ENV}=1) on `xtra study run`", highlight=False, soft_wrap=True)
    console.print(f"data {base.data.name} · pretrain {base.pretrain.samples:,} samples, batch "
                  f"{base.pretrain.batch_size}, lr {base.pretrain.lr:g}, warmup {base.pretrain.warmup_samples:,} · "
                  f"probe {', '.join(base.probe.kinds)} for {base.probe.epochs} epochs", highlight=False)
    if s.sets:
        console.print(f"--set {' '.join(s.sets)}", highlight=False)
    for line in s.kept:  # the study file's own size / [base] over a shared preset, one line per key
        console.print(line, highlight=False, soft_wrap=True)
    caption = (f"GPU-hours = FLOPs/image x samples / ({TARGET_MFU:.0%} MFU x {H200_BF16_PEAK / 1e12:g} TFLOP/s "
               f"dense bf16, H100/H200); pretraining only, probes excluded")
    table = Table(title=f"{s.name}: {s.n_trials} trial(s)", caption=caption)
    for col in ("#", "trial", "params", "config hash", "params (M)", "encoder (M)", "FLOPs/image", "samples",
                "est. GPU-h"):
        table.add_column(col, overflow="fold", justify="right" if col not in ("trial", "params") else "left")
    total = 0.0
    if s.search is not None:
        m = base.model
        gh = gpu_hours(flops_per_image(m), base.pretrain.samples)
        total = gh * s.search.num_samples
        space = ", ".join(f"{k}~{d['type']}({d.get('low', d.get('values'))}, {d.get('high', '')})".replace(", )", ")")
                          for k, d in s.search.space.items())
        searcher = "halving" if s.search.halving else "Optuna"
        table.add_row("1..", f"x{s.search.num_samples} ({searcher})", space, base.config_hash(),
                      f"{n_params(m) / 1e6:.2f}",
                      f"{n_params_encoder(m) / 1e6:.2f}", _si(flops_per_image(m)), f"{base.pretrain.samples:,}",
                      f"{gh:.3g} each")
    for i, spec in enumerate(s.expand(), 1):
        m = spec.config.model
        samples = spec.config.pretrain.samples
        gh = gpu_hours(flops_per_image(m), samples)
        total += gh
        params = " ".join(f"{k}={v}" for k, v in spec.params.items()) + f" seed={spec.seed}"
        table.add_row(str(i), spec.trial_id, params, spec.config_hash, f"{n_params(m) / 1e6:.2f}",
                      f"{n_params_encoder(m) / 1e6:.2f}", _si(flops_per_image(m)), f"{samples:,}", f"{gh:.3g}")
    table.add_section()
    table.add_row("", "total", "", "", "", "", "", "", f"{total:.3g}")
    console.print(table)
    if s.search is not None and s.search.halving:
        console.print(_halving_cost(s), highlight=False, soft_wrap=True)
    for line in _law_checks(s):
        console.print(line, highlight=False, soft_wrap=True)
    from xtra.studies.isoflop_lines import lines as isoflop_lines  # an isoFLOP grid: its lines, the extrapolation test

    for line in isoflop_lines(s):
        console.print(line, highlight=False, soft_wrap=True)
    if base.data.name.startswith(("imagefolder:", "wds:")):  # streamed collections: how many loader workers
        from xtra.data import workers_advice

        console.print(workers_advice(base.model)['advice'], highlight=False, soft_wrap=True)


def _halving_cost(s: Any) -> str:
    """A halving search's planned samples and GPU-hours beside the full grid's (every configuration to the
    full budget), from the proposed configurations and the rungs."""
    from xtra.studies.halving import planned_samples

    c = planned_samples(s)
    rungs = " / ".join(f"{b:,}" for b in c["rungs"])
    return (f"halving (eta {s.search.eta}, {s.search.metric} {s.search.mode}): {c['configurations']} configurations, "
            f"rungs {rungs} samples, {' -> '.join(map(str, c['per_rung']))} trials; planned {c['samples']:,} samples "
            f"({c['gpu_hours']:.3g} GPU-h) vs the full grid's {c['grid_samples']:,} ({c['grid_gpu_hours']:.3g} GPU-h): "
            f"{c['samples'] / c['grid_samples']:.0%} of it")


def _law_checks(s: Any) -> list[str]:
    """Whether the report's scaling fits can pass with this grid (points per parameter, held-out refit)."""
    from xtra.costs import n_params_encoder
    from xtra.reports.scaling.feasibility import law_checks
    from xtra.reports.tables import SAMPLE_KEYS, SIZE_KEYS

    def group(params: dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in params.items()
                        if k not in (*SIZE_KEYS, *SAMPLE_KEYS) and not k.startswith("pretrain.warmup"))

    return law_checks([(group(t.params), n_params_encoder(t.config.model), t.config.pretrain.samples)
                       for t in s.expand()])


def _fail_study(err: Exception) -> typer.Exit:
    """One red line; exit 2 for bad input, the lease's own code for a driver that lost its study."""
    exit = _fail(" ".join(str(err).split()))
    return typer.Exit(getattr(err, "exit_code", exit.exit_code))


def _print_outcome(console: Console, o: Any) -> int:
    for note in o.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    counts = " · ".join(f"{n} {k}" for k, n in sorted(o.counts.items()))
    console.print(f"{o.study_dir}: {counts} (ran {len(o.ran)}, reused {len(o.reused)} finished)", highlight=False,
                  soft_wrap=True)
    console.print(f"results: {o.results}", highlight=False, soft_wrap=True)
    if o.report is not None:
        console.print(f"report: {o.report}", highlight=False, soft_wrap=True)
    failed = o.counts.get("failed", 0)
    if failed:
        console.print(Text(f"{failed} trial(s) failed; their errors are in results.parquet and "
                           f"`xtra study status {o.study_dir}`", style="red"))
    unfinished = sum(n for k, n in o.counts.items() if k not in ("finished", "failed", "stopped"))
    unfinished += 0 if getattr(o, "complete", True) else 1  # a search's undrawn points have no trial to count
    if unfinished and getattr(o, "stopped", None):  # Slurm's warning or a kill: the job script requeues on this
        from xtra.studies.slurm import STOPPED_EXIT

        return STOPPED_EXIT
    return 1 if failed or unfinished else 0


@app.command("run")
def run_cmd(
    study: StudyArg,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="study directory (default: runs/studies/<name>-<preset>)"
                                             )] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="the study's storage, its source of truth: a "
                                                "directory every node mounts, or s3://bucket/prefix (gs://...); "
                                                "the study goes to STORAGE/<name of --out>, --out is the local "
                                                "copy (default: the study dir itself)")] = None,
    address: Address = None,
    cpus_per_trial: Annotated[float | None, typer.Option("--cpus-per-trial", help="CPUs per trial")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option("--gpus-per-trial", help="GPUs per trial (fractions ok; "
                                                         "N > 1 = N data-parallel workers, one GPU each)")] = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", help="trials at once (0 = as many "
                                                       "as fit)")] = None,
    workers_per_trial: WorkersOpt = None,
    seeds: SeedsOpt = None,
    loggers: LoggerOpt = None,
    break_lock: BreakLockOpt = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="build report/index.html at the end")] = True,
    commands: AllowCommands = False,
    yes: Yes = False,
) -> None:
    """Run a study: only trials that are new or unfinished; finished ones (same config hash) are reused."""
    allow_commands(commands)
    from xtra.studies.policy import default_out
    from xtra.studies.runner import run_study
    from xtra.studies.spec import StudyError

    s = load_for_command(study, preset, sets, seeds)
    try:
        s = s.with_resources(cpus_per_trial, gpus_per_trial, max_concurrent, workers_per_trial, loggers)
    except ValueError as err:
        raise _fail(str(err)) from None
    study_dir = out or default_out(s, study)
    console = Console()
    try:
        outcome = run_study(s, study_dir, address=address, storage=storage, console=console, build_report=report,
                            break_lock=break_lock, yes=yes)
    except StudyError as err:  # a bad study dir, another runner, a missing dataset: before Ray starts
        raise _fail_study(err) from None
    raise typer.Exit(_print_outcome(console, outcome))


@app.command("resume")
def resume_cmd(
    study_dir: StudyWhereArg,
    address: Address = None,
    copy: CopyOpt = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", help="trials at once")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option("--cpus-per-trial", help="CPUs per trial")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option("--gpus-per-trial", help="GPUs per trial")] = None,
    workers_per_trial: WorkersOpt = None,
    loggers: LoggerOpt = None,
    break_lock: BreakLockOpt = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="build report/index.html at the end")] = True,
    commands: AllowCommands = False,
) -> None:
    """Continue an interrupted study: unfinished trials resume from their checkpoints, finished ones are kept."""
    allow_commands(commands)
    from xtra.studies.runner import resume_study
    from xtra.studies.spec import StudyError

    console = Console()
    try:
        outcome = resume_study(study_dir, address=address, console=console, build_report=report,
                               max_concurrent=max_concurrent, cpus_per_trial=cpus_per_trial,
                               gpus_per_trial=gpus_per_trial, workers_per_trial=workers_per_trial, loggers=loggers,
                               break_lock=break_lock, copy=copy)
    except StudyError as err:
        raise _fail_study(err) from None
    raise typer.Exit(_print_outcome(console, outcome))


@app.command("probe")
def probe_cmd(
    study_dir: Annotated[Path, typer.Argument(help="a study directory (holds study.toml)")],
    sets: SetOpt = None,
    address: Address = None,
    break_lock: BreakLockOpt = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="build report/index.html at the end")] = True,
) -> None:
    """Probe the study's finished pretraining again under a new probe protocol (--set probe.KEY=VALUE):
    zero pretraining steps; results are kept per protocol, the study's rows show the new one."""
    from xtra import studydir
    from xtra.studies.runner import run_study
    from xtra.studies.spec import StudyError

    items = sets or []
    bad = [i for i in items if not i.split("=", 1)[0].strip().startswith("probe.")]
    if bad:
        raise _fail(f"--set {bad[0]}: `xtra study probe` changes only probe.* keys (use `xtra study run` for others)")
    if not (study_dir / studydir.STUDY_TOML).is_file():
        raise _fail(f"{study_dir}: not a study directory (no study.toml; start one with `xtra study run`)")
    s = load_for_command(str(study_dir), None, items, None)
    console = Console()
    try:
        outcome = run_study(s, study_dir, address=address, console=console, build_report=report,
                            command="xtra study probe", break_lock=break_lock)
    except StudyError as err:
        raise _fail_study(err) from None
    raise typer.Exit(_print_outcome(console, outcome))


@app.command("pull")
def pull_cmd(
    uri: Annotated[str, typer.Argument(help="a study's storage URI (s3://bucket/prefix/study) or path")],
    out: Annotated[Path, typer.Argument(help="the local directory to copy it into")],
    checkpoints: Annotated[bool, typer.Option("--checkpoints/--no-checkpoints", help="also copy the trials' "
                                              "checkpoints (large; the report fetches the few it draws)")] = False,
) -> None:
    """Copy a study from its storage into a local directory (for notebooks: xtra.load_results(out)).
    Only what changed since the last pull is transferred."""
    from xtra.storage import StorageError
    from xtra.studies.runner import study_copy
    from xtra.studies.spec import StudyError

    try:
        res = study_copy(uri, out, checkpoints=checkpoints)
    except (StudyError, StorageError, ValueError, OSError) as err:
        raise _fail(" ".join(str(err).split())) from None
    sync = res[2]
    copied = f"{len(sync.transferred)} file(s) copied ({sync.bytes / 1e6:.1f} MB), {len(sync.unchanged)} unchanged"
    if sync.removed:
        copied += f", {len(sync.removed)} removed"
    Console().print(f"{uri} -> {res[0]}: {copied}", highlight=False, soft_wrap=True)


@app.command("status")
def status_cmd(study_dir: StudyWhereArg, copy: CopyOpt = None) -> None:
    """Counts and each trial's last metrics, read from disk (no Ray); a study kept in an object store is
    read from a local copy refreshed first."""
    from xtra import lease
    from xtra import studydir as st
    from xtra.studies.load import load_study_dir
    from xtra.studies.plan import make_plan
    from xtra.studies.runner import shared_lease, study_copy

    try:
        study_dir, stor, _ = study_copy(study_dir, copy)
        s = load_study_dir(study_dir)
    except ValueError as err:
        raise _fail(" ".join(str(err).split())) from None
    holder = lease.lock_holder(study_dir, storage=shared_lease(stor, study_dir))
    states = make_plan(s, study_dir, running=holder is not None).states
    counts = {k: 0 for k in ("finished", "running", "interrupted", "failed", "pending")}
    for t in states:
        counts[t.status] = counts.get(t.status, 0) + 1
    console = _wide()
    who = f"running: {lease.describe_holder(holder)}" if holder else "not running"
    # whole lines (soft_wrap): a long study path must not break "running: pid ..." for a reader or a grep
    console.print(f"[bold]{s.name}[/] ({s.preset or 'no preset'}) in {study_dir} — {who}", highlight=False,
                  soft_wrap=True)
    console.print(" · ".join(f"{n} {k}" for k, n in counts.items()), highlight=False, soft_wrap=True)
    runs = st.read_runs(study_dir)
    if runs:
        last = runs[-1]
        console.print(f"last experiment: {last.get('name')} ({last.get('state')}, started {last.get('started')})",
                      highlight=False, soft_wrap=True)
    from xtra.studies.slurm import status_line

    slurm = status_line(study_dir, runs)  # the study's Slurm job and its state now, if it has one
    if slurm:
        console.print(slurm, highlight=False, soft_wrap=True)
    table = Table()
    for col in ("trial", "config hash", "status", "starts", "samples", "checkpoint", "loss", "val loss", "linear",
                "attentive", "error"):
        table.add_column(col, overflow="fold")
    style = {"finished": "green", "failed": "red", "running": "cyan", "stopped": "magenta", "interrupted": "yellow"}

    def f(v: Any, fmt: str = ".4f") -> str:
        return "" if v is None else format(v, fmt) if isinstance(v, float) else str(v)

    for t in states:
        row = t.row or {}
        last = t.last or {}
        total = t.config.pretrain.samples if t.config else None
        samples = row.get("samples_seen", last.get("samples_seen", 0))
        status = f"[{style[t.status]}]{t.status}[/]" if t.status in style else t.status
        table.add_row(t.trial_id, t.config_hash, status, str(t.starts),
                      f"{samples:,}/{total:,}" if total else str(samples),
                      "" if t.checkpoint_samples is None else f"{t.checkpoint_samples:,}",
                      f(row.get("train_loss", last.get("loss"))), f(row.get("val_loss")),
                      f(row.get("linear_top1")), f(row.get("attentive_top1")), t.error or "")
    console.print(table)


app.command("submit")(submit_cmd)  # last in `xtra study --help`, as before

if __name__ == "__main__":
    app()
