"""`xtra`: the Typer root. Each command group lives in its own module; this file only wires them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="xtra",
    help="Ablation and scaling studies of block-causal auto-regressive image models (XTRA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
