"""The paper's efficiency claims, computed from probe results: "k reaches the baseline's top-1 with
X x fewer samples" (top-1 vs samples seen, one curve per k), "X x fewer parameters" (top-1 vs
parameters from a width sweep), and the downstream suite's average. Pure polars/numpy functions.

How a ratio is read off the curves. The baseline (k = 1 by default) sets the target: its mean
top-1 (over seeds) at its largest x (samples seen, or parameters), reached at that x. For another
k, the x where its mean curve first reaches the target is interpolated linearly in log x between
the two points that bracket the crossing; the ratio is baseline x / that x. A curve that is already
at the target at its first point gives a lower bound on the ratio (marked `bound`); a curve that
never reaches the target gives no ratio (`reached` false, with the best it got): nothing is
extrapolated. Confidence intervals: the seed-clustered t-bootstrap of ``reports.intervals`` (each draw
moves both mean curves by Gaussian-weighted sums of their seeds' residual curves, scaled by a
sqrt(df / chi2_df) factor, so 3 seeds get a Student-t width, not the +-0.85 sigma a percentile
bootstrap of 3 seeds reaches), over EVERY draw: one that never reaches the target enters at its
censoring bound (the ratio is at most baseline x / its largest x), one already there at its first point
at its lower bound; an interval end among those is open. A ratio is "significant" only when a closed
end lies beyond 1: an open end never is. Its coverage per design is measured by
``reports.calibration`` and published in docs/reports.md, which every sentence names. A budget that
some seeds lack is left out of that curve and named in the sentence, never dropped silently.
The share of resamples that reach the target is reported beside.

Every point of a curve must be one model trained to that x with its schedule completed (a separate
run, or a wsd branch after its cooldown): rows are keyed by trial identity, and two rows at one
(k, seed, x) are refused, never averaged. Mid-schedule checkpoints are learning curves, not budgets:
the report draws them, labelled so, and computes no ratio from them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from . import intervals
from .tables import mean_ci

# ---------------------------------------------------------------------------------------------
# One curve


def crossing(xs: Sequence[float], ys: Sequence[float], target: float) -> tuple[float | None, str]:
    """Where the curve (xs increasing) first reaches `target`, interpolated linearly in log x.
    Returns (x, status): status "reached", "before_first" (at or above the target at its first
    point: x is the first point, an upper bound), or "never" (x None)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if len(x) == 0:
        return None, "never"
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"crossing: x must be strictly increasing, got {list(x)}")
    hit = np.nonzero(y >= target)[0]
    if len(hit) == 0:
        return None, "never"
    i = int(hit[0])
    if i == 0:
        return float(x[0]), "before_first"
    lx0, lx1 = math.log(x[i - 1]), math.log(x[i])
    frac = (target - y[i - 1]) / (y[i] - y[i - 1])  # y[i-1] < target <= y[i]
    return float(math.exp(lx0 + frac * (lx1 - lx0))), "reached"


def _matrix(df: pl.DataFrame, x: str, y: str, group: str, trial: str | None
            ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(xs, Y, left_out): the x values every seed has, sorted, and Y[seed, i] = y of that seed at xs[i]: a
    curve per seed on a common grid, not a patchwork. Every point is one row; with a `trial` column (the
    trial's identity) a point is one trial. Two rows at one (seed, x) are refused, never averaged: they are
    different models. An x that some seeds lack is left out of the grid and named in `left_out` (which x,
    which seeds lack it, which trials hold it), for the sentence to say so: never dropped silently."""
    per_seed: dict[Any, dict[float, float]] = {}
    who_at: dict[float, list[str]] = {}
    cols = ["seed", x, y] + ([trial] if trial else [])
    for row in df.select(cols).iter_rows():
        sd, xv, yv = row[0], float(row[1]), float(row[2])
        if xv in per_seed.setdefault(sd, {}):
            same = df.filter((pl.col("seed") == sd) & (pl.col(x) == xv))
            who = f" (trials {', '.join(sorted(str(t) for t in same[trial].to_list()))})" if trial else ""
            raise ValueError(f"efficiency_ratios: {group}={df[group][0]!r}, seed {sd} has several rows at "
                             f"{x}={xv:g}{who}: a curve point must be one model; select one trial per point")
        per_seed[sd][xv] = yv
        who_at.setdefault(xv, []).append(str(row[3]) if trial else str(sd))
    common = sorted(set.intersection(*(set(c) for c in per_seed.values())))
    partial = sorted(set().union(*(set(c) for c in per_seed.values())) - set(common))
    left_out = None
    if partial:
        parts = []
        for xv in partial:
            lacking = sorted(str(sd) for sd, c in per_seed.items() if xv not in c)
            holders = f"trials {', '.join(sorted(who_at[xv]))}" if trial else f"seeds {', '.join(sorted(who_at[xv]))}"
            parts.append(f"{x}={_fmt_n(xv)} (seed {', '.join(lacking)} lacks it; held by {holders})")
        left_out = f"{group}={df[group][0]!r} left out " + "; ".join(parts)
    ys = np.array([[c[v] for v in common] for c in per_seed.values()], dtype=float)
    return np.asarray(common, dtype=float), ys.reshape(len(per_seed), len(common)), left_out


def _ratio(bx: np.ndarray, by: np.ndarray, ox: np.ndarray, oy: np.ndarray) -> dict[str, Any]:
    """Ratio from mean curves: baseline (bx, by) and the other (ox, oy). `value`: the ratio, or for a
    curve that never reaches the target its censoring bound (the ratio is at most baseline_x / max_x)."""
    target, base_x = float(by[-1]), float(bx[-1])
    at, status = crossing(ox, oy, target)
    max_x = float(ox[-1]) if len(ox) else None
    return {"target": target, "baseline_x": base_x, "x": at, "status": status,
            "ratio": base_x / at if at else None, "best": float(oy.max()) if len(oy) else None,
            "max_x": max_x, "value": base_x / at if at else (base_x / max_x if max_x else 0.0)}


def ratio_draws(bx: np.ndarray, base_means: np.ndarray, ox: np.ndarray, other_means: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """`_ratio` for many draws at once: base_means (n, len(bx)) and other_means (n, len(ox)) mean curves.
    Returns (value, status): the ratio, or its censoring bound, and "reached" / "before_first" / "never"."""
    target = base_means[:, -1]
    hit = other_means >= target[:, None]
    reached_any = hit.any(axis=1)
    first = np.argmax(hit, axis=1)
    lx = np.log(ox)
    i = np.clip(first, 1, max(1, len(ox) - 1)) if len(ox) > 1 else np.zeros_like(first)
    y0 = other_means[np.arange(len(first)), i - 1]
    y1 = other_means[np.arange(len(first)), i]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip((target - y0) / (y1 - y0), 0.0, 1.0)
    log_at = np.where(first == 0, lx[0], lx[i - 1] + frac * (lx[i] - lx[i - 1]))
    at = np.exp(log_at)
    value = np.where(reached_any, bx[-1] / at, bx[-1] / ox[-1])
    status = np.where(~reached_any, "never", np.where(first == 0, "before_first", "reached"))
    return value, status


def censored_interval(values: np.ndarray, statuses: Sequence[str], level: float = 0.95) -> dict[str, Any]:
    """A percentile interval over every draw, the censored ones included. A draw that never reaches the
    target has a ratio at most baseline_x / max_x (below every reached ratio); one that reaches it at its
    first point has a ratio at least baseline_x / first x (above every reached ratio). Each enters at its
    bound, so none is dropped; an interval end that falls among such draws is open (`lo_open`: the ratio
    may be lower still; `hi_open`: higher)."""
    v = np.asarray(values, dtype=float)
    st = np.asarray(statuses)
    n = len(v)
    tail = (1 - level) / 2
    never, first = float(np.mean(st == "never")), float(np.mean(st == "before_first"))
    lo, hi = (float(q) for q in np.quantile(v, [tail, 1 - tail]))
    return {"lo": lo, "hi": hi, "lo_open": never > tail, "hi_open": first > tail,
            "reached_share": 1.0 - never if n else None}


def significant(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool | None:
    """Whether the interval excludes a ratio of 1 (None without an interval). An open end extends without
    limit (a censored lower end: the ratio may be anywhere below it), so it never excludes anything: only a
    closed end beyond 1 makes a ratio significant."""
    if lo is None or hi is None:
        return None
    return (lo > 1 and not lo_open) or (hi < 1 and not hi_open)


def ratio_interval(bx: np.ndarray, base: np.ndarray, ox: np.ndarray, other: np.ndarray, *, n_draws: int,
                   level: float, rng: np.random.Generator) -> dict[str, Any]:
    """The ratio's censored interval by the seed-clustered t-bootstrap (``reports.intervals``): each draw
    perturbs both mean curves by Gaussian-weighted sums of their seeds' residual curves, scaled by one
    sqrt(df / chi2_df) per draw, df = (seeds of the baseline - 1) + (seeds of the other - 1)."""
    df = (len(base) - 1) + (len(other) - 1)
    scale = intervals.t_scale_draws(rng, n_draws, df)
    base_means = intervals.seed_clustered_mean_draws(base, rng, n_draws, scale)
    other_means = intervals.seed_clustered_mean_draws(other, rng, n_draws, scale)
    values, statuses = ratio_draws(bx, base_means, ox, other_means)
    return censored_interval(values, statuses, level)


def efficiency_ratios(df: pl.DataFrame, *, x: str, y: str = "top1", group: str = "block_size",
                      baseline: Any = 1, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                      trial: str | None = "config_hash") -> pl.DataFrame:
    """For every `group` value other than `baseline`: how much less `x` it needs to reach the
    baseline's `y` at the baseline's largest `x`. `df`: one row per (group, seed, x), each one model
    (its identity in column `trial` when present; two rows at one point are refused). Returns one row
    per group: target, baseline_x, x (where it reaches the target), status (reached | before_first |
    never), ratio (baseline_x / x), ratio_lo / ratio_hi (censored seed-clustered t-bootstrap interval
    over `n_boot` draws; null with one seed in both curves), lo_open / hi_open (an end among censored
    draws), significant (a closed end beyond 1), reached_share (of the draws), best (its best mean y),
    max_x, n_seeds, bound (the ratio is a lower bound: reached at its first point), left_out (an x that
    some seeds lack, left out of the curves and named; null when none), method."""
    for col in (x, y, group, "seed"):
        if col not in df.columns:
            raise ValueError(f"efficiency_ratios: column {col!r} is missing (have: {', '.join(df.columns)})")
    trial = trial if trial in df.columns else None
    df = df.filter(pl.col(y).is_not_null() & pl.col(y).is_not_nan())
    groups = df[group].unique().sort().to_list()
    if baseline not in groups:
        raise ValueError(f"efficiency_ratios: baseline {group}={baseline!r} has no rows (have: {groups})")
    bx, bm, base_left = _matrix(df.filter(pl.col(group) == baseline), x, y, group, trial)
    rng = np.random.default_rng(seed)
    rows = []
    for g in groups:
        if g == baseline:
            continue
        ox, om, other_left = _matrix(df.filter(pl.col(group) == g), x, y, group, trial)
        point = _ratio(bx, bm.mean(axis=0), ox, om.mean(axis=0))
        ci: dict[str, Any] = {"lo": None, "hi": None, "lo_open": False, "hi_open": False, "reached_share": None}
        if n_boot and (len(bm) > 1 or len(om) > 1):
            ci = ratio_interval(bx, bm, ox, om, n_draws=n_boot, level=level, rng=rng)
        left_out = "; ".join(s for s in (base_left, other_left) if s) or None
        rows.append({group: g, "baseline": baseline, "target": point["target"], "baseline_x": point["baseline_x"],
                     "x": point["x"], "status": point["status"], "ratio": point["ratio"], "ratio_lo": ci["lo"],
                     "ratio_hi": ci["hi"], "lo_open": ci["lo_open"], "hi_open": ci["hi_open"],
                     "significant": significant(ci["lo"], ci["hi"], ci["lo_open"], ci["hi_open"]),
                     "reached_share": ci["reached_share"], "best": point["best"], "max_x": point["max_x"],
                     "n_seeds": len(om), "n_seeds_baseline": len(bm), "bound": point["status"] == "before_first",
                     "left_out": left_out, "method": intervals.METHOD_RATIO if ci["lo"] is not None else None})
    return pl.DataFrame(rows, infer_schema_length=None)


def sample_efficiency(curves: pl.DataFrame, *, kind: str = "linear", dataset: str | None = None,
                      baseline: int = 1, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """'k reaches k=`baseline`'s top-1 with X x fewer samples' from long-format probe rows
    (columns block_size, seed, samples, kind, top1, optionally dataset): one row per k
    (`efficiency_ratios` with x = samples)."""
    df = _select(curves, kind, dataset)
    return efficiency_ratios(df, x="samples", group="block_size", baseline=baseline, n_boot=n_boot, seed=seed)


def parameter_efficiency(results: pl.DataFrame, *, kind: str = "linear", params: str = "n_params_encoder",
                         baseline: int = 1, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """'X x fewer parameters' from a width sweep: results with columns block_size, seed, `params`
    and `<kind>_top1` (one row per trial, e.g. results.parquet): for each k, the parameters at which
    its top-1 vs parameters curve reaches the baseline's top-1 at the baseline's largest model."""
    col = f"{kind}_top1"
    for c in (col, params, "block_size", "seed"):
        if c not in results.columns:
            raise ValueError(f"parameter_efficiency: column {c!r} is missing (have: {', '.join(results.columns)})")
    keep = [c for c in ("config_hash",) if c in results.columns]
    df = results.select("block_size", "seed", *keep, pl.col(params).cast(pl.Float64), pl.col(col).alias("top1"))
    return efficiency_ratios(df, x=params, group="block_size", baseline=baseline, n_boot=n_boot, seed=seed)


def _select(curves: pl.DataFrame, kind: str, dataset: str | None) -> pl.DataFrame:
    df = curves.filter(pl.col("kind") == kind) if "kind" in curves.columns else curves
    if dataset is not None and "dataset" in df.columns:
        df = df.filter(pl.col("dataset") == dataset)
    elif "dataset" in df.columns and df["dataset"].n_unique() > 1:
        raise ValueError("sample_efficiency: the rows hold several datasets; name one (dataset=...)")
    return df


# ---------------------------------------------------------------------------------------------
# The downstream suite


def suite_average(rows: pl.DataFrame, *, by: Sequence[str] = ("config_hash", "samples", "kind"),
                  datasets: Sequence[str] | None = None) -> pl.DataFrame:
    """The suite score per trial (the paper's 15-benchmark average): the mean top-1 over the datasets,
    per `by` group. Long-format input: columns `by`, dataset, top1. A group missing a dataset of the
    suite (all datasets seen, or `datasets`) gets a null average and the missing names, never a
    mean over fewer sets."""
    by = list(by)
    for c in (*by, "dataset", "top1"):
        if c not in rows.columns:
            raise ValueError(f"suite_average: column {c!r} is missing (have: {', '.join(rows.columns)})")
    suite = sorted(datasets) if datasets is not None else sorted(rows["dataset"].unique().to_list())
    agg = rows.filter(pl.col("dataset").is_in(suite)).group_by(by).agg(
        pl.col("top1").mean().alias("mean"), pl.col("dataset").unique().alias("have"),
        pl.col("top1").is_null().any().alias("has_null"))
    out = []
    for r in agg.iter_rows(named=True):
        missing = [d for d in suite if d not in r["have"]]
        ok = not missing and not r["has_null"]
        out.append({**{k: r[k] for k in by}, "n_datasets": len(r["have"]), "suite_size": len(suite),
                    "average": r["mean"] if ok else None, "missing": ", ".join(missing)})
    return pl.DataFrame(out, infer_schema_length=None).sort(by)


def suite_table(rows: pl.DataFrame, *, label: str = "config_hash", kind: str = "linear",
                samples: int | None = None) -> pl.DataFrame:
    """The per-dataset table with the average, one row per trial (`label`), one column per dataset,
    at each trial's last probed checkpoint (or `samples`)."""
    df = rows.filter(pl.col("kind") == kind)
    if samples is not None:
        df = df.filter(pl.col("samples") == samples)
    else:
        df = df.filter(pl.col("samples") == pl.col("samples").max().over(label))
    wide = df.pivot(on="dataset", index=label, values="top1", aggregate_function="mean").sort(label)
    avg = suite_average(df, by=(label,)).select(label, "average")
    return wide.join(avg, on=label, how="left")


# ---------------------------------------------------------------------------------------------
# Curves for the report: top-1 vs samples per k, mean and CI over seeds


def sample_curves(curves: pl.DataFrame, *, kind: str = "linear", dataset: str | None = None,
                  group: str = "block_size", level: float = 0.95) -> pl.DataFrame:
    """One row per (group, samples): mean top-1 over seeds, its t-interval (lo, hi; null with one
    seed) and the seed count, sorted, ready to draw as one line per k with a band."""
    df = _select(curves, kind, dataset)
    out = []
    for (g, s), part in df.group_by([group, "samples"]):
        m, half, n = mean_ci(part["top1"].to_list(), level)
        ok = n > 1 and math.isfinite(half)
        out.append({group: g, "samples": s, "mean": m, "lo": m - half if ok else None,
                    "hi": m + half if ok else None, "n_seeds": n})
    return pl.DataFrame(out, infer_schema_length=None).sort(group, "samples")


# ---------------------------------------------------------------------------------------------
# Text for summary.md and the HTML report


def _fmt_n(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"


def _ratio_text(v: float) -> str:
    """Two significant digits, but never a bare '1' for a ratio that is not 1: an interval of 1.004 to
    1.5 excludes 1 and must read so."""
    text = f"{v:.2g}"
    return f"{v:.3f}" if text == "1" and not math.isclose(v, 1.0, rel_tol=1e-9) else text


def _interval(r: dict[str, Any]) -> str:
    """'95% CI 1.5 to 2.6' with open ends marked (<= at a censored lower end, >= at a censored upper end)."""
    lo = f"<={_ratio_text(r['ratio_lo'])}" if r.get("lo_open") else _ratio_text(r["ratio_lo"])
    hi = f">={_ratio_text(r['ratio_hi'])}" if r.get("hi_open") else _ratio_text(r["ratio_hi"])
    return f"95% CI {lo} to {hi}"


def ratio_sentences(ratios: pl.DataFrame, *, what: str = "samples", kind: str = "linear",
                    group: str = "block_size", name: str = "k") -> list[str]:
    """One line per row of `efficiency_ratios`, e.g. 'k=2 reaches k=1's linear top-1 (76.9% at
    30,000 samples) with 3.1x fewer samples (95% CI 2.0 to 4.6, reached in 100% of resamples, 3 seeds)'
    or, when the interval includes 1, '... (95% CI <=1 to 1.5: not significant, the interval includes 1;
    reached in 75% of resamples, 3 seeds)'; '... never reaches k=1's linear top-1 (...): best 75.5%
    within 30,000 samples (ratio at most 1)'."""
    lines = []
    for r in ratios.iter_rows(named=True):
        head = (f"{name}={r[group]} reaches {name}={r['baseline']}'s {kind} top-1 "
                f"({100 * r['target']:.1f}% at {_fmt_n(r['baseline_x'])} {what})")
        share = "" if r.get("reached_share") is None else f"reached in {100 * r['reached_share']:.0f}% of resamples, "
        if r["status"] == "never":
            bound = r["baseline_x"] / r["max_x"] if r["max_x"] else None
            ci = "" if r.get("ratio_lo") is None else f" ({_interval(r)})"
            spread = (f"; ratio at most {bound:.2g}{ci}" if bound else "") + (
                f"; {share}{r['n_seeds']} seeds{_evidence(r)}" if share else "") + _left_out(r)
            lines.append(f"{name}={r[group]} never reaches {name}={r['baseline']}'s {kind} top-1 "
                         f"({100 * r['target']:.1f}% at {_fmt_n(r['baseline_x'])} {what}): best "
                         f"{100 * r['best']:.1f}% within {_fmt_n(r['max_x'])} {what}{spread}")
            continue
        if r["ratio_lo"] is None:  # one seed: nothing to resample
            spread = "one seed: no CI"
        elif r.get("significant") is False:
            spread = (f"{_interval(r)}: not significant, the interval includes 1; {share}{r['n_seeds']} seeds"
                      f"{_evidence(r)}")
        else:
            spread = f"{_interval(r)}, {share}{r['n_seeds']} seeds{_evidence(r)}"
        bound = "at least " if r["bound"] else ""
        fewer = "fewer" if r["ratio"] >= 1 else "more"
        factor = r["ratio"] if r["ratio"] >= 1 else 1 / r["ratio"]
        lines.append(f"{head} with {bound}{factor:.2g}x {fewer} {what} ({spread}{_left_out(r)})")
    return lines


def _evidence(r: dict[str, Any]) -> str:
    """'; seed-clustered t-bootstrap, coverage: docs/reports.md#...': the method and where its measured
    coverage for this many seeds is published (docs/design.md, principle 5)."""
    return f"; {r['method']}, coverage: {intervals.EVIDENCE}" if r.get("method") else ""


def _left_out(r: dict[str, Any]) -> str:
    return f"; {r['left_out']}" if r.get("left_out") else ""


def markdown_table(df: pl.DataFrame, *, percent: Sequence[str] = ()) -> str:
    """A Markdown table; columns in `percent` (fractions) shown as percentages."""
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows(named=True):
        lines.append("| " + " | ".join(table_cell(row[c], c in percent) for c in cols) + " |")
    return "\n".join(lines)


def html_table(df: pl.DataFrame, *, percent: Sequence[str] = ()) -> str:
    """The same table as HTML (escaped), for the report page."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(table_cell(row[c], c in percent))}</td>" for c in df.columns)
                   + "</tr>" for row in df.iter_rows(named=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_cell(v: Any, percent: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if percent and isinstance(v, (int, float)):
        return f"{100 * v:.1f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def suite_markdown(rows: pl.DataFrame, *, label: str = "config_hash", kind: str = "linear") -> str:
    """The per-dataset table + average (top-1 %) in Markdown, as in the paper's benchmark table."""
    table = suite_table(rows, label=label, kind=kind)
    return markdown_table(table, percent=[c for c in table.columns if c != label])
