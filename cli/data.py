"""`xtra data`: see which datasets are here, fetch the ones that are not."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(help="List the known datasets and download the ones that are missing.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    """One red line on stderr, exit code 2, no traceback."""
    Console(stderr=True, soft_wrap=True, highlight=False).print(Text(f"error: {message}", style="red"))
    return typer.Exit(2)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


@app.command("list")
def list_command() -> None:
    """Show every dataset: whether it is here, where, its size on disk and what it is."""
    from xtra.data import list_datasets

    console = Console()
    wide = console.width >= 120  # the description only where it fits beside the paths
    table = Table(title="datasets")
    for column in ("name", "found", "size", "train / test"):
        table.add_column(column, no_wrap=True)
    table.add_column("where", overflow="fold")
    if wide:
        table.add_column("description")
    for row in list_datasets():
        counts = f"{row['n_train']} / {row['n_test']}" if row["n_train"] is not None else "-"
        found = Text("yes", style="green") if row["found"] else Text("no", style="yellow")
        where = Text("not in:\n" + "\n".join(row["looked_in"])) if row["looked_in"] else Text(row["where"])
        cells = [row["name"], found, _size(row["size"]), counts, where]
        table.add_row(*cells, *([row["description"]] if wide else []))
    console.print(table)


@app.command("get")
def get_command(
    name: Annotated[str, typer.Argument(help="fashion-mnist, mnist, cifar10 or cifar100")],
    dest: Annotated[Path | None, typer.Option("--dest", help="root folder (default: $XTRA_DATA or "
                                              "~/.cache/xtra/data); files land in DEST/NAME")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="fetch from this mirror instead of the "
                                                 "official source (also $XTRA_DATA_BASE_URL)")] = None,
    checksum: Annotated[list[str] | None, typer.Option("--checksum", metavar="FILE=HEX", help="expect this md5 "
                                                       "or sha256 for FILE instead of the built-in one "
                                                       "(for a mirror that repackaged the files); repeatable")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Download a dataset's official files, verify their checksums and put them in place."""
    from xtra.data import download

    checksums: dict[str, str] = {}
    for item in checksum or []:
        filename, sep, value = item.partition("=")
        if not sep or not filename or not value:
            raise _fail(f"--checksum {item!r} is not FILE=HEX (e.g. train-images-idx3-ubyte.gz=<sha256>)")
        checksums[filename.strip()] = value.strip()
    try:
        path = download(name, dest_root=dest, base_url=base_url, progress=not quiet, checksums=checksums or None)
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"{name}: ready in {path}")
