"""`xtra data`: see which datasets are here, fetch the ones that are not, pack and check image collections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xtra.cli.options import user_error as _fail

app = typer.Typer(help="List the known datasets and download the ones that are missing.", no_args_is_help=True)




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


class _Bar:
    """A rich progress bar fed by (what, done, total) callbacks."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = None if quiet else Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                               TextColumn("images"), TimeRemainingColumn(),
                                               console=Console(stderr=True))
        self.task = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(what, total=total, completed=done)
        self.bar.update(self.task, completed=done, total=total)

    def stop(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.stop()


def _workers(n: int) -> int:
    import os

    return n if n > 0 else max(1, len(os.sched_getaffinity(0)))


@app.command("pack")
def pack_command(
    src: Annotated[Path, typer.Argument(help="an image folder: SRC/train/<class>/* (+ SRC/val/<class>/*) or "
                                        "SRC/<class>/*")],
    out: Annotated[Path, typer.Option("--out", help="the folder to write shards + manifest.json into")],
    shorter_side: Annotated[int, typer.Option("--shorter-side", help="resize images whose shorter side is larger "
                                              "to N px once (JPEG q95); 0 = copy the files unchanged")] = 0,
    shard_size: Annotated[int, typer.Option("--shard-size", help="images per shard")] = 1000,
    workers: Annotated[int, typer.Option("--workers", help="processes (0 = one per core)")] = 0,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="with --shorter-side: leave unreadable images out "
                                           "(listed in the manifest) instead of stopping")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Pack an ImageFolder into WebDataset tar shards (resumable after a kill; manifest with checksums).
    Train it with --set data.name=wds:OUT."""
    from xtra.data.pack import pack

    bar = _Bar(quiet)
    try:
        manifest = pack(src, out, shorter_side=shorter_side, shard_size=shard_size, workers=_workers(workers),
                        skip_bad=skip_bad, progress=bar)
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from None
    finally:
        bar.stop()
    parts = ", ".join(f"{split} {s['count']} images in {len(s['shards'])} shards"
                      for split, s in manifest["splits"].items())
    typer.echo(f"{out}: {parts}; {len(manifest['classes'])} classes; use --set data.name=wds:{out}")


@app.command("check")
def check_command(
    path: Annotated[str, typer.Argument(help="an image folder, a pack folder, imagefolder:PATH or wds:PATTERN")],
    workers: Annotated[int, typer.Option("--workers", help="processes (0 = one per core)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the full report as JSON")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Decode every image: list unreadable files, class counts and non-image files ignored.
    Exits 1 when any image is unreadable."""
    import json

    from xtra.data.pack import check

    bar = _Bar(quiet)
    try:
        report = check(path, workers=_workers(workers), progress=bar)
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from None
    finally:
        bar.stop()
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        console = Console()
        table = Table(title=f"{report['collection']} ({report['kind']}, fingerprint {report['fingerprint']})")
        table.add_column("class")
        for split in report["splits"]:
            table.add_column(split, justify="right")
        for name in report["classes"]:
            table.add_row(name, *(str(s["class_counts"].get(name, 0)) for s in report["splits"].values()))
        table.add_row("[bold]total", *(f"[bold]{s['count']}" for s in report["splits"].values()))
        console.print(table)
        typer.echo(f"non-image files ignored: {report['non_image_files']}")
        typer.echo(f"unreadable images: {len(report['unreadable'])}")
        for line in report["unreadable"]:
            typer.echo(f"  {line}")
    if report["unreadable"]:
        raise typer.Exit(1)
