"""xtra: ablation and scaling studies of block-causal auto-regressive image models.

The Python API, for notebooks (the CLI is a thin shell over the same functions)::

    import xtra

    outcome = xtra.run_study("block-size", preset="smoke", out="runs/studies/bs-smoke")
    df = xtra.load_results(outcome.study_dir)          # a polars DataFrame, one row per trial
    df.select("trial_id", "model.block_size", "linear_top1")

Neither call changes the process: the environment, stderr and logging are as they were afterwards
(Ray runs only for the duration of ``run_study``). Heavy modules are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run_study", "resume_study", "load_results", "load_curves"]


class _Environment:
    """The process environment as it was; restored exactly on exit (libraries imported on first use,
    such as ray and pyarrow, set variables of their own at import)."""

    def __enter__(self) -> None:
        import os

        self.saved = dict(os.environ)

    def __exit__(self, *exc: Any) -> None:
        import os

        for key in [k for k in os.environ if k not in self.saved]:
            del os.environ[key]
        for key, value in self.saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def run_study(study: str | Path, out: str | Path | None = None, *, preset: str | None = None,
              sets: dict[str, Any] | list[str] | None = None, seeds: int | list[int] | None = None,
              address: str | None = None, storage: str | None = None, report: bool = True, verbose: bool = False,
              yes: bool = False, **resources: Any) -> Any:
    """Run a study (a shipped name, a .toml path, or a study directory) into ``out`` (default
    ``runs/studies/<name>-<preset>``); finished trials are reused. ``resources``: cpus_per_trial,
    gpus_per_trial, max_concurrent, workers_per_trial, loggers. Returns the runner's Outcome
    (study_dir, counts, results, report, notes). Bad input raises ``xtra.studies.spec.StudyError``, and
    so does a study estimated above ``xtra.studies.policy.CONFIRM_GPU_HOURS`` unless ``yes``."""
    with _Environment():
        import io

        from rich.console import Console

        from xtra.studies.load import load_study
        from xtra.studies.policy import default_out
        from xtra.studies.runner import run_study as _run

        spec = load_study(study, preset=preset, sets=sets, seeds=seeds)
        if resources:
            spec = spec.with_resources(**resources)
        out = default_out(spec, study) if out is None else out
        console = Console() if verbose else Console(file=io.StringIO())
        return _run(spec, out, address=address, storage=storage, console=console, live=False,
                    build_report=report, command="xtra.run_study", yes=yes)


def resume_study(study_dir: str | Path, *, address: str | None = None, report: bool = True,
                 verbose: bool = False) -> Any:
    """Continue an interrupted study from its directory (unfinished trials from their checkpoints)."""
    with _Environment():
        import io

        from rich.console import Console

        from xtra.studies.runner import resume_study as _resume

        console = Console() if verbose else Console(file=io.StringIO())
        return _resume(study_dir, address=address, console=console, live=False, build_report=report)


def load_results(study_dir: str | Path) -> Any:
    """results.parquet of a study as a polars DataFrame (rebuilt from the trial directories while a
    study is running or when the file is missing); one row per trial, contract columns included."""
    from xtra.reports.collect import scan_results

    return scan_results(study_dir).collect()


def load_curves(study_dir: str | Path) -> Any:
    """curves.parquet of a study as a polars DataFrame: one row per trial and logged step."""
    from xtra.reports.collect import scan_curves

    return scan_curves(study_dir).collect()
