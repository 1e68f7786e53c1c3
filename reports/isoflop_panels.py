"""The report's isoFLOP section: Chinchilla's three approaches side by side (one panel, one table, a verdict
on whether they agree), the effective data multiplier of each k against k = 1, and the extrapolation test
at the largest N and D. Drawn for any study whose completed trials lie on >= 2 compute lines with >= 3
sizes each (``approaches.supports``); nothing otherwise. Estimators: ``approaches``, ``multiplier``,
``extrapolation``; their measured coverage: ``isoflop_calibration`` (docs/reports.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl

from . import approaches, extrapolation, multiplier
from .collect import StudyResults
from .panel import Panel, colors, layout, loss_column, param_axis, positive
from .tables import Table

BASELINE_K = 1
SYMBOLS = {approaches.APPROACHES[0]: "square", approaches.APPROACHES[1]: "circle", approaches.APPROACHES[2]: "diamond"}
EVIDENCE = "docs/reports.md#isoflop-approaches-multiplier-extrapolation"


def _rows(study: StudyResults) -> tuple[pl.DataFrame, str, str, str]:
    """Completed trials with the columns the estimators need: N, D, L, F, seed, k."""
    n_col, n_name = param_axis(study)
    loss, loss_name = loss_column(study)
    fin = positive(study.finished, n_col, "samples_seen", loss, "flops_per_image")
    df = fin.select(pl.col(n_col).cast(pl.Float64).alias("N"), pl.col("samples_seen").cast(pl.Float64).alias("D"),
                    pl.col(loss).cast(pl.Float64).alias("L"), pl.col("flops_per_image").cast(pl.Float64).alias("F"),
                    pl.col("seed").fill_null(0).alias("seed"),
                    # one size across k: N may count a pixel head that grows with k, the encoder does not
                    pl.col("n_params_encoder" if "n_params_encoder" in fin.columns else n_col).cast(pl.Float64)
                    .alias("S"),
                    (pl.col("block_size") if "block_size" in fin.columns else pl.lit(BASELINE_K)).alias("k"))
    return df, n_name, loss_name, n_col


def _arrays(df: pl.DataFrame) -> dict[str, Any]:
    return {c: df.get_column(c).to_numpy() for c in ("N", "D", "L", "F", "seed", "S")}


def _k(k: Any) -> str:
    """k=2, not k=2.0 (parquet may store the block size as a float)."""
    return f"k={int(k)}" if isinstance(k, float) and k.is_integer() else f"k={k}"


def _fmt_ci(lo: float, hi: float) -> str:
    return f"{lo:.3g} to {hi:.3g}" if math.isfinite(lo) and math.isfinite(hi) else "–"


def approaches_panel(groups: dict[Any, dict[str, Any]], n_name: str, loss_name: str, n_boot: int,
                     n_draws: int) -> Panel:
    fig = go.Figure()
    rows, laws = [], []
    palette = colors([_k(k) for k in groups])
    for k, a in groups.items():
        res = approaches.three_approaches(a["N"], a["D"], a["L"], a["F"], a["seed"], n_boot=n_boot, n_draws=n_draws)
        for e in res.exponents:
            rows.append([_k(k), e.approach, f"{e.value:.3g}" if math.isfinite(e.value) else "–",
                         _fmt_ci(e.lo, e.hi), f"{e.failed:.0%}", e.note])
            pts = [r for r in e.lines if math.isfinite(r["N_opt"])]
            if not pts:
                continue
            c = np.array([r["C"] for r in pts])
            n = np.array([r["N_opt"] for r in pts])
            lo = np.array([r["lo"] for r in pts])
            hi = np.array([r["hi"] for r in pts])
            err = dict(type="data", symmetric=False, array=np.where(np.isfinite(hi), hi - n, 0),
                       arrayminus=np.where(np.isfinite(lo), n - lo, 0))
            fig.add_trace(go.Scatter(x=c, y=n, mode="markers+lines", name=f"{_k(k)} · approach {e.approach}",
                                     marker=dict(symbol=SYMBOLS[e.approach], size=9, color=palette[_k(k)]),
                                     line=dict(dash={"1": "dot", "2": "dash", "3": "solid"}[e.approach[0]], width=1),
                                     error_y=err, legendgroup=_k(k)))
        verdict = "agree" if " agree" in res.verdict else ("disagree" if "disagree" in res.verdict else "no verdict")
        laws.append((f"{_k(k)}: three approaches {verdict}",
                     f"{res.verdict}; " + "; ".join(e.text() for e in res.exponents)
                     + f". Intervals of approaches 1 and 2: t-calibrated parametric bootstrap on {res.noise}; "
                       f"{res.bias}. Measured coverage: {EVIDENCE}."))
    layout(fig, "Compute-optimal size N_opt(C) by Chinchilla's three approaches", "training FLOPs per run (C)",
           f"N_opt ({n_name})", logx=True, logy=True)
    table = Table("Exponent a of N_opt ∝ C^a, three approaches", ["k", "approach", "a", "95% CI", "draws without",
                                                                  "note"], rows, id="table-approaches",
                  note=f"Loss: {loss_name}. Approach 3 reads a locally at the lines' geometric-mean compute. "
                       "Intervals that do not overlap are a disagreement, not a choice.")
    return Panel("isoflop-approaches", "Three approaches to N_opt(C)", fig, tables=[table], laws=laws)


def multiplier_panel(groups: dict[Any, dict[str, Any]], n_boot: int, n_draws: int) -> Panel | None:
    if BASELINE_K not in groups or len(groups) < 2:
        return None
    base = groups[BASELINE_K]
    fig = go.Figure()
    rows, laws = [], []
    palette = colors([_k(k) for k in groups if k != BASELINE_K])
    for k, other in groups.items():
        if k == BASELINE_K:
            continue
        ms, how = multiplier.per_budget(base, other, n_draws=n_draws)
        for m in ms:
            rows.append([_k(k), f"{m.N:.3g}", f"{m.D:,.0f}", m.text().split(": M = ")[1]])
        if ms:
            closed = [m for m in ms if m.status == "reached"]
            d = np.array([m.D for m in closed])
            v = np.array([m.value for m in closed])
            lo = np.array([m.lo for m in closed])
            hi = np.array([m.hi for m in closed])
            fig.add_trace(go.Scatter(
                x=d, y=v, mode="markers", name=f"{_k(k)} vs k={BASELINE_K}", marker=dict(color=palette[_k(k)], size=9),
                text=[f"N = {m.N:.3g}" for m in closed],
                error_y=dict(type="data", symmetric=False, array=np.where(np.isfinite(hi), hi - v, 0),
                             arrayminus=np.where(np.isfinite(lo), v - lo, 0))))
        law = multiplier.in_law(base, other, n_boot=n_boot)
        censored = sum(m.status != "reached" for m in ms)
        laws.append((f"{_k(k)}: data multiplier",
                     f"{len(ms) - censored} budget(s) with a closed M(D) ({how}), {censored} censored "
                     f"(k beyond the baseline's budgets: a bound only); {law.text()}. Measured coverage: {EVIDENCE}."))
    fig.add_hline(y=1.0, line=dict(color="#888", dash="dot"))
    layout(fig, f"Effective data multiplier: k at D samples matches k={BASELINE_K} at M·D", "samples D",
           f"M (k={BASELINE_K} samples / k samples)", logx=True, logy=True)
    table = Table("Effective data multiplier M(D) per budget", ["k", "N", "D", "M (95% CI)"], rows,
                  id="table-multiplier", note=">= / <=: the baseline's curve does not reach k's loss within its "
                  "budgets; only a bound, never an extrapolation.")
    return Panel("isoflop-multiplier", "Effective data multiplier per k", fig, tables=[table], laws=laws)


def extrapolation_panel(groups: dict[Any, dict[str, Any]], loss_name: str, n_boot: int) -> Panel:
    rows, laws = [], []
    fig = go.Figure()
    palette = colors([_k(k) for k in groups])
    for k, a in groups.items():
        tests = extrapolation.extrapolation_tests(a["N"], a["D"], a["L"], n_boot=n_boot)
        for j, t in enumerate(tests):
            if t.runs:
                act, pred, lo, hi = (np.array(v) for v in zip(*t.runs))
                fig.add_trace(go.Scatter(
                    x=act, y=pred, mode="markers", name=f"{_k(k)} · without {t.what}",
                    marker=dict(color=palette[_k(k)], symbol="circle" if j == 0 else "triangle-up", size=9),
                    error_y=dict(type="data", symmetric=False, array=hi - pred, arrayminus=pred - lo)))
            rows.append([_k(k), f"without {t.what}", str(t.n_train), str(t.n_left),
                         f"{t.mean_abs_error:.1%}" if t.ran else "–", f"{t.inside}/{t.n_left}" if t.ran else "–",
                         t.reason or ("weak: under the points a law needs" if t.weak else "")])
        ran = [t for t in tests if t.ran]
        verdict = ("no test" if not ran else
                   "extrapolates" if all(t.inside == t.n_left for t in ran) else "misses the left-out runs")
        laws.append((f"{_k(k)}: extrapolation {verdict}", "; ".join(t.text() for t in tests) + "."))
    table = Table("Extrapolation tested at the largest scale", ["k", "left out", "design points refitted",
                                                                "runs predicted", "mean |error|", "inside 95% PI",
                                                                "note"], rows, id="table-extrapolation",
                  note="L(N, D) refitted without the largest N (then without the largest D); the prediction "
                       "interval is the refit's linearised least-squares PI (t on n - p df), or a refitting "
                       "bootstrap-t where the refit sits at a bound (the note says so); coverage measured on the "
                       f"cpu preset's isoFLOP design ({EVIDENCE}).")
    every = [v for tr in fig.data for v in (*tr.x, *tr.y)]
    if every:
        fig.add_trace(go.Scatter(x=[min(every), max(every)], y=[min(every), max(every)], mode="lines",
                                 name="predicted = actual", line=dict(color="#888", dash="dot")))
    layout(fig, "Runs left out, predicted by the law refitted without them (95% prediction interval)",
           f"actual {loss_name}", f"predicted {loss_name}")
    return Panel("isoflop-extrapolation", "Extrapolation at the largest N and D", fig if every else None,
                 note="" if every else "no run could be predicted (see the table)", tables=[table], laws=laws)


def isoflop_panels(study: StudyResults, n_boot: int = 200, n_draws: int = 2000) -> list[Panel]:
    """The section's panels ([] when the completed trials do not lie on isoFLOP lines)."""
    if study.finished.height == 0 or "flops_per_image" not in study.finished.columns:
        return []
    df, n_name, loss_name, _ = _rows(study)
    groups = {k: _arrays(part) for (k,), part in sorted(df.partition_by("k", as_dict=True).items())}
    groups = {k: a for k, a in groups.items() if approaches.supports(a["N"], a["D"], a["F"])}
    if not groups:
        return []
    pans = [approaches_panel(groups, n_name, loss_name, n_boot, n_draws)]
    mult = multiplier_panel(groups, n_boot, n_draws)
    if mult is not None:
        pans.append(mult)
    pans.append(extrapolation_panel(groups, loss_name, n_boot))
    return pans
