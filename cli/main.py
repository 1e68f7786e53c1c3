"""`xtra`: the Typer root. Each command group lives in its own module; this file only wires them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="xtra",
    help="Ablation and scaling studies of block-causal auto-regressive image models (XTRA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from xtra.environment import version_report

        typer.echo(version_report())
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                       help="Versions of xtra, torch, ray, python and the lock; then exit.")) -> None:
    """Ablation and scaling studies of block-causal auto-regressive image models (XTRA)."""

from xtra.cli import data as _data  # noqa: E402
from xtra.cli import imports as _imports  # noqa: E402
from xtra.cli import study as _study  # noqa: E402
from xtra.cli.bench import bench_cmd  # noqa: E402
from xtra.cli.pretrain import info_cmd, pretrain_cmd  # noqa: E402
from xtra.cli.probe import probe_cmd  # noqa: E402
from xtra.cli.report import app as _report_app  # noqa: E402

app.command("pretrain")(pretrain_cmd)
app.command("probe")(probe_cmd)
app.command("bench")(bench_cmd)
app.command("info")(info_cmd)
app.add_typer(_study.app, name="study")
app.add_typer(_data.app, name="data")
app.add_typer(_report_app, name="report")
app.add_typer(_imports.app, name="import")

if __name__ == "__main__":
    app()
