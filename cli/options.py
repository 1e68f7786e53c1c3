"""Shared CLI pieces: `--set key=value` parsing, common option aliases, and one-line user errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console

err_console = Console(stderr=True)

Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: KEY=VALUE, VALUE a TOML literal (e.g. model.block_size=2, "
                               "probe.lrs=[1e-3,3e-3]); repeatable."),
]
Seed = Annotated[int, typer.Option(help="Seed: same seed, same result on CPU.")]
AllowCommands = Annotated[bool, typer.Option(
    "--allow-commands", help="let wds:pipe:CMD data sources run their shell command in this run (same as "
                             "XTRA_ALLOW_PIPE=1); without it a study that names one is refused")]

Yes = Annotated[bool, typer.Option("--yes", "-y", help="run a study whose estimated cost is huge (over "
                                   "the confirmation threshold in GPU-hours) without asking")]


def allow_commands(enabled: bool) -> None:
    """Opt this invocation (and the Ray workers it starts) in to running wds:pipe: commands."""
    if enabled:
        import os

        from xtra.data.collection import PIPE_ENV

        os.environ[PIPE_ENV] = "1"


Address = Annotated[str | None, typer.Option("--address", help="A running Ray cluster: auto or HOST:PORT (default: "
                                                              "start a local one).")]


def user_error(message: str) -> typer.Exit:
    """One red line on stderr; the caller raises the returned Exit (code 2), no traceback."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (ValueError and its kin: configs, datasets, checkpoints) -> one red line, exit 2."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
