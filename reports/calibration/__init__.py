"""The calibration suite: every interval the report prints, run on synthetic studies from a known truth
(docs/design.md, principle 5). ``run_suite(size)`` returns one row per interval kind and design: empirical
coverage of the nominal 95% interval with its Monte Carlo standard error, the rate of "significant"
(under no effect: a false claim), bias and RMSE of the point estimate. ``failures`` lists the rows that
break the suite's promises; ``to_markdown`` is docs/calibration-cpu.md. `xtra bench --sections
calibration` runs it (the default size) and writes both files.

Sizes are data: ``fast`` runs in the tests (seconds), ``default`` is the published one.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from ..scaling.linearised import METHOD_LAW
from . import laws, ratios
from .stats import NOMINAL, mc_se  # noqa: F401 - re-exported

COVERAGE_BAND = (0.92, 0.98)  # an interval's measured coverage must fall here (Monte Carlo error allowed)
MAX_FALSE_SIGNIFICANT = 0.05  # "significant" under no effect at most this often
ESTABLISHED_SE = 0.02  # a Monte Carlo error above this cannot place a coverage within 92-98%

SIZES: dict[str, dict[str, Any]] = {
    # the test's size: the ratio designs at 3 seeds that the old percentile bootstrap failed, few law fits
    "fast": {"ratio_reps": 120, "ratio_draws": 400, "disk_reps": 1, "ratio_seeds": (3,),
             "ratio_designs": ("samples r=1 n=3", "samples r=1.3 n=3", "samples r=1 n=3, k=2 lacks 60k in one seed",
                               "samples r=2 n=3, k=2 lacks 60k in one seed"),
             "law_reps": 20, "law_reps_2d": 0, "law_draws": 200, "law_designs": ("1-D n=3, 4 budgets",)},
    # the published size (docs/calibration-cpu.md): 200 studies per law design (Monte Carlo error 1.5 points
    # at 95% coverage)
    "default": {"ratio_reps": 400, "ratio_draws": 1000, "disk_reps": 2, "ratio_seeds": (3, 5, 10),
                "ratio_designs": None, "law_reps": 200, "law_reps_2d": 200, "law_draws": 1000, "law_designs": None,
                "workers": 2},
}


def _ratio_job(index: int, name: str, cfg: dict[str, Any], estimator: ratios.Estimator) -> list[dict[str, Any]]:
    design = next(d for d in ratios.designs(cfg["ratio_seeds"]) if d.name == name)
    t, cpu = time.perf_counter(), time.process_time()
    row = ratios.run_design(design, cfg["ratio_reps"], cfg["ratio_draws"], seed=1000 + index,
                            disk_reps=cfg["disk_reps"], estimator=estimator)
    return [{**row, "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu}]


def _law_job(index: int, name: str, cfg: dict[str, Any], estimator: laws.LawEstimator) -> list[dict[str, Any]]:
    design = next(d for d in laws.designs() if d.name == name)
    t, cpu = time.perf_counter(), time.process_time()
    part = laws.run_design(design, cfg["law_reps_2d"] if design.two_d else cfg["law_reps"], cfg["law_draws"],
                           seed=2000 + index, estimator=estimator)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return [{**row, "seconds": wall / len(part), "cpu_seconds": cpu / len(part)} for row in part]


def run_suite(size: str = "default", estimator: ratios.Estimator = ratios.report_estimator,
              log: Callable[[str], None] = lambda msg: None,
              law_estimator: laws.LawEstimator = laws.report_law_estimator) -> dict[str, Any]:
    """Run every design of `size`; returns {"size", "rows", "seconds", "cpu_seconds", "workers"}. `estimator`
    replaces the report's ratio estimator and `law_estimator` its 1-D law intervals (the tests run the old
    percentile bootstrap and the old cluster bootstrap through them to show the suite fails them). The
    default size runs its designs in ``workers`` processes (one per core); each design has its own seed, so
    the rows do not depend on the number of workers."""
    if size not in SIZES:
        raise ValueError(f"calibration size={size!r} is not known (allowed: {', '.join(SIZES)})")
    cfg = SIZES[size]
    start = time.perf_counter()
    jobs: list[tuple[Callable[..., list[dict[str, Any]]], tuple[Any, ...]]] = []
    law_designs = [d for d in laws.designs() if cfg["law_designs"] is None or d.name in cfg["law_designs"]]
    for i, design in enumerate(law_designs):  # the longest jobs first: two workers then end together
        if cfg["law_reps_2d"] if design.two_d else cfg["law_reps"]:
            jobs.append((_law_job, (i, design.name, cfg, law_estimator)))
    chosen = [d for d in ratios.designs(cfg["ratio_seeds"])
              if cfg["ratio_designs"] is None or d.name in cfg["ratio_designs"]]
    jobs += [(_ratio_job, (i, design.name, cfg, estimator)) for i, design in enumerate(chosen)]
    workers = cfg.get("workers", 1)
    parts: list[list[dict[str, Any]]] = []
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(fn, *args) for fn, args in jobs]
            for future in futures:
                parts.append(future.result())
                for row in parts[-1]:
                    log(_line(row))
    else:
        for fn, args in jobs:
            parts.append(fn(*args))
            for row in parts[-1]:
                log(_line(row))
    # ratio rows first, as the page shows them
    rows = [r for part in parts for r in part if r["kind"].endswith("ratio")]
    rows += [r for part in parts for r in part if not r["kind"].endswith("ratio")]
    return {"size": size, "rows": rows, "seconds": time.perf_counter() - start, "workers": workers,
            "cpu_seconds": sum(r["cpu_seconds"] for r in rows)}


def _line(row: dict[str, Any]) -> str:
    sig = "" if row.get("significant") is None else f", significant {100 * row['significant']:.1f}%"
    return (f"{row['kind']} | {row['design']}: coverage {100 * row['coverage']:.1f}% "
            f"+- {100 * (row['mc_se'] or 0):.1f}{sig} ({row['reps']} studies, {row['seconds']:.1f} s)")


def verdict(row: dict[str, Any]) -> str:
    """'ok', or what is wrong: coverage outside 92-98% by more than two Monte Carlo standard errors, or
    'significant' under no effect more than 5% (plus two standard errors) of the time; 'not established'
    when the Monte Carlo error is too large to place the coverage within 92-98% (then the measured
    coverage is a label, not a proof)."""
    cov, se = row["coverage"], row["mc_se"] or 0.0
    problems = []
    if not math.isfinite(cov):
        return "no interval"
    if cov + 2 * se < COVERAGE_BAND[0]:
        problems.append(f"under-covers ({100 * cov:.1f}% +- {100 * se:.1f})")
    elif cov - 2 * se > COVERAGE_BAND[1]:
        problems.append(f"over-covers ({100 * cov:.1f}% +- {100 * se:.1f}): wider than the data need")
    if row.get("true") == 1.0 and row.get("significant") is not None:
        fs = row["significant"]
        fs_se = math.sqrt(max(fs * (1 - fs), MAX_FALSE_SIGNIFICANT * (1 - MAX_FALSE_SIGNIFICANT)) / row["reps"])
        if fs - 2 * fs_se > MAX_FALSE_SIGNIFICANT:
            problems.append(f"'significant' under no effect in {100 * fs:.1f}% of studies")
    if problems:
        return "; ".join(problems)
    if se > ESTABLISHED_SE:
        return f"not established: {100 * cov:.0f}% +- {100 * se:.0f} (too few studies at this size)"
    return "ok"


def failures(result: dict[str, Any], kinds: tuple[str, ...] = ("samples ratio", "parameters ratio")) -> list[str]:
    """The rows of `kinds` whose verdict is not ok (the promises the ratio estimator must keep)."""
    return [f"{r['kind']} | {r['design']}: {verdict(r)}" for r in result["rows"]
            if r["kind"] in kinds and verdict(r) != "ok"]


def method_of(kind: str) -> str:
    """The estimator behind an interval kind, as docs/reports.md names it."""
    if kind.endswith("ratio"):
        return "seed-clustered t-bootstrap"
    if kind.startswith("compute-optimal"):
        return "numeric frontier per t-calibrated parameter draw"
    if "95% PI" in kind:
        return "least-squares prediction ± t·sqrt(se² + s²); refitting bootstrap-t where the refit is at a bound"
    return METHOD_LAW


def coverage_summary(result: dict[str, Any]) -> str:
    """One row per interval kind, number of seeds and design size: its designs, the coverage measured over
    them (a range when several; with its Monte Carlo error when one), the share of studies that got an
    interval where some did not, the largest false-significance rate, the verdicts (the table
    docs/reports.md#calibrated-intervals publishes)."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in result["rows"]:
        groups.setdefault((r["kind"], r["seeds"], r["points"]), []).append(r)
    lines = ["| interval | method | seeds | points | designs | studies each | coverage | false significance | "
             "verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for (kind, seeds, points), rows in groups.items():
        covs = [r["coverage"] for r in rows if math.isfinite(r["coverage"])]
        if not covs:
            cov = "no interval in any study"
        elif len(rows) == 1:
            cov = f"{_pct(covs[0])}% ± {_pct(rows[0]['mc_se'])}"
        else:
            cov = f"{_pct(min(covs))}-{_pct(max(covs))}%"
        given = [r["with_interval"] for r in rows if r.get("with_interval") is not None]
        if covs and given and min(given) < 1.0:
            cov += f" (interval in {_pct(min(given))}{'' if len(given) == 1 else '-' + _pct(max(given))}% of studies)"
        null = [r["significant"] for r in rows if r.get("true") == 1.0 and r.get("significant") is not None]
        fs = f"at most {_pct(max(null))}%" if null else "-"
        verdicts = "; ".join(sorted({verdict(r) for r in rows}))
        lines.append(f"| {kind} | {method_of(kind)} | {seeds} | {points} | {len(rows)} | "
                     f"{min(r['reps'] for r in rows)} | {cov} | {fs} | {verdicts} |")
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.1f}"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:+.3g}" if isinstance(v, float) else str(v)


def to_markdown(result: dict[str, Any], environment: str = "") -> str:
    rows = result["rows"]
    lines = [f"# Calibration of xtra's intervals ({result['size']} size)", "",
             "Generated by `xtra bench --sections calibration` (reports/calibration). Each row: one interval kind "
             "and design, simulated from a known truth; coverage of the nominal 95% interval (an open end extends "
             "without limit) with its Monte Carlo standard error, how often the sentence says \"significant\" "
             "(at a true ratio of 1 that is a false claim), bias and RMSE of the point estimate, and the verdict "
             f"against the promise: coverage within {100 * COVERAGE_BAND[0]:.0f}-{100 * COVERAGE_BAND[1]:.0f}% "
             f"and false significance at most {100 * MAX_FALSE_SIGNIFICANT:.0f}% (two Monte Carlo standard errors "
             "allowed). Method and noise models: docs/reports.md#calibrated-intervals.", ""]
    if environment:
        lines += [environment, ""]
    lines += [f"Wall time: {result['seconds']:.0f} s in {result.get('workers', 1)} process(es), "
              f"{result.get('cpu_seconds', float('nan')):.0f} s of CPU.", ""]
    lines += ["## Summary", "", coverage_summary(result), ""]
    ratio_rows = [r for r in rows if r["kind"].endswith("ratio")]
    if ratio_rows:
        lines += ["## Efficiency ratios (seed-clustered t-bootstrap)", "",
                  "| kind | design | true | seeds | budgets | studies | coverage % | ± MC | significant % | "
                  "censored % | bias (log) | RMSE (log) | budget named | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ratio_rows:
            lines.append(f"| {r['kind']} | {r['design']} | {r['true']:g} | {r['seeds']} | {r['points']} | "
                         f"{r['reps']} | {_pct(r['coverage'])} | {_pct(r['mc_se'])} | {_pct(r['significant'])} | "
                         f"{_pct(r['censored'])} | {_num(r['bias_log'])} | {_num(r['rmse_log'])} | "
                         f"{_pct(r['left_out_named'])} | {verdict(r)} |")
        lines.append("")
    law_rows = [r for r in rows if "law" in r["kind"] or r["kind"].startswith("compute-optimal")]
    if law_rows:
        lines += ["## Law fits (linearised least-squares t-intervals, t with runs - parameters df; derived "
                  "quantities: percentiles of t-calibrated parameter draws)", "",
                  "| kind | design | true | seeds | points | studies | intervals | studies with one % | coverage % "
                  "| ± MC | bias | RMSE | held-out check rejects the true law % | draws | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in law_rows:
            true = "-" if r["true"] is None else f"{r['true']:g}"
            lines.append(f"| {r['kind']} | {r['design']} | {true} | {r['seeds']} | {r['points']} | {r['reps']} | "
                         f"{r['intervals']} | {_pct(r.get('with_interval', 1.0))} | {_pct(r['coverage'])} | "
                         f"{_pct(r['mc_se'])} | {_num(r['bias'])} | {_num(r['rmse'])} | "
                         f"{_pct(r.get('held_out_rejects_true_law'))} | {r['n_draws']} | {verdict(r)} |")
        lines.append("")
    return "\n".join(lines)
