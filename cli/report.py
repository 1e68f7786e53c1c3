"""`xtra report`: turn study directories into an HTML report (plus summary.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xtra import studydir
from xtra import trialdir as td
from xtra.cli.options import fail as _fail

app = typer.Typer(help="Build HTML reports (tables, efficiency curves, scaling fits) from study directories.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

OutOpt = Annotated[Path | None, typer.Option("--out", help="Output folder (default: STUDY_DIR/report).")]
ImagesOpt = Annotated[str | None, typer.Option("--images", help="Also write static figures: png or svg (kaleido).")]
PlotlyJsOpt = Annotated[str, typer.Option("--plotlyjs", help="inline (works offline) or cdn (smaller file).")]
BootOpt = Annotated[int, typer.Option("--n-boot", help="Bootstrap refits per scaling law (0 = no intervals).")]




def _check_study(path: Path) -> None:
    if not path.exists():
        _fail(f"{path}: does not exist (expected a study directory with results.parquet or trials/*/trial.json)")
    if not path.is_dir():
        _fail(f"{path}: is not a directory (expected a study directory with results.parquet or trials/*/trial.json)")
    if not (path / studydir.RESULTS).is_file() and not any((path / studydir.TRIALS).glob(f"*/{td.RESULT}")):
        _fail(f"{path}: no results.parquet and no trials/<config_hash>/trial.json "
              "(expected a study directory written by `xtra study run`)")


def _check_options(images: str | None, plotlyjs: str, n_boot: int) -> None:
    from xtra.reports.build import check_options

    try:
        check_options(images, plotlyjs, n_boot, spell=lambda key: f"--{key.replace('_', '-')} ")
    except ValueError as err:
        _fail(str(err))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        _fail(f"{out}: exists and is not a directory (expected a folder for index.html and summary.md)")


def _done(index: Path, images: str | None) -> None:
    typer.echo(f"report: {index}")
    typer.echo(f"summary: {index.parent / 'summary.md'}")
    if images and not any((index.parent / "figures").glob(f"*.{images}")):
        typer.secho(f"note: {images} images were skipped (the reason is at the top of the report)",
                    fg=typer.colors.YELLOW)


@app.command()
def build(
    study_dir: Annotated[str, typer.Argument(help="A study directory (results.parquet or trials/*/trial.json), or "
                                                  "its storage URI (s3://bucket/prefix/study).")],
    out: OutOpt = None,
    copy: Annotated[Path | None, typer.Option("--copy", help="For a URI: the local copy of the study (default: "
                                              "$XTRA_CACHE/studies/..., XTRA_CACHE defaulting to ~/.cache/xtra).")
                    ] = None,
    images: ImagesOpt = None,
    plotlyjs: PlotlyJsOpt = "inline",
    n_boot: BootOpt = 200,
    pictures: Annotated[bool, typer.Option(help="Draw next-block predictions from the trials' checkpoints.")] = True,
) -> None:
    """Write STUDY_DIR/report/index.html and summary.md. A study kept in an object store is read from a
    local copy refreshed first (checkpoints fetched only for the pictures drawn), and its report is
    written back to the storage too."""
    from xtra.reports.build import build_report
    from xtra.reports.collect import StudyError
    from xtra.storage import StorageError
    from xtra.studies.runner import pictures_from, publish_report, study_copy
    from xtra.studies.spec import StudyError as SpecError

    _check_options(images, plotlyjs, n_boot)
    if out is not None:
        _check_out(out)
    remote = "://" in study_dir
    if not remote and not Path(study_dir).exists():
        _check_study(Path(study_dir))
    try:
        path, stor, _ = study_copy(study_dir, copy, write=remote and out is None)
    except (SpecError, StorageError) as exc:
        _fail(" ".join(str(exc).split()))
    _check_study(path)
    try:
        index = build_report(path, out=out, images=images, plotlyjs=plotlyjs, n_boot=n_boot,
                             pictures=pictures_from(stor, path) if pictures else None)
    except StudyError as exc:
        _fail(str(exc))
    _done(index, images)
    if out is None:
        try:
            where = publish_report(stor, path)
        except StorageError as exc:
            _fail(f"report built locally, not written to storage: {' '.join(str(exc).split())}")
        if where:
            typer.echo(f"report in storage: {where}")


@app.command()
def compare(
    study_dirs: Annotated[list[Path], typer.Argument(help="Two or more study directories.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder for the combined page (required).")] = None,
    images: ImagesOpt = None,
    plotlyjs: PlotlyJsOpt = "inline",
    n_boot: BootOpt = 200,
) -> None:
    """Put several studies on one page: DIR1 DIR2 ... --out DIR."""
    from xtra.reports.build import compare_reports
    from xtra.reports.collect import StudyError

    if len(study_dirs) < 2:
        _fail(f"{' '.join(map(str, study_dirs)) or '(none)'}: expected at least two study directories to compare")
    for path in study_dirs:
        _check_study(path)
    if out is None:
        _fail("--out: expected an output folder for the comparison page (e.g. --out runs/compare)")
    _check_out(out)
    _check_options(images, plotlyjs, n_boot)
    try:
        index = compare_reports(study_dirs, out, images=images, plotlyjs=plotlyjs, n_boot=n_boot)
    except StudyError as exc:
        _fail(str(exc))
    _done(index, images)
