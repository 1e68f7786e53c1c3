"""`xtra study submit`: write a study's Slurm job script into its directory and sbatch it.

The script is ``scripts/slurm/study.sbatch`` with the ``#SBATCH`` lines from ``--slurm`` and the
``xtra study run`` arguments filled in (``xtra.studies.slurm``); it stays in STUDY_DIR/slurm/ so it can
be read, edited and submitted again by hand. Everything is checked (the study, its presets and --set,
the --slurm keys) before anything is written or submitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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

SlurmOpt = Annotated[str | None, typer.Option(
    "--slurm", help="sbatch options as KEY=VALUE,...: partition, account, qos, constraint, reservation, job-name, "
                    "nodes, gpus-per-node, cpus-per-task (per node), mem, time, signal (seconds before the time "
                    "limit that the study stops and the job requeues; default 300). E.g. "
                    "\"partition=gpu,nodes=2,gpus-per-node=8,cpus-per-task=32,time=24:00:00\"")]


def submit_cmd(
    study: StudyArg,
    slurm: SlurmOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="study directory on a filesystem the nodes share "
                                             "(default: runs/studies/<name>-<preset>)")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="the study's storage (s3://bucket/prefix or a "
                                                "shared directory); a requeued job resumes from it into fresh "
                                                "node-local scratch")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option("--cpus-per-trial", help="CPUs per trial")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option("--gpus-per-trial", help="GPUs per trial")] = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", help="trials at once")] = None,
    workers_per_trial: WorkersOpt = None,
    seeds: SeedsOpt = None,
    loggers: LoggerOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="write the script and print it; do not submit")] = False,
) -> None:
    """Submit a study as one Slurm job (Ray across its nodes); a requeued or time-limited job resumes."""
    from xtra.studies.policy import default_out
    from xtra.studies.slurm import parse_slurm, python_commands, record_job, render, sbatch, write_script
    from xtra.studies.spec import StudyError

    s = load_for_command(study, preset, sets, seeds)
    try:
        s.with_resources(cpus_per_trial, gpus_per_trial, max_concurrent, workers_per_trial, loggers)
        options = parse_slurm(slurm)
    except ValueError as err:
        raise _fail(" ".join(str(err).split())) from None
    study_dir = (out or default_out(s, study)).expanduser().resolve()
    target = str(Path(study).resolve()) if Path(study).exists() else study  # the job may start elsewhere
    args = [target, "--out", str(study_dir)]
    if s.preset:
        args += ["--preset", s.preset]
    for item in sets or []:
        args += ["--set", item]
    for flag, value in (("--storage", storage), ("--cpus-per-trial", cpus_per_trial),
                        ("--gpus-per-trial", gpus_per_trial), ("--max-concurrent", max_concurrent),
                        ("--workers-per-trial", workers_per_trial), ("--seeds", seeds)):
        if value is not None:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for name in loggers or []:
        args += ["--logger", name]
    xtra_cmd, ray_cmd = python_commands()
    options.setdefault("job-name", f"xtra-{s.name}")
    text = render(options, args, xtra_cmd=xtra_cmd, ray_cmd=ray_cmd,
                  output=str(study_dir / "slurm" / "slurm-%j.out"))
    script = write_script(study_dir, text)
    console = Console(soft_wrap=True, highlight=False)
    if dry_run:
        console.print(text, markup=False)
        console.print(f"wrote {script} (not submitted: sbatch {script})")
        return
    try:
        job_id = sbatch(script)
    except StudyError as err:
        raise _fail(" ".join(str(err).split())) from None
    record_job(study_dir, job_id, script)
    console.print(f"submitted job {job_id}: {script}")
    console.print(f"log: {study_dir / 'slurm' / f'slurm-{job_id}.out'} · follow: xtra study status {study_dir}")
