"""The arguments and options that the `xtra study` commands share (study.py and study_submit.py),
and loading a study from them with the one error path."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from xtra.cli.options import user_error as _fail

StudyArg = Annotated[str, typer.Argument(help="a shipped study name (see `xtra study list`), a .toml path, "
                                              "or a study directory")]
PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="smoke | cpu | paper | a study's own "
                                                                       "(default: the study's default_preset)")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="KEY=VALUE, VALUE a TOML literal: a config key (model.block_size=2, probe.lrs=[1e-3,3e-3]), "
                  "an axis (axes.model.block_size=[1,2]), size=..., seeds=...; repeatable")]
SeedsOpt = Annotated[int | None, typer.Option("--seeds", help="run seeds 0..N-1 (overrides the study's seeds)")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers-per-trial", help="data-parallel workers per trial (Ray Train + DDP: NCCL on GPUs, gloo on CPUs); the "
                                "trial's CPUs and GPUs are split among them, the batch is the global batch "
                                "(default: one per GPU of --gpus-per-trial, 1 on CPUs)")]


LoggerOpt = Annotated[list[str] | None, typer.Option(
    "--logger", help="experiment tracker for every trial: tensorboard | mlflow | wandb (offline), or none; "
                     "repeatable (default: the study's [resources] loggers, tensorboard)")]


def load_for_command(study: str, preset: str | None, sets: list[str] | None, seeds: int | None) -> Any:
    from xtra.studies.load import load_study
    from xtra.studies.spec import parse_sets

    try:
        return load_study(study, preset=preset, sets=parse_sets(sets), seeds=seeds)
    except ValueError as err:
        raise _fail(" ".join(str(err).split())) from None
