"""The report benchmark (``xtra bench --sections report``): a report built from a synthetic study of
1,000 trials x 1,000 curve rows, timed phase by phase. A study benchmark, above the reports (it builds one),
with the synthetic studies of the calibration suite (``xtra.reports.calibration.synthetic``), which the rest of
the library never imports.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from xtra.reports.build import build_report
from xtra.reports.calibration.synthetic import make_study
from xtra.reports.collect import collect_results


def bench_report(n_trials: int = 1000, n_curve_rows: int = 1000, n_boot: int = 200,
                 keep: str | Path | None = None) -> dict[str, Any]:
    """Time a report build on a synthetic study of ``n_trials`` trials x ``n_curve_rows`` curve rows.

    Returns seconds per phase and output sizes; the study lives in a temporary directory (or under
    ``keep`` when given)."""
    tmp = tempfile.mkdtemp(prefix="xtra-bench-report-") if keep is None else str(keep)
    try:
        root = Path(tmp) / "study"
        t0 = time.perf_counter()
        make_study(root, name="bench", block_sizes=(1, 2, 4, 8), widths=(64, 96, 128, 192),
                   samples=(5_000, 10_000, 20_000, 40_000, 80_000, 160_000), seeds=(0,), n_trials=n_trials,
                   n_curve_rows=n_curve_rows, failed=range(7, n_trials, 50))
        t1 = time.perf_counter()
        study = collect_results(root)
        t2 = time.perf_counter()
        index = build_report(root, n_boot=n_boot)
        t3 = time.perf_counter()
        return {
            "n_trials": n_trials, "n_curve_rows": n_curve_rows, "n_boot": n_boot,
            "curve_rows_total": study.curves.height,
            "generate_s": round(t1 - t0, 3), "collect_s": round(t2 - t1, 3), "build_s": round(t3 - t2, 3),
            "html_mb": round(index.stat().st_size / 2**20, 2),
            "summary_kb": round((index.parent / "summary.md").stat().st_size / 1024, 1),
        }
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
